"""After the Beam job: embedding table -> ScaNN index shard(s) -> manifest (written last).

This module holds ``BuildConfig`` (what a build is asked for, validated once), ``build_index``
(the whole build: one shard here, or N shards through a ``ShardRunner``), and the pieces a
shard builder runs on a worker (``ShardSpec``, ``build_shard``, ``collect_shard_results``).

Layout under an output dir ``OUT`` (local or gs://)::

    OUT/table/embeddings-SSSSS-of-NNNNN.parquet   written by the Beam job
    OUT/index/shard-00000/ .. shard-0000N/         ScaNN assets + ids.parquet (row, image_id, uri)
    OUT/index/joint-shard-00000/ ..                the same over joint_embedding, if the table
                                                   has it (a dual joint model's image side)
    OUT/manifest.json                              written last: publishes the version

Row ``i`` of a shard's ScaNN index is row ``i`` of its ``ids.parquet``. A full build sorts a
shard's rows by ``image_id``, so the index does not depend on how the runner split the table
into files. With more than one shard, a row belongs to shard ``shard_of_ids`` (a hash of its
id) and every shard is built by its own worker of the ``BuildShards`` Beam job: a shard reads
the table's id and embedding columns and keeps its slice, so no embedding crosses a shuffle
and a retried shard rewrites the same files. (Reading the columns once per shard costs I/O,
not memory, and is small next to training a shard's ScaNN tree.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from index.hash_codes import with_hash_model
from index.manifest import (
    FORMAT_VERSION,
    IndexManifest,
    file_entry,
    full_build_lineage,
    split_model_id,
    write_manifest,
)
from index.near_duplicates import NearDuplicateStep, with_near_duplicates
from index.scann_index import (
    QUANTIZE,
    ScannParams,
    build_searcher,
    choose_scann_params,
)
from index.shards import (
    INDEX_DIR,
    SHARD_ASSIGNMENT,
    joint_shard_dir_name,
    publish_shard,
    remove_previous_index,
    shard_dir_name,
    shard_entry,
    shard_of_ids,
)
from index.sources import with_sources
from index.table import TABLE_DIR, EmbeddingTable, read_embedding_table, table_files
from storage.files import (
    delete_tree,
    exists,
    join_path,
    json_bytes,
    open_file,
    read_json,
    write_bytes,
)

logger = logging.getLogger(__name__)

_RESULTS_DIR = "_shard_results"  # each shard builder's manifest pieces, removed after the build


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What a build is asked for, checked once at construction (ValueError), before any I/O.

    ``version`` is the run id the manifest publishes; ``encoder_spec`` (``EncoderSpec.to_json()``)
    is recorded in the manifest. ``k`` is the default number of neighbours the index is tuned
    for. With ``target_recall`` the main index's parameters come from
    ``index.ann_tuning.autotune_scann`` instead of the size rules (single-shard float32 indexes
    only). ``num_shards > 1`` splits the rows by ``shard_of_ids``. ``quantize``
    (``scann_index.QUANTIZE``) is how the image index stores the vectors it scores exactly:
    float32, bfloat16 or int8 (the joint index, a few hundred dimensions, stays float32).
    """

    version: str
    encoder_spec: Mapping[str, Any]
    k: int = 10
    target_recall: float | None = None
    num_shards: int = 1
    quantize: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version:
            raise ValueError("version (the run id) must be a non-empty string")
        k, num_shards = self.k, self.num_shards
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not isinstance(self.encoder_spec, Mapping):
            raise ValueError(
                f"encoder_spec must be a dict (EncoderSpec.to_json()), got {self.encoder_spec!r}"
            )
        object.__setattr__(self, "encoder_spec", dict(self.encoder_spec))  # a copy of our own
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        if self.quantize != "float32" and self.target_recall is not None:
            raise ValueError(
                "target_recall autotunes with float32 rescoring; a quantized index would not "
                "keep the recall it measured (autotuning quantized indexes is not supported yet)"
            )
        if num_shards > 1 and self.target_recall is not None:
            raise ValueError(
                "target_recall autotunes one index; with index shards > 1 each shard takes the "
                "size rules (autotuning sharded indexes is not supported yet)"
            )


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What one shard builder needs: small enough to ship to a Beam worker."""

    out_dir: str
    shard: int
    num_shards: int
    table_paths: tuple[str, ...]
    k: int
    quantize: str = "float32"  # ScannParams.quantize of the image index


def _shard_result_path(out_dir: str, shard: int) -> str:
    return join_path(out_dir, f"{INDEX_DIR}/{_RESULTS_DIR}/shard-{shard:05d}.json")


# How the shards of a sharded build run: called with the output dir and every shard's spec
# once the table is checked, it must run ``build_shard`` on each spec (anywhere: this process,
# Beam workers) and return ``collect_shard_results``. The index job passes a Beam runner
# (``pipelines.build_shards.beam_shard_runner``); without one the shards build here in turn.
ShardRunner = Callable[[str, Sequence["ShardSpec"]], list[dict[str, Any]]]


def collect_shard_results(out_dir: str, specs: Sequence[ShardSpec]) -> list[dict[str, Any]]:
    """Each shard's result file, in shard order, then the results folder removed.

    Shard builders may run on other machines and return nothing to the driver: what each one
    wrote next to its files is the only account of it.
    """
    results = []
    for spec in specs:
        path = _shard_result_path(out_dir, spec.shard)
        if not exists(path):
            raise RuntimeError(f"shard {spec.shard} finished without its result file {path}")
        results.append(read_json(path))
    delete_tree(join_path(out_dir, f"{INDEX_DIR}/{_RESULTS_DIR}"))
    return results


def build_shards_here(out_dir: str, specs: Sequence[ShardSpec]) -> list[dict[str, Any]]:
    """The default ``ShardRunner``: every shard built in this process, one after another."""
    for spec in specs:
        build_shard(spec)
    return collect_shard_results(out_dir, specs)


def _build_and_publish(
    out_dir: str, shard: int, table: EmbeddingTable, params: ScannParams, k: int
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Build and upload shard ``shard``'s image index (``params``) over ``table`` and, when the
    table holds joint embeddings, its joint index (size rules for ``k``).

    -> (the shard's manifest entry, ``{"model", "dim", "shard"}`` of its joint index or None,
    the file entries of both). The one-shard build and each worker of a sharded build use it.
    """
    shard_rel = shard_dir_name(shard)
    searcher = build_searcher(table.embeddings, params)
    files = publish_shard(out_dir, shard_rel, searcher, table.image_ids, table.uris)
    entry = shard_entry(shard_rel, len(table), params.to_json(), files)
    if table.joint_embeddings is None:
        return entry, None, files
    joint_dim = int(table.joint_embeddings.shape[1])
    joint_params = choose_scann_params(len(table), joint_dim, k)
    logger.info(
        "indexing %d x %d joint vectors of %s with %s",
        len(table),
        joint_dim,
        table.joint_model,
        joint_params,
    )
    joint_rel = joint_shard_dir_name(shard)
    joint_searcher = build_searcher(table.joint_embeddings, joint_params)
    joint_files = publish_shard(out_dir, joint_rel, joint_searcher, table.image_ids, table.uris)
    joint = {
        "model": table.joint_model,
        "dim": joint_dim,
        "shard": shard_entry(joint_rel, len(table), joint_params.to_json(), joint_files),
    }
    return entry, joint, files + joint_files


