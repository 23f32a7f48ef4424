"""Autotune ScaNN's tree-AH parameters against exact neighbours, and what each storage costs.

Given a target recall@k (and optionally a latency or memory budget), ``autotune_scann`` measures
rather than guesses, as autofaiss does for faiss: it holds out a sample of queries, finds their
exact neighbours with ``exact_top_k``, builds one tree-AH searcher per (num_leaves, hashing)
choice, sweeps the leaves searched and the reorder depth at query time (ScaNN takes both as
per-call overrides, so one build serves the whole sweep), times the configurations that reach
the target, and returns the fastest one with its measured recall and latency. Everything it
returns is JSON-ready for the index manifest.

Pure logic over NumPy arrays plus ScaNN through ``index.scann_index``; no Beam, no I/O.

Reproducibility: the held-out sample, the exact neighbours and the grid are deterministic with
``seed``. ScaNN's asymmetric-hashing training is not bit-reproducible between two builds of the
same data, even with one training thread (its k-means tree is): measured recall@10 moves by
~0.003 between builds near 0.9-0.95, up to ~0.01 at lower recall. Latencies are timings. So the
chosen configuration is stable up to that noise, and recall is judged by a lower confidence
bound rather than the sample mean (``RECALL_CONFIDENCE_Z``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from index.scann_index import (
    ANISOTROPIC_QUANTIZATION_THRESHOLD,
    BRUTE_FORCE_MAX_VECTORS,
    DIMS_PER_BLOCK,
    MAX_TRAINING_SAMPLE,
    MIN_TRAINING_SAMPLE,
    TRAINING_POINTS_PER_LEAF,
    ScannParams,
    build_searcher,
    exact_top_k,
    search_batched,
)

if TYPE_CHECKING:
    from scann.scann_ops.py.scann_ops_pybind import ScannSearcher


logger = logging.getLogger(__name__)

DEFAULT_NUM_QUERIES = 1000

# Held-out queries get isotropic noise of this expected norm (unit vectors), then are
# renormalised. Far below neighbour distances of real embeddings (0.81 median between a
# Flickr8k photo's MobileNetV2 embedding and its nearest other photo's), so the neighbourhood
# is that of the held-out row; but it keeps an exact duplicate left in the database from
# turning a query into a trivial self-match.
QUERY_NOISE = 0.05

# A configuration "meets" a recall target when mean - Z * standard error over the tuning
# queries does (~0.005-0.01 of headroom with 1000 queries): its recall over the whole query
# population then reaches the target with ~97.7% one-sided confidence, and the headroom also
# absorbs the build-to-build noise of ScaNN's AH training (~0.003, measured). A fresh sample
# of M queries still scatters around the population recall by ~std/sqrt(M) per-query recall
# (0.003-0.005 at M = 1000), so it can land that much below the target.
RECALL_CONFIDENCE_Z = 2.0

# Per-query latency: this many queries, each timed in every round, keeping its fastest round.
# The minimum over rounds strips scheduler noise on a shared machine; p99 over queries still
# shows the slow queries (those whose nearest leaves are large).
LATENCY_QUERIES = 300

LATENCY_ROUNDS = 3

# Configurations within this share of the fastest latency count as equally fast; among them the
# smallest (fewest leaves, leaves searched, reorder depth) wins, so noise does not flip choices.
TIE_TOLERANCE = 0.05

# Stop widening the search of a tree once its cheapest configuration at the next leaf count is
# this much slower (single-thread batched time) than the best configuration already found.
PRUNE_SLOWDOWN = 1.5

# In-memory storage model (bytes per vector), see memory_per_million.
_FLOAT32_BYTES = 4

_AH_BITS_PER_BLOCK = 4  # LUT16: 16 centres per block

_LEAF_INDEX_BYTES = 4  # each datapoint is listed in its leaf as an int32


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


def ah_code_bytes(dim: int, dims_per_block: int = DIMS_PER_BLOCK) -> float:
    """Bytes of one vector's AH code: ceil(dim / dims_per_block) blocks of 4 bits (LUT16)."""
    return math.ceil(dim / dims_per_block) * _AH_BITS_PER_BLOCK / 8


