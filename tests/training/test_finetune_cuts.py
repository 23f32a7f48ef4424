"""Where the CNN is cut for fine-tuning: the frozen bottom and the replayed top give the whole
network's features for every block count, real MobileNetV2 weights, real photos."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.base import EncoderSpec
from encoders.imaging import decode_image
from training.finetune_backbone import build_split_backbone, cut_layer


@pytest.fixture(scope="module")
def pixels(coco_photos) -> np.ndarray:
    return np.stack([decode_image(p.read_bytes())[0] for p in coco_photos[:2]])


@pytest.mark.parametrize(
    ("blocks", "cut", "shape", "first_trainable"),
    [(3, "block_14_add", (7, 7, 160), "block_15_expand"),
     (4, "block_13_project_BN", (7, 7, 160), "block_14_expand"),
     (5, "block_12_add", (14, 14, 96), "block_13_expand")],
)  # fmt: skip
def test_bottom_then_top_is_the_whole_network(
    mobilenet_weights, pixels, blocks, cut, shape, first_trainable
):
    from encoders.keras_image import build_preprocessing

    spec = EncoderSpec("mobilenet_v2_flip", weights=str(mobilenet_weights))
    split = build_split_backbone(spec, blocks)
    assert split.cut == cut == cut_layer("MobileNetV2", blocks)
    assert split.activation_shape == shape
    whole = split.backbone(build_preprocessing(spec.name, spec.image_size)(pixels))
    expected = np.asarray(whole).mean(axis=(1, 2))
    through_cut = np.asarray(split.pooled(split.bottom(pixels)))
    np.testing.assert_allclose(through_cut, expected, rtol=1e-4, atol=1e-5)
    # Trainable from the block's first layer on, batch norm excepted; frozen below.
    trainable = [layer.name for layer in split.backbone.layers if layer.trainable_weights]
    assert trainable[0] == first_trainable
    assert not any(name.endswith("_BN") or name.endswith("bn") for name in trainable)
