"""An indexed image's source, read again (thumbnails, explanations, focused "more like this").

The uri comes from the loaded index version, never from a request. It is read through the
index job's guarded reader (``storage.fetch``: local paths, ``file://``, gs://, http(s) with
timeouts and a size cap), with a short deadline: a page waits for it.
"""

from __future__ import annotations

from storage.fetch import FetchError, FetchLimits, read_bytes

SOURCE_LIMITS = FetchLimits(
    max_bytes=64 * 2**20, connect_timeout_s=5.0, read_timeout_s=10.0, total_timeout_s=15.0,
    retries=0,
)  # fmt: skip


class SourceUnavailable(Exception):
    """The source cannot be read now (moved, deleted, too large, its host down)."""


def read_source(uri: str, limits: FetchLimits = SOURCE_LIMITS) -> bytes:
    try:
        return read_bytes(uri, limits)
    except FetchError as exc:
        raise SourceUnavailable(f"source {uri} cannot be read: {exc.reason}") from exc
