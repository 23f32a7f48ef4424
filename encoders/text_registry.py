"""``TextEncoderSpec`` -> live ``TextEncoder``: the one place that knows which text encoders exist.

A spec is a name and a path, small and JSON-able: it is recorded next to a model trained on the
vectors (and travels to Beam workers), and ``create_text_encoder`` turns it back into the same
encoder. What the path means depends on the name:

=============  ===========================================================================
``bow``        a fitted artifact directory (``fit_text_encoder``)
``tfidf``      a fitted artifact directory
``glove_mean`` GloVe vectors: ``"auto"``, a ``glove.6B.50d.txt`` or a kumo-layout directory
``glove_idf``  a fitted artifact directory (which records the GloVe source it was fitted with)
``glove_sif``  a fitted artifact directory (idem)
``minilm``     an all-MiniLM-L6-v2 model directory or ``"auto"``
``minilm_tfidf`` a fitted artifact directory (a TF-IDF artifact + the MiniLM path it uses)
=============  ===========================================================================

Importing this module does not import TensorFlow; creating an encoder (or tokenizing) does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from encoders.base import TextEncoder
from encoders.bow import BagOfWordsEncoder, TfidfEncoder
from encoders.glove import load_glove, locate_glove
from encoders.minilm import MINILM_NAME, MiniLMEncoder
from encoders.minilm_files import BertConfig, locate_minilm
from encoders.minilm_tfidf import MINILM_TFIDF_NAME, MiniLMTfidfEncoder
from encoders.text_artifacts import read_artifact_config
from encoders.word_vectors import MeanWordVectorEncoder, WeightedWordVectorEncoder

_VOCABULARY_ENCODERS: dict[str, type[BagOfWordsEncoder] | type[TfidfEncoder]] = {
    BagOfWordsEncoder.name: BagOfWordsEncoder,
    TfidfEncoder.name: TfidfEncoder,
}
# Weighted GloVe encoder name -> its weighting.
_WEIGHTED_GLOVE = {name: weighting for weighting, name in WeightedWordVectorEncoder.NAMES.items()}

# The kinds whose path is an artifact written by ``fit_text_encoder``.
FITTED_TEXT_ENCODER_NAMES: tuple[str, ...] = (
    *_VOCABULARY_ENCODERS,
    *_WEIGHTED_GLOVE,
    MINILM_TFIDF_NAME,
)
TEXT_ENCODER_NAMES: tuple[str, ...] = (
    BagOfWordsEncoder.name,
    TfidfEncoder.name,
    MeanWordVectorEncoder.name,
    *_WEIGHTED_GLOVE,
    MINILM_NAME,
    MINILM_TFIDF_NAME,
)


@dataclasses.dataclass(frozen=True)
class TextEncoderSpec:
    """Names a text encoder and where its state comes from (see the module docstring)."""

    name: str
    path: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TextEncoderSpec:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def __str__(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODER_NAMES)}")


def _artifact_dir(spec: TextEncoderSpec) -> Path:
    if spec.path == "auto":
        raise ValueError(
            f"text encoder {spec.name!r} needs the directory of a fitted artifact as its path, "
            f"not 'auto'; create one with fit_text_encoder({spec.name!r}, captions, out_dir)"
        )
    return Path(spec.path).expanduser()


def check_text_encoder(spec: TextEncoderSpec) -> int:
    """Fail fast on a spec that cannot be built (unknown name, files missing); -> its dim.

    Cheap (no TensorFlow, no model or vectors loaded): a job calls it before starting work,
    so a wrong path is one clear error rather than a crash inside every worker.
    """
    if spec.name == MINILM_TFIDF_NAME:
        return MiniLMTfidfEncoder.artifact_dim(_artifact_dir(spec))
    if spec.name in FITTED_TEXT_ENCODER_NAMES:
        config = read_artifact_config(_artifact_dir(spec), [spec.name])
        if spec.name in _WEIGHTED_GLOVE:
            locate_glove(config["glove"]["source"])  # the vectors it will load
        return int(config["dim"])
    if spec.name == MeanWordVectorEncoder.name:
        return locate_glove(spec.path).dim()
    if spec.name == MINILM_NAME:
        return BertConfig.from_json_file(locate_minilm(spec.path) / "config.json").hidden_size
    raise _unknown(spec.name)


def create_text_encoder(spec: TextEncoderSpec) -> TextEncoder:
    """Build the encoder ``spec`` names (loading its vectors or weights).

    ValueError for an unknown name or an artifact of another kind, FileNotFoundError (saying
    what to provide) when files are missing.
    """
    if spec.name in _VOCABULARY_ENCODERS:
        return _VOCABULARY_ENCODERS[spec.name].load(_artifact_dir(spec))
    if spec.name in _WEIGHTED_GLOVE:
        return WeightedWordVectorEncoder.load(_artifact_dir(spec))
    if spec.name == MeanWordVectorEncoder.name:
        return MeanWordVectorEncoder(load_glove(spec.path))
    if spec.name == MINILM_NAME:
        return MiniLMEncoder(spec.path)
    if spec.name == MINILM_TFIDF_NAME:
        return MiniLMTfidfEncoder.load(_artifact_dir(spec))
    raise _unknown(spec.name)


def fit_text_encoder(
    name: str,
    texts: Sequence[str],
    out_dir: str | Path,
    glove: str | Path = "auto",
    min_count: int | None = None,
    max_vocab: int | None = None,
    sublinear_tf: bool = False,
) -> TextEncoderSpec:
    """Fit a ``FITTED_TEXT_ENCODER_NAMES`` encoder on ``texts`` (captions), save it to
    ``out_dir`` and return the spec that loads it (its path absolute).

    ``glove`` (weighted GloVe kinds) is resolved by ``locate_glove`` and recorded in the
    artifact; for ``minilm_tfidf`` it is the MiniLM model path instead (``locate_minilm``).
    ``min_count`` defaults to 2 for bow/tfidf/minilm_tfidf (the vocabulary) and 1 for the GloVe
    weights (every caption word gets its own weight); ``max_vocab`` and ``sublinear_tf`` apply
    to the TF-IDF vocabulary kinds only.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if name == MINILM_TFIDF_NAME:
        MiniLMTfidfEncoder.fit(
            texts,
            out_dir,
            minilm=glove,
            min_count=2 if min_count is None else min_count,
            max_vocab=max_vocab,
            sublinear_tf=sublinear_tf,
        )
    elif name in _VOCABULARY_ENCODERS:
        encoder = _VOCABULARY_ENCODERS[name].fit(
            texts,
            min_count=2 if min_count is None else min_count,
            max_vocab=max_vocab,
            sublinear_tf=sublinear_tf,
        )
        encoder.save(out_dir)
    elif name in _WEIGHTED_GLOVE:
        if max_vocab is not None or sublinear_tf:
            raise ValueError(f"max_vocab and sublinear_tf do not apply to {name!r}")
        encoder = WeightedWordVectorEncoder.fit(
            texts,
            load_glove(glove),
            weighting=_WEIGHTED_GLOVE[name],
            min_count=1 if min_count is None else min_count,
        )
        encoder.save(out_dir)
    elif name in TEXT_ENCODER_NAMES:
        raise ValueError(
            f"text encoder {name!r} is not fitted; use TextEncoderSpec({name!r}, <path or 'auto'>)"
        )
    else:
        raise _unknown(name)
    return TextEncoderSpec(name=name, path=str(out_dir))
