"""Merging several trained joint models into one ``JointModel`` (pure NumPy, no training).

The merged model must compute exactly what its members compute together: the mean of the
members' (scaled) text predictions for ``w2vv``, and concatenated (scaled) vectors for ``dual``,
whose dot products are the sum of the members' own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from encoders.base import l2_normalize
from encoders.joint import (
    KIND_DUAL,
    KIND_W2VV,
    DenseLayer,
    JointModel,
    _deepen,
    ensemble_joint_models,
    mixed_joint_model,
)

TEXT_DIM, IMAGE_DIM = 12, 20


def _tower(rng: np.random.Generator, widths: list[int], activation: str) -> tuple:
    layers = []
    for position, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        last = position == len(widths) - 2
        layers.append(
            DenseLayer(
                rng.standard_normal((n_in, n_out)),
                rng.standard_normal(n_out),
                "linear" if last else activation,
            )
        )
    return tuple(layers)


def _w2vv(seed: int, hidden: list[int]) -> JointModel:
    rng = np.random.default_rng(seed)
    return JointModel(
        KIND_W2VV, "text/v1", "image/v1", TEXT_DIM, IMAGE_DIM,
        _tower(rng, [TEXT_DIM, *hidden, IMAGE_DIM], "relu"),
    )  # fmt: skip


def _dual(seed: int, dim: int = 8) -> JointModel:
    rng = np.random.default_rng(seed)
    return JointModel(
        KIND_DUAL, "text/v1", "image/v1", TEXT_DIM, IMAGE_DIM,
        _tower(rng, [TEXT_DIM, 16, dim], "tanh"), _tower(rng, [IMAGE_DIM, dim], "relu"),
        logit_scale=10.0 + seed,
    )  # fmt: skip


def _raw(layers: tuple, x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x


@pytest.mark.parametrize("hidden", [[], [32], [32, 24]])
def test_w2vv_ensemble_is_the_mean_of_scaled_predictions(hidden: list[int]) -> None:
    members = [_w2vv(seed, hidden) for seed in range(3)]
    scales = [0.5, 2.0, 1.0]
    text = np.random.default_rng(9).standard_normal((7, TEXT_DIM)).astype(np.float32)

    merged = ensemble_joint_models(members, text_scales=scales)

    expected = sum(s * _raw(m.text_layers, text) for m, s in zip(members, scales, strict=True))
    np.testing.assert_allclose(merged.embed_text_features(text), l2_normalize(expected), atol=1e-5)
    assert merged.kind == KIND_W2VV and merged.dim == IMAGE_DIM and not merged.image_layers
    # Same size whatever the members: the index's joint column keeps its width.
    assert len(merged.text_layers) == len(members[0].text_layers)


def test_dual_ensemble_sums_the_members_similarities() -> None:
    members = [_dual(seed) for seed in range(3)]
    rng = np.random.default_rng(4)
    text = rng.standard_normal((5, TEXT_DIM)).astype(np.float32)
    images = rng.standard_normal((6, IMAGE_DIM)).astype(np.float32)
    text_scales = [1 / np.linalg.norm(_raw(m.text_layers, text), axis=1).mean() for m in members]
    image_scales = [
        1 / np.linalg.norm(_raw(m.image_layers, images), axis=1).mean() for m in members
    ]

    merged = ensemble_joint_models(members, text_scales, image_scales)

    t_raw = np.concatenate(
        [s * _raw(m.text_layers, text) for m, s in zip(members, text_scales, strict=True)], axis=1
    )
    i_raw = np.concatenate(
        [s * _raw(m.image_layers, images) for m, s in zip(members, image_scales, strict=True)],
        axis=1,
    )
    np.testing.assert_allclose(merged.embed_text_features(text), l2_normalize(t_raw), atol=1e-5)
    np.testing.assert_allclose(merged.embed_image_features(images), l2_normalize(i_raw), atol=1e-5)
    assert merged.dim == 3 * members[0].dim
    assert merged.logit_scale == pytest.approx(11.0)
    # It round-trips through the saved format like any other model.
    again = JointModel.from_arrays(merged.config(), merged.weights())
    np.testing.assert_allclose(again.embed_text_features(text), merged.embed_text_features(text))


def test_members_that_cannot_merge_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ensemble_joint_models([])
    with pytest.raises(ValueError, match="same depth"):
        ensemble_joint_models([_w2vv(0, [32]), _w2vv(1, [])])
    with pytest.raises(ValueError, match="share kind"):
        ensemble_joint_models([_w2vv(0, []), _dual(1)])
    with pytest.raises(ValueError, match="one text and one image scale"):
        ensemble_joint_models([_w2vv(0, []), _w2vv(1, [])], text_scales=[1.0])


@pytest.mark.parametrize("w2vv_hidden", [[], [32], [32, 24]])
def test_mixed_model_adds_weighted_w2vv_cosine_to_dual_similarity(w2vv_hidden: list[int]) -> None:
    w2vv = _w2vv(0, w2vv_hidden)
    rng = np.random.default_rng(1)
    dual = JointModel(  # linear towers, as the trainer's default
        KIND_DUAL, "text/v1", "image/v1", TEXT_DIM, IMAGE_DIM,
        _tower(rng, [TEXT_DIM, 8], "relu"), _tower(rng, [IMAGE_DIM, 8], "relu"),
    )  # fmt: skip
    text = rng.standard_normal((5, TEXT_DIM)).astype(np.float32)
    images = l2_normalize(rng.standard_normal((6, IMAGE_DIM)))

    mixed = mixed_joint_model(w2vv, 3.0, dual)

    assert mixed.kind == KIND_DUAL and mixed.dim == IMAGE_DIM + 8
    t_raw = np.concatenate([3.0 * _raw(w2vv.text_layers, text), _raw(dual.text_layers, text)], 1)
    i_raw = np.concatenate([images, _raw(dual.image_layers, images)], axis=1)
    np.testing.assert_allclose(mixed.embed_text_features(text), l2_normalize(t_raw), atol=1e-5)
    np.testing.assert_allclose(mixed.embed_image_features(images), l2_normalize(i_raw), atol=1e-5)
    with pytest.raises(ValueError, match="a w2vv model and a dual model"):
        mixed_joint_model(dual, 1.0, dual)


def test_deepening_keeps_a_linear_tower_exact() -> None:
    rng = np.random.default_rng(3)
    tower = _tower(rng, [TEXT_DIM, 8], "relu")
    x = rng.standard_normal((4, TEXT_DIM)).astype(np.float32)
    deeper = _deepen(tower, 3)
    assert [layer.activation for layer in deeper] == ["relu", "relu", "linear"]
    np.testing.assert_allclose(_raw(deeper, x), _raw(tower, x), atol=1e-5)
