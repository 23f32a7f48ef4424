"""A thin client of ``imgsearch serve``'s JSON API, answering with the local API's dataclasses.

``Client(url).search_text(...)`` returns what ``open_index(...).search_text(...)`` returns for
the version the server holds (scores rounded to 6 decimals by the server). Routes and answers
are ``serving.app``'s: ``GET /api/search``, ``POST /api/search/image`` (raw body),
``GET /api/similar/{id}``, ``GET /api/images/{id}``. A 4xx/5xx answer raises ``ServerError``
with the server's ``detail`` message; a 404 for an image id raises ``UnknownImageOnServer``,
which is also the local API's ``UnknownImageError``, so one ``except`` serves both.

A hit's ``uri`` is what the server shows: a local source path only as its file name unless
the server runs with ``--expose-uris`` (``serving.redaction``), URLs without credentials.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from imgsearch.api import ImageInfo, SearchHit, UnknownImageError, check_k

if TYPE_CHECKING:
    from serving.fused_search import FusedHit

__all__ = ["Client", "ServerError", "UnknownImageOnServer", "image_content_type"]

# Leading bytes -> the Content-Type the server accepts for them (serving.config lists them).
# The server's decoder checks the bytes again; this only has to name them honestly.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


class ServerError(Exception):
    """The server refused a request: ``status`` and its ``{"detail": ...}`` message."""

    def __init__(self, status: int, detail: str, url: str) -> None:
        super().__init__(status, detail, url)
        self.status, self.detail, self.url = status, detail, url

    def __str__(self) -> str:
        return f"HTTP {self.status} from {self.url}: {self.detail}"


class UnknownImageOnServer(ServerError, UnknownImageError):
    """404 for an image id the serving version does not hold."""


def image_content_type(data: bytes) -> str:
    """The image type ``data`` starts like, for the upload's Content-Type.

    Unrecognised bytes are sent as JPEG: the server decodes by content, so they get its own
    422 "image rejected" answer rather than a 415 about a header the caller never chose.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    return "image/jpeg"


def error_detail(response: requests.Response) -> str:
    """The ``detail`` of an error answer as one line (FastAPI's 422 gives a list of errors)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):  # not JSON (a proxy's HTML page), or not an object
        return response.text[:500] or response.reason
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', []))}: {error.get('msg')}"
            if isinstance(error, dict)
            else str(error)
            for error in detail
        )
    return str(detail)


def hit_from_json(result: dict[str, Any]) -> SearchHit | FusedHit:
    """One entry of an answer's ``results`` -> the hit the local API would have returned."""
    why = result.get("why") or {}
    if why.get("match") == "fused":
        from serving.fused_search import FusedHit  # lazy, as in imgsearch.api

        return FusedHit(
            image_id=result["image_id"],
            uri=result["uri"],
            score=float(result["score"]),
            parts=why.get("parts", {}),
            caption=why.get("caption"),
            # The answer lists no tags as []; FusedSearcher says None when it has no tag column.
            tags=result.get("tags") or None,
            matched_tags=why.get("matched_tags", []),
        )
    return SearchHit(result["image_id"], result["uri"], float(result["score"]))


class Client:
    """Query a running ``imgsearch serve`` at ``base_url`` (e.g. ``http://127.0.0.1:8080``).

    ``timeout`` is seconds per request (connect and read). The server bounds ``k`` (100 by
    default) and answers 422 beyond it. Connection failures raise ``requests`` exceptions.
    Reuses one HTTP connection pool; ``close()`` it, or use ``with Client(...) as client``.
    """

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"base_url must be http(s)://host[:port], got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        self._session = requests.Session()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def search_text(self, query: str, k: int = 10) -> list[SearchHit] | list[FusedHit]:
        """Text -> up to ``k`` hits; ``FusedHit`` when the server runs with ``--fused``."""
        body = self._call("GET", "/api/search", params={"q": query, "k": check_k(k)})
        return [hit_from_json(result) for result in body["results"]]

    def search_image(self, image: str | os.PathLike | bytes, k: int = 10) -> list[SearchHit]:
        """A local image file or its bytes -> up to ``k`` hits (sent as the raw request body)."""
        k = check_k(k)
        if isinstance(image, str | os.PathLike):
            data = Path(image).read_bytes()  # FileNotFoundError names the path
        elif isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
        else:
            raise TypeError(f"search_image takes a path or bytes, got {type(image).__name__}")
        body = self._call(
            "POST", "/api/search/image", params={"k": k}, data=data,
            headers={"Content-Type": image_content_type(data)},
        )  # fmt: skip
        return [hit_from_json(result) for result in body["results"]]

    def similar(self, image_id: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` indexed images nearest to ``image_id`` (itself left out)."""
        body = self._call("GET", f"/api/similar/{_quoted(image_id)}", params={"k": check_k(k)},
                          image_route=True)  # fmt: skip
        return [hit_from_json(result) for result in body["results"]]

    def details(self, image_id: str) -> ImageInfo:
        """The serving version's table row for ``image_id``."""
        return ImageInfo.from_json(
            self._call("GET", f"/api/images/{_quoted(image_id)}", image_route=True)
        )

    def health(self) -> dict[str, Any]:
        """``/health``: the serving version, whether text search is on, reload status."""
        return self._call("GET", "/health")

    def _call(self, method: str, path: str, image_route: bool = False, **kwargs: Any) -> Any:
        url = self.base_url + path
        response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        if response.status_code < 400:
            return response.json()
        detail = error_detail(response)
        # Starlette's bare "Not Found" means no such route (a wrong base_url), not a missing id.
        if image_route and response.status_code == 404 and detail != "Not Found":
            raise UnknownImageOnServer(response.status_code, detail, url)
        raise ServerError(response.status_code, detail, url)


def _quoted(image_id: str) -> str:
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"an image id is a non-empty str, got {image_id!r}")
    return urllib.parse.quote(image_id, safe="")
