"""The incremental plan, and the decision for one content hash: pure, no Beam, no I/O.

Rows are keyed by content (``sha256``). Per content hash, the current copies of it (hashed
images, not yet deduplicated) meet the previous table's key records for it, and
``plan_content`` decides:

    unchanged (same bytes, identity, model versions) -> nothing at all in place; in a rewrite,
                                                        refreshed (the new table needs the row)
    same bytes, new identity (moved, duplicates or   -> the stored row re-read and re-labelled
      metadata changed), or another joint model         under the current identity, no decode
                                                        (joint embedding recomputed if stale)
    new content, changed bytes, rows made by another -> decoded and encoded
      encoder, tag head or captioner version
    gone from the corpus                             -> its image_id deleted

A renamed or moved file costs nothing: its embedding is the stored one. Deduplication of the
current copies runs here too (``pipelines.transforms.choose_unique``), so the job needs one
shuffle for both. The plan record is filled in once at the edge (``decide.build_plan``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from index.schema import CAPTIONS, JOINT_EMBEDDING, JOINT_MODEL, caption_list, expanded_row
from index.table import TABLE_DIR
from index.update_policy import UpdateDecision
from pipelines.transforms import choose_unique
from pipelines.types import DuplicateRecord, HashedImage, UniqueImage
from storage.files import join_uri

ENCODE, KEEP, REFRESH = "encode", "keep", "refresh"
# What becomes of a refreshed row's joint columns: kept (same joint model), recomputed (the
# run adds joint embeddings of another model, or the row has none) or dropped (no joint model).
JOINT_KEEP, JOINT_RECOMPUTE, JOINT_DROP = "keep", "recompute", "drop"
SOURCE_FILE = "_source_file"  # which previous table file holds a key record's row
IDENTITY = ("image_id", "uri", "duplicate_uris", "metadata")
KEY_COLUMNS = ("sha256", *IDENTITY, "encoder")
# The join runs per bucket of content hashes (``bucket_of``), each held in memory by one
# worker while it is planned: ~20k key records of a few hundred bytes, a few MB.
ROWS_PER_BUCKET = 20_000


@dataclasses.dataclass(frozen=True)
class ReusePlan:
    """What a stored row must match to be reused, where the stored rows are, and the way the
    run goes (``decision``: rewrite, or in place). Complete when built; nothing is set later.
    """

    index_dir: str  # the previous version's folder (its manifest, table and index)
    previous_version: str  # its name, for logs and the job summary
    encoder_id: str  # the encoder version of this run: rows made by another are re-encoded
    decision: UpdateDecision  # index.update_policy.decide before the job (changes unknown)
    joint_model_id: str | None = None  # ``name/version`` when this run adds joint embeddings
    # (column, value) pairs a stored row must carry, e.g. the tag head and captioner versions
    # when this run adds tags or captions: rows made without them, or by others, are redone.
    required: tuple[tuple[str, str], ...] = ()
    table_files: tuple[str, ...] = ()  # the previous table's files, as its manifest lists them
    join_buckets: int = 1  # content-hash buckets of the join (``bucket_of``)
    # The previous version's sources files (``index.sources``): stored hashes of files whose
    # listing stamp is unchanged are reused, their bytes not read. Empty for older versions.
    source_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.join_buckets < 1:
            raise ValueError(f"join_buckets must be >= 1, got {self.join_buckets}")
        object.__setattr__(self, "required", tuple(tuple(pair) for pair in self.required))
        object.__setattr__(self, "table_files", tuple(self.table_files))
        object.__setattr__(self, "source_files", tuple(self.source_files))

    @property
    def in_place(self) -> bool:
        """Whether the previous version is updated in place (only changes written)."""
        return self.decision.in_place

    @property
    def table_dir(self) -> str:
        return join_uri(self.index_dir, TABLE_DIR)


def join_buckets_for(indexed: int) -> int:
    """Buckets for a previous table of ``indexed`` rows: ``ROWS_PER_BUCKET`` rows each."""
    return max(1, -(-int(indexed) // ROWS_PER_BUCKET))


def key_columns(plan: ReusePlan) -> tuple[str, ...]:
    """The previous table's columns the plan needs: identity, content hash, model versions."""
    joint = (JOINT_MODEL,) if plan.joint_model_id is not None else ()
    return (*KEY_COLUMNS, *joint, *(column for column, _ in plan.required))


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


def joint_fate(joint_model_id: str | None, stored_joint_model: str | None) -> str:
    if joint_model_id is None:
        return JOINT_DROP
    return JOINT_KEEP if stored_joint_model == joint_model_id else JOINT_RECOMPUTE


