"""Retrieval metrics: the rank of the first relevant item per query, then recall@k and friends.

Ranks are 1-based. Ties are resolved pessimistically: an irrelevant item scoring exactly as high
as the best relevant one is counted as ranked above it. A model that gives every item the same
score therefore gets the worst rank, never a lucky first place, and the figures cannot depend on
the order the items happen to be stored in.

Pure NumPy. ``text_to_image_ranks`` and ``image_to_text_ranks`` score a block of queries at a
time, so a 5,000 x 1,000 evaluation, or a much larger one, never holds the full score matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)

DEFAULT_BLOCK_SIZE = 1024


def _check_scores(scores: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (queries, items) matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold NaN or infinite values; ranks would be meaningless")


def ranks_from_scores(scores: np.ndarray, relevant: Sequence[Iterable[int]]) -> np.ndarray:
    """``(Q, N)`` scores (higher is better) and the relevant columns of each query -> ``(Q,)``.

    Entry ``q`` is the 1-based rank of query ``q``'s best-scoring relevant item, counting every
    irrelevant item with a score ``>=`` it as ranked above (pessimistic ties). Raises ValueError
    when a query has no relevant item or names a column outside ``[0, N)``.
    """
    scores = np.asarray(scores)
    _check_scores(scores)
    num_queries, num_items = scores.shape
    if len(relevant) != num_queries:
        raise ValueError(f"{num_queries} score rows but {len(relevant)} relevant sets")
    ranks = np.empty(num_queries, dtype=np.int64)
    for query, columns in enumerate(relevant):
        columns = np.unique(np.fromiter(columns, dtype=np.int64))
        if columns.size == 0:
            raise ValueError(f"query {query} has no relevant item")
        if columns[0] < 0 or columns[-1] >= num_items:
            raise ValueError(f"query {query} names relevant columns outside [0, {num_items})")
        row = scores[query]
        mask = np.zeros(num_items, dtype=bool)
        mask[columns] = True
        best = row[mask].max()
        ranks[query] = 1 + int(np.count_nonzero((row >= best) & ~mask))
    return ranks


def retrieval_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``(Q,)`` 1-based ranks -> ``{"R@k" for k in ks, "MRR", "median_rank", "mean_rank",
    "queries"}`` (recalls and MRR are fractions in [0, 1]; ``queries`` is the count)."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank below 1")
    metrics: dict[str, float] = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics["MRR"] = float(np.mean(1.0 / ranks))
    metrics["median_rank"] = float(np.median(ranks))
    metrics["mean_rank"] = float(np.mean(ranks))
    metrics["queries"] = int(ranks.size)
    return metrics


def _check_vectors(name: str, vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"{name} must be a (rows, dim) matrix, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{name} are {vectors.shape[1]}-d but the other side is {dim}-d")
    return vectors


def _check_bias(bias: np.ndarray | None, items: int) -> np.ndarray | float:
    """The per-item bias as a row to subtract (0.0 for none); ValueError for a wrong length."""
    if bias is None:
        return 0.0
    bias = np.asarray(bias, dtype=np.float32)
    if bias.shape != (items,):
        raise ValueError(f"item_bias must have shape ({items},), got {bias.shape}")
    return bias[None, :]


def _check_index(name: str, index: np.ndarray, length: int, num_targets: int) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64)
    if index.shape != (length,):
        raise ValueError(f"{name} must have one entry per row ({length}), got {index.shape}")
    if length and (index.min() < 0 or index.max() >= num_targets):
        raise ValueError(f"{name} holds rows outside [0, {num_targets})")
    return index


def text_to_image_ranks(
    query_vecs: np.ndarray,
    image_vecs: np.ndarray,
    query_image_index: np.ndarray,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    item_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Rank of each query's own image among all images, by dot product -> ``(Q,)`` int64.

    ``query_image_index[q]`` is the row of ``image_vecs`` that query ``q`` (a caption) describes.
    ``item_bias`` (one number per image, e.g. a query bank's hubness bias) is subtracted from
    every query's scores. Same tie rule as ``ranks_from_scores``; memory is ``block_size x N``
    scores at a time.
    """
    image_vecs = _check_vectors("image_vecs", image_vecs)
    query_vecs = _check_vectors("query_vecs", query_vecs, image_vecs.shape[1])
    index = _check_index("query_image_index", query_image_index, len(query_vecs), len(image_vecs))
    bias = _check_bias(item_bias, len(image_vecs))
    ranks = np.empty(len(query_vecs), dtype=np.int64)
    for start in range(0, len(query_vecs), block_size):
        stop = min(start + block_size, len(query_vecs))
        scores = query_vecs[start:stop] @ image_vecs.T - bias
        _check_scores(scores)
        own = scores[np.arange(stop - start), index[start:stop]]
        # ">=" counts the own image too, hence no "1 +": every tie with another image counts.
        ranks[start:stop] = np.count_nonzero(scores >= own[:, None], axis=1)
    return ranks


def image_to_text_ranks(
    image_vecs: np.ndarray,
    caption_vecs: np.ndarray,
    caption_image_index: np.ndarray,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    item_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Rank of each image's best-ranked own caption among all captions -> ``(N,)`` int64.

    ``caption_image_index[c]`` is the row of ``image_vecs`` that caption ``c`` describes; every
    image needs at least one caption (ValueError otherwise). ``item_bias`` (one number per
    caption) is subtracted from every image's scores. Same tie rule as ``ranks_from_scores``;
    memory is ``block_size x C`` scores at a time.
    """
    image_vecs = _check_vectors("image_vecs", image_vecs)
    caption_vecs = _check_vectors("caption_vecs", caption_vecs, image_vecs.shape[1])
    index = _check_index(
        "caption_image_index", caption_image_index, len(caption_vecs), len(image_vecs)
    )
    uncaptioned = np.setdiff1d(np.arange(len(image_vecs)), index)
    if uncaptioned.size:
        raise ValueError(
            f"{uncaptioned.size} image(s) have no caption, e.g. rows {uncaptioned[:5].tolist()}"
        )
    bias = _check_bias(item_bias, len(caption_vecs))
    ranks = np.empty(len(image_vecs), dtype=np.int64)
    for start in range(0, len(image_vecs), block_size):
        stop = min(start + block_size, len(image_vecs))
        scores = image_vecs[start:stop] @ caption_vecs.T - bias
        _check_scores(scores)
        own = index[None, :] == np.arange(start, stop)[:, None]
        best = np.where(own, scores, -np.inf).max(axis=1)
        ranks[start:stop] = 1 + np.count_nonzero((scores >= best[:, None]) & ~own, axis=1)
    return ranks
