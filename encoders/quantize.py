"""A Keras embedding graph + real calibration photos -> selective-int8 TFLite bytes.

The graph is the project's own (``encoders.keras_image.build_embedding_models``: uint8 pixels in,
preprocessing, backbone, pooling, L2 normalisation, unit embeddings out), so the int8 model does
the same preprocessing as float32 and takes the same ``encoders.imaging`` pixels.

Full int8 (every op quantized, activations calibrated on the photos) is ~3x float32 on CPU but
moves MobileNetV2 embeddings to a mean cosine of 0.970 against float32 on real photos. Most of
that error comes from a few layers: ``QuantizationDebugger`` measures, per quantized tensor, the
RMSE between its float and quantized values in units of its quantization step (rmse/scale), and
keeping the ``denylist_size`` worst (10 by default) in float gives a mean cosine of 0.991 at the
same ~3x (measured on 300 held-out Flickr8k photos; ``benchmarks/bench_encode.py`` measures it).

Deterministic: the same model and the same calibration array give the same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# Layers kept in float: the 10 with the worst rmse/scale (5 gave a mean cosine of 0.986, 10 gave
# 0.991, at the same speed on MobileNetV2).
DEFAULT_DENYLIST_SIZE = 10
# Calibration photos the per-layer error is measured on (the first ones of the calibration set).
DEFAULT_DEBUG_PHOTOS = 50
# The smallest calibration set accepted: fewer photos give activation ranges that are noise.
MIN_CALIBRATION_PHOTOS = 8


@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """The .tflite bytes and how they were made (recorded by the quantize command)."""

    tflite: bytes
    denylist: tuple[str, ...]  # tensors kept in float, worst rmse/scale first
    calibration_photos: int
    debug_photos: int


def rmse_per_scale(row: dict[str, str]) -> float:
    """One ``layer_statistics_dump`` row -> its RMSE in quantization steps (0 when scale is 0)."""
    scale = float(row["scale"])
    return float(row["mean_squared_error"]) ** 0.5 / scale if scale else 0.0


def worst_layers(rows: Sequence[dict[str, str]], count: int) -> list[str]:
    """The ``count`` tensor names with the largest rmse/scale, worst first (ties by name).

    ``rows`` are ``QuantizationDebugger.layer_statistics_dump`` CSV rows (``tensor_name``,
    ``scale``, ``mean_squared_error``, ...). NaN errors (a tensor the debug data never
    exercised) rank last.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")

    def key(row: dict[str, str]) -> tuple[float, str]:
        error = rmse_per_scale(row)
        return (-error if np.isfinite(error) else float("inf"), row["tensor_name"])

    return [row["tensor_name"] for row in sorted(rows, key=key)[:count]]


def _samples(calibration: np.ndarray, count: int) -> Callable[[], Iterator[list[np.ndarray]]]:
    def generate() -> Iterator[list[np.ndarray]]:
        for index in range(count):
            yield [calibration[index : index + 1]]

    return generate


def _converter(model: keras.Model, calibration: np.ndarray) -> Any:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _samples(calibration, len(calibration))
    return converter


def quantize_embedding_model(
    model: keras.Model,
    calibration: np.ndarray,
    *,
    denylist_size: int = DEFAULT_DENYLIST_SIZE,
    debug_photos: int = DEFAULT_DEBUG_PHOTOS,
) -> QuantizedModel:
    """``model`` (uint8 ``(N, S, S, 3)`` -> unit embeddings) -> selective-int8 TFLite.

    ``calibration`` is ``(M, S, S, 3)`` uint8 real photos decoded like every input
    (``encoders.imaging.decode_image``); all M calibrate the activation ranges, the first
    ``debug_photos`` of them rank the layers. ``denylist_size`` 0 gives full int8.
    """
    import tensorflow as tf

    calibration = np.asarray(calibration)
    expected = tuple(model.input_shape[1:])
    if calibration.dtype != np.uint8 or calibration.shape[1:] != expected:
        raise ValueError(
            f"calibration must be uint8 (M, {', '.join(map(str, expected))}), got "
            f"{calibration.dtype}{calibration.shape}"
        )
    if len(calibration) < MIN_CALIBRATION_PHOTOS:
        raise ValueError(
            f"need at least {MIN_CALIBRATION_PHOTOS} calibration photos, got {len(calibration)}"
        )
    debug_photos = min(debug_photos, len(calibration))
    converter = _converter(model, calibration)
    if denylist_size == 0:
        return QuantizedModel(converter.convert(), (), len(calibration), 0)

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_samples(calibration, debug_photos)
    )
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    denylist = worst_layers(list(csv.DictReader(dump)), denylist_size)
    logger.info("keeping %d layers in float: %s", len(denylist), ", ".join(denylist))

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    selective = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(model, calibration),
        debug_dataset=_samples(calibration, debug_photos),
        debug_options=options,
    )
    return QuantizedModel(
        selective.get_nondebug_quantized_model(), tuple(denylist), len(calibration), debug_photos
    )
