"""``minilm_tfidf``: fitted on real Flickr8k captions, rebuilt from its artifact by the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders.bow import TfidfEncoder
from encoders.minilm import MiniLMEncoder
from encoders.minilm_files import locate_minilm
from encoders.text_registry import (
    TextEncoderSpec,
    check_text_encoder,
    create_text_encoder,
    fit_text_encoder,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def captions(flickr_caption_rows: list[tuple[str, str]]) -> list[str]:
    return [caption for _, caption in flickr_caption_rows[:400]]


@pytest.fixture(scope="module")
def fitted(captions: list[str], tmp_path_factory: pytest.TempPathFactory) -> TextEncoderSpec:
    try:
        locate_minilm("auto")
    except FileNotFoundError as error:
        pytest.skip(str(error))
    return fit_text_encoder("minilm_tfidf", captions, tmp_path_factory.mktemp("mt") / "artifact")


def test_encodes_both_parts_side_by_side(fitted: TextEncoderSpec, captions: list[str]) -> None:
    encoder = create_text_encoder(fitted)
    minilm = MiniLMEncoder("auto")
    tfidf = TfidfEncoder.load(Path(fitted.path) / "tfidf")
    texts = [*captions[:5], "qwertyuiop"]

    vectors = encoder.encode(texts)

    assert encoder.dim == minilm.dim + tfidf.dim == check_text_encoder(fitted)
    assert vectors.shape == (len(texts), encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Each part keeps its own direction; both weigh alike when the text has known words.
    head, tail = vectors[:, : minilm.dim], vectors[:, minilm.dim :]
    np.testing.assert_allclose(head[:5] * np.sqrt(2), minilm.encode(texts[:5]), atol=1e-4)
    np.testing.assert_allclose(tail[:5] * np.sqrt(2), tfidf.encode(texts[:5]), atol=1e-5)
    # No word of the last text is in the vocabulary: the MiniLM part alone carries the text.
    assert not tail[5].any()
    np.testing.assert_allclose(head[5], minilm.encode(texts[5:])[0], atol=1e-4)
    assert encoder.encoder_id == f"minilm_tfidf/{minilm.version}+{tfidf.version}"


def test_a_plain_tfidf_artifact_is_not_taken_for_one(tmp_path: Path, captions: list[str]) -> None:
    plain = fit_text_encoder("tfidf", captions, tmp_path / "tfidf")
    with pytest.raises(ValueError, match="expected 'minilm_tfidf'"):
        check_text_encoder(TextEncoderSpec("minilm_tfidf", plain.path))
    with pytest.raises(ValueError, match="not 'auto'"):
        create_text_encoder(TextEncoderSpec("minilm_tfidf", "auto"))
