"""Bag-of-words and TF-IDF: hand-computed vectors, fitting rules, artifacts, real captions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from encoders.bow import BagOfWordsEncoder, CorpusStatistics, TfidfEncoder, smoothed_idf
from encoders.text_registry import (
    TextEncoderSpec,
    check_text_encoder,
    create_text_encoder,
    fit_text_encoder,
)


@pytest.fixture(scope="module")
def flickr(flickr_caption_rows: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(image names, captions) of the first 500 Flickr8k captions: 100 images x 5 captions."""
    rows = flickr_caption_rows
    return [image for image, _ in rows], [caption for _, caption in rows]


@pytest.fixture(scope="module")
def tfidf(flickr: tuple[list[str], list[str]]) -> TfidfEncoder:
    return TfidfEncoder.fit(flickr[1])


def _column(encoder: BagOfWordsEncoder | TfidfEncoder, word: str) -> int:
    return encoder.vocabulary.index(word)


def test_tfidf_vector_by_hand() -> None:
    corpus = ["a dog runs", "a cat", "a dog"]
    encoder = TfidfEncoder.fit(corpus, min_count=1)

    vector = encoder.encode(["A dog, a DOG and a bird"])[0]

    # Smoothed IDF over 3 documents: "a" is in all three, "dog" in two.
    idf_a = math.log(4 / 4) + 1
    idf_dog = math.log(4 / 3) + 1
    expected = np.zeros(encoder.dim)
    expected[_column(encoder, "a")] = 3 * idf_a  # "and" and "bird" are not in the vocabulary
    expected[_column(encoder, "dog")] = 2 * idf_dog
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-6)
    np.testing.assert_allclose(encoder.idf, smoothed_idf(np.array([3, 2, 1, 1]), 3))


def test_bag_of_words_counts_and_sublinear_tf() -> None:
    corpus = ["dog cat", "dog bird", "cat bird"]
    plain = BagOfWordsEncoder.fit(corpus, min_count=1)
    sublinear = BagOfWordsEncoder.fit(corpus, min_count=1, sublinear_tf=True)
    dog, cat = _column(plain, "dog"), _column(plain, "cat")

    counts = plain.encode(["dog dog dog cat"])[0]
    damped = sublinear.encode(["dog dog dog cat"])[0]

    assert counts[dog] / counts[cat] == pytest.approx(3.0)
    assert damped[dog] / damped[cat] == pytest.approx(1 + math.log(3))
    assert plain.version != sublinear.version


def test_vocabulary_order_min_count_and_max_vocab() -> None:
    corpus = ["b a", "a c", "a b", "d"]
    statistics = CorpusStatistics.from_tokenized([text.split() for text in corpus], min_count=2)

    # Descending count, ties by token; "c" and "d" are seen once.
    assert statistics.tokens == ("a", "b")
    assert statistics.counts.tolist() == [3, 2]
    assert statistics.document_frequencies.tolist() == [3, 2]
    assert BagOfWordsEncoder.fit(corpus, min_count=1, max_vocab=3).vocabulary == ("a", "b", "c")
    with pytest.raises(ValueError, match="lower min_count"):
        BagOfWordsEncoder.fit(corpus, min_count=10)


def test_unit_rows_and_zero_rows_never_nan(tfidf: TfidfEncoder) -> None:
    vectors = tfidf.encode(["a dog runs on the grass", "", "zxqv qwzx !!", "A DOG"])

    assert vectors.shape == (4, tfidf.dim)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1, 0, 0, 1], atol=1e-6)
    assert tfidf.encode([]).shape == (0, tfidf.dim)


def test_sparse_and_dense_agree(tfidf: TfidfEncoder, flickr: tuple[list[str], list[str]]) -> None:
    captions = flickr[1][:50]

    sparse = tfidf.transform_sparse(captions)

    assert scipy.sparse.issparse(sparse) and sparse.format == "csr"
    assert sparse.dtype == np.float32
    np.testing.assert_array_equal(sparse.toarray(), tfidf.encode(captions))


def test_captions_of_the_same_photo_are_nearest_neighbours(
    tfidf: TfidfEncoder, flickr: tuple[list[str], list[str]]
) -> None:
    images, captions = flickr
    vectors = tfidf.encode(captions)
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -1.0)

    nearest = similarities.argmax(axis=1)
    same_photo = np.mean([images[i] == images[j] for i, j in enumerate(nearest)])

    # 4 of the 499 other captions describe the same photo: chance is under 1%.
    assert same_photo > 0.4
    query = tfidf.encode(["a dog running on the beach"])[0]
    best = captions[int(np.argmax(vectors @ query))].lower()
    assert "dog" in best and "beach" in best


def test_save_load_round_trip_and_versions(
    tmp_path: Path, tfidf: TfidfEncoder, flickr: tuple[list[str], list[str]]
) -> None:
    captions = flickr[1]
    tfidf.save(tmp_path / "tfidf")

    loaded = TfidfEncoder.load(tmp_path / "tfidf")

    assert loaded.version == tfidf.version
    assert loaded.vocabulary == tfidf.vocabulary
    np.testing.assert_array_equal(loaded.encode(captions[:20]), tfidf.encode(captions[:20]))
    # Refitting on other captions changes the version; refitting on the same does not.
    assert TfidfEncoder.fit(captions[:300]).version != tfidf.version
    assert TfidfEncoder.fit(captions).version == tfidf.version
    assert BagOfWordsEncoder.fit(captions).version != tfidf.version


def test_load_refuses_other_kinds_and_modified_artifacts(
    tmp_path: Path, tfidf: TfidfEncoder
) -> None:
    artifact = tfidf.save(tmp_path / "tfidf")

    with pytest.raises(ValueError, match="'tfidf' artifact, expected 'bow'"):
        BagOfWordsEncoder.load(artifact)
    with pytest.raises(FileNotFoundError, match="not a fitted text-encoder artifact"):
        TfidfEncoder.load(tmp_path / "missing")

    vocabulary = artifact / "vocabulary.tsv"
    vocabulary.write_text(vocabulary.read_text().replace("\n", "\nextra\t9\t9\n", 1))
    with pytest.raises(ValueError, match="modified after fitting"):
        TfidfEncoder.load(artifact)

    tfidf.save(artifact)  # saving again over the same directory repairs it
    config = json.loads((artifact / "config.json").read_text())
    config["tokenizer"] = "w0"
    (artifact / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fit it again"):
        TfidfEncoder.load(artifact)


def test_registry_fits_and_rebuilds(tmp_path: Path, flickr: tuple[list[str], list[str]]) -> None:
    captions = flickr[1]

    spec = fit_text_encoder("bow", captions, tmp_path / "bow", min_count=3)

    assert spec == TextEncoderSpec("bow", str((tmp_path / "bow").resolve()))
    assert TextEncoderSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    encoder = create_text_encoder(spec)
    expected = BagOfWordsEncoder.fit(captions, min_count=3)
    assert check_text_encoder(spec) == encoder.dim == expected.dim
    assert encoder.encoder_id == expected.encoder_id
    np.testing.assert_array_equal(encoder.encode(captions[:5]), expected.encode(captions[:5]))
    with pytest.raises(ValueError, match="fitted artifact"):
        create_text_encoder(TextEncoderSpec("tfidf"))
    with pytest.raises(ValueError, match="unknown text encoder"):
        create_text_encoder(TextEncoderSpec("word2vec"))
    with pytest.raises(ValueError, match="is not fitted"):
        fit_text_encoder("minilm", captions, tmp_path / "minilm")
