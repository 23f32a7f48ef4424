"""Grad-CAM maths (``encoders.saliency``): the analytic gradient against tf.GradientTape, the
upsampling against tf.image.resize, and the drawing helpers."""

from __future__ import annotations

import numpy as np
import pytest

from encoders import saliency
from encoders.base import l2_normalize
from encoders.joint import DenseLayer

tf = pytest.importorskip("tensorflow")

_TF_ACTIVATIONS = {"linear": lambda x: x, "relu": tf.nn.relu, "tanh": tf.tanh}


def _layer(rng, inputs: int, units: int, activation: str) -> DenseLayer:
    kernel = rng.standard_normal((inputs, units)) / np.sqrt(inputs)
    return DenseLayer(kernel, rng.standard_normal(units) * 0.1, activation)


def tape_gradient(spatial: np.ndarray, target: np.ndarray, layers) -> tuple[float, np.ndarray]:
    """The score and d score / d spatial by tf.GradientTape: pool, normalise, tower, cosine."""
    s = tf.constant(spatial[None], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(s)
        x = tf.math.l2_normalize(tf.reduce_mean(s, axis=(1, 2)), axis=-1)
        for layer in layers:
            x = x @ layer.kernel.astype(np.float64) + layer.bias.astype(np.float64)
            x = _TF_ACTIVATIONS[layer.activation](x)
        score = tf.reduce_sum(tf.math.l2_normalize(x, axis=-1) * target.astype(np.float64))
    return float(score), tape.gradient(score, s).numpy()[0]


@pytest.mark.parametrize("activations", [(), ("linear",), ("relu", "linear"), ("tanh", "relu")])
def test_analytic_grad_cam_equals_gradient_tape(activations) -> None:
    rng = np.random.default_rng(0)
    channels, dims = 24, [24, 16, 8][: len(activations) + 1]
    # Non-negative like ReLU6 features, so the pooled vector is far from zero.
    spatial = rng.uniform(0, 6, (7, 5, channels))
    layers = [_layer(rng, dims[i], dims[i + 1], a) for i, a in enumerate(activations)]
    target = l2_normalize(rng.standard_normal(dims[-1] if layers else channels))
    score, gradient = saliency.score_gradient(spatial.mean(axis=(0, 1)), target, layers)
    tape_score, tape = tape_gradient(spatial, target, layers)
    assert score == pytest.approx(tape_score, abs=1e-10)
    # Average pooling: every position gets the same gradient, g / (h w) ...
    np.testing.assert_allclose(tape, np.broadcast_to(gradient / 35, tape.shape), atol=1e-12)
    # ... which is the Grad-CAM weight (the gradient averaged over positions).
    weights = saliency.cam_weights(gradient, spatial.shape)
    np.testing.assert_allclose(weights, tape.mean(axis=(0, 1)), atol=1e-12)
    positive, negative = saliency.grad_cam(spatial, weights)
    signed = np.einsum("ijc,c->ij", spatial, tape.mean(axis=(0, 1)))
    np.testing.assert_allclose(positive - negative, signed, atol=1e-12)
    # The cosine is scale-invariant in the pooled vector, so the map sums to zero.
    assert abs(signed.sum()) < 1e-9


def test_evidence_on_one_side_peaks_on_that_side() -> None:
    rng = np.random.default_rng(1)
    spatial = rng.uniform(0, 0.2, (7, 7, 16))
    spatial[:, :2, 3] += 4.0  # the target's channel, in the two leftmost columns only
    spatial[:, :, 9] += 2.0  # a channel everywhere that the target does not want
    target = np.zeros(16)
    target[3] = 1.0
    _, gradient = saliency.score_gradient(spatial.mean(axis=(0, 1)), target)
    positive, negative = saliency.grad_cam(spatial, saliency.cam_weights(gradient, (7, 7)))
    assert saliency.peak(positive)[1] < 2
    assert positive[:, 3:].max() == 0.0  # the rest pulls the score down
    assert saliency.peak(negative)[1] >= 2
    frame = saliency.heat_in_frame(positive, (300, 200), saliency.cover_box((300, 200), (224, 224)))
    assert frame.shape == (200, 300)
    assert saliency.peak(frame)[1] < 150
    assert frame[:, :50].max() == 0.0  # left of the centre crop the encoder saw


def test_upsample_matches_tf_bilinear_resize() -> None:
    heat = np.random.default_rng(2).uniform(0, 1, (7, 7))
    ours = saliency.upsample(heat, (224, 160))
    theirs = tf.image.resize(heat[None, :, :, None], (224, 160), method="bilinear").numpy()
    np.testing.assert_allclose(ours, theirs[0, :, :, 0], atol=1e-5)
    np.testing.assert_allclose(saliency.upsample(np.full((7, 7), 0.3), (50, 70)), 0.3)


def test_overlay_shape_dtype_and_blend() -> None:
    image = np.full((40, 60, 3), 100, np.uint8)
    heat = np.zeros((40, 60), np.float32)
    heat[:, 30:] = 1.0
    out = saliency.overlay(image, heat, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :30], image[:, :30])  # no heat: the photo unchanged
    np.testing.assert_array_equal(out[0, 59], [178, 66, 50])  # half red at full heat
    assert saliency.colourise(np.array([0.0, 1.0])).tolist() == [[0, 0, 96], [255, 32, 0]]
    with pytest.raises(ValueError, match="does not match"):
        saliency.overlay(image, heat[:10])
    with pytest.raises(ValueError, match="uint8"):
        saliency.overlay(image.astype(np.float32), heat)


def test_cover_box_and_scale_unit() -> None:
    assert saliency.cover_box((640, 480), (224, 224)) == (80.0, 0.0, 560.0, 480.0)
    assert saliency.cover_box((300, 500), (224, 224)) == (0.0, 100.0, 300.0, 400.0)
    np.testing.assert_array_equal(saliency.scale_unit(np.zeros((2, 2))), np.zeros((2, 2)))
    assert saliency.scale_unit(np.array([[1.0, 4.0]])).tolist() == [[0.25, 1.0]]
    dimmed = saliency.dim_outside(np.full((10, 10, 3), 200, np.uint8), (2, 0, 8, 10))
    assert dimmed[0, 0, 0] == 90 and dimmed[0, 5, 0] == 200
