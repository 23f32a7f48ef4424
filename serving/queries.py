"""The four queries the server answers, over one ``IndexBundle``, as JSON-ready dicts.

HTTP-free so the API and the search page call the same code and tests can call it directly.
Every function takes the bundle the request started with; nothing here reads files (uploads
arrive as bytes, models and tables are already in memory).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

import numpy as np

from encoders.imaging import DecodeLimits, decode_image
from ranking.query_syntax import is_plain
from serving import mixed_search
from serving.explain import embed_with_terms, image_vectors, term_contributions
from serving.query_error import QueryError
from serving.searcher import SearchHit
from serving.state import IndexBundle


def image_links(image_id: str) -> dict[str, str]:
    quoted = urllib.parse.quote(image_id, safe="")
    return {
        "thumbnail": f"/thumbnails/{quoted}",
        "details": f"/api/images/{quoted}",
        "similar": f"/api/similar/{quoted}",
        "page": f"/?similar={quoted}",
    }


def _entry(bundle: IndexBundle, hit: SearchHit, rank: int, why: dict) -> dict:
    details = bundle.details.describe(hit.image_id) or {}
    return {
        "rank": rank,
        "image_id": hit.image_id,
        "uri": hit.uri,
        "score": round(hit.score, 6),
        "why": why,
        "caption": details.get("caption"),
        "tags": details.get("tags", []),
        "width": details.get("width"),
        "height": details.get("height"),
        "links": image_links(hit.image_id),
    }


def _page(
    bundle: IndexBundle,
    query: dict,
    hits: list[SearchHit],
    k: int,
    offset: int,
    whys: list[dict],
    started: float,
) -> dict:
    page_hits = hits[offset : offset + k]
    # There may be more when the search filled every slot it was asked for.
    more = len(hits) == offset + k and offset + k < len(bundle.images)
    return {
        "query": query,
        "version": bundle.version,
        "k": k,
        "offset": offset,
        "results": [
            _entry(bundle, hit, offset + i + 1, why)
            for i, (hit, why) in enumerate(zip(page_hits, whys[offset : offset + k], strict=True))
        ],
        "next_offset": offset + k if more else None,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def text_query(
    bundle: IndexBundle,
    text: str,
    k: int,
    offset: int,
    text_off: str | None,
    mode: str | None = None,
) -> dict:
    """Text -> images through the joint model; ``why`` gives each known word's cosine.

    ``mode`` "fused" (the default when the server runs with ``--fused``) ranks by the fused
    score instead, and ``why`` gives every part's score, the caption and the matched tags.
    """
    started = time.perf_counter()
    if bundle.text is None:
        raise QueryError(503, text_off or "text search is not enabled on this server")
    text = text.strip()
    if not text:
        raise QueryError(400, "empty text query")
    syntax = not is_plain(text)  # weights, quoted phrases, + and - (ranking.query_syntax)
    if mode is None:
        mode = "fused" if bundle.fused is not None and not syntax else "joint"
    if mode == "fused" and syntax:
        raise QueryError(400, "weights, quotes, + and - rank in the joint space: use mode=joint")
    if mode == "fused":
        return _fused_text_query(bundle, text, k, offset, started)
    if mode != "joint":
        raise QueryError(400, f"mode must be 'joint' or 'fused', got {mode!r}")
    if syntax:
        return combined_query(
            lambda: mixed_search.weighted_text(bundle, text, offset + k, text_off),
            bundle, k, offset, started,
        )  # fmt: skip
    try:
        query_vector, terms, vectors, unknown = embed_with_terms(bundle.text, text)
    except ValueError as exc:  # no known word: the encoder cannot place the query
        raise QueryError(400, str(exc)) from exc
    hits = bundle.text.search_embedded(query_vector, offset + k)[0]
    page_hits = hits[offset : offset + k]
    rows = [bundle.searcher_row(hit.image_id) for hit in page_hits]
    contributions = term_contributions(terms, vectors, image_vectors(bundle.text, rows))
    space = "joint-index" if bundle.text.uses_joint_index else "joint-model"
    whys = [{} for _ in range(offset)] + [
        {"match": "text", "space": space, "terms": terms_, "unknown_terms": unknown}
        for terms_ in contributions
    ]
    return _page(bundle, {"text": text}, hits, k, offset, whys, started)


def combined_query(
    search: Callable[[], mixed_search.Found],
    bundle: IndexBundle,
    k: int,
    offset: int,
    started: float,
) -> dict:
    """The page of a combined query (``serving.mixed_search``; it refuses with QueryError)."""
    found = search()
    return _page(bundle, found.query, found.hits, k, offset, found.whys, started)


def _fused_text_query(bundle: IndexBundle, text: str, k: int, offset: int, started: float) -> dict:
    if bundle.fused is None:
        raise QueryError(400, "fused search is not enabled on this server (start with --fused)")
    try:
        fused = bundle.fused.search(text, offset + k)
    except ValueError as exc:
        raise QueryError(400, str(exc)) from exc
    hits = [SearchHit(hit.image_id, hit.uri, hit.score) for hit in fused]
    whys = [
        {"match": "fused", "parts": hit.parts, "caption": hit.caption,
         "matched_tags": hit.matched_tags}
        for hit in fused
    ]  # fmt: skip
    return _page(bundle, {"text": text, "mode": "fused"}, hits, k, offset, whys, started)


def image_query(
    bundle: IndexBundle, data: bytes, k: int, offset: int, limits: DecodeLimits
) -> dict:
    """An uploaded image -> its nearest indexed images (decoded and encoded as indexing does)."""
    started = time.perf_counter()
    encoder = bundle.images.image_encoder()
    try:
        pixels, width, height = decode_image(data, size=encoder.input_size, limits=limits)
    except ValueError as exc:  # ImageRejected: not an image, a bomb, too small, ...
        raise QueryError(422, f"image rejected: {exc}") from exc
    vector = encoder.encode(pixels[np.newaxis])[0]
    hits = bundle.images.search_vector(vector, offset + k)
    why = {"match": "image", "encoder": bundle.images.encoder_id}
    whys = [why] * len(hits)
    query = {"image": {"bytes": len(data), "width": width, "height": height}}
    return _page(bundle, query, hits, k, offset, whys, started)


def similar_query(bundle: IndexBundle, image_id: str, k: int, offset: int) -> dict:
    """An indexed image -> the indexed images nearest to it (itself excluded)."""
    started = time.perf_counter()
    try:
        hits = bundle.images.similar_to_image_id(image_id, offset + k)
    except KeyError as exc:
        message = f"image {image_id!r} is not in index version {bundle.version}"
        raise QueryError(404, message) from exc
    why = {"match": "similar", "to": image_id, "encoder": bundle.images.encoder_id}
    whys = [why] * len(hits)
    return _page(bundle, {"similar_to": image_id}, hits, k, offset, whys, started)


def image_details(bundle: IndexBundle, image_id: str) -> dict:
    details = bundle.details.describe(image_id)
    if details is None:
        raise QueryError(404, f"image {image_id!r} is not in index version {bundle.version}")
    return {**details, "version": bundle.version, "links": image_links(image_id)}
