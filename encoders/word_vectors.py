"""Sentence embeddings as averages of GloVe word vectors: plain, IDF-weighted and SIF.

* ``MeanWordVectorEncoder``: the plain average of the vectors of a text's known words.
* ``WeightedWordVectorEncoder(weighting="idf")``: each word weighted by its smoothed IDF fitted
  on a caption corpus.
* ``WeightedWordVectorEncoder(weighting="sif")``: Arora, Liang & Ma (2017), "A simple but
  tough-to-beat baseline for sentence embeddings": weight ``a / (a + p(w))`` with word
  frequencies ``p(w)`` fitted on captions, then the projection on the first principal component
  of the fitting corpus' sentence vectors is removed.

All rows are L2-normalised. A text with no word in the GloVe vocabulary (empty, punctuation only,
all out of vocabulary) is a zero row, never NaN. Words are tokenised by
``encoders.text_tokenize`` (GloVe 6B's conventions); a hyphenated word GloVe lacks
("snow-covered") counts as its parts.

The vectors themselves (``WordVectors``) are found and read by ``encoders.glove``
(``load_glove``). Versions change with the vectors (a content fingerprint), the weights and
the rules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse

from encoders.base import TextEncoder, l2_normalize
from encoders.bow import VOCABULARY_FILE, CorpusStatistics, smoothed_idf
from encoders.glove import IN_MEMORY_SOURCE, WordVectors, load_glove
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

WEIGHTS_FILE = "weights.npy"
PRINCIPAL_COMPONENT_FILE = "principal_component.npy"
DEFAULT_SIF_A = 1e-3
WEIGHTINGS = ("idf", "sif")


def _weighted_sums(
    tokenized: Sequence[Sequence[str]], vectors: WordVectors, weight_of: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per text: the sum of ``weight_of(token) * vector`` over known tokens -> ``(N, dim)``
    float64, and the number of known tokens -> ``(N,)``.

    Only the rows of the tokens used are gathered (a product with the whole 400k-row matrix
    would copy it on every query); a sparse (texts x occurrences) matrix sums them per text.
    """
    rows: list[int] = []
    vector_rows: list[int] = []
    weights: list[float] = []
    counts = np.zeros(len(tokenized), dtype=np.float64)
    for row, tokens in enumerate(tokenized):
        known = vectors.known_tokens(tokens)
        counts[row] = len(known)
        for token in known:
            rows.append(row)
            vector_rows.append(vectors.index[token])
            weights.append(weight_of(token))
    gathered = vectors.vectors[np.asarray(vector_rows, dtype=np.int64)].astype(np.float64)
    occurrences = scipy.sparse.csr_matrix(
        (np.asarray(weights, dtype=np.float64), (rows, np.arange(len(rows)))),
        shape=(len(tokenized), len(rows)),
    )
    return np.asarray(occurrences @ gathered, dtype=np.float64), counts


