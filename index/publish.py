"""Published index versions and the pointer that says which one serves.

Layout of a publish root (local or gs://)::

    ROOT/versions/<version>/manifest.json   one complete index output per version (immutable)
    ROOT/latest.json                        {"version": "<version>", "path": "versions/<version>",
                                             "published_at": "...", "previous": "<version>|null"}
    ROOT/served/<version>.json              written by the first server that served the version
                                             (``mark_served``): what ``rollback`` and a server
                                             starting on a bad pointer fall back to

The pointer is the only mutable object. It is written whole and swapped in one step (a rename
on local disk; on gs:// one object write conditioned on the generation that was read, so of two
concurrent publishers one wins and the other gets ``PointerConflictError``), so a reader sees
the old version or the new one, never a mix. Serving and the
nightly DAG resolve what to load through ``resolve_index``, which also accepts a plain index
output folder (one with ``manifest.json``) so every command works on either.

A corrupt ``latest.json`` never blocks the way out: ``publish`` and ``rollback`` replace it
(``previous`` is then unknown), and plain ``rollback`` picks the newest version a server has
verified and served, which needs no pointer at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from typing import Any

from apache_beam.io.filesystems import FileSystems

from index.manifest import MANIFEST_NAME
from storage.files import (
    delete_tree,
    exists,
    json_bytes,
    read_bytes,
    read_json,
    replace_by_rename,
    write_json,
)

logger = logging.getLogger(__name__)

POINTER_NAME = "latest.json"

VERSIONS_DIR = "versions"

SERVED_DIR = "served"


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


class PointerConflictError(RuntimeError):
    """Another publisher replaced ``latest.json`` between our read and our write."""


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
    raw = read_bytes(path)
    try:
        return Pointer.from_json(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid publish pointer: {exc}") from exc


def _readable_pointer(root: str) -> Pointer | None:
    """The pointer, or None when there is none or it cannot be parsed (said in the log): for
    the commands that replace it or look past it, which must work precisely when it is broken
    (its ``previous`` is then unknown)."""
    try:
        return read_pointer(root)
    except ValueError as exc:
        logger.warning("taking the publish pointer as absent: %s (its previous is unknown)", exc)
        return None


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
    On gs:// raises ``PointerConflictError`` when another publisher wrote the pointer between
    this call's read and its write (nothing is overwritten; re-run to publish on top of it).
    """
    target = version_dir(root, version)
    if not FileSystems.exists(FileSystems.join(target, MANIFEST_NAME)):
        raise FileNotFoundError(f"refusing to publish {target}: it has no {MANIFEST_NAME}")
    final_path = pointer_path(root)
    if FileSystems.get_scheme(final_path) == "gs":
        pointer = _swap_gcs_pointer(final_path, version)
    else:
        pointer = _next_pointer(version, _readable_pointer(root))
        replace_by_rename(_root(root), POINTER_NAME, _pointer_bytes(pointer))
    logger.info("published %s -> %s (previous %s)", final_path, version, pointer.previous)
    return pointer


def _next_pointer(version: str, current: Pointer | None) -> Pointer:
    return Pointer(
        version=version,
        path=f"{VERSIONS_DIR}/{version}",
        published_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        previous=current.version if current is not None else None,
    )


def _pointer_bytes(pointer: Pointer) -> bytes:
    return json_bytes(pointer.to_json())


