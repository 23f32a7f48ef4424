"""Hybrid text search: BM25 keywords over each row's text fused with the joint model's cosine.

A row's text is its generated caption, its tag labels and the string values of its source
metadata (the manifest's extra columns: titles, alt text, ...), tokenised as the caption
methods do (``encoders.text_match.content_words``) into one ``ranking.bm25.BM25Index``.

``hybrid_search`` ranks in two steps:

1. candidates: the joint model's top ``C`` (``TextSearcher.search_embedded``: ScaNN or exact,
   as text search) united with BM25's top ``C``;
2. every candidate is scored exactly on both parts -- its cosine with the query in the joint
   space and its BM25 score -- each part is put on a 0..1 scale over the candidates, and
   ``score = (1 - w) * vector + w * keyword``.

The scales (``normalized_parts``): the vector part is min-max scaled over the candidates (the
best candidate 1, the worst 0; cosines of one query sit in a narrow band that differs from
query to query), the keyword part is BM25 divided by the query's best BM25 (0 still means "no
query word in this row's text"). The weight ``w`` is ``DEFAULT_HYBRID_WEIGHT`` unless a query
sets its own. A query the joint model cannot place (no word its text encoder knows, or no joint
model on this server) ranks by keywords alone; one with no keyword match ranks by the vector.
Exact on the candidates, not on the whole index: a row outside both top-``C`` lists is never
returned even if its fused score would place it (the usual approximation of hybrid search).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from encoders.base import l2_normalize
from encoders.text_match import content_words
from ranking.bm25 import BM25Index
from serving.details import ImageDetails
from serving.explain import image_vectors
from serving.query_error import QueryError
from serving.searcher import ImageSearcher, SearchHit
from serving.text_search import TextSearcher

# Learnt on Flickr8k TRAIN, never dev: `benchmarks/bench_hybrid.py` holds 1,000 train images
# out, trains the joint model (dual-tfidf, frozen MobileNetV2) and the captioner on the other
# 5,091, and picks the weight of a 1-D grid (0, 0.05, ..., 1) that maximises the mean of
# R@1/5/10 of the held-out images' 5,000 human captions over their generated captions
# (benchmarks/results/hybrid.md has the sweep, and dev figures at this weight).
DEFAULT_HYBRID_WEIGHT = 0.1
# Candidates taken from each part before exact rescoring (at least the ``n`` asked for).
DEFAULT_CANDIDATES = 200
ROW_TEXT_COLUMNS = ("caption", "tags", "metadata")
_TOKENIZE_CHUNK = 65536  # texts per tokenizer call: bounds the TensorFlow batch at load


def metadata_strings(value: Any) -> list[str]:
    """The string values in a decoded JSON value, depth first (keys and numbers left out)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in metadata_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in metadata_strings(v)]
    return []


