"""Incremental indexing: reuse the previous version's rows for content that did not change.

Rows are keyed by content (``sha256``). The current corpus, after hashing and deduplication,
is joined with the previous table on that key with a ``CoGroupByKey``, not a side input: at web
scale the previous table is far larger than any worker's memory, and a shuffle join scales with
the cluster. Per content hash:

* in the corpus and in the previous table, made by the same encoder version (and, when the job
  adds joint embeddings, the same joint model version) -> the stored row is reused, with the
  current ``image_id``, ``uri``, duplicates and metadata (a file renamed or moved costs nothing);
* same encoder but another (or no) joint model -> the image embedding is reused and only the
  joint embedding is recomputed (a cheap NumPy projection, no decode);
* anything else (new content, changed bytes, another encoder version) -> decoded and encoded;
* in the previous table only (deleted, or replaced by new bytes) -> absent from the new version.

Deleted images need no listing of their own: the new version holds exactly the current corpus.
``plan_content`` is the pure decision; the transforms only wire it.

This is the rewriting way: every reused row is read, shuffled and written again, and the index
is rebuilt. The nightly steady state (a previous version made exactly as this run makes rows)
takes ``pipelines.delta`` instead, which joins on key columns only and updates in place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from index.manifest import MANIFEST_NAME
from index.publish import resolve_index
from index.schema import JOINT_EMBEDDING, JOINT_MODEL, expanded_row
from pipelines.types import UniqueImage
from storage.files import join_uri

logger = logging.getLogger(__name__)

REUSED = "reused"
NEEDS_JOINT = "needs_joint"
TABLE_DIR = "table"


@dataclasses.dataclass(frozen=True)
class ReusePlan:
    """What a stored row must match to be reused, and where the stored rows are."""

    table_dir: str  # the previous version's Parquet table folder
    previous_version: str  # its name, for logs and the job summary
    encoder_id: str  # the encoder version of this run: rows made by another are re-encoded
    joint_model_id: str | None = None  # ``name/version`` when this run adds joint embeddings
    # (column, value) pairs a stored row must carry, e.g. the tag head and captioner versions
    # when this run adds tags or captions: rows made without them, or by others, are redone.
    required: tuple[tuple[str, str], ...] = ()
    index_dir: str = ""  # the previous version's folder (its manifest, table and index)
    # Set by ``pipelines.delta.plan_in_place`` when the previous version can be updated in
    # place (only changed rows written, ScaNN upsert/delete); then its table files are listed.
    update_in_place: bool = False
    table_files: tuple[str, ...] = ()
    join_buckets: int = 1  # content-hash buckets of the in-place join (pipelines.delta)


def resolve_previous(previous: str) -> tuple[str, str]:
    """``(index_dir, version)`` of ``--previous``: a publish root (its current version) or an
    index output folder. FileNotFoundError when it is neither or its manifest is missing.
    """
    index_dir, version = resolve_index(previous)
    if not FileSystems.exists(join_uri(index_dir, MANIFEST_NAME)):
        raise FileNotFoundError(
            f"--previous {previous} resolves to {index_dir}, which has no {MANIFEST_NAME}: "
            f"only a complete version can be reused"
        )
    return index_dir, version or os.path.basename(index_dir.rstrip("/"))


def same_location(a: str, b: str) -> bool:
    """Whether two local paths or URIs name the same folder (``--previous`` vs ``--out``)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _table_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in (JOINT_EMBEDDING, JOINT_MODEL)}


def reused_row(current: UniqueImage, stored: dict[str, Any], keep_joint: bool) -> dict[str, Any]:
    """The stored row under the current input's identity (the embedding is the stored one)."""
    stored = expanded_row(stored)
    row = stored if keep_joint else _table_fields(stored)
    return {
        **row,
        "image_id": current.ref.image_id,
        "uri": current.ref.uri,
        "duplicate_uris": list(current.duplicate_uris),
        "metadata": current.ref.metadata_json,
    }


def choose_stored(
    stored_rows: Iterable[dict[str, Any]],
    encoder_id: str,
    required: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any] | None:
    """The stored row to reuse for one content hash: made by ``encoder_id`` and carrying every
    ``required`` (column, value); the smallest ``image_id`` when several are; None when none is.
    """
    usable = [
        row
        for row in stored_rows
        if row.get("encoder") == encoder_id
        and all(row.get(column) == value for column, value in required)
    ]
    return min(usable, key=lambda row: row["image_id"]) if usable else None


