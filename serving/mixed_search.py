"""Weighted text, mixed (image + text) and relevance-feedback queries in the joint space.

The serving side of ``ranking.query_syntax`` (parse), ``ranking.query_mix`` (weighted sum,
re-normalised, each part's contribution) and ``ranking.rocchio`` (feedback): every part becomes
a vector of the space text queries are searched in (``TextSearcher.search_embedded``: the joint
index when the version has this model's, else the model's projection), through the same
encoders and towers plain queries and indexing use:

- a text term: the text encoder, then the joint model's text tower;
- an uploaded image: decoded and encoded as indexing does, then the image tower;
- an indexed image: its stored embedding through the image tower, which is the table's
  ``joint_embedding`` for an index built with this model (what ``serving.explain`` scores).

HTTP-free and JSON-page-free (``serving.queries`` builds the page), so ``queries.text_query``
can answer syntax queries with it. Refusals raise ``serving.query_error.QueryError`` (an HTTP
status and a message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from encoders.base import l2_normalize
from encoders.decode_pool import BoundDecoder, bound_decoder
from encoders.imaging import DecodeLimits
from encoders.joint import KIND_W2VV
from ranking import query_mix, rocchio
from ranking.query_syntax import MAX_TERMS, QuerySyntaxError, QueryTerm, parse_query
from serving.explain import image_vectors
from serving.query_error import QueryError
from serving.searcher import SearchHit
from serving.state import IndexBundle
from serving.text_search import TextSearcher
from serving.uploads import decode_upload

MAX_FEEDBACK_IDS = 100  # relevant + not relevant images in one feedback query


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a combined query: what ``why`` says it is, its vector, its signed weight."""

    label: dict
    vector: np.ndarray
    weight: float


@dataclasses.dataclass(frozen=True)
class Found:
    """A combined query's hits (best first) with one ``why`` per hit, and the query's echo."""

    query: dict
    hits: list[SearchHit]
    whys: list[dict]


def joint_searcher(bundle: IndexBundle, text_off: str | None) -> TextSearcher:
    """The bundle's joint-space searcher, or 503 when this server has no joint model."""
    if bundle.text is None:
        raise QueryError(503, text_off or "text search is not enabled on this server")
    return bundle.text


def parse_terms(text: str) -> list[QueryTerm]:
    """``text`` in the query syntax -> its terms; 400 naming the position when malformed."""
    try:
        return parse_query(text, MAX_TERMS)
    except QuerySyntaxError as exc:
        raise QueryError(400, f"query syntax: {exc}") from exc


def term_parts(text: TextSearcher, terms: Sequence[QueryTerm]) -> list[Part]:
    """Each term's unit vector, all in one encoder call."""
    features = text.text_encoder.encode([term.text for term in terms])
    for term, row in zip(terms, features, strict=True):
        if not np.any(row):  # the towers would map it to their biases: refuse, as text search
            raise QueryError(
                400, f"no word of {term.text!r} is known to text encoder "
                f"{text.text_encoder.encoder_id}"
            )  # fmt: skip
    vectors = l2_normalize(text.joint.embed_text_features(features))
    return [
        Part({"part": "text", "text": term.text}, vector, term.weight)
        for term, vector in zip(terms, vectors, strict=True)
    ]


def _image_space(text: TextSearcher, features: np.ndarray) -> np.ndarray:
    """Image-encoder rows -> unit rows of the search space (identity for Word2VisualVec)."""
    if text.joint.kind == KIND_W2VV:
        return l2_normalize(features)
    return l2_normalize(text.joint.embed_image_features(features))


def upload_part(
    bundle: IndexBundle, text: TextSearcher, data: bytes, decode: BoundDecoder, weight: float
) -> tuple[Part, dict]:
    """An uploaded image as a part (decoded and encoded as indexing does) and its echo."""
    encoder = bundle.images.image_encoder()
    pixels, echo = decode_upload(data, decode, encoder.input_size)
    vector = _image_space(text, encoder.encode(pixels[np.newaxis]))[0]
    return Part({"part": "image", "source": "upload"}, vector, weight), echo


def indexed_vectors(
    bundle: IndexBundle, text: TextSearcher, image_ids: Sequence[str]
) -> np.ndarray:
    """``(len(image_ids), dim)`` search-space vectors of indexed images; 404 naming unknowns."""
    unknown = [image_id for image_id in image_ids if bundle.details.row_of(image_id) is None]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise QueryError(
            404, f"{len(unknown)} image(s) not in index version {bundle.version}: {shown}"
        )
    return image_vectors(text, [bundle.searcher_row(image_id) for image_id in image_ids])


def search_parts(
    bundle: IndexBundle, text: TextSearcher, parts: Sequence[Part], n: int, match: str, query: dict
) -> Found:
    """The top ``n`` hits of the parts' weighted sum, each explained part by part.

    A hit's ``why.parts`` give each part's ``similarity`` (its vector . the hit's) and
    ``contribution`` (weight * similarity / the sum's norm); contributions add up to the score.
    """
    vectors = np.stack([part.vector for part in parts])
    weights = [part.weight for part in parts]
    try:
        unit, norm = query_mix.combine(vectors, weights)
    except query_mix.MixError as exc:
        raise QueryError(400, str(exc)) from exc
    hits = text.search_embedded(unit[np.newaxis], n)[0]
    hit_vectors = image_vectors(text, [bundle.searcher_row(hit.image_id) for hit in hits])
    similarities, shares = query_mix.contributions(vectors, weights, norm, hit_vectors)
    space = "joint-index" if text.uses_joint_index else "joint-model"
    whys = [
        {"match": match, "space": space, "parts": _explained(parts, sims, row)}
        for sims, row in zip(similarities, shares, strict=True)
    ]
    return Found(query, hits, whys)


