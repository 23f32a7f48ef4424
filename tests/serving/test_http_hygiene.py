"""Every answer carries the security headers, and HEAD is answered wherever GET is."""

from __future__ import annotations

import re

import pytest

from serving.http_hygiene import SECURITY_HEADERS


@pytest.fixture(scope="module")
def client(v2_client):
    return v2_client


def _image_id(client) -> str:
    return client.get("/api/search", params={"q": "a dog", "k": 1}).json()["results"][0]["image_id"]


@pytest.mark.parametrize("path", ["/health", "/api/search?q=dog", "/no/such/page"])
def test_every_answer_has_the_security_headers(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS:
        assert response.headers[name.decode()] == value.decode(), (path, name)


def test_pages_allow_only_their_own_nonce_tagged_scripts(client):
    """The page's CSP: its inline script and styles carry this answer's nonce, nothing else
    runs; a new nonce every answer (an attacker cannot learn one to reuse)."""
    first, second = client.get("/"), client.get("/", params={"q": "dog"})
    policies = [r.headers["content-security-policy"] for r in (first, second)]
    nonces = [re.search(r"'nonce-([\w-]+)'", p).group(1) for p in policies]
    assert nonces[0] != nonces[1]
    for response, nonce in zip((first, second), nonces, strict=True):
        policy = response.headers["content-security-policy"]
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        tags = re.findall(r"<(script|style)\b([^>]*)>", response.text)
        assert tags and all(f'nonce="{nonce}"' in attrs for _, attrs in tags), tags
        assert not re.search(r"\s(on[a-z]+|style)=", response.text)  # no inline handlers/styles
    for name, value in SECURITY_HEADERS[:-1]:  # the rest of the headers as everywhere
        assert first.headers[name.decode()] == value.decode()


def test_docs_are_served_from_this_server(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn." not in docs.text and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/redoc").status_code == 404  # its page would load from a CDN


def test_head_is_get_without_the_body(client):
    image_id = _image_id(client)
    for path in ("/", "/health", f"/api/images/{image_id}", f"/thumbnails/{image_id}"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == str(len(got.content))
        assert head.headers["x-frame-options"] == "DENY"
    assert client.head("/api/images/not-an-id").status_code == 404
    # A route without GET still refuses HEAD: it is not a way around the method check.
    assert client.head("/api/search/image").status_code == 405


def test_no_redirect_echoes_the_host_header(client):
    response = client.get("/health/", headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers


def test_an_upload_aborted_mid_body_is_one_log_line_and_no_5xx(client, serve_photos, caplog):
    """The ASGI app is called as a server would, the client vanishing halfway through the body."""
    import asyncio

    app = client.app
    data = serve_photos[0].read_bytes()
    body = [
        {"type": "http.request", "body": data[: len(data) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent = []

    async def receive():
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/search/image", "raw_path": b"/api/search/image",
        "query_string": b"", "root_path": "", "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"content-type", b"image/jpeg"), (b"content-length", str(len(data)).encode())],
    }  # fmt: skip
    metrics = client.get("/metrics").text
    with caplog.at_level("INFO", logger="serving.app"):
        asyncio.run(app(scope, receive, send))
    assert not [m for m in sent if m["type"] == "http.response.start"]  # nobody to answer
    assert any("client closed POST /api/search/image" in r.message for r in caplog.records)
    after = client.get("/metrics").text
    assert 'route="/api/search/image",status="499"' in after
    assert after.count('status="500"') == metrics.count('status="500"')


def test_probes_answer_while_every_worker_thread_is_busy(client):
    """With the worker-thread limiter exhausted (a server busy decoding and searching), a sync
    route waits but /health, /ready and /metrics answer from the event loop."""
    import threading

    import anyio.to_thread

    holders = []

    async def take_every_thread() -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        while limiter.available_tokens:
            holder = object()
            await limiter.acquire_on_behalf_of(holder)
            holders.append(holder)

    async def give_back() -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        for holder in holders:
            limiter.release_on_behalf_of(holder)

    image_id = _image_id(client)
    client.portal.call(take_every_thread)
    try:
        answers = {}

        def probe() -> None:
            for path in ("/health", "/ready", "/metrics"):
                answers[path] = client.get(path).status_code

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert answers == {"/health": 200, "/ready": 200, "/metrics": 200}
        waiting = threading.Thread(target=lambda: client.get(f"/api/images/{image_id}"))
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive()  # the sync route does queue: the limiter really is exhausted
    finally:
        client.portal.call(give_back)
    waiting.join(timeout=10)
    assert not waiting.is_alive()
