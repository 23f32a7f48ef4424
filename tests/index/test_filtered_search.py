"""Filtered nearest neighbours against a brute-force oracle, with exact, lossy and real ANN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import index.filtered_search as filtered_search_module
from index.filtered_search import FilterPolicy, filtered_search
from index.scann_index import ScannParams, build_searcher, exact_top_k, search_batched

RNG = np.random.default_rng(3)
N, DIM = 4000, 32
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
QUERIES = VECTORS[RNG.choice(N, 5, replace=False)] + 0.1 * RNG.normal(size=(5, DIM)).astype(
    np.float32
)
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)
ANN_ONLY = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0)


def oracle(queries, allowed, k, vectors=VECTORS):
    """Brute force over the allowed rows alone: ``(rows per query, scores per query)``."""
    rows = np.flatnonzero(allowed)
    if len(rows) == 0:
        return [[] for _ in queries], [[] for _ in queries]
    found, scores = exact_top_k(vectors[rows], queries, min(k, len(rows)))
    return [rows[r].tolist() for r in found], scores.tolist()


def exact_ann(queries, n):
    return exact_top_k(VECTORS, queries, n)


def lossy_ann(queries, n):
    """Misses every row divisible by 7: an ANN that cannot see part of the index."""
    visible = np.flatnonzero(np.arange(N) % 7 != 0)
    found, scores = exact_top_k(VECTORS[visible], queries, min(n, len(visible)))
    return visible[found], scores


def vectors_of(rows):
    assert np.all(np.diff(rows) > 0), "rows are asked for in ascending order"
    return VECTORS[rows]


def as_lists(result):
    return [[int(r) for r in row if r >= 0] for row in result.indices]


def mask(keep: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(N) < keep


def check_well_formed(result, allowed, k):
    """Shapes, padding, only allowed rows, no repeats, best first."""
    assert result.indices.shape == result.scores.shape == (len(QUERIES), k)
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.float32
    for rows, scores in zip(result.indices, result.scores, strict=True):
        found = rows >= 0
        assert (found == (np.arange(k) < found.sum())).all()  # padding only at the end
        assert np.isnan(scores[~found]).all() and np.isfinite(scores[found]).all()
        assert allowed[rows[found]].all() and len(set(rows[found])) == found.sum()
        assert (np.diff(scores[found]) <= 0).all()


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.05, 0.001])
@pytest.mark.parametrize("policy", [FilterPolicy(), ANN_ONLY], ids=["default", "ann-only"])
def test_equals_the_oracle_at_any_selectivity(keep, policy):
    allowed = mask(keep)
    result = filtered_search(QUERIES, allowed, 10, exact_ann, vectors_of, policy)
    rows, scores = oracle(QUERIES, allowed, 10)
    check_well_formed(result, allowed, 10)
    assert as_lists(result) == rows
    found = result.scores[:, : len(scores[0])]
    np.testing.assert_allclose(found, np.asarray(scores), rtol=0, atol=1e-6)


def test_paths_follow_the_policy():
    policy = FilterPolicy(exact_max_rows=100, exact_below_selectivity=0.01, oversample=2.0)
    loose = filtered_search(QUERIES, mask(0.5), 10, exact_ann, vectors_of, policy)
    assert loose.path == "ann" and loose.candidates == 40  # ceil(10 / 0.5 x 2)
    few = np.zeros(N, bool)
    few[:30] = True  # 30 rows (<= exact_max_rows), 0.75% (< 1%)
    tight = filtered_search(QUERIES, few, 10, exact_ann, vectors_of, policy)
    assert tight.path == "exact" and tight.candidates == 0
    many_but_rare = FilterPolicy(exact_max_rows=10, exact_below_selectivity=0.1)
    assert filtered_search(QUERIES, mask(0.05), 10, exact_ann, vectors_of, many_but_rare).path == (
        "exact"
    )


def test_no_allowed_rows_and_fewer_than_k():
    none = np.zeros(N, bool)
    for policy in (FilterPolicy(), ANN_ONLY):
        result = filtered_search(QUERIES, none, 5, exact_ann, vectors_of, policy)
        assert (result.indices == -1).all() and np.isnan(result.scores).all()
        assert result.path == "exact"
    three = np.zeros(N, bool)
    three[[5, 50, 500]] = True
    for policy in (FilterPolicy(), ANN_ONLY):
        result = filtered_search(QUERIES, three, 5, exact_ann, vectors_of, policy)
        check_well_formed(result, three, 5)
        assert as_lists(result) == oracle(QUERIES, three, 5)[0]
        assert [sorted(row) for row in as_lists(result)] == [[5, 50, 500]] * len(QUERIES)
        assert (result.indices[:, 3:] == -1).all() and np.isnan(result.scores[:, 3:]).all()


def test_a_lossy_ann_gives_allowed_rows_best_first():
    allowed = mask(0.5)
    result = filtered_search(QUERIES, allowed, 10, lossy_ann, vectors_of, ANN_ONLY)
    check_well_formed(result, allowed, 10)
    assert result.path == "ann" and (result.indices >= 0).all()
    assert not (result.indices % 7 == 0).any()  # what the lossy ANN cannot see stays unseen
    truth = oracle(QUERIES, allowed, 10)[0]
    pairs = zip(as_lists(result), truth, strict=True)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
    assert recall >= 0.7
    # A tight filter goes the exact way, which the ANN's blind spot cannot touch.
    tight = mask(0.001)
    exact = filtered_search(QUERIES, tight, 10, lossy_ann, vectors_of)
    assert exact.path == "exact" and as_lists(exact) == oracle(QUERIES, tight, 10)[0]


def test_a_lossy_ann_that_cannot_fill_the_page_falls_back_to_exact():
    # Only rows the lossy ANN never returns are allowed: its candidates hold none of them, so
    # asking deeper is pointless and the queries go to exact scoring after one call.
    allowed = np.arange(N) % 7 == 0
    asked = []

    def recording(queries, n):
        asked.append((len(queries), n))
        return lossy_ann(queries, n)

    policy = dataclasses.replace(ANN_ONLY, oversample=2.0)
    result = filtered_search(QUERIES, allowed, 10, recording, vectors_of, policy)
    assert result.path == "exact" and result.exact_fallbacks == len(QUERIES)
    assert as_lists(result) == oracle(QUERIES, allowed, 10)[0]
    assert asked == [(len(QUERIES), 140)]  # ceil(10 / (572 / 4000) x 2)


def test_an_ann_that_runs_dry_falls_back_to_exact():
    # The ANN returns at most 50 candidates (a tree that searched few leaves): once it gives
    # fewer than asked, deeper asks cannot help.
    def shallow(queries, n):
        return exact_ann(queries, min(n, 50))

    allowed = mask(0.1)
    policy = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0, oversample=1.0)
    result = filtered_search(QUERIES, allowed, 10, shallow, vectors_of, policy)
    assert result.exact_fallbacks == len(QUERIES)
    assert result.candidates == np.ceil(10 / (allowed.sum() / N)) > 50  # one call
    assert as_lists(result) == oracle(QUERIES, allowed, 10)[0]


def test_a_short_query_asks_again_as_deep_as_its_hit_rate_says():
    # Query 0's three nearest rows are allowed, then none until its 300th: its first 100
    # candidates hold 3 allowed rows, so it asks for 10 / (3 / 100) = 334. Query 1 is served
    # by the first call and does not ask again.
    ranking = exact_top_k(VECTORS, QUERIES[:1], N)[0][0]
    allowed = np.zeros(N, bool)
    allowed[ranking[:3]] = True
    allowed[ranking[300:700]] = True  # 403 rows: 10.075%
    allowed[exact_top_k(VECTORS, QUERIES[1:2], 10)[0][0]] = True
    calls = []

    def recording(queries, n):
        calls.append((queries.copy(), n))
        return exact_ann(queries, n)

    policy = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0, oversample=1.0)
    result = filtered_search(QUERIES[:2], allowed, 10, recording, vectors_of, policy)
    first_n = int(np.ceil(10 / (allowed.sum() / N)))
    assert [(len(q), n) for q, n in calls] == [(2, first_n), (1, int(np.ceil(10 * first_n / 3)))]
    np.testing.assert_array_equal(calls[1][0][0], QUERIES[0])
    assert result.path == "ann" and result.exact_fallbacks == 0
    assert as_lists(result) == oracle(QUERIES[:2], allowed, 10)[0]


def test_a_batch_can_mix_ann_answers_and_exact_fallbacks():
    def blind_for_query_0(queries, n):
        indices, scores = exact_ann(queries, n)
        blind = np.isclose(queries @ QUERIES[0], 1.0)
        indices[blind], scores[blind] = -1, np.nan
        return indices, scores

    allowed = mask(0.5)
    result = filtered_search(QUERIES, allowed, 10, blind_for_query_0, vectors_of, ANN_ONLY)
    assert result.path == "ann" and result.exact_fallbacks == 1
    assert as_lists(result) == oracle(QUERIES, allowed, 10)[0]


def test_candidates_are_capped():
    policy = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0, max_candidates=300)
    result = filtered_search(QUERIES, mask(0.01), 10, exact_ann, vectors_of, policy)
    assert result.candidates <= 300 and as_lists(result) == oracle(QUERIES, mask(0.01), 10)[0]
    deep = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0, max_candidates=10**9)
    result = filtered_search(QUERIES, mask(0.001), 10, exact_ann, vectors_of, deep)
    assert result.candidates <= N


def test_ties_go_to_the_lower_row_across_blocks(monkeypatch):
    twins = np.zeros((40, DIM), np.float32)
    twins[:, 0] = 1.0  # dot products exactly 1.0: a real tie, whatever the BLAS
    twins[[7, 30]] = np.eye(DIM, dtype=np.float32)[1]  # two rows that score 0
    allowed = np.ones(40, bool)
    allowed[2] = False
    for block in (4, 5, 4096):
        monkeypatch.setattr(filtered_search_module, "EXACT_BLOCK_ROWS", block)
        result = filtered_search(twins[:2], allowed, 6, None, lambda r: twins[r])
        assert result.path == "exact"
        assert as_lists(result) == [[0, 1, 3, 4, 5, 6]] * 2
        assert as_lists(filtered_search(twins[:1], allowed, 3, None, lambda r: twins[r])) == [
            [0, 1, 3]
        ]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        filtered_search(QUERIES, mask(0.5), 0, exact_ann, vectors_of)
    with pytest.raises(ValueError, match="bool mask"):
        filtered_search(QUERIES, mask(0.5).astype(int), 10, exact_ann, vectors_of)
    with pytest.raises(ValueError, match="2-D"):
        filtered_search(QUERIES[0], mask(0.5), 10, exact_ann, vectors_of)
    for bad in ({"exact_max_rows": -1}, {"exact_below_selectivity": -0.1},
                {"oversample": 0.5}, {"max_candidates": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            FilterPolicy(**bad)


# --- with the real ScaNN: a small tree-AH index (choose_scann_params would pick brute force) ---


def clustered(rng, n, dim, clusters=60, spread=0.5):
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim)).astype(
        np.float32
    )
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scann_index():
    rng = np.random.default_rng(5)
    vectors = clustered(rng, 5000, DIM)
    params = ScannParams(
        kind="tree_ah",
        num_neighbors=10,
        num_leaves=70,
        # A small index's neighbours spread over many of its leaves: searching 40 of 70
        # reaches recall@10 0.99 unfiltered (10 of 70: 0.94), so a recall lost here is lost to
        # the filtering, not to the tree.
        num_leaves_to_search=40,
        training_sample_size=5000,
        dims_per_block=2,
        anisotropic_quantization_threshold=0.2,
        reorder_k=100,
    )
    searcher = build_searcher(vectors, params)
    queries = clustered(rng, 200, DIM)
    # ScaNN's training is not deterministic (one build here reaches 0.96, the next 0.99): the
    # filtered figures are held to this build's own unfiltered recall@10.
    found = search_batched(searcher, queries, 10, params)[0]
    exact = oracle(queries, np.ones(len(vectors), dtype=bool), 10, vectors)[0]
    pairs = zip(found.tolist(), exact, strict=True)
    unfiltered = np.mean([len(set(a) & set(b)) / 10 for a, b in pairs])
    return vectors, queries, searcher, params, unfiltered


@pytest.mark.parametrize(
    ("keep", "policy"),
    [(0.5, FilterPolicy()), (0.05, FilterPolicy()), (0.001, FilterPolicy()),
     # Forced ANN at 50% and 5%. Not at 0.1%: there the allowed rows a tree reaches are not
     # the nearest ones, which is why the policy scores so few rows exactly.
     (0.5, ANN_ONLY), (0.05, ANN_ONLY)],
)  # fmt: skip
def test_real_scann_recall_at_10_against_exact_filtered_search(scann_index, keep, policy):
    vectors, queries, searcher, params, unfiltered = scann_index
    assert unfiltered >= 0.93
    rng = np.random.default_rng(int(keep * 1000))
    allowed = rng.random(len(vectors)) < keep
    allowed[rng.choice(len(vectors), 12, replace=False)] = True  # at least a page of rows
    result = filtered_search(
        queries,
        allowed,
        10,
        lambda q, n: search_batched(searcher, q, n, params),
        lambda rows: vectors[rows],
        policy,
    )
    truth = oracle(queries, allowed, 10, vectors)[0]
    pairs = zip(as_lists(result), truth, strict=True)
    recall = np.mean([len(set(a) & set(b)) / len(b) for a, b in pairs])
    # Filtering costs at most 3 points of the tree's own recall (measured: 1 to 1.5).
    assert recall >= unfiltered - 0.03, (keep, result.path, recall, unfiltered)
    assert all(allowed[r] for row in as_lists(result) for r in row)
