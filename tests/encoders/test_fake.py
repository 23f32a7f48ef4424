"""FakeImageEncoder: the cheap stand-in keeps the properties the pipeline and serving rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.base import EncoderSpec, check_pixel_batch
from encoders.fake import FakeImageEncoder, _block_means

SIZE = 64


def _photo_pixels(path: Path, size: int = SIZE) -> np.ndarray:
    # A plain squash-resize is enough here; the pipeline's own resizing is tested elsewhere.
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def _random_images(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def encoder() -> FakeImageEncoder:
    return FakeImageEncoder(EncoderSpec(name="fake", weights="none", image_size=SIZE))


def test_shape_dtype_unit_norm_and_id(encoder: FakeImageEncoder) -> None:
    vectors = encoder.encode(_random_images(5))

    assert vectors.shape == (5, 64) == (5, encoder.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert encoder.encoder_id == "fake/v1"
    assert encoder.input_size == (SIZE, SIZE)


def test_uniform_images_still_get_unit_vectors(encoder: FakeImageEncoder) -> None:
    # Mid-grey is the value the centring is closest to cancelling out.
    greys = np.stack([np.full((SIZE, SIZE, 3), value, np.uint8) for value in (0, 127, 128, 255)])

    np.testing.assert_allclose(np.linalg.norm(encoder.encode(greys), axis=1), 1.0, atol=1e-6)


def test_deterministic_across_instances_and_batch_sizes(encoder: FakeImageEncoder) -> None:
    images = _random_images(6, seed=3)
    other = FakeImageEncoder(EncoderSpec(name="fake", weights="none", image_size=SIZE))

    batch = encoder.encode(images)
    np.testing.assert_array_equal(batch, other.encode(images))
    np.testing.assert_allclose(encoder.encode(images[2:3])[0], batch[2], atol=1e-6)
    np.testing.assert_array_equal(
        encoder.encode(images[[4, 4]])[0], encoder.encode(images[[4, 4]])[1]
    )


def test_similar_images_are_closer_than_different_photos(
    encoder: FakeImageEncoder, coco_photos: list[Path]
) -> None:
    photos = np.stack([_photo_pixels(path) for path in coco_photos[:4]])
    brighter = np.clip(photos.astype(np.int16) + 12, 0, 255).astype(np.uint8)

    originals = encoder.encode(photos)
    brightened = encoder.encode(brighter)

    for index in range(len(photos)):
        near = float(originals[index] @ brightened[index])
        others = [float(originals[index] @ originals[j]) for j in range(len(photos)) if j != index]
        assert near > 0.95
        assert near > max(others), (index, near, others)


def test_block_means_match_reshape_mean_when_the_grid_divides() -> None:
    images = _random_images(2, size=16, seed=1)

    expected = images.reshape(2, 8, 2, 8, 2, 3).astype(np.float64).mean(axis=(2, 4))

    np.testing.assert_allclose(_block_means(images, 8), expected)


def test_sizes_the_grid_does_not_divide_are_accepted() -> None:
    encoder = FakeImageEncoder(EncoderSpec(name="fake", image_size=30))

    vectors = encoder.encode(_random_images(2, size=30))

    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((2, 32, 32, 3), np.uint8), r"shape \(N, 64, 64, 3\)"),
        (np.zeros((SIZE, SIZE, 3), np.uint8), r"shape \(N, 64, 64, 3\)"),
        (np.zeros((1, SIZE, SIZE, 4), np.uint8), r"shape \(N, 64, 64, 3\)"),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), "uint8"),
    ],
)
def test_rejects_pixels_of_the_wrong_shape_or_dtype(
    encoder: FakeImageEncoder, pixels: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encoder.encode(pixels)


def test_an_empty_batch_gives_no_vectors(encoder: FakeImageEncoder) -> None:
    empty = np.zeros((0, SIZE, SIZE, 3), np.uint8)

    assert check_pixel_batch(empty, (SIZE, SIZE)) is empty
    assert encoder.encode(empty).shape == (0, 64)


def test_spec_must_name_the_fake_encoder() -> None:
    with pytest.raises(ValueError, match="fake"):
        FakeImageEncoder(EncoderSpec(name="mobilenet_v2"))
