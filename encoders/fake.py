"""A deterministic, TensorFlow-free image encoder for tests and dry runs.

It keeps the properties the rest of the system relies on (fixed dim, unit vectors, identical
pixels -> identical vectors, similar images -> nearby vectors) at the cost of a few NumPy
operations, so pipeline and serving tests run without loading a model.
"""

from __future__ import annotations

import numpy as np

from encoders.base import EncoderSpec, ImageEncoder, check_pixel_batch, l2_normalize

FAKE_ENCODER_NAME = "fake"

# The image is averaged down to a GRID x GRID x 3 thumbnail before projection.
GRID = 8
_PROJECTION_SEED = 0


def _block_means(pixels: np.ndarray, grid: int) -> np.ndarray:
    """``(N, H, W, 3)`` -> ``(N, grid, grid, 3)`` means over a near-even grid of blocks."""
    _, height, width, _ = pixels.shape
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    # float64 sums of uint8 are exact, so the result does not depend on summation order.
    sums = np.add.reduceat(pixels.astype(np.float64), rows[:-1], axis=1)
    sums = np.add.reduceat(sums, cols[:-1], axis=2)
    counts = np.outer(np.diff(rows), np.diff(cols))[None, :, :, None]
    return sums / counts


class FakeImageEncoder(ImageEncoder):
    """Average-pool to an 8x8x3 thumbnail, centre it, project with a fixed seeded matrix.

    The centring is a constant (0.5 of full scale), not the image's own mean, so brightness still
    counts; and since 127.5 is no uint8 value, no thumbnail is all zeros and every vector has unit
    length.
    """

    name = FAKE_ENCODER_NAME
    version = "v1"
    dim = 64

    def __init__(self, spec: EncoderSpec | None = None) -> None:
        spec = spec or EncoderSpec(name=FAKE_ENCODER_NAME, weights="none")
        if spec.name != FAKE_ENCODER_NAME:
            raise ValueError(
                f"FakeImageEncoder needs spec.name={FAKE_ENCODER_NAME!r}, got {spec.name!r}"
            )
        if spec.image_size < GRID:
            raise ValueError(f"image_size must be at least {GRID}, got {spec.image_size}")
        self.spec = spec
        self.input_size = (spec.image_size, spec.image_size)
        features = GRID * GRID * 3
        rng = np.random.default_rng(_PROJECTION_SEED)
        # Scaled Gaussian projection: nearly preserves angles between thumbnails.
        self._projection = rng.standard_normal((features, self.dim)) / np.sqrt(features)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 at ``input_size`` -> ``(N, 64)`` float32 unit vectors."""
        pixels = check_pixel_batch(pixels, self.input_size)
        thumbnails = _block_means(pixels, GRID) / 255.0 - 0.5
        projected = thumbnails.reshape(len(pixels), GRID * GRID * 3) @ self._projection
        return l2_normalize(projected)

    def __repr__(self) -> str:
        return f"FakeImageEncoder({self.encoder_id!r}, input_size={self.input_size})"
