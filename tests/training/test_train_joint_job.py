"""`imgsearch train joint` end to end on real COCO captions, then `imgsearch search --text`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgsearch import cli
from models.artifacts import list_models, read_metadata
from pipelines import index_job
from serving.searcher import ImageSearcher
from serving.text_search import TextSearcher
from training import train_joint_job
from training.captions import load_captioned_dataset


@pytest.fixture(scope="module")
def trained(coco: Path, tmp_path_factory, mobilenet_weights) -> Path:
    models = tmp_path_factory.mktemp("models")
    config, beam_args = train_joint_job.parse_args(
        ["--dataset", str(coco), "--split", "val", "--out", str(models),
         "--text-encoder", "tfidf", "--epochs", "40", "--batch-size", "64", "--seed", "1",
         "--ensemble", "2", "--mixed", "--encoder", "mobilenet_v2", "--finetune-blocks", "0"]
    )  # fmt: skip
    train_joint_job.run(config, beam_args)
    return models


def test_both_kinds_saved_with_the_encoders_they_need(trained: Path):
    versions = {m.name: m for m in list_models(trained)}
    assert set(versions) == {"w2vv-tfidf", "dual-tfidf", "mixed-tfidf"}
    metadata = read_metadata(versions["dual-tfidf"].path)
    assert metadata["image_encoder"]["encoder_id"].startswith("mobilenet_v2/")
    assert metadata["text_encoder"]["name"] == "tfidf"
    assert metadata["dataset"]["captions"] >= 395
    # --ensemble 2: two seeds merged into the one saved model (whose space doubles for dual).
    assert metadata["ensemble"]["seeds"] == [1, 2]
    assert len(metadata["ensemble"]["member_heldout_metrics"]) == 2
    assert json.loads((versions["dual-tfidf"].path / "config.json").read_text())["dim"] == 512
    # The mixed model holds both: the W2VV (image) space beside the dual ensemble's.
    mixed = json.loads((versions["mixed-tfidf"].path / "config.json").read_text())
    assert (mixed["kind"], mixed["dim"]) == ("dual", 1280 + 512)
    assert read_metadata(versions["mixed-tfidf"].path)["mixed_of"]["w2vv"].endswith(
        str(versions["w2vv-tfidf"].path.name)
    )
    # Each model keeps a query bank in its own space: every training caption (395, fewer
    # than the default 1,024) and photo, for the hubness correction.
    for name, version in versions.items():
        config = json.loads((version.path / "config.json").read_text())
        assert config["query_bank"]["texts"] == metadata["dataset"]["captions"], name
        assert config["query_bank"]["images"] == metadata["dataset"]["images"], name
    no_bank, _ = train_joint_job.parse_args(["--dataset", "d", "--out", "m", "--query-bank", "0"])
    assert no_bank.query_bank == 0
    # Features were computed once, by the real index job, and are reused by a second run.
    features = list((trained / "features").iterdir())
    assert len(features) == 1 and (features[0] / "manifest.json").is_file()


def test_trained_models_find_captioned_images_by_text(trained: Path, coco: Path):
    dataset = load_captioned_dataset(coco, "val")
    features_dir = next((trained / "features").iterdir())
    images = ImageSearcher.load(str(features_dir))
    truth = dict(dataset.captions[::5])  # one caption per image as a query
    names, queries = list(truth), list(truth.values())
    for model in ("w2vv-tfidf", "dual-tfidf", "mixed-tfidf"):
        searcher = TextSearcher.load(images, trained, model)
        hits = searcher.search_many(queries, k=5)
        found = np.mean(
            [any(h.image_id == n for h in row) for n, row in zip(names, hits, strict=True)]
        )
        # Captions of the 79 training images with real MobileNetV2 features: chance is
        # 5/79 = 0.06; a fitted model ranks the right image in the top 5 for most of them.
        assert found > 0.5, (model, found)
    with pytest.raises(ValueError, match="no word"):
        searcher.search("zzzqqq xxyyzz", k=3)


def test_cli_text_search(trained: Path, capsys):
    features_dir = next((trained / "features").iterdir())
    capsys.readouterr()
    code = cli.main(
        ["search", "--index", str(features_dir), "--text", "a giraffe standing in a field",
         "--models", str(trained), "-k", "3", "--json"]
    )  # fmt: skip
    assert code == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all({"image_id", "uri", "score", "why"} <= set(h) for h in hits)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_index_job_is_not_rerun_for_the_same_images(trained: Path, coco: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("features should have been reused")

    monkeypatch.setattr(index_job, "run", fail)
    config, _ = train_joint_job.parse_args(
        ["--dataset", str(coco), "--split", "val", "--out", str(trained),
         "--text-encoder", "tfidf", "--epochs", "1", "--kind", "w2vv", "--encoder", "mobilenet_v2",
         "--finetune-blocks", "0", "--ensemble", "1"]
    )  # fmt: skip
    train_joint_job.run(config)


def test_evaluate_joint_model_reports_both_directions(trained: Path, coco: Path):
    from encoders.base import EncoderSpec
    from evaluation.joint_eval import evaluate_joint_model
    from training.features import dataset_features

    dataset = load_captioned_dataset(coco, "val")
    features = dataset_features(dataset, trained / "features", EncoderSpec())  # reused
    figures = evaluate_joint_model(trained, "dual-tfidf", features)
    t2i, i2t = figures["text_to_image"], figures["image_to_text"]
    assert t2i["queries"] == len(dataset.captions) and i2t["queries"] == len(dataset.images)
    assert 0.5 < t2i["R@5"] <= t2i["R@10"] <= 1.0  # the training set: well above chance
    assert i2t["R@1"] <= i2t["R@5"]
    # The model's query bank ranks them; "plain" holds the dot products' own figures.
    assert figures["plain"]["text_to_image"]["queries"] == t2i["queries"]
    assert figures["plain"]["text_to_image"] != t2i or figures["plain"]["image_to_text"] != i2t
