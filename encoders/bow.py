"""Bag-of-words and TF-IDF text encoders over a vocabulary fitted on a caption corpus.

A vector has one dimension per vocabulary word (a few thousand for Flickr8k captions), so
``encode`` returns dense float32 rows for ordinary batches and ``transform_sparse`` a SciPy CSR
matrix for large ones. Both are L2-normalised; a text with no vocabulary word is a zero row.

Fitting counts words once (``CorpusStatistics``); ``encoders.word_vectors`` reuses the same
statistics for its IDF and SIF weights. Both write their files through
``encoders.text_artifacts``.

Artifact layout (a directory, written file by file through temporary names, ``config.json``
last, so a directory with a ``config.json`` is complete)::

    vocabulary.tsv   token <TAB> corpus count <TAB> document frequency, one word per line
    idf.npy          float64 smoothed IDF per vocabulary word (TF-IDF only)
    config.json      kind, fitting parameters, tokenizer version, version
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse

from encoders.base import TextEncoder
from encoders.text_artifacts import (
    FORMAT_VERSION,
    check_artifact_version,
    content_version,
    npy_bytes,
    read_artifact_config,
    write_artifact,
)
from encoders.text_tokenize import WORD_TOKENIZER_VERSION, check_texts, tokenize_words

logger = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.tsv"
IDF_FILE = "idf.npy"


@dataclasses.dataclass(frozen=True)
class CorpusStatistics:
    """Word counts fitted on a corpus: what every vocabulary-based encoder is built from.

    ``tokens`` are ordered by descending corpus count, ties by the token itself, so fitting the
    same corpus always gives the same vocabulary and dimension order.
    """

    tokens: tuple[str, ...]
    counts: np.ndarray  # int64, occurrences of each token in the corpus
    document_frequencies: np.ndarray  # int64, number of texts containing each token
    n_documents: int
    n_tokens: int  # all token occurrences in the corpus, including words cut by min_count

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.counts) == len(self.document_frequencies)):
            raise ValueError("tokens, counts and document_frequencies differ in length")

    @classmethod
    def from_tokenized(
        cls,
        tokenized: Sequence[Sequence[str]],
        min_count: int = 1,
        max_vocab: int | None = None,
    ) -> CorpusStatistics:
        """Count tokens in already tokenized texts; keep words seen ``min_count`` times or more,
        at most the ``max_vocab`` most frequent. ValueError if no word is left."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        if max_vocab is not None and max_vocab < 1:
            raise ValueError(f"max_vocab must be at least 1 or None, got {max_vocab}")
        counts: Counter[str] = Counter()
        document_frequencies: Counter[str] = Counter()
        for tokens in tokenized:
            counts.update(tokens)
            document_frequencies.update(set(tokens))
        kept = sorted(
            (token for token, count in counts.items() if count >= min_count),
            key=lambda token: (-counts[token], token),
        )[:max_vocab]
        if not kept:
            raise ValueError(
                f"no word occurs at least {min_count} times in {len(tokenized)} texts; "
                "fit on more texts or lower min_count"
            )
        return cls(
            tokens=tuple(kept),
            counts=np.array([counts[token] for token in kept], dtype=np.int64),
            document_frequencies=np.array(
                [document_frequencies[token] for token in kept], dtype=np.int64
            ),
            n_documents=len(tokenized),
            n_tokens=sum(counts.values()),
        )

    def to_tsv(self) -> str:
        """The ``vocabulary.tsv`` text (tokens never contain tabs or newlines: the tokenizer
        splits on whitespace)."""
        rows = zip(
            self.tokens, self.counts.tolist(), self.document_frequencies.tolist(), strict=True
        )
        return "".join(f"{token}\t{count}\t{df}\n" for token, count, df in rows)

    @classmethod
    def from_tsv(cls, text: str, n_documents: int, n_tokens: int) -> CorpusStatistics:
        """Inverse of ``to_tsv`` (the two totals come from ``config.json``)."""
        tokens, counts, dfs = [], [], []
        for line_number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) != 3:
                raise ValueError(f"{VOCABULARY_FILE} line {line_number}: expected 3 fields")
            tokens.append(fields[0])
            counts.append(int(fields[1]))
            dfs.append(int(fields[2]))
        return cls(
            tokens=tuple(tokens),
            counts=np.array(counts, dtype=np.int64),
            document_frequencies=np.array(dfs, dtype=np.int64),
            n_documents=n_documents,
            n_tokens=n_tokens,
        )


