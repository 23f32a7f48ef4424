"""Rocchio relevance feedback in an embedding space (pure NumPy).

``q' = alpha * q + beta * mean(relevant) - gamma * mean(not_relevant)``, re-normalised
(Rocchio 1971; the defaults are the usual ``alpha=1, beta=0.75, gamma=0.15`` of Manning,
Raghavan & Schuetze, *Introduction to Information Retrieval*, ch. 9). The query may be absent
(feedback from images alone); an empty set of images contributes nothing.
"""

from __future__ import annotations

import numpy as np

from ranking.query_mix import combine

ALPHA = 1.0
BETA = 0.75
GAMMA = 0.15

QUERY, RELEVANT, NOT_RELEVANT = "query", "relevant", "not_relevant"


def rocchio_parts(
    query: np.ndarray | None,
    relevant: np.ndarray,
    not_relevant: np.ndarray,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(labels, part vectors (P, dim), signed weights (P,))`` of the Rocchio sum.

    Parts are ``query`` (``alpha``), ``relevant`` (their mean, ``beta``) and ``not_relevant``
    (their mean, ``-gamma``), each left out when absent, empty or weighted 0, so
    ``ranking.query_mix`` can combine them and explain a hit part by part. ValueError for
    negative or non-finite coefficients, mismatched dimensions, or nothing positive to search
    for (no query and no relevant image).
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    sets = {RELEVANT: relevant, NOT_RELEVANT: not_relevant}
    dims = {np.asarray(v).shape[-1] for v in sets.values() if np.asarray(v).size}
    if query is not None:
        dims.add(np.asarray(query).shape[-1])
    if len(dims) > 1:
        raise ValueError(f"query and feedback vectors have different dimensions: {sorted(dims)}")
    labels, vectors, weights = [], [], []
    if query is not None and alpha > 0:
        labels.append(QUERY)
        vectors.append(np.asarray(query, dtype=np.float64).reshape(-1))
        weights.append(alpha)
    for label, coefficient, sign in ((RELEVANT, beta, 1.0), (NOT_RELEVANT, gamma, -1.0)):
        rows = np.asarray(sets[label], dtype=np.float64)
        if rows.size and coefficient > 0:
            labels.append(label)
            vectors.append(rows.reshape(-1, rows.shape[-1]).mean(axis=0))
            weights.append(sign * coefficient)
    if not any(w > 0 for w in weights):
        raise ValueError("nothing to search for: give a query or at least one relevant image")
    return labels, np.stack(vectors), np.asarray(weights)


def rocchio(
    query: np.ndarray | None,
    relevant: np.ndarray,
    not_relevant: np.ndarray,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> np.ndarray:
    """The refined query: the unit ``(dim,)`` vector of the Rocchio sum (``rocchio_parts``).

    ``relevant`` and ``not_relevant`` are ``(R, dim)`` and ``(S, dim)`` rows (either may have
    no rows); ``query`` a ``(dim,)`` vector or None. ``ranking.query_mix.MixError`` (a
    ValueError) when the parts cancel out.
    """
    _, vectors, weights = rocchio_parts(query, relevant, not_relevant, alpha, beta, gamma)
    return combine(vectors, weights)[0]
