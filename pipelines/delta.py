"""Incremental runs that write only what changed: rows to add or replace, and ids to delete.

When every row of the previous version is one this run would make itself (same encoder, joint
model, tag head and captioner versions, same table schema, index shard count and quantization),
the index job neither rewrites the table nor rebuilds the index. The job plans on small key
records and writes a *delta*:

    hashed images, in lists by bucket ──┐
                                        ├─ CoGroupByKey(bucket of sha256) ─ plan each content
    previous key columns, in lists ─────┘   (dedupe and plan in one shuffle; no embeddings)

    per content hash (``plan_delta``):  unchanged                -> nothing at all
                                        new or changed bytes     -> decode, encode
                                        same bytes, new identity -> the stored row re-read and
                                          (moved, duplicates or      re-labelled (no decode)
                                          metadata changed)
                                        gone from the corpus     -> its image_id deleted

``OUT/delta/table`` holds the rows to upsert and ``OUT/delta/deleted*.txt`` the ids to delete;
after the job ``apply_delta`` hands both to ``index.update.update_index``, which
copies the untouched table files byte for byte, mutates the ScaNN shards with upsert/delete (or
rebuilds them when its rebuild rule says so) and writes the manifest last.

An unchanged image costs a listing entry, a hash and a join record; no embedding of it is read,
shuffled or written again. That is what makes a nightly run cost in proportion to the change.

Anything else (a new encoder or joint model version, another storage, tags or captions added or
dropped, another shard count or quantization, autotuning) goes the way of
``pipelines.incremental``: rows are still reused one by one, the table is rewritten and the
index rebuilt. ``update_blocker`` says which way a run goes, and why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from index.manifest import IndexManifest, read_manifest
from index.scann_index import ScannParams
from index.schema import JOINT_EMBEDDING, JOINT_MODEL, embedding_table_schema, expanded_row
from index.shards import SHARD_ASSIGNMENT
from index.table import TABLE_DIR, parquet_files, parquet_rows
from index.update import RebuildRule, UpdateResult, update_index
from pipelines.incremental import ReusePlan, choose_stored
from pipelines.options import IndexConfig
from pipelines.transforms import choose_unique
from pipelines.types import DuplicateRecord, HashedImage, UniqueImage
from storage.files import delete_tree, join_path, join_uri

logger = logging.getLogger(__name__)

_RAW = CompressionTypes.UNCOMPRESSED
DELTA_DIR = "delta"
DELETED_PREFIX = "deleted"
ENCODE, KEEP, REFRESH = "encode", "keep", "refresh"
DUPLICATES, DELETED, NEEDS_JOINT = "duplicates", "deleted", "needs_joint"
SOURCE_FILE = "_source_file"  # which previous table file holds a key record's row
# The join runs per bucket of content hashes (``bucket_of``), each held in memory by one
# worker while it is planned: ~20k key records of a few hundred bytes, a few MB.
ROWS_PER_BUCKET = 20_000
_BATCH = 2048  # current images per list on their way to the join
IDENTITY = ("image_id", "uri", "duplicate_uris", "metadata")
KEY_COLUMNS = ("sha256", *IDENTITY, "encoder")


def delta_dir(config: IndexConfig) -> str:
    return join_uri(config.out, DELTA_DIR)


def key_columns(plan: ReusePlan) -> tuple[str, ...]:
    """The previous table's columns the plan needs: identity, content hash, model versions."""
    joint = (JOINT_MODEL,) if plan.joint_model_id is not None else ()
    return (*KEY_COLUMNS, *joint, *(column for column, _ in plan.required))


# --- which way a run goes ---------------------------------------------------------------------


def _open(path: str):
    return FileSystems.open(path, compression_type=_RAW)


def _same_columns(found: pa.Schema, wanted: pa.Schema) -> bool:
    """Same column names, order and types (nullability and metadata aside)."""
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in wanted]


def previous_table_files(index_dir: str, manifest: IndexManifest) -> list[str]:
    """The table files a version's manifest lists, as paths under ``index_dir``."""
    return [join_path(index_dir, entry["path"]) for entry in manifest.files_under(TABLE_DIR)]


