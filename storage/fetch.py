"""Read the bytes of one corpus uri: a local path, ``file://``, any Beam filesystem, or http(s).

Thin I/O with hard bounds: a size cap, timeouts, a wall-clock deadline, bounded retries of
transient failures only. Every problem with the input comes out as ``FetchError`` whose
``reason`` is fit for a dead letter, and whose ``transient`` says whether trying again later
could help.
"""

from __future__ import annotations

import dataclasses
import http.cookiejar
import logging
import os
import stat
import threading
import time
import urllib.parse
import urllib.request
from typing import BinaryIO

import requests
import urllib3
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)

_HTTP_SCHEMES = ("http", "https")

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

_CHUNK_BYTES = 64 * 1024

# Retry-After may ask for a long pause; never sleep longer than this between attempts.
_MAX_RETRY_AFTER_S = 30.0

# Sent with every request: some image hosts refuse clients without a User-Agent, and a
# compressed transfer would only hide the real size of the body from the byte cap.
_HEADERS = {"User-Agent": "imgsearch-indexer/1.0", "Accept-Encoding": "identity"}


@dataclasses.dataclass(frozen=True)
class FetchLimits:
    """Bounds on reading one input.

    ``total_timeout_s`` is a wall-clock deadline for the whole ``read_bytes`` call, retries and
    backoff included, so no single input can hold a worker longer than that (give or take one
    ``read_timeout_s`` for a read already in flight).
    """

    max_bytes: int = 50 * 2**20
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    total_timeout_s: float = 120.0
    retries: int = 2  # extra attempts, for transient failures only (timeouts, resets, 429/5xx)
    backoff_s: float = 0.5  # pause before retry n is backoff_s * 2**(n-1)
    max_redirects: int = 5

    def __post_init__(self) -> None:
        for name in ("max_bytes", "connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("retries", "backoff_s", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class FetchError(IOError):
    """The input could not be read; ``reason`` says why, ``transient`` whether a retry may help."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient

    def __reduce__(self) -> tuple[type, tuple[str, bool]]:
        # Keep ``transient`` when Beam pickles the exception across processes.
        return (type(self), (self.reason, self.transient))


def read_bytes(uri: str, limits: FetchLimits = FetchLimits()) -> bytes:  # frozen: safe default
    """All bytes of ``uri``, at most ``limits.max_bytes`` of them.

    Args:
        uri: ``http(s)://...``, ``file://...``, a local path, or a path on any filesystem
            Beam knows (``gs://`` with ``apache-beam[gcp]``, ...).
        limits: size cap, timeouts and retry policy.

    Returns:
        The raw bytes, exactly as stored (never decompressed, whatever the file's suffix).

    Raises:
        FetchError: for every problem with the input (missing, too big, HTTP error, timeout,
        unsupported scheme, ...).
    """
    if not uri:
        raise FetchError("empty uri")
    scheme = FileSystems.get_scheme(uri)
    scheme = scheme.lower() if scheme else None
    if scheme in _HTTP_SCHEMES:
        return _read_http(uri, limits)
    if scheme == "file":
        return _read_local(_file_uri_to_path(uri), limits)
    if scheme is None:
        return _read_local(uri, limits)
    return _read_filesystem(uri, limits)


def _read_local(path: str, limits: FetchLimits) -> bytes:
    """A local file in one open and one fstat: every image of a nightly run is read this way.

    ``O_NONBLOCK`` lets a FIFO (a named pipe called ``photo.jpg``) open without waiting for a
    writer; ``fstat`` on the open descriptor then refuses it, and anything else not a regular
    file, before a byte is read. The size check and the capped read follow, as for any
    filesystem.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise FetchError(f"no such file: {path}") from exc
    except OSError as exc:
        raise FetchError(f"cannot open {path}: {_describe(exc)}", _transient_os(exc)) from exc
    try:
        info = os.fstat(fd)
        _check_regular_mode(info.st_mode, path)
    except FetchError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise FetchError(f"cannot stat {path}: {_describe(exc)}", _transient_os(exc)) from exc
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > limits.max_bytes:
            raise FetchError(f"exceeds max_bytes {limits.max_bytes} ({info.st_size} bytes)")
        try:
            return _read_capped(handle, limits.max_bytes)
        except FetchError:
            raise
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {_describe(exc)}", _transient_os(exc)) from exc


def _file_uri_to_path(uri: str) -> str:
    """``file:///a/b%20c.jpg`` -> ``/a/b c.jpg``; Beam's local filesystem wants a plain path."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise FetchError(f"file uri on another host: {parsed.netloc!r}")
    return urllib.request.url2pathname(parsed.path)


def _read_filesystem(path: str, limits: FetchLimits) -> bytes:
    """Read through ``FileSystems`` (gs:// and other non-local schemes): refuse a too-large file
    by its metadata, then read capped."""
    scheme = FileSystems.get_scheme(path)
    try:
        filesystem = FileSystems.get_filesystem(path)
    except ValueError as exc:
        # Beam raises ValueError("Unable to get filesystem ...") for schemes it has no plugin for.
        raise FetchError(f"unsupported uri scheme '{scheme}'") from exc
    except Exception as exc:  # a plugin that fails to import or configure (hdfs, s3, ...)
        raise FetchError(f"cannot use the '{scheme}' filesystem: {exc}") from exc

    # Filesystem plugins raise their own exception types (OSError, BeamIOError, google-api-core
    # errors, ...). Everything raised by these calls is a problem with this input, so each is
    # turned into a FetchError here; the calls are kept apart so the reason says which step.
    try:
        exists = filesystem.exists(path)
    except Exception as exc:
        raise FetchError(f"cannot check {path}: {_describe(exc)}", transient=True) from exc
    if not exists:
        raise FetchError(f"no such file: {path}")
    try:
        size = filesystem.metadata(path).size_in_bytes
    except Exception as exc:
        raise FetchError(f"cannot stat {path}: {_describe(exc)}", _transient_os(exc)) from exc
    if size > limits.max_bytes:
        raise FetchError(f"exceeds max_bytes {limits.max_bytes} ({size} bytes)")
    try:
        # UNCOMPRESSED: Beam would otherwise gunzip "photo.jpg.gz" and the like behind our back.
        with filesystem.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            data = _read_capped(handle, limits.max_bytes)
    except FetchError:
        raise
    except Exception as exc:
        raise FetchError(f"cannot read {path}: {_describe(exc)}", _transient_os(exc)) from exc
    return data


def _check_regular_mode(mode: int, path: str) -> None:
    """Refuse a local FIFO, socket or device: reading one blocks forever or never ends.

    A named pipe called ``photo.jpg`` in a corpus folder would otherwise hold a worker until the
    job is killed; its metadata says 0 bytes, so the size check cannot catch it.
    """
    if stat.S_ISDIR(mode):
        raise FetchError(f"not a regular file (a directory): {path}")
    if not stat.S_ISREG(mode):
        raise FetchError(f"not a regular file (a pipe, socket or device): {path}")


def _read_capped(handle: BinaryIO, max_bytes: int) -> bytes:
    """Read to the end, but never more than ``max_bytes + 1`` bytes (a file may grow)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = handle.read(min(_CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"exceeds max_bytes {max_bytes}")


def _transient_os(exc: Exception) -> bool:
    """A missing file or a permission problem stays that way; other I/O errors may pass."""
    permanent = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    return not isinstance(exc, permanent)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# One session per thread: connection pooling across the many downloads a worker makes, without
# sharing a requests.Session (not documented as thread-safe) between Beam's DoFn threads.
_thread_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_thread_local, "session", None)
    if session is None:
        session = requests.Session()
        # No cookies: what one download returns must not depend on what the thread fetched
        # before it.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        _thread_local.session = session
    return session


class _Attempt(Exception):
    """One failed attempt: ``FetchError`` material plus whether to try again."""

    def __init__(self, reason: str, transient: bool, kind: str, retry_after_s: float = 0.0):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.kind = kind  # groups failures for the final message: "timeout", "connection", ...
        self.retry_after_s = retry_after_s


def _read_http(url: str, limits: FetchLimits) -> bytes:
    """GET with retries of transient failures, all within ``limits.total_timeout_s``."""
    deadline = time.monotonic() + limits.total_timeout_s
    attempts = 0
    while True:
        attempts += 1
        try:
            return _http_attempt(url, limits, deadline)
        except _Attempt as failure:
            pause = max(limits.backoff_s * 2 ** (attempts - 1), failure.retry_after_s)
            retry = (
                failure.transient
                and attempts <= limits.retries
                and time.monotonic() + pause < deadline
            )
            if not retry:
                raise FetchError(_final_reason(failure, attempts), failure.transient) from None
            logger.debug("retrying %s in %.2fs after: %s", url, pause, failure.reason)
            time.sleep(pause)


def _final_reason(failure: _Attempt, attempts: int) -> str:
    if failure.kind == "timeout":
        return f"timed out after {attempts} attempt{'s' if attempts > 1 else ''}"
    if attempts > 1:
        return f"{failure.reason} after {attempts} attempts"
    return failure.reason


def _http_attempt(url: str, limits: FetchLimits, deadline: float) -> bytes:
    """One download: follow up to ``max_redirects`` redirects, then stream the capped body."""
    session = _session()
    for _ in range(limits.max_redirects + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Attempt(f"exceeded total timeout {limits.total_timeout_s:g}s", True, "deadline")
        timeout = (
            min(limits.connect_timeout_s, remaining),
            min(limits.read_timeout_s, remaining),
        )
        try:
            response = session.get(
                url, headers=_HEADERS, stream=True, timeout=timeout, allow_redirects=False
            )
        except requests.Timeout as exc:
            raise _Attempt(f"timed out: {exc}", True, "timeout") from exc
        except requests.ConnectionError as exc:
            raise _Attempt(f"connection failed: {_root_cause(exc)}", True, "connection") from exc
        except requests.RequestException as exc:  # invalid URL, bad header, ...
            raise _Attempt(f"bad request: {_describe(exc)}", False, "request") from exc
        with response:
            if response.status_code in _REDIRECT_CODES:
                url = _redirect_target(url, response)
                continue
            _check_status(response)
            return _read_body(response, limits, deadline)
    raise _Attempt(f"too many redirects (> {limits.max_redirects})", False, "redirect")


def _redirect_target(url: str, response: requests.Response) -> str:
    location = response.headers.get("Location")
    if not location:
        raise _Attempt(f"HTTP {response.status_code} redirect without Location", False, "status")
    target = urllib.parse.urljoin(url, location)
    scheme = urllib.parse.urlparse(target).scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        # Never let a remote server point the worker at file:// or another local resource.
        raise _Attempt(f"redirect to unsupported scheme '{scheme}'", False, "redirect")
    return target


def _check_status(response: requests.Response) -> None:
    code = response.status_code
    if code == 200:
        return
    transient = code == 429 or code >= 500
    retry_after = 0.0
    if code == 429:
        retry_after = _retry_after_s(response.headers.get("Retry-After"))
    raise _Attempt(f"HTTP {code}", transient, "status", retry_after)


def _retry_after_s(header: str | None) -> float:
    """Seconds from a numeric Retry-After header, capped; 0 when absent or an HTTP date."""
    try:
        return min(max(float(header or 0), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.0


def _read_body(response: requests.Response, limits: FetchLimits, deadline: float) -> bytes:
    """Stream the body, stopping at ``max_bytes`` or the deadline, whichever comes first."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _Attempt(
            f"exceeds max_bytes {limits.max_bytes} (Content-Length {declared})", False, "size"
        )
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            # read1 returns what has arrived (up to the chunk size) instead of waiting for a full
            # chunk, so a slow trickle still comes back here often enough to see the deadline.
            chunk = response.raw.read1(_CHUNK_BYTES, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limits.max_bytes:
                raise _Attempt(f"exceeds max_bytes {limits.max_bytes}", False, "size")
            if time.monotonic() > deadline:
                raise _Attempt(
                    f"exceeded total timeout {limits.total_timeout_s:g}s ({total} bytes received)",
                    True,
                    "deadline",
                )
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise _Attempt(f"timed out reading body: {exc}", True, "timeout") from exc
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        # Reading ``raw`` raises urllib3's own errors (ProtocolError for a reset or a body cut
        # short, DecodeError for a broken gzip), not the requests wrappers.
        raise _Attempt(f"connection failed mid-body: {_describe(exc)}", True, "connection") from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's message: requests wraps urllib3 wraps socket errors."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return _describe(exc)
