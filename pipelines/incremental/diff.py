"""What changed since the previous version: a key-only, bucketed shuffle join (Beam).

    hashed images, in lists by bucket ──┐
                                        ├─ CoGroupByKey(bucket of sha256) ─ plan each content
    previous key columns, in lists ─────┘   (dedupe and plan in one shuffle; no embeddings)
                                                  │
            refreshes, grouped by their table file ┴─ re-read the stored rows, re-labelled

Why a shuffle join, not a side input: at web scale the previous table is far larger than any
worker's memory, and a shuffle join scales with the cluster.

Why key-only: the join carries the previous table's key columns (content hash, identity,
model versions, the file the row is in), a few hundred bytes a row, never embeddings. Only the
rows that must be written again (refreshes) are read whole, afterwards, one table file at a
time, so each file is opened once by one worker whatever share of it is needed.

Why buckets: the join key is a bucket of content hashes (``plan.bucket_of``), not the hash
itself, sized so that a bucket is planned in a few MB of one worker's memory; every copy and
stored row of one content meet in one bucket.

Why lists cross the shuffle: records go in lists, one per (batch, bucket) or (row group,
bucket), not one by one; per element, Beam's overhead would cost more than everything else an
unchanged image costs. An unchanged image costs a listing entry, a hash and a join record;
that is what makes a nightly run cost in proportion to the change.

Used by both appliers: in place, unchanged rows are kept where they are (only the ``reused``
counter); for a rewrite, the planner emits them as refreshes so that they are written again.
A rewrite's previous table may lack optional columns (joint, tags, captions: it was made
otherwise, which is why the run rewrites), so the key read fills missing ones with None.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from pipelines.incremental.plan import (
    ENCODE,
    KEEP,
    REFRESH,
    SOURCE_FILE,
    ContentDecision,
    Refresh,
    ReusePlan,
    by_bucket,
    key_columns,
    plan_content,
    refreshed_row,
)
from pipelines.types import HashedImage
from storage.files import open_file

DUPLICATES, DELETED, NEEDS_JOINT, REFRESHED = "duplicates", "deleted", "needs_joint", "refreshed"
_BATCH = 2048  # current images per list on their way to the join


def _hashed_sha256(image: HashedImage) -> str:
    return image.sha256


def _stored_sha256(row: dict[str, Any]) -> str:
    return row["sha256"]


class _ReadKeysFn(beam.DoFn):
    """A previous table file -> ``(bucket, [key records])``, a row group at a time.

    With ``fill_missing`` (a rewrite), columns the file lacks read as None.
    """

    def __init__(self, columns: Sequence[str], buckets: int, fill_missing: bool) -> None:
        self.columns = list(columns)
        self.buckets = buckets
        self.fill_missing = fill_missing

    def process(self, path: str) -> Iterable[tuple[int, list[dict[str, Any]]]]:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            columns, missing = self.columns, []
            if self.fill_missing:
                names = set(parquet.schema_arrow.names)
                columns = [c for c in self.columns if c in names]
                missing = [c for c in self.columns if c not in names]
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group, columns=columns).to_pylist()
                filled = {SOURCE_FILE: path, **dict.fromkeys(missing)}
                for row in rows:
                    row.update(filled)
                yield from by_bucket(rows, _stored_sha256, self.buckets)


class _PlanBucketFn(beam.DoFn):
    """(bucket, {"current": [[HashedImage]], "previous": [[key record]]}) -> per content hash,
    ``plan_content``'s outcome: a UniqueImage to encode on the main output, the rest tagged."""

    def __init__(self, plan: ReusePlan) -> None:
        self.plan = plan
        self.deletes = plan.in_place  # a rewritten table holds the current corpus: no deletes
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
            decision = plan_content(
                sha256, currents.get(sha256, ()), stored.get(sha256, ()), self.plan
            )
            yield from self._outputs(decision)

    def _outputs(self, decision: ContentDecision) -> Iterable[Any]:
        self.dropped.inc(decision.dropped)
        for duplicate in decision.duplicates:
            yield beam.pvalue.TaggedOutput(DUPLICATES, duplicate)
        if self.deletes:
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
        with open_file(path) as handle:
            table = pq.read_table(handle)
        table = table.filter(pc.is_in(table["image_id"], value_set=pa.array(list(wanted))))
        for stored in table.to_pylist():
            refresh = wanted[stored["image_id"]]
            row = refreshed_row(stored, refresh)
            yield beam.pvalue.TaggedOutput(NEEDS_JOINT, row) if refresh.needs_joint else row


class DiffPrevious(beam.PTransform):
    """PCollection[HashedImage] -> dict of PCollections: ``encode`` (UniqueImage), ``duplicates``,
    ``refreshed`` (complete rows), ``needs_joint`` (rows without joint columns) and ``deleted``
    (image ids; empty for a rewrite). Every hashed input comes out exactly once: to encode, as
    a duplicate, or as a kept or refreshed row (kept rows only as the ``reused`` counter: in
    place, they stay where they are).
    """

    def __init__(self, plan: ReusePlan) -> None:
        super().__init__()
        self.plan = plan

    def expand(self, hashed):
        buckets = self.plan.join_buckets
        columns = key_columns(self.plan)
        previous = (
            hashed.pipeline
            | "PreviousFiles" >> beam.Create(list(self.plan.table_files))
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadKeys" >> beam.ParDo(_ReadKeysFn(columns, buckets, not self.plan.in_place))
        )
        # Lists, one per (batch, bucket), cross the shuffle (see the module docstring).
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
            REFRESHED: refreshed.rows,
            NEEDS_JOINT: refreshed[NEEDS_JOINT],
            DELETED: planned[DELETED],
        }
