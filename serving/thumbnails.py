"""Thumbnails of indexed images, looked up by image id only.

The uri comes from the loaded index version (``ImageDetails``), never from the request, so no
request can make the server read a source of its choosing. Sources are read as
``serving.sources`` reads them (local, gs://, http(s): timeouts and a size cap), shrunk by
``encoders.imaging.thumbnail_jpeg`` under the query limits -- in the decode worker processes
when the server has them, since a source may have changed since it was indexed -- and kept in
a bounded LRU cache of JPEG bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from encoders.imaging import ImageRejected, thumbnail_jpeg
from serving.lru import LRU
from serving.sources import SourceUnavailable, read_source


class ThumbnailError(Exception):
    """The source of an indexed image cannot be read or decoded now."""


class ThumbnailCache:
    """``uri`` -> thumbnail JPEG bytes, at most ``entries`` kept (least recently used dropped).

    ``make`` is ``(bytes, max_side) -> JPEG`` (``encoders.decode_pool.bound_thumbnailer``;
    by default ``thumbnail_jpeg`` in this process under the default limits).
    """

    def __init__(
        self,
        max_side: int,
        entries: int,
        make: Callable[[bytes, int], bytes] = thumbnail_jpeg,
    ) -> None:
        self.max_side, self.entries = max_side, entries
        self._make = make
        self._cache: LRU[bytes] = LRU(entries)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def get(self, uri: str) -> bytes:
        cached = self._cache.get(uri)
        if cached is not None:
            return cached
        # Read and resize outside the lock: two concurrent misses may both do the work once.
        try:
            data = read_source(uri)
        except SourceUnavailable as exc:
            raise ThumbnailError(str(exc)) from exc
        try:
            thumbnail = self._make(data, self.max_side)
        except ImageRejected as exc:
            raise ThumbnailError(f"source is not a decodable image: {exc.reason}") from exc
        self._cache.put(uri, thumbnail)
        return thumbnail
