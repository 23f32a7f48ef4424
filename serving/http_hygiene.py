"""Response headers every answer carries, and HEAD wherever GET is allowed (pure ASGI).

- ``X-Content-Type-Options: nosniff``: a browser never guesses a type the server did not
  send (a thumbnail is a JPEG, an error is JSON).
- ``X-Frame-Options: DENY``: the search page cannot be framed by another site (clickjacking).
- ``Referrer-Policy: same-origin``: a query in the page's address does not leak to the image
  hosts the page links to.

FastAPI routes declared for GET answer HEAD with 405; HTTP says HEAD is GET without the body
(load balancers and uptime probes send it), so ``HeadAsGet`` runs the GET and drops the body,
keeping its status and headers (``Content-Length`` included).
"""

from __future__ import annotations

from typing import Any

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
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