def memory_per_million(dim: int, dims_per_block: int = DIMS_PER_BLOCK) -> dict[str, float]:
    """Bytes that one million ``dim``-d vectors cost in memory, per storage option.

    - ``float32``: 4 bytes a dimension, what the embedding table and ScaNN's exact reorder hold.
    - ``float16`` / ``bfloat16``: 2 bytes a dimension. float16 keeps 10 mantissa bits, plenty for
      unit vectors (components in [-1, 1]); bfloat16 (ScaNN's reorder option) keeps 7.
    - ``int8``: 1 byte a dimension with one float scale per dimension shared by all vectors
      (ScaNN's fixed-point scheme); the 4 * dim bytes of scales are not per vector.
    - ``scann_ah_codes``: asymmetric-hashing codes, ``dims_per_block`` dims per block and 16
      centres (4 bits) per block: dim / 4 bytes at 2 dims per block. On disk ScaNN stores one
      byte per block (``hashed_dataset.npy``); in memory LUT16 packs two blocks a byte.
    - ``scann_tree_ah_*``: a searcher as built by ``build_searcher``: AH codes + a 4-byte leaf
      index per vector + the reorder copy (``float32`` today; ``int8``/``bfloat16`` are ScaNN
      reorder options not yet exposed by ``ScannParams``; ``no_reorder`` has none). Leaf centres
      (num_leaves * dim * 4 bytes in all) are left out: at ~sqrt(N) leaves that is 4 * dim /
      sqrt(N) bytes per vector, 0.1% of the float32 copy at a million vectors.

    Example, dim 1280: float32 4.77 GiB, float16 2.38 GiB, int8 1.19 GiB, AH codes 305 MiB,
    tree-AH with float32 reorder 5.08 GiB per million vectors.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if (
        isinstance(dims_per_block, bool)
        or not isinstance(dims_per_block, int)
        or dims_per_block < 1
    ):
        raise ValueError(f"dims_per_block must be a positive integer, got {dims_per_block!r}")
    per_vector = {
        "float32": 4.0 * dim,
        "float16": 2.0 * dim,
        "bfloat16": 2.0 * dim,
        "int8": 1.0 * dim,
        "scann_ah_codes": ah_code_bytes(dim, dims_per_block),
    }
    tree = per_vector["scann_ah_codes"] + _LEAF_INDEX_BYTES
    per_vector["scann_tree_ah_no_reorder"] = tree
    per_vector["scann_tree_ah_int8_reorder"] = tree + per_vector["int8"]
    per_vector["scann_tree_ah_bfloat16_reorder"] = tree + per_vector["bfloat16"]
    per_vector["scann_tree_ah_float32_reorder"] = tree + per_vector["float32"]
    return {name: value * 1_000_000 for name, value in per_vector.items()}


def bytes_per_vector(params: ScannParams, dim: int, num_vectors: int) -> float:
    """In-memory bytes per vector of the searcher ``build_searcher(params)`` makes.

    Brute force holds the float32 vectors; tree-AH adds AH codes, a leaf index and its share of
    the leaf centres to the float32 reorder copy (see ``memory_per_million``).
    """
    if params.kind == "brute_force":
        return float(_FLOAT32_BYTES * dim)
    centres = params.num_leaves * dim * _FLOAT32_BYTES / max(1, num_vectors)
    return (
        _FLOAT32_BYTES * dim
        + ah_code_bytes(dim, params.dims_per_block)
        + _LEAF_INDEX_BYTES
        + centres
    )


def recall_per_query(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Share of each query's exact top k (``(M, k)``) found among ``found`` (``(M, k')``)."""
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {exact.shape[0]} queries")
    hits = (found[:, :, np.newaxis] == exact[:, np.newaxis, :]).any(axis=1)
    return hits.sum(axis=1) / exact.shape[1]