def update_blocker(config: IndexConfig, manifest: IndexManifest) -> str | None:
    """Why the previous version can't be updated in place by this run, or None when it can.

    Reads the previous table's footers and its small model-version columns, never embeddings.
    """
    plan = config.reuse
    if plan is None:
        return "no previous version"
    if config.target_recall is not None:
        return "--target_recall autotunes a freshly built index"
    if len(manifest.shards) != config.index_shards:
        return f"the previous index has {len(manifest.shards)} shard(s), this run asks for " + str(
            config.index_shards
        )
    quantize = ScannParams.from_json(manifest.scann_params).quantize
    if quantize != config.index_quantize:
        return f"the previous index stores {quantize} vectors, not {config.index_quantize}"
    assignment = (manifest.sharding or {}).get("assignment", SHARD_ASSIGNMENT)
    if len(manifest.shards) > 1 and assignment != SHARD_ASSIGNMENT:
        return f"the previous index assigns rows to shards by {assignment!r}"
    from encoders.registry import image_encoder_dim

    wanted = embedding_table_schema(
        image_encoder_dim(config.encoder),
        config.joint_model.dim if config.joint_model is not None else None,
        config.embedding_storage,
        tags=config.tag_head is not None,
        captions=config.captioner is not None,
    )
    expected = {"encoder": plan.encoder_id, **dict(plan.required)}
    if plan.joint_model_id is not None:
        expected[JOINT_MODEL] = plan.joint_model_id
    files = previous_table_files(plan.index_dir, manifest)
    if not files:
        return "the previous version lists no table files"
    for path in files:
        with _open(path) as handle:
            parquet = pq.ParquetFile(handle)
            if not _same_columns(parquet.schema_arrow, wanted):
                return f"{path} has other columns (storage, joint, tags, captions) than this run"
            table = parquet.read(columns=list(expected))
        for column, value in expected.items():
            if table.num_rows and not pc.all(pc.equal(table[column], value)).as_py():
                return f"rows of {path} were not all made by {column} {value}"
    return None


