"""Rocchio feedback and the weighted combination under it (``ranking.query_mix``), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.query_mix import MixError, combine, contributions
from ranking.rocchio import ALPHA, BETA, GAMMA, rocchio, rocchio_parts


def test_combine_is_the_renormalised_weighted_sum() -> None:
    # 3 * (1, 0) + 4 * (0, 1) = (3, 4): norm 5, direction (0.6, 0.8).
    unit, norm = combine(np.array([[1.0, 0.0], [0.0, 1.0]]), [3.0, 4.0])
    np.testing.assert_allclose(unit, [0.6, 0.8], atol=1e-7)
    assert norm == pytest.approx(5.0)


def test_a_negative_weight_subtracts() -> None:
    # (1, 0) - (0.6, 0.8) = (0.4, -0.8): norm sqrt(0.8) = 0.894427...
    unit, norm = combine(np.array([[1.0, 0.0], [0.6, 0.8]]), [1.0, -1.0])
    np.testing.assert_allclose(unit, [0.4 / 0.894427191, -0.8 / 0.894427191], atol=1e-6)
    assert norm == pytest.approx(0.894427191)


def test_contributions_add_up_to_the_score() -> None:
    vectors, weights = np.array([[1.0, 0.0], [0.0, 1.0]]), [3.0, 4.0]
    unit, norm = combine(vectors, weights)
    hits = np.array([[1.0, 0.0], [0.6, 0.8]])
    similarities, shares = contributions(vectors, weights, norm, hits)
    np.testing.assert_allclose(similarities, [[1.0, 0.0], [0.6, 0.8]])
    # hit 1: 3 * 1 / 5 and 4 * 0 / 5; hit 2: 3 * 0.6 / 5 = 0.36 and 4 * 0.8 / 5 = 0.64.
    np.testing.assert_allclose(shares, [[0.6, 0.0], [0.36, 0.64]], atol=1e-7)
    np.testing.assert_allclose(shares.sum(axis=1), hits @ unit, atol=1e-6)


@pytest.mark.parametrize(
    "vectors, weights, message",
    [
        ([[1.0, 0.0], [1.0, 0.0]], [1.0, -1.0], "cancel out"),
        ([[1.0, 0.0]], [0.0], "weight 0"),
        ([[1.0, 0.0]], [1.0, 2.0], "1 part vectors but 2 weights"),
        (np.zeros((0, 2)), [], "part vectors"),
        ([[np.nan, 0.0]], [1.0], "finite"),
        ([[1.0, 0.0]], [np.inf], "finite"),
    ],
)
def test_parts_that_cannot_be_combined(vectors, weights, message: str) -> None:
    with pytest.raises(MixError, match=message):
        combine(np.asarray(vectors, dtype=float), weights)


def test_the_standard_coefficients() -> None:
    assert (ALPHA, BETA, GAMMA) == (1.0, 0.75, 0.15)


def test_rocchio_by_hand() -> None:
    query = np.array([1.0, 0.0, 0.0])
    relevant = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # mean (0, 0.5, 0.5)
    not_relevant = np.array([[1.0, 0.0, 0.0]])
    # 1 * (1, 0, 0) + 0.75 * (0, 0.5, 0.5) - 0.15 * (1, 0, 0) = (0.85, 0.375, 0.375);
    # norm sqrt(0.7225 + 2 * 0.140625) = sqrt(1.00375).
    expected = np.array([0.85, 0.375, 0.375]) / np.sqrt(1.00375)
    np.testing.assert_allclose(rocchio(query, relevant, not_relevant), expected, atol=1e-6)
    labels, vectors, weights = rocchio_parts(query, relevant, not_relevant)
    assert labels == ["query", "relevant", "not_relevant"]
    np.testing.assert_allclose(vectors, [[1, 0, 0], [0, 0.5, 0.5], [1, 0, 0]])
    np.testing.assert_allclose(weights, [1.0, 0.75, -0.15])


def test_feedback_from_images_alone() -> None:
    # 0.75 * mean((0, 1), (1, 0)) = (0.375, 0.375): direction (1, 1) / sqrt(2).
    refined = rocchio(None, np.array([[0.0, 1.0], [1.0, 0.0]]), np.zeros((0, 2)))
    np.testing.assert_allclose(refined, [2**-0.5, 2**-0.5], atol=1e-6)
    labels, _, _ = rocchio_parts(None, np.array([[0.0, 1.0]]), np.zeros((0, 2)))
    assert labels == ["relevant"]


def test_a_query_without_feedback_is_the_query_renormalised() -> None:
    np.testing.assert_allclose(rocchio(np.array([2.0, 0.0]), np.zeros((0, 2)), []), [1.0, 0.0])


def test_custom_coefficients_and_a_zero_one_leaves_its_part_out() -> None:
    # alpha 0.5, beta 1, gamma 0: 0.5 * (1, 0) + 1 * (0, 1) = (0.5, 1): norm sqrt(1.25).
    refined = rocchio(
        np.array([1.0, 0.0]),
        np.array([[0.0, 1.0]]),
        np.array([[1.0, 0.0]]),
        alpha=0.5,
        beta=1.0,
        gamma=0.0,
    )
    np.testing.assert_allclose(refined, np.array([0.5, 1.0]) / np.sqrt(1.25), atol=1e-6)
    labels, _, _ = rocchio_parts(
        np.array([1.0, 0.0]), np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), gamma=0.0
    )
    assert labels == ["query", "relevant"]


@pytest.mark.parametrize(
    "query, relevant, not_relevant, kwargs, message",
    [
        (None, np.zeros((0, 2)), np.zeros((0, 2)), {}, "nothing to search for"),
        (None, np.zeros((0, 2)), np.array([[1.0, 0.0]]), {}, "nothing to search for"),
        (
            np.array([1.0, 0.0]),
            np.zeros((0, 2)),
            np.zeros((0, 2)),
            {"alpha": 0.0},
            "nothing to search for",
        ),
        (np.array([1.0, 0.0]), np.zeros((0, 2)), np.zeros((0, 2)), {"beta": -1.0}, "beta"),
        (np.array([1.0, 0.0]), np.zeros((0, 2)), np.zeros((0, 2)), {"gamma": np.nan}, "gamma"),
        (
            np.array([1.0, 0.0]),
            np.array([[1.0, 0.0, 0.0]]),
            np.zeros((0, 3)),
            {},
            "different dimensions",
        ),
        # the query minus an identical not-relevant image, weighted alike: nothing left.
        (
            np.array([1.0, 0.0]),
            np.zeros((0, 2)),
            np.array([[1.0, 0.0]]),
            {"gamma": 1.0},
            "cancel out",
        ),
    ],
)
def test_refused_feedback(query, relevant, not_relevant, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rocchio(query, relevant, not_relevant, **kwargs)
