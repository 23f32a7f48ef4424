"""What the ScaNN tuner is asked for and what it reports, as JSON-ready frozen dataclasses.

``TuningTarget`` and ``TuningGrid`` are its inputs, ``Candidate`` (one measured configuration)
and ``TuningResult`` (the choice, written to the index manifest) its outputs. They are separate
from the sweep in ``index.ann_tuning`` so readers of a manifest or of a benchmark report need
only these types, not the search machinery.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from index.scann_index import ANISOTROPIC_QUANTIZATION_THRESHOLD, DIMS_PER_BLOCK, ScannParams

# A configuration "meets" a recall target when mean - Z * standard error over the tuning
# queries does (~0.005-0.01 of headroom with 1000 queries): its recall over the whole query
# population then reaches the target with ~97.7% one-sided confidence, and the headroom also
# absorbs the build-to-build noise of ScaNN's AH training (~0.003, measured). A fresh sample
# of M queries still scatters around the population recall by ~std/sqrt(M) per-query recall
# (0.003-0.005 at M = 1000), so it can land that much below the target.
RECALL_CONFIDENCE_Z = 2.0


@dataclasses.dataclass(frozen=True)
class TuningTarget:
    """What the tuned index must deliver: ``recall`` at ``k``, within optional budgets.

    ``max_latency_ms`` bounds the median single-query latency (one thread, one query per call);
    ``max_bytes_per_vector`` bounds the in-memory index size per vector (``bytes_per_vector``).
    """

    recall: float = 0.95
    k: int = 10
    max_latency_ms: float | None = None
    max_bytes_per_vector: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.recall, int | float) or not 0.0 < self.recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.recall!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        for name in ("max_latency_ms", "max_bytes_per_vector"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TuningGrid:
    """The configurations the tuner may try.

    One searcher is built per (``leaves_factors`` entry, ``hashing`` entry): ``num_leaves =
    factor * sqrt(N)`` and ``hashing`` = (dims_per_block, anisotropic threshold). Leaves
    searched (1, 2, 3, 4, 6, 8, ... up to ``max_leaves_fraction`` of the leaves) and reorder
    depths (``reorder_multiples`` times k) are swept at query time on each.
    """

    # ScaNN's README uses ~1.8 sqrt(N) leaves on glove (2000 for 1.2M); sqrt(N) is our default
    # (choose_scann_params). Two trees keep tuning 100k x 64 to seconds on 2 cores.
    leaves_factors: tuple[float, ...] = (1.0, 2.0)
    hashing: tuple[tuple[int, float], ...] = ((DIMS_PER_BLOCK, ANISOTROPIC_QUANTIZATION_THRESHOLD),)
    max_leaves_fraction: float = 0.3
    reorder_multiples: tuple[float, ...] = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

    def __post_init__(self) -> None:
        if not self.leaves_factors or any(f <= 0 for f in self.leaves_factors):
            raise ValueError(f"leaves_factors must be positive, got {self.leaves_factors}")
        if not self.hashing or any(dpb < 1 for dpb, _ in self.hashing):
            raise ValueError(f"hashing needs dims_per_block >= 1, got {self.hashing}")
        if not 0.0 < self.max_leaves_fraction <= 1.0:
            raise ValueError(
                f"max_leaves_fraction must be in (0, 1], got {self.max_leaves_fraction}"
            )
        if not self.reorder_multiples or any(m < 1 for m in self.reorder_multiples):
            raise ValueError(f"reorder_multiples must be >= 1, got {self.reorder_multiples}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One measured configuration.

    ``recall``/``recall_stderr`` over the tuning queries; ``ms_per_query_batched`` is one
    thread searching all of them in one batch. Latencies and ``qps_batched`` (all threads) are
    measured only for configurations on the recall/speed frontier, else ``None``.
    """

    params: ScannParams
    recall: float
    recall_stderr: float
    ms_per_query_batched: float
    bytes_per_vector: float
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    qps_batched: float | None = None

    def recall_lower_bound(self, z: float = RECALL_CONFIDENCE_Z) -> float:
        return self.recall - z * self.recall_stderr

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["params"] = self.params.to_json()
        return row


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """The chosen configuration and what was measured to choose it.

    ``met_target`` is False when nothing met every constraint: recall comes first, so the result
    is then the fastest configuration meeting the recall (brute force if no tree does), and
    ``reason`` says which budget was missed and by how much.
    """

    params: ScannParams
    target: TuningTarget
    recall: float
    latency_ms_p50: float
    latency_ms_p99: float
    qps_batched: float
    bytes_per_vector: float
    met_target: bool
    reason: str
    num_vectors: int
    dim: int
    num_queries: int
    query_source: str
    seed: int
    tuning_seconds: float
    candidates: tuple[Candidate, ...]

    def to_json(self, all_candidates: bool = False) -> dict[str, Any]:
        """JSON for the manifest; only the timed candidates unless ``all_candidates``."""
        data = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name not in ("params", "target", "candidates")
        }
        data["params"] = self.params.to_json()
        data["target"] = self.target.to_json()
        data["candidates"] = [
            c.to_json() for c in self.candidates if all_candidates or c.latency_ms_p50 is not None
        ]
        return data
