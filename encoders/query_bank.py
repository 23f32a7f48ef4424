"""Hubness correction for a joint model: a bank of typical queries, and the bias it gives items.

In a high-dimensional joint space a few images ("hubs") are near very many captions and turn
up in the top results of queries they do not match, while others are near almost none. The
query-bank correction (the inverted softmax of Smith et al. 2017, as QB-Norm, Bogolin et al.
CVPR 2022, applies it to cross-modal retrieval) scores a gallery item ``g`` for query ``q`` as

    s(q, g) - strength * T * log mean_b exp(s(b, g) / T)

where ``b`` runs over a bank of training queries: an item that every typical query likes pays
for it. The subtracted term depends on the item only, so it is one number per indexed item,
computed once, and a query's ranking is its plain scores minus that bias; the query side is
untouched (batch and serving paths stay the one text graph).

A ``QueryBank`` holds both directions: ``texts`` (training captions in the model's space)
give the images' bias for text->image search, ``images`` (training photos) give the captions'
bias for image->text. On Flickr8k dev with a frozen-CNN dual encoder, 1,024 bank rows gave
text->image R@1 0.176 -> 0.198 and image->text 0.241 -> 0.251, as good as all 30k captions
With the default recipe's fine-tuned models, text->image R@1 went 0.275 -> 0.289 (``mixed``)
and 0.253 -> 0.284 (``w2vv``); ``benchmarks/results/hubness.md`` has every model and the sweep.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# T and the strength: the middle of a flat region of a frozen-CNN dual model's sweep on Flickr8k
# dev (T 0.01-0.1, strength 0.5-1), left there: for each of the default recipe's three models it
# is within 0.008 text->image R@1 of the sweep's best cell (benchmarks/results/hubness.md).
DEFAULT_TEMPERATURE = 0.05
DEFAULT_STRENGTH = 0.5
# 1,024 rows did as well as 2,048, 4,096 or all 30k captions (frozen-CNN dual model, dev text->
# image R@1 0.198 against 0.196, 0.201 and 0.195; 256 gave 0.183), and
# the bias costs gallery x bank dot products once per loaded index: 13 s per million 1280-d
# rows on 2 cores at 1,024 (benchmarks/results/hubness.md).
DEFAULT_BANK_SIZE = 1024
# Candidates a corrected search takes from the index before re-sorting them by corrected
# score: on Flickr8k dev (frozen-CNN dual model) re-sorting the top 50 already equalled
# correcting all 1,000 images.
RERANK_DEPTH = 100
# Gallery rows scored against the bank at a time: bounds memory to chunk x bank floats.
_CHUNK = 8192


@dataclasses.dataclass(frozen=True, eq=False)
class QueryBank:
    """Unit vectors of training queries in a joint model's space, and the correction's knobs.

    ``texts``: ``(B, dim)`` caption embeddings (the text side); ``images``: ``(B', dim)`` photo
    embeddings (the image side). ``strength`` 0 turns the correction off.
    """

    texts: np.ndarray
    images: np.ndarray
    temperature: float = DEFAULT_TEMPERATURE
    strength: float = DEFAULT_STRENGTH

    def __post_init__(self) -> None:
        for name in ("texts", "images"):
            rows = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if rows.ndim != 2 or len(rows) == 0:
                raise ValueError(f"the query bank's {name} must be a non-empty (B, dim) matrix")
            if not np.isfinite(rows).all():
                raise ValueError(f"the query bank's {name} hold NaN or infinite values")
            object.__setattr__(self, name, rows)
        if self.texts.shape[1] != self.images.shape[1]:
            raise ValueError(
                f"the bank's texts are {self.texts.shape[1]}-d, its images {self.images.shape[1]}-d"
            )
        if self.temperature <= 0 or self.strength < 0:
            raise ValueError("the bank's temperature must be positive and its strength >= 0")

    @property
    def dim(self) -> int:
        return int(self.texts.shape[1])

    def image_bias(self, image_vecs: Any) -> np.ndarray:
        """``(N,)`` bias of each image (unit vectors in the model's space) for text queries."""
        return gallery_bias(image_vecs, self.texts, self.temperature, self.strength)

    def text_bias(self, text_vecs: Any) -> np.ndarray:
        """``(N,)`` bias of each caption (unit vectors in the model's space) for image queries."""
        return gallery_bias(text_vecs, self.images, self.temperature, self.strength)

    def config(self) -> dict[str, Any]:
        return {
            "texts": len(self.texts),
            "images": len(self.images),
            "temperature": self.temperature,
            "strength": self.strength,
        }


def gallery_bias(
    gallery: Any, bank: np.ndarray, temperature: float, strength: float, chunk: int = _CHUNK
) -> np.ndarray:
    """``strength * T * log mean_b exp(bank_b . g / T)`` for each row ``g`` -> ``(N,)`` float32.

    ``gallery`` is a ``(N, dim)`` array or anything with ``map_chunks(fn)`` over its rows (the
    server's stored vectors, int8 included), scored ``chunk`` rows at a time.
    """
    bank = np.asarray(bank, dtype=np.float32)

    def bias(rows: np.ndarray) -> np.ndarray:
        scaled = np.asarray(rows, dtype=np.float32) @ bank.T / np.float32(temperature)
        top = scaled.max(axis=1, keepdims=True)
        mean_exp = np.exp(scaled - top).mean(axis=1)
        return (strength * temperature * (top[:, 0] + np.log(mean_exp))).astype(np.float32)

    if strength == 0:
        return np.zeros(len(gallery), dtype=np.float32)
    if hasattr(gallery, "map_chunks"):
        return np.asarray(gallery.map_chunks(lambda rows: bias(rows)[:, None]))[:, 0]
    gallery = np.asarray(gallery, dtype=np.float32)
    if gallery.ndim != 2 or gallery.shape[1] != bank.shape[1]:
        raise ValueError(f"gallery must be (N, {bank.shape[1]}), got {gallery.shape}")
    parts = [bias(gallery[start : start + chunk]) for start in range(0, len(gallery), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def sample_rows(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of a fixed random sample of ``min(size, count)`` out of ``count``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(size, count), replace=False))