def plan_in_place(config: IndexConfig) -> IndexConfig:
    """``config`` with its reuse plan switched to an in-place update when the previous allows."""
    plan = config.reuse
    if plan is None:
        return config
    manifest = read_manifest(plan.index_dir)
    blocker = update_blocker(config, manifest)
    if blocker is not None:
        logger.info(
            "rewriting the table and rebuilding the index over %s: %s",
            plan.previous_version,
            blocker,
        )
        return config
    files = tuple(previous_table_files(plan.index_dir, manifest))
    logger.info("updating %s in place: only new, changed and deleted rows", plan.previous_version)
    buckets = max(1, -(-int(manifest.counts.get("indexed", 0)) // ROWS_PER_BUCKET))
    in_place = dataclasses.replace(
        plan, update_in_place=True, table_files=files, join_buckets=buckets
    )
    return dataclasses.replace(config, reuse=in_place)


# --- the plan for one content hash (pure) -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Refresh:
    """A stored row to write again under the current identity (its embedding is kept)."""

    source_file: str
    stored_id: str
    image_id: str
    uri: str
    duplicate_uris: tuple[str, ...]
    metadata: str
    needs_joint: bool  # the stored joint embedding is of another joint model


@dataclasses.dataclass(frozen=True)
class DeltaDecision:
    action: str | None  # ENCODE, KEEP, REFRESH, or None when the content left the corpus
    unique: UniqueImage | None
    duplicates: list[DuplicateRecord]
    refresh: Refresh | None
    deleted: list[str]  # stored image_ids that leave the table (a replaced id included)
    dropped: int  # stored rows whose content is not carried over (gone, or made otherwise)


def plan_delta(
    sha256: str,
    currents: Iterable[HashedImage],
    stored: Iterable[dict[str, Any]],
    plan: ReusePlan,
) -> DeltaDecision:
    """Dedupe the current copies of one content and decide what happens to it and its rows.

    ``stored`` are the previous table's key records for this hash (normally one). A deleted id
    that is also written again (a changed file keeps its uri, hence its id) is an upsert:
    ``apply_delta`` takes it out of the deletes.
    """
    currents, stored = list(currents), list(stored)
    if not currents:
        gone = sorted(row["image_id"] for row in stored)
        return DeltaDecision(None, None, [], None, gone, len(gone))
    unique, duplicates = choose_unique(sha256, currents)
    chosen = choose_stored(stored, plan.encoder_id, plan.required)
    if chosen is None:
        replaced = sorted(row["image_id"] for row in stored)
        return DeltaDecision(ENCODE, unique, duplicates, None, replaced, len(replaced))
    others = sorted(row["image_id"] for row in stored if row is not chosen)
    needs_joint = plan.joint_model_id is not None and chosen.get(JOINT_MODEL) != plan.joint_model_id
    identity = (
        unique.ref.image_id,
        unique.ref.uri,
        list(unique.duplicate_uris),
        unique.ref.metadata_json,
    )
    if identity == tuple(chosen[column] for column in IDENTITY) and not needs_joint:
        return DeltaDecision(KEEP, unique, duplicates, None, others, len(others))
    refresh = Refresh(
        source_file=chosen[SOURCE_FILE],
        stored_id=chosen["image_id"],
        image_id=unique.ref.image_id,
        uri=unique.ref.uri,
        duplicate_uris=unique.duplicate_uris,
        metadata=unique.ref.metadata_json,
        needs_joint=needs_joint,
    )
    moved = [chosen["image_id"]] if chosen["image_id"] != unique.ref.image_id else []
    return DeltaDecision(REFRESH, unique, duplicates, refresh, sorted(others + moved), len(others))


def refreshed_row(stored: dict[str, Any], refresh: Refresh) -> dict[str, Any]:
    """A stored table row under the current identity, float32 as the writer takes it."""
    row = expanded_row(stored)
    if refresh.needs_joint:
        row = {k: v for k, v in row.items() if k not in (JOINT_EMBEDDING, JOINT_MODEL)}
    return {
        **row,
        "image_id": refresh.image_id,
        "uri": refresh.uri,
        "duplicate_uris": list(refresh.duplicate_uris),
        "metadata": refresh.metadata,
    }


# --- the Beam side ----------------------------------------------------------------------------


def bucket_of(sha256: str, buckets: int) -> int:
    """The join bucket of a content hash: every copy and stored row of a content meet in one."""
    return int(sha256[:8], 16) % buckets


def by_bucket(records: Iterable[Any], sha256: Any, buckets: int) -> list[tuple[int, list[Any]]]:
    """``records`` split into ``(bucket, [records])`` by ``bucket_of(sha256(record))``."""
    split: dict[int, list[Any]] = {}
    for record in records:
        split.setdefault(bucket_of(sha256(record), buckets), []).append(record)
    return sorted(split.items(), key=lambda item: item[0])


def _hashed_sha256(image: HashedImage) -> str:
    return image.sha256


def _stored_sha256(row: dict[str, Any]) -> str:
    return row["sha256"]


class _ReadKeysFn(beam.DoFn):
    """A previous table file -> ``(bucket, [key records])``, a row group at a time."""

    def __init__(self, columns: Sequence[str], buckets: int) -> None:
        self.columns = list(columns)
        self.buckets = buckets

    def process(self, path: str) -> Iterable[tuple[int, list[dict[str, Any]]]]:
        with _open(path) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group, columns=self.columns).to_pylist()
                for row in rows:
                    row[SOURCE_FILE] = path
                yield from by_bucket(rows, _stored_sha256, self.buckets)


class _PlanBucketFn(beam.DoFn):
    """(bucket, {"current": [[HashedImage]], "previous": [[key record]]}) -> per content hash,
    ``plan_delta``'s outcome: a UniqueImage to encode on the main output, the rest tagged."""

    def __init__(self, plan: ReusePlan) -> None:
        self.plan = plan
        self.reused = Metrics.counter("imgsearch", "reused")
        self.joint_recomputed = Metrics.counter("imgsearch", "joint_recomputed")
        self.to_encode = Metrics.counter("imgsearch", "to_encode")
        self.dropped = Metrics.counter("imgsearch", "previous_dropped")

    def process(self, element: tuple[int, dict[str, Iterable[list[Any]]]]) -> Iterable[Any]:
        _, grouped = element
        currents: dict[str, list[HashedImage]] = {}
        stored: dict[str, list[dict[str, Any]]] = {}
        for chunk in grouped["current"]:
            for image in chunk:
                currents.setdefault(image.sha256, []).append(image)
        for chunk in grouped["previous"]:
            for row in chunk:
                stored.setdefault(row["sha256"], []).append(row)
        for sha256 in sorted(currents.keys() | stored.keys()):
            decision = plan_delta(
                sha256, currents.get(sha256, ()), stored.get(sha256, ()), self.plan
            )
            yield from self._outputs(decision)

    def _outputs(self, decision: DeltaDecision) -> Iterable[Any]:
        self.dropped.inc(decision.dropped)
        for duplicate in decision.duplicates:
            yield beam.pvalue.TaggedOutput(DUPLICATES, duplicate)
        for image_id in decision.deleted:
            yield beam.pvalue.TaggedOutput(DELETED, image_id)
        if decision.action == ENCODE:
            self.to_encode.inc()
            yield decision.unique
        elif decision.action in (KEEP, REFRESH):
            self.reused.inc()
        if decision.refresh is not None:
            self.joint_recomputed.inc(int(decision.refresh.needs_joint))
            refresh = decision.refresh
            yield beam.pvalue.TaggedOutput(REFRESH, (refresh.source_file, refresh))


class _RefreshRowsFn(beam.DoFn):
    """(previous table file, [Refresh]) -> the stored rows under their current identities."""

    def process(self, element: tuple[str, Iterable[Refresh]]) -> Iterable[Any]:
        path, refreshes = element
        wanted = {refresh.stored_id: refresh for refresh in refreshes}
        with _open(path) as handle:
            table = pq.read_table(handle)
        table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(list(wanted))))
        for stored in table.to_pylist():
            refresh = wanted[stored["image_id"]]
            row = refreshed_row(stored, refresh)
            yield beam.pvalue.TaggedOutput(NEEDS_JOINT, row) if refresh.needs_joint else row


