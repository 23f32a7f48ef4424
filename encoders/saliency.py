"""Why an image scored high: Grad-CAM heatmaps of a similarity score, in plain NumPy.

The score explained is a cosine between a fixed unit ``target`` (a text query in the joint
space, or another image's embedding) and the image's vector, computed from the CNN's last
spatial map ``S`` (``h x w x C``, e.g. MobileNetV2's 7 x 7 x 1280) as

    p = mean_ij S[i, j]                    global average pooling
    e = p / |p|                            the encoder's L2 normalisation (the indexed vector)
    h = tower(e)                           a joint model's image tower (dense layers), or nothing
    score = target . h / |h|

Every step is differentiable in closed form, so ``score_gradient`` back-propagates by hand
(no TensorFlow graph; a test checks it against ``tf.GradientTape``). Since pooling is a mean,
``d score / d S[i, j, c] = g[c] / (h w)`` with ``g = d score / d p``: the Grad-CAM channel
weights (the gradient averaged over positions) are ``g / (h w)`` and the map is
``sum_c weight[c] * S[i, j, c]``, whose sum over positions is ``g . p``. The normalisations make
the score scale-invariant in ``p``, so ``g . p = 0`` exactly: the map is signed by construction
(regions whose features pull the vector towards the target against regions that pull it
away), hence a positive map (ReLU of it, Grad-CAM proper) and a negative one.

Upsampling, colouring and blending produce an RGB ``uint8`` array; encoding it (PNG) is the
caller's business.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoders.joint import DenseLayer

_EPS = 1e-12


def _activation_slope(activation: str, pre: np.ndarray, post: np.ndarray) -> np.ndarray:
    """d activation / d pre-activation at ``pre`` (``post`` = activation(pre))."""
    if activation == "linear":
        return np.ones_like(pre)
    if activation == "relu":
        return (pre > 0).astype(pre.dtype)
    if activation == "tanh":
        return 1.0 - post * post
    raise ValueError(f"no derivative for activation {activation!r}")


def _normalise_backward(x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """The gradient through ``x / |x|``: ``(upstream - (upstream . u) u) / |x|``, u = x/|x|."""
    norm = max(float(np.linalg.norm(x)), _EPS)
    unit = x / norm
    return (upstream - float(upstream @ unit) * unit) / norm


def score_gradient(
    pooled: np.ndarray, target: np.ndarray, layers: Sequence[DenseLayer] = ()
) -> tuple[float, np.ndarray]:
    """``(score, d score / d pooled)`` for one image's pooled features ``(C,)``.

    ``score = target . normalise(tower(normalise(pooled)))`` with ``tower`` the chain of
    ``layers`` (a ``JointModel``'s ``image_layers``; empty for an image-image cosine or a
    Word2VisualVec model, whose image side is the image embedding itself). ``target`` is a
    unit vector of the output space. Float64 inside, so the gradient is exact to rounding.
    """
    pooled = np.asarray(pooled, np.float64)
    target = np.asarray(target, np.float64)
    if pooled.ndim != 1 or target.ndim != 1:
        raise ValueError(f"expected 1-d pooled features and target, got {pooled.shape}, "
                         f"{target.shape}")  # fmt: skip
    x = pooled / max(float(np.linalg.norm(pooled)), _EPS)
    cache = []
    for layer in layers:
        pre = x @ layer.kernel.astype(np.float64) + layer.bias.astype(np.float64)
        post = np.asarray(_apply(layer.activation, pre))
        cache.append((layer, pre, post))
        x = post
    if x.shape != target.shape:
        raise ValueError(f"the image side gives {x.shape[0]}-d vectors, the target is "
                         f"{target.shape[0]}-d")  # fmt: skip
    norm = max(float(np.linalg.norm(x)), _EPS)
    score = float(target @ x) / norm
    upstream = _normalise_backward(x, target)
    for layer, pre, post in reversed(cache):
        upstream = (upstream * _activation_slope(layer.activation, pre, post)) @ layer.kernel.T
    return score, _normalise_backward(pooled, upstream)


def _apply(activation: str, pre: np.ndarray) -> np.ndarray:
    if activation == "linear":
        return pre
    if activation == "relu":
        return np.maximum(pre, 0.0)
    if activation == "tanh":
        return np.tanh(pre)
    raise ValueError(f"unknown activation {activation!r}")


def cam_weights(pooled_gradient: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Grad-CAM channel weights ``(C,)``: ``d score / d S[i, j, c]`` averaged over positions.

    Average pooling spreads ``d score / d p`` evenly, ``1 / (h w)`` to each position, so the
    average over positions is that same value. (An encoder that also averages a mirrored pass,
    ``mobilenet_v2_flip``, gives the photo's own map half of it: the same map, half as tall.)
    """
    height, width = int(spatial_shape[0]), int(spatial_shape[1])
    return np.asarray(pooled_gradient, np.float64) / (height * width)


