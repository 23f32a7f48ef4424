"""`imgsearch train joint` fine-tuning the CNN's top blocks on real COCO photos, for real.

A few seconds of real Keras training (two epochs over 79 full-size COCO photos, two views),
then the saved encoder goes through the index job, the image-query path and the trained towers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoders.base import EncoderSpec
from encoders.imaging import decode_image
from encoders.registry import create_image_encoder, image_encoder_id
from models.artifacts import list_models, load_joint_model, read_metadata
from models.image_encoder import KIND_IMAGE_ENCODER, recorded_image_encoder
from pipelines import index_job
from serving.searcher import ImageSearcher
from training import train_joint_job
from training.captions import load_captioned_dataset

MODEL = "dual-tfidf"


@pytest.fixture(scope="module")
def trained(coco: Path, tmp_path_factory, mobilenet_weights) -> Path:
    models = tmp_path_factory.mktemp("models")
    config, beam_args = train_joint_job.parse_args(
        ["--dataset", str(coco), "--split", "val", "--out", str(models),
         "--text-encoder", "tfidf", "--weights", str(mobilenet_weights), "--kind", "dual",
         "--finetune-blocks", "2", "--finetune-epochs", "2", "--finetune-views", "3",
         "--epochs", "3", "--ensemble", "1", "--no-mixed", "--seed", "3"]
    )  # fmt: skip
    assert config.image_encoder.name == "mobilenet_v2_flip"  # the default recipe's encoder
    messages: list[str] = []
    train_joint_job.run(config, beam_args, progress=messages.append)
    (models / "progress.txt").write_text("\n".join(messages))
    return models


def _versions(models: Path) -> dict:
    return {m.name: m for m in list_models(models)}


def test_the_fine_tuned_encoder_is_a_new_version_the_joint_model_names(
    trained: Path, mobilenet_weights
):
    versions = _versions(trained)
    encoder_version = versions["image-mobilenet_v2_flip"]
    assert json.loads((encoder_version.path / "config.json").read_text())["kind"] == (
        KIND_IMAGE_ENCODER
    )
    entry = read_metadata(versions[MODEL].path)["image_encoder"]
    spec = recorded_image_encoder(trained, entry)
    assert Path(spec.weights) == encoder_version.path / "backbone.weights.h5"
    stock = EncoderSpec("mobilenet_v2_flip", weights=str(mobilenet_weights))
    assert entry["encoder_id"] == image_encoder_id(spec) != image_encoder_id(stock)
    assert entry["fine_tuned_from"]["encoder_id"] == image_encoder_id(stock)
    model = load_joint_model(trained, MODEL)
    assert model.image_encoder_id == entry["encoder_id"]
    # Progress named the epochs, the held-out figures and the time left.
    progress = (trained / "progress.txt").read_text()
    assert "epoch 2/2" in progress and "held-out text->image R@1" in progress
    assert "min left" in progress


def test_only_the_top_blocks_moved(trained: Path, mobilenet_weights):
    import keras

    spec = recorded_image_encoder(
        trained, read_metadata(_versions(trained)[MODEL].path)["image_encoder"]
    )

    def build(weights: str):
        return keras.applications.MobileNetV2(
            include_top=False, weights=weights, input_shape=(224, 224, 3)
        )

    tuned, stock = build(spec.weights), build(str(mobilenet_weights))

    def weights(model, name: str) -> list[np.ndarray]:
        return model.get_layer(name).get_weights()

    # The frozen bottom, and batch norm everywhere (ImageNet statistics kept, see
    # training.finetune_backbone), are the stock weights exactly.
    for name in ("Conv1", "block_14_expand", "block_14_project", "block_16_expand_BN", "Conv_1_bn"):
        for a, b in zip(weights(tuned, name), weights(stock, name), strict=True):
            np.testing.assert_array_equal(a, b)
    for name in ("block_16_expand", "Conv_1"):  # trained top
        moved = weights(tuned, name)[0] - weights(stock, name)[0]
        assert np.abs(moved).max() > 1e-6, name


def test_batch_and_query_paths_give_identical_vectors(trained: Path, coco: Path, tmp_path: Path):
    photos = sorted((coco / "val2017").glob("*.jpg"))[:3]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for photo in photos:
        (corpus / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "index"
    # No --encoder/--weights: the index job takes the joint model's (fine-tuned) encoder.
    index_job.run(
        ["--corpus", str(corpus), "--out", str(out), "--models", str(trained),
         "--joint_model", MODEL]
    )  # fmt: skip
    searcher = ImageSearcher.load(str(out))
    entry = read_metadata(_versions(trained)[MODEL].path)["image_encoder"]
    assert searcher.encoder_id == entry["encoder_id"]
    photo = photos[0]
    hits = searcher.search_image_bytes(photo.read_bytes(), k=2)
    assert hits[0].image_id == photo.stem or hits[0].uri.endswith(photo.name)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    # The query path's vector is the stored row, to float precision.
    encoder = create_image_encoder(recorded_image_encoder(trained, entry))
    query = encoder.encode(decode_image(photo.read_bytes())[0][None])
    row = [h.uri for h in (searcher.hit_for_row(i, 0.0) for i in range(len(searcher)))].index(
        hits[0].uri
    )
    np.testing.assert_allclose(query[0], searcher.vectors[row], atol=1e-6)


def test_the_trainers_features_are_the_encoders(trained: Path, coco: Path):
    """The towers after fine-tuning were trained on embeddings read from the cached
    activations; they must be the fine-tuned encoder's own vectors (float16 cache aside)."""
    from training.finetune_backbone import build_split_backbone
    from training.image_finetune import image_features

    entry = read_metadata(_versions(trained)[MODEL].path)["image_encoder"]
    spec = recorded_image_encoder(trained, entry)
    cache = next((trained / "features").glob("finetune-*"))
    activations = np.load(cache / "activations.npy")
    dataset = load_captioned_dataset(coco, "val")
    split = build_split_backbone(spec, 2)
    from_cache = image_features(split, activations[:, :4], mirror_average=True)
    pixels = np.stack([decode_image(Path(uri).read_bytes())[0] for _, uri in dataset.images[:4]])
    direct = create_image_encoder(spec).encode(pixels)
    cosines = np.sum(from_cache * direct, axis=1)
    assert cosines.min() > 0.999, cosines


def test_the_saved_model_scores_as_it_was_trained(trained: Path, coco: Path):
    """Saved and loaded, the model ranks the training captions' photos far above chance."""
    from evaluation.joint_eval import evaluate_joint_model
    from training.features import dataset_features

    dataset = load_captioned_dataset(coco, "val")
    entry = read_metadata(_versions(trained)[MODEL].path)["image_encoder"]
    features = dataset_features(
        dataset, trained / "eval-features", recorded_image_encoder(trained, entry)
    )
    first = evaluate_joint_model(trained, MODEL, features)
    again = evaluate_joint_model(trained, MODEL, features)
    assert first == again
    assert first["text_to_image"]["R@10"] > 10 / 79 * 2  # chance is 10/79


def test_the_imagenet_tag_head_is_refused_for_a_fine_tuned_encoder(trained: Path, tmp_path: Path):
    """Its classifier was trained on the stock CNN's pooled features: tags from the fine-tuned
    ones would be wrong, so the job says so before it starts."""
    with pytest.raises(ValueError, match="fine-tuned encoder"):
        index_job.run(
            ["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), "--models",
             str(trained), "--joint_model", MODEL, "--tag_head", "auto"]
        )  # fmt: skip