def smoothed_idf(document_frequencies: np.ndarray, n_documents: int) -> np.ndarray:
    """``ln((1 + n) / (1 + df)) + 1`` (scikit-learn's smooth_idf): as if one extra document held
    every word, so no weight is infinite and a word seen everywhere still weighs 1.

    A word never seen while fitting (df = 0) gets the largest value, ``ln(1 + n) + 1``.
    """
    document_frequencies = np.asarray(document_frequencies, dtype=np.float64)
    return np.log((1.0 + n_documents) / (1.0 + document_frequencies)) + 1.0


def term_matrix(
    tokenized: Sequence[Sequence[str]], index: Mapping[str, int], dim: int
) -> scipy.sparse.csr_matrix:
    """Raw term counts, ``(N, dim)`` float32 CSR; tokens missing from ``index`` are skipped."""
    rows: list[int] = []
    columns: list[int] = []
    for row, tokens in enumerate(tokenized):
        for token in tokens:
            column = index.get(token)
            if column is not None:
                rows.append(row)
                columns.append(column)
    values = np.ones(len(rows), dtype=np.float32)
    # Duplicate (row, column) pairs are summed when converting, which is the counting.
    matrix = scipy.sparse.coo_matrix((values, (rows, columns)), shape=(len(tokenized), dim))
    return matrix.tocsr()