def _average(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    # Rows without a known token stay exactly zero (0 / 1) rather than NaN (0 / 0).
    return sums / np.maximum(counts, 1.0)[:, None]


class MeanWordVectorEncoder(TextEncoder):
    """The plain average of a text's GloVe vectors, L2-normalised (no fitting needed)."""

    name = "glove_mean"

    def __init__(self, vectors: WordVectors) -> None:
        self.vectors = vectors
        self.dim = vectors.dim
        self.version = f"v{FORMAT_VERSION}-{WORD_TOKENIZER_VERSION}-{vectors.fingerprint[:12]}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32 unit rows (zero rows: no known word)."""
        sums, counts = _weighted_sums(tokenize_words(texts), self.vectors, lambda _: 1.0)
        return l2_normalize(_average(sums, counts))

    def __repr__(self) -> str:
        return f"MeanWordVectorEncoder({self.encoder_id!r}, source={self.vectors.source!r})"


class WeightedWordVectorEncoder(TextEncoder):
    """A weighted average of GloVe vectors with weights fitted on captions (IDF or SIF).

    ``word_weights`` holds the fitted weight of every word seen while fitting; other words get
    ``default_weight`` (the weight of a never-seen word: the largest IDF, or 1 for SIF).
    ``principal_component`` (SIF) is projected out of every vector before normalisation.
    """

    NAMES: ClassVar[dict[str, str]] = {"idf": "glove_idf", "sif": "glove_sif"}

    def __init__(
        self,
        vectors: WordVectors,
        statistics: CorpusStatistics,
        weighting: str,
        sif_a: float = DEFAULT_SIF_A,
        principal_component: np.ndarray | None = None,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if weighting == "sif" and not sif_a > 0:
            raise ValueError(f"sif_a must be positive, got {sif_a}")
        self.vectors = vectors
        self.statistics = statistics
        self.weighting = weighting
        self.sif_a = float(sif_a)
        self.name = self.NAMES[weighting]
        self.dim = vectors.dim
        if weighting == "idf":
            weights = smoothed_idf(statistics.document_frequencies, statistics.n_documents)
            self.default_weight = float(smoothed_idf(np.zeros(1), statistics.n_documents)[0])
        else:
            frequencies = statistics.counts / max(statistics.n_tokens, 1)
            weights = self.sif_a / (self.sif_a + frequencies)
            self.default_weight = 1.0
        self.weights = weights
        self.word_weights = dict(zip(statistics.tokens, weights.tolist(), strict=True))
        self.principal_component = (
            None
            if principal_component is None
            else np.asarray(principal_component, dtype=np.float64).reshape(self.dim)
        )
        self._fit_options: dict[str, Any] = {}
        self.version = content_version(
            [
                json.dumps(self._settings(), sort_keys=True).encode("utf-8"),
                *self._files().values(),
            ]
        )

    def _settings(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "weighting": self.weighting,
            "sif_a": self.sif_a,
            "tokenizer": WORD_TOKENIZER_VERSION,
            "glove_fingerprint": self.vectors.fingerprint,
        }

    def _files(self) -> dict[str, bytes]:
        files = {
            VOCABULARY_FILE: self.statistics.to_tsv().encode("utf-8"),
            WEIGHTS_FILE: npy_bytes(self.weights),
        }
        if self.principal_component is not None:
            files[PRINCIPAL_COMPONENT_FILE] = npy_bytes(self.principal_component)
        return files

    def _weighted_average(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` float64 weighted averages, before component removal and normalisation."""
        weight_of = self.word_weights.get
        default = self.default_weight
        sums, counts = _weighted_sums(
            tokenize_words(texts), self.vectors, lambda token: weight_of(token, default)
        )
        # Arora et al. divide by the number of words, not the sum of weights.
        return _average(sums, counts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32 unit rows (zero rows: no known word)."""
        averages = self._weighted_average(texts)
        if self.principal_component is not None:
            u = self.principal_component
            averages = averages - np.outer(averages @ u, u)
        return l2_normalize(averages)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        vectors: WordVectors,
        weighting: str = "sif",
        sif_a: float = DEFAULT_SIF_A,
        min_count: int = 1,
    ) -> Self:
        """Fit word statistics on ``texts`` (captions) and, for SIF, the principal component of
        their weighted averages. ``min_count`` drops rarer words from the fitted table (they then
        weigh as unseen words)."""
        texts = check_texts(texts)
        statistics = CorpusStatistics.from_tokenized(tokenize_words(texts), min_count=min_count)
        encoder = cls(vectors, statistics, weighting, sif_a=sif_a)
        if weighting == "sif":
            averages = encoder._weighted_average(texts)
            averages = averages[np.any(averages != 0.0, axis=1)]  # texts with no known word
            if len(averages) < 2:
                raise ValueError("SIF needs at least two fitting texts with known words")
            # First right singular vector of the uncentred matrix, as in Arora et al.'s code
            # (TruncatedSVD); its sign is fixed so refitting the same corpus gives the same bytes.
            component = np.linalg.svd(averages, full_matrices=False)[2][0]
            component *= np.sign(component[np.argmax(np.abs(component))])
            encoder = cls(
                vectors, statistics, weighting, sif_a=sif_a, principal_component=component
            )
        encoder._fit_options = {"min_count": min_count}
        logger.info(
            "fitted %s on %d texts: weights for %d words",
            encoder.encoder_id,
            len(texts),
            len(statistics.tokens),
        )
        return encoder

    def save(self, out_dir: str | Path) -> Path:
        """Write the artifact (word table, weights, component, config naming the GloVe source
        and its fingerprint) to ``out_dir``; -> ``out_dir``."""
        config = {
            "kind": self.name,
            "format": FORMAT_VERSION,
            "tokenizer": WORD_TOKENIZER_VERSION,
            "weighting": self.weighting,
            "sif_a": self.sif_a,
            "glove": {
                "source": self.vectors.source,
                "fingerprint": self.vectors.fingerprint,
                "words": len(self.vectors),
            },
            "n_documents": self.statistics.n_documents,
            "n_tokens": self.statistics.n_tokens,
            "dim": self.dim,
            "version": self.version,
            **self._fit_options,
        }
        return write_artifact(out_dir, self._files(), config)

    @classmethod
    def load(cls, artifact_dir: str | Path, vectors: WordVectors | None = None) -> Self:
        """Rebuild the encoder saved in ``artifact_dir``.

        GloVe is read from the source the artifact records unless ``vectors`` is given; either
        way the vectors must be the ones it was fitted with (same fingerprint), else ValueError.
        """
        artifact_dir = Path(artifact_dir)
        config = read_artifact_config(artifact_dir, list(cls.NAMES.values()))
        glove = config["glove"]
        if vectors is None:
            if glove["source"] == IN_MEMORY_SOURCE:
                raise ValueError(
                    f"{artifact_dir} was fitted on word vectors built in memory; pass them "
                    "as vectors= (or fit on vectors from load_glove)"
                )
            vectors = load_glove(glove["source"], max_words=glove["words"])
        if vectors.fingerprint != glove["fingerprint"]:
            raise ValueError(
                f"{artifact_dir} was fitted on GloVe vectors {glove['fingerprint'][:12]} from "
                f"{glove['source']}, but the vectors given ({vectors.source}) are "
                f"{vectors.fingerprint[:12]}; pass the same vectors or fit again"
            )
        statistics = CorpusStatistics.from_tsv(
            (artifact_dir / VOCABULARY_FILE).read_text(encoding="utf-8"),
            n_documents=config["n_documents"],
            n_tokens=config["n_tokens"],
        )
        component_path = artifact_dir / PRINCIPAL_COMPONENT_FILE
        component = np.load(component_path) if component_path.is_file() else None
        encoder = cls(
            vectors,
            statistics,
            config["weighting"],
            sif_a=config["sif_a"],
            principal_component=component,
        )
        encoder._fit_options = {"min_count": config["min_count"]} if "min_count" in config else {}
        check_artifact_version(artifact_dir, config, encoder.version)
        saved_weights = np.load(artifact_dir / WEIGHTS_FILE, allow_pickle=False)
        if not np.array_equal(saved_weights, encoder.weights):
            raise ValueError(f"{artifact_dir}/{WEIGHTS_FILE} does not match its word counts")
        return encoder

    def __repr__(self) -> str:
        return f"WeightedWordVectorEncoder({self.encoder_id!r}, source={self.vectors.source!r})"
