"""Many queries in one request: text and indexed-image queries searched as one ScaNN batch.

``batch_query`` embeds every text query of the batch in a few text-encoder calls (batches of
the size the encoder was traced for) and searches all query vectors of a space in one
``search_vectors`` call, which ScaNN answers with its batched search; each query's page is then
cut as the single-query routes cut theirs (``serving.paging``), searching deeper only for a
query whose page the first search could not fill. A query that cannot be answered (no known
word, an unknown image id) gets an ``error`` entry in its place; the others are answered.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from serving import queries
from serving.paging import PageRequest
from serving.query_error import QueryError
from serving.searcher import SearchHit
from serving.state import IndexBundle

# The most queries one request may carry: a batch holds the event loop's thread-pool worker
# for its whole search (~1 ms a query at 1M images), so it stays well under a second.
MAX_BATCH_QUERIES = 64


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """One query of a batch: text (``q``) or an indexed image (``image_id``), not both."""

    q: str | None = None
    image_id: str | None = None


def batch_query(
    bundle: IndexBundle, items: Sequence[BatchItem], page: PageRequest, text_off: str | None
) -> list[dict]:
    """One answer per item, in order: the page ``/api/search`` or ``/api/similar`` would give
    (without per-word contributions in ``why``), or ``{"error": {"status", "detail"}}``."""
    if not items:
        raise QueryError(400, "a batch needs at least one query")
    if len(items) > MAX_BATCH_QUERIES:
        raise QueryError(400, f"at most {MAX_BATCH_QUERIES} queries in a batch, got {len(items)}")
    allowed = bundle.allowed_rows(page.filter)  # one filter for the whole batch: 400 if bad
    answers: list[dict | None] = [None] * len(items)
    texts = [i for i, item in enumerate(items) if item.q is not None]
    similar = [i for i, item in enumerate(items) if item.image_id is not None]
    if texts:
        _answer_texts(bundle, items, texts, page, allowed, text_off, answers)
    if similar:
        _answer_similar(bundle, items, similar, page, allowed, answers)
    return answers  # type: ignore[return-value]  # every slot is filled above


def _error(exc: QueryError) -> dict:
    return {"error": {"status": exc.status, "detail": exc.message}}


def _answer_texts(bundle, items, positions, page, allowed, text_off, answers) -> None:
    if bundle.text is None:
        for i in positions:
            answers[i] = _error(QueryError(503, text_off or "text search is not enabled"))
        return
    text = bundle.text
    strings = [items[i].q.strip() for i in positions]
    features = text.text_encoder.encode(strings)  # one call: the encoder chunks by length
    known = [bool(s) and bool(np.any(row)) for s, row in zip(strings, features, strict=True)]
    rows = [j for j, ok in enumerate(known) if ok]
    vectors = np.asarray(text.joint.embed_text_features(features[rows]), np.float32) if rows else []
    first = text.search_embedded(vectors, page.end + 1, allowed) if rows else []
    space = "joint-index" if text.uses_joint_index else "joint-model"
    for j, i in enumerate(positions):
        if not known[j]:
            reason = "empty text query" if not strings[j] else (
                f"no word of {strings[j]!r} is known to text encoder "
                f"{text.text_encoder.encoder_id}"
            )  # fmt: skip
            answers[i] = _error(QueryError(400, reason))
            continue
        at = rows.index(j)
        vector = vectors[at]
        search = _deeper(
            first[at], lambda n, v=vector: text.search_embedded(v[None], n, allowed)[0]
        )
        answers[i] = queries.hits_page(
            bundle, {"text": strings[j]}, search, page,
            {"match": "text", "space": space}, time.perf_counter(),
        )  # fmt: skip


def _answer_similar(bundle, items, positions, page, allowed, answers) -> None:
    images = bundle.images
    found = []
    for j, i in enumerate(positions):
        row = images.row_of(items[i].image_id)
        if row is None:
            message = f"image {items[i].image_id!r} is not in index version {bundle.version}"
            answers[i] = _error(QueryError(404, message))
        else:
            found.append((j, i, row))
    if not found:
        return
    stored = images.vectors[np.asarray([row for _, _, row in found])]
    # One more, as similar_to_image_id asks: each image normally finds itself first.
    first = images.search_vectors(stored, page.end + 2, allowed)
    for (_, i, _), hits, vector in zip(found, first, stored, strict=True):
        image_id = items[i].image_id
        answers[i] = queries.similar_page_of(
            bundle,
            image_id,
            _deeper(hits, lambda n, v=vector: images.search_vector(v, n, allowed)),
            page,
        )


def _deeper(
    first: list[SearchHit], search: Callable[[int], list[SearchHit]]
) -> Callable[[int], list[SearchHit]]:
    """``search(n)`` answered from the batch's first search while it is deep enough."""

    def top(n: int) -> list[SearchHit]:
        if n <= len(first):
            return first[:n]
        return search(n)

    return top
