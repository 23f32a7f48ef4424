"""A joint model's embedded word vocabulary, kept on local disk for the next serving process.

Embedding a joint model's 20,000 most frequent words through MiniLM costs 19 s of CPU on 2
cores (``serving.word_routes``), and every serving process paid it: each restart and, with
reloads in a new worker (``serving.supervisor``), each reload, while the worker still serving
shares the cores. The result depends only on the GloVe words, the versions of the text encoder
and the joint model (immutable once trained) and the vocabulary's size, so it is stored once
per such key, as ``DIR/words-<sha256 of the key>.npz`` (written under a temporary name, then
renamed: a reader finds a whole file or none), and later processes load it in milliseconds.

Best effort: a cache folder that cannot be read or written is logged and the words are
embedded as before; a file whose stored key differs (a hash collision, a hand-copied file) is
ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from encoders.word_neighbours import WordSpace

logger = logging.getLogger(__name__)

# Bumped when what a cached file holds, or how the vocabulary is chosen, changes.
FORMAT = 1


def default_cache_dir() -> str:
    """``$IMGSEARCH_CACHE``, else ``$XDG_CACHE_HOME/imgsearch``, else ``~/.cache/imgsearch``."""
    if os.environ.get("IMGSEARCH_CACHE"):
        return os.environ["IMGSEARCH_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "imgsearch")


def cache_path(cache_dir: str, key: tuple[str | int, ...]) -> Path:
    digest = hashlib.sha256(json.dumps([FORMAT, *key]).encode()).hexdigest()[:32]
    return Path(cache_dir) / f"words-{digest}.npz"


def _read(path: Path, key: tuple[str | int, ...]) -> WordSpace | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            if json.loads(str(stored["key"])) != [FORMAT, *key]:
                logger.warning("ignoring %s: it was written for another vocabulary", path)
                return None
            return WordSpace.from_unit(stored["words"].tolist(), stored["unit"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # unreadable, not ours
        logger.warning("cannot read the cached vocabulary %s: %s", path, exc)
        return None


def _write(path: Path, key: tuple[str | int, ...], space: WordSpace) -> None:
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".words-", suffix=".tmp",
                                         delete=False) as temp:  # fmt: skip
            np.savez(temp, key=np.array(json.dumps([FORMAT, *key])),
                     words=np.array(space.words), unit=space.unit)  # fmt: skip
        os.replace(temp.name, path)
    except OSError as exc:  # a read-only home, a full disk: the next process embeds again
        logger.warning("cannot cache the vocabulary in %s: %s", path.parent, exc)
        if temp is not None:
            Path(temp.name).unlink(missing_ok=True)


def cached_word_space(
    cache_dir: str | None, key: tuple[str | int, ...] | None, build: Callable[[], WordSpace]
) -> WordSpace:
    """The space stored for ``key`` in ``cache_dir``, else ``build()`` stored there for the next
    process. ``cache_dir`` or ``key`` None (no cache; a model without a stable version):
    ``build()`` alone."""
    if cache_dir is None or key is None:
        return build()
    path = cache_path(cache_dir, key)
    space = _read(path, key)
    if space is not None:
        logger.info("loaded %d embedded words from %s", len(space), path)
        return space
    space = build()
    _write(path, key, space)
    return space
