"""The files of a fitted text encoder: writing them atomically, reading and checking them back.

A fitted text encoder (bag of words, TF-IDF, weighted GloVe, MiniLM+TF-IDF) is a directory of
data files plus ``config.json``, written file by file through temporary names with the config
last, so a directory with a ``config.json`` is complete. Its version is a hash of its settings
and files (``content_version``), checked again on loading. Separate from the encoders because
every fitted kind shares these rules, whichever module defines it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.text_tokenize import WORD_TOKENIZER_VERSION

# Bump when the artifact layout or the vectorisation code changes (part of every version).
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


def content_version(parts: Iterable[bytes]) -> str:
    """``v<FORMAT_VERSION>-`` + 12 hex of the sha256 over ``parts`` (each length-prefixed, so
    moving bytes from one part to the next changes the digest)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return f"v{FORMAT_VERSION}-{digest.hexdigest()[:12]}"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in ``.npy`` format (what is written to disk and hashed into versions)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_artifact(out_dir: str | Path, files: Mapping[str, bytes], config: dict[str, Any]) -> Path:
    """Write ``files`` then ``config.json`` into ``out_dir`` (created if needed) -> its path.

    Each file goes to a temporary name and is renamed into place, and the config comes last:
    a reader that finds ``config.json`` finds every file it names, and re-running a fit over
    the same directory replaces the artifact instead of mixing two.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).unlink(missing_ok=True)  # the old artifact stops being complete now
    config_bytes = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    for name, data in [*files.items(), (CONFIG_FILE, config_bytes)]:
        temporary = out_dir / f".{name}.tmp-{os.getpid()}"
        temporary.write_bytes(data)
        os.replace(temporary, out_dir / name)
    return out_dir


def read_artifact_config(artifact_dir: str | Path, expected_kinds: Sequence[str]) -> dict[str, Any]:
    """``config.json`` of a fitted text-encoder artifact, checked for kind and tokenizer.

    FileNotFoundError when the directory holds no complete artifact; ValueError when it is of
    another kind or was fitted with another tokenizer version (its vectors would not match).
    """
    config_path = Path(artifact_dir) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: {artifact_dir} is not a fitted text-encoder "
            "artifact. Fit one first (encoders.text_registry.fit_text_encoder)."
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("kind") not in expected_kinds:
        raise ValueError(
            f"{artifact_dir} holds a {config.get('kind')!r} artifact, "
            f"expected {' or '.join(map(repr, expected_kinds))}"
        )
    if config.get("tokenizer") != WORD_TOKENIZER_VERSION:
        raise ValueError(
            f"{artifact_dir} was fitted with word tokenizer {config.get('tokenizer')!r}, this "
            f"code tokenizes as {WORD_TOKENIZER_VERSION!r}; fit it again"
        )
    return config


def check_artifact_version(artifact_dir: str | Path, config: dict[str, Any], version: str) -> None:
    """ValueError if the files no longer hash to the version recorded when they were written."""
    if config.get("version") != version:
        raise ValueError(
            f"{artifact_dir}: files hash to {version} but config.json records "
            f"{config.get('version')}; the artifact was modified after fitting, fit it again"
        )
