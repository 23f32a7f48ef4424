"""Keras-applications image encoders: uint8 pixels in, unit-length embeddings out, in one graph.

The model built here takes ``(N, H, W, 3)`` uint8 RGB and does the architecture's own
preprocessing, the backbone with global average pooling, and the L2 normalisation, so the batch
pipeline, the query path and a later SavedModel export all run the exact same graph (no second
implementation of preprocessing to drift).

Importing this module does not import TensorFlow: only building a ``KerasImageEncoder`` pays for
it. The backbone table and the weights resolution live in ``encoders.keras_backbones``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import EncoderSpec, ImageEncoder, check_pixel_batch
from encoders.inference_policy import (
    CPU_POLICY,
    InferencePolicy,
    choose_policy,
    detect_accelerators,
    padded_batch_size,
)
from encoders.keras_backbones import RANDOM_INIT_SEED, architecture_for, resolve_weights

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# Part of every version string: bump it when the graph changes in a way that changes vectors
# (preprocessing, pooling, normalisation) even though the weights did not.
GRAPH_VERSION = "v1"

# Images per model call on CPU (the inference policy sets it on GPU): bounds peak memory on large
# batches. The batch dimension of the traced function is unknown (None), so a short last chunk
# or a single query image does not retrace (without XLA; with XLA each new size compiles once).
CHUNK_SIZE = CPU_POLICY.chunk_size

# Smallest input the three Keras backbones accept.
MIN_IMAGE_SIZE = 32

# Caffe-style means, in BGR order, that keras.applications.resnet50.preprocess_input subtracts.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@contextlib.contextmanager
def _seeded_initialisation(seed: int) -> Iterator[None]:
    """Make Keras' unseeded initialisers deterministic without disturbing callers' random streams.

    Keras 3 draws each unseeded initialiser's seed from Python's ``random`` (and its global
    SeedGenerator), so ``set_random_seed`` makes a random network reproducible across processes.
    It also reseeds Python and NumPy globally; their states are put back afterwards so a caller's
    own random sequence is unchanged. (TensorFlow's global seed stays set: nothing here uses it.)
    """
    import keras

    python_state = random.getstate()
    numpy_state = np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def build_preprocessing(name: str, image_size: int) -> keras.Model:
    """uint8 ``(N, S, S, 3)`` RGB -> the float32 input the backbone's weights were trained on."""
    import keras

    architecture = architecture_for(name)
    pixels = keras.Input((image_size, image_size, 3), dtype="uint8", name="pixels")
    x = keras.ops.cast(pixels, "float32")
    if architecture.preprocessing == "tf":
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_unit_range")(x)
    elif architecture.preprocessing == "caffe":
        x = keras.ops.flip(x, axis=-1)  # RGB -> BGR
        x = keras.layers.Normalization(
            mean=list(_CAFFE_BGR_MEAN), variance=[1.0, 1.0, 1.0], name="subtract_bgr_mean"
        )(x)
    elif architecture.preprocessing != "raw":
        raise ValueError(f"unknown preprocessing {architecture.preprocessing!r} for {name!r}")
    return keras.Model(pixels, x, name=f"{name}_preprocessing")


@contextlib.contextmanager
def _dtype_policy(precision: str) -> Iterator[None]:
    """Build layers under Keras' ``precision`` policy, then put the caller's policy back.

    Keras keeps the policy in a process global; scoping it here means only the backbone built
    inside computes in reduced precision (variables stay float32 under a mixed policy, so the
    float32 weights files load unchanged).
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_embedding_models(
    name: str, keras_weights: str | None, image_size: int, precision: str = "float32"
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """The encoder's graphs: uint8 pixels -> unit embeddings, -> the pooled features, and ->
    all three of (embeddings, pooled features, spatial feature map) from one backbone pass.

    All share every layer and weight; the features model stops before the L2 normalisation
    (what a classifier head trained on pooled features consumes); the spatial map is the
    backbone's last ``(h, w, C)`` activation before pooling (what a captioner attends over).
    ``keras_weights`` is a ``.weights.h5`` path, ``"imagenet"`` or None for a seeded random
    initialisation. ``precision`` is the backbone's Keras dtype policy
    (``encoders.inference_policy``); the preprocessing, the spatial map handed on, the pooled
    features and the normalisation are float32 whatever it is.
    """
    import keras

    architecture = architecture_for(name)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": keras_weights,
        "input_shape": (image_size, image_size, 3),
        # Pooled here rather than by pooling="avg" so the spatial map is an output too; the
        # global average is the same operation either way.
        "pooling": None,
    }
    if architecture.application == "MobileNetV2":
        kwargs["alpha"] = 1.0
    # The whole assembly is seeded, not just the backbone: layers created while wiring the graph
    # may draw seeds too.
    seeding = (
        _seeded_initialisation(RANDOM_INIT_SEED)
        if keras_weights is None
        else contextlib.nullcontext()
    )
    with seeding:
        preprocessing = build_preprocessing(name, image_size)
        with _dtype_policy(precision):
            backbone = getattr(keras.applications, architecture.application)(**kwargs)
        spatial = backbone(preprocessing.output)
        if precision != "float32":
            spatial = keras.ops.cast(spatial, "float32")
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(spatial)
        if architecture.flip_average:
            features = _mirror_averaged(backbone, preprocessing.output, features)
        embedding = keras.layers.UnitNormalization(axis=-1, name="embedding")(features)
    if features.shape[-1] != architecture.dim:
        raise RuntimeError(
            f"{name} produced {features.shape[-1]}-d features, not {architecture.dim}"
        )
    pixels = preprocessing.input
    return (
        keras.Model(pixels, embedding, name=f"{name}_embedding"),
        keras.Model(pixels, features, name=f"{name}_features"),
        keras.Model(pixels, [embedding, features, spatial], name=f"{name}_all_features"),
    )


def _mirror_averaged(backbone: keras.Model, inputs: Any, features: Any) -> Any:
    """The mean of ``features`` (the photo's pooled features) and the mirrored photo's.

    The spatial map handed to a captioner stays the photo's own. (GeM pooling, p=3, of the
    mirrored pair was tried instead of the average for Flickr8k dev text->image with one W2VV
    model: R@1 0.157 against 0.181, so the average stays.)
    """
    import keras

    mirrored = backbone(keras.ops.flip(inputs, axis=2))  # (N, H, W, 3): axis 2 is the width
    mirrored = keras.ops.mean(keras.ops.cast(mirrored, "float32"), axis=(1, 2))
    return (features + mirrored) / 2.0


@functools.cache
def _log_device_once() -> None:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    where = ", ".join(device.name for device in gpus) if gpus else "CPU (TensorFlow sees no GPU)"
    logger.info("image encoders run on %s", where)


class KerasImageEncoder(ImageEncoder):
    """A ``keras.applications`` backbone wrapped as one uint8-in, unit-vector-out Keras model.

    Built from an ``EncoderSpec`` (name in ``KERAS_ARCHITECTURES``, weights, image size). Building
    loads TensorFlow and the weights, so do it once per process (``load_model`` in Beam, startup
    in serving) and reuse the object.
    """

    def __init__(self, spec: EncoderSpec, policy: InferencePolicy | None = None) -> None:
        """``policy`` None: chosen from the GPUs this process sees (float32 on CPU)."""
        import tensorflow as tf

        architecture = architecture_for(spec.name)
        if spec.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be at least {MIN_IMAGE_SIZE} for {spec.name}, "
                f"got {spec.image_size}"
            )
        resolved = resolve_weights(spec.name, spec.weights)
        _log_device_once()

        self.spec = spec
        self.name = spec.name
        self.dim = architecture.dim
        self.input_size = (spec.image_size, spec.image_size)
        # The image size is in the version: the same weights at another size give other vectors.
        self.version = f"{GRAPH_VERSION}-{resolved.tag}-{spec.image_size}"

        self.policy = policy if policy is not None else choose_policy(detect_accelerators())
        with tf.device(self.policy.device):
            self._model, self._feature_model, self._all_model = build_embedding_models(
                spec.name, resolved.keras_weights, spec.image_size, self.policy.precision
            )

        # A None batch dimension traces the graph once for every batch size; calling the model
        # directly avoids model.predict's per-call dataset and callback machinery. The graph
        # takes uint8, so a batch crosses to the GPU at a quarter of its float32 size.
        signature = [tf.TensorSpec([None, *self.input_size, 3], tf.uint8, name="pixels")]
        jit = self.policy.jit_compile
        self._embed = tf.function(
            lambda batch: self._model(batch, training=False),
            input_signature=signature,
            jit_compile=jit,
        )
        self._features = tf.function(
            lambda batch: self._feature_model(batch, training=False),
            input_signature=signature,
            jit_compile=jit,
        )
        logger.info(
            "built image encoder %s (%d-d) on %s", self.encoder_id, self.dim, self.policy.describe()
        )
        self._all = tf.function(
            lambda batch: self._all_model(batch, training=False),
            input_signature=signature,
            jit_compile=jit,
        )

    @property
    def model(self) -> keras.Model:
        """The whole graph, uint8 pixels -> unit embeddings (what a serving export would save)."""
        return self._model

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 at ``input_size`` -> ``(N, dim)`` float32 unit vectors."""
        return self._run(self._embed, pixels)

    def pooled_features(self, pixels: np.ndarray) -> np.ndarray:
        """Like ``encode`` but before L2 normalisation: input for a classifier head."""
        return self._run(self._features, pixels)

    def encode_with_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One backbone pass -> (unit embeddings ``(N, dim)``, pooled features ``(N, dim)``,
        spatial map ``(N, h, w, dim)``), all float32.

        The batch pipeline uses it when a classifier head (tags) or a captioner also needs the
        image: the embeddings are the same numbers ``encode`` gives, with no second CNN pass.
        """
        pixels = check_pixel_batch(pixels, self.input_size)
        if len(pixels) == 0:
            side = self._all_model.outputs[2].shape[1:]
            empty = np.zeros((0, self.dim), dtype=np.float32)
            return empty, empty.copy(), np.zeros((0, *side), dtype=np.float32)
        import tensorflow as tf

        parts: list[list[np.ndarray]] = [[], [], []]
        chunk = self.policy.chunk_size
        with tf.device(self.policy.device):
            for start in range(0, len(pixels), chunk):
                outputs = self._all(pixels[start : start + chunk])
                for part, output in zip(parts, outputs, strict=True):
                    part.append(output.numpy().astype(np.float32, copy=False))
        embeddings, pooled, spatial = (np.concatenate(part) for part in parts)
        return embeddings, pooled, spatial

    def _run(self, function: Any, pixels: np.ndarray) -> np.ndarray:
        pixels = check_pixel_batch(pixels, self.input_size)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        import tensorflow as tf

        chunk = self.policy.chunk_size
        outputs = []
        with tf.device(self.policy.device):
            for start in range(0, len(pixels), chunk):
                part = pixels[start : start + chunk]
                if self.policy.jit_compile:
                    # XLA compiles one program per input shape: pad to a few bucket sizes so a
                    # stream of odd batch sizes does not compile a new program for each. Images
                    # are independent at inference (batch norm uses its moving statistics), so
                    # the zero padding changes no real row.
                    size = padded_batch_size(len(part), chunk)
                    padding = np.zeros((size - len(part), *part.shape[1:]), dtype=part.dtype)
                    outputs.append(function(np.concatenate([part, padding])).numpy()[: len(part)])
                else:
                    outputs.append(function(part).numpy())
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"KerasImageEncoder({self.encoder_id!r}, input_size={self.input_size})"