def _swap_gcs_pointer(final_path: str, version: str) -> Pointer:
    """Compare-and-swap of the pointer object on GCS, keyed on its generation.

    A GCS "rename" is copy + delete, so two publishers could both succeed and the last one
    silently wins. Instead: read the object and its generation (0 when absent), build the new
    pointer from what was read, and write it only if the generation is unchanged
    (``if_generation_match``); GCS answers 412 otherwise. The client comes from Beam's own
    factory, so it uses the same credentials (and endpoint settings) as ``FileSystems``.
    """
    from apache_beam.io.gcp.gcsio import create_storage_client, parse_gcs_path
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.api_core.exceptions import PreconditionFailed

    bucket_name, name = parse_gcs_path(final_path)
    bucket = create_storage_client(PipelineOptions()).bucket(bucket_name)
    blob = bucket.get_blob(name)
    generation = 0 if blob is None else int(blob.generation)
    current = None
    if blob is not None:
        raw = blob.download_as_bytes(if_generation_match=generation)
        try:
            current = Pointer.from_json(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:  # replaced whole, by generation
            logger.warning("replacing %s, not a valid publish pointer: %s", final_path, exc)
    pointer = _next_pointer(version, current)
    try:
        bucket.blob(name).upload_from_string(
            _pointer_bytes(pointer),
            content_type="application/json",
            if_generation_match=generation,
        )
    except PreconditionFailed as exc:
        raise PointerConflictError(
            f"{final_path} changed while publishing {version} (it was at generation "
            f"{generation}): another publisher won; re-run to publish on top of it"
        ) from exc
    return pointer


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """One folder under ``ROOT/versions``; ``complete`` when its manifest has been written."""

    version: str
    path: str
    complete: bool


def list_versions(root: str) -> list[VersionInfo]:
    """Every version folder of a publish root, oldest first (by name).

    Version names sort in time order: the nightly DAG names them by logical date
    (``YYYYMMDD``) and the index job's default is a UTC timestamp.
    """
    versions_root = FileSystems.join(_root(root), VERSIONS_DIR)
    names: set[str] = set()
    # One listing serves local disks and object stores (which have no folders to list).
    for meta in FileSystems.match([FileSystems.join(versions_root, "**")])[0].metadata_list:
        relative = meta.path[len(versions_root) :].lstrip("/")
        if relative:
            names.add(relative.split("/", 1)[0])
    found = []
    for name in sorted(names):
        path = FileSystems.join(versions_root, name)
        found.append(
            VersionInfo(name, path, FileSystems.exists(FileSystems.join(path, MANIFEST_NAME)))
        )
    return found


def publish_version(root: str, version: str, verify: bool = True) -> Pointer:
    """Make ``version`` the one that serves, after checking every file its manifest lists.

    Idempotent: publishing the version the pointer already names changes nothing (a rerun of a
    nightly run must not make a version its own ``previous``).
    """
    from index.manifest import read_manifest, verify_files

    target = version_dir(root, version)
    if verify:
        verify_files(target, read_manifest(target))  # ManifestVerificationError names the damage
    current = _readable_pointer(root)
    if current is not None and current.version == version:
        logger.info("%s already serves %s; pointer left as it is", root, version)
        return current
    return write_pointer(root, version)


def rollback(root: str, to: str | None = None) -> Pointer:
    """Point ``root`` back at version ``to``; by default at the newest version a server has
    served (``served_versions``) other than the pointer's -- a version published but refused
    by every server is skipped -- or, where no server has left a record, at the pointer's
    ``previous``. Works on a corrupt pointer (it is replaced).

    One pointer swap, like a publish: the versions themselves are immutable and still there
    (``prune_versions`` never deletes the pointer's current or previous version).
    """
    current = _readable_pointer(root)
    if to is None:
        others = [v for v in served_versions(root) if current is None or v != current.version]
        if others:
            to = others[-1]
        elif current is not None and current.previous:
            to = current.previous
        else:
            raise ValueError(
                f"{root} has no version a server has served (besides the current one) and no "
                f"previous version to roll back to; pass --to VERSION"
            )
    if current is not None and current.version == to:
        raise ValueError(f"{root} already serves {to}")
    return publish_version(root, to)


def _served_path(root: str, version: str) -> str:
    version_dir(root, version)  # checks the name
    return FileSystems.join(_root(root), SERVED_DIR, f"{version}.json")


def mark_served(root: str, version: str, verified: bool) -> bool:
    """Record that a server has loaded ``version`` and serves it (once: True when this call
    wrote the record). Markers live beside the versions, never inside them (immutable)."""
    path = _served_path(root, version)
    if exists(path):
        return False
    write_json(path, {
        "version": version,
        "first_served_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "verified": verified,
    })  # fmt: skip
    return True


def served_versions(root: str) -> list[str]:
    """The complete versions some server has served (``mark_served``), oldest first."""
    served_root = FileSystems.join(_root(root), SERVED_DIR)
    names = set()
    for meta in FileSystems.match([FileSystems.join(served_root, "*.json")])[0].metadata_list:
        name = meta.path.rsplit("/", 1)[-1].removesuffix(".json")
        try:
            if read_json(meta.path).get("version") == name:
                names.add(name)
        except (OSError, ValueError, AttributeError):
            logger.warning("ignoring an unreadable served marker %s", meta.path)
    return [v.version for v in list_versions(root) if v.complete and v.version in names]


def fallback_versions(root: str, refused: str | None) -> list[str]:
    """What a server whose pointer is unreadable or names a version it refused (``refused``)
    may serve instead, best first: the versions servers have served, newest first, then the
    pointer's ``previous``. Never a version that was not published or served."""
    pointer = _readable_pointer(root)
    candidates = [v for v in reversed(served_versions(root)) if v != refused]
    previous = pointer.previous if pointer is not None else None
    if previous and previous != refused and previous not in candidates:
        candidates.append(previous)
    return candidates


def version_fingerprint(root: str, version: str) -> str:
    """A digest of the names, sizes and modification times of a version's files: it changes
    when a file is replaced, so a refused version is retried once repaired (one listing)."""
    target = version_dir(root, version)
    entries = sorted(
        (meta.path[len(target) :], meta.size_in_bytes, meta.last_updated_in_seconds)
        for meta in FileSystems.match([FileSystems.join(target, "**")])[0].metadata_list
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def prune_versions(root: str, keep: int) -> list[str]:
    """Delete complete versions beyond the ``keep`` newest; returns the deleted names.

    Never deleted: the version the pointer serves, its ``previous`` and the newest other
    version a server has served (the rollback targets), and incomplete folders (no manifest),
    which may be a job still writing. ``keep`` >= 1. A deleted version's served marker goes too.
    """
    if keep < 1:
        raise ValueError(f"retention must keep at least 1 version, got {keep}")
    pointer = read_pointer(root)
    protected = set()
    if pointer is not None:
        protected = {pointer.version, pointer.previous} - {None}
    served = set(served_versions(root))
    others = sorted(served - {pointer.version if pointer else None})
    protected |= set(others[-1:])
    complete = [v for v in list_versions(root) if v.complete]
    doomed = [v for v in complete[:-keep] if v.version not in protected]
    for info in doomed:
        # The manifest goes first: a half-deleted folder is then "incomplete", never "complete".
        FileSystems.delete([FileSystems.join(info.path, MANIFEST_NAME)])
        delete_tree(info.path)
        if info.version in served:
            FileSystems.delete([_served_path(root, info.version)])
        logger.info("retention: deleted version %s of %s", info.version, root)
    return [info.version for info in doomed]
