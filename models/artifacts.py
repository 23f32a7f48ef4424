"""The models directory: versioned model artifacts that ``--models MODELS_DIR`` points at.

Layout::

    MODELS_DIR/<model_name>/<version>/weights.npz     arrays (np.savez, no pickles)
    MODELS_DIR/<model_name>/<version>/config.json     kind, architecture, dims: enough to rebuild
    MODELS_DIR/<model_name>/<version>/metadata.json   provenance: when, on what, how, how well
    MODELS_DIR/<model_name>/LATEST                    one line: the version to load by default

A version is ``YYYYMMDDTHHMMSSZ-<8 hex>``: the UTC time of saving and the start of a sha256 over
the weights and config, so versions sort by time and equal content saved in the same second is
one version. A version is written into a temporary folder and renamed into place whole, and
``LATEST`` is replaced atomically afterwards (temp file + rename): a reader sees the old model or
the new one, never half of one. Other trainers (captioner, fusion) add their own ``<model_name>``
folders through ``save_model_version`` with their own ``kind`` and files.

Local paths only for now (``os.replace`` is what makes publishing atomic); a gs:// models dir
would publish through a copy then a ``LATEST`` write, like the index manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from encoders.joint import JOINT_KINDS, JointModel
from index.hamming import KIND_HASHING, HashEncoder
from storage.files import read_arrays, sha256_file, write_arrays

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"

CONFIG_FILE = "config.json"

METADATA_FILE = "metadata.json"

LATEST_FILE = "LATEST"

LATEST = "latest"

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

_VERSION_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")

_TEMP_PREFIX = ".tmp-"


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One saved version: where it is, what ``kind`` of model, and whether ``LATEST`` names it."""

    name: str
    version: str
    path: Path
    kind: str
    latest: bool


def check_model_name(name: str) -> str:
    """``name`` if it is a usable folder name (letters, digits, ``._-``), else ValueError."""
    if not _NAME_PATTERN.match(name):
        raise ValueError(
            f"model name {name!r} must start with a letter or digit and hold only letters, "
            f"digits, '.', '_' and '-' (at most 100 characters)"
        )
    return name


@functools.cache
def code_version() -> str:
    """``imgsearch <version>`` plus ``+git.<commit>`` when running from a git checkout."""
    from importlib import metadata

    try:
        version = f"imgsearch {metadata.version('imgsearch')}"
    except metadata.PackageNotFoundError:
        version = "imgsearch (not installed)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+git.{commit}" if commit else version


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays turn up in metrics and configs; JSON has no type for them.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _write_latest(model_dir: Path, version: str) -> None:
    """Point ``LATEST`` at ``version``: a temp file renamed over the old pointer."""
    handle, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=model_dir)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(version + "\n")
        os.replace(temp, model_dir / LATEST_FILE)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_model_version(
    models_dir: str | Path,
    name: str,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    write_files: Callable[[Path], None],
    now: dt.datetime | None = None,
) -> Path:
    """Publish a new version of model ``name`` and point ``LATEST`` at it -> the version folder.

    ``write_files(folder)`` writes the model's own files (e.g. ``weights.npz``); this function
    adds ``config.json`` (which must name the ``kind``) and ``metadata.json`` (``metadata`` plus
    ``model_name``, ``version``, ``saved_at``, ``code_version``, ``trained_at`` if missing, and
    the sha256 of every file).
    """
    check_model_name(name)
    if "kind" not in config:
        raise ValueError("a model config must name its 'kind'")
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=model_dir))
    try:
        write_files(temp)
        _write_json(temp / CONFIG_FILE, config)
        files = {
            path.name: sha256_file(str(path)) for path in sorted(temp.iterdir()) if path.is_file()
        }
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        version = f"{now:%Y%m%dT%H%M%SZ}-{content[:8]}"
        saved_at = now.isoformat(timespec="seconds")
        full_metadata = {
            "trained_at": saved_at,
            **metadata,
            "model_name": name,
            "version": version,
            "saved_at": saved_at,
            "code_version": code_version(),
            "files": files,
        }
        _write_json(temp / METADATA_FILE, full_metadata)
        final = model_dir / version
        if final.exists():
            # Same content saved in the same second: that version is already published.
            logger.info("model %s version %s already exists; keeping it", name, version)
            shutil.rmtree(temp)
        else:
            os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _write_latest(model_dir, version)
    logger.info("saved model %s version %s (%s) to %s", name, version, config["kind"], final)
    return final


def _check_encoder_entry(metadata: Mapping[str, Any], key: str, expected_id: str) -> None:
    entry = metadata.get(key)
    if not isinstance(entry, Mapping) or "encoder_id" not in entry:
        raise ValueError(f"metadata[{key!r}] must be a dict with the 'encoder_id' the model uses")
    if entry["encoder_id"] != expected_id:
        raise ValueError(
            f"metadata[{key!r}]['encoder_id'] is {entry['encoder_id']!r} but the model was "
            f"built for {expected_id!r}"
        )