def row_text(caption: str | None, tags: Sequence[dict] | None, metadata: str | None) -> str:
    """One row's searchable text: caption, tag labels, the metadata JSON's string values.

    ``metadata`` is the table's JSON object string; one that is not JSON counts as text.
    """
    parts = [caption] if caption else []
    parts += [tag["label"] for tag in tags or () if tag.get("label")]
    if metadata:
        try:
            parts += metadata_strings(json.loads(metadata))
        except json.JSONDecodeError:
            parts.append(metadata)
    return " \n ".join(parts)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Texts -> content words (the caption methods' tokenizer), in bounded batches."""
    texts = list(texts)
    return [
        words
        for start in range(0, len(texts), _TOKENIZE_CHUNK)
        for words in content_words(texts[start : start + _TOKENIZE_CHUNK])
    ]


@dataclasses.dataclass(frozen=True)
class HybridIndex:
    """The keyword side of hybrid search: BM25 over every row's text, in searcher-row order."""

    keywords: BM25Index

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> HybridIndex:
        """One text per searcher row."""
        return cls(BM25Index.build(tokenize(texts)))

    @classmethod
    def from_details(
        cls,
        details: ImageDetails,
        searcher_rows: np.ndarray | None = None,
        columns: Sequence[str] = ROW_TEXT_COLUMNS,
    ) -> HybridIndex:
        """The rows' texts from a loaded version's table (``ImageDetails.table``).

        ``searcher_rows``: details row -> searcher row (``IndexBundle.searcher_rows``; None
        when both order rows alike). ``columns``: which of caption, tags, metadata count;
        a column the table lacks (no ``--captioner``, say) counts as empty.
        """
        unknown = set(columns) - set(ROW_TEXT_COLUMNS)
        if unknown:
            raise ValueError(f"row text columns are {ROW_TEXT_COLUMNS}, got {sorted(unknown)}")
        table = details.table
        empty = [None] * len(details)

        def column(name: str) -> list:
            if name in columns and name in table.column_names:
                return table[name].to_pylist()
            return empty

        texts = [
            row_text(caption, tags, metadata)
            for caption, tags, metadata in zip(
                column("caption"), column("tags"), column("metadata"), strict=True
            )
        ]
        if searcher_rows is not None:
            ordered = [""] * len(texts)
            for row, text in zip(searcher_rows.tolist(), texts, strict=True):
                ordered[row] = text
            texts = ordered
        return cls.from_texts(texts)

    def __len__(self) -> int:
        return len(self.keywords)


logger = logging.getLogger(__name__)


class LazyHybridIndex:
    """A version's ``HybridIndex``, built on the first hybrid query rather than at load.

    Building tokenises every row's text (~60 s per million rows on one core,
    ``benchmarks/results/hybrid.md``): a cost every reload would pay before serving, although
    most servers never see ``mode=hybrid``. Built once under a lock, then shared.
    """

    def __init__(self, details: ImageDetails, searcher_rows: np.ndarray | None) -> None:
        self._details, self._searcher_rows = details, searcher_rows
        self._lock = threading.Lock()
        self._built: HybridIndex | None = None

    def get(self) -> HybridIndex:
        with self._lock:
            if self._built is None:
                started = time.perf_counter()
                self._built = HybridIndex.from_details(self._details, self._searcher_rows)
                logger.info("keyword index of %d rows built in %.1f s", len(self._built),
                            time.perf_counter() - started)  # fmt: skip
            return self._built


class ServedIndex(Protocol):
    """What hybrid search reads of an ``IndexBundle`` (kept structural: no import of it)."""

    @property
    def images(self) -> ImageSearcher: ...

    @property
    def text(self) -> TextSearcher | None: ...


@dataclasses.dataclass(frozen=True)
class Candidates:
    """One query's candidate rows with both raw parts (searcher rows, candidate order)."""

    rows: np.ndarray  # int64
    cosine: np.ndarray | None  # float32 joint-space cosine; None: the vector part is off
    bm25: np.ndarray  # float32
    terms: list[str]  # the query's content words
    vector_off: str | None = None  # why there is no vector part (keywords alone rank)


@dataclasses.dataclass(frozen=True)
class HybridFound:
    """Hits (best first) with one ``why`` each, and the query's echo: ``mixed_search.Found``'s
    shape, so ``serving.queries.combined_query`` pages it."""

    query: dict
    hits: list[SearchHit]
    whys: list[dict]


def check_weight(weight: float) -> float:
    """A keyword weight in [0, 1], or QueryError 400."""
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise QueryError(400, f"hybrid weight must be a number in [0, 1], got {weight!r}") from None
    if not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise QueryError(400, f"hybrid weight must be in [0, 1], got {weight}")
    return weight


def normalized_parts(
    cosine: np.ndarray | None, bm25: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray]:
    """Both parts on 0..1 over the candidates: cosine min-max scaled, BM25 / its maximum.

    All candidates equal in cosine -> all 1 (none is worse than another).
    """
    best = float(bm25.max()) if bm25.size else 0.0
    keyword = (bm25 / best if best > 0 else np.zeros_like(bm25)).astype(np.float32)
    if cosine is None:
        return None, keyword
    low, high = (float(cosine.min()), float(cosine.max())) if cosine.size else (0.0, 0.0)
    if high - low <= 1e-12:
        return np.ones_like(cosine, dtype=np.float32), keyword
    return ((cosine - low) / (high - low)).astype(np.float32), keyword


def fuse(vector: np.ndarray | None, keyword: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - w) * vector + w * keyword``; keywords alone without a vector part."""
    if vector is None:
        return keyword
    return ((1.0 - weight) * vector + weight * keyword).astype(np.float32)


def fused_order(fused: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of the candidates, best fused score first, ties by lower searcher row."""
    return np.lexsort((rows, -fused))


def _query_vector(text: TextSearcher, query: str) -> np.ndarray | None:
    """The query's unit vector in the search space, or None when no word of it is known."""
    features = text.text_encoder.encode([query])
    if not np.any(features):
        return None
    return l2_normalize(np.asarray(text.joint.embed_text_features(features), np.float32))


def candidate_scores(
    bundle: ServedIndex,
    keywords: HybridIndex,
    query: str,
    candidates: int = DEFAULT_CANDIDATES,
    allowed: np.ndarray | None = None,
) -> Candidates:
    """The union of the vector and BM25 top ``candidates``, each scored exactly on both parts.

    QueryError 400 for an empty query or one neither part can place.
    """
    query = query.strip()
    if not query:
        raise QueryError(400, "empty text query")
    if len(keywords) != len(bundle.images):
        raise ValueError(
            f"the keyword index has {len(keywords)} rows, the searcher {len(bundle.images)}"
        )
    terms = tokenize([query])[0]
    all_bm25 = keywords.keywords.scores(terms)
    bm25_rows, _ = keywords.keywords.top_k(terms, candidates, allowed, scores=all_bm25)
    text, vector, vector_off = bundle.text, None, None
    if text is None:
        vector_off = "no joint model on this server"
    else:
        vector = _query_vector(text, query)
        if vector is None:
            encoder = text.text_encoder.encoder_id
            vector_off = f"no word of {query!r} is known to text encoder {encoder}"
    vector_rows: list[int] = []
    if vector is not None:
        hits = text.search_embedded(vector, candidates, allowed)[0]
        vector_rows = [bundle.images.row_of(hit.image_id) for hit in hits]
    rows = np.asarray(list(dict.fromkeys([*vector_rows, *bm25_rows.tolist()])), dtype=np.int64)
    if not rows.size:
        if vector is None:
            rows_meant = "no row's text" if allowed is None else "no filtered row's text"
            raise QueryError(400, f"{vector_off}, and {rows_meant} holds any of its words")
        return Candidates(rows, np.zeros(0, np.float32), np.zeros(0, np.float32), terms)
    bm25 = all_bm25[rows]
    if vector is None:
        return Candidates(rows, None, bm25, terms, vector_off)
    cosine = (image_vectors(text, rows.tolist()) @ vector[0]).astype(np.float32)
    return Candidates(rows, cosine, bm25, terms)


def hybrid_search(
    bundle: ServedIndex,
    query: str,
    n: int,
    weight: float | None = None,
    *,
    keywords: HybridIndex | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    allowed: np.ndarray | None = None,
) -> HybridFound:
    """The top ``n`` by hybrid score, each with a ``why`` giving both parts.

    ``weight``: the keyword share in [0, 1] (None: ``DEFAULT_HYBRID_WEIGHT``); 0 ranks the
    candidates by the joint model alone, 1 by BM25 alone. ``keywords``: the version's
    ``HybridIndex`` (default: ``bundle.keywords``, a ``LazyHybridIndex``). ``allowed``: a
    boolean mask over searcher rows (a metadata filter). QueryError 400 for an empty query, a
    weight outside [0, 1], or a query neither part can place.
    """
    weight = DEFAULT_HYBRID_WEIGHT if weight is None else check_weight(weight)
    if n < 0:
        raise QueryError(400, f"n must be >= 0, got {n}")
    if keywords is None:
        lazy = getattr(bundle, "keywords", None)
        keywords = lazy.get() if lazy is not None else None
    if keywords is None:
        raise QueryError(400, "hybrid search is not enabled for this index version")
    found = candidate_scores(bundle, keywords, query, max(candidates, n), allowed)
    vector, keyword = normalized_parts(found.cosine, found.bm25)
    fused = fuse(vector, keyword, weight)
    top = fused_order(fused, found.rows)[:n]
    rows = found.rows[top]
    matched = keywords.keywords.matched_terms(found.terms, rows)
    hits, whys = [], []
    for position, row, terms in zip(top.tolist(), rows.tolist(), matched, strict=True):
        hits.append(bundle.images.hit_for_row(row, float(fused[position])))
        why: dict[str, Any] = {
            "match": "hybrid",
            "vector": None if vector is None else round(float(vector[position]), 4),
            "keyword": round(float(keyword[position]), 4),
            "weight": weight,
            "matched_terms": [
                {"term": term, "score": round(score, 4)} for term, score in terms.items()
            ],
            "cosine": None if found.cosine is None else round(float(found.cosine[position]), 4),
            "bm25": round(float(found.bm25[position]), 4),
            "vector_off": found.vector_off,  # why "vector" is None (keywords alone rank)
        }
        whys.append(why)
    echo = {"text": query.strip(), "mode": "hybrid", "hybrid_weight": weight,
            "terms": found.terms, "candidates": len(found.rows)}  # fmt: skip
    return HybridFound(echo, hits, whys)


def rank_candidates(found: Candidates, weights: Iterable[float]) -> dict[float, np.ndarray]:
    """Per weight, the candidates' searcher rows in hybrid order (for sweeps: one
    ``candidate_scores`` call serves every weight)."""
    vector, keyword = normalized_parts(found.cosine, found.bm25)
    return {
        float(w): found.rows[fused_order(fuse(vector, keyword, float(w)), found.rows)]
        for w in weights
    }