def build_shard(spec: ShardSpec) -> dict[str, Any]:
    """Build and upload shard ``spec.shard`` (and its joint shard) from its slice of the table.

    Reads only the rows ``shard_of_ids`` assigns to the shard, chooses ScaNN parameters for
    the shard's size, uploads the searcher + ids file, and writes its manifest pieces to a
    small JSON beside the index (the driver collects them, then deletes them). Rerunning it
    (a retried bundle) rewrites the same files, so it is safe to retry.
    """
    table = read_embedding_table(spec.table_paths, shard=(spec.shard, spec.num_shards))
    params = dataclasses.replace(
        choose_scann_params(len(table), table.dim, spec.k), quantize=spec.quantize
    )
    logger.info(
        "shard %d/%d: %d x %d with %s", spec.shard, spec.num_shards, len(table), table.dim, params
    )
    entry, joint, files = _build_and_publish(spec.out_dir, spec.shard, table, params, spec.k)
    result: dict[str, Any] = {
        "shard": entry,
        "encoder_id": table.encoder_id,
        "dim": table.dim,
        "joint": joint,
        "files": files,
    }
    write_bytes(_shard_result_path(spec.out_dir, spec.shard), json_bytes(result))
    return result


def _check_shard_results(results: Sequence[dict[str, Any]]) -> None:
    for what in ("encoder_id", "dim"):
        values = {result[what] for result in results}
        if len(values) > 1:
            raise ValueError(f"index shards disagree on the {what}: {sorted(values)}")
    joint = {
        None if r["joint"] is None else (r["joint"]["model"], r["joint"]["dim"]) for r in results
    }
    if len(joint) > 1:
        raise ValueError(f"index shards disagree on the joint model: {joint}")