def normalize_rows(matrix: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """Scale each row of a CSR matrix to unit L2 norm; all-zero rows stay zero."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1), dtype=np.float64)).ravel()
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return scipy.sparse.diags(scale.astype(np.float32)) @ matrix


class _VocabularyEncoder(TextEncoder):
    """Shared by the two encoders: tokenize, count vocabulary words, weight, L2-normalise."""

    name: ClassVar[str]

    def __init__(self, statistics: CorpusStatistics, sublinear_tf: bool = False) -> None:
        self.statistics = statistics
        self.sublinear_tf = sublinear_tf
        self.vocabulary = statistics.tokens
        self.dim = len(statistics.tokens)
        self._index = {token: column for column, token in enumerate(statistics.tokens)}
        self._fit_options: dict[str, Any] = {}
        # Hashes what changes vectors: the settings, then the files the artifact saves.
        settings = {
            "kind": self.name,
            "sublinear_tf": sublinear_tf,
            "tokenizer": WORD_TOKENIZER_VERSION,
        }
        self.version = content_version(
            [json.dumps(settings, sort_keys=True).encode("utf-8"), *self._files().values()]
        )

    def _term_weights(self) -> np.ndarray | None:
        """Per-word multipliers applied after term frequency (None: all ones)."""
        return None

    def _files(self) -> dict[str, bytes]:
        """The artifact's data files, name -> bytes."""
        return {VOCABULARY_FILE: self.statistics.to_tsv().encode("utf-8")}

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        min_count: int = 2,
        max_vocab: int | None = None,
        sublinear_tf: bool = False,
    ) -> Self:
        """Fit the vocabulary (and IDF) on ``texts``, e.g. the training captions.

        Keeps words seen at least ``min_count`` times (default 2: one-off typos and names would
        otherwise make most of the dimensions), at most the ``max_vocab`` most frequent.
        ``sublinear_tf`` uses ``1 + ln(tf)`` instead of the raw count.
        """
        texts = check_texts(texts)
        statistics = CorpusStatistics.from_tokenized(tokenize_words(texts), min_count, max_vocab)
        encoder = cls(statistics, sublinear_tf=sublinear_tf)
        encoder._fit_options = {"min_count": min_count, "max_vocab": max_vocab}
        logger.info(
            "fitted %s on %d texts: %d words (min_count=%d)",
            encoder.encoder_id,
            len(texts),
            encoder.dim,
            min_count,
        )
        return encoder

    def transform_sparse(self, texts: Sequence[str]) -> scipy.sparse.csr_matrix:
        """``N`` strings -> ``(N, dim)`` float32 CSR with unit (or zero) rows."""
        matrix = term_matrix(tokenize_words(texts), self._index, self.dim)
        if self.sublinear_tf:
            matrix.data = (1.0 + np.log(matrix.data)).astype(np.float32)
        weights = self._term_weights()
        if weights is not None:
            matrix = matrix @ scipy.sparse.diags(weights.astype(np.float32))
        return normalize_rows(matrix.tocsr()).astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32 unit rows (zero rows: no vocabulary word)."""
        return self.transform_sparse(texts).toarray()

    def save(self, out_dir: str | Path) -> Path:
        """Write the artifact (vocabulary, IDF, config) to ``out_dir``; -> ``out_dir``."""
        config = {
            "kind": self.name,
            "format": FORMAT_VERSION,
            "tokenizer": WORD_TOKENIZER_VERSION,
            "sublinear_tf": self.sublinear_tf,
            "n_documents": self.statistics.n_documents,
            "n_tokens": self.statistics.n_tokens,
            "dim": self.dim,
            "version": self.version,
            **self._fit_options,
        }
        return write_artifact(out_dir, self._files(), config)

    @classmethod
    def load(cls, artifact_dir: str | Path) -> Self:
        """Rebuild the encoder saved in ``artifact_dir`` (same vectors, same version)."""
        config = read_artifact_config(artifact_dir, [cls.name])
        statistics = CorpusStatistics.from_tsv(
            (Path(artifact_dir) / VOCABULARY_FILE).read_text(encoding="utf-8"),
            n_documents=config["n_documents"],
            n_tokens=config["n_tokens"],
        )
        encoder = cls(statistics, sublinear_tf=config["sublinear_tf"])
        encoder._fit_options = {
            key: config[key] for key in ("min_count", "max_vocab") if key in config
        }
        check_artifact_version(artifact_dir, config, encoder.version)
        return encoder

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.encoder_id!r}, dim={self.dim})"


class BagOfWordsEncoder(_VocabularyEncoder):
    """Term counts (or ``1 + ln(count)``) over the fitted vocabulary, L2-normalised."""

    name = "bow"


class TfidfEncoder(_VocabularyEncoder):
    """Term frequency times smoothed IDF (``smoothed_idf``) over the fitted vocabulary,
    L2-normalised: words in every caption ("a", "the") count for little, rare ones for much."""

    name = "tfidf"

    def __init__(self, statistics: CorpusStatistics, sublinear_tf: bool = False) -> None:
        self.idf = smoothed_idf(statistics.document_frequencies, statistics.n_documents)
        super().__init__(statistics, sublinear_tf=sublinear_tf)

    def _term_weights(self) -> np.ndarray:
        return self.idf

    def _files(self) -> dict[str, bytes]:
        return {**super()._files(), IDF_FILE: npy_bytes(self.idf)}

    @classmethod
    def load(cls, artifact_dir: str | Path) -> Self:
        encoder = super().load(artifact_dir)
        saved = np.load(Path(artifact_dir) / IDF_FILE, allow_pickle=False)
        if not np.array_equal(saved, encoder.idf):
            raise ValueError(f"{artifact_dir}/{IDF_FILE} does not match its vocabulary counts")
        return encoder
