"""Thumbnails of indexed images, looked up by image id only.

The uri comes from the loaded index version (``ImageDetails``), never from the request, so no
request can make the server read a path of its choosing. Sources are read through Beam's
``FileSystems`` (local or gs://), decoded under the same header limits as queries, shrunk with
Pillow and kept in a bounded LRU cache of JPEG bytes.
"""

from __future__ import annotations

import collections
import io
import threading

from PIL import Image, ImageOps

from encoders.imaging import DecodeLimits
from storage.files import open_file

_MAX_SOURCE_BYTES = 64 * 2**20
_DEFAULT_LIMITS = DecodeLimits()


class ThumbnailError(Exception):
    """The source of an indexed image cannot be read or decoded now."""


def make_thumbnail(data: bytes, max_side: int, limits: DecodeLimits = _DEFAULT_LIMITS) -> bytes:
    """Encoded image -> JPEG whose longer side is at most ``max_side`` (upright, RGB)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                raise ThumbnailError(f"source has {width}x{height} pixels, over the limit")
            if im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))  # decode at a reduced DCT scale
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            out = io.BytesIO()
            im.save(out, format="JPEG", quality=85)
            return out.getvalue()
    except ThumbnailError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data
        raise ThumbnailError(f"source is not a decodable image: {exc}") from exc


class ThumbnailCache:
    """``uri`` -> thumbnail JPEG bytes, at most ``entries`` kept (least recently used dropped)."""

    def __init__(self, max_side: int, entries: int, limits: DecodeLimits = _DEFAULT_LIMITS) -> None:
        self.max_side, self.entries, self.limits = max_side, entries, limits
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, uri: str) -> bytes:
        with self._lock:
            if uri in self._cache:
                self._cache.move_to_end(uri)
                self.hits += 1
                return self._cache[uri]
            self.misses += 1
        # Read and resize outside the lock: two concurrent misses may both do the work once.
        thumbnail = make_thumbnail(self._read(uri), self.max_side, self.limits)
        with self._lock:
            if self.entries:
                self._cache[uri] = thumbnail
                self._cache.move_to_end(uri)
                while len(self._cache) > self.entries:
                    self._cache.popitem(last=False)
        return thumbnail

    def _read(self, uri: str) -> bytes:
        try:
            with open_file(uri) as f:
                data = f.read(_MAX_SOURCE_BYTES + 1)
        except Exception as exc:  # local and gs:// raise different errors
            raise ThumbnailError(f"source {uri} cannot be read: {exc}") from exc
        if len(data) > _MAX_SOURCE_BYTES:
            raise ThumbnailError(f"source {uri} is larger than {_MAX_SOURCE_BYTES} bytes")
        return data