def _build_sharded(
    out_dir: str, paths: Sequence[str], config: BuildConfig, run_shards: ShardRunner | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None, str, int]:
    """Build ``config.num_shards`` shards; -> (shards, files, joint_index, encoder, dim)."""
    specs = [
        ShardSpec(out_dir, shard, config.num_shards, tuple(paths), config.k, config.quantize)
        for shard in range(config.num_shards)
    ]
    results = (run_shards or build_shards_here)(out_dir, specs)
    _check_shard_results(results)
    shards = [result["shard"] for result in results]
    files = [entry for result in results for entry in result["files"]]
    joint_index = None
    if results[0]["joint"] is not None:
        model, model_version = split_model_id(results[0]["joint"]["model"])
        joint_shards = [result["joint"]["shard"] for result in results]
        joint_index = {
            "model": model,
            "model_version": model_version,
            "dim": results[0]["joint"]["dim"],
            "scann_params": joint_shards[0]["scann_params"],
            "shards": joint_shards,
        }
    return shards, files, joint_index, results[0]["encoder_id"], results[0]["dim"]


def build_index(
    out_dir: str,
    config: BuildConfig,
    counts: dict[str, int],
    run_shards: ShardRunner | None = None,
    near_duplicates: NearDuplicateStep | None = None,
) -> IndexManifest:
    """Build the ScaNN index of ``OUT/table`` into ``OUT/index`` and publish ``OUT/manifest.json``.

    With ``config.num_shards > 1`` the rows are split by ``shard_of_ids`` and each shard (and
    joint shard) is built by ``run_shards`` (default: one after another in this process; the
    index job passes ``pipelines.build_shards.beam_shard_runner``, one Beam worker per shard);
    each shard chooses ScaNN parameters for its own size. With ``config.target_recall`` the
    measurements of autotuning are recorded in the manifest's ``tuning``.

    ``counts`` are the job's tallies (inputs, duplicates, dead_letters, ...); ``indexed`` is
    taken from the table and, if given, must agree with it. ``near_duplicates`` (the index
    job's ``pipelines.near_duplicates`` step) runs over the built index before the manifest is
    written, which then lists its files and counts. Returns the manifest it wrote.
    """
    paths = table_files(out_dir)
    if not paths:
        raise ValueError(f"empty table: no Parquet files match {out_dir}/{TABLE_DIR}/*.parquet")
    if config.num_shards > 1:
        return _build_index_sharded(out_dir, paths, config, counts, run_shards, near_duplicates)
    table = read_embedding_table(paths)
    num_rows = len(table)
    if "indexed" in counts and counts["indexed"] != num_rows:
        # The driver counts table rows too: a difference means the table changed under us.
        raise ValueError(f"counts['indexed'] is {counts['indexed']} but the table holds {num_rows}")
    counts = {**counts, "indexed": num_rows}

    tuning = None
    if config.target_recall is None:
        params = dataclasses.replace(
            choose_scann_params(num_rows, table.dim, config.k), quantize=config.quantize
        )
    else:
        from index.ann_tuning import autotune_scann
        from index.ann_tuning_types import TuningTarget

        target = TuningTarget(recall=config.target_recall, k=config.k)
        result = autotune_scann(table.embeddings, target)
        if not result.met_target:
            logger.warning("autotuning missed its target: %s", result.reason)
        params, tuning = result.params, result.to_json()
    remove_previous_index(out_dir)
    logger.info(
        "indexing %d x %d vectors of %s with %s", num_rows, table.dim, table.encoder_id, params
    )
    entry, joint, index_entries = _build_and_publish(out_dir, 0, table, params, config.k)
    joint_index = None
    if joint is not None:
        model, model_version = split_model_id(joint["model"])
        joint_index = {
            "model": model,
            "model_version": model_version,
            "dim": joint["dim"],
            "scann_params": joint["shard"]["scann_params"],
            "shard": joint["shard"],
        }
    table_entries = [file_entry(path, out_dir) for path in table.paths]

    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        version=config.version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        encoder_id=table.encoder_id,
        encoder_spec=dict(config.encoder_spec),
        dim=table.dim,
        counts=counts,
        scann_params=params.to_json(),
        shards=[entry],
        files=sorted(table_entries + index_entries, key=lambda e: e["path"]),
        joint_index=joint_index,
        tuning=tuning,
        lineage=full_build_lineage(config.version, num_rows),
    )
    del table  # the near-duplicate step loads the index it needs; the table is not held twice
    manifest = with_sources(out_dir, with_hash_model(out_dir, manifest))
    manifest = with_near_duplicates(out_dir, manifest, near_duplicates)
    write_manifest(out_dir, manifest)
    return manifest