def single_query_latencies(
    search_one: Callable[[np.ndarray], object],
    queries: np.ndarray,
    rounds: int = LATENCY_ROUNDS,
) -> np.ndarray:
    """Seconds per query of ``search_one(query_row)``, the fastest of ``rounds`` rounds each.

    The first query is searched once untimed to warm caches and lazy initialisation.
    """
    if queries.shape[0] == 0:
        raise ValueError("no queries to time")
    search_one(queries[0])
    best = np.full(queries.shape[0], np.inf)
    clock = time.perf_counter
    for _ in range(rounds):
        for i, query in enumerate(queries):
            started = clock()
            search_one(query)
            best[i] = min(best[i], clock() - started)
    return best


def batched_qps(
    search_all: Callable[[np.ndarray], object], queries: np.ndarray, rounds: int = 2
) -> float:
    """Queries per second of ``search_all(queries)`` over the whole batch, best of ``rounds``."""
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        search_all(queries)
        best = min(best, time.perf_counter() - started)
    return queries.shape[0] / best


def holdout_queries(
    database: np.ndarray, num_queries: int, seed: int, noise: float = QUERY_NOISE
) -> tuple[np.ndarray, np.ndarray]:
    """``(tuning_database, queries)``: ``num_queries`` rows removed from a copy of ``database``.

    Why held out rather than exact self-queries: a row searched against a database holding it
    finds itself first with score 1.0 and sits inside the leaf it was assigned to, so recall
    would be inflated by an answer no real query gets. ann-benchmarks removes its queries from
    the database for the same reason. A small noise (``QUERY_NOISE``) guards against a
    duplicate of the row left in the database.
    """
    num_vectors, dim = database.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(num_vectors, size=num_queries, replace=False))
    queries = database[rows] + (noise / math.sqrt(dim)) * rng.standard_normal(
        (num_queries, dim)
    ).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    keep = np.ones(num_vectors, dtype=bool)
    keep[rows] = False
    return np.ascontiguousarray(database[keep]), np.ascontiguousarray(queries, dtype=np.float32)


