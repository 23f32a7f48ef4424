"""The models directory: save -> load round trips, versions, LATEST, and what loading refuses.

Models here are built from seeded NumPy layers (no TensorFlow): the artifact code never needs it,
and ``test_joint`` checks that trained Keras towers export to the same ``JointModel``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest

from encoders.joint import KIND_DUAL, KIND_W2VV, DenseLayer, JointModel
from models.artifacts import (
    CONFIG_FILE,
    LATEST_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    list_models,
    load_joint_model,
    resolve_version,
    save_joint_model,
    save_model_version,
)

NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
TEXT_ID, IMAGE_ID = "minilm/v1", "mobilenet_v2/v1-6714965a05ee-224"


def layer(rng: np.random.Generator, inputs: int, units: int, activation: str) -> DenseLayer:
    return DenseLayer(
        rng.standard_normal((inputs, units)).astype(np.float32) / np.sqrt(inputs),
        rng.standard_normal(units).astype(np.float32) * 0.1,
        activation,
    )


def dual_model(seed: int = 0) -> JointModel:
    rng = np.random.default_rng(seed)
    return JointModel(
        kind=KIND_DUAL,
        text_encoder_id=TEXT_ID,
        image_encoder_id=IMAGE_ID,
        text_dim=12,
        image_dim=20,
        text_layers=(layer(rng, 12, 16, "relu"), layer(rng, 16, 8, "linear")),
        image_layers=(layer(rng, 20, 8, "linear"),),
        logit_scale=14.3,
    )


def w2vv_model(seed: int = 0) -> JointModel:
    rng = np.random.default_rng(seed)
    return JointModel(
        kind=KIND_W2VV,
        text_encoder_id=TEXT_ID,
        image_encoder_id=IMAGE_ID,
        text_dim=12,
        image_dim=20,
        text_layers=(layer(rng, 12, 32, "tanh"), layer(rng, 32, 20, "linear")),
    )


def metadata(model: JointModel) -> dict:
    return {
        "dataset": {"path": "/data/flickr8k", "split": "train", "images": 6091, "captions": 30455},
        "training_config": {"epochs": 3, "hidden_units": (16,)},
        "heldout_metrics": {"R@5": np.float64(0.5)},  # NumPy scalars must serialise
        "text_encoder": {"name": "minilm", "encoder_id": model.text_encoder_id},
        "image_encoder": {"encoder_id": model.image_encoder_id},
    }


@pytest.mark.parametrize("factory", [dual_model, w2vv_model])
def test_round_trip_gives_identical_embeddings(factory, tmp_path: Path) -> None:
    model = factory()
    path = save_joint_model(tmp_path, "joint", model, metadata(model), now=NOW)
    loaded = load_joint_model(tmp_path, "joint")
    assert loaded.config() == model.config()
    rng = np.random.default_rng(9)
    text, image = rng.standard_normal((7, 12)), rng.standard_normal((5, 20))
    np.testing.assert_array_equal(loaded.embed_text_features(text), model.embed_text_features(text))
    np.testing.assert_array_equal(
        loaded.embed_image_features(image), model.embed_image_features(image)
    )
    embedded = loaded.embed_text_features(text)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-6)
    assert path == tmp_path / "joint" / path.name


def test_layout_and_metadata(tmp_path: Path) -> None:
    model = dual_model()
    path = save_joint_model(tmp_path, "joint-dual", model, metadata(model), now=NOW)
    assert re.fullmatch(r"20261123T120000Z-[0-9a-f]{8}", path.name)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE]
    assert (tmp_path / "joint-dual" / LATEST_FILE).read_text() == path.name + "\n"
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["kind"] == KIND_DUAL and config["dim"] == 8
    assert config["text_encoder_id"] == TEXT_ID and config["image_encoder_id"] == IMAGE_ID
    saved = json.loads((path / METADATA_FILE).read_text())
    assert saved["model_name"] == "joint-dual" and saved["version"] == path.name
    assert saved["trained_at"] == "2026-11-23T12:00:00+00:00"
    assert saved["code_version"].startswith("imgsearch")
    assert saved["heldout_metrics"] == {"R@5": 0.5}
    assert saved["training_config"]["hidden_units"] == [16]
    assert set(saved["files"]) == {CONFIG_FILE, WEIGHTS_FILE}
    # Nothing but the model folder: the temporary folder was renamed, not copied.
    assert [p.name for p in (tmp_path / "joint-dual").iterdir() if p.name.startswith(".")] == []


def test_versions_latest_and_listing(tmp_path: Path) -> None:
    first, second = dual_model(seed=0), dual_model(seed=1)
    old = save_joint_model(tmp_path, "joint", first, metadata(first), now=NOW)
    new = save_joint_model(
        tmp_path, "joint", second, metadata(second), now=NOW + dt.timedelta(hours=1)
    )
    other = save_joint_model(tmp_path, "w2vv", w2vv_model(), metadata(w2vv_model()), now=NOW)
    (tmp_path / "joint" / ".tmp-abandoned").mkdir()  # a crashed save: never listed
    listed = [(m.name, m.version, m.kind, m.latest) for m in list_models(tmp_path)]
    assert listed == [
        ("joint", old.name, KIND_DUAL, False),
        ("joint", new.name, KIND_DUAL, True),
        ("w2vv", other.name, KIND_W2VV, True),
    ]
    assert old.name < new.name  # versions sort by time
    text = np.ones((1, 12))
    np.testing.assert_array_equal(
        load_joint_model(tmp_path, "joint", old.name).embed_text_features(text),
        first.embed_text_features(text),
    )
    assert resolve_version(tmp_path, "joint") == new
    # Saving identical content in the same second is idempotent.
    again = save_joint_model(tmp_path, "w2vv", w2vv_model(), metadata(w2vv_model()), now=NOW)
    assert again == other and len(list_models(tmp_path)) == 3
    assert list_models(tmp_path / "nothing") == []


def test_metadata_must_name_the_models_encoders(tmp_path: Path) -> None:
    model = dual_model()
    wrong = metadata(model) | {"text_encoder": {"encoder_id": "glove/v1"}}
    with pytest.raises(ValueError, match="'glove/v1' but the model was built for 'minilm/v1'"):
        save_joint_model(tmp_path, "joint", model, wrong)
    with pytest.raises(ValueError, match="image_encoder"):
        save_joint_model(tmp_path, "joint", model, {"text_encoder": {"encoder_id": TEXT_ID}})
    with pytest.raises(ValueError, match="model name"):
        save_joint_model(tmp_path, "../escape", model, metadata(model))
    assert list_models(tmp_path) == []


def test_loading_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    model = dual_model()
    path = save_joint_model(tmp_path, "joint", model, metadata(model), now=NOW)
    with pytest.raises(FileNotFoundError, match=r"no model 'missing' .*\['joint'\]"):
        load_joint_model(tmp_path, "missing")
    with pytest.raises(FileNotFoundError, match="has no version"):
        load_joint_model(tmp_path, "joint", "20200101T000000Z-00000000")
    with pytest.raises(ValueError, match="not a model version"):
        load_joint_model(tmp_path, "joint", "../../etc")

    # Another trainer's model in the same directory is listed but is not a joint model.
    save_model_version(
        tmp_path,
        "captioner",
        {"kind": "captioner"},
        {},
        lambda folder: (folder / "weights.weights.h5").write_bytes(b"h5"),
    )
    assert [m.kind for m in list_models(tmp_path) if m.name == "captioner"] == ["captioner"]
    with pytest.raises(ValueError, match="'captioner' model, not a joint"):
        load_joint_model(tmp_path, "captioner")

    weights = path / WEIGHTS_FILE
    corrupted = bytearray(weights.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF  # one flipped byte somewhere in the arrays
    weights.write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_joint_model(tmp_path, "joint")


def test_joint_model_checks_its_shapes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="expects 16 inputs, gets 12"):
        JointModel(
            KIND_DUAL,
            "t",
            "i",
            12,
            20,
            (layer(rng, 16, 8, "relu"),),
            (layer(rng, 20, 8, "linear"),),
        )
    with pytest.raises(ValueError, match="text side gives 8-d vectors, the image side 20"):
        JointModel(KIND_W2VV, "t", "i", 12, 20, (layer(rng, 12, 8, "relu"),))
    with pytest.raises(ValueError, match="unknown activation"):
        DenseLayer(np.zeros((2, 2)), np.zeros(2), "swish")
    with pytest.raises(ValueError, match=r"shape \(N, 12\)"):
        dual_model().embed_text_features(np.zeros((3, 20)))
