"""faiss baselines and exact search for ``benchmarks/bench_ann.py``; benchmark-only code.

Every method indexes unit vectors, exposes its query-time knobs as an ordered grid, and searches
a batch (``search``) or one query (``search_one``). ``tune_knobs`` picks, for a recall target,
the cheapest knobs on the tuning queries with the rule ScaNN's autotuner uses (the recall's lower
confidence bound must reach the target; see ``index.ann_tuning``), so every library is tuned
to the same recall on the same queries.

faiss indexes use L2 on unit vectors: the same ranking as the dot product (|q - x|^2 = 2 - 2 q.x)
and faiss's best-tested metric for IVF residual coding and HNSW.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from index.ann_measure import single_query_latencies
from index.ann_tuning_types import RECALL_CONFIDENCE_Z
from ranking.recall import recall_per_query

logger = logging.getLogger(__name__)

# Powers of two and their midpoints, as in index.ann_tuning's leaves grid.
_GEOMETRIC = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
# Points per k-means centre to train on: faiss warns below 39; more only costs time.
_TRAIN_POINTS_PER_LIST = 40
_PRUNE_SLOWDOWN = 1.5


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Limit faiss (OpenMP) and every BLAS loaded (NumPy's, faiss's) to ``count`` threads."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


class BuildBudgetExceeded(RuntimeError):
    """A build was stopped because it would take longer than the benchmark allows."""


class Method:
    """An index under test: build once, set knobs, search."""

    name = "method"
    knob_names: tuple[str, ...] = ()

    def build(self, database: np.ndarray) -> None:
        raise NotImplementedError

    def knob_grid(self) -> list[tuple[int, ...]]:
        """Knob settings; along each knob, cost and recall grow with the value."""
        return [()]

    def set_knobs(self, knobs: tuple[int, ...]) -> None:
        del knobs

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.search(query[np.newaxis], k)

    def index_bytes(self) -> int:
        raise NotImplementedError

    def describe(self, knobs: tuple[int, ...]) -> str:
        return ", ".join(f"{n}={v}" for n, v in zip(self.knob_names, knobs, strict=True))


class ExactSearch(Method):
    """Brute force: one BLAS matmul per block of queries, then argpartition for the top k."""

    name = "exact (NumPy BLAS)"

    def build(self, database: np.ndarray) -> None:
        self.database = database  # nothing to build: the vectors are the index

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(queries), k), dtype=np.int64)
        block = max(1, (64 * 2**20) // len(self.database))  # ~256 MiB of scores at a time
        for start in range(0, len(queries), block):
            scores = queries[start : start + block] @ self.database.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
            out[start : start + block] = np.take_along_axis(top, order, axis=1)
        return out

    def search_one(self, query: np.ndarray, k: int) -> np.ndarray:
        scores = self.database @ query  # BLAS sgemv: memory-bound, one pass over the table
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    def index_bytes(self) -> int:
        return int(self.database.nbytes)


class FaissMethod(Method):
    """Common faiss plumbing: search through ``self.index``, size by serialization."""

    index: Any

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(queries, k)[1]

    def index_bytes(self) -> int:
        return int(faiss.serialize_index(self.index).nbytes)


@dataclasses.dataclass
class FaissHnsw(FaissMethod):
    """``IndexHNSWFlat``: M links per node; ``efSearch`` swept at query time."""

    m: int = 32
    ef_construction: int = 200
    build_budget_s: float | None = None
    chunk: int = 50_000

    knob_names = ("efSearch",)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"faiss HNSW{self.m} (efC {self.ef_construction})"

    def build(self, database: np.ndarray) -> None:
        self.index = faiss.IndexHNSWFlat(database.shape[1], self.m)
        self.index.hnsw.efConstruction = self.ef_construction
        started = time.perf_counter()
        # Insert in chunks so an over-budget build stops early with a projection, instead of
        # silently eating the benchmark's time. Insertion slows as the graph grows, so the
        # projection is a lower bound.
        for begin in range(0, len(database), self.chunk):
            self.index.add(database[begin : begin + self.chunk])
            elapsed = time.perf_counter() - started
            projected = elapsed * len(database) / self.index.ntotal
            if self.build_budget_s is not None and projected > self.build_budget_s:
                raise BuildBudgetExceeded(
                    f"{self.name}: {self.index.ntotal} of {len(database)} vectors in "
                    f"{elapsed:.0f} s, projected >= {projected:.0f} s > budget "
                    f"{self.build_budget_s:.0f} s"
                )

    def knob_grid(self) -> list[tuple[int, ...]]:
        # faiss searches with max(efSearch, k): start the sweep at k = 10.
        return [(ef,) for ef in (10, *(g for g in _GEOMETRIC if g > 10))]

    def set_knobs(self, knobs: tuple[int, ...]) -> None:
        self.index.hnsw.efSearch = knobs[0]


def train_coarse_quantizer(database: np.ndarray, nlist: int, seed: int) -> faiss.IndexFlatL2:
    """k-means over a sample of ``_TRAIN_POINTS_PER_LIST * nlist`` rows; the IVF lists' centres."""
    rng = np.random.default_rng(seed)
    size = min(len(database), _TRAIN_POINTS_PER_LIST * nlist)
    sample = database[np.sort(rng.choice(len(database), size, replace=False))]
    kmeans = faiss.Kmeans(database.shape[1], nlist, niter=10, seed=seed)
    kmeans.train(sample)
    quantizer = faiss.IndexFlatL2(database.shape[1])
    quantizer.add(kmeans.centroids)
    return quantizer


