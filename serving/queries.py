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

from encoders.decode_pool import BoundDecoder
from ranking.query_syntax import is_plain
from serving import mixed_search
from serving.explain import embed_with_terms, image_vectors, term_contributions
from serving.hybrid_search import hybrid_search
from serving.paging import CutPage, PageRequest, cut_page
from serving.query_error import QueryError
from serving.redaction import public_uri
from serving.searcher import SearchHit
from serving.state import IndexBundle
from serving.uploads import decode_upload


def image_links(image_id: str) -> dict[str, str]:
    quoted = urllib.parse.quote(image_id, safe="")
    return {
        "thumbnail": f"/thumbnails/{quoted}",
        "details": f"/api/images/{quoted}",
        "similar": f"/api/similar/{quoted}",
        "page": f"/?similar={quoted}",
    }


def _entry(bundle: IndexBundle, hit: SearchHit, rank: int, why: dict, hidden: int) -> dict:
    details = bundle.details.describe(hit.image_id) or {}
    entry = {
        "rank": rank,
        "image_id": hit.image_id,
        "uri": public_uri(hit.uri, bundle.expose_uris),
        "score": round(hit.score, 6),
        "why": why,
        "caption": details.get("caption"),
        "tags": details.get("tags", []),
        "width": details.get("width"),
        "height": details.get("height"),
        "metadata": details.get("metadata", {}),
        "near_duplicate_group": bundle.group_of(hit.image_id),
        "links": image_links(hit.image_id),
    }
    if hidden:  # dedupe: this many near-duplicates of it were left out of the results
        entry["near_duplicates_hidden"] = hidden
    return entry


