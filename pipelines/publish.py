"""Published index versions and the pointer that says which one serves.

Layout of a publish root (local or gs://)::

    ROOT/versions/<version>/manifest.json   one complete index output per version (immutable)
    ROOT/latest.json                        {"version": "<version>", "path": "versions/<version>",
                                             "published_at": "...", "previous": "<version>|null"}

The pointer is the only mutable object. It is written whole and swapped in one step (a rename
on local disk), so a reader sees the old version or the new one, never a mix. Serving and the
nightly DAG resolve what to load through ``resolve_index``, which also accepts a plain index
output folder (one with ``manifest.json``) so every command works on either.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.manifest import MANIFEST_NAME

logger = logging.getLogger(__name__)

POINTER_NAME = "latest.json"
VERSIONS_DIR = "versions"
_RAW = CompressionTypes.UNCOMPRESSED


@dataclasses.dataclass(frozen=True)
class Pointer:
    """The contents of ``ROOT/latest.json``."""

    version: str
    path: str  # relative to ROOT, '/'-separated: "versions/<version>"
    published_at: str
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Pointer:
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise ValueError(f"a publish pointer is an object with a 'version', got {data!r}")
        path = data.get("path") or f"{VERSIONS_DIR}/{data['version']}"
        if path.startswith("/") or "://" in path or ".." in path.split("/"):
            raise ValueError(f"pointer path must be relative to the publish root, got {path!r}")
        return cls(
            version=data["version"],
            path=path,
            published_at=str(data.get("published_at", "")),
            previous=data.get("previous"),
        )


def _root(root: str) -> str:
    return root.rstrip("/") or "/"


def pointer_path(root: str) -> str:
    return FileSystems.join(_root(root), POINTER_NAME)


def version_dir(root: str, version: str) -> str:
    """Where version ``version`` of the publish root lives."""
    if not version or "/" in version or version in (".", ".."):
        raise ValueError(f"a version name is one path segment, got {version!r}")
    return FileSystems.join(_root(root), VERSIONS_DIR, version)


def read_pointer(root: str) -> Pointer | None:
    """The pointer of a publish root, or None when nothing has been published there yet."""
    path = pointer_path(root)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type=_RAW) as f:
        raw = f.read()
    try:
        return Pointer.from_json(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid publish pointer: {exc}") from exc


def resolve_index(root_or_index_dir: str) -> tuple[str, str | None]:
    """``(index_dir, version)`` for a publish root (follows ``latest.json``) or an index dir.

    ``version`` is None for a plain index output folder. FileNotFoundError when the path is
    neither.
    """
    location = _root(root_or_index_dir)
    pointer = read_pointer(location)
    if pointer is not None:
        return FileSystems.join(location, *pointer.path.split("/")), pointer.version
    if FileSystems.exists(FileSystems.join(location, MANIFEST_NAME)):
        return location, None
    raise FileNotFoundError(
        f"{location} is neither a publish root (no {POINTER_NAME}) nor an index output "
        f"(no {MANIFEST_NAME})"
    )


def write_pointer(root: str, version: str) -> Pointer:
    """Point ``ROOT/latest.json`` at ``ROOT/versions/<version>`` in one atomic swap.

    Refuses a version whose manifest is missing: a pointer must never name a partial version.
    """
    target = version_dir(root, version)
    if not FileSystems.exists(FileSystems.join(target, MANIFEST_NAME)):
        raise FileNotFoundError(f"refusing to publish {target}: it has no {MANIFEST_NAME}")
    current = read_pointer(root)
    pointer = Pointer(
        version=version,
        path=f"{VERSIONS_DIR}/{version}",
        published_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        previous=current.version if current is not None else None,
    )
    final_path = pointer_path(root)
    temp_path = FileSystems.join(_root(root), f".{POINTER_NAME}.tmp-{uuid.uuid4().hex}")
    payload = json.dumps(pointer.to_json(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
    try:
        with FileSystems.create(
            temp_path, mime_type="application/json", compression_type=_RAW
        ) as f:
            f.write(payload)
        FileSystems.rename([temp_path], [final_path])
    except BaseException:
        if FileSystems.exists(temp_path):
            FileSystems.delete([temp_path])
        raise
    logger.info("published %s -> %s (previous %s)", final_path, version, pointer.previous)
    return pointer
