"""The image CNN cut in two for fine-tuning: a frozen bottom run once, a trainable top.

Fine-tuning the whole MobileNetV2 on two CPU cores would take hours an epoch; its top blocks are
where ImageNet features turn into object-level ones, and they are what pays to adapt to
captions (VSE++, Faghri et al. 2018). So the network is split below its first trainable
block (``cut_layer``: for the top one to three blocks the output of ``block_14_add``, 7x7x160 at
224 px): the bottom's activations for every training view are computed once and cached (they
never change, the bottom is frozen), and each step runs only the top (by default ``block_15``,
``block_16`` and ``Conv_1``) on a cached batch.

The top is not a copy: it replays the backbone's own layer objects after the cut, so training
it updates the backbone, and ``save_backbone`` writes an ordinary Keras ``.weights.h5`` that
``KerasImageEncoder`` loads unchanged (same preprocessing, same pooling, same mirror average as
the stock encoder). The batch pipeline and the query path therefore run the fine-tuned weights
through the one encoder graph they always use; only the version tag (a hash of the file)
changes.

Batch normalisation stays in inference mode with its ImageNet statistics: batches of 128 on a
few thousand photos would give noisy statistics, and frozen ones keep the cached bottom and the
trained top consistent.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import EncoderSpec
from encoders.keras_backbones import architecture_for, resolve_weights
from training.progress import Progress, note

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# The first layer of the trainable top for ``trainable_blocks`` blocks (counted from the top).
FIRST_TRAINABLE = {
    "MobileNetV2": {
        1: "Conv_1", 2: "block_16_expand", 3: "block_15_expand", 4: "block_14_expand",
        5: "block_13_expand",
    },
}  # fmt: skip
# Where the network is cut for that many trainable blocks: the last activation of the frozen
# bottom. One to three blocks share a cut (and so one cache of activations); the frozen blocks
# between it and the first trainable one are replayed, and cost little at 7x7.
CUTS = {
    "MobileNetV2": {
        1: "block_14_add", 2: "block_14_add", 3: "block_14_add", 4: "block_13_project_BN",
        5: "block_12_add",
    },
}  # fmt: skip


def cut_layer(architecture: str, trainable_blocks: int) -> str:
    """The layer whose output the frozen bottom ends with, for ``trainable_blocks``."""
    return CUTS[architecture][trainable_blocks]


# Images per bottom call while caching: bounds peak memory.
_CACHE_CHUNK = 64


@dataclasses.dataclass(eq=False)
class SplitBackbone:
    """One backbone seen as ``bottom`` (uint8 pixels -> cut activations) and ``top`` (cut
    activations -> the spatial map before pooling). Both share ``backbone``'s layers."""

    spec: EncoderSpec
    backbone: keras.Model
    bottom: keras.Model
    top: keras.Model
    trainable_variables: list[Any]
    cut: str  # the layer the bottom ends with (``cut_layer``)
    # None: global average pooling (the stock encoder's); else a Keras layer over the spatial
    # map, e.g. ``encoders.grid_pooling.GeneralizedPooling``, trained with the towers.
    pooling: Any = None

    @property
    def activation_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.bottom.output.shape[1:])

    def pooled(self, activations: Any) -> Any:
        """Cut activations -> pooled features (by default the encoder's global average)."""
        import keras

        spatial = self.top(activations, training=False)
        if self.pooling is not None:
            return self.pooling(spatial)
        return keras.ops.mean(keras.ops.cast(spatial, "float32"), axis=(1, 2))

    @property
    def pooling_variables(self) -> list[Any]:
        """The pooling layer's trainable weights (none for the average)."""
        if self.pooling is None:
            return []
        if not self.pooling.built:
            self.pooling.build(tuple(self.top.output.shape))
        return list(self.pooling.trainable_weights)

    def save_backbone(self, path: str) -> None:
        """The whole fine-tuned backbone as a Keras ``.weights.h5`` (what the encoder loads)."""
        self.backbone.save_weights(path)


def fine_tunable(name: str) -> bool:
    """Whether ``name``'s architecture has a known cut (MobileNetV2 and its mirrored variant)."""
    return architecture_for(name).application in CUTS


