"""How an ANN configuration is measured: held-out queries, per-query latency, batched QPS.

Kept apart from the sweep (``index.ann_tuning``) because the benchmarks time other libraries
(the faiss baselines in ``benchmarks/ann_baselines.py``) with the same helpers, so their
figures compare like for like. Timings are minimums over rounds, which strips scheduler noise
on a shared machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

# Held-out queries get isotropic noise of this expected norm (unit vectors), then are
# renormalised. Far below neighbour distances of real embeddings (0.81 median between a
# Flickr8k photo's MobileNetV2 embedding and its nearest other photo's), so the neighbourhood
# is that of the held-out row; but it keeps an exact duplicate left in the database from
# turning a query into a trivial self-match.
QUERY_NOISE = 0.05

# Per-query latency: this many queries, each timed in every round, keeping its fastest round.
# The minimum over rounds strips scheduler noise on a shared machine; p99 over queries still
# shows the slow queries (those whose nearest leaves are large).
LATENCY_QUERIES = 300

LATENCY_ROUNDS = 3


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
