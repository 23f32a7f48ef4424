"""Nearest neighbours among the rows a filter allows, correct and fast at any selectivity.

Two ways, picked per query batch by how many rows the filter keeps (as Weaviate's
``flatSearchCutoff`` does):

- **exact** over the allowed rows when they are few: gather their stored vectors block by
  block, one matmul per block, a running top k. Cost grows with the allowed rows; the answer
  is exact (ties to the lower row).
- **ANN with oversampling** when they are many: ask the ANN index for ``k / selectivity x
  oversample`` candidates and keep the allowed ones. A query left with fewer than ``k`` asks
  again, at least twice as deep and as deep as its hit rate says, up to ``max_candidates``;
  one that would need more, or whose candidates held no allowed row at all, is scored
  exactly, so a filter that the query's neighbourhood misses (one correlated with the
  vectors) still gets its whole answer, after one ANN call rather than a chain of them.

Pure NumPy over callables, so it tests without ScaNN and serves any vector space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import numpy as np

AnnSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
VectorsOf = Callable[[np.ndarray], np.ndarray]

# Rows gathered and scored at a time on the exact path: 4,096 x 256 float32 is 4 MiB, so the
# gathered block is still in cache when the matmul reads it (bench_filters over 50k allowed
# rows of 1M: 24.6 ms p50, against 29.0 at 1,024 rows, 26.7 at 16,384, 29.6 at 65,536).
EXACT_BLOCK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class FilterPolicy:
    """Where filtered search switches from ANN to exact scoring, and how deep ANN asks.

    Exact: when at most ``exact_max_rows`` rows are allowed, or less than
    ``exact_below_selectivity`` of them. Otherwise ANN, asking for ``ceil(k / selectivity x
    oversample)`` candidates (at most ``max_candidates``), deeper for queries left short.

    The defaults are what ``benchmarks/bench_filters.py`` measured
    (``benchmarks/results/filters.md``: 1M grown Flickr8k MobileNetV2 vectors of 256 floats,
    ScaNN as the index job builds it, 100 of 1,000 leaves, searched as the server does, 1,101
    candidates rescored; one query at a time on one thread of a shared 2-core AMD EPYC):

    - ``exact_below_selectivity`` 1%: ANN meets recall@10 >= 0.95 from 1% of the rows up
      (0.971 at 1%, 0.986 at 2%) and is faster there (2.8 ms p50 against 7.2 ms exact at 1%);
      at 0.5% exact is faster (3.7 against 5.2 ms) and at 0.1% ANN's recall is 0.885.
    - ``exact_max_rows`` 5,000: on a 100k-row index ANN missed 0.95 with 1,981 allowed rows
      (2%: 0.943) and met it with 5,000; ANN's recall follows the allowed rows it can reach,
      whatever their share. Exact over 5,000 rows costs ~2 ms (0.43 ms per 1,000 rows).
    - ``oversample`` x4: at 1% x2 reaches only 0.925 (x4 0.971); at 5% and 50% x2 and x4 cost
      and find the same (the server rescores 1,101 candidates anyway); x1 asks a second time
      for ~45% of the queries.
    - ``max_candidates`` 20,000: an ANN call that deep (9.5 ms) costs about what exact
      scoring of 20,000 rows does (11.7 ms), so a query still short past it goes exact.
    """

    exact_max_rows: int = 5_000
    exact_below_selectivity: float = 0.01
    oversample: float = 4.0
    max_candidates: int = 20_000

    def __post_init__(self) -> None:
        if self.exact_max_rows < 0:
            raise ValueError(f"exact_max_rows must be >= 0, got {self.exact_max_rows}")
        if not self.exact_below_selectivity >= 0.0:  # above 1: always exact
            raise ValueError(
                f"exact_below_selectivity must be >= 0, got {self.exact_below_selectivity}"
            )
        if not self.oversample >= 1.0:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")


@dataclasses.dataclass(frozen=True)
class FilteredResult:
    indices: np.ndarray  # (M, k) int64 global rows, best first; -1 past the allowed rows
    scores: np.ndarray  # (M, k) float32; NaN where the index is -1
    path: Literal["exact", "ann"]  # "ann" when the ANN answered at least one query
    candidates: int  # the most the ANN was asked for (0 on the exact path)
    exact_fallbacks: int = 0  # queries the ANN left short, answered exactly instead


def filtered_search(
    queries: np.ndarray,
    allowed: np.ndarray,
    k: int,
    ann_search: AnnSearch,
    vectors_of: VectorsOf,
    policy: FilterPolicy = FilterPolicy(),
) -> FilteredResult:
    """The top ``k`` allowed rows for each query row (unit vectors; scores are dot products).

    ``queries`` ``(M, d)`` float32; ``allowed`` ``bool (N,)`` over the global rows.
    ``ann_search(queries, n)`` gives each query's top ``n`` global rows and scores, best first
    (``-1`` / NaN padding); ``vectors_of(rows)`` the stored ``(len(rows), d)`` vectors of
    ascending global rows. Rows past the allowed count are ``-1`` with score NaN. ValueError for
    a ``k`` below 1 or arrays of the wrong shape.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    queries = np.asarray(queries, dtype=np.float32)
    allowed = np.asarray(allowed)
    if queries.ndim != 2:
        raise ValueError(f"queries must be a 2-D (M, dim) array, got shape {queries.shape}")
    if allowed.ndim != 1 or allowed.dtype != bool:
        raise ValueError(f"allowed must be a 1-D bool mask, got {allowed.dtype} {allowed.shape}")
    total, kept = len(allowed), int(np.count_nonzero(allowed))
    if kept == 0 or len(queries) == 0:
        return FilteredResult(*_padding(len(queries), k), "exact", 0)
    selectivity = kept / total
    if kept <= max(k, policy.exact_max_rows) or selectivity < policy.exact_below_selectivity:
        return FilteredResult(*_exact(queries, np.flatnonzero(allowed), k, vectors_of), "exact", 0)

    cap = min(total, policy.max_candidates)
    n = min(cap, max(k, math.ceil(k / selectivity * policy.oversample)))
    need = min(k, kept)
    indices, scores = _padding(len(queries), k)
    pending, asked, short_of_rows = np.arange(len(queries)), 0, []
    while len(pending):
        found, found_scores = ann_search(queries[pending], n)
        asked = max(asked, n)
        found = np.asarray(found, dtype=np.int64)
        ok = (found >= 0) & allowed[np.clip(found, 0, total - 1)]
        hits = ok.sum(axis=1)
        done = hits >= need
        # The allowed candidates of each query in their ANN order, then the others.
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(ok, order, axis=1)
        rows = np.where(keep, np.take_along_axis(found, order, axis=1), -1)
        row_scores = np.where(
            keep, np.take_along_axis(np.asarray(found_scores, np.float32), order, axis=1), np.nan
        )
        width = rows.shape[1]
        indices[pending[done], :width] = rows[done]
        scores[pending[done], :width] = row_scores[done]
        # A short query asks again, as deep as its own hit rate says it must (at least twice
        # as deep). One whose ANN ran dry (fewer candidates than asked), saw no allowed row
        # (a filter its neighbourhood misses) or would need more than the cap goes to exact
        # scoring now, not after a chain of ever deeper ANN calls.
        returned = (found >= 0).sum(axis=1)
        depth = np.full(len(hits), np.inf)
        seen = hits > 0
        depth[seen] = np.ceil(need * policy.oversample * returned[seen] / hits[seen])
        hopeless = (returned < n) | (depth > cap) | (n >= cap)
        retry = ~done & ~hopeless
        short_of_rows.extend(pending[~done & hopeless].tolist())
        if retry.any():
            n = int(min(cap, max(2 * n, depth[retry].max())))
        pending = pending[retry]
    if not short_of_rows:
        return FilteredResult(indices, scores, "ann", asked)
    fallback = np.asarray(sorted(short_of_rows))
    exact_indices, exact_scores = _exact(queries[fallback], np.flatnonzero(allowed), k, vectors_of)
    indices[fallback], scores[fallback] = exact_indices, exact_scores
    path = "exact" if len(fallback) == len(queries) else "ann"
    return FilteredResult(indices, scores, path, asked, len(fallback))