def build_split_backbone(spec: EncoderSpec, trainable_blocks: int) -> SplitBackbone:
    """The backbone ``spec`` names, with its top ``trainable_blocks`` blocks trainable.

    Raises ValueError for an architecture without a cut or a block count it does not have.
    """
    import keras

    from encoders.keras_image import build_preprocessing

    architecture = architecture_for(spec.name)
    if architecture.application not in CUTS:
        raise ValueError(
            f"fine-tuning knows where to cut {sorted(CUTS)}, not {architecture.application} "
            f"({spec.name}); train on frozen features instead (--finetune-blocks 0)"
        )
    first_names = FIRST_TRAINABLE[architecture.application]
    if trainable_blocks not in first_names:
        raise ValueError(
            f"trainable_blocks must be one of {sorted(first_names)}, got {trainable_blocks}"
        )
    resolved = resolve_weights(spec.name, spec.weights)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "weights": resolved.keras_weights,
        "input_shape": (spec.image_size, spec.image_size, 3),
    }
    if architecture.application == "MobileNetV2":
        kwargs["alpha"] = 1.0
    backbone = getattr(keras.applications, architecture.application)(**kwargs)
    preprocessing = build_preprocessing(spec.name, spec.image_size)
    cut_name = cut_layer(architecture.application, trainable_blocks)
    cut = backbone.get_layer(cut_name)
    bottom_backbone = keras.Model(backbone.input, cut.output)
    bottom = keras.Model(
        preprocessing.input, bottom_backbone(preprocessing.output), name="frozen_bottom"
    )
    top = _replay_after(backbone, cut)

    first = first_names[trainable_blocks]
    trainable = False
    for layer in backbone.layers:
        trainable = trainable or layer.name == first
        # Batch norm keeps its ImageNet statistics and affine terms (see the module docstring).
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
    variables = [v for layer in top.layers for v in layer.trainable_weights]
    return SplitBackbone(spec, backbone, bottom, top, variables, cut_name)


def _replay_after(backbone: keras.Model, cut: Any) -> keras.Model:
    """A model from ``cut``'s output to the backbone's output that calls the backbone's own
    layers (so it shares their weights). Layers are in topological order and each was called
    once, so every layer's inputs are known by the time it is reached."""
    import keras

    start = keras.Input(tuple(cut.output.shape[1:]), name="cut_activations")
    tensors = {id(cut.output): start}
    layers = backbone.layers
    position = next(i for i, layer in enumerate(layers) if layer is cut)
    output = start
    for layer in layers[position + 1 :]:
        inputs = layer.input
        if isinstance(inputs, (list, tuple)):
            output = layer([tensors[id(t)] for t in inputs])
        else:
            output = layer(tensors[id(inputs)])
        tensors[id(layer.output)] = output
    return keras.Model(start, output, name="trainable_top")


def augmented_view(pixels: np.ndarray, view: int, rng: np.random.Generator) -> np.ndarray:
    """View ``view`` of a uint8 ``(N, S, S, 3)`` batch: 0 the photo, 1 its mirror, 2+ random
    resized crops (50-100% of the area, aspect 3:4 to 4:3, mirrored half the time).

    The first two are exactly what the mirror-averaging encoder sees at index time; the crops
    are the augmentation (a caption still describes most of a photo's crop).
    """
    if view == 0:
        return pixels
    if view == 1:
        return np.ascontiguousarray(pixels[:, :, ::-1])
    from PIL import Image

    out = np.empty_like(pixels)
    size = pixels.shape[1:3]
    for row, image in enumerate(pixels):
        crop = _random_crop(image, rng)
        resized = np.asarray(Image.fromarray(crop).resize(size[::-1], Image.BILINEAR))
        out[row] = resized[:, ::-1] if rng.random() < 0.5 else resized
    return out


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.5, 1.0) * height * width
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        crop_w = round(np.sqrt(area * aspect))
        crop_h = round(np.sqrt(area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            return image[top : top + crop_h, left : left + crop_w]
    return image


def cache_activations(
    split: SplitBackbone,
    load_pixels: Callable[[Sequence[int]], np.ndarray],
    num_images: int,
    views: int,
    seed: int,
    progress: Callable[[str], None] = note,
) -> np.ndarray:
    """The frozen bottom's activations for ``views`` views of every image, float16.

    ``load_pixels(rows)`` returns the uint8 batch of those dataset rows. -> ``(views,
    num_images, h, w, c)``. Stored in float16 to halve the cache (6,091 photos x 4 views is
    0.4 GB); the top computes in float32. A bar (or periodic lines) shows the photos done;
    ``progress(message)`` gets one line when all are.
    """
    import tensorflow as tf

    rng = np.random.default_rng([seed, 7])
    out = np.empty((views, num_images, *split.activation_shape), dtype=np.float16)
    run = tf.function(
        lambda batch: split.bottom(batch, training=False),
        input_signature=[tf.TensorSpec([None, *split.bottom.input.shape[1:]], tf.uint8)],
    )
    started = time.monotonic()
    with Progress(
        total=num_images, desc=f"image activations ({views} views)", unit="photo"
    ) as photos:
        for start in range(0, num_images, _CACHE_CHUNK):
            rows = list(range(start, min(start + _CACHE_CHUNK, num_images)))
            pixels = load_pixels(rows)
            for view in range(views):
                batch = augmented_view(pixels, view, rng)
                out[view, rows[0] : rows[-1] + 1] = run(batch).numpy()
            photos.update(len(rows))
    progress(
        f"image activations: {num_images} photos x {views} views in "
        f"{time.monotonic() - started:.0f} s"
    )
    return out
