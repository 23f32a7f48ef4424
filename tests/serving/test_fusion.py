"""Rank fusion on hand-made rankings."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.fusion import (
    fit_weights,
    own_ranks,
    rank_matrix,
    reciprocal_rank_fusion,
    standardize,
    weighted_fusion,
)


def test_rank_matrix_shares_ties():
    np.testing.assert_allclose(rank_matrix(np.array([[3.0, 1.0, 1.0, 5.0]])), [[2, 3.5, 3.5, 1]])


def test_rrf_rewards_agreement_of_two_rankings():
    a = np.array([[3.0, 2.0, 1.0]])  # ranks 1, 2, 3
    b = np.array([[1.0, 3.0, 2.0]])  # ranks 3, 1, 2
    fused = reciprocal_rank_fusion({"a": a, "b": b}, k=1.0)
    np.testing.assert_allclose(fused[0], [1 / 2 + 1 / 4, 1 / 3 + 1 / 2, 1 / 4 + 1 / 3], rtol=1e-6)
    assert fused[0].argmax() == 1  # second in a, first in b: the consensus wins
    only_b = reciprocal_rank_fusion({"a": a, "b": b}, weights={"b": 1.0})
    assert only_b[0].argmax() == 1 and only_b[0].argmin() == 0
    with pytest.raises(ValueError, match="zero"):
        reciprocal_rank_fusion({"a": a}, weights={"a": 0})
    with pytest.raises(ValueError, match="one shape"):
        reciprocal_rank_fusion({"a": a, "b": np.ones((2, 3))})


def test_weighted_fusion_and_standardize():
    assert not standardize(np.ones((1, 4))).any()  # a constant row carries no ranking
    a = np.array([[1.0, 0.0, 0.0]])
    b = np.array([[0.0, 10.0, 0.0]])
    assert weighted_fusion({"a": a, "b": b}, {"a": 1.0, "b": 2.0})[0].argmax() == 1
    assert weighted_fusion({"a": a, "b": b}, {"a": 1.0})[0].argmax() == 0


def test_fit_weights_finds_the_complementary_method():
    # Four queries, own image = query index. "a" is right on queries 0-1 and "b" on 2-3,
    # and each is merely flat (not wrong) where the other is right, so a mix gets all four.
    a = np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], float)
    b = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]], float)
    own = np.arange(4)
    assert own_ranks(a, own).tolist() == [1, 1, 2, 2]
    weights, objective = fit_weights({"a": a, "b": b}, own)
    assert weights["a"] == 1.0 and weights["b"] > 0
    assert own_ranks(weighted_fusion({"a": a, "b": b}, weights), own).tolist() == [1, 1, 1, 1]
    assert objective == 1.0


def test_cross_fitted_ranks_keep_an_image_s_queries_in_one_fold():
    from evaluation.train_fusion_job import cross_fitted_ranks

    rng = np.random.default_rng(0)
    own = np.repeat(np.arange(20), 2)  # 20 images, 2 queries each
    good = rng.normal(size=(40, 20))
    good[np.arange(40), own] += 3.0  # a strong method
    noise = rng.normal(size=(40, 20))  # a useless one
    ranks, fold_weights = cross_fitted_ranks({"good": good, "noise": noise}, own, folds=2)
    assert ranks.shape == (40,) and ranks.min() >= 1
    assert len(fold_weights) == 2 and all(w["good"] == 1.0 for w in fold_weights)
    assert np.mean(ranks <= 5) >= np.mean(own_ranks(noise, own) <= 5)
