"""A tiny untrained captioner for MobileNetV2's spatial maps, saved in a models directory.

Tests of the caption wiring (index job column, describe, eval's caption figures) need a
captioner the real index job accepts for the real MobileNetV2 weights; its quality is not
what they test, so it is not trained.
"""

from __future__ import annotations

from pathlib import Path

from encoders.captioner import Captioner, CaptionerConfig, Vocabulary
from encoders.keras_backbones import resolve_weights
from encoders.keras_image import GRAPH_VERSION
from models.artifacts import save_model_version

CAPTIONS = ("a dog on a street", "a man with a hat")


def save_tiny_captioner(models: Path, mobilenet_weights: Path, name: str = "captioner") -> Path:
    """Save it as a version of ``name`` in ``models`` -> the version folder."""
    weights_tag = resolve_weights("mobilenet_v2", str(mobilenet_weights)).tag
    vocabulary = Vocabulary.fit(list(CAPTIONS), min_count=1)
    config = CaptionerConfig(
        vocab_size=len(vocabulary), embed_dim=8, units=16, attention_dim=8, max_len=6,
        image_encoder_id=f"mobilenet_v2/{GRAPH_VERSION}-{weights_tag}-224",
    )  # fmt: skip
    captioner = Captioner(config, vocabulary, seed=3)
    return save_model_version(models, name, config.to_json(), {}, captioner.save_files)
