"""`imgsearch train captioner` end to end on a few real Flickr8k photos (tiny model, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.base import EncoderSpec
from encoders.captioner import Captioner
from imgsearch import cli
from models.artifacts import resolve_version


@pytest.fixture(scope="module")
def flickr(assets_dir: Path) -> Path:
    root = assets_dir / "datasets" / "flickr8k"
    if not (root / "splits" / "dev.txt").is_file():
        pytest.skip("Flickr8k missing from the assets folder")
    return root


def test_train_captioner_saves_a_scored_model(flickr, tmp_path, mobilenet_weights):
    models, cache = tmp_path / "models", tmp_path / "cache"
    argv = ["train", "captioner", "--dataset", str(flickr), "--split", "train",
            "--out", str(models), "--cache", str(cache), "--weights", str(mobilenet_weights),
            "--max-images", "12", "--min-count", "1", "--units", "32", "--embed-dim", "16",
            "--attention-dim", "16", "--epochs", "3", "--batch-size", "16",
            "--eval-split", "dev", "--eval-images", "4"]  # fmt: skip
    assert cli.main(argv) == 0
    folder = resolve_version(models, "captioner")
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["dataset"]["images_used"] == 12 and metadata["dataset"]["captions_used"] == 60
    losses = [epoch["loss"] for epoch in metadata["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    evaluation = metadata["evaluation"]
    assert set(evaluation["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
    assert evaluation["images"] == 4 and len(evaluation["examples"]) == 4
    assert len(list(cache.glob("spatial-mobilenet_v2-*.npy"))) == 2  # train and dev maps cached
    captioner = Captioner.load(folder)
    assert captioner.config.image_encoder_id == metadata["image_encoder"]["encoder_id"]


def test_bad_flags_are_refused(flickr, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["train", "captioner", "--dataset", str(flickr), "--out", str(tmp_path),
                  "--epochs", "0"])  # fmt: skip


def test_the_captioner_learns_the_maps_of_the_encoder_the_index_job_takes(tmp_path) -> None:
    """No --encoder: the default joint model's encoder (a fine-tuned one, weights found in the
    models directory), as the index job picks it; flags still win; no joint model: stock."""
    from models.artifacts import save_model_version
    from training.train_captioner_job import captioned_encoder

    models = tmp_path / "models"
    assert captioned_encoder(str(models)) == EncoderSpec()
    weights = models / "image-mobilenet_v2_flip" / "v1" / "backbone.weights.h5"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"fine-tuned")
    relative = "image-mobilenet_v2_flip/v1/backbone.weights.h5"
    recorded = {"name": "mobilenet_v2_flip", "weights": "/elsewhere/backbone.weights.h5",
                "image_size": 224, "models_file": relative}  # fmt: skip
    save_model_version(models, "dual-tfidf", {"kind": "dual"}, {"image_encoder": recorded},
                       lambda out: None)  # fmt: skip
    fine_tuned = EncoderSpec(name="mobilenet_v2_flip", weights=str(weights), image_size=224)
    assert captioned_encoder(str(models)) == fine_tuned
    assert captioned_encoder(str(models), weights="w.h5").weights == "w.h5"
    assert captioned_encoder(str(models), "mobilenet_v2") == EncoderSpec(name="mobilenet_v2")
