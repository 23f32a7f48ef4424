"""BM25Index: the same scores as rank_bm25.BM25Okapi, and the edge cases it has no answer for."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from ranking.bm25 import BM25Index

# Short documents like generated captions, with repeats and a word in most documents ("dog":
# negative idf, floored), and an empty document.
CORPUS = [
    "dog runs on grass dog".split(),
    "man rides bike on street".split(),
    "dog swims in lake".split(),
    [],
    "two dogs play dog grass".split(),
    "woman rides bike bike bike with dog".split(),
    "dog dog dog".split(),
    "child jumps into pool".split(),
]
QUERIES = [
    ["dog"],
    ["dog", "grass"],
    ["bike", "bike", "man"],  # a repeated query term counts twice
    ["rides", "unknown", "pool", "dog", "lake"],
    ["unknown"],
    [],
]


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (1.2, 0.0), (2.0, 1.0)])
def test_scores_equal_rank_bm25(k1, b):
    index = BM25Index.build(CORPUS, k1=k1, b=b)
    reference = BM25Okapi(CORPUS, k1=k1, b=b)
    # "dog" is in 5 of 8 documents: a negative idf, floored to epsilon * the mean idf.
    assert index.idf[index.vocabulary["dog"]] == pytest.approx(0.25 * reference.average_idf)
    for query in QUERIES:
        ours = index.scores(query)
        assert ours.dtype == np.float32 and ours.shape == (len(CORPUS),)
        with np.errstate(invalid="ignore"):  # b=1: rank_bm25 scores the empty document 0/0
            expected = np.nan_to_num(reference.get_scores(query), nan=0.0)
        np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_parity_on_a_random_corpus():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(60)]
    probabilities = 1 / np.arange(1, 61)  # Zipf-like: a few words in most documents
    probabilities /= probabilities.sum()
    corpus = [list(rng.choice(words, rng.integers(0, 15), p=probabilities)) for _ in range(300)]
    index, reference = BM25Index.build(corpus), BM25Okapi(corpus)
    for _ in range(20):
        query = list(rng.choice(words, rng.integers(1, 6)))
        np.testing.assert_allclose(index.scores(query), reference.get_scores(query), atol=1e-5)


def test_top_k_is_the_best_matching_documents_ties_by_row():
    index = BM25Index.build(CORPUS)
    reference = BM25Okapi(CORPUS).get_scores(["bike", "grass"])
    rows, scores = index.top_k(["bike", "grass"], 3)
    expected = [r for r in np.lexsort((np.arange(len(CORPUS)), -reference)) if reference[r] > 0]
    assert rows.tolist() == expected[:3]
    np.testing.assert_allclose(scores, reference[rows], atol=1e-5)
    rows, _ = index.top_k(["bike", "grass"], 100)  # only matching documents, never the rest
    assert sorted(rows.tolist()) == [0, 1, 4, 5]
    tied = BM25Index.build([["a"], ["b"], ["a"], ["c"], ["a"], ["d"], ["e"]])
    assert tied.top_k(["a"], 2)[0].tolist() == [0, 2]
    half = BM25Index.build([["a"], ["b"], ["a", "c"], ["d"]])  # "a" in half: idf 0
    assert half.top_k(["a"], 5)[0].size == 0  # a zero score is no match
    assert half.matched_terms(["a"], [0, 1]) == [{"a": 0.0}, {}]  # but the why shows it
    assert index.top_k(["bike"], 0)[0].size == 0
    with pytest.raises(ValueError, match="k must be"):
        index.top_k(["bike"], -1)


def test_top_k_bound_finds_the_same_rows_as_a_full_sort():
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    probabilities = 1 / np.arange(1, 41) ** 1.2
    probabilities /= probabilities.sum()
    corpus = [list(rng.choice(words, rng.integers(1, 10), p=probabilities)) for _ in range(2000)]
    index = BM25Index.build(corpus)
    for _ in range(30):
        query = list(rng.choice(words, rng.integers(1, 6)))
        k = int(rng.integers(1, 60))
        scores = index.scores(query)
        expected = [r for r in np.lexsort((np.arange(len(corpus)), -scores)) if scores[r]][:k]
        assert index.top_k(query, k)[0].tolist() == expected


def test_top_k_allowed_mask():
    index = BM25Index.build(CORPUS)
    allowed = np.zeros(len(CORPUS), dtype=bool)
    allowed[[2, 3, 4]] = True
    rows, _ = index.top_k(["dog"], 10, allowed)
    assert sorted(rows.tolist()) == [2, 4]


def test_empty_and_unknown_queries_score_zero():
    index = BM25Index.build(CORPUS)
    for query in ([], ["unknown"], ["unknown", "words"]):
        assert not index.scores(query).any()
        rows, scores = index.top_k(query, 5)
        assert rows.size == 0 and scores.size == 0
        assert index.matched_terms(query, [0, 1]) == [{}, {}]
    with pytest.raises(ValueError, match="list of words"):
        index.scores("dog")


def test_empty_documents_and_empty_corpus():
    all_empty = BM25Index.build([[], [], []])
    assert len(all_empty) == 3 and not all_empty.scores(["dog"]).any()
    assert all_empty.top_k(["dog"], 2)[0].size == 0
    nothing = BM25Index.build([])
    assert len(nothing) == 0 and nothing.scores(["dog"]).shape == (0,)
    assert nothing.top_k(["dog"], 3)[0].size == 0
    with pytest.raises(ValueError, match="tokenise"):
        BM25Index.build(["a whole string"])
    with pytest.raises(ValueError, match="k1"):
        BM25Index.build(CORPUS, k1=-1)


def test_matched_terms_add_up_to_the_score():
    index = BM25Index.build(CORPUS)
    query = ["bike", "bike", "man", "grass", "unknown"]
    scores = index.scores(query)
    rows = [0, 1, 3, 5, 7]
    matched = index.matched_terms(query, rows)
    assert matched[0].keys() == {"grass"} and matched[2] == {} and matched[4] == {}
    assert list(matched[1]) == ["bike", "man"]  # query order; "bike" counted twice
    for row, terms in zip(rows, matched, strict=True):
        assert sum(terms.values()) == pytest.approx(float(scores[row]), abs=1e-5)


def test_memory_is_reported():
    index = BM25Index.build(CORPUS)
    assert index.nbytes >= index.weights.nnz * 8
