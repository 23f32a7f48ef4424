"""Combining query parts (text terms, images, feedback means) into one search vector (pure NumPy).

A combined query is ``q = sum_i w_i v_i / ||sum_i w_i v_i||`` over part vectors ``v_i`` of one
space (unit vectors for terms and images; a mean of unit vectors for relevance feedback) and
signed weights ``w_i`` (negative: subtract the part). For a unit hit vector ``h`` the score is
``q . h = sum_i w_i (v_i . h) / ||sum_i w_i v_i||``, so each part's contribution
``w_i (v_i . h) / norm`` adds up to the hit's score: what ``contributions`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MixError(ValueError):
    """Parts that cannot be combined (no parts, mismatched shapes, bad weights, a zero sum)."""


def _checked(vectors: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    parts = np.asarray(vectors, dtype=np.float64)
    signed = np.asarray(weights, dtype=np.float64)
    if parts.ndim != 2 or parts.shape[0] == 0:
        raise MixError(f"expected (parts, dim) part vectors, got shape {parts.shape}")
    if signed.shape != (parts.shape[0],):
        raise MixError(f"{parts.shape[0]} part vectors but {signed.size} weights")
    if not (np.isfinite(parts).all() and np.isfinite(signed).all()):
        raise MixError("part vectors and weights must be finite")
    if np.any(signed == 0.0):
        raise MixError("a part with weight 0 adds nothing: leave it out")
    return parts, signed


def combine(vectors: np.ndarray, weights: Sequence[float]) -> tuple[np.ndarray, float]:
    """``(P, dim)`` part vectors and ``P`` signed weights -> ``(unit vector (dim,), norm)``.

    ``norm`` is the length of the weighted sum before re-normalising (``contributions`` needs
    it). MixError when the parts cancel out (a zero sum has no direction to search in).
    """
    parts, signed = _checked(vectors, weights)
    total = signed @ parts
    norm = float(np.linalg.norm(total))
    if norm <= 1e-9 * max(1.0, float(np.abs(signed).sum())):
        raise MixError("the query's parts cancel out: their weighted sum is zero")
    return (total / norm).astype(np.float32), norm


def contributions(
    vectors: np.ndarray, weights: Sequence[float], norm: float, hits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, contributions)``, both ``(H, P)``, of ``(H, dim)`` hit vectors.

    ``similarities[h, i] = v_i . hit_h`` (a cosine for unit parts; for a mean of unit vectors,
    the mean of their cosines) and ``contributions[h, i] = w_i * similarities[h, i] / norm``;
    a row of contributions sums to the hit's score under ``combine``'s vector.
    """
    parts, signed = _checked(vectors, weights)
    hit_vectors = np.asarray(hits, dtype=np.float64).reshape(-1, parts.shape[1])
    similarities = hit_vectors @ parts.T
    return similarities, similarities * signed / norm
