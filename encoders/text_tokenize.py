"""The one word tokenizer behind the bag-of-words, TF-IDF and GloVe text encoders.

Captions, fitted vocabularies and user queries all go through ``tokenize_words``, so a word is
spelled the same way when a vocabulary is fitted and when a query is encoded. The rules follow
the Penn-Treebank-style tokenisation GloVe 6B was trained on (and Flickr8k captions already use):

* case-folded (NFKC + lower case; accents are kept: GloVe has both "cafe" and "café"),
* punctuation split off words ("beach," -> "beach", ","); by default punctuation-only tokens are
  then dropped, since a "." ending every caption says nothing about the photo,
* clitics split as GloVe spells them: "dog's" -> "dog", "'s"; "isn't" -> "is", "n't";
  "can't" -> "ca", "n't"; curly apostrophes count as straight ones,
* hyphenated words ("t-shirt", "black-and-white") and decimal numbers ("3.5") stay whole, as in
  GloVe's vocabulary.

The work runs in TensorFlow (``tensorflow_text.case_fold_utf8`` and ``regex_split``) over the
whole batch in one traced function; the result is converted to Python lists once. TensorFlow is
imported on the first call, not when this module is imported.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

# Part of every word-based encoder's version: bump it whenever a rule above changes, because
# fitted vocabularies and the vectors built from them change with it.
WORD_TOKENIZER_VERSION = "w1"

# What one token may be, tried in this order at each position (RE2, leftmost-first):
#   clitics ('s 're 've 'll 'd 'm, and n't, which _split_negations puts in front of a space),
#   numbers with internal . , : (3.5, 1,000, 10:30), words of letters/digits/marks joined by
#   single hyphens, then any other non-space character on its own (punctuation, symbols, emoji).
_TOKEN_PATTERN = (
    r"'(?:s|re|ve|ll|d|m)\b"
    r"|n't\b"
    r"|\p{N}+(?:[.,:]\p{N}+)+"
    r"|[\p{L}\p{N}\p{M}]+(?:-[\p{L}\p{N}\p{M}]+)*"
    r"|[^\s\p{L}\p{N}\p{M}]"
)
# regex_split splits on delimiters and keeps those matching the keep pattern; making every token
# a kept delimiter and whitespace a dropped one turns it into a tokenizer.
_DELIMITER_PATTERN = _TOKEN_PATTERN + r"|\s+"
# Tokens that carry a word (letter or digit); the others are punctuation or symbols.
_WORD_PATTERN = r".*[\p{L}\p{N}].*"


def check_texts(texts: Sequence[str]) -> list[str]:
    """Return ``texts`` as a list of ``str``, or raise ValueError.

    Every text encoder calls this first. A bare string is refused rather than iterated character
    by character (``encode("a dog")`` is a common slip for ``encode(["a dog"])``).
    """
    if isinstance(texts, (str, bytes)):
        raise ValueError("expected a sequence of strings; wrap a single text in a list")
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{position}] is {type(text).__name__}, not str")
    return texts


@functools.cache
def _tokenize_graph(keep_punctuation: bool) -> Any:
    """A traced TF function: ``(N,)`` strings -> (flat tokens, row splits). Built once per flag."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def tokenize(texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        folded = tf_text.case_fold_utf8(texts)
        folded = tf.strings.regex_replace(folded, "[\u2018\u2019\u02bc]", "'")
        # "isn't" -> "is n't": without lookahead RE2 cannot stop the word rule eating the "n".
        folded = tf.strings.regex_replace(folded, r"n't\b", " n't")
        tokens = tf_text.regex_split(folded, _DELIMITER_PATTERN, _TOKEN_PATTERN)
        if not keep_punctuation:
            is_word = tf.strings.regex_full_match(tokens.flat_values, _WORD_PATTERN)
            tokens = tf.ragged.boolean_mask(tokens, tokens.with_flat_values(is_word))
        return tokens.flat_values, tokens.row_splits

    return tokenize


def tokenize_words(texts: Sequence[str], keep_punctuation: bool = False) -> list[list[str]]:
    """``N`` strings -> ``N`` lists of word tokens (see the module docstring for the rules).

    An empty or punctuation-only text gives an empty list.
    """
    texts = check_texts(texts)
    if not texts:
        return []
    flat, splits = _tokenize_graph(keep_punctuation)(np.asarray(texts, dtype=object))
    words = [token.decode("utf-8") for token in flat.numpy()]
    bounds = splits.numpy().tolist()
    return [words[start:end] for start, end in itertools.pairwise(bounds)]
