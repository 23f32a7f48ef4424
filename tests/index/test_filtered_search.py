"""Filtered nearest neighbours against a brute-force oracle, with exact, lossy and real ANN."""

from __future__ import annotations

import numpy as np
import pytest

from index.filtered_search import FilterPolicy, filtered_search
from index.scann_index import build_searcher, choose_scann_params, exact_top_k, search_batched

RNG = np.random.default_rng(3)
N, DIM = 4000, 32
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
QUERIES = VECTORS[RNG.choice(N, 5, replace=False)] + 0.1 * RNG.normal(size=(5, DIM)).astype(
    np.float32
)
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)


def oracle(queries, allowed, k):
    rows = np.flatnonzero(allowed)
    if len(rows) == 0:
        return [[] for _ in queries]
    found, _ = exact_top_k(VECTORS[rows], queries, min(k, len(rows)))
    return [rows[r].tolist() for r in found]


def exact_ann(queries, n):
    return exact_top_k(VECTORS, queries, n)


def lossy_ann(queries, n):
    """Misses every row divisible by 7: an ANN that cannot see part of the index."""
    visible = np.flatnonzero(np.arange(N) % 7 != 0)
    found, scores = exact_top_k(VECTORS[visible], queries, min(n, len(visible)))
    return visible[found], scores


def as_lists(result):
    return [[int(r) for r in row if r >= 0] for row in result.indices]


ANN_ONLY = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0)


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.05, 0.001])
@pytest.mark.parametrize("policy", [FilterPolicy(), ANN_ONLY])
def test_equals_the_oracle_at_any_selectivity(keep, policy):
    allowed = RNG.random(N) < keep
    result = filtered_search(QUERIES, allowed, 10, exact_ann, lambda r: VECTORS[r], policy)
    assert as_lists(result) == oracle(QUERIES, allowed, 10)
    assert all(allowed[r] for row in as_lists(result) for r in row)


def test_paths_follow_the_policy():
    loose = RNG.random(N) < 0.5
    policy = FilterPolicy(exact_max_rows=100, exact_below_selectivity=0.01)
    assert (
        filtered_search(QUERIES, loose, 10, exact_ann, lambda r: VECTORS[r], policy).path == "ann"
    )
    tight = np.zeros(N, bool)
    tight[:30] = True
    assert (
        filtered_search(QUERIES, tight, 10, exact_ann, lambda r: VECTORS[r], policy).path == "exact"
    )


def test_no_allowed_rows_and_fewer_than_k():
    none = np.zeros(N, bool)
    result = filtered_search(QUERIES, none, 5, exact_ann, lambda r: VECTORS[r])
    assert (result.indices == -1).all() and np.isnan(result.scores).all()
    three = np.zeros(N, bool)
    three[[5, 50, 500]] = True
    result = filtered_search(QUERIES, three, 5, exact_ann, lambda r: VECTORS[r])
    assert [sorted(row) for row in as_lists(result)] == [[5, 50, 500]] * len(QUERIES)


def test_a_lossy_ann_that_cannot_fill_the_page_falls_back_to_exact():
    # Only rows the lossy ANN never returns are allowed: the oversampling loop finds none.
    allowed = np.arange(N) % 7 == 0
    policy = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0, max_candidates=1000)
    result = filtered_search(QUERIES, allowed, 10, lossy_ann, lambda r: VECTORS[r], policy)
    assert result.path == "exact" and as_lists(result) == oracle(QUERIES, allowed, 10)


def test_ties_go_to_the_lower_row():
    twins = np.zeros((6, DIM), np.float32)
    twins[:, 0] = 1.0  # dot products exactly 1.0: a real tie, whatever the BLAS
    allowed = np.ones(6, bool)
    result = filtered_search(twins[:1], allowed, 3, lambda q, n: exact_top_k(twins, q, n),
                             lambda r: twins[r])  # fmt: skip
    assert as_lists(result) == [[0, 1, 2]]


@pytest.mark.parametrize("keep", [0.5, 0.05, 0.001])
def test_real_scann_recall_at_10_against_exact_filtered_search(keep):
    params = choose_scann_params(N, DIM, 10)
    searcher = build_searcher(VECTORS, params)
    queries = VECTORS[RNG.choice(N, 50, replace=False)]
    allowed = RNG.random(N) < keep
    allowed[RNG.choice(N, 12, replace=False)] = True  # at least a page of allowed rows
    result = filtered_search(queries, allowed, 10,
                             lambda q, n: search_batched(searcher, q, n, params),
                             lambda r: VECTORS[r])  # fmt: skip
    truth = oracle(queries, allowed, 10)
    pairs = zip(as_lists(result), truth, strict=True)
    recall = np.mean([len(set(a) & set(b)) / len(b) for a, b in pairs])
    assert recall >= 0.95, (keep, result.path, recall)