def leaves_to_search_grid(num_leaves: int, max_fraction: float) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, ... up to ``max_fraction`` of ``num_leaves`` (which is included)."""
    cap = max(1, min(num_leaves, math.ceil(max_fraction * num_leaves)))
    values = {cap}
    power = 1
    while power <= cap:
        values.add(power)
        if power + power // 2 <= cap:
            values.add(power + power // 2)
        power *= 2
    return sorted(values)


def _reorder_grid(k: int, multiples: Sequence[float], num_vectors: int) -> list[int]:
    return sorted({min(num_vectors, max(k, round(k * m))) for m in multiples})


@dataclasses.dataclass
class _Tuning:
    """The state of one tuning run: its data, its ground truth and what it measured so far."""

    database: np.ndarray  # the tuning database (query rows held out)
    queries: np.ndarray
    exact: np.ndarray  # (M, k) exact neighbours of queries in database
    k: int
    z: float
    num_vectors: int  # of the database the index is for (before holding out)
    candidates: list[Candidate] = dataclasses.field(default_factory=list)

    @property
    def timing_queries(self) -> np.ndarray:
        return self.queries[:LATENCY_QUERIES]

    def evaluate(self, searcher: ScannSearcher, params: ScannParams) -> Candidate:
        started = time.perf_counter()
        found, _ = search_batched(searcher, self.queries, self.k, params)
        elapsed = time.perf_counter() - started
        recalls = recall_per_query(found, self.exact)
        candidate = Candidate(
            params=params,
            recall=float(recalls.mean()),
            recall_stderr=float(recalls.std(ddof=1) / math.sqrt(len(recalls)))
            if len(recalls) > 1
            else 0.0,
            ms_per_query_batched=1e3 * elapsed / len(self.queries),
            bytes_per_vector=bytes_per_vector(params, self.database.shape[1], self.num_vectors),
        )
        self.candidates.append(candidate)
        return candidate

    def meets(self, candidate: Candidate, recall: float) -> bool:
        return candidate.recall_lower_bound(self.z) >= recall

    def time_candidates(self, searcher: ScannSearcher, timed: list[Candidate]) -> None:
        """Replace each of ``timed`` in ``candidates`` by a copy with its latencies and QPS.

        Rounds are interleaved across the configurations, so a burst of load on a shared
        machine slows one round of each rather than every round of one.
        """
        calls = [self._search_calls(searcher, candidate.params) for candidate in timed]
        best = [np.full(len(self.timing_queries), np.inf) for _ in timed]
        for _ in range(LATENCY_ROUNDS):
            for fastest, (one, _) in zip(best, calls, strict=True):
                np.minimum(
                    fastest, single_query_latencies(one, self.timing_queries, 1), out=fastest
                )
        for candidate, seconds, (_, batch) in zip(timed, best, calls, strict=True):
            measured = dataclasses.replace(
                candidate,
                latency_ms_p50=float(1e3 * np.percentile(seconds, 50)),
                latency_ms_p99=float(1e3 * np.percentile(seconds, 99)),
                qps_batched=batched_qps(batch, self.queries),
            )
            self.candidates[self.candidates.index(candidate)] = measured

    def _search_calls(
        self, searcher: ScannSearcher, params: ScannParams
    ) -> tuple[Callable[[np.ndarray], object], Callable[[np.ndarray], object]]:
        """(one query, all-threads batch) calls of ScaNN's own API at ``params``' settings."""
        extra: dict[str, int] = {}
        if params.kind == "tree_ah":
            extra = {
                "pre_reorder_num_neighbors": max(params.reorder_k, self.k),
                "leaves_to_search": params.num_leaves_to_search,
            }

        def one(query: np.ndarray) -> object:
            return searcher.search(query, final_num_neighbors=self.k, **extra)

        def batch(queries: np.ndarray) -> object:
            return searcher.search_batched_parallel(queries, final_num_neighbors=self.k, **extra)

        return one, batch


def _tree_params(
    k: int, num_vectors: int, num_leaves: int, hashing: tuple[int, float], reorder_k: int, dim: int
) -> ScannParams:
    dims_per_block, threshold = hashing
    return ScannParams(
        kind="tree_ah",
        num_neighbors=k,
        num_leaves=num_leaves,
        num_leaves_to_search=1,
        # The same sample rule as choose_scann_params, over the full table, so the tuned tree
        # is the one build_index would train for this many leaves (build_searcher caps the
        # sample at the rows it is given).
        training_sample_size=min(
            num_vectors,
            MAX_TRAINING_SAMPLE,
            max(MIN_TRAINING_SAMPLE, TRAINING_POINTS_PER_LEAF * num_leaves),
        ),
        dims_per_block=min(dims_per_block, dim),
        anisotropic_quantization_threshold=threshold,
        reorder_k=reorder_k,
    )


def _sweep_tree(run: _Tuning, base: ScannParams, grid: TuningGrid, recalls: list[float]) -> None:
    """Sweep leaves searched x reorder depth on one tree, then time its frontier configurations.

    For each leaf count (ascending) and each target, binary-search the smallest reorder depth
    meeting the target: recall never falls as the reorder depth grows (the rescored candidates
    are a superset), and barely ever as more leaves are searched, so the depth found for one
    leaf count bounds the search at the next.
    """
    searcher = build_searcher(run.database, base)
    reorders = _reorder_grid(run.k, grid.reorder_multiples, run.database.shape[0])
    cache: dict[tuple[int, int], Candidate] = {}

    def at(leaves: int, reorder: int) -> Candidate:
        if (leaves, reorder) not in cache:
            params = dataclasses.replace(base, num_leaves_to_search=leaves, reorder_k=reorder)
            cache[(leaves, reorder)] = run.evaluate(searcher, params)
        return cache[(leaves, reorder)]

    upper = dict.fromkeys(recalls, len(reorders) - 1)  # per target: highest reorder index to try
    frontier: dict[float, list[Candidate]] = {recall: [] for recall in recalls}
    active = set(recalls)
    for leaves in leaves_to_search_grid(base.num_leaves, grid.max_leaves_fraction):
        for recall in sorted(active):
            # Once a depth is found, more leaves are only worth it if they allow a shallower one:
            # one look at the next shallower depth settles most leaf counts.
            high = upper[recall] - 1 if frontier[recall] else upper[recall]
            if high < 0 or not run.meets(at(leaves, reorders[high]), recall):
                continue
            low = 0
            while low < high:  # smallest index meeting the target, in [low, high]
                middle = (low + high) // 2
                if run.meets(at(leaves, reorders[middle]), recall):
                    high = middle
                else:
                    low = middle + 1
            frontier[recall].append(at(leaves, reorders[high]))
            upper[recall] = high
        cheapest = min(
            (c.ms_per_query_batched for (lv, _), c in cache.items() if lv == leaves), default=0.0
        )
        for recall in list(active):
            found = frontier[recall]
            fastest = min((c.ms_per_query_batched for c in found), default=math.inf)
            # More leaves cannot lower the reorder depth below the grid's first, nor get faster.
            if (upper[recall] == 0 and found) or cheapest > PRUNE_SLOWDOWN * fastest:
                active.discard(recall)
        if not active:
            break
    timed = list({id(c): c for found in frontier.values() for c in found}.values())
    run.time_candidates(searcher, timed)
    logger.info(
        "tree of %d leaves (dims_per_block %d): %d configurations measured, %d timed",
        base.num_leaves,
        base.dims_per_block,
        len(cache),
        len(timed),
    )


def _evaluate_brute_force(run: _Tuning) -> Candidate:
    params = ScannParams(kind="brute_force", num_neighbors=run.k)
    searcher = build_searcher(run.database, params)
    candidate = run.evaluate(searcher, params)
    run.time_candidates(searcher, [candidate])
    return run.candidates[-1]


def _fits(candidate: Candidate, target: TuningTarget) -> bool:
    if target.max_bytes_per_vector is not None:
        if candidate.bytes_per_vector > target.max_bytes_per_vector:
            return False
    if target.max_latency_ms is not None:
        if candidate.latency_ms_p50 is None or candidate.latency_ms_p50 > target.max_latency_ms:
            return False
    return True


def _fastest(candidates: list[Candidate]) -> Candidate:
    best = min(c.latency_ms_p50 for c in candidates)
    close = [c for c in candidates if c.latency_ms_p50 <= best * (1 + TIE_TOLERANCE)]

    def size(c: Candidate) -> tuple[int, int, int]:
        p = c.params
        return (p.num_leaves or 0, p.num_leaves_to_search or 0, p.reorder_k or 0)

    return min(close, key=size)


def _choose(run: _Tuning, target: TuningTarget) -> tuple[Candidate, bool, str]:
    """The candidate for ``target``, whether it meets every constraint, and why it was chosen."""
    timed = [c for c in run.candidates if c.latency_ms_p50 is not None]
    reaching = [c for c in timed if run.meets(c, target.recall)]
    fitting = [c for c in reaching if _fits(c, target)]
    if fitting:
        chosen = _fastest(fitting)
        return chosen, True, f"fastest of {len(fitting)} timed configurations meeting the target"
    brute = next((c for c in timed if c.params.kind == "brute_force"), None)
    if brute is None:
        brute = _evaluate_brute_force(run)
        reaching.append(brute)
    if _fits(brute, target) and run.meets(brute, target.recall):
        return brute, True, "no tree-AH configuration met the target; brute force does"
    if not any(c.params.kind == "tree_ah" for c in reaching):
        why = f"no tree-AH configuration reached recall {target.recall}"
    else:
        why = f"configurations reaching recall {target.recall} miss the budget"
    # Recall comes first: a budget is reported as missed rather than silently costing quality.
    in_memory = [c for c in reaching if _fits(c, dataclasses.replace(target, max_latency_ms=None))]
    chosen = _fastest(in_memory or reaching)
    misses = []
    if target.max_latency_ms is not None and chosen.latency_ms_p50 > target.max_latency_ms:
        misses.append(f"p50 {chosen.latency_ms_p50:.3f} ms > budget {target.max_latency_ms} ms")
    if (
        target.max_bytes_per_vector is not None
        and chosen.bytes_per_vector > target.max_bytes_per_vector
    ):
        misses.append(
            f"{chosen.bytes_per_vector:.1f} bytes/vector > budget {target.max_bytes_per_vector}"
        )
    return chosen, False, f"{why}; best effort ({'; '.join(misses) or 'recall first'})"


def _result(
    run: _Tuning,
    target: TuningTarget,
    chosen: Candidate,
    met: bool,
    reason: str,
    query_source: str,
    seed: int,
    seconds: float,
) -> TuningResult:
    return TuningResult(
        params=chosen.params,
        target=target,
        recall=chosen.recall,
        latency_ms_p50=chosen.latency_ms_p50,
        latency_ms_p99=chosen.latency_ms_p99,
        qps_batched=chosen.qps_batched,
        bytes_per_vector=chosen.bytes_per_vector,
        met_target=met,
        reason=reason,
        num_vectors=run.num_vectors,
        dim=int(run.database.shape[1]),
        num_queries=int(run.queries.shape[0]),
        query_source=query_source,
        seed=seed,
        tuning_seconds=seconds,
        candidates=tuple(run.candidates),
    )


def autotune_scann(
    database: np.ndarray,
    target: TuningTarget | None = None,
    *,
    queries: np.ndarray | None = None,
    num_queries: int = DEFAULT_NUM_QUERIES,
    seed: int = 0,
    grid: TuningGrid | None = None,
    recall_confidence_z: float = RECALL_CONFIDENCE_Z,
) -> TuningResult:
    """Choose ScaNN parameters for ``database`` ``(N, d)`` (float32 unit rows) that meet ``target``.

    Queries are ``num_queries`` rows held out of the database (``holdout_queries``), or
    ``queries`` when given (then searched against the whole database). Below
    ``BRUTE_FORCE_MAX_VECTORS`` vectors the answer is brute force. See ``autotune_scann_targets``.
    """
    return autotune_scann_targets(
        database,
        [target or TuningTarget()],
        queries=queries,
        num_queries=num_queries,
        seed=seed,
        grid=grid,
        recall_confidence_z=recall_confidence_z,
    )[0]


def autotune_scann_targets(
    database: np.ndarray,
    targets: Sequence[TuningTarget],
    *,
    queries: np.ndarray | None = None,
    num_queries: int = DEFAULT_NUM_QUERIES,
    seed: int = 0,
    grid: TuningGrid | None = None,
    recall_confidence_z: float = RECALL_CONFIDENCE_Z,
) -> list[TuningResult]:
    """``autotune_scann`` for several targets (same k) at the cost of one sweep.

    Returns one ``TuningResult`` per target, in order. Choice, per target: among the timed
    configurations whose recall lower bound reaches the target and which fit the budgets, the
    one with the lowest median single-query latency (ties within ``TIE_TOLERANCE`` go to the
    smallest). If none fits, brute force is measured and taken when it fits; otherwise the
    result is the fastest configuration reaching the recall, with ``met_target=False`` and the
    missed budget in ``reason``. Below ``BRUTE_FORCE_MAX_VECTORS`` vectors: brute force.

    Memory: a copy of the database (the held-out split) plus one searcher at a time.
    Time (2 cores, shared): ~15 s for 100k x 64, ~45 s for 390k x 50, ~3.5 min for 1M x 256.
    Raises ValueError on a malformed database, queries or targets.
    """
    started = time.perf_counter()
    if not targets:
        raise ValueError("at least one tuning target is needed")
    ks = {target.k for target in targets}
    if len(ks) != 1:
        raise ValueError(f"all targets must share k, got {sorted(ks)}")
    k = ks.pop()
    if recall_confidence_z < 0:
        raise ValueError(f"recall_confidence_z must be >= 0, got {recall_confidence_z}")
    grid = grid or TuningGrid()
    database = np.ascontiguousarray(database, dtype=np.float32)
    if database.ndim != 2 or database.shape[0] == 0:
        raise ValueError(f"database must be a non-empty (N, dim) matrix, got {database.shape}")
    if not np.isfinite(database).all():
        raise ValueError("database contains NaN or infinite values")
    num_vectors, dim = database.shape
    off_norm = int((np.abs(np.linalg.norm(database, axis=1) - 1.0) > 1e-3).sum())
    if off_norm:
        logger.warning("%d of %d database rows are not unit-norm", off_norm, num_vectors)

    small = num_vectors < BRUTE_FORCE_MAX_VECTORS
    if queries is not None:
        tuning_db = database
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim or queries.shape[0] == 0:
            raise ValueError(f"queries must be a non-empty (M, {dim}) matrix, got {queries.shape}")
        query_source = "provided"
    else:
        if isinstance(num_queries, bool) or not isinstance(num_queries, int) or num_queries < 1:
            raise ValueError(f"num_queries must be a positive integer, got {num_queries!r}")
        # Hold out at most a tenth, so the tuning index is nearly the one that will be built.
        num_queries = min(num_queries, max(1, num_vectors // 10))
        tuning_db, queries = holdout_queries(database, num_queries, seed)
        query_source = f"{num_queries} database rows held out, noise {QUERY_NOISE}"
    exact, _ = exact_top_k(tuning_db, queries, k)
    run = _Tuning(tuning_db, queries, exact, exact.shape[1], recall_confidence_z, num_vectors)
    recalls = sorted({target.recall for target in targets})

    if small:
        brute = _evaluate_brute_force(run)
        seconds = time.perf_counter() - started
        return [
            _result(
                run,
                target,
                brute,
                _fits(brute, target),
                f"{num_vectors} vectors < {BRUTE_FORCE_MAX_VECTORS}: exact search"
                + ("" if _fits(brute, target) else " (over budget)"),
                query_source,
                seed,
                seconds,
            )
            for target in targets
        ]

    reorder_depth = _reorder_grid(k, grid.reorder_multiples, tuning_db.shape[0])[-1]
    for factor in grid.leaves_factors:
        num_leaves = max(2, min(tuning_db.shape[0] // 2, round(factor * math.sqrt(num_vectors))))
        for hashing in grid.hashing:
            base = _tree_params(k, num_vectors, num_leaves, hashing, reorder_depth, dim)
            _sweep_tree(run, base, grid, recalls)

    results = []
    for target in targets:
        chosen, met, reason = _choose(run, target)
        result = _result(
            run,
            target,
            chosen,
            met,
            reason,
            query_source,
            seed,
            time.perf_counter() - started,
        )
        log = logger.info if met else logger.warning
        log(
            "autotune recall@%d >= %.3f: %s -> recall %.4f, p50 %.3f ms, %.0f QPS batched (%s)",
            k,
            target.recall,
            chosen.params,
            chosen.recall,
            chosen.latency_ms_p50,
            chosen.qps_batched,
            reason,
        )
        results.append(result)
    return results
