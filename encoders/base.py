"""What every image encoder provides, and the spec that names one.

An ``EncoderSpec`` is small and picklable: it travels to Beam workers and into index manifests,
and ``encoders.registry.create_image_encoder(spec)`` turns it into the live model wherever the
model is needed (once per worker, once per serving process).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Names an image encoder and where its weights come from.

    ``weights`` is ``"auto"`` (the assets folder, else an error saying what to provide),
    ``"imagenet"`` (Keras downloads them), ``"none"`` (seeded random init, for tests) or a path
    or gs:// uri of a Keras ``.weights.h5`` file.
    """

    name: str = "mobilenet_v2"
    weights: str = "auto"
    image_size: int = 224

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderSpec:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def __str__(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


class ImageEncoder(abc.ABC):
    """Maps a batch of RGB images to L2-normalised float32 embeddings.

    ``encode`` takes uint8 pixels already at ``input_size`` (decoding and resizing live in
    ``encoders.imaging`` so the pipeline and the query path share them); model-specific
    preprocessing happens inside ``encode``.
    """

    name: str
    version: str  # changes whenever the vectors would change (weights, preprocessing)
    dim: int
    input_size: tuple[int, int]  # (height, width)

    @property
    def encoder_id(self) -> str:
        """``name/version``: stored in every table row and manifest."""
        return f"{self.name}/{self.version}"

    @abc.abstractmethod
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 -> ``(N, dim)`` float32 with unit L2 norm per row."""


def check_pixel_batch(pixels: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Return ``pixels`` if it is an ``(N, H, W, 3)`` uint8 batch at ``input_size``, else raise.

    Every encoder calls this first, so a wrong shape or dtype fails with the same ValueError
    (which a Beam dead-letter output records) instead of a backend-specific error or, for a
    float array, silently wrong preprocessing.
    """
    pixels = np.asarray(pixels)
    height, width = input_size
    if pixels.ndim != 4 or pixels.shape[1:] != (height, width, 3):
        raise ValueError(f"expected pixels of shape (N, {height}, {width}, 3), got {pixels.shape}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """The one normalisation used for every stored and query vector (rows to unit length)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


class TextEncoder(abc.ABC):
    """Maps a batch of strings to L2-normalised float32 sentence embeddings.

    Tokenisation happens inside (``tensorflow_text``), so the same object serves training,
    the index job and queries. ``version`` changes whenever the vectors would (vocabulary,
    weights, weighting scheme).
    """

    name: str
    version: str
    dim: int

    @property
    def encoder_id(self) -> str:
        """``name/version``: recorded with every model trained on these vectors."""
        return f"{self.name}/{self.version}"

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32 with unit L2 norm per row (zero rows for
        texts with no known token)."""