def _check_shard_sizes(paths: Sequence[str], num_shards: int) -> None:
    """Refuse, before anything is deleted, a shard count that would leave a shard empty.

    Reads only the ``image_id`` column: cheap next to the builds, and a clear error here beats
    a worker failing halfway through the Beam job.
    """
    counts = np.zeros(num_shards, dtype=np.int64)
    for path in paths:
        with open_file(path) as handle:
            ids = pq.read_table(handle, columns=["image_id"])["image_id"].to_pylist()
        counts += np.bincount(shard_of_ids(ids, num_shards), minlength=num_shards)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        raise ValueError(
            f"empty table: {num_shards} index shards over {int(counts.sum())} rows leave "
            f"shard(s) {empty[:10]} with no rows; use fewer index shards"
        )
    logger.info("rows per index shard: %s", counts.tolist())


def _build_index_sharded(
    out_dir: str,
    paths: Sequence[str],
    config: BuildConfig,
    counts: dict[str, int],
    run_shards: ShardRunner | None,
    near_duplicates: NearDuplicateStep | None = None,
) -> IndexManifest:
    num_shards = config.num_shards
    _check_shard_sizes(paths, num_shards)
    remove_previous_index(out_dir)
    shards, index_entries, joint_index, encoder_id, dim = _build_sharded(
        out_dir, paths, config, run_shards
    )
    num_rows = sum(shard["count"] for shard in shards)
    if "indexed" in counts and counts["indexed"] != num_rows:
        raise ValueError(f"counts['indexed'] is {counts['indexed']} but the shards hold {num_rows}")
    table_entries = [file_entry(path, out_dir) for path in sorted(paths)]
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        version=config.version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        encoder_id=encoder_id,
        encoder_spec=dict(config.encoder_spec),
        dim=dim,
        counts={**counts, "indexed": num_rows},
        # Each shard records its own parameters; this is shard 0's, for readers of one value.
        scann_params=shards[0]["scann_params"],
        shards=shards,
        files=sorted(table_entries + index_entries, key=lambda e: e["path"]),
        joint_index=joint_index,
        sharding={"assignment": SHARD_ASSIGNMENT, "num_shards": num_shards},
        lineage=full_build_lineage(config.version, num_rows),
    )
    manifest = with_sources(out_dir, with_hash_model(out_dir, manifest))
    manifest = with_near_duplicates(out_dir, manifest, near_duplicates)
    write_manifest(out_dir, manifest)
    return manifest
