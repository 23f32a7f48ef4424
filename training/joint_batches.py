"""The data side of joint training, in NumPy: checked inputs, the held-out split, batch order.

The trainers take ``text_feats`` ``(T, text_dim)``, ``image_feats`` ``(N, image_dim)`` and
``pairs`` ``(P, 2)`` ``[text_row, image_row]``. This module checks them, holds a seeded slice of
the images out for early stopping, and orders each epoch so two captions of one image rarely
share a batch. Separate from the fit loop because none of it needs TensorFlow, and the tests
check these properties on their own.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _check_inputs(
    text_feats: np.ndarray, image_feats: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    text_feats = np.ascontiguousarray(text_feats, dtype=np.float32)
    image_feats = np.ascontiguousarray(image_feats, dtype=np.float32)
    pairs = np.asarray(pairs, dtype=np.int64)
    for name, feats in (("text_feats", text_feats), ("image_feats", image_feats)):
        if feats.ndim != 2 or len(feats) == 0:
            raise ValueError(f"{name} must be a non-empty (rows, dim) matrix, got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(
            f"pairs must be a non-empty (P, 2) [text_row, image_row] array, got {pairs.shape}"
        )
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(text_feats):
        raise ValueError(f"pairs name text rows outside [0, {len(text_feats)})")
    if pairs[:, 1].min() < 0 or pairs[:, 1].max() >= len(image_feats):
        raise ValueError(f"pairs name image rows outside [0, {len(image_feats)})")
    empty = int((np.abs(text_feats[np.unique(pairs[:, 0])]).sum(axis=1) == 0).sum())
    if empty:
        # Text encoders return zero rows for texts with no known token; they teach nothing.
        logger.warning("%d paired caption(s) have all-zero text features", empty)
    return text_feats, image_feats, pairs


def split_heldout(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pairs`` by image: a seeded ``fraction`` of the images, with all their captions,
    goes to the held-out part -> ``(train_pairs, heldout_pairs)``."""
    images = np.unique(pairs[:, 1])
    count = round(fraction * len(images))
    if fraction > 0 and count == 0:
        count = 1
    if count >= len(images):
        raise ValueError(f"holding out {count} of {len(images)} images leaves none to train on")
    rng = np.random.default_rng([seed, 1])
    heldout_images = rng.choice(images, size=count, replace=False)
    held = np.isin(pairs[:, 1], heldout_images)
    return pairs[~held], pairs[held]


def epoch_order(image_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of pair positions in which each image's captions lie far apart.

    Round ``r`` takes the ``r``-th (shuffled) caption of every image, in a shuffled image order;
    the rounds are concatenated. A batch therefore holds one caption per image except where it
    straddles two rounds, which the loss masks.
    """
    order = rng.permutation(len(image_rows))
    # Stable sort by image after the shuffle: each image's captions in random order, contiguous.
    by_image = order[np.argsort(image_rows[order], kind="stable")]
    sorted_images = image_rows[by_image]
    starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
    counts = np.diff(np.r_[starts, len(by_image)])
    round_of = np.arange(len(by_image)) - np.repeat(starts, counts)
    image_rank = np.empty(len(starts), dtype=np.int64)
    image_rank[rng.permutation(len(starts))] = np.arange(len(starts))
    rank_of = np.repeat(image_rank, counts)
    return by_image[np.lexsort((rank_of, round_of))]
