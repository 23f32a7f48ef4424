"""GeneralizedPooling (VSE-infinity's GPO over a fixed grid): the average untrained, learnable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from encoders.base import EncoderSpec
from encoders.grid_pooling import GeneralizedPooling


def _grid(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((3, 7, 7, 16)).astype(np.float32)


def test_untrained_it_is_global_average_pooling():
    grid = _grid()
    pooled = np.asarray(GeneralizedPooling()(grid))
    np.testing.assert_allclose(pooled, grid.mean(axis=(1, 2)), atol=1e-6)


def test_weights_on_the_top_rank_give_max_pooling_and_the_bottom_rank_min():
    grid = _grid(1)
    pooling = GeneralizedPooling()
    pooling(grid)  # builds it
    logits = np.zeros(49, dtype=np.float32)
    logits[-1] = 5.0  # / the 0.1 temperature: all the weight on the largest value
    pooling.rank_logits.assign(logits)
    np.testing.assert_allclose(np.asarray(pooling(grid)), grid.max(axis=(1, 2)), atol=1e-5)
    pooling.rank_logits.assign(logits[::-1].copy())
    np.testing.assert_allclose(np.asarray(pooling(grid)), grid.min(axis=(1, 2)), atol=1e-5)


def test_it_refuses_a_grid_of_unknown_size():
    import keras

    with pytest.raises(ValueError, match="fixed grid"):
        GeneralizedPooling()(keras.Input((None, None, 8)))


def test_fine_tuning_trains_its_rank_weights(mobilenet_weights):
    """Inside the fine-tuning loop the rank weights are trained with the towers (and start as
    the encoder's own average: the first pooled features are the stock ones)."""
    from training.finetune_backbone import build_split_backbone
    from training.image_finetune import fine_tune_dual_encoder, image_features
    from training.joint_config import ImageFineTuneConfig

    spec = EncoderSpec("mobilenet_v2_flip", weights=str(mobilenet_weights))
    stock = build_split_backbone(spec, 1)
    split = dataclasses.replace(stock, pooling=GeneralizedPooling(name="gpo"))
    rng = np.random.default_rng(0)
    activations = rng.random((2, 24, 7, 7, 160)).astype(np.float16)
    np.testing.assert_allclose(
        image_features(split, activations, True), image_features(stock, activations, True),
        atol=1e-6,
    )  # fmt: skip
    text = rng.random((96, 8)).astype(np.float32)
    config = ImageFineTuneConfig(
        trainable_blocks=1, views=2, dim=16, epochs=2, batch_size=8, heldout_fraction=0.0
    )
    fine_tune_dual_encoder(split, activations, text, np.repeat(np.arange(24), 4), config, True,
                           lambda _: None)  # fmt: skip
    weights = np.asarray(split.pooling.rank_weights())
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.abs(weights - 1 / 49).max() > 1e-4
