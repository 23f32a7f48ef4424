"""The one decision of how a new version is made from a previous one, as a pure function.

A run over a previous version goes one of three ways (``decide``):

``REWRITE``
    the table is rewritten (stored rows reused one by one, re-labelled, converted) and the
    index built afresh. Taken when the previous version's rows or index are not what this run
    would make: another table schema (storage, joint, tags or captions added or dropped), rows
    of another encoder, joint model, tag head or captioner version, another shard count,
    quantization or shard assignment, or autotuning (``target_recall`` tunes a fresh index).
``UPSERT``
    the table is updated in place (untouched files copied byte for byte, only changed rows
    written) and every ScaNN shard mutated with upsert/delete: the nightly steady state.
``REBUILD``
    the table is updated in place, but the index is rebuilt from it (the rebuild rule below).

Before the job the changes are not known yet (``changes=None``): the answer is ``REWRITE`` or
``UPSERT`` (in place, pending the counts). After the job, ``index.update.update_index`` asks
again with the change counts, and the rule may turn ``UPSERT`` into ``REBUILD``.

Why a rebuild is ever due: a tree-AH shard's k-means partitions and AH codebook were trained on
the rows of the full build. Rows added later are assigned to the nearest existing leaf and
encoded with the old codebook; while they are a small share of the shard and come from the same
distribution, recall holds (ScaNN's own mutation support is built for that), but as they grow
the leaves unbalance and the codebook stops fitting, and nothing short of retraining recovers
it. Counting changes is cheap and predictable, so the rule is a threshold on the share of rows
upserted or deleted since the last full build (10% by default), plus a rebuild whenever a
shard's size would change its ScaNN kind under ``choose_scann_params`` (a brute-force shard
growing past 20k rows should become a tree; a tree shrinking below should be exact).

The inputs are plain typed records (``IndexFacts`` from a manifest, plus what a table check
found; ``RunRequest``; ``Changes``), so the index layer decides without knowing the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from index.manifest import IndexManifest, lineage_of
from index.scann_index import QUANTIZE, ScannParams, choose_scann_params
from index.shards import SHARD_ASSIGNMENT

# See the module docstring: the share of rows changed since the last full build beyond which
# partitions and codebooks trained on the old rows are retrained rather than patched.
DEFAULT_MAX_CHANGED_FRACTION = 0.10

REWRITE, UPSERT, REBUILD = "rewrite", "upsert", "rebuild"


def check_update_settings(max_changed_fraction: float, k: int) -> None:
    """ValueError unless the rebuild threshold and the neighbours an index is tuned for are sane."""
    if not 0.0 <= max_changed_fraction:
        raise ValueError(f"max_changed_fraction must be >= 0, got {max_changed_fraction}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")


@dataclasses.dataclass(frozen=True)
class IndexFacts:
    """What the decision needs to know about the previous version (from its manifest)."""

    version: str
    dim: int
    quantize: str
    assignment: str  # how rows are assigned to shards
    shard_dirs: tuple[str, ...]
    shard_kinds: tuple[str, ...]  # each shard's ScaNN kind, in manifest order
    built_from: str  # the full build this version descends from
    built_count: int  # rows indexed by that build
    changed_since_build: int  # rows upserted + deleted by the updates since
    # Why the previous table's rows are not the rows this run writes, None when they are
    # (found by reading table footers and model-version columns: see pipelines.incremental).
    table_mismatch: str | None = None

    @classmethod
    def of(cls, manifest: IndexManifest, table_mismatch: str | None = None) -> IndexFacts:
        lineage = lineage_of(manifest)
        return cls(
            version=manifest.version,
            dim=manifest.dim,
            quantize=ScannParams.from_json(manifest.scann_params).quantize,
            assignment=(manifest.sharding or {}).get("assignment", SHARD_ASSIGNMENT),
            shard_dirs=tuple(shard["index_dir"] for shard in manifest.shards),
            shard_kinds=tuple(
                ScannParams.from_json(manifest.shard_params(shard)).kind
                for shard in manifest.shards
            ),
            built_from=str(lineage["built_from"]),
            built_count=int(lineage["built_count"]),
            changed_since_build=sum(u["upserted"] + u["deleted"] for u in lineage["updates"]),
            table_mismatch=table_mismatch,
        )


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What the new version is asked to be."""

    index_shards: int
    quantize: str = "float32"
    target_recall: float | None = None
    max_changed_fraction: float = DEFAULT_MAX_CHANGED_FRACTION
    k: int = 10

    def __post_init__(self) -> None:
        if self.index_shards < 1:
            raise ValueError(f"index_shards must be >= 1, got {self.index_shards}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        check_update_settings(self.max_changed_fraction, self.k)


@dataclasses.dataclass(frozen=True)
class Changes:
    """An in-place update's changes: rows upserted and deleted, shard sizes after it."""

    upserted: int
    deleted: int
    shard_counts: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shard_counts", tuple(int(n) for n in self.shard_counts))


@dataclasses.dataclass(frozen=True)
class UpdateDecision:
    way: str  # REWRITE, UPSERT or REBUILD
    reason: str
    changed_fraction: float | None = None  # changes since the full build / its rows, if known

    @property
    def in_place(self) -> bool:
        """Whether the previous table is updated in place (only changed rows written)."""
        return self.way != REWRITE

    @property
    def rebuild(self) -> bool:
        """Whether the index is built afresh rather than mutated with upsert/delete."""
        return self.way != UPSERT


def decide(
    facts: IndexFacts, request: RunRequest, changes: Changes | None = None
) -> UpdateDecision:
    """The way a new version is made from ``facts``' version (see the module docstring)."""
    shards = len(facts.shard_dirs)
    if request.target_recall is not None:
        return UpdateDecision(REWRITE, "target_recall autotunes a freshly built index")
    if shards != request.index_shards:
        return UpdateDecision(
            REWRITE,
            f"the previous index has {shards} shard(s), this run asks for {request.index_shards}",
        )
    if facts.quantize != request.quantize:
        return UpdateDecision(
            REWRITE, f"the previous index stores {facts.quantize} vectors, not {request.quantize}"
        )
    if shards > 1 and facts.assignment != SHARD_ASSIGNMENT:
        return UpdateDecision(
            REWRITE, f"the previous index assigns rows to shards by {facts.assignment!r}"
        )
    if facts.table_mismatch is not None:
        return UpdateDecision(REWRITE, facts.table_mismatch)
    if changes is None:
        return UpdateDecision(
            UPSERT, f"{facts.version} holds the rows this run makes: updated in place"
        )
    return _rebuild_rule(facts, request, changes)


def _rebuild_rule(facts: IndexFacts, request: RunRequest, changes: Changes) -> UpdateDecision:
    built = max(1, facts.built_count)
    changed = changes.upserted + changes.deleted + facts.changed_since_build
    fraction = changed / built
    limit = request.max_changed_fraction
    if fraction > limit:
        return UpdateDecision(
            REBUILD,
            f"{changed} rows changed since the full build {facts.built_from} "
            f"({fraction:.1%} of {built}) exceeds {limit:.1%}",
            fraction,
        )
    counts: Sequence[int] = changes.shard_counts
    for shard, kind, count in zip(facts.shard_dirs, facts.shard_kinds, counts, strict=True):
        if count == 0:
            return UpdateDecision(REBUILD, f"{shard} would be empty", fraction)
        wanted = choose_scann_params(count, facts.dim, request.k).kind
        if wanted != kind:
            return UpdateDecision(
                REBUILD,
                f"{shard} would hold {count} rows, which calls for a {wanted} index, "
                f"not its {kind}",
                fraction,
            )
    return UpdateDecision(
        UPSERT,
        f"{changed} rows changed since the full build ({fraction:.1%} of {built}) is within "
        f"{limit:.1%}",
        fraction,
    )
