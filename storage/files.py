"""Storage plumbing for local paths and ``gs://`` alike: the one place that opens files.

Everything the project reads or writes outside a Beam transform goes through these helpers,
which go through Beam's ``FileSystems`` (so a ``gs://`` path needs no code of its own). Files
are always opened *uncompressed*: ``FileSystems`` would otherwise guess a codec from the
extension, and the checksums in a manifest are over the stored bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_RAW = CompressionTypes.UNCOMPRESSED
_CHUNK_BYTES = 4 * 2**20


def open_file(path: str) -> IO[bytes]:
    """Open ``path`` for reading, bytes as stored (no codec guessed from the extension)."""
    return FileSystems.open(path, compression_type=_RAW)


def create_file(path: str, mime_type: str = "application/octet-stream") -> IO[bytes]:
    """Create (or replace) ``path`` for writing, bytes as given; parent folders as needed."""
    return FileSystems.create(path, mime_type=mime_type, compression_type=_RAW)


def read_bytes(path: str) -> bytes:
    with open_file(path) as handle:
        return handle.read()


def write_bytes(path: str, payload: bytes) -> None:
    with create_file(path) as handle:
        handle.write(payload)


def write_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Named arrays as one ``.npz`` file (``np.savez``: plain arrays, no pickles)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The named arrays of a ``.npz`` file ``write_arrays`` made (pickles refused)."""
    with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as arrays:
        return {key: arrays[key] for key in arrays.files}


def read_json(path: str) -> Any:
    """The JSON document at ``path``; FileNotFoundError when there is none."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    return json.loads(read_bytes(path).decode("utf-8"))


def json_bytes(data: Any) -> bytes:
    """``data`` as the project writes JSON documents: indented, keys sorted, a final newline."""
    return json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` whole (see ``replace_by_rename``)."""
    folder, name = FileSystems.split(path)
    replace_by_rename(folder, name, json_bytes(data))


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def is_local(path: str) -> bool:
    """Whether ``path`` is on local disk (no ``scheme://``)."""
    return FileSystems.get_scheme(path) is None


def absolute_if_local(path: str) -> str:
    """A local path made absolute (against this process's working directory); any
    ``scheme://`` uri as it is. For inputs whose paths are stored: a relative path would later
    be resolved against whichever directory the reader runs in."""
    return os.path.abspath(path) if is_local(path) else path


def file_name(path: str) -> str:
    return FileSystems.split(path)[1]


def join_uri(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and gs:// alike."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def join_path(root: str, relative: str) -> str:
    """``root`` joined with a manifest's ``/``-separated relative path (local or gs://)."""
    return FileSystems.join(root, *relative.split("/"))


def list_files(folder: str, pattern: str = "*") -> list[str]:
    """Sorted paths of the files directly in ``folder`` whose names match ``pattern``."""
    matched = FileSystems.match([join_uri(folder, pattern)])[0].metadata_list
    return sorted(m.path for m in matched)


def size_and_sha256(path: str) -> tuple[int, str]:
    """A file's size in bytes and the SHA-256 of its bytes, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open_file(path) as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sha256_file(path: str) -> str:
    return size_and_sha256(path)[1]


def replace_by_rename(folder: str, name: str, payload: bytes) -> None:
    """Write ``folder/name`` whole: a hidden temp file first, then one rename over the name.

    A reader sees the old file or the new one, never a partial write; a failure (or Ctrl-C)
    removes the temp file and leaves the old file untouched.
    """
    temp_path = FileSystems.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        with create_file(temp_path, mime_type="application/json") as f:
            f.write(payload)
        FileSystems.rename([temp_path], [FileSystems.join(folder, name)])
    except BaseException:
        if FileSystems.exists(temp_path):
            FileSystems.delete([temp_path])
        raise


def relative_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` with ``/`` separators; ValueError if it is not under root."""
    if "://" in root or "://" in path:
        prefix = root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {root}")
        return path[len(prefix) :]
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
        raise ValueError(f"{path} is not under {root}")
    return relative.replace(os.sep, "/")


def delete_file(path: str) -> bool:
    """Delete one file (local or gs://) if it exists; -> whether there was one."""
    if not FileSystems.exists(path):
        return False
    FileSystems.delete([path])
    return True


def delete_tree(path: str) -> None:
    """Delete a folder (local disk) or every object under a prefix (gs://), if any."""
    if FileSystems.exists(path):  # a real directory on local disk
        FileSystems.delete([path])
        return
    stale = FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list
    if stale:
        FileSystems.delete([m.path for m in stale])


def copy_file(source: str, destination: str) -> None:
    """Copy one file byte for byte through Beam FileSystems (local or gs:// on either side).

    On GCS the copy is a server-side rewrite: an update's untouched table and index files never
    travel through this process. On local disk the destination is a hard link when the
    filesystem allows: version files are immutable (every writer creates a new file, after
    removing what an interrupted attempt left), so versions can share an inode, which costs
    neither time nor space, and retention's delete only drops one name of it. Across
    filesystems the bytes are streamed.
    """
    scheme = FileSystems.get_scheme(destination)
    if FileSystems.get_scheme(source) == scheme:
        if scheme is None:
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
            if os.path.lexists(destination):
                os.remove(destination)  # never write through a name another version shares
            try:
                os.link(source, destination)
                return
            except OSError:  # another device, or no hard links on this filesystem
                pass
        FileSystems.copy([source], [destination])
        return
    with (
        open_file(source) as src,
        create_file(destination) as dst,
    ):
        while chunk := src.read(_CHUNK_BYTES):
            dst.write(chunk)