@dataclasses.dataclass
class FaissIvfFlat(FaissMethod):
    """``IndexIVFFlat`` over a given trained coarse quantizer; ``nprobe`` swept."""

    quantizer: faiss.IndexFlatL2
    nlist: int

    knob_names = ("nprobe",)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"faiss IVF{self.nlist},Flat"

    def build(self, database: np.ndarray) -> None:
        self.index = faiss.IndexIVFFlat(self.quantizer, database.shape[1], self.nlist)
        self.index.add(database)  # the quantizer is trained: nothing else to learn

    def knob_grid(self) -> list[tuple[int, ...]]:
        return [(p,) for p in _GEOMETRIC if p <= self.nlist]

    def set_knobs(self, knobs: tuple[int, ...]) -> None:
        self.index.nprobe = knobs[0]


@dataclasses.dataclass
class FaissIvfPqRefine(FaissMethod):
    """IVF + 4-bit fast-scan PQ (``d/2`` sub-quantizers: 4 bits per 2 dims, ScaNN AH's code
    size) + exact float32 re-ranking (``RFlat``): faiss's analogue of ScaNN's tree-AH + reorder.
    ``nprobe`` and the re-ranking depth ``k_factor`` (candidates = k_factor * k) are swept."""

    quantizer: faiss.IndexFlatL2
    nlist: int
    seed: int = 0

    knob_names = ("nprobe", "k_factor")

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"faiss IVF{self.nlist},PQ{self.m}x4fs,RFlat"

    def build(self, database: np.ndarray) -> None:
        dim = database.shape[1]
        self.m = math.ceil(dim / 2)
        self.ivf = faiss.IndexIVFPQFastScan(self.quantizer, dim, self.nlist, self.m, 4)
        rng = np.random.default_rng(self.seed)
        size = min(len(database), _TRAIN_POINTS_PER_LIST * self.nlist)
        # The coarse quantizer is trained already, so this trains only the PQ codebooks.
        self.ivf.train(database[np.sort(rng.choice(len(database), size, replace=False))])
        self.index = faiss.IndexRefineFlat(self.ivf)
        self.index.add(database)

    def knob_grid(self) -> list[tuple[int, ...]]:
        return [(p, f) for p in _GEOMETRIC if p <= self.nlist for f in _GEOMETRIC if 1 <= f <= 64]

    def set_knobs(self, knobs: tuple[int, ...]) -> None:
        self.ivf.nprobe, self.index.k_factor = knobs[0], float(knobs[1])


