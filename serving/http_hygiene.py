"""Response headers every answer carries, HEAD wherever GET is allowed, and a budget for request
bodies (pure ASGI).

- ``X-Content-Type-Options: nosniff``: a browser never guesses a type the server did not
  send (a thumbnail is a JPEG, an error is JSON).
- ``X-Frame-Options: DENY``: the search page cannot be framed by another site (clickjacking).
- ``Referrer-Policy: same-origin``: a query in the page's address does not leak to the image
  hosts the page links to.
- ``Content-Security-Policy``: nothing at all for answers that are not pages (a JSON body
  opened in a browser runs nothing); the search page and /docs set their own (``page_csp``):
  only their own nonce-tagged inline scripts and styles, images and requests to this origin.

FastAPI routes declared for GET answer HEAD with 405; HTTP says HEAD is GET without the body
(load balancers and uptime probes send it), so ``HeadAsGet`` runs the GET and drops the body,
keeping its status and headers (``Content-Length`` included).

``BodyBudget`` bounds what clients can make the server hold: no request body past the largest
any route accepts (413, refused on its ``Content-Length`` before a byte is read, or when the
stream passes it), and all bodies held at once within a server-wide total (429 with
``Retry-After``): slow uploads from many connections cannot add up to the machine's memory.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.exceptions import HTTPException

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
)


def new_nonce() -> str:
    """A fresh CSP nonce: one per page served."""
    return secrets.token_urlsafe(16)


def page_csp(nonce: str, scripts_from_self: bool = False) -> str:
    """The CSP of an HTML page whose inline ``<script>`` and ``<style>`` carry ``nonce``:
    nothing else runs (no injected markup, no ``on*=`` handlers, no other origin's scripts);
    images, requests and form posts go to this origin only. ``scripts_from_self``: the page
    also loads script and style files from this server (/docs' Swagger UI, which styles its
    elements inline as well)."""
    scripts = f"'nonce-{nonce}'" + (" 'self'" if scripts_from_self else "")
    styles = "'self' 'unsafe-inline'" if scripts_from_self else f"'nonce-{nonce}'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every HTTP response that does not set them itself."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class HeadAsGet:
    """A HEAD request runs as GET; the response keeps its status and headers, not its body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # drop the chunk; the last one below ends the response
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


async def _send_error(send, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
    """A ``{"detail": ...}`` answer sent from a middleware, before the app (and its exception
    handlers) is reached: the same shape as the app's own errors."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
        *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class BodyRefused(HTTPException):
    """A request body over a bound, raised from ``receive``: Starlette answers it, and FastAPI's
    body parsing re-raises it (it turns other errors into a 400)."""


_RETRY_AFTER_S = 2


class BodyBudget:
    """At most ``max_body_bytes`` per request body and ``max_buffered_bytes`` in all the bodies
    of requests in progress (counted as they arrive, released when the request ends)."""

    def __init__(self, app: Any, max_body_bytes: int, max_buffered_bytes: int) -> None:
        self.app, self.max_body_bytes, self.max_buffered_bytes = (
            app, max_body_bytes, max_buffered_bytes
        )  # fmt: skip
        self.buffered = 0  # only touched on the event loop: no lock needed

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, 413, self._too_large(), (b"connection", b"close"))
            return
        held = 0

        async def counted() -> dict:
            nonlocal held
            message = await receive()
            size = len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if held + size > self.max_body_bytes:
                raise BodyRefused(413, self._too_large())
            if self.buffered + size > self.max_buffered_bytes:
                raise BodyRefused(
                    429,
                    "the server holds as many uploads as it may: retry shortly",
                    headers={"Retry-After": str(_RETRY_AFTER_S)},
                )
            held += size
            self.buffered += size
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.buffered -= held


def read_api_keys(path: str) -> tuple[bytes, ...]:
    """The keys in ``path``: one per line, blank lines and ``#`` comments ignored; ValueError
    when it holds none (a server meant to be closed must not start open)."""
    with open(path, encoding="utf-8") as lines:
        keys = tuple(
            line.strip().encode() for line in lines if line.strip() and not line.startswith("#")
        )
    if not keys:
        raise ValueError(f"{path} holds no API key (one per line)")
    if any(len(key) < 16 for key in keys):
        raise ValueError(f"{path}: every API key must be at least 16 characters")
    return keys


# Probes and scrapers do not carry keys; they learn nothing but versions and counts.
OPEN_PATHS = ("/health", "/ready", "/metrics")


class ApiKeyAuth:
    """Every request but ``OPEN_PATHS`` carries one of ``keys``, as ``Authorization: Bearer
    KEY`` or ``X-API-Key: KEY``; otherwise 401. Keys are compared in constant time."""

    def __init__(self, app: Any, keys: tuple[bytes, ...]) -> None:
        self.app, self.keys = app, keys

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key", b"")
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer":
            given = given or token.strip()
        # Every key is compared, whether or not one matched: the time says nothing.
        return bool(given) and sum(secrets.compare_digest(given, key) for key in self.keys) > 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._allowed(dict(scope["headers"])):
            await self.app(scope, receive, send)
            return
        detail = "an API key is required (Authorization: Bearer KEY)"
        await _send_error(send, 401, detail, (b"www-authenticate", b"Bearer"))
