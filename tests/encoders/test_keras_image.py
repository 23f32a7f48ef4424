"""KerasImageEncoder on real MobileNetV2 weights and real COCO photos, plus the other backbones.

The MobileNetV2 encoder is built once for the module; the other backbones are built with random
weights at a small input size so the whole file stays within a few seconds of model time.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.base import EncoderSpec
from encoders.keras_backbones import resolve_weights
from encoders.keras_image import CHUNK_SIZE, KerasImageEncoder, build_preprocessing
from encoders.registry import create_image_encoder
from imgsearch import settings

pytestmark = pytest.mark.slow

ZEBRA_PHOTO = "000000244592.jpg"  # COCO val2017: three zebras filling the frame


def _photo_pixels(path: Path, size: int = 224) -> np.ndarray:
    # A plain squash-resize is enough here; the pipeline's own resizing is tested elsewhere.
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


@pytest.fixture(scope="module")
def mobilenet(mobilenet_weights: Path) -> KerasImageEncoder:
    return KerasImageEncoder(EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights)))


@pytest.fixture(scope="module")
def photos(coco_photos: list[Path]) -> np.ndarray:
    """Five different real photos, the zebras last, as a (5, 224, 224, 3) uint8 batch."""
    zebra = [path for path in coco_photos if path.name == ZEBRA_PHOTO]
    if not zebra:
        pytest.skip(f"{ZEBRA_PHOTO} missing from coco-mini")
    others = [path for path in coco_photos if path.name != ZEBRA_PHOTO][:4]
    return np.stack([_photo_pixels(path) for path in [*others, *zebra]])


def test_encodes_real_photos_to_unit_vectors(
    mobilenet: KerasImageEncoder, photos: np.ndarray
) -> None:
    vectors = mobilenet.encode(photos)

    assert mobilenet.dim == 1280
    assert mobilenet.input_size == (224, 224)
    assert vectors.shape == (5, 1280)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Five different photos: no two vectors are the same.
    similarities = vectors @ vectors.T
    assert np.all(similarities[~np.eye(5, dtype=bool)] < 0.95)


def test_deterministic_and_independent_of_batch_size(
    mobilenet: KerasImageEncoder, photos: np.ndarray
) -> None:
    batch = mobilenet.encode(photos)

    np.testing.assert_array_equal(mobilenet.encode(photos), batch)
    np.testing.assert_allclose(mobilenet.encode(photos[2:3])[0], batch[2], atol=1e-5)
    # More than one chunk: rows must come back in input order across the chunk boundary.
    many = np.concatenate([photos] * 7)[: CHUNK_SIZE + 2]
    np.testing.assert_allclose(mobilenet.encode(many), batch[np.arange(len(many)) % 5], atol=1e-5)


def test_near_duplicate_is_closer_than_a_different_photo(
    mobilenet: KerasImageEncoder, photos: np.ndarray
) -> None:
    brighter = np.clip(photos.astype(np.int16) + 10, 0, 255).astype(np.uint8)

    originals = mobilenet.encode(photos)
    brightened = mobilenet.encode(brighter)

    for index in range(len(photos)):
        near = float(originals[index] @ brightened[index])
        others = originals[np.arange(len(photos)) != index] @ originals[index]
        assert near > 0.9
        assert near > float(others.max()), (index, near, others)


def test_pooled_features_agree_with_the_imagenet_head(
    mobilenet: KerasImageEncoder, photos: np.ndarray, assets_dir: Path
) -> None:
    head_path = assets_dir / "weights" / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
    if not head_path.is_file():
        pytest.skip(f"missing {head_path}")
    head = np.load(head_path)
    zebra = photos[-1:]

    features = mobilenet.pooled_features(zebra)
    logits = features @ head["kernel"] + head["bias"]

    assert str(head["labels"][int(np.argmax(logits[0]))]) == "zebra"
    # The embedding is exactly these features, L2-normalised, inside the same graph.
    np.testing.assert_allclose(
        mobilenet.encode(zebra)[0], features[0] / np.linalg.norm(features[0]), atol=1e-6
    )


def test_exported_saved_model_gives_the_same_vectors(
    mobilenet: KerasImageEncoder, photos: np.ndarray, tmp_path: Path
) -> None:
    import tensorflow as tf

    mobilenet.model.export(str(tmp_path / "saved_model"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))

    # Raw uint8 pixels in: the preprocessing travelled inside the export.
    np.testing.assert_allclose(
        served.serve(tf.constant(photos[:2])).numpy(), mobilenet.encode(photos[:2]), atol=1e-6
    )


def test_version_names_the_weights_file_hash(
    mobilenet: KerasImageEncoder, mobilenet_weights: Path
) -> None:
    digest = hashlib.sha256(mobilenet_weights.read_bytes()).hexdigest()

    assert mobilenet.version == f"v1-{digest[:12]}-224"
    assert mobilenet.encoder_id == f"mobilenet_v2/v1-{digest[:12]}-224"


def test_auto_finds_the_shared_weights(
    mobilenet: KerasImageEncoder, mobilenet_weights: Path
) -> None:
    resolved = resolve_weights("mobilenet_v2", "auto")

    assert resolved.keras_weights is not None
    assert Path(resolved.keras_weights).resolve() == mobilenet_weights.resolve()
    assert mobilenet.version == f"v1-{resolved.tag}-224"


def test_auto_without_assets_says_what_to_provide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.ASSETS_ENV, str(tmp_path))

    with pytest.raises(FileNotFoundError) as raised:
        KerasImageEncoder(EncoderSpec(name="mobilenet_v2", weights="auto"))

    message = str(raised.value)
    assert str(tmp_path / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5") in message
    assert settings.ASSETS_ENV in message
    assert '"imagenet"' in message and '"none"' in message


def test_auto_for_an_architecture_without_a_known_file_raises() -> None:
    # Goes through the registry, so this also checks the name reaches the Keras encoder.
    with pytest.raises(FileNotFoundError, match="resnet50"):
        create_image_encoder(EncoderSpec(name="resnet50", weights="auto"))


def test_bad_weights_paths_are_rejected_before_building(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights("mobilenet_v2", str(tmp_path / "missing.weights.h5"))
    wrong_suffix = tmp_path / "model.h5"
    wrong_suffix.write_bytes(b"not keras")
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        resolve_weights("mobilenet_v2", str(wrong_suffix))
    with pytest.raises(
        ValueError, match="known: efficientnet_b0, mobilenet_v2, mobilenet_v2_flip, resnet50"
    ):
        resolve_weights("vgg16", "none")


def test_imagenet_and_none_resolve_without_files() -> None:
    imagenet = resolve_weights("resnet50", "imagenet")
    random_init = resolve_weights("resnet50", "none")

    assert (imagenet.keras_weights, imagenet.tag) == ("imagenet", "keras-imagenet")
    assert (random_init.keras_weights, random_init.tag) == (None, "random-seed0")


def test_rejects_pixels_of_the_wrong_shape_or_dtype(mobilenet: KerasImageEncoder) -> None:
    with pytest.raises(ValueError, match=r"\(N, 224, 224, 3\)"):
        mobilenet.encode(np.zeros((1, 160, 160, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mobilenet.encode(np.zeros((1, 224, 224, 3), np.float32))
    assert mobilenet.encode(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("mobilenet_v2", "mobilenet_v2"),
        ("efficientnet_b0", "efficientnet"),
        ("resnet50", "resnet50"),
    ],
)
def test_preprocessing_in_the_graph_matches_keras_preprocess_input(
    name: str, reference: str
) -> None:
    import keras

    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    preprocess_input = getattr(keras.applications, reference).preprocess_input

    expected = np.asarray(preprocess_input(pixels.astype(np.float32)))
    inside = np.asarray(build_preprocessing(name, 32)(pixels, training=False))

    np.testing.assert_allclose(inside, expected, atol=1e-4)


@pytest.mark.parametrize(("name", "dim"), [("efficientnet_b0", 1280), ("resnet50", 2048)])
def test_random_init_backbones_are_reproducible(name: str, dim: int) -> None:
    spec = EncoderSpec(name=name, weights="none", image_size=64)
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)

    first = KerasImageEncoder(spec)
    # Another process would start from other global random states: move them on (a fixed
    # reseed could land on the state the first build happened to start from).
    random.random()
    np.random.random()
    python_random_state = random.getstate()
    second = KerasImageEncoder(spec)

    # Seeding the initialisers must not reset the caller's own random stream.
    assert random.getstate() == python_random_state
    assert first.version == second.version == "v1-random-seed0-64"
    vectors = first.encode(pixels)
    assert vectors.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(second.encode(pixels), vectors, atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 1.0 - 1e-6  # the images are told apart


def test_flip_variant_averages_the_photo_and_its_mirror(
    mobilenet: KerasImageEncoder, photos: np.ndarray, mobilenet_weights: Path
) -> None:
    flip = create_image_encoder(
        EncoderSpec(name="mobilenet_v2_flip", weights=str(mobilenet_weights))
    )
    mirrored = np.ascontiguousarray(photos[:, :, ::-1])

    pooled = flip.pooled_features(photos)
    expected = (mobilenet.pooled_features(photos) + mobilenet.pooled_features(mirrored)) / 2
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-4)
    # Mirror-invariant by construction, unlike the plain encoder.
    np.testing.assert_allclose(flip.encode(mirrored), flip.encode(photos), atol=1e-5)
    assert np.abs(mobilenet.encode(mirrored) - mobilenet.encode(photos)).max() > 1e-3
    assert flip.encoder_id.startswith("mobilenet_v2_flip/")
    assert flip.encoder_id != mobilenet.encoder_id
