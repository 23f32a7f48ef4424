"""Autotune ScaNN's tree-AH parameters against exact neighbours: the sweep and the choice.

Given a target recall@k (and optionally a latency or memory budget), ``autotune_scann`` measures
rather than guesses, as autofaiss does for faiss: it holds out a sample of queries, finds their
exact neighbours with ``exact_top_k``, builds one tree-AH searcher per (num_leaves, hashing)
choice, sweeps the leaves searched and the reorder depth at query time (ScaNN takes both as
per-call overrides, so one build serves the whole sweep), times the configurations that reach
the target, and returns the fastest one with its measured recall and latency. Everything it
returns is JSON-ready for the index manifest.

Pure logic over NumPy arrays plus ScaNN through ``index.scann_index``; no Beam, no I/O. The
pieces it is built from live beside it: its inputs and outputs in ``index.ann_tuning_types``,
the memory cost model in ``index.ann_cost``, query hold-out and timing in ``index.ann_measure``
and recall against exact neighbours in ``ranking.recall``. The sweep and the choice stay in
one module (~490 lines) because both work on the private ``_Tuning`` run state, and the choice
falls back to measuring brute force in the same run.

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
from typing import TYPE_CHECKING

import numpy as np

from index.ann_cost import bytes_per_vector
from index.ann_measure import (
    LATENCY_QUERIES,
    LATENCY_ROUNDS,
    QUERY_NOISE,
    batched_qps,
    holdout_queries,
    single_query_latencies,
)
from index.ann_tuning_types import (
    RECALL_CONFIDENCE_Z,
    Candidate,
    TuningGrid,
    TuningResult,
    TuningTarget,
)
from index.scann_index import (
    BRUTE_FORCE_MAX_VECTORS,
    MAX_TRAINING_SAMPLE,
    MIN_TRAINING_SAMPLE,
    TRAINING_POINTS_PER_LEAF,
    ScannParams,
    build_searcher,
    exact_top_k,
    search_batched,
)
from ranking.recall import recall_per_query

if TYPE_CHECKING:
    from scann.scann_ops.py.scann_ops_pybind import ScannSearcher


logger = logging.getLogger(__name__)

DEFAULT_NUM_QUERIES = 1000

# Configurations within this share of the fastest latency count as equally fast; among them the
# smallest (fewest leaves, leaves searched, reorder depth) wins, so noise does not flip choices.
TIE_TOLERANCE = 0.05

# Stop widening the search of a tree once its cheapest configuration at the next leaf count is
# this much slower (single-thread batched time) than the best configuration already found.
PRUNE_SLOWDOWN = 1.5


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
