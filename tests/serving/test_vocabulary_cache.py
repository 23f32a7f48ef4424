"""The embedded vocabulary kept on disk between serving processes (real files, real WordSpace)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from encoders.word_neighbours import WordSpace
from serving.vocabulary_cache import cache_path, cached_word_space, default_cache_dir

KEY = ("the joint vocabulary", "glove-6B-50d", "dual-x", "20261207T000000Z-abc", "minilm/v1", 3)


def _space() -> WordSpace:
    rng = np.random.default_rng(0)
    return WordSpace(["dog", "grass", "ball"], rng.normal(size=(3, 8)).astype(np.float32))


class _Builds:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> WordSpace:
        self.calls += 1
        return _space()


def test_a_second_process_loads_what_the_first_embedded(tmp_path: Path) -> None:
    build = _Builds()
    first = cached_word_space(str(tmp_path), KEY, build)
    assert build.calls == 1 and cache_path(str(tmp_path), KEY).is_file()
    again = cached_word_space(str(tmp_path), KEY, build)
    assert build.calls == 1  # read, not embedded
    assert again.words == first.words
    assert again.unit.tobytes() == first.unit.tobytes()  # bit for bit, not normalised again
    query = first.unit[:1]
    assert again.nearest(query, 2) == first.nearest(query, 2)
    # Another model version (or size, or encoder) is another file.
    cached_word_space(str(tmp_path), (*KEY[:-1], 4), build)
    assert build.calls == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_no_cache_dir_or_no_stable_key_embeds_every_time(tmp_path: Path) -> None:
    build = _Builds()
    cached_word_space(None, KEY, build)
    cached_word_space(str(tmp_path), None, build)
    assert build.calls == 2 and not list(tmp_path.iterdir())


def test_a_damaged_or_foreign_file_is_ignored_and_replaced(tmp_path: Path, caplog) -> None:
    path = cache_path(str(tmp_path), KEY)
    path.write_bytes(b"PK\x03\x04 not a whole npz")
    build = _Builds()
    with caplog.at_level(logging.WARNING, logger="serving.vocabulary_cache"):
        space = cached_word_space(str(tmp_path), KEY, build)
    assert build.calls == 1 and "cannot read the cached vocabulary" in caplog.text
    assert cached_word_space(str(tmp_path), KEY, build).words == space.words  # rewritten whole
    other = cache_path(str(tmp_path), ("another",))
    os.replace(path, other)  # a file whose stored key is not the one asked for
    assert cached_word_space(str(tmp_path), ("another",), build) is not None
    assert build.calls == 2


def test_an_unwritable_cache_only_costs_the_embedding(tmp_path: Path, caplog) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("the cache folder cannot be made under a file")
    build = _Builds()
    with caplog.at_level(logging.WARNING, logger="serving.vocabulary_cache"):
        space = cached_word_space(str(blocked / "cache"), KEY, build)
    assert space.words == ["dog", "grass", "ball"]
    assert build.calls == 1 and "cannot cache the vocabulary" in caplog.text


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGSEARCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("IMGSEARCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == str(tmp_path / "x" / "imgsearch")