def plan_content(
    currents: Iterable[UniqueImage],
    stored_rows: Iterable[dict[str, Any]],
    encoder_id: str,
    joint_model_id: str | None,
    required: tuple[tuple[str, str], ...] = (),
) -> tuple[str, Any] | None:
    """The decision for one content hash: ``(action, payload)`` or None when it was deleted.

    ``action`` is ``"encode"`` (payload: the UniqueImage), ``REUSED`` (payload: a complete row)
    or ``NEEDS_JOINT`` (payload: a row whose joint embedding must be recomputed).
    Deduplication ran before the join, so there is at most one current image per hash; a
    previous table holds one row per hash too, but the smallest ``image_id`` wins if not.
    """
    currents = list(currents)
    if not currents:
        return None
    if len(currents) > 1:
        raise ValueError(f"{len(currents)} current images share sha256 {currents[0].sha256}")
    current = currents[0]
    stored = choose_stored(stored_rows, encoder_id, required)
    if stored is None:
        return "encode", current
    if joint_model_id is None:
        return REUSED, reused_row(current, stored, keep_joint=False)
    if stored.get(JOINT_MODEL) == joint_model_id and stored.get(JOINT_EMBEDDING) is not None:
        return REUSED, reused_row(current, stored, keep_joint=True)
    return NEEDS_JOINT, reused_row(current, stored, keep_joint=False)


class _PlanContentFn(beam.DoFn):
    """(sha256, {"current": [...], "previous": [...]}) -> UniqueImage | tagged reusable rows."""

    def __init__(self, encoder_id: str, joint_model_id: str | None, required: tuple = ()) -> None:
        self.encoder_id = encoder_id
        self.joint_model_id = joint_model_id
        self.required = required
        self.reused = Metrics.counter("imgsearch", "reused")
        self.joint_recomputed = Metrics.counter("imgsearch", "joint_recomputed")
        self.to_encode = Metrics.counter("imgsearch", "to_encode")
        self.dropped = Metrics.counter("imgsearch", "previous_dropped")

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterable[Any]:
        _, grouped = element
        previous = list(grouped["previous"])
        decision = plan_content(
            grouped["current"], previous, self.encoder_id, self.joint_model_id, self.required
        )
        if decision is None:
            # Content of the previous version that is no longer in the corpus: not carried over.
            self.dropped.inc(len(previous))
            return
        action, payload = decision
        if action == "encode":
            self.to_encode.inc()
            yield payload
        elif action == REUSED:
            self.reused.inc()
            yield beam.pvalue.TaggedOutput(REUSED, payload)
        else:
            self.reused.inc()
            self.joint_recomputed.inc()
            yield beam.pvalue.TaggedOutput(NEEDS_JOINT, payload)


class ReadPreviousTable(beam.PTransform):
    """PBegin -> PCollection[(sha256, stored row)] of the previous version's table."""

    def __init__(self, table_dir: str) -> None:
        super().__init__()
        self.table_dir = table_dir

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadTable" >> beam.io.ReadFromParquet(join_uri(self.table_dir, "*.parquet"))
            | "KeyByContent" >> beam.Map(lambda row: (row["sha256"], row))
        )


class SplitReusable(beam.PTransform):
    """PCollection[UniqueImage] -> (to encode, reusable complete rows, rows needing joint).

    Every current image comes out exactly once, in one of the three outputs.
    """

    def __init__(self, plan: ReusePlan) -> None:
        super().__init__()
        self.plan = plan

    def expand(self, unique):
        previous = unique.pipeline | "ReadPrevious" >> ReadPreviousTable(self.plan.table_dir)
        current = unique | "KeyByContent" >> beam.Map(lambda image: (image.sha256, image))
        split = (
            {"current": current, "previous": previous}
            | "JoinOnContent" >> beam.CoGroupByKey()
            | "Plan"
            >> beam.ParDo(
                _PlanContentFn(self.plan.encoder_id, self.plan.joint_model_id, self.plan.required)
            ).with_outputs(REUSED, NEEDS_JOINT, main="encode")
        )
        return split.encode, split[REUSED], split[NEEDS_JOINT]
