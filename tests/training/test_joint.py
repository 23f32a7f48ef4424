"""The joint-embedding trainers on small seeded synthetic data, where the answer is known.

Each caption's text features are a fixed random linear map of its image's features plus noise,
so a model that learns anything reaches high recall on held-out images, while the same training
on shuffled pairs must stay near chance (the check that the recall test can fail). Models are
trained once per module; the whole file takes a few seconds of TensorFlow on CPU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from encoders.base import l2_normalize
from encoders.joint import KIND_DUAL, KIND_W2VV
from ranking.metrics import retrieval_metrics, text_to_image_ranks
from training.joint import train_dual_encoder, train_w2vv
from training.joint_batches import epoch_order, split_heldout
from training.joint_config import DualEncoderConfig, W2VVConfig
from training.joint_export import export_ensemble
from training.joint_fit import TrainingHistory
from training.joint_losses import contrastive_losses
from training.joint_model import TrainedJointModel

IMAGE_DIM, TEXT_DIM = 48, 24
TRAIN_IMAGES, TEST_IMAGES, CAPTIONS_PER_IMAGE = 400, 100, 3

W2VV_CONFIG = W2VVConfig(
    hidden_units=(128,),
    dropout=0.1,
    loss="cosine",
    epochs=12,
    batch_size=64,
    learning_rate=3e-3,
    weight_decay=1e-4,
    patience=4,
)
DUAL_CONFIG = DualEncoderConfig(
    dim=32,
    text_hidden_units=(64,),
    image_hidden_units=(),
    dropout=0.1,
    epochs=12,
    batch_size=64,
    learning_rate=3e-3,
    weight_decay=1e-4,
    patience=4,
)


@dataclasses.dataclass
class Synthetic:
    image_feats: np.ndarray  # (TRAIN_IMAGES + TEST_IMAGES, IMAGE_DIM) unit rows
    text_feats: np.ndarray  # (images * CAPTIONS_PER_IMAGE, TEXT_DIM) unit rows
    train_pairs: np.ndarray  # [text_row, image_row] of the training images
    test_pairs: np.ndarray  # ... of the test images, never seen in training


def make_synthetic(seed: int = 0, noise: float = 0.6) -> Synthetic:
    rng = np.random.default_rng(seed)
    images = TRAIN_IMAGES + TEST_IMAGES
    image_feats = l2_normalize(rng.standard_normal((images, IMAGE_DIM)))
    mixing = rng.standard_normal((IMAGE_DIM, TEXT_DIM)) / np.sqrt(IMAGE_DIM)
    image_rows = np.repeat(np.arange(images), CAPTIONS_PER_IMAGE)
    clean = image_feats[image_rows] @ mixing
    text_feats = l2_normalize(clean + noise * rng.standard_normal(clean.shape) / np.sqrt(TEXT_DIM))
    pairs = np.stack([np.arange(len(image_rows)), image_rows], axis=1)
    is_train = image_rows < TRAIN_IMAGES
    return Synthetic(image_feats, text_feats, pairs[is_train], pairs[~is_train])


def test_recall(model: TrainedJointModel, data: Synthetic) -> dict[str, float]:
    """Text-to-image retrieval among the 100 test images (chance R@5 = 0.05)."""
    images, index = np.unique(data.test_pairs[:, 1], return_inverse=True)
    queries = model.embed_text_features(data.text_feats[data.test_pairs[:, 0]])
    gallery = model.embed_image_features(data.image_feats[images])
    return retrieval_metrics(text_to_image_ranks(queries, gallery, index))


test_recall.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def data() -> Synthetic:
    return make_synthetic()


@pytest.fixture(scope="module")
def w2vv(data: Synthetic) -> tuple[TrainedJointModel, TrainingHistory]:
    return train_w2vv(data.text_feats, data.image_feats, data.train_pairs, W2VV_CONFIG)


@pytest.fixture(scope="module")
def dual(data: Synthetic) -> tuple[TrainedJointModel, TrainingHistory]:
    return train_dual_encoder(data.text_feats, data.image_feats, data.train_pairs, DUAL_CONFIG)


def test_w2vv_learns_the_mapping(
    w2vv: tuple[TrainedJointModel, TrainingHistory], data: Synthetic
) -> None:
    model, history = w2vv
    assert model.kind == KIND_W2VV and model.image_tower is None
    metrics = test_recall(model, data)
    assert metrics["R@5"] > 0.8, metrics
    assert history.heldout_images == round(0.05 * TRAIN_IMAGES)
    assert history.train_pairs + history.heldout_pairs == len(data.train_pairs)
    assert 1 <= history.best_epoch <= len(history.epochs) <= W2VV_CONFIG.epochs
    assert history.best_heldout["R@5"] == history.epochs[history.best_epoch - 1]["R@5"]


@pytest.mark.parametrize("loss", ["mse", "infonce"])
def test_other_w2vv_losses_learn_too(loss: str, data: Synthetic) -> None:
    config = dataclasses.replace(W2VV_CONFIG, loss=loss, epochs=8)
    model, _ = train_w2vv(data.text_feats, data.image_feats, data.train_pairs, config)
    assert test_recall(model, data)["R@5"] > 0.8


def test_dual_encoder_learns_the_mapping(
    dual: tuple[TrainedJointModel, TrainingHistory], data: Synthetic
) -> None:
    model, history = dual
    assert model.kind == KIND_DUAL
    metrics = test_recall(model, data)
    assert metrics["R@5"] > 0.8, metrics
    # The temperature is learnt, and stays within its clip.
    temperatures = [epoch["temperature"] for epoch in history.epochs]
    assert all(DUAL_CONFIG.min_temperature <= t <= 1.0 for t in temperatures)
    # The model keeps the best epoch's weights, temperature included.
    best_temperature = temperatures[history.best_epoch - 1]
    assert model.logit_scale == pytest.approx(1 / best_temperature, rel=1e-5)


def test_shuffled_pairs_stay_near_chance(data: Synthetic) -> None:
    rng = np.random.default_rng(5)
    shuffled = data.train_pairs.copy()
    shuffled[:, 1] = rng.permutation(shuffled[:, 1])
    config = dataclasses.replace(DUAL_CONFIG, epochs=4, heldout_fraction=0.0)
    model, history = train_dual_encoder(data.text_feats, data.image_feats, shuffled, config)
    assert history.best_epoch == 4 and history.heldout_pairs == 0
    assert test_recall(model, data)["R@5"] < 0.2


def test_vse_hinge_loss_trains_too(data: Synthetic) -> None:
    config = dataclasses.replace(
        DUAL_CONFIG, loss="infonce+vse++", epochs=6, learn_temperature=False
    )
    model, _ = train_dual_encoder(data.text_feats, data.image_feats, data.train_pairs, config)
    assert model.logit_scale == pytest.approx(1 / config.temperature, rel=1e-5)
    assert test_recall(model, data)["R@5"] > 0.7


@pytest.mark.parametrize("fixture", ["w2vv", "dual"])
def test_numpy_inference_equals_keras(
    fixture: str, request: pytest.FixtureRequest, data: Synthetic
) -> None:
    model, _ = request.getfixturevalue(fixture)
    exported = model.to_joint_model("text/v1", "image/v1")
    assert (exported.text_dim, exported.image_dim) == (TEXT_DIM, IMAGE_DIM)
    assert exported.dim == (IMAGE_DIM if fixture == "w2vv" else DUAL_CONFIG.dim)
    np.testing.assert_allclose(
        exported.embed_text_features(data.text_feats),
        model.embed_text_features(data.text_feats),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        exported.embed_image_features(data.image_feats),
        model.embed_image_features(data.image_feats),
        atol=1e-5,
    )


def test_deeper_towers_export_too(data: Synthetic) -> None:
    config = dataclasses.replace(W2VV_CONFIG, hidden_units=(32, 16), activation="tanh", epochs=1)
    model, _ = train_w2vv(data.text_feats, data.image_feats, data.train_pairs, config)
    exported = model.to_joint_model("t", "i")
    assert [layer.activation for layer in exported.text_layers] == ["tanh", "tanh", "linear"]
    np.testing.assert_allclose(
        exported.embed_text_features(data.text_feats),
        model.embed_text_features(data.text_feats),
        atol=1e-5,
    )


def test_same_seed_same_model(data: Synthetic) -> None:
    config = dataclasses.replace(DUAL_CONFIG, epochs=2)
    first, _ = train_dual_encoder(data.text_feats, data.image_feats, data.train_pairs, config)
    second, _ = train_dual_encoder(data.text_feats, data.image_feats, data.train_pairs, config)
    other, _ = train_dual_encoder(
        data.text_feats, data.image_feats, data.train_pairs, dataclasses.replace(config, seed=1)
    )
    a, b, c = (m.to_joint_model("t", "i").weights() for m in (first, second, other))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["text_tower.0.kernel"], c["text_tower.0.kernel"])


def test_epoch_order_spreads_each_images_captions() -> None:
    rng = np.random.default_rng(0)
    # 50 images with 1 to 5 captions each, listed image by image as a dataset would.
    image_rows = np.repeat(np.arange(50), rng.integers(1, 6, size=50))
    order = epoch_order(image_rows, rng)
    assert sorted(order.tolist()) == list(range(len(image_rows)))
    # The first 50 positions are round 0: every image exactly once.
    assert sorted(image_rows[order[:50]].tolist()) == list(range(50))
    batch = 32
    for start in range(0, len(order), batch):
        images = image_rows[order[start : start + batch]]
        repeats = len(images) - len(np.unique(images))
        assert repeats <= 5  # only where a batch straddles two rounds


def test_split_heldout_is_by_image() -> None:
    pairs = np.stack([np.arange(300), np.repeat(np.arange(100), 3)], axis=1)
    train, held = split_heldout(pairs, 0.1, seed=3)
    assert len(np.unique(held[:, 1])) == 10 and len(held) == 30
    assert not set(train[:, 1]) & set(held[:, 1])
    again_train, _ = split_heldout(pairs, 0.1, seed=3)
    np.testing.assert_array_equal(train, again_train)
    with pytest.raises(ValueError, match="leaves none"):
        split_heldout(pairs[:3], 0.9, seed=0)


def _reference_infonce(similarity: np.ndarray, image_rows: np.ndarray, scale: float) -> float:
    """Symmetric InfoNCE where a same-image off-diagonal pair is neither positive nor negative."""
    n = len(similarity)
    losses = []
    for matrix in (similarity, similarity.T):
        for i in range(n):
            keep = [j for j in range(n) if j == i or image_rows[j] != image_rows[i]]
            logits = scale * matrix[i, keep]
            losses.append(np.log(np.exp(logits).sum()) - scale * matrix[i, i])
    return float(np.mean(losses))


def test_contrastive_loss_masks_captions_of_the_same_image() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    text = l2_normalize(rng.standard_normal((5, 8)))
    image = l2_normalize(rng.standard_normal((5, 8)))
    image_rows = np.array([7, 7, 3, 9, 3])  # rows 0/1 and 2/4 caption the same image
    image[1], image[4] = image[0], image[2]
    batch = (tf.constant(text), tf.constant(image), tf.constant(image_rows))
    got = contrastive_losses(*batch, tf.constant(10.0), "infonce")
    expected = _reference_infonce(text @ image.T, image_rows, 10.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)

    # Max violation: with a huge margin, every row's hardest *true* negative sets the loss.
    got = float(contrastive_losses(*batch, tf.constant(1.0), "vse++", margin=10.0))
    similarity = text @ image.T
    negative = image_rows[:, None] != image_rows[None, :]
    positive = np.diag(similarity)
    per_text = np.where(negative, 10.0 + similarity - positive[:, None], 0).max(axis=1)
    per_image = np.where(negative, 10.0 + similarity - positive[None, :], 0).max(axis=0)
    assert got == pytest.approx(float(np.mean(per_text + per_image)), rel=1e-5)


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (W2VVConfig, {"loss": "hinge"}),
        (W2VVConfig, {"dropout": 1.0}),
        (W2VVConfig, {"epochs": 0}),
        (DualEncoderConfig, {"heldout_fraction": 1.0}),
        (DualEncoderConfig, {"temperature": 0.001}),
        (DualEncoderConfig, {"activation": "softmax"}),
    ],
)
def test_configs_reject_bad_values(factory: type, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        factory(**kwargs)


def test_trainers_reject_bad_inputs(data: Synthetic) -> None:
    with pytest.raises(ValueError, match="image rows outside"):
        train_w2vv(data.text_feats, data.image_feats[:10], data.train_pairs, W2VV_CONFIG)
    bad = data.text_feats.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_dual_encoder(bad, data.image_feats, data.train_pairs, DUAL_CONFIG)


@pytest.mark.parametrize("fixture", ["w2vv", "dual"])
def test_ensemble_of_seeds_is_one_model_that_averages_its_members(
    fixture: str, request: pytest.FixtureRequest, data: Synthetic
) -> None:
    first, _ = request.getfixturevalue(fixture)
    config = dataclasses.replace(first.config, seed=7)
    trainer = train_w2vv if fixture == "w2vv" else train_dual_encoder
    second, _ = trainer(data.text_feats, data.image_feats, data.train_pairs, config)

    merged = export_ensemble([first, second], data.text_feats, data.image_feats, "t", "i")

    assert merged.kind == first.kind and (merged.text_encoder_id, merged.image_encoder_id) == (
        "t",
        "i",
    )
    # The text side of a w2vv ensemble lives in the image space, like its members; a dual
    # ensemble's space is the members' spaces side by side.
    assert merged.dim == (IMAGE_DIM if fixture == "w2vv" else 2 * DUAL_CONFIG.dim)
    # Scored against the members: the merged cosine is (close to) their mean cosine. Exact
    # when each member's raw vectors have the length its scale assumes; here within 0.05.
    text, images = data.text_feats[:50], data.image_feats[:60]
    merged_scores = merged.embed_text_features(text) @ merged.embed_image_features(images).T
    member_scores = np.mean(
        [m.embed_text_features(text) @ m.embed_image_features(images).T for m in (first, second)],
        axis=0,
    )
    assert np.corrcoef(merged_scores.ravel(), member_scores.ravel())[0, 1] > 0.99
    recall = retrieval_metrics(
        text_to_image_ranks(
            merged.embed_text_features(data.text_feats[data.test_pairs[:, 0]]),
            merged.embed_image_features(data.image_feats[np.unique(data.test_pairs[:, 1])]),
            np.unique(data.test_pairs[:, 1], return_inverse=True)[1],
        )
    )
    assert recall["R@5"] >= test_recall(first, data)["R@5"] - 0.05
    # A single member exports unchanged.
    alone = export_ensemble([first], data.text_feats, data.image_feats, "t", "i")
    np.testing.assert_array_equal(
        alone.text_layers[0].kernel, first.to_joint_model("t", "i").text_layers[0].kernel
    )
