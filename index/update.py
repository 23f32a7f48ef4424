"""Small increments to a built index: ScaNN upsert/delete per shard, or a rebuild when one is due.

``update_index(base, out, new_rows, delete_ids, version)`` reads a published index version
``base`` (verified against its manifest) and writes a new, complete version at ``out``:

- ``out/table``: the base table files, copied byte for byte when no row of theirs changes and
  rewritten without the deleted/replaced rows otherwise, plus the new rows' files;
- ``out/index``: every shard loaded, mutated with ScaNN's ``upsert``/``delete`` (existing
  partitions, codebooks and parameters: no training), and written back with its ids file in
  the mutated row order;
- ``out/manifest.json`` last, with ``lineage`` recording the full build this version descends
  from and every update since.

The base is never modified, so serving can keep it until the pointer moves.

When a rebuild is due (``RebuildRule``), the same new table is indexed from scratch by
``build_index`` instead, with the base's shard count, and the lineage starts again.

Why a rebuild is ever due: a tree-AH shard's k-means partitions and AH codebook were trained on
the rows of the full build. Rows added later are assigned to the nearest existing leaf and
encoded with the old codebook; while they are a small share of the shard and come from the same
distribution, recall holds (ScaNN's own mutation support is built for that), but as they grow
the leaves unbalance and the codebook stops fitting, and nothing short of retraining recovers
it. Counting changes is cheap and predictable, so the rule is a threshold on the share of rows
upserted or deleted since the last full build (10% by default), plus a rebuild whenever a
shard's size would change its ScaNN kind under ``choose_scann_params`` (a brute-force shard
growing past 20k rows should become a tree; a tree shrinking below should be exact).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from index.build import build_index, full_build_lineage
from index.manifest import (
    MANIFEST_NAME,
    IndexManifest,
    file_entry,
    read_manifest,
    verify_files,
    write_manifest,
)
from index.scann_index import ScannParams, choose_scann_params, load_searcher
from index.shards import (
    INDEX_DIR,
    SHARD_ASSIGNMENT,
    download_shard,
    publish_shard,
    read_ids,
    shard_entry,
    shard_of_ids,
)
from index.table import TABLE_DIR, EmbeddingTable, read_embedding_table
from storage.files import copy_file, delete_tree, join_path

logger = logging.getLogger(__name__)

_RAW = CompressionTypes.UNCOMPRESSED

# See the module docstring: the share of rows changed since the last full build beyond which
# partitions and codebooks trained on the old rows are retrained rather than patched.
DEFAULT_MAX_CHANGED_FRACTION = 0.10

_UPSERT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class RebuildDecision:
    rebuild: bool
    reason: str
    changed_fraction: float  # rows upserted + deleted since the last full build / rows then


@dataclasses.dataclass(frozen=True)
class RebuildRule:
    """When an update rebuilds the index instead of mutating it (see the module docstring)."""

    max_changed_fraction: float = DEFAULT_MAX_CHANGED_FRACTION

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_changed_fraction:
            raise ValueError(f"max_changed_fraction must be >= 0, got {self.max_changed_fraction}")

    def decide(
        self,
        manifest: IndexManifest,
        upserted: int,
        deleted: int,
        shard_counts: Sequence[int],
        k: int,
    ) -> RebuildDecision:
        """Decide for an update of ``manifest`` by ``upserted``/``deleted`` rows.

        ``shard_counts`` are the shards' sizes after the update, in manifest order.
        """
        lineage = manifest.lineage or full_build_lineage(
            manifest.version, manifest.counts.get("indexed", 0)
        )
        built = max(1, int(lineage["built_count"]))
        changed = upserted + deleted
        changed += sum(u["upserted"] + u["deleted"] for u in lineage["updates"])
        fraction = changed / built
        if fraction > self.max_changed_fraction:
            return RebuildDecision(
                True,
                f"{changed} rows changed since the full build {lineage['built_from']} "
                f"({fraction:.1%} of {built}) exceeds {self.max_changed_fraction:.1%}",
                fraction,
            )
        for shard, count in zip(manifest.shards, shard_counts, strict=True):
            if count == 0:
                return RebuildDecision(True, f"{shard['index_dir']} would be empty", fraction)
            kind = ScannParams.from_json(manifest.shard_params(shard)).kind
            wanted = choose_scann_params(count, manifest.dim, k).kind
            if wanted != kind:
                return RebuildDecision(
                    True,
                    f"{shard['index_dir']} would hold {count} rows, which calls for a "
                    f"{wanted} index, not its {kind}",
                    fraction,
                )
        return RebuildDecision(
            False,
            f"{changed} rows changed since the full build ({fraction:.1%} of {built}) is within "
            f"{self.max_changed_fraction:.1%}",
            fraction,
        )


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    manifest: IndexManifest
    decision: RebuildDecision
    upserted: int
    deleted: int

    def summary(self) -> str:
        how = "rebuilt" if self.decision.rebuild else "updated in place (ScaNN upsert/delete)"
        return (
            f"version {self.manifest.version}: {how}; upserted {self.upserted}, deleted "
            f"{self.deleted}, {self.manifest.counts['indexed']} images; {self.decision.reason}"
        )


def _file_name(path: str) -> str:
    return FileSystems.split(path)[1]


def _write_table(
    base_dir: str,
    manifest: IndexManifest,
    out_dir: str,
    new_paths: Sequence[str],
    removed: set[str],
    version: str,
) -> list[dict[str, Any]]:
    """``out/table``: base files minus ``removed`` ids (copied when untouched) + the new files.

    Returns the table's manifest entries: a copied file keeps its base entry (same bytes, and
    ``verify_files`` has just checked them), only rewritten and new files are hashed.
    """
    removed_array = pa.array(sorted(removed), pa.string())
    entries = []
    for entry in manifest.files_under(TABLE_DIR):
        source = join_path(base_dir, entry["path"])
        destination = join_path(out_dir, entry["path"])
        with FileSystems.open(source, compression_type=_RAW) as handle:
            ids = pq.read_table(handle, columns=["image_id"])["image_id"]
        if not pc.any(pc.is_in(ids, value_set=removed_array)).as_py():
            copy_file(source, destination)  # byte for byte: on gs:// no decode, no re-encode
            entries.append(dict(entry))
            continue
        with FileSystems.open(source, compression_type=_RAW) as handle:
            table = pq.read_table(handle)
        kept = table.filter(pc.invert(pc.is_in(table["image_id"], value_set=removed_array)))
        if kept.num_rows:
            with FileSystems.create(destination, compression_type=_RAW) as handle:
                pq.write_table(kept, handle)
            entries.append(file_entry(destination, out_dir))
    for number, path in enumerate(sorted(new_paths)):
        name = f"embeddings-update-{version}-{number:05d}.parquet"
        destination = FileSystems.join(out_dir, TABLE_DIR, name)
        copy_file(path, destination)
        entries.append(file_entry(destination, out_dir))
    return entries


def _check_new_rows(manifest: IndexManifest, new: EmbeddingTable | None) -> None:
    if new is None:
        return
    if new.encoder_id != manifest.encoder_id or new.dim != manifest.dim:
        raise ValueError(
            f"new rows come from {new.encoder_id} (dim {new.dim}); index version "
            f"{manifest.version} holds {manifest.encoder_id} (dim {manifest.dim})"
        )
    joint = manifest.joint_index
    if joint is not None:
        wanted = f"{joint['model']}/{joint['model_version']}"
        if new.joint_embeddings is None or new.joint_model != wanted:
            raise ValueError(
                f"index version {manifest.version} has a joint index of {wanted}; new rows "
                f"need joint_embedding from it (got {new.joint_model or 'none'})"
            )
    elif new.joint_embeddings is not None:
        raise ValueError(f"index version {manifest.version} has no joint index; new rows do")


def _mutate_shard(
    base_dir: str,
    manifest: IndexManifest,
    out_dir: str,
    shard: dict[str, Any],
    deletes: Sequence[str],
    upsert_ids: Sequence[str],
    upsert_vectors: np.ndarray,
    uri_of: dict[str, str],
) -> dict[str, Any]:
    """Load one shard, apply ScaNN delete + upsert, publish it under ``out``; -> its entry.

    A shard the update does not touch is copied as it is, byte for byte.
    """
    if not deletes and not upsert_ids:
        files = manifest.files_under(shard["index_dir"])
        for file in files:
            copy_file(join_path(base_dir, file["path"]), join_path(out_dir, file["path"]))
        return {"entry": dict(shard), "files": [dict(file) for file in files]}
    from scann.scann_ops.py.scann_ops_pybind import ScannSearcher  # lazy: imports TF

    image_ids, _ = read_ids(join_path(base_dir, shard["ids_file"]))
    if FileSystems.get_scheme(base_dir) is None:
        loaded = load_searcher(join_path(base_dir, shard["index_dir"]))  # verified, read-only
    else:
        with tempfile.TemporaryDirectory(prefix="imgsearch-update-") as local:
            download_shard(base_dir, manifest.files, shard["index_dir"], local)
            loaded = load_searcher(local)
    # ScaNN mutates by docid; its wrapper keeps the docid list in the same order as the rows
    # (a delete moves the last row into the hole), which becomes the new ids file.
    searcher = ScannSearcher(loaded.searcher, docids=list(image_ids))
    if deletes:
        searcher.delete(list(deletes))
    if upsert_ids:
        searcher.upsert(
            list(upsert_ids), np.ascontiguousarray(upsert_vectors, np.float32), _UPSERT_BATCH
        )
    rows = list(searcher.docids)
    # Saved without the docids pickle: ids.parquet is the shard's row -> image_id map.
    files = publish_shard(
        out_dir,
        shard["index_dir"],
        ScannSearcher(searcher.searcher),
        rows,
        [uri_of[i] for i in rows],
    )
    entry = shard_entry(shard["index_dir"], len(rows), manifest.shard_params(shard), files)
    return {"entry": entry, "files": files}


def update_index(
    base_dir: str,
    out_dir: str,
    new_rows: Sequence[str] = (),
    delete_ids: Sequence[str] = (),
    version: str = "",
    rule: RebuildRule | None = None,
    k: int = 10,
    counts: dict[str, int] | None = None,
) -> UpdateResult:
    """Write version ``version`` at ``out_dir``: ``base_dir`` + ``new_rows`` - ``delete_ids``.

    ``new_rows`` are Parquet files in the embedding-table schema (e.g. an incremental index
    job's table); a row whose image_id is already indexed replaces it. ``delete_ids`` must all
    be indexed and may not also be upserted. ``counts`` are the caller's tallies for the
    manifest (an index job's inputs, duplicates, ...); an ``indexed`` among them must equal the
    rows the update leaves, checked before anything is written. Raises ValueError for any of
    that, for rows of another encoder, and when ``out_dir`` already holds a published version.
    """
    rule = rule or RebuildRule()
    if not version:
        raise ValueError("version (the new version's name) must be a non-empty string")
    if out_dir.rstrip("/") == base_dir.rstrip("/"):
        raise ValueError("out_dir must differ from base_dir: a published version is immutable")
    if FileSystems.exists(FileSystems.join(out_dir, MANIFEST_NAME)):
        raise ValueError(f"{out_dir} already holds a published version; pick a new folder")
    manifest = read_manifest(base_dir)
    verify_files(base_dir, manifest)
    new = read_embedding_table(list(new_rows)) if new_rows else None
    _check_new_rows(manifest, new)
    upsert_ids = [] if new is None else list(new.image_ids)

    shard_ids = [read_ids(join_path(base_dir, s["ids_file"]))[0] for s in manifest.shards]
    shard_of = {image_id: n for n, ids in enumerate(shard_ids) for image_id in ids}
    deletes = list(dict.fromkeys(delete_ids))
    unknown = [image_id for image_id in deletes if image_id not in shard_of]
    if unknown:
        raise ValueError(
            f"{len(unknown)} id(s) to delete are not in index version {manifest.version}, "
            f"e.g. {unknown[:5]}"
        )
    both = sorted(set(deletes) & set(upsert_ids))
    if both:
        raise ValueError(f"{len(both)} id(s) are both deleted and upserted, e.g. {both[:5]}")

    # New ids go where the build's assignment puts them, existing ids stay in their shard.
    num_shards = len(manifest.shards)
    assignment = (manifest.sharding or {}).get("assignment", SHARD_ASSIGNMENT)
    if num_shards > 1 and assignment != SHARD_ASSIGNMENT:
        raise ValueError(
            f"index version {manifest.version} assigns rows to shards by {assignment!r}; this "
            f"code assigns by {SHARD_ASSIGNMENT!r}, so it cannot place new rows: rebuild it"
        )
    hashed = shard_of_ids(upsert_ids, num_shards)
    target = [shard_of.get(i, int(h)) for i, h in zip(upsert_ids, hashed, strict=True)]
    shard_counts = [len(ids) for ids in shard_ids]
    for image_id, shard in zip(upsert_ids, target, strict=True):
        shard_counts[shard] += image_id not in shard_of
    for image_id in deletes:
        shard_counts[shard_of[image_id]] -= 1
    if counts and "indexed" in counts and counts["indexed"] != sum(shard_counts):
        # The caller accounts for every input: a difference is a lost or doubled row.
        raise ValueError(
            f"counts['indexed'] is {counts['indexed']} but the update leaves "
            f"{sum(shard_counts)} rows indexed"
        )
    decision = rule.decide(manifest, len(upsert_ids), len(deletes), shard_counts, k)
    logger.info("updating %s -> %s: %s", base_dir, out_dir, decision.reason)

    removed = set(deletes) | {i for i in upsert_ids if i in shard_of}
    for folder in (TABLE_DIR, INDEX_DIR):  # what an interrupted attempt left is not this version
        delete_tree(FileSystems.join(out_dir, folder))
    table_entries = _write_table(base_dir, manifest, out_dir, list(new_rows), removed, version)
    new_counts = {
        **(counts or {}),
        "indexed": sum(shard_counts),
        "upserted": len(upsert_ids),
        "deleted": len(deletes),
    }
    if decision.rebuild:
        rebuilt = build_index(
            out_dir,
            manifest.encoder_spec,
            new_counts,
            version,
            k=k,
            num_shards=num_shards,
            quantize=ScannParams.from_json(manifest.scann_params).quantize,
        )
        return UpdateResult(rebuilt, decision, len(upsert_ids), len(deletes))

    uri_of = {}
    for shard in manifest.shards:
        image_ids, uris = read_ids(join_path(base_dir, shard["ids_file"]))
        uri_of.update(zip(image_ids, uris, strict=True))
    if new is not None:
        uri_of.update(zip(new.image_ids, new.uris, strict=True))
    target_array = np.asarray(target, dtype=np.int64)
    spaces = [("main", manifest.shards, None if new is None else new.embeddings)]
    if manifest.joint_index is not None:
        spaces.append(
            ("joint", manifest.joint_shards, None if new is None else new.joint_embeddings)
        )
    entries: dict[str, list[dict[str, Any]]] = {}
    index_files: list[dict[str, Any]] = []
    for space, shards, vectors in spaces:
        entries[space] = []
        for number, shard in enumerate(shards):
            mine = np.flatnonzero(target_array == number)
            result = _mutate_shard(
                base_dir,
                manifest,
                out_dir,
                shard,
                [i for i in deletes if shard_of[i] == number],
                [upsert_ids[i] for i in mine],
                vectors[mine] if vectors is not None else np.empty((0, manifest.dim), np.float32),
                uri_of,
            )
            entries[space].append(result["entry"])
            index_files.extend(result["files"])

    lineage = manifest.lineage or full_build_lineage(manifest.version, manifest.counts["indexed"])
    update = {
        "version": version,
        "base": manifest.version,
        "upserted": len(upsert_ids),
        "deleted": len(deletes),
    }
    joint_index = None
    if manifest.joint_index is not None:
        joint_index = {
            key: value
            for key, value in manifest.joint_index.items()
            if key not in ("shard", "shards")
        }
        if num_shards == 1:
            joint_index["shard"] = entries["joint"][0]
        else:
            joint_index["shards"] = entries["joint"]
    updated = dataclasses.replace(
        manifest,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        counts=new_counts,
        shards=entries["main"],
        files=sorted(
            table_entries + index_files,
            key=lambda entry: entry["path"],
        ),
        joint_index=joint_index,
        lineage={**lineage, "updates": [*lineage["updates"], update]},
    )
    write_manifest(out_dir, updated)
    return UpdateResult(updated, decision, len(upsert_ids), len(deletes))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m index.update (--root ROOT | --base V1 --out V2) --run_version V2``.

    With ``--root`` (a publish root, ``index.publish``) the base is the version
    ``latest.json`` points at, the new version goes to ``ROOT/versions/<run_version>``, and the
    pointer moves to it once its manifest is written.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", default="", help="a publish root: update its latest version")
    parser.add_argument("--base", default="", help="the published index version to update")
    parser.add_argument("--out", default="", help="where to write the new version")
    parser.add_argument("--add", nargs="*", default=[], help="Parquet files of new/changed rows")
    parser.add_argument("--delete", default="", help="a text file of image ids to delete")
    parser.add_argument("--run_version", required=True, help="the new version's name")
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--max_changed_fraction", type=float, default=DEFAULT_MAX_CHANGED_FRACTION)
    args = parser.parse_args(argv)
    with_root = bool(args.root) and not (args.base or args.out)
    with_dirs = not args.root and bool(args.base and args.out)
    if not (with_root or with_dirs):
        parser.error("give either --root, or both --base and --out")
    logging.basicConfig(level=logging.INFO)
    base, out = args.base, args.out
    if args.root:
        from index.publish import resolve_index, version_dir

        base, _ = resolve_index(args.root)
        out = version_dir(args.root, args.run_version)
    deletes: list[str] = []
    if args.delete:
        with FileSystems.open(args.delete, compression_type=_RAW) as f:
            deletes = [
                line.strip() for line in f.read().decode("utf-8").splitlines() if line.strip()
            ]
    result = update_index(
        base,
        out,
        args.add,
        deletes,
        args.run_version,
        RebuildRule(args.max_changed_fraction),
        k=args.neighbors,
    )
    if args.root:
        from index.publish import write_pointer

        write_pointer(args.root, args.run_version)
    print(result.summary())


if __name__ == "__main__":
    main()