def _page(
    bundle: IndexBundle,
    query: dict,
    cut: CutPage,
    page: PageRequest,
    whys: Callable[[CutPage], list[dict]],
    started: float,
) -> dict:
    """The JSON answer for the page ``cut``; ``whys`` explains its hits, in order."""
    return {
        "query": query,
        "version": bundle.version,
        "k": page.k,
        "offset": page.offset,
        "results": [
            _entry(bundle, hit, page.offset + i + 1, why, cut.hidden.get(hit.image_id, 0))
            for i, (hit, why) in enumerate(zip(cut.hits, whys(cut), strict=True))
        ],
        "next_offset": page.end if cut.more else None,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _same_why(why: dict) -> Callable[[CutPage], list[dict]]:
    return lambda cut: [why] * len(cut.hits)


def _cut(
    bundle: IndexBundle,
    search: Callable[[int], list[SearchHit]],
    page: PageRequest,
    exclude: Callable[[SearchHit], bool] | None = None,
) -> CutPage:
    return cut_page(search, page, bundle.near_duplicates, len(bundle.images), exclude)


# Query syntax (ranking.query_syntax) weighs terms in the joint space: fused and hybrid refuse it.
_JOINT_ONLY_SYNTAX = "weights, quotes, + and - rank in the joint space: use mode=joint"


def text_query(
    bundle: IndexBundle,
    text: str,
    page: PageRequest,
    text_off: str | None,
    mode: str | None = None,
    hybrid_weight: float | None = None,
) -> dict:
    """Text -> images through the joint model; ``why`` gives each known word's cosine.

    ``mode`` "fused" (the default when the server runs with ``--fused``) ranks by the fused
    score instead, and ``why`` gives every part's score, the caption and the matched tags.
    ``mode`` "hybrid" fuses BM25 over each row's text with the joint cosine
    (``serving.hybrid_search``; ``hybrid_weight`` is the keyword share), and works without a
    joint model too (keywords alone).
    """
    started = time.perf_counter()
    if mode == "hybrid":
        return _hybrid_text_query(bundle, text, page, started, hybrid_weight)
    if hybrid_weight is not None:
        raise QueryError(400, "hybrid_weight goes with mode=hybrid")
    if bundle.text is None:
        raise QueryError(503, text_off or "text search is not enabled on this server")
    text = text.strip()
    if not text:
        raise QueryError(400, "empty text query")
    syntax = not is_plain(text)  # weights, quoted phrases, + and - (ranking.query_syntax)
    if mode is None:
        mode = "fused" if bundle.fused is not None and not syntax else "joint"
    if mode == "fused" and syntax:
        raise QueryError(400, _JOINT_ONLY_SYNTAX)
    if mode == "fused":
        return _fused_text_query(bundle, text, page, started)
    if mode != "joint":
        raise QueryError(400, f"mode must be 'joint', 'fused' or 'hybrid', got {mode!r}")
    allowed = bundle.allowed_rows(page.filter)
    if syntax:
        if allowed is not None:
            raise QueryError(400, "a filter applies to plain text queries (no weights or quotes)")
        return combined_query(
            lambda n: mixed_search.weighted_text(bundle, text, n, text_off), bundle, page, started
        )
    try:
        query_vector, terms, vectors, unknown = embed_with_terms(bundle.text, text)
    except ValueError as exc:  # no known word: the encoder cannot place the query
        raise QueryError(400, str(exc)) from exc
    cut = _cut(bundle, lambda n: bundle.text.search_embedded(query_vector, n, allowed)[0], page)
    space = "joint-index" if bundle.text.uses_joint_index else "joint-model"

    def whys(cut: CutPage) -> list[dict]:
        rows = [bundle.searcher_row(hit.image_id) for hit in cut.hits]
        contributions = term_contributions(terms, vectors, image_vectors(bundle.text, rows))
        return [
            {"match": "text", "space": space, "terms": terms_, "unknown_terms": unknown}
            for terms_ in contributions
        ]

    query = {"text": text, **_filter_echo(page)}
    return _page(bundle, query, cut, page, whys, started)


def _filter_echo(page: PageRequest) -> dict:
    return {"filter": page.filter} if page.filter else {}


def combined_query(
    search: Callable[[int], mixed_search.Found],
    bundle: IndexBundle,
    page: PageRequest,
    started: float,
) -> dict:
    """The page of a combined query (``serving.mixed_search``; it refuses with QueryError).

    ``search(n)`` gives the top ``n`` with a ``why`` each.
    """
    found: list[mixed_search.Found] = []

    def hits(n: int) -> list[SearchHit]:
        found[:] = [search(n)]
        return found[0].hits

    cut = _cut(bundle, hits, page)
    return _page(
        bundle, found[0].query, cut, page, lambda c: [found[0].whys[i] for i in c.positions],
        started,
    )  # fmt: skip


def _hybrid_text_query(
    bundle: IndexBundle, text: str, page: PageRequest, started: float, weight: float | None
) -> dict:
    if not is_plain(text):
        raise QueryError(400, _JOINT_ONLY_SYNTAX)
    allowed = bundle.allowed_rows(page.filter)
    return combined_query(
        lambda n: hybrid_search(bundle, text, n, weight, allowed=allowed), bundle, page, started
    )


def _fused_text_query(bundle: IndexBundle, text: str, page: PageRequest, started: float) -> dict:
    if bundle.fused is None:
        raise QueryError(400, "fused search is not enabled on this server (start with --fused)")
    allowed = bundle.allowed_rows(page.filter)
    fused: list = []

    def search(n: int) -> list[SearchHit]:
        try:
            fused[:] = bundle.fused.search(text, n, allowed)
        except ValueError as exc:
            raise QueryError(400, str(exc)) from exc
        return [SearchHit(hit.image_id, hit.uri, hit.score) for hit in fused]

    cut = _cut(bundle, search, page)

    def whys(cut: CutPage) -> list[dict]:
        return [
            {"match": "fused", "parts": hit.parts, "caption": hit.caption,
             "matched_tags": hit.matched_tags}
            for hit in (fused[i] for i in cut.positions)
        ]  # fmt: skip

    query = {"text": text, "mode": "fused", **_filter_echo(page)}
    return _page(bundle, query, cut, page, whys, started)


def image_vector(bundle: IndexBundle, data: bytes, decode: BoundDecoder) -> tuple[np.ndarray, dict]:
    """An uploaded image -> its query vector (decoded and encoded as indexing does) and echo."""
    encoder = bundle.images.image_encoder()
    pixels, echo = decode_upload(data, decode, encoder.input_size)
    return encoder.encode(pixels[np.newaxis])[0], echo


def image_query(bundle: IndexBundle, data: bytes, page: PageRequest, decode: BoundDecoder) -> dict:
    """An uploaded image -> its nearest indexed images (decoded and encoded as indexing does)."""
    started = time.perf_counter()
    vector, echo = image_vector(bundle, data, decode)
    allowed = bundle.allowed_rows(page.filter)

    def search(n: int) -> list[SearchHit]:
        return bundle.images.search_vector(vector, n, allowed)

    why = {"match": "image", "encoder": bundle.images.encoder_id}
    return hits_page(bundle, {"image": echo}, search, page, why, started)


def similar_query(bundle: IndexBundle, image_id: str, page: PageRequest) -> dict:
    """An indexed image -> the indexed images nearest to it (itself excluded).

    With near-duplicates collapsed, the image's own group is left out too: its crops and
    re-encodes are not "more like this".
    """
    row = bundle.images.row_of(image_id)
    if row is None:
        raise QueryError(404, f"image {image_id!r} is not in index version {bundle.version}")
    allowed = bundle.allowed_rows(page.filter)
    vector = bundle.images.vectors[row]

    def search(n: int) -> list[SearchHit]:
        return bundle.images.search_vector(vector, n, allowed)

    return similar_page_of(bundle, image_id, search, page)


def similar_page_of(
    bundle: IndexBundle,
    image_id: str,
    search: Callable[[int], list[SearchHit]],
    page: PageRequest,
) -> dict:
    """The page of the images nearest to ``image_id`` from ``search(n)``, its stored vector's
    top ``n`` (the image itself among them, normally first)."""
    started = time.perf_counter()
    own_group = bundle.group_of(image_id) if page.dedupe else None

    def not_shown(hit: SearchHit) -> bool:
        # By id, not by position: an identical vector may tie with the image itself.
        if hit.image_id == image_id:
            return True
        return own_group is not None and bundle.group_of(hit.image_id) == own_group

    cut = _cut(bundle, search, page, not_shown)
    why = {"match": "similar", "to": image_id, "encoder": bundle.images.encoder_id}
    query = {"similar_to": image_id, **_filter_echo(page)}
    return _page(bundle, query, cut, page, _same_why(why), started)


def hits_page(
    bundle: IndexBundle,
    query: dict,
    search: Callable[[int], list[SearchHit]],
    page: PageRequest,
    why: dict,
    started: float,
) -> dict:
    """The page of ``search(n)``'s ranking, every hit with the same ``why``."""
    cut = _cut(bundle, search, page)
    return _page(bundle, {**query, **_filter_echo(page)}, cut, page, _same_why(why), started)


def image_details(bundle: IndexBundle, image_id: str) -> dict:
    details = bundle.details.describe(image_id)
    if details is None:
        raise QueryError(404, f"image {image_id!r} is not in index version {bundle.version}")
    expose = bundle.expose_uris
    shown = {"uri": public_uri(details["uri"], expose)}
    if details.get("duplicate_uris"):
        shown["duplicate_uris"] = [public_uri(uri, expose) for uri in details["duplicate_uris"]]
    return {**details, **shown, "version": bundle.version, "links": image_links(image_id)}
