"""Ranks and retrieval metrics against hand-computed cases and a brute-force argsort oracle."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.metrics import (
    image_to_text_ranks,
    ranks_from_scores,
    retrieval_metrics,
    text_to_image_ranks,
)


def test_ranks_by_hand() -> None:
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],  # relevant 2: only 0.9 beats it -> rank 2
            [0.2, 0.8, 0.1, 0.0],  # relevant {1, 3}: 1 is the best -> rank 1
            [0.1, 0.2, 0.3, 0.4],  # relevant 0: lowest -> rank 4
        ]
    )
    ranks = ranks_from_scores(scores, [{2}, [3, 1], np.array([0])])
    np.testing.assert_array_equal(ranks, [2, 1, 4])


def test_ties_are_pessimistic() -> None:
    # Every score equal: the relevant item is placed after all irrelevant ones.
    ranks = ranks_from_scores(np.zeros((2, 5)), [{0}, {1, 2}])
    np.testing.assert_array_equal(ranks, [5, 4])
    # Tied with one irrelevant item, beaten by none: rank 2, whichever column comes first.
    np.testing.assert_array_equal(ranks_from_scores(np.array([[0.5, 0.7, 0.7]]), [{2}]), [2])
    np.testing.assert_array_equal(ranks_from_scores(np.array([[0.5, 0.7, 0.7]]), [{1}]), [2])


def test_ranks_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no relevant item"):
        ranks_from_scores(np.zeros((1, 3)), [set()])
    with pytest.raises(ValueError, match="outside"):
        ranks_from_scores(np.zeros((1, 3)), [{3}])
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(np.array([[0.1, np.nan]]), [{0}])
    with pytest.raises(ValueError, match="relevant sets"):
        ranks_from_scores(np.zeros((2, 3)), [{0}])


def test_retrieval_metrics_by_hand() -> None:
    metrics = retrieval_metrics(np.array([1, 2, 6, 11]))
    assert metrics == {
        "R@1": 0.25,
        "R@5": 0.5,
        "R@10": 0.75,
        "MRR": pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4),
        "median_rank": 4.0,
        "mean_rank": 5.0,
        "queries": 4,
    }
    assert set(retrieval_metrics(np.array([3]), ks=(2, 3))) >= {"R@2", "R@3"}
    with pytest.raises(ValueError, match="1-based"):
        retrieval_metrics(np.array([0, 1]))


def _brute_force_rank(row: np.ndarray, relevant: set[int]) -> int:
    """Sort descending, breaking ties by putting irrelevant items first; first relevant hit."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j in relevant))
    return 1 + next(position for position, j in enumerate(order) if j in relevant)


def test_blockwise_helpers_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((37, 8)).astype(np.float32)
    # Duplicate an image so that exact ties occur between distinct columns.
    images[5] = images[4]
    caption_image_index = np.repeat(np.arange(37), 3)[:100]
    captions = images[caption_image_index] + rng.standard_normal((100, 8)).astype(np.float32)
    captions[7] = 0.0  # a zero vector ties with every image

    scores = captions @ images.T
    expected_t2i = [_brute_force_rank(scores[q], {int(caption_image_index[q])}) for q in range(100)]
    for block_size in (1, 16, 1024):
        got = text_to_image_ranks(captions, images, caption_image_index, block_size=block_size)
        np.testing.assert_array_equal(got, expected_t2i)
    np.testing.assert_array_equal(
        ranks_from_scores(scores, [{int(i)} for i in caption_image_index]), expected_t2i
    )
    assert expected_t2i[7] == 37  # the zero caption ties everything: last place

    relevant = [set(np.flatnonzero(caption_image_index == i).tolist()) for i in range(34)]
    image_scores = images[:34] @ captions.T
    expected_i2t = [_brute_force_rank(image_scores[i], relevant[i]) for i in range(34)]
    for block_size in (1, 5, 1024):
        got = image_to_text_ranks(images[:34], captions, caption_image_index, block_size=block_size)
        np.testing.assert_array_equal(got, expected_i2t)
    np.testing.assert_array_equal(ranks_from_scores(image_scores, relevant), expected_i2t)


def test_blockwise_helpers_subtract_a_per_item_bias() -> None:
    """``item_bias`` ranks as the score matrix minus one number per item would."""
    rng = np.random.default_rng(1)
    images = rng.standard_normal((20, 6)).astype(np.float32)
    caption_image_index = np.repeat(np.arange(20), 2)
    captions = images[caption_image_index] + rng.standard_normal((40, 6)).astype(np.float32)
    image_bias = rng.uniform(0, 3, 20).astype(np.float32)
    caption_bias = rng.uniform(0, 3, 40).astype(np.float32)
    scores = captions @ images.T
    for block_size in (1, 7, 1024):
        np.testing.assert_array_equal(
            text_to_image_ranks(captions, images, caption_image_index, block_size,
                                item_bias=image_bias),
            ranks_from_scores(scores - image_bias[None], [{int(i)} for i in caption_image_index]),
        )  # fmt: skip
        relevant = [set(np.flatnonzero(caption_image_index == i).tolist()) for i in range(20)]
        np.testing.assert_array_equal(
            image_to_text_ranks(images, captions, caption_image_index, block_size,
                                item_bias=caption_bias),
            ranks_from_scores(scores.T - caption_bias[None], relevant),
        )  # fmt: skip
    unbiased = text_to_image_ranks(captions, images, caption_image_index)
    assert (text_to_image_ranks(captions, images, caption_image_index, item_bias=image_bias)
            != unbiased).any()  # fmt: skip
    with pytest.raises(ValueError, match="item_bias"):
        text_to_image_ranks(captions, images, caption_image_index, item_bias=image_bias[:5])


def test_image_to_text_needs_a_caption_per_image() -> None:
    with pytest.raises(ValueError, match="no caption"):
        image_to_text_ranks(np.eye(3), np.eye(3)[:2], np.array([0, 1]))
    with pytest.raises(ValueError, match="-d but the other side"):
        text_to_image_ranks(np.ones((2, 4)), np.ones((3, 5)), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        text_to_image_ranks(np.ones((2, 4)), np.ones((3, 4)), np.array([0, 3]))


def test_perfect_and_random_embeddings() -> None:
    rng = np.random.default_rng(1)
    images = rng.standard_normal((200, 32)).astype(np.float32)
    index = np.arange(200)
    perfect = retrieval_metrics(text_to_image_ranks(images, images, index))
    assert perfect["R@1"] == 1.0 and perfect["median_rank"] == 1.0
    noise = rng.standard_normal((200, 32)).astype(np.float32)
    chance = retrieval_metrics(text_to_image_ranks(noise, images, index))
    assert chance["R@10"] < 0.15  # chance is 10 / 200 = 0.05
