"""Why a result matched: per-query-word contributions for text queries (pure NumPy).

A text query is embedded whole for the search; to explain a hit, each distinct word of the query
is embedded alone through the same text encoder and joint model, and scored against the hit's
image vector in the space the search ran in. Words the text encoder does not know contribute
nothing and are reported as ``unknown_terms``, as are "words" longer than ``MAX_TERM_CHARS``
(a run of letters without spaces, e.g. CJK text): they are not scored, so the explanation's work
is bounded whatever the query (at most ``MAX_TERMS`` short texts in one encoder call).
"""

from __future__ import annotations

import re

import numpy as np

from encoders.base import l2_normalize
from encoders.joint import KIND_W2VV
from serving.text_search import TextSearcher

_WORD = re.compile(r"[\w']+", re.UNICODE)
MAX_TERMS = 12
MAX_TERM_CHARS = 32


def query_terms(query: str) -> list[str]:
    """Distinct lower-cased words of ``query`` in order of appearance (at most ``MAX_TERMS``)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        seen.setdefault(word, None)
    return list(seen)[:MAX_TERMS]


def embed_with_terms(
    text: TextSearcher, query: str
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """``(query vector (1, dim), known terms, their vectors, unknown terms)`` in one encoder call.

    The text encoders pay a fixed cost per call (tokenization runs as a TensorFlow op), so the
    query and its words go through together; the encoder keeps a long query from padding its
    short words to its own length (``encoders.minilm.length_chunks``), so the explanation costs
    about as much as the query itself. ValueError, as ``TextSearcher.embed_queries`` raises,
    when no word of the query is known.
    """
    terms = query_terms(query)
    scored = [t for t in terms if len(t) <= MAX_TERM_CHARS]
    features = text.text_encoder.encode([query, *scored])
    if not np.any(features[0]):
        raise ValueError(
            f"no word of {query!r} is known to text encoder {text.text_encoder.encoder_id}"
        )
    known = {t for t, row in zip(scored, features[1:], strict=True) if np.any(row)}
    rows = [0] + [i + 1 for i, t in enumerate(scored) if t in known]
    vectors = l2_normalize(np.asarray(text.joint.embed_text_features(features[rows]), np.float32))
    kept = [t for t in scored if t in known]
    unknown = [t for t in terms if t not in known]
    return vectors[:1], kept, vectors[1:], unknown


def image_vectors(text: TextSearcher, rows: list[int]) -> np.ndarray:
    """Unit vectors of indexed rows in the space text queries are scored in."""
    vectors = text.images.vectors[np.asarray(rows, dtype=np.int64)]
    if text.joint.kind != KIND_W2VV:
        vectors = text.joint.embed_image_features(vectors)
    return l2_normalize(np.asarray(vectors, np.float32))


def term_contributions(
    terms: list[str], term_vecs: np.ndarray, image_vecs: np.ndarray
) -> list[list[dict]]:
    """Per image, its known terms with their cosine to the image, strongest first."""
    if not terms:
        return [[] for _ in range(len(image_vecs))]
    scores = image_vecs @ term_vecs.T
    return [
        [
            {"term": terms[j], "score": round(float(row[j]), 4)}
            for j in np.argsort(-row, kind="stable")
        ]
        for row in scores
    ]