# --- tuning ---


@dataclasses.dataclass(frozen=True)
class Tuned:
    """The knobs chosen for a target on the tuning queries, and their recall there."""

    knobs: tuple[int, ...]
    tuning_recall: float
    reached: bool


def _smallest(values: Sequence[Any], meets: Callable[[Any], bool]) -> int | None:
    """Index of the first value meeting ``meets`` (monotone along ``values``), else None."""
    if not values or not meets(values[-1]):
        return None
    low, high = 0, len(values) - 1
    while low < high:
        middle = (low + high) // 2
        if meets(values[middle]):
            high = middle
        else:
            low = middle + 1
    return low


def tune_knobs(
    method: Method,
    queries: np.ndarray,
    exact: np.ndarray,
    recalls: Sequence[float],
    single_thread_queries: int = 200,
) -> dict[float, Tuned]:
    """Per target recall, the cheapest knobs whose recall's lower bound reaches it.

    One knob: the smallest value that does (cost grows with it). Two knobs (IVF-PQ nprobe x
    k_factor): for each first knob, the smallest second knob that does, kept only when it is
    smaller than at the previous first knob (the frontier); the frontier points are timed one
    query at a time on one thread and the fastest wins, as ScaNN's tuner does.
    """
    k = exact.shape[1]
    cache: dict[tuple[int, ...], tuple[float, float, float]] = {}

    def measure(knobs: tuple[int, ...]) -> tuple[float, float, float]:
        """(mean recall, its lower confidence bound, seconds for the batch) at ``knobs``."""
        if knobs not in cache:
            method.set_knobs(knobs)
            started = time.perf_counter()
            found = method.search(queries, k)
            seconds = time.perf_counter() - started
            per_query = recall_per_query(found, exact)
            stderr = per_query.std(ddof=1) / math.sqrt(len(per_query))
            mean = float(per_query.mean())
            cache[knobs] = (mean, mean - RECALL_CONFIDENCE_Z * float(stderr), seconds)
        return cache[knobs]

    grid = method.knob_grid()
    chosen: dict[float, Tuned] = {}
    for recall in recalls:

        def meets(knobs: tuple[int, ...], recall: float = recall) -> bool:
            return measure(knobs)[1] >= recall

        if len(method.knob_names) <= 1:
            index = _smallest(grid, meets)
            knobs = grid[-1] if index is None else grid[index]
            chosen[recall] = Tuned(knobs, measure(knobs)[0], index is not None)
            continue
        firsts = sorted({knobs[0] for knobs in grid})
        seconds = sorted({knobs[1] for knobs in grid})
        frontier: list[tuple[int, ...]] = []
        upper = len(seconds)
        for first in firsts:
            index = _smallest(seconds[:upper], lambda s, f=first: meets((f, s)))
            if index is not None:
                frontier.append((first, seconds[index]))
                upper = index  # more probes only help if they allow fewer re-ranked candidates
            fastest = min((measure(knobs)[2] for knobs in frontier), default=math.inf)
            cheapest = min(t for (f, _), (_, _, t) in cache.items() if f == first)
            # As in the ScaNN tuner: stop once more probes alone cost more than the best found.
            if upper == 0 or cheapest > _PRUNE_SLOWDOWN * fastest:
                break
        if not frontier:
            knobs = (firsts[-1], seconds[-1])
            chosen[recall] = Tuned(knobs, measure(knobs)[0], False)
            continue
        timing = queries[:single_thread_queries]
        latency = {}
        with threads(1):
            for knobs in frontier:
                method.set_knobs(knobs)
                latency[knobs] = float(
                    np.median(single_query_latencies(lambda q: method.search_one(q, k), timing))
                )
        best = min(frontier, key=lambda knobs: latency[knobs])
        chosen[recall] = Tuned(best, measure(best)[0], True)
    return chosen
