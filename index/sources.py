"""What a version knows of its source files: uri, the listing's stamp, the content hash.

The index job writes one row per input it hashed (kept copies and duplicates alike)::

    OUT/sources/sources-SSSSS-of-NNNNN.parquet   uri, stamp, sha256, num_bytes

An incremental run (``--previous``) joins its listing with the previous version's rows by
uri: where the stamp the listing saw equals the stored one, the stored hash stands for the
file and its bytes are not read (``pipelines.sources``). So a run over an unchanged corpus
lists it and reads no image (no object GET on gs://). A stamp is ``size:modified``: for a
local file its size and modification time (nanoseconds), for an object its size and update
time (a new generation always has a new update time). A file rewritten in place with the same
size and an mtime put back by hand would be taken as unchanged, as ``rsync``'s quick check
does; manifest rows carry no stamp and are always read. Versions written before this file
existed have none, and their next run hashes every file once, as before.

The files are listed (and checksummed) in the manifest like the table's.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from index.manifest import IndexManifest, file_entry
from storage.files import join_path, join_uri, list_files

SOURCES_DIR = "sources"

SOURCES_PREFIX = "sources"

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stamp", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("num_bytes", pa.int64(), nullable=False),
    ]
)


def file_stamp(size: int | None, modified: float | None) -> str:
    """``"size:modified"`` of a listed file, or ``""`` when the listing did not say both."""
    if size is None or modified is None or not modified:
        return ""
    return f"{int(size)}:{float(modified):.9f}"


def same_source(stamp: str, stored: dict[str, Any] | None) -> bool:
    """Whether a listed file with ``stamp`` is the one a stored sources row describes."""
    return bool(stamp) and stored is not None and stored.get("stamp") == stamp


def sources_dir(out_dir: str) -> str:
    return join_uri(out_dir, SOURCES_DIR)


def source_files(index_dir: str, manifest: IndexManifest) -> list[str]:
    """The sources files a version's manifest lists, as paths under ``index_dir``."""
    return [join_path(index_dir, entry["path"]) for entry in manifest.files_under(SOURCES_DIR)]


def with_sources(out_dir: str, manifest: IndexManifest) -> IndexManifest:
    """``manifest`` listing the files under ``OUT/sources`` (none when the folder is absent)."""
    files = [file_entry(path, out_dir) for path in list_files(sources_dir(out_dir), "*.parquet")]
    return manifest.with_files_under(SOURCES_DIR, files)
