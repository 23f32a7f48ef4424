"""Okapi BM25 as a sparse matrix of precomputed term weights: keyword scores in milliseconds.

``BM25Index.build(documents)`` takes tokenised documents (lists of words; the caller tokenises,
serving uses ``encoders.text_match.content_words``) and stores, for every (document, term) pair
that occurs, its whole BM25 term weight

    idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))

in a ``scipy.sparse`` CSC matrix (documents x vocabulary). A query's scores are then the sum of
its terms' columns: a few column slices and adds, no per-document Python. The formula is
``rank_bm25.BM25Okapi``'s (the scorer ``encoders.text_match.BM25Scorer`` wraps), idf floor
included: ``idf(t) = ln(N - df + 0.5) - ln(df + 0.5)``, and a term in more than half of the
documents (negative idf) gets ``epsilon * mean idf`` instead. A query term counts as often as
it is repeated, as there. Differences, all where rank_bm25 has no answer: an empty corpus, or one
whose documents are all empty, scores every query 0 (rank_bm25 divides by zero), and so does an
empty document when b = 1 (rank_bm25: 0/0, NaN); weights are stored and summed in float32
(rank_bm25: float64; the scores agree within ~1e-6 relative).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse

DEFAULT_K1 = 1.5  # rank_bm25's defaults (and encoders.text_match.BM25Scorer's)
DEFAULT_B = 0.75
DEFAULT_EPSILON = 0.25


@dataclasses.dataclass(frozen=True)
class BM25Index:
    """Precomputed BM25 weights; ``weights[d, t]`` is term ``t``'s score in document ``d``.

    Build it with ``build``. A stored entry means the document contains the term, even where
    the weight is 0 (a term in exactly half of the documents has idf 0).
    """

    weights: scipy.sparse.csc_matrix  # (documents, terms) float32, sorted row indices
    vocabulary: dict[str, int]
    idf: np.ndarray  # (terms,) float64, after the floor
    document_lengths: np.ndarray  # (documents,) int64: tokens per document
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    epsilon: float = DEFAULT_EPSILON

    @classmethod
    def build(
        cls,
        documents: Iterable[Sequence[str]],
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        epsilon: float = DEFAULT_EPSILON,
    ) -> BM25Index:
        """Tokenised documents (one list of words each; empty lists allowed) -> the index."""
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        vocabulary: dict[str, int] = {}
        term_ids: list[int] = []
        lengths: list[int] = []
        for words in documents:
            if isinstance(words, str):
                raise ValueError("documents must be lists of words: tokenise them first")
            term_ids.extend(vocabulary.setdefault(w, len(vocabulary)) for w in words)
            lengths.append(len(words))
        n_docs, n_terms = len(lengths), len(vocabulary)
        document_lengths = np.asarray(lengths, dtype=np.int64)
        terms = np.asarray(term_ids, dtype=np.int64)
        docs = np.repeat(np.arange(n_docs, dtype=np.int64), document_lengths)
        # One key per token, term-major: unique keys come out sorted by term then document,
        # which is CSC order (columns = terms, row indices sorted within each column).
        keys, tf = np.unique(terms * max(n_docs, 1) + docs, return_counts=True)
        entry_terms, entry_docs = keys // max(n_docs, 1), keys % max(n_docs, 1)
        df = np.bincount(entry_terms, minlength=n_terms)
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        if n_terms:
            # rank_bm25's floor: the mean idf is taken before negative idfs are replaced.
            idf = np.where(idf < 0, epsilon * idf.mean(), idf)
        total = int(document_lengths.sum())
        data = np.zeros(len(keys), dtype=np.float64)
        if total:
            avgdl = total / n_docs
            norm = k1 * (1 - b + b * document_lengths[entry_docs] / avgdl)
            data = idf[entry_terms] * tf * (k1 + 1) / (tf + norm)
        indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        weights = scipy.sparse.csc_matrix(
            (data.astype(np.float32), entry_docs.astype(np.int32), indptr),
            shape=(n_docs, n_terms),
        )
        weights.has_sorted_indices = True  # np.unique sorted them: skip scipy's check
        return cls(weights, vocabulary, idf, document_lengths, k1, b, epsilon)

    def __len__(self) -> int:
        return self.weights.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (weights, row indices, column pointers, idf, lengths)."""
        w = self.weights
        arrays = (w.data, w.indices, w.indptr, self.idf, self.document_lengths)
        return int(sum(a.nbytes for a in arrays))

    def _query_terms(self, query_tokens: Sequence[str]) -> list[tuple[str, int, int]]:
        """(word, column, times repeated) of each distinct query word the vocabulary has."""
        if isinstance(query_tokens, str):
            raise ValueError("the query must be a list of words: tokenise it first")
        counts: dict[str, int] = {}
        for word in query_tokens:
            if word in self.vocabulary:
                counts[word] = counts.get(word, 0) + 1
        return [(word, self.vocabulary[word], repeats) for word, repeats in counts.items()]

    def _column(self, column: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.weights
        start, end = w.indptr[column], w.indptr[column + 1]
        return w.indices[start:end], w.data[start:end]

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """``(N,)`` float32 BM25 scores of every document (0 where no query term occurs)."""
        terms = self._query_terms(query_tokens)
        if not terms or not len(self):
            return np.zeros(len(self), dtype=np.float32)
        columns = np.asarray([column for _, column, _ in terms], dtype=np.int64)
        repeats = np.asarray([r for _, _, r in terms], dtype=np.float32)
        order = np.argsort(columns)
        # The query's columns times their repeats: one sparse mat-vec (a C loop over only those
        # columns' entries) instead of a NumPy add per term.
        return np.asarray(self.weights[:, columns[order]] @ repeats[order], dtype=np.float32)

    def top_k(
        self,
        query_tokens: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        *,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best-scoring documents -> ``(rows int64, scores float32)``, best first.

        Ties go to the lower row. Only documents with a non-zero score count: fewer than ``k``
        come back when fewer score (a document with no query term never does, nor one whose
        query terms all weigh 0: a term in exactly half of the documents has idf 0).
        ``allowed``: a boolean mask over the documents. ``scores``: ``scores(query_tokens)``
        when the caller has it already (saves computing it again).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        terms = self._query_terms(query_tokens)
        if not k or not terms:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if scores is None:
            scores = self.scores(query_tokens)
        if allowed is not None:
            scores = np.where(np.asarray(allowed, dtype=bool), scores, np.float32(0))
        bound = self._kth_score_bound(scores, [column for _, column, _ in terms], k)
        rows = np.flatnonzero(scores >= bound) if bound > 0 else np.flatnonzero(scores)
        if len(rows) > k:
            # Keep every row tied with the k-th score, so ties resolve by row below.
            kth = np.partition(scores[rows], len(rows) - k)[len(rows) - k]
            rows = rows[scores[rows] >= kth]
        rows = rows[np.lexsort((rows, -scores[rows]))[:k]]
        return rows.astype(np.int64), scores[rows]

    def _kth_score_bound(self, scores: np.ndarray, columns: list[int], k: int) -> float:
        """A score at most the ``k``-th best non-zero one (0 when none is found cheaply).

        The ``k``-th best score of any subset of the documents is at most the ``k``-th best of
        all; the documents holding the query's rarest terms are a small subset, so the rows
        scoring at least this bound are few and are found in one pass over ``scores``.
        """
        sizes = np.diff(self.weights.indptr)
        picked, total = [], 0
        for column in sorted(columns, key=lambda c: sizes[c]):
            picked.append(self._column(column)[0])
            total += int(sizes[column])
            if total >= 4 * k:
                break
        if total < k:
            return 0.0
        values = scores[np.unique(np.concatenate(picked))]
        values = values[values != 0]
        if len(values) < k:
            return 0.0
        return float(np.partition(values, len(values) - k)[len(values) - k])

    def matched_terms(self, query_tokens: Sequence[str], rows: Sequence[int]) -> list[dict]:
        """Per row, ``{term: its BM25 contribution}`` of the query terms the document holds.

        Contributions include repeats (a term twice in the query counts twice) and add up to
        the row's score; terms are in query order.
        """
        rows = np.asarray(rows, dtype=np.int64)
        found: list[dict] = [{} for _ in range(len(rows))]
        for word, column, repeats in self._query_terms(query_tokens):
            doc_rows, data = self._column(column)
            at = np.minimum(np.searchsorted(doc_rows, rows), len(doc_rows) - 1)
            for i in np.flatnonzero(doc_rows[at] == rows):  # every column holds >= 1 row
                found[i][word] = float(data[at[i]]) * repeats
        return found
