"""The fine-tuning pieces that need no TensorFlow: views, caption lookup, config, model files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.base import EncoderSpec
from models.image_encoder import (
    WEIGHTS_FILE,
    is_fine_tuned,
    recorded_image_encoder,
    save_image_encoder,
)
from training.finetune_backbone import augmented_view
from training.image_finetune import _captions_by_image
from training.joint_config import ImageFineTuneConfig


def _pixels(count: int = 3, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_views_zero_and_one_are_the_photo_and_its_mirror():
    pixels = _pixels()
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(augmented_view(pixels, 0, rng), pixels)
    np.testing.assert_array_equal(augmented_view(pixels, 1, rng), pixels[:, :, ::-1])


def test_crop_views_keep_the_shape_and_differ_from_the_photo():
    pixels = _pixels()
    crops = augmented_view(pixels, 2, np.random.default_rng(2))
    assert crops.shape == pixels.shape and crops.dtype == np.uint8
    assert not np.array_equal(crops, pixels)
    # Seeded: the same generator state gives the same crops.
    again = augmented_view(pixels, 2, np.random.default_rng(2))
    np.testing.assert_array_equal(crops, again)


def test_captions_by_image_lists_each_photo_s_captions():
    pairs = np.array([[0, 2], [1, 0], [2, 2], [3, 1], [4, 0]])
    by_image = _captions_by_image(pairs, 4)
    assert [sorted(c.tolist()) for c in by_image] == [[1, 4], [3], [0, 2], []]


@pytest.mark.parametrize(
    "change",
    [{"trainable_blocks": 6}, {"views": 0}, {"backbone_learning_rate": 0.0},
     {"hard_negatives_from": 1.0}, {"min_temperature": 1.0}],
)  # fmt: skip
def test_bad_fine_tune_settings_are_refused(change):
    with pytest.raises(ValueError):
        ImageFineTuneConfig(**change)


def test_a_saved_encoder_is_found_after_its_models_folder_moves(tmp_path: Path):
    models = tmp_path / "models"
    base = EncoderSpec("mobilenet_v2_flip")
    spec, relative = save_image_encoder(
        models, base, lambda path: Path(path).write_bytes(b"weights"), {"dataset": {}}
    )
    assert spec.name == "mobilenet_v2_flip" and Path(spec.weights).read_bytes() == b"weights"
    assert relative.endswith(f"/{WEIGHTS_FILE}") and (models / relative).is_file()
    assert is_fine_tuned(spec) and not is_fine_tuned(base)
    entry = {**spec.to_json(), "encoder_id": "x", "models_file": relative}
    assert recorded_image_encoder(models, entry) == spec
    moved = tmp_path / "elsewhere"
    shutil.move(models, moved)
    found = recorded_image_encoder(moved, entry)
    assert found.weights == str(moved / relative) and Path(found.weights).is_file()
    config = json.loads((moved / relative).parent.joinpath("config.json").read_text())
    assert config["kind"] == "image_encoder" and config["architecture"] == "mobilenet_v2_flip"
