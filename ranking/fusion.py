"""Fusing text->image rankings of several representations (joint embedding, captions, tags).

Pure NumPy on ``(Q, N)`` score matrices (queries x images, higher is better):

* ``reciprocal_rank_fusion``: Cormack, Clarke & Buettcher (2009), sum of ``w / (k + rank)``;
  needs no score calibration, so it fuses BM25 scores and cosines as they are.
* ``weighted_fusion``: a weighted sum of per-query standardised scores (z-scores), with weights
  fitted on a development split by ``fit_weights`` (``imgsearch train fusion``).

Ties (BM25 or Jaccard give many zeros) share their average rank, so fusion never breaks a tie
by image order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

RRF_K = 60.0  # the constant of the RRF paper: damps the weight of the very top ranks

DEFAULT_GRID = (0.0, 0.25, 0.5, 1.0, 2.0)


def rank_matrix(scores: np.ndarray) -> np.ndarray:
    """Per-row 1-based ranks, best score first; tied scores share their average rank."""
    return rankdata(-np.asarray(scores, dtype=np.float64), method="average", axis=1)


def reciprocal_rank_fusion(
    parts: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None, k: float = RRF_K
) -> np.ndarray:
    """``sum_m w_m / (k + rank_m)`` over the methods' score matrices (all ``(Q, N)``)."""
    _check_parts(parts)
    fused = None
    for name, scores in parts.items():
        weight = 1.0 if weights is None else float(weights.get(name, 0.0))
        if weight == 0.0:
            continue
        term = weight / (k + rank_matrix(scores))
        fused = term if fused is None else fused + term
    if fused is None:
        raise ValueError("every fusion weight is zero")
    return fused.astype(np.float32)


def standardize(scores: np.ndarray) -> np.ndarray:
    """Per-query z-scores (a constant row -> zeros), so methods' scales become comparable."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return np.divide(scores - mean, std, out=np.zeros_like(scores), where=std > 1e-12)


def weighted_fusion(parts: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``sum_m w_m * standardize(scores_m)``; methods without a weight count 0."""
    _check_parts(parts)
    shape = next(iter(parts.values())).shape
    fused = np.zeros(shape, dtype=np.float64)
    for name, scores in parts.items():
        weight = float(weights.get(name, 0.0))
        if weight:
            fused += weight * standardize(scores)
    return fused.astype(np.float32)


def own_ranks(scores: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each query's own column (ties count as ranked above)."""
    mine = scores[np.arange(len(scores)), own]
    return np.count_nonzero(scores >= mine[:, None], axis=1)


def recall_objective(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> float:
    """Mean of R@k over ``ks``: what the weights are fitted to maximise."""
    return float(np.mean([np.mean(ranks <= k) for k in ks]))


def fit_weights(
    parts: Mapping[str, np.ndarray],
    own: np.ndarray,
    grid: Sequence[float] = DEFAULT_GRID,
    rounds: int = 3,
) -> tuple[dict[str, float], float]:
    """Weights for ``weighted_fusion`` by coordinate ascent over ``grid`` -> (weights, objective).

    The first method is the anchor (weight 1: only ratios matter); each round tries every grid
    value for every other method with the rest fixed and keeps the best. Deterministic.
    """
    _check_parts(parts)
    names = list(parts)
    standardized = {name: standardize(scores) for name, scores in parts.items()}
    weights = {name: (1.0 if i == 0 else 0.0) for i, name in enumerate(names)}

    def objective(candidate: Mapping[str, float]) -> float:
        fused = sum(w * standardized[n] for n, w in candidate.items() if w)
        return recall_objective(own_ranks(np.asarray(fused), own))

    best = objective(weights)
    for _ in range(rounds):
        improved = False
        for name in names[1:]:
            for value in grid:
                trial = {**weights, name: float(value)}
                score = objective(trial)
                if score > best + 1e-12:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best


def _check_parts(parts: Mapping[str, np.ndarray]) -> None:
    if not parts:
        raise ValueError("nothing to fuse")
    shapes = {name: np.shape(scores) for name, scores in parts.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"fusion needs (Q, N) score matrices of one shape, got {shapes}")
