"""Tag search: query words matched to image tags through word vectors ("puppy" finds "dog").

Dropbox's image search matched queries against classifier tags by word-vector similarity rather
than by spelling; this is that rule, with GloVe and the ImageNet head's labels:

    relevance(word, label) = max(0, max over the label's words v of cos(word, v)) ** SHARPNESS
    score(query, image)    = mean over the query's content words w of
                             max over the image's tags t of confidence(t) * relevance(w, t)

A label's words are every word of all its synonyms ("Maltese dog, Maltese terrier" -> maltese,
dog, terrier), so "dog" matches the Maltese exactly and "puppy" matches it through GloVe.
Function words ("a", "the", "on") are dropped from queries: they are close to every label in
GloVe space and would rank images by noise. The sharpening keeps weak, generic similarities
(cos ~0.3 between most nouns) from outweighing a real match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encoders.base import l2_normalize
from encoders.glove import WordVectors
from encoders.text_tokenize import tokenize_words

SHARPNESS = 3.0
# Closed-class English words: never content, whatever the query.
FUNCTION_WORDS = frozenset(
    "a an the and or but of in on at to for with by from into onto over under near next "
    "is are was were be been being it its this that these those there their his her he she "
    "they them some two three four five one while as up down out off his 's".split()
)


# ImageNet's classes are WordNet leaves: its 118 dog breeds never say "dog" and its domestic
# cats say "cat" only sometimes. These class ranges (ImageNet's WordNet order, in a 1001-class
# head with "background" first) get their hypernym as one more term, checked by their end labels
# so that another head is left alone.
IMAGENET_HYPERNYMS = (
    (152, 269, "Chihuahua", "Mexican hairless", "dog"),
    (282, 286, "tabby", "Egyptian cat", "cat"),
)


def label_terms(synonyms: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """Display label -> the texts it is matched by: each synonym as a phrase, each synonym's
    head noun (its last word), and an ImageNet hypernym where one applies.

    Phrases and head nouns, not every word: "golden retriever" should match "dog" through
    "retriever", not "yellow" or "necklace" through "golden".
    """
    terms: dict[str, list[str]] = {}
    for names in synonyms:
        found = terms.setdefault(names[0], [])
        for name in names:
            for text in (name, name.split()[-1]):
                if text not in found:
                    found.append(text)
    for first, last, first_label, last_label, hypernym in IMAGENET_HYPERNYMS:
        if len(synonyms) > last and synonyms[first][0] == first_label:
            if synonyms[last][0] == last_label:
                for names in synonyms[first : last + 1]:
                    terms[names[0]].append(hypernym)
    return terms


class TagMatcher:
    """Scores images' tag lists against text queries through word vectors.

    ``synonyms`` are the tag vocabulary's names per class (``TagHead.synonyms``: display label
    first); a tag whose label is not in it (another head) is matched by its own words.
    """

    def __init__(self, vectors: WordVectors, synonyms: Sequence[Sequence[str]] = ()) -> None:
        self.vectors = vectors
        self._terms = label_terms(synonyms)
        self._label_matrix: dict[str, np.ndarray] = {}

    def _term_vector(self, text: str) -> np.ndarray | None:
        words = self.vectors.known_tokens(tokenize_words([text])[0])
        if not words:
            return None
        return np.mean([self.vectors[w] for w in words], axis=0)

    def _label_vectors(self, label: str) -> np.ndarray:
        """Unit vectors of a label's terms, ``(t, dim)`` (a zero row: nothing known)."""
        cached = self._label_matrix.get(label)
        if cached is None:
            vectors = [self._term_vector(t) for t in self._terms.get(label, [label])]
            vectors = [v for v in vectors if v is not None]
            if vectors:
                cached = l2_normalize(np.stack(vectors).astype(np.float32))
            else:
                cached = np.zeros((1, self.vectors.dim), dtype=np.float32)
            self._label_matrix[label] = cached
        return cached

    def query_words(self, query: str) -> list[str]:
        """The query's content words that have a vector."""
        tokens = [t for t in tokenize_words([query])[0] if t not in FUNCTION_WORDS]
        return self.vectors.known_tokens(tokens)

    def _vocabulary_matrix(self, vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every label's word vectors stacked ``(M, dim)``, and where each label's rows start."""
        blocks = [self._label_vectors(label) for label in vocabulary]
        starts = np.cumsum([0] + [len(block) for block in blocks[:-1]])
        return np.concatenate(blocks), starts

    def relevance_matrix(self, words: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
        """``(len(words), len(vocabulary))`` relevance of each label to each word, in [0, 1]."""
        if not words or not vocabulary:
            return np.zeros((len(words), len(vocabulary)), dtype=np.float32)
        matrix, starts = self._vocabulary_matrix(vocabulary)
        query = l2_normalize(np.stack([self.vectors[w] for w in words]))
        cos = np.maximum.reduceat(query @ matrix.T, starts, axis=1)  # best word of each label
        return np.clip(cos, 0.0, 1.0) ** SHARPNESS

    def score(
        self, queries: Sequence[str], image_tags: Sequence[Sequence[tuple[str, float]]]
    ) -> np.ndarray:
        """``(Q, N)`` scores of every query against every image's ``(label, confidence)`` tags.

        A query with no content word scores 0 everywhere (nothing to match), never NaN.
        """
        vocabulary, confidence = self._prepare(image_tags)
        query_words = [self.query_words(query) for query in queries]
        distinct = sorted({word for words in query_words for word in words})
        word_row = {word: i for i, word in enumerate(distinct)}
        relevance = self.relevance_matrix(distinct, vocabulary)  # (distinct words, labels)
        # Best tag of each image for each distinct word: (words, N), computed once.
        best = np.zeros((len(distinct), len(image_tags)), dtype=np.float32)
        for i in range(len(distinct)):
            best[i] = (confidence * relevance[i]).max(axis=1) if vocabulary else 0.0
        scores = np.zeros((len(queries), len(image_tags)), dtype=np.float32)
        for q, words in enumerate(query_words):
            if words:
                scores[q] = best[[word_row[w] for w in words]].mean(axis=0)
        return scores

    def _prepare(self, image_tags: Sequence[Sequence[tuple[str, float]]]):
        """The tag vocabulary and the ``(N, labels)`` confidence matrix, kept for the last
        ``image_tags`` object: serving scores every query against the same index."""
        cached = getattr(self, "_prepared", None)
        if cached is not None and cached[0] is image_tags:
            return cached[1], cached[2]
        vocabulary = sorted({label for tags in image_tags for label, _ in tags})
        column = {label: i for i, label in enumerate(vocabulary)}
        # Confidence of each (image, label) pair: images share the label's word relevance.
        confidence = np.zeros((len(image_tags), len(vocabulary)), dtype=np.float32)
        for n, tags in enumerate(image_tags):
            for label, value in tags:
                confidence[n, column[label]] = max(confidence[n, column[label]], value)
        self._prepared = (image_tags, vocabulary, confidence)
        return vocabulary, confidence

    def explain(self, query: str, tags: Sequence[tuple[str, float]]) -> list[dict[str, object]]:
        """Which tag matched each query word (and how much), for "why did this match"."""
        words = self.query_words(query)
        labels = [label for label, _ in tags]
        relevance = self.relevance_matrix(words, labels)
        parts = []
        for i, word in enumerate(words):
            if not labels:
                break
            weighted = relevance[i] * np.asarray([value for _, value in tags])
            j = int(weighted.argmax())
            if weighted[j] > 0:
                parts.append(
                    {"word": word, "tag": labels[j], "score": round(float(weighted[j]), 4)}
                )
        return parts