def grad_cam(spatial: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, negative)`` maps ``(h, w)`` from a spatial map ``(h, w, C)`` and weights.

    ``positive = relu(sum_c weights[c] S[:, :, c])`` (Grad-CAM); ``negative`` is the ReLU of
    the opposite sign: where the features pulled the score down.
    """
    spatial = np.asarray(spatial, np.float64)
    if spatial.ndim != 3 or spatial.shape[-1] != len(weights):
        raise ValueError(f"expected an (h, w, {len(weights)}) map, got {spatial.shape}")
    signed = spatial @ np.asarray(weights, np.float64)
    return np.maximum(signed, 0.0), np.maximum(-signed, 0.0)


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` to ``size`` = ``(height, width)``, cell centres aligned
    (the half-pixel convention of ``tf.image.resize``; edges clamp)."""
    heat = np.asarray(heat, np.float64)
    out_height, out_width = size
    if out_height < 1 or out_width < 1:
        raise ValueError(f"size must be positive, got {size}")

    def axis(out: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(out) + 0.5) * cells / out - 0.5, 0.0, cells - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, cells - 1)
        return low, high, position - low

    r0, r1, fr = axis(out_height, heat.shape[0])
    c0, c1, fc = axis(out_width, heat.shape[1])
    rows = heat[r0] * (1 - fr)[:, None] + heat[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc)[None, :] + rows[:, c1] * fc[None, :]


def scale_unit(heat: np.ndarray) -> np.ndarray:
    """``heat`` divided by its maximum (all zeros stays all zeros), as float32 in [0, 1]."""
    heat = np.maximum(np.asarray(heat, np.float64), 0.0)
    top = float(heat.max()) if heat.size else 0.0
    return (heat / top if top > 0 else heat).astype(np.float32)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the hottest cell (the first one on ties)."""
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col)


def peak_point(cells: np.ndarray, box: Sequence[float]) -> tuple[float, float]:
    """``(x, y)`` of the centre of the hottest cell of ``cells`` ``(h, w)`` spread over ``box``
    = ``(left, top, right, bottom)``. (The upsampled map's own argmax would be no better: it
    peaks at that same centre, or anywhere on the flat margin an edge cell clamps to.)"""
    row, col = peak(cells)
    left, top, right, bottom = box
    height, width = cells.shape
    return left + (col + 0.5) * (right - left) / width, top + (row + 0.5) * (bottom - top) / height


# A perceptually ordered ramp: dark blue -> blue -> cyan -> yellow -> red (like "jet", darker
# at the low end so faint evidence stays unobtrusive).
_RAMP = np.array(
    [[0, 0, 96], [0, 64, 255], [0, 224, 255], [255, 240, 0], [255, 32, 0]], dtype=np.float64
)


def colourise(heat: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 colours along ``_RAMP``."""
    position = np.clip(np.asarray(heat, np.float64), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_RAMP) - 2)
    frac = (position - low)[..., None]
    colours = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return np.round(colours).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend a [0, 1] heatmap ``(H, W)`` over an RGB uint8 image ``(H, W, 3)``.

    Each pixel mixes in the heat colour in proportion to its heat (at most ``alpha``), so
    regions with no evidence show the photo unchanged.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat {heat.shape} does not match the image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None]
    blended = image.astype(np.float64) * (1 - weight) + colourise(heat) * weight
    return np.round(blended).astype(np.uint8)


def cover_box(
    frame: tuple[int, int], input_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of the part of a ``frame`` = ``(width, height)`` picture
    an encoder of ``input_size`` = ``(height, width)`` sees: the centred box of its aspect ratio
    (what ``encoders.imaging.decode_image`` keeps before resizing)."""
    width, height = frame
    in_height, in_width = input_size
    box_width = min(width, height * in_width / in_height)
    box_height = min(height, width * in_height / in_width)
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return left, top, left + box_width, top + box_height


def heat_in_frame(heat: np.ndarray, frame: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """A cell map ``(h, w)`` spread over ``box`` of a ``frame`` = ``(width, height)`` picture
    -> ``(height, width)`` float32; zero outside the box (what the encoder never saw)."""
    width, height = frame
    left, top, right, bottom = (round(v) for v in box)
    out = np.zeros((height, width), np.float32)
    if right > left and bottom > top:
        out[top:bottom, left:right] = upsample(heat, (bottom - top, right - left))
    return out


def dim_outside(image: np.ndarray, box: Sequence[float], factor: float = 0.45) -> np.ndarray:
    """``image`` with everything outside ``box`` darkened (the crop the encoder left out)."""
    left, top, right, bottom = (round(v) for v in box)
    out = image.astype(np.float64) * factor
    out[top:bottom, left:right] = image[top:bottom, left:right]
    return np.round(out).astype(np.uint8)
