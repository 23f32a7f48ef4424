"""The shared word tokenizer: GloVe 6B's conventions, batch independence, real Flickr8k captions.

Also checks that the text-encoder modules stay cheap to import (no TensorFlow until used).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from encoders.text_tokenize import check_texts, tokenize_words


@pytest.fixture(scope="module")
def flickr_captions(flickr_caption_rows: list[tuple[str, str]]) -> list[str]:
    """The first 500 Flickr8k captions (already space-tokenised by the dataset's authors)."""
    return [caption for _, caption in flickr_caption_rows[:500]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Punctuation split off and dropped, case folded.
        ("A Dog runs, on the BEACH!", ["a", "dog", "runs", "on", "the", "beach"]),
        # Clitics as GloVe spells them, curly apostrophes included.
        ("the dog's ball isn't red", ["the", "dog", "'s", "ball", "is", "n't", "red"]),
        ("the dog\u2019s ball can't", ["the", "dog", "'s", "ball", "ca", "n't"]),
        ("they're we've i'd", ["they", "'re", "we", "'ve", "i", "'d"]),
        # Hyphenated words and decimal numbers stay whole (both are GloVe entries).
        ("a black-and-white t-shirt", ["a", "black-and-white", "t-shirt"]),
        ("3.5 metres at 10:30", ["3.5", "metres", "at", "10:30"]),
        # Accents kept, compatibility forms folded (NFKC), a dangling hyphen dropped.
        ("Café ﬁne naïve a-", ["café", "fine", "naïve", "a"]),
        ("", []),
        ("... !? --", []),
    ],
)
def test_glove_conventions(text: str, expected: list[str]) -> None:
    assert tokenize_words([text]) == [expected]


def test_keep_punctuation_keeps_symbols_as_tokens() -> None:
    assert tokenize_words(["Stop, dog!"], keep_punctuation=True) == [["stop", ",", "dog", "!"]]


def test_batch_gives_the_same_tokens_as_one_at_a_time() -> None:
    texts = ["Two dogs play .", "", "A girl's kite , high up", "..."]

    batch = tokenize_words(texts)

    assert batch == [tokenize_words([text])[0] for text in texts]
    assert tokenize_words([]) == []


def test_reproduces_the_flickr8k_tokenisation(flickr_captions: list[str]) -> None:
    # The captions were tokenised PTB-style by the dataset's authors; ours must agree, minus the
    # punctuation-only tokens it drops.
    expected = [
        [word for word in caption.lower().split() if any(ch.isalnum() for ch in word)]
        for caption in flickr_captions
    ]

    assert tokenize_words(flickr_captions) == expected


def test_check_texts_refuses_a_bare_string_and_non_strings() -> None:
    with pytest.raises(ValueError, match="wrap a single text in a list"):
        check_texts("a dog")
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        check_texts(["a dog", 3])
    assert check_texts(("a", "b")) == ["a", "b"]


def test_importing_text_encoder_modules_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import encoders.text_registry, encoders.text_tokenize, encoders.bow\n"
        "import encoders.word_vectors, encoders.minilm\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_text', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