def _explained(parts: Sequence[Part], similarities: np.ndarray, shares: np.ndarray) -> list[dict]:
    return [
        {
            **part.label,
            "weight": round(float(part.weight), 6),
            "similarity": round(float(similarity), 4),
            "contribution": round(float(share), 4),
        }
        for part, similarity, share in zip(parts, similarities, shares, strict=True)
    ]


def weighted_text(bundle: IndexBundle, text_query: str, n: int, text_off: str | None) -> Found:
    """A text query in the syntax (``ranking.query_syntax``): its terms' weighted sum."""
    text = joint_searcher(bundle, text_off)
    terms = parse_terms(text_query)
    query = {"text": text_query, "terms": [dict(t._asdict()) for t in terms]}
    return search_parts(bundle, text, term_parts(text, terms), n, "text", query)


def mixed(
    bundle: IndexBundle,
    text_query: str,
    n: int,
    text_off: str | None,
    *,
    upload: bytes | None = None,
    image_id: str | None = None,
    image_weight: float = 1.0,
    decode: BoundDecoder | None = None,
) -> Found:
    """An image (uploaded bytes or an indexed ``image_id``) and/or text terms, in one ranking.

    400 for neither, both an upload and an image_id, or malformed syntax; 404 for an unknown
    image_id; 422 for an image the decoder rejects; 503 without a joint model.
    """
    text = joint_searcher(bundle, text_off)
    if upload is not None and image_id is not None:
        raise QueryError(400, "send an image file or an image_id, not both")
    if upload is None and image_id is None and not text_query.strip():
        raise QueryError(400, "a mixed query needs an image (file or image_id) or text (q)")
    if not np.isfinite(image_weight) or image_weight == 0:
        raise QueryError(400, f"image_weight must be a non-zero number, got {image_weight}")
    parts: list[Part] = []
    query: dict = {"text": text_query.strip() or None, "terms": [], "image": None}
    if upload is not None:
        decode = decode or bound_decoder(DecodeLimits())
        part, echo = upload_part(bundle, text, upload, decode, image_weight)
        parts.append(part)
        query["image"] = {**echo, "weight": image_weight}
    elif image_id is not None:
        vector = indexed_vectors(bundle, text, [image_id])[0]
        parts.append(Part({"part": "image", "source": "index", "image_id": image_id}, vector,
                          image_weight))  # fmt: skip
        query["image"] = {"image_id": image_id, "weight": image_weight}
    if text_query.strip():
        terms = parse_terms(text_query)
        query["terms"] = [dict(t._asdict()) for t in terms]
        parts.extend(term_parts(text, terms))
    return search_parts(bundle, text, parts, n, "mixed", query)


def feedback(
    bundle: IndexBundle,
    text_query: str,
    relevant: Sequence[str],
    not_relevant: Sequence[str],
    n: int,
    text_off: str | None,
) -> Found:
    """Rocchio in the joint space: the query (syntax allowed) moved toward the relevant images'
    mean and away from the not-relevant ones' (``ranking.rocchio``, standard coefficients).

    400 with neither a query nor a relevant image, or an image in both lists; 404 naming
    unknown ids; 422 over ``MAX_FEEDBACK_IDS``; 503 without a joint model.
    """
    text = joint_searcher(bundle, text_off)
    relevant, not_relevant = list(dict.fromkeys(relevant)), list(dict.fromkeys(not_relevant))
    if len(relevant) + len(not_relevant) > MAX_FEEDBACK_IDS:
        raise QueryError(422, f"at most {MAX_FEEDBACK_IDS} feedback images per query")
    both = sorted(set(relevant) & set(not_relevant))
    if both:
        raise QueryError(400, f"images both relevant and not relevant: {both[:10]}")
    if not text_query.strip() and not relevant:
        raise QueryError(400, "feedback needs a query (q) or at least one relevant image")
    query_vector = None
    if text_query.strip():
        term_vectors = term_parts(text, parse_terms(text_query))
        try:
            query_vector, _ = query_mix.combine(
                np.stack([p.vector for p in term_vectors]), [p.weight for p in term_vectors]
            )
        except query_mix.MixError as exc:
            raise QueryError(400, str(exc)) from exc
    relevant_vectors = indexed_vectors(bundle, text, [*relevant, *not_relevant])
    labels, vectors, weights = rocchio.rocchio_parts(
        query_vector, relevant_vectors[: len(relevant)], relevant_vectors[len(relevant) :]
    )
    describe = {
        rocchio.QUERY: {"part": "query", "text": text_query.strip()},
        rocchio.RELEVANT: {"part": "relevant", "images": len(relevant)},
        rocchio.NOT_RELEVANT: {"part": "not_relevant", "images": len(not_relevant)},
    }
    parts = [
        Part(describe[label], vector, float(weight))
        for label, vector, weight in zip(labels, vectors, weights, strict=True)
    ]
    query = {
        "text": text_query.strip() or None,
        "relevant": relevant,
        "not_relevant": not_relevant,
        "rocchio": {"alpha": rocchio.ALPHA, "beta": rocchio.BETA, "gamma": rocchio.GAMMA},
    }
    return search_parts(bundle, text, parts, n, "feedback", query)