class PlanDelta(beam.PTransform):
    """PCollection[HashedImage] -> dict of PCollections: ``encode`` (UniqueImage), ``duplicates``,
    ``refreshed`` (complete rows), ``needs_joint`` (rows without joint columns) and ``deleted``
    (image ids). Every hashed input comes out exactly once: to encode, as a duplicate, or as a
    kept or refreshed row (kept rows only as the ``reused`` counter: they stay where they are).
    """

    def __init__(self, plan: ReusePlan) -> None:
        super().__init__()
        if not plan.update_in_place:
            raise ValueError("PlanDelta needs a reuse plan for an in-place update")
        self.plan = plan

    def expand(self, hashed):
        buckets = self.plan.join_buckets
        previous = (
            hashed.pipeline
            | "PreviousFiles" >> beam.Create(list(self.plan.table_files))
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadKeys" >> beam.ParDo(_ReadKeysFn(key_columns(self.plan), buckets))
        )
        # Records cross the shuffle in lists, one per (batch, bucket), not one by one: per
        # element, Beam's overhead would cost more than everything else an unchanged image costs.
        current = (
            hashed
            | "Batch" >> beam.BatchElements(min_batch_size=_BATCH, max_batch_size=_BATCH)
            | "ByBucket" >> beam.FlatMap(by_bucket, _hashed_sha256, buckets)
        )
        planned = (
            {"current": current, "previous": previous}
            | "JoinOnContent" >> beam.CoGroupByKey()
            | "Plan"
            >> beam.ParDo(_PlanBucketFn(self.plan)).with_outputs(
                DUPLICATES, DELETED, REFRESH, main=ENCODE
            )
        )
        refreshed = (
            planned[REFRESH]
            | "GroupByFile" >> beam.GroupByKey()
            | "RefreshRows" >> beam.ParDo(_RefreshRowsFn()).with_outputs(NEEDS_JOINT, main="rows")
        )
        return {
            ENCODE: planned[ENCODE],
            DUPLICATES: planned[DUPLICATES],
            "refreshed": refreshed.rows,
            NEEDS_JOINT: refreshed[NEEDS_JOINT],
            DELETED: planned[DELETED],
        }


class WriteDeletedIds(beam.PTransform):
    """PCollection[image_id] -> ``OUT/delta/deleted-*.txt``, one id a line."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, ids):
        return ids | beam.io.WriteToText(
            join_uri(self.folder, DELETED_PREFIX), file_name_suffix=".txt"
        )


# --- after the job ----------------------------------------------------------------------------


def read_deleted_ids(folder: str) -> list[str]:
    matched = FileSystems.match([join_uri(folder, f"{DELETED_PREFIX}*.txt")])[0].metadata_list
    ids: list[str] = []
    for metadata in sorted(matched, key=lambda m: m.path):
        with _open(metadata.path) as handle:
            ids.extend(line for line in handle.read().decode("utf-8").splitlines() if line)
    return ids


def apply_delta(config: IndexConfig, counts: dict[str, int]) -> UpdateResult:
    """Write the new version from the previous one and the job's delta; -> ``UpdateResult``.

    ``counts`` are the job's tallies; ``indexed`` must match what the update leaves indexed
    (``update_index`` checks it before writing anything). The delta folder is removed after.
    """
    folder = delta_dir(config)
    new_files = [p for p in parquet_files(join_uri(folder, TABLE_DIR)) if parquet_rows(p)]
    upserted: set[str] = set()
    for path in new_files:
        with _open(path) as handle:
            upserted.update(pq.read_table(handle, columns=["image_id"])["image_id"].to_pylist())
    # A changed file keeps its uri and id: its row is replaced (upserted), not deleted.
    deletes = sorted(set(read_deleted_ids(folder)) - upserted)
    result = update_index(
        config.reuse.index_dir,
        config.out,
        new_files,
        deletes,
        config.version,
        RebuildRule(config.max_changed_fraction),
        k=config.neighbors,
        counts=counts,
    )
    delete_tree(folder)
    return result
