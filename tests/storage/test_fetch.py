"""storage.fetch against real files and a real HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import collections
import gzip
import http.server
import os
import pickle
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.fetch import FetchError, FetchLimits, read_bytes
from tests import corpus_factory as cf

IMAGE = cf.jpeg_bytes((64, 48), seed=7)
# Small limits keep the slow cases fast: each timeout below costs a fraction of a second.
FAST = FetchLimits(
    connect_timeout_s=1.0, read_timeout_s=0.3, total_timeout_s=3.0, retries=1, backoff_s=0.01
)
# The slow handlers end on their own after this long, so a client that ignores its limits
# fails its test (too slow, wrong reason) instead of hanging the suite.
_SERVER_GIVES_UP_S = 4.0


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one behaviour per path; ``server.hits`` counts requests per path."""

    server: _Server

    def do_GET(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        hits = self.server.count(path)
        if path == "/image.jpg":
            self._send(200, IMAGE)
        elif path == "/missing.jpg":
            self._send(404, b"not found")
        elif path == "/flaky.jpg":  # fails once, then works
            self._send(500, b"oops") if hits == 1 else self._send(200, IMAGE)
        elif path == "/broken.jpg":
            self._send(503, b"down")
        elif path == "/throttled.jpg":
            if hits == 1:
                self._send(429, b"slow down", {"Retry-After": "0"})
            else:
                self._send(200, IMAGE)
        elif path == "/moved.jpg":
            self._send(302, b"", {"Location": "/image.jpg"})
        elif path == "/loop.jpg":
            self._send(302, b"", {"Location": "/loop.jpg"})
        elif path == "/to-ftp.jpg":
            self._send(301, b"", {"Location": "ftp://127.0.0.1/image.jpg"})
        elif path == "/huge-declared.jpg":
            self._send(200, b"x" * 5000)
        elif path == "/endless.jpg":
            self._trickle()
        elif path == "/hang.jpg":
            # Accept the request, then say nothing: only a read timeout gets the client out.
            self.server.stop.wait(_SERVER_GIVES_UP_S)
        else:
            self._send(404, b"no such route")

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self) -> None:
        """200 without Content-Length, then 256 bytes every 10 ms until the client gives up."""
        self.send_response(200)
        self.end_headers()
        give_up = time.monotonic() + _SERVER_GIVES_UP_S
        try:
            while not self.server.stop.is_set() and time.monotonic() < give_up:
                self.wfile.write(b"\xff" * 256)
                self.wfile.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client hung up, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def count(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture()
def server() -> Iterator[_Server]:
    srv = _Server()
    # A short poll interval keeps shutdown() (which waits for the next poll) from costing 0.5 s.
    thread = threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _fetch_error(uri: str, limits: FetchLimits = FAST) -> FetchError:
    with pytest.raises(FetchError) as caught:
        read_bytes(uri, limits)
    return caught.value


# --- local files and Beam filesystems ------------------------------------------------------


def test_reads_a_local_path_and_a_file_uri(tmp_path: Path) -> None:
    path = cf.good_jpeg(tmp_path / "a photo.jpg")
    assert read_bytes(str(path)) == path.read_bytes()
    assert read_bytes(path.as_uri()) == path.read_bytes()  # file:///.../a%20photo.jpg


def test_reads_real_photos(small_photo_dir: Path) -> None:
    for photo in sorted(small_photo_dir.iterdir()):
        assert read_bytes(str(photo)) == photo.read_bytes()


def test_missing_file_is_a_permanent_fetch_error(tmp_path: Path) -> None:
    error = _fetch_error(str(tmp_path / "gone.jpg"))
    assert error.reason == f"no such file: {tmp_path / 'gone.jpg'}"
    assert not error.transient


def test_file_over_max_bytes_is_refused(tmp_path: Path) -> None:
    path = cf.good_jpeg(tmp_path / "a.jpg")
    size = path.stat().st_size
    assert read_bytes(str(path), FetchLimits(max_bytes=size)) == path.read_bytes()
    error = _fetch_error(str(path), FetchLimits(max_bytes=size - 1))
    assert error.reason.startswith(f"exceeds max_bytes {size - 1}")


def test_compressed_suffix_is_not_decompressed(tmp_path: Path) -> None:
    # Beam's default would gunzip a ".gz" file; the bytes we hash must be the stored ones.
    path = tmp_path / "photo.jpg.gz"
    path.write_bytes(gzip.compress(IMAGE))
    assert read_bytes(str(path)) == path.read_bytes()


def test_directory_and_unknown_scheme_are_fetch_errors(tmp_path: Path) -> None:
    assert _fetch_error(str(tmp_path)).reason.startswith("not a regular file (a directory)")
    assert _fetch_error("ftp://127.0.0.1/a.jpg").reason == "unsupported uri scheme 'ftp'"
    assert _fetch_error("").reason == "empty uri"


def test_fifo_and_device_are_refused_without_blocking(tmp_path: Path) -> None:
    """A named pipe called photo.jpg would block a worker's read forever; it is refused."""
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    assert _fetch_error(str(fifo)).reason.startswith("not a regular file (a pipe")
    assert _fetch_error("/dev/zero").reason.startswith("not a regular file (a pipe")


def test_errors_pickle_with_their_fields() -> None:
    error = pickle.loads(pickle.dumps(FetchError("HTTP 503", transient=True)))
    assert (error.reason, error.transient) == ("HTTP 503", True)
    assert isinstance(error, OSError)


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FetchLimits(max_bytes=0)
    with pytest.raises(ValueError, match="retries"):
        FetchLimits(retries=-1)


# --- http ---------------------------------------------------------------------------------


def test_http_200(server: _Server) -> None:
    assert read_bytes(server.url("/image.jpg"), FAST) == IMAGE
    assert server.hits["/image.jpg"] == 1


def test_http_404_fails_at_once(server: _Server) -> None:
    error = _fetch_error(server.url("/missing.jpg"))
    assert (error.reason, error.transient) == ("HTTP 404", False)
    assert server.hits["/missing.jpg"] == 1  # a 4xx is not retried


def test_http_500_then_200_is_retried(server: _Server) -> None:
    assert read_bytes(server.url("/flaky.jpg"), FAST) == IMAGE
    assert server.hits["/flaky.jpg"] == 2


def test_http_429_is_retried(server: _Server) -> None:
    assert read_bytes(server.url("/throttled.jpg"), FAST) == IMAGE
    assert server.hits["/throttled.jpg"] == 2


def test_persistent_5xx_gives_up_after_the_retries(server: _Server) -> None:
    error = _fetch_error(server.url("/broken.jpg"), FetchLimits(retries=2, backoff_s=0.01))
    assert (error.reason, error.transient) == ("HTTP 503 after 3 attempts", True)
    assert server.hits["/broken.jpg"] == 3


def test_redirects_are_followed_and_capped(server: _Server) -> None:
    assert read_bytes(server.url("/moved.jpg"), FAST) == IMAGE
    error = _fetch_error(server.url("/loop.jpg"), FetchLimits(max_redirects=3))
    assert error.reason == "too many redirects (> 3)"
    assert server.hits["/loop.jpg"] == 4  # the first request and three redirects


def test_redirect_off_http_is_refused(server: _Server) -> None:
    assert _fetch_error(server.url("/to-ftp.jpg")).reason == "redirect to unsupported scheme 'ftp'"


def test_declared_length_over_max_bytes_is_refused(server: _Server) -> None:
    error = _fetch_error(server.url("/huge-declared.jpg"), FetchLimits(max_bytes=1000))
    assert error.reason == "exceeds max_bytes 1000 (Content-Length 5000)"


def test_endless_body_stops_at_max_bytes(server: _Server) -> None:
    started = time.monotonic()
    error = _fetch_error(server.url("/endless.jpg"), FetchLimits(max_bytes=2000))
    assert error.reason == "exceeds max_bytes 2000"
    assert not error.transient
    assert time.monotonic() - started < 2


def test_endless_slow_body_stops_at_the_total_timeout(server: _Server) -> None:
    limits = FetchLimits(read_timeout_s=1.0, total_timeout_s=0.5, retries=2, backoff_s=0.01)
    started = time.monotonic()
    error = _fetch_error(server.url("/endless.jpg"), limits)
    elapsed = time.monotonic() - started
    assert error.reason.startswith("exceeded total timeout 0.5s"), error.reason
    assert error.transient
    assert 0.5 <= elapsed < 1.5
    assert server.hits["/endless.jpg"] == 1  # no time was left for a retry


def test_hanging_response_times_out_and_is_retried(server: _Server) -> None:
    started = time.monotonic()
    error = _fetch_error(server.url("/hang.jpg"))
    assert (error.reason, error.transient) == ("timed out after 2 attempts", True)
    assert server.hits["/hang.jpg"] == 2
    assert time.monotonic() - started < 2


def test_total_timeout_bounds_all_retries(server: _Server) -> None:
    limits = FetchLimits(read_timeout_s=0.3, total_timeout_s=0.8, retries=10, backoff_s=0.01)
    started = time.monotonic()
    error = _fetch_error(server.url("/hang.jpg"), limits)
    assert time.monotonic() - started < 1.5
    assert error.transient
    assert server.hits["/hang.jpg"] <= 3


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = _fetch_error(f"http://127.0.0.1:{port}/a.jpg")
    assert error.reason.startswith("connection failed: ConnectionRefusedError"), error.reason
    assert error.reason.endswith("after 2 attempts")
    assert error.transient
