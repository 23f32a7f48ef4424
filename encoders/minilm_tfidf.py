"""``minilm_tfidf``: MiniLM sentence vectors and TF-IDF word vectors side by side, one encoder.

The two see different things in a caption: MiniLM its meaning (paraphrases land close), TF-IDF
its exact content words (rare object and colour words that a sentence embedding blurs). On
Flickr8k dev one W2VV model fed both reached R@1 0.187 / R@5 0.453, against 0.181 / 0.445 fed
MiniLM alone (``benchmarks/results/text_to_image_frozen.md`` has the ensembles). Each part is a unit
vector and the concatenation is normalised again, so both weigh alike.

The artifact is a directory: a fitted TF-IDF artifact in ``tfidf/`` and a ``config.json`` that
records where the MiniLM model was found, so the index job and serving rebuild the same encoder
from the one path a joint model's metadata names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.base import TextEncoder, l2_normalize
from encoders.bow import TfidfEncoder
from encoders.minilm import MiniLMEncoder
from encoders.minilm_files import BertConfig, locate_minilm
from encoders.text_artifacts import read_artifact_config, write_artifact
from encoders.text_tokenize import WORD_TOKENIZER_VERSION, check_texts

MINILM_TFIDF_NAME = "minilm_tfidf"
TFIDF_DIR = "tfidf"


class MiniLMTfidfEncoder(TextEncoder):
    """``encode(texts)`` -> ``l2_normalize([minilm(texts) | tfidf(texts)])``."""

    name = MINILM_TFIDF_NAME

    def __init__(self, minilm: MiniLMEncoder, tfidf: TfidfEncoder) -> None:
        self.minilm = minilm
        self.tfidf = tfidf
        self.dim = minilm.dim + tfidf.dim
        self.version = f"{minilm.version}+{tfidf.version}"

    @classmethod
    def fit(
        cls, texts: Sequence[str], out_dir: str | Path, minilm: str | Path = "auto", **tfidf_options
    ) -> Path:
        """Fit the TF-IDF part on ``texts``, save the artifact to ``out_dir``; -> ``out_dir``.

        ``minilm`` (``locate_minilm``) is resolved now and recorded as an absolute path.
        """
        out_dir = Path(out_dir)
        minilm_dir = locate_minilm(minilm).resolve()
        tfidf = TfidfEncoder.fit(texts, **tfidf_options)
        tfidf.save(out_dir / TFIDF_DIR)
        config = {
            "kind": MINILM_TFIDF_NAME,
            "tokenizer": WORD_TOKENIZER_VERSION,
            "minilm": str(minilm_dir),
            "tfidf": TFIDF_DIR,
            "tfidf_dim": tfidf.dim,
        }
        return write_artifact(out_dir, {}, config)

    @classmethod
    def load(cls, artifact_dir: str | Path) -> MiniLMTfidfEncoder:
        config = read_artifact_config(artifact_dir, [MINILM_TFIDF_NAME])
        return cls(
            MiniLMEncoder(config["minilm"]),
            TfidfEncoder.load(Path(artifact_dir) / config["tfidf"]),
        )

    @staticmethod
    def artifact_dim(artifact_dir: str | Path) -> int:
        """The width without loading MiniLM (for cheap checks before a job starts)."""
        config = read_artifact_config(artifact_dir, [MINILM_TFIDF_NAME])
        minilm_config = locate_minilm(config["minilm"]) / "config.json"
        return BertConfig.from_json_file(minilm_config).hidden_size + int(config["tfidf_dim"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(
            np.concatenate([self.minilm.encode(texts), self.tfidf.encode(texts)], axis=1)
        )

    def __repr__(self) -> str:
        return f"MiniLMTfidfEncoder({self.encoder_id!r}, dim={self.dim})"
