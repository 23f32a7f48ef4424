"""Small increments to a built index: ScaNN upsert/delete per shard, or a rebuild when one is due.

``update_index(UpdateRequest(base, out, new_rows, delete_ids, version))`` reads a published index
version ``base`` (verified against its manifest) and writes a new, complete version at ``out``:

- ``out/table``: the base table files, copied byte for byte when no row of theirs changes and
  rewritten without the deleted/replaced rows otherwise, plus the new rows' files;
- ``out/index``: every shard loaded, mutated with ScaNN's ``upsert``/``delete`` (existing
  partitions, codebooks and parameters: no training), and written back with its ids file in
  the mutated row order;
- ``out/manifest.json`` last, with ``lineage`` recording the full build this version descends
  from and every update since.

The base is never modified, so serving can keep it until the pointer moves.

Whether the shards are mutated or rebuilt is ``index.update_policy.decide``'s call, given the
change counts (its docstring says why a rebuild is ever due). When a rebuild is due, the same
new table is indexed from scratch by ``build_index`` instead, with the base's shard count, and
the lineage starts again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.build import BuildConfig, build_index
from index.hash_codes import carry_hash_model, check_coded_rows, with_hash_model
from index.manifest import (
    MANIFEST_NAME,
    IndexManifest,
    file_entry,
    lineage_of,
    read_manifest,
    verify_files,
    write_manifest,
)
from index.scann_index import ScannParams, load_searcher, scann_pybind
from index.shards import (
    INDEX_DIR,
    SHARD_ASSIGNMENT,
    download_shard,
    publish_shard,
    read_ids,
    shard_entry,
    shard_of_ids,
)
from index.sources import with_sources
from index.table import TABLE_DIR, EmbeddingTable, read_embedding_table
from index.update_policy import (
    DEFAULT_MAX_CHANGED_FRACTION,
    Changes,
    IndexFacts,
    RunRequest,
    UpdateDecision,
    check_update_settings,
    decide,
)
from runtime.entry import run_module_main
from storage.files import (
    copy_file,
    create_file,
    delete_tree,
    exists,
    is_local,
    join_path,
    join_uri,
    open_file,
    read_bytes,
)

logger = logging.getLogger(__name__)

_UPSERT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class UpdateRequest:
    """One update: ``base_dir`` + ``new_rows`` - ``delete_ids``, written as ``version`` at
    ``out_dir``. ``new_rows`` are Parquet files in the embedding-table schema (a row whose
    image_id is already indexed replaces it); ``delete_ids`` must all be indexed and may not
    also be upserted. ``counts`` are the caller's tallies for the manifest (an index job's
    inputs, duplicates, ...); an ``indexed`` among them must equal the rows the update leaves.
    """

    base_dir: str
    out_dir: str
    new_rows: Sequence[str] = ()
    delete_ids: Sequence[str] = ()
    version: str = ""
    max_changed_fraction: float = DEFAULT_MAX_CHANGED_FRACTION  # the rebuild rule's threshold
    k: int = 10
    counts: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "new_rows", tuple(self.new_rows))
        object.__setattr__(self, "delete_ids", tuple(dict.fromkeys(self.delete_ids)))
        if not self.version:
            raise ValueError("version (the new version's name) must be a non-empty string")
        if self.out_dir.rstrip("/") == self.base_dir.rstrip("/"):
            raise ValueError("out_dir must differ from base_dir: a published version is immutable")
        check_update_settings(self.max_changed_fraction, self.k)


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    manifest: IndexManifest
    decision: UpdateDecision
    upserted: int
    deleted: int
    # The ids themselves, where the caller knows them (pipelines.incremental.apply): what the
    # near-duplicate step joins again after an in-place update.
    upserted_ids: frozenset[str] = frozenset()
    deleted_ids: frozenset[str] = frozenset()

    def summary(self) -> str:
        how = "rebuilt" if self.decision.rebuild else "updated in place (ScaNN upsert/delete)"
        return (
            f"version {self.manifest.version}: {how}; upserted {self.upserted}, deleted "
            f"{self.deleted}, {self.manifest.counts['indexed']} images; {self.decision.reason}"
        )


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
        with open_file(source) as handle:
            ids = pq.read_table(handle, columns=["image_id"])["image_id"]
        if not pc.any(pc.is_in(ids, value_set=removed_array)).as_py():
            copy_file(source, destination)  # byte for byte: on gs:// no decode, no re-encode
            entries.append(dict(entry))
            continue
        with open_file(source) as handle:
            table = pq.read_table(handle)
        kept = table.filter(pc.invert(pc.is_in(table["image_id"], value_set=removed_array)))
        if kept.num_rows:
            with create_file(destination) as handle:
                pq.write_table(kept, handle)
            entries.append(file_entry(destination, out_dir))
    for number, path in enumerate(sorted(new_paths)):
        name = f"embeddings-update-{version}-{number:05d}.parquet"
        destination = join_path(out_dir, f"{TABLE_DIR}/{name}")
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
    ScannSearcher = scann_pybind().ScannSearcher  # lazy: the class of a searcher

    image_ids, _ = read_ids(join_path(base_dir, shard["ids_file"]))
    if is_local(base_dir):
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


def update_index(request: UpdateRequest) -> UpdateResult:
    """Write ``request.version`` at ``request.out_dir`` (see ``UpdateRequest``).

    Every check runs before anything is written: ValueError for ids to delete that are not
    indexed or also upserted, rows of another encoder or joint model, ``counts['indexed']``
    that differs from what the update leaves, and an ``out_dir`` that already holds a version.
    """
    base_dir, out_dir, version, k = request.base_dir, request.out_dir, request.version, request.k
    new_rows, counts = list(request.new_rows), request.counts
    if exists(join_uri(out_dir, MANIFEST_NAME)):
        raise ValueError(f"{out_dir} already holds a published version; pick a new folder")
    manifest = read_manifest(base_dir)
    verify_files(base_dir, manifest)
    new = read_embedding_table(new_rows) if new_rows else None
    _check_new_rows(manifest, new)
    check_coded_rows(manifest, new_rows)
    upsert_ids = [] if new is None else list(new.image_ids)

    shard_ids = [read_ids(join_path(base_dir, s["ids_file"]))[0] for s in manifest.shards]
    shard_of = {image_id: n for n, ids in enumerate(shard_ids) for image_id in ids}
    deletes = list(request.delete_ids)
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
    # The base's own shard count and quantization: an update never changes them.
    asked = RunRequest(
        len(manifest.shards),
        ScannParams.from_json(manifest.scann_params).quantize,
        max_changed_fraction=request.max_changed_fraction,
        k=k,
    )
    changes = Changes(len(upsert_ids), len(deletes), tuple(shard_counts))
    decision = decide(IndexFacts.of(manifest), asked, changes)
    logger.info("updating %s -> %s: %s", base_dir, out_dir, decision.reason)

    removed = set(deletes) | {i for i in upsert_ids if i in shard_of}
    for folder in (TABLE_DIR, INDEX_DIR):  # what an interrupted attempt left is not this version
        delete_tree(join_uri(out_dir, folder))
    table_entries = _write_table(base_dir, manifest, out_dir, new_rows, removed, version)
    new_counts = {
        **(counts or {}),
        "indexed": sum(shard_counts),
        "upserted": len(upsert_ids),
        "deleted": len(deletes),
    }
    if decision.rebuild:
        rebuilt = build_index(
            out_dir,
            BuildConfig(
                version,
                manifest.encoder_spec,
                k=k,
                num_shards=num_shards,
                quantize=ScannParams.from_json(manifest.scann_params).quantize,
            ),
            new_counts,
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

    lineage = lineage_of(manifest)
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
    carry_hash_model(base_dir, out_dir, manifest)
    updated = with_sources(out_dir, with_hash_model(out_dir, updated))
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
    base, out = args.base, args.out
    if args.root:
        from index.publish import resolve_index, version_dir

        base, _ = resolve_index(args.root)
        out = version_dir(args.root, args.run_version)
    deletes: list[str] = []
    if args.delete:
        text = read_bytes(args.delete).decode("utf-8")
        deletes = [line.strip() for line in text.splitlines() if line.strip()]
    result = update_index(
        UpdateRequest(
            base,
            out,
            args.add,
            deletes,
            args.run_version,
            max_changed_fraction=args.max_changed_fraction,
            k=args.neighbors,
        )
    )
    if args.root:
        from index.publish import write_pointer

        write_pointer(args.root, args.run_version)
    print(result.summary())


if __name__ == "__main__":
    run_module_main(main)
