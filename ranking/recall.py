"""Recall of approximate nearest-neighbour results against the exact neighbours.

Pure NumPy over id matrices, so it lives in ``ranking`` (below ``index``): the ANN tuner, the
evaluation job and the benchmarks score result lists with it, whichever library produced them.
"""

from __future__ import annotations

import numpy as np


def recall_per_query(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Share of each query's exact top k (``(M, k)``) found among ``found`` (``(M, k')``)."""
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {exact.shape[0]} queries")
    hits = (found[:, :, np.newaxis] == exact[:, np.newaxis, :]).any(axis=1)
    return hits.sum(axis=1) / exact.shape[1]