@dataclasses.dataclass(frozen=True)
class Refresh:
    """A stored row to write again under the current identity (its embedding is kept)."""

    source_file: str
    stored_id: str
    image_id: str
    uri: str
    duplicate_uris: tuple[str, ...]
    metadata: str
    joint: str = JOINT_DROP  # JOINT_KEEP, JOINT_RECOMPUTE or JOINT_DROP

    @property
    def needs_joint(self) -> bool:
        """Whether the joint embedding is recomputed (the stored one is of another model)."""
        return self.joint == JOINT_RECOMPUTE


@dataclasses.dataclass(frozen=True)
class ContentDecision:
    action: str | None  # ENCODE, KEEP, REFRESH, or None when the content left the corpus
    unique: UniqueImage | None
    duplicates: list[DuplicateRecord]
    refresh: Refresh | None
    deleted: list[str]  # stored image_ids that leave the table (a replaced id included)
    dropped: int  # stored rows whose content is not carried over (gone, or made otherwise)


def plan_content(
    sha256: str,
    currents: Iterable[HashedImage],
    stored: Iterable[dict[str, Any]],
    plan: ReusePlan,
) -> ContentDecision:
    """Dedupe the current copies of one content and decide what happens to it and its rows.

    ``stored`` are the previous table's key records for this hash (normally one; the smallest
    ``image_id`` wins if not). A deleted id that is also written again (a changed file keeps
    its uri, hence its id) is an upsert: the in-place applier takes it out of the deletes.
    """
    currents, stored = list(currents), list(stored)
    if not currents:
        gone = sorted(row["image_id"] for row in stored)
        return ContentDecision(None, None, [], None, gone, len(gone))
    unique, duplicates = choose_unique(sha256, currents)
    chosen = choose_stored(stored, plan.encoder_id, plan.required)
    if chosen is None:
        replaced = sorted(row["image_id"] for row in stored)
        return ContentDecision(ENCODE, unique, duplicates, None, replaced, len(replaced))
    others = sorted(row["image_id"] for row in stored if row is not chosen)
    joint = joint_fate(plan.joint_model_id, chosen.get(JOINT_MODEL))
    identity = (
        unique.ref.image_id,
        unique.ref.uri,
        list(unique.duplicate_uris),
        unique.ref.metadata_json,
    )
    unchanged = identity == tuple(chosen[column] for column in IDENTITY)
    # In place, an unchanged row stays where it is; a rewritten table needs it written again.
    if plan.in_place and unchanged and joint != JOINT_RECOMPUTE:
        return ContentDecision(KEEP, unique, duplicates, None, others, len(others))
    refresh = Refresh(
        source_file=chosen[SOURCE_FILE],
        stored_id=chosen["image_id"],
        image_id=unique.ref.image_id,
        uri=unique.ref.uri,
        duplicate_uris=unique.duplicate_uris,
        metadata=unique.ref.metadata_json,
        joint=joint,
    )
    moved = [chosen["image_id"]] if chosen["image_id"] != unique.ref.image_id else []
    return ContentDecision(
        REFRESH, unique, duplicates, refresh, sorted(others + moved), len(others)
    )


def refreshed_row(stored: dict[str, Any], refresh: Refresh) -> dict[str, Any]:
    """A stored table row under the current identity, float32 as the writer takes it.

    Its joint columns go unless they are of this run's joint model: recomputed downstream
    when the run adds joint embeddings, absent from a run without them. A row of a table
    written before the ``captions`` column gets its one ``caption`` as the list (re-captioning
    it would need its image decoded and encoded again).
    """
    row = expanded_row(stored)
    if refresh.joint != JOINT_KEEP:
        row = {k: v for k, v in row.items() if k not in (JOINT_EMBEDDING, JOINT_MODEL)}
    listed = caption_list(row)
    if listed is not None:
        row = {**row, CAPTIONS: listed}
    return {
        **row,
        "image_id": refresh.image_id,
        "uri": refresh.uri,
        "duplicate_uris": list(refresh.duplicate_uris),
        "metadata": refresh.metadata,
    }


def bucket_of(sha256: str, buckets: int) -> int:
    """The join bucket of a content hash: every copy and stored row of a content meet in one."""
    return int(sha256[:8], 16) % buckets


def by_bucket(
    records: Iterable[Any], sha256: Callable[[Any], str], buckets: int
) -> list[tuple[int, list[Any]]]:
    """``records`` split into ``(bucket, [records])`` by ``bucket_of(sha256(record))``."""
    split: dict[int, list[Any]] = {}
    for record in records:
        split.setdefault(bucket_of(sha256(record), buckets), []).append(record)
    return sorted(split.items(), key=lambda item: item[0])