def save_joint_model(
    models_dir: str | Path,
    name: str,
    model: JointModel,
    metadata: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> Path:
    """Save a ``JointModel`` as a new version of ``name`` -> the version folder.

    ``metadata`` must hold ``text_encoder`` (the text encoder's spec fields plus ``encoder_id``)
    and ``image_encoder`` (``encoder_id``), agreeing with the model's ids: whoever loads the model
    needs them to build the encoders whose features it takes. It should also hold ``dataset``
    (``CaptionedDataset.summary()``), ``training_config``, ``history`` and ``heldout_metrics``.
    """
    _check_encoder_entry(metadata, "text_encoder", model.text_encoder_id)
    _check_encoder_entry(metadata, "image_encoder", model.image_encoder_id)
    for key in ("dataset", "training_config", "heldout_metrics"):
        if key not in metadata:
            logger.warning("saving model %s without %r in its metadata", name, key)

    def write_weights(folder: Path) -> None:
        write_arrays(str(folder / WEIGHTS_FILE), model.weights())

    return save_model_version(models_dir, name, model.config(), metadata, write_weights, now)


def resolve_version(models_dir: str | Path, name: str, version: str = LATEST) -> Path:
    """The folder of ``name``'s ``version`` (``"latest"``: the one ``LATEST`` names).

    FileNotFoundError saying what exists when the model, the pointer or the version is missing.
    """
    check_model_name(name)
    model_dir = Path(models_dir) / name
    if not model_dir.is_dir():
        known = sorted({m.name for m in list_models(models_dir)})
        raise FileNotFoundError(f"no model {name!r} in {models_dir} (models there: {known})")
    if version == LATEST:
        pointer = model_dir / LATEST_FILE
        if not pointer.is_file():
            raise FileNotFoundError(f"{pointer} is missing: no version of {name} was published")
        version = pointer.read_text().strip()
    if not _VERSION_PATTERN.match(version):
        raise ValueError(f"{version!r} is not a model version (YYYYMMDDTHHMMSSZ-xxxxxxxx)")
    folder = model_dir / version
    if not folder.is_dir():
        raise FileNotFoundError(f"model {name} has no version {version} in {model_dir}")
    return folder


def read_config(version_dir: Path) -> dict[str, Any]:
    """A version's ``config.json``."""
    return json.loads((version_dir / CONFIG_FILE).read_text())


def read_metadata(version_dir: Path) -> dict[str, Any]:
    """A version's ``metadata.json``."""
    return json.loads((version_dir / METADATA_FILE).read_text())


def load_joint_model(models_dir: str | Path, name: str, version: str = LATEST) -> JointModel:
    """Load a saved ``JointModel`` (checking the weights file against its recorded sha256)."""
    folder = resolve_version(models_dir, name, version)
    config = read_config(folder)
    if config.get("kind") not in JOINT_KINDS:
        raise ValueError(
            f"model {name} ({folder.name}) is a {config.get('kind')!r} model, not a joint "
            f"embedding ({' or '.join(JOINT_KINDS)})"
        )
    model = JointModel.from_arrays(config, _checked_weights(folder))
    logger.info("loaded %r from %s", model, folder)
    return model


def _checked_weights(folder: Path) -> dict[str, np.ndarray]:
    """A version's ``weights.npz`` arrays, once its bytes match the sha256 its metadata records."""
    path = str(folder / WEIGHTS_FILE)
    recorded = read_metadata(folder).get("files", {}).get(WEIGHTS_FILE)
    if recorded is not None and recorded != sha256_file(path):
        raise ValueError(f"{path} does not match the sha256 in its metadata")
    return read_arrays(path)


def save_hashing_model(
    models_dir: str | Path,
    name: str,
    encoder: HashEncoder,
    metadata: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> Path:
    """Save a semantic-hashing ``HashEncoder`` (kind ``hashing``) as a new version of ``name``.

    Only the encoder's weights are kept (``weights.npz``: the projection, and the MLP branch of
    an autoencoder); the decoder that trained it is not needed to code or search.
    """

    def write_weights(folder: Path) -> None:
        write_arrays(str(folder / WEIGHTS_FILE), encoder.weights())

    return save_model_version(models_dir, name, encoder.config(), metadata, write_weights, now)


def load_hashing_model(models_dir: str | Path, name: str, version: str = LATEST) -> HashEncoder:
    """Load a saved ``HashEncoder`` (checking the weights file against its recorded sha256)."""
    folder = resolve_version(models_dir, name, version)
    config = read_config(folder)
    if config.get("kind") != KIND_HASHING:
        raise ValueError(
            f"model {name} ({folder.name}) is a {config.get('kind')!r} model, not {KIND_HASHING!r}"
        )
    return HashEncoder.from_arrays(config, _checked_weights(folder))


def list_models(models_dir: str | Path) -> list[ModelVersion]:
    """Every published version under ``models_dir``, sorted by name then version (oldest first).

    Temporary folders of saves in progress or abandoned are skipped; a missing directory is an
    empty list.
    """
    root = Path(models_dir)
    if not root.is_dir():
        return []
    found = []
    for model_dir in sorted(
        p for p in root.iterdir() if p.is_dir() and _NAME_PATTERN.match(p.name)
    ):
        pointer = model_dir / LATEST_FILE
        latest = pointer.read_text().strip() if pointer.is_file() else None
        for folder in sorted(model_dir.iterdir()):
            if not (folder.is_dir() and _VERSION_PATTERN.match(folder.name)):
                continue
            try:
                kind = str(read_config(folder).get("kind", "unknown"))
            except (OSError, json.JSONDecodeError):
                kind = "unreadable"
            found.append(
                ModelVersion(model_dir.name, folder.name, folder, kind, folder.name == latest)
            )
    return found
