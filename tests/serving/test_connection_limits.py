"""Issue 24's connection attacks against a real uvicorn server on loopback: idle, slow-header
and stalled-body connections are closed on their deadlines, oversized heads and bodies are
refused, a flood of idle sockets cannot lock out a real client, and slow uploads from many
connections cannot make the server hold more than its budget.

Raw sockets play the attacker (``serving.connection_guard``, ``serving.http_hygiene.BodyBudget``);
the limits are small so each attack resolves in about a second.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from serving.config import ConnectionLimits

LIMITS = ConnectionLimits(
    head_timeout_s=1.0,
    body_idle_s=1.5,
    min_body_bytes_per_s=20_000,
    keep_alive_s=1,
    max_head_bytes=8192,
    max_connections=16,
    max_buffered_bytes=600_000,
)
MAX_UPLOAD = 200_000
SLACK_S = 1.5  # timers fire on the event loop: allow for a busy test machine


@pytest.fixture(scope="module")
def server(v2_root):
    from serving.app import create_app
    from serving.config import ServeConfig
    from serving.server import BackgroundServer

    config = ServeConfig(
        index=str(v2_root),
        poll_interval_s=0,
        decode_workers=0,
        max_upload_bytes=MAX_UPLOAD,
        connection_limits=LIMITS,
    )
    with BackgroundServer(create_app(config)) as running:
        yield running


def _connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _until_closed(sock: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    sock.settimeout(limit_s)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _upload(server, photo: Path) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/search/image?k=1",
        content=photo.read_bytes(),
        headers={"content-type": "image/jpeg"},
    )


def _metrics_5xx(server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("imgsearch_requests_total") and 'status="5' in line
    )


def test_a_connection_that_sends_nothing_is_closed_on_the_head_deadline(server) -> None:
    with _connect(server) as sock:
        answer, took = _until_closed(sock)
    assert _status(answer) == 408
    assert LIMITS.head_timeout_s - 0.2 <= took <= LIMITS.head_timeout_s + SLACK_S


def test_slowloris_headers_are_cut_at_the_head_deadline(server) -> None:
    """A byte of header every 0.1 s never finishes: the deadline counts from the connection, not
    from the last byte, so dripping does not extend it."""
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started, answer = time.monotonic(), None
        while answer is None and time.monotonic() - started < LIMITS.head_timeout_s + SLACK_S:
            try:
                sock.sendall(b"X")
                sock.settimeout(0.1)
                answer = sock.recv(65536)  # the 408, or b"" once closed
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
        took = time.monotonic() - started
    assert answer is not None and (answer == b"" or _status(answer) == 408)
    assert took <= LIMITS.head_timeout_s + SLACK_S


def test_a_stalled_body_is_cut_and_counted_as_the_client_closing(server) -> None:
    before = _metrics_5xx(server)
    with _connect(server) as sock:
        sock.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                     b"content-length: 90000\r\n\r\n" + b"\x89PNG" + b"\0" * 996)  # fmt: skip
        answer, took = _until_closed(sock)
    assert answer == b""  # nothing to answer: the body never came
    assert LIMITS.body_idle_s - 0.2 <= took <= LIMITS.body_idle_s + SLACK_S
    assert _metrics_5xx(server) == before
    assert (
        'imgsearch_requests_total{route="/api/search/image",status="499"}'
        in httpx.get(f"{server.url}/metrics").text
    )


def test_a_dripped_body_is_cut_once_it_falls_behind_the_minimum_pace(server) -> None:
    """A byte every 0.2 s never pauses long enough to stall, but averages 5 B/s: cut once the
    idle allowance has passed, not left to hold its buffer for ever."""
    with _connect(server) as sock:
        sock.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                     b"content-length: 90000\r\n\r\n")  # fmt: skip
        started, closed = time.monotonic(), False
        while not closed and time.monotonic() - started < LIMITS.body_idle_s + 2 * SLACK_S:
            try:
                sock.sendall(b"\0")
                sock.settimeout(0.2)
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        took = time.monotonic() - started
    assert closed and LIMITS.body_idle_s <= took <= LIMITS.body_idle_s + 2 * SLACK_S


def test_a_slow_but_steady_upload_is_answered_however_long_it_takes(server, serve_photos) -> None:
    data = serve_photos[0].read_bytes()
    assert len(data) <= MAX_UPLOAD
    with _connect(server) as sock:
        sock.sendall(b"POST /api/search/image?k=1 HTTP/1.1\r\nHost: x\r\n"
                     b"content-type: image/jpeg\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n" % len(data))  # fmt: skip
        # Ten pieces 0.4 s apart: over twice the idle allowance in all, never a stall, about
        # 40 kB/s (above the minimum pace): an honest slow uplink is not cut.
        started, step = time.monotonic(), len(data) // 10 + 1
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])
            time.sleep(0.4)
        answer, _ = _until_closed(sock)
    assert time.monotonic() - started > 2 * LIMITS.body_idle_s
    assert _status(answer) == 200, answer[:300]


def test_an_idle_keep_alive_connection_is_closed(server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, took = _until_closed(sock)
    assert _status(answer) == 200
    assert LIMITS.keep_alive_s - 0.2 <= took <= LIMITS.keep_alive_s + SLACK_S


def test_a_head_past_its_cap_is_431(server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
        answer, _ = _until_closed(sock)
    assert _status(answer) == 431
    with _connect(server) as sock:
        sock.sendall(b"GET /health?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, _ = _until_closed(sock)
    assert _status(answer) == 431


def test_a_flood_of_idle_sockets_does_not_lock_out_a_real_client(server) -> None:
    """Three times the connection cap of idle sockets: the longest-idle ones are closed to make
    room, and /ready answers at once."""
    flood = [_connect(server) for _ in range(3 * LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        ready = httpx.get(f"{server.url}/ready", timeout=5)
        assert ready.status_code == 200
        assert time.monotonic() - started < 1.0
        for sock in flood[: LIMITS.max_connections]:  # the oldest: shed for the newcomers
            assert _until_closed(sock, 2.0)[0] == b""
    finally:
        for sock in flood:
            sock.close()


def test_busy_connections_are_not_cut_for_newcomers(server) -> None:
    """At the cap with every connection inside a request, a new connection is refused (503)
    rather than cutting a request in progress."""
    busy = []
    try:
        for _ in range(LIMITS.max_connections):
            sock = _connect(server)
            sock.sendall(
                b"POST /api/search/batch HTTP/1.1\r\nHost: x\r\n"
                b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
            )
            busy.append(sock)
        time.sleep(0.2)
        with _connect(server) as newcomer:
            newcomer.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status(_until_closed(newcomer, 3.0)[0]) == 503
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_a_declared_body_past_the_largest_form_is_413_before_it_is_sent(server) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /api/search/batch HTTP/1.1\r\nHost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 50000000\r\n\r\n"
        )
        answer, took = _until_closed(sock)
    assert _status(answer) == 413 and b"request body larger than" in answer
    assert took < 1.0


def test_a_chunked_body_past_the_limit_is_413(server) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    response = httpx.post(
        f"{server.url}/api/search/batch",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body larger than")


def test_slow_uploads_cannot_add_up_past_the_buffer_budget(server, serve_photos) -> None:
    """Connections that each hold part of an upload: once their bodies total the budget, the
    next upload gets 429 with Retry-After; when they go, uploads are answered again."""
    part = b"\x89PNG" + b"\0" * 90_000
    holders = []
    try:
        for _ in range(LIMITS.max_buffered_bytes // len(part) + 1):
            sock = _connect(server)
            sock.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: x\r\ncontent-type: image/png"
                         b"\r\ncontent-length: 99000\r\n\r\n" + part)  # fmt: skip
            holders.append(sock)
        time.sleep(0.3)
        refused = _upload(server, serve_photos[0])
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "2"
    finally:
        for sock in holders:
            sock.close()
    time.sleep(0.3)
    answered = _upload(server, serve_photos[0])
    assert answered.status_code == 200, answered.text
