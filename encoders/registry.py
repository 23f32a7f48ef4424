"""``EncoderSpec`` -> live ``ImageEncoder``: the one place that knows which encoders exist.

Importing this module is cheap (no TensorFlow): ``encoders.keras_image`` imports TensorFlow only
when a Keras encoder is created, ``encoders.tflite_image`` LiteRT only when an int8 one is.
"""

from __future__ import annotations

from encoders.base import EncoderSpec, ImageEncoder
from encoders.fake import FAKE_ENCODER_NAME, FakeImageEncoder
from encoders.keras_backbones import KERAS_ARCHITECTURES, resolve_weights
from encoders.keras_image import GRAPH_VERSION, KerasImageEncoder
from encoders.tflite_image import (
    TFLITE_ENCODERS,
    TfliteImageEncoder,
    resolve_tflite_weights,
    tflite_version,
)

IMAGE_ENCODER_NAMES: tuple[str, ...] = (FAKE_ENCODER_NAME, *KERAS_ARCHITECTURES, *TFLITE_ENCODERS)


def image_encoder_dim(spec: EncoderSpec) -> int:
    """The embedding width ``spec`` gives, without building the model (no TensorFlow, no weights).

    Lets a job size its table schema, or reject an unknown name, before any work starts.
    """
    if spec.name == FAKE_ENCODER_NAME:
        return FakeImageEncoder.dim
    if spec.name in KERAS_ARCHITECTURES:
        return KERAS_ARCHITECTURES[spec.name].dim
    if spec.name in TFLITE_ENCODERS:
        return TFLITE_ENCODERS[spec.name].dim
    raise _unknown(spec.name)


def check_image_encoder(spec: EncoderSpec) -> int:
    """Fail fast on a spec that cannot be built (unknown name, weights not found); -> its dim.

    Cheap (no TensorFlow): a job calls it before launching workers, so a missing weights file
    is one clear error on the command line rather than a crash inside every worker.
    """
    dim = image_encoder_dim(spec)
    if spec.name in KERAS_ARCHITECTURES:
        resolve_weights(spec.name, spec.weights)
    if spec.name in TFLITE_ENCODERS:
        resolve_tflite_weights(spec.name, spec.weights)
    return dim


def image_encoder_id(spec: EncoderSpec) -> str:
    """The ``encoder_id`` that ``spec``'s encoder stamps on its rows, without building it.

    The incremental index job compares it with the ids stored in the previous table before any
    worker loads a model: a row is reused only if the same encoder version made it. Must agree
    with ``create_image_encoder(spec).encoder_id`` (a test checks both encoders).
    """
    if spec.name == FAKE_ENCODER_NAME:
        return f"{FakeImageEncoder.name}/{FakeImageEncoder.version}"
    if spec.name in KERAS_ARCHITECTURES:
        tag = resolve_weights(spec.name, spec.weights).tag
        return f"{spec.name}/{GRAPH_VERSION}-{tag}-{spec.image_size}"
    if spec.name in TFLITE_ENCODERS:
        tag = resolve_tflite_weights(spec.name, spec.weights).tag
        return f"{spec.name}/{tflite_version(tag, spec.image_size)}"
    raise _unknown(spec.name)


def create_image_encoder(spec: EncoderSpec) -> ImageEncoder:
    """Build the encoder ``spec`` names (loading its weights); ValueError for an unknown name."""
    if spec.name == FAKE_ENCODER_NAME:
        return FakeImageEncoder(spec)
    if spec.name in KERAS_ARCHITECTURES:
        return KerasImageEncoder(spec)
    if spec.name in TFLITE_ENCODERS:
        return TfliteImageEncoder(spec)
    raise _unknown(spec.name)


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown image encoder {name!r}; known: {', '.join(IMAGE_ENCODER_NAMES)}")