def _padding(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((m, k), -1, np.int64), np.full((m, k), np.nan, np.float32)


def _exact(
    queries: np.ndarray, rows: np.ndarray, k: int, vectors_of: VectorsOf
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` over ``rows`` (ascending): ``(indices (M, k), scores (M, k))``, best
    first, ties to the lower row, -1 / NaN past ``len(rows)``."""
    m = len(queries)
    best_rows = np.zeros((m, 0), np.int64)
    best_scores = np.zeros((m, 0), np.float32)
    for start in range(0, len(rows), EXACT_BLOCK_ROWS):
        part = rows[start : start + EXACT_BLOCK_ROWS]
        block = queries @ np.asarray(vectors_of(part), dtype=np.float32).T  # (M, b)
        top = _top_columns(block, k)
        best_rows = np.concatenate([best_rows, part[top]], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(block, top, 1)], axis=1)
        if best_rows.shape[1] > k:  # at most 2k columns: sort them, keep k
            order = np.lexsort((best_rows, -best_scores), axis=1)[:, :k]
            best_rows = np.take_along_axis(best_rows, order, axis=1)
            best_scores = np.take_along_axis(best_scores, order, axis=1)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # score descending, then row
    indices, scores = _padding(m, k)
    found = best_rows.shape[1]
    indices[:, :found] = np.take_along_axis(best_rows, order, axis=1)
    scores[:, :found] = np.take_along_axis(best_scores, order, axis=1)
    return indices, scores


def _top_columns(block: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best columns (any order); where columns tie with the k-th best score,
    the lowest of them, so the merge across blocks settles ties by the lower row."""
    if block.shape[1] <= k:
        return np.broadcast_to(np.arange(block.shape[1]), block.shape)
    top = np.argpartition(-block, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(block, top, axis=1).min(axis=1, keepdims=True)
    tied = np.count_nonzero(block == kth, axis=1)
    tied_in_top = np.count_nonzero(np.take_along_axis(block, top, axis=1) == kth, axis=1)
    for row in np.flatnonzero(tied > tied_in_top):  # rare: exact ties at the k-th score
        above = np.flatnonzero(block[row] > kth[row, 0])
        ties = np.flatnonzero(block[row] == kth[row, 0])[: k - len(above)]
        top[row] = np.concatenate([above, ties])
    return top
