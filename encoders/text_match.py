"""Query -> document scores over short texts (generated captions): the course's baselines.

Every scorer is fitted on the documents and returns a ``(Q, N)`` matrix, higher is better;
``make_caption_scorer`` takes several documents per image (the beams of its caption search) and
scores an image by its best-matching one:

* ``JaccardScorer``: |query words & caption words| / |union| (sets of content words).
* ``BM25Scorer``: Okapi BM25 from the ``rank-bm25`` package (k1 1.5, b 0.75).
* ``VectorScorer``: any ``TextEncoder`` (TF-IDF, averaged GloVe, MiniLM) on both sides, cosine.

Words come from ``encoders.text_tokenize`` (the tokenizer every text encoder shares).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoders.base import TextEncoder, l2_normalize
from encoders.tag_match import FUNCTION_WORDS
from encoders.text_tokenize import tokenize_words


def content_words(texts: Sequence[str]) -> list[list[str]]:
    """Tokenised texts without function words (they match every caption: "a", "the")."""
    return [[w for w in words if w not in FUNCTION_WORDS] for words in tokenize_words(texts)]


class JaccardScorer:
    """Jaccard similarity of word sets: the simplest caption-matching baseline."""

    def __init__(self, documents: Sequence[str]) -> None:
        self.vocabulary: dict[str, int] = {}
        rows, cols = [], []
        for n, words in enumerate(content_words(documents)):
            for word in set(words):
                rows.append(n)
                cols.append(self.vocabulary.setdefault(word, len(self.vocabulary)))
        self.matrix = np.zeros((len(documents), len(self.vocabulary)), dtype=np.float32)
        self.matrix[rows, cols] = 1.0
        self.sizes = self.matrix.sum(axis=1)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        query_matrix = np.zeros((len(queries), len(self.vocabulary)), dtype=np.float32)
        query_sizes = np.zeros(len(queries), dtype=np.float32)
        for q, words in enumerate(content_words(queries)):
            distinct = set(words)
            query_sizes[q] = len(distinct)  # words unknown to every caption still count
            known = [self.vocabulary[w] for w in distinct if w in self.vocabulary]
            query_matrix[q, known] = 1.0
        intersection = query_matrix @ self.matrix.T
        union = query_sizes[:, None] + self.sizes[None, :] - intersection
        return np.divide(
            intersection, union, out=np.zeros_like(intersection), where=union > 0
        ).astype(np.float32)


class BM25Scorer:
    """Okapi BM25 (``rank_bm25.BM25Okapi``) over the documents' content words."""

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        from rank_bm25 import BM25Okapi

        corpus = content_words(documents)
        # rank_bm25 divides by the mean document length: an all-empty corpus has none.
        self.empty = not any(corpus)
        self.size = len(documents)
        self.bm25 = None if self.empty else BM25Okapi(corpus, k1=k1, b=b)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        scores = np.zeros((len(queries), self.size), dtype=np.float32)
        if self.bm25 is None:
            return scores
        for q, words in enumerate(content_words(queries)):
            if words:
                scores[q] = self.bm25.get_scores(words)
        return scores


class VectorScorer:
    """Cosine between a text encoder's query and document vectors."""

    def __init__(self, encoder: TextEncoder, documents: Sequence[str]) -> None:
        self.encoder = encoder
        self.documents = l2_normalize(np.asarray(encoder.encode(list(documents)), np.float32))

    def score(self, queries: Sequence[str]) -> np.ndarray:
        vectors = l2_normalize(np.asarray(self.encoder.encode(list(queries)), np.float32))
        return vectors @ self.documents.T


CAPTION_METHODS = (
    "caption-jaccard",
    "caption-bm25",
    "caption-tfidf",
    "caption-glove",
    "caption-minilm",
)


def make_caption_scorer(name: str, documents: Sequence[str | Sequence[str]]):
    """The named caption-matching method fitted on ``documents`` -> its ``score`` function.

    ``documents`` has one entry per image: a caption, or a list of them (best first). An image
    scores as its best-matching caption (the max over its own): through ``imgsearch eval`` on
    Flickr8k dev (the 12-minute captioner, beam 3) the distinct beams raise text->image R@10
    over the top beam alone from 0.285 to 0.301 with caption-minilm and from 0.178 to 0.199
    with caption-bm25; one document of the beams joined gained BM25 nothing (measured
    offline). The word statistics (IDF, BM25's lengths) are of the captions, not of images.
    ``caption-minilm`` raises FileNotFoundError/ImportError when MiniLM is not installed.
    """
    groups = [[entry] if isinstance(entry, str) else list(entry) or [""] for entry in documents]
    flat = [caption for group in groups for caption in group]
    score = _flat_scorer(name, flat)
    if len(flat) == len(groups):
        return score
    starts = np.cumsum([0, *(len(group) for group in groups[:-1])])

    def best_of_each(queries: Sequence[str]) -> np.ndarray:
        return np.maximum.reduceat(score(queries), starts, axis=1)

    return best_of_each


def _flat_scorer(name: str, documents: list[str]):
    """One score column per document."""
    if name == "caption-jaccard":
        return JaccardScorer(documents).score
    if name == "caption-bm25":
        return BM25Scorer(documents).score
    if name == "caption-tfidf":
        from encoders.bow import TfidfEncoder

        return VectorScorer(TfidfEncoder.fit(documents, min_count=1), documents).score
    if name == "caption-glove":
        from encoders.glove import load_glove
        from encoders.word_vectors import MeanWordVectorEncoder

        return VectorScorer(MeanWordVectorEncoder(load_glove()), documents).score
    if name == "caption-minilm":
        from encoders.minilm import MiniLMEncoder

        return VectorScorer(MiniLMEncoder("auto"), documents).score
    raise ValueError(f"unknown caption method {name!r}; known: {CAPTION_METHODS}")
