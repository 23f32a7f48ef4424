"""A hostile corpus: every kind of bad input the index job must survive, mixed with good photos.

``write_hostile_corpus(folder, server, photos)`` writes ``folder/photos/`` (local files of every
kind) and ``folder/corpus.jsonl`` (a manifest naming each local file by a relative uri, every
URL route of a ``HostileServer`` on 127.0.0.1, and a few unusable manifest lines). Each input
comes with what the job must make of it (``HostileInput``): a table row, a duplicate of a named
input, or a dead letter at a given stage whose reason matches a pattern specific to its kind.

Nothing leaves the loopback interface, and every file is generated here (small, seeded) except
the real photos the caller passes in from the assets folder.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from tests import corpus_factory as cf
from tests import hostile_uploads

TABLE = "table"
DUPLICATE = "duplicate"
DEAD_LETTER = "dead_letter"

# The handlers that stall end on their own after this long, so a client that ignores its limits
# makes the test fail (slow, wrong reason) instead of hanging the suite.
SERVER_GIVES_UP_S = 10.0


@dataclasses.dataclass(frozen=True)
class HostileInput:
    """One input of the corpus and the single outcome the index job must give it."""

    kind: str  # what it is, e.g. "png_bomb", "url_redirect_loop"
    uri: str  # the uri the job sees (resolved path or URL; "manifest:line" for bad rows)
    expect: str  # TABLE, DUPLICATE or DEAD_LETTER
    stage: str = ""  # for DEAD_LETTER: read, fetch, decode or encode
    reason: str = ""  # for DEAD_LETTER: a regex the reason must match (re.search)
    kept_kind: str = ""  # for DUPLICATE: the kind of the input whose copy is kept
    local: bool = True  # a file in the photos folder (False: a URL or a manifest line)


@dataclasses.dataclass(frozen=True)
class HostileCorpus:
    photos_dir: Path
    manifest: Path
    inputs: tuple[HostileInput, ...]

    def by_uri(self) -> dict[str, HostileInput]:
        return {item.uri: item for item in self.inputs}

    def by_kind(self) -> dict[str, HostileInput]:
        return {item.kind: item for item in self.inputs}


# --- files that corpus_factory does not already make ------------------------------------------


def _jpeg_with_declared_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is patched to declare ``width`` x ``height``."""
    data = bytearray(cf.jpeg_bytes((64, 48), seed=11))
    for marker in (b"\xff\xc0", b"\xff\xc2"):  # baseline or progressive start of frame
        at = data.find(marker)
        if at >= 0:
            # FFC0, length (2), precision (1), height (2), width (2)
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
    raise AssertionError("no SOF marker in the generated JPEG")


def jpeg_bomb(folder: Path) -> Path:
    """A 2 KB JPEG declaring 65000x65000 (4.2e9 pixels): Pillow's own guard must refuse it."""
    path = folder / "bomb_65000x65000.jpg"
    path.write_bytes(_jpeg_with_declared_size(65000, 65000))
    return path


def gif_bomb(folder: Path) -> Path:
    """A GIF whose logical screen is 65535x65535 while its one frame is 64x48."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), cf.RED).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    struct.pack_into("<HH", data, 6, 65535, 65535)  # logical screen width, height
    path = folder / "bomb_screen.gif"
    path.write_bytes(bytes(data))
    return path


def moderate_png_bomb(folder: Path) -> Path:
    """9000x9000 (8.1e7 pixels): under Pillow's guard, over the job's own --max_pixels."""
    return cf.png_bomb(folder, 9000, 9000)


def repeated_scans_jpeg(folder: Path) -> Path:
    """38 KB whose 1010 scans would take seconds of CPU: refused on counting them."""
    path = folder / "repeated_scans.jpg"
    path.write_bytes(hostile_uploads.repeated_scans_jpeg())
    return path


def slow_png(folder: Path) -> Path:
    """873k empty chunks (10 MB, about 3 s to open): stopped by the decode deadline the test
    runs the job with (--decode_timeout_s 1), the worker process replaced."""
    path = folder / "slow_chunks.png"
    path.write_bytes(hostile_uploads.chunky_png())
    return path


def truncated_png(folder: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(cf.photo_like_array((200, 150), seed=12)).save(buffer, "PNG")
    data = buffer.getvalue()
    path = folder / "truncated.png"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def zip_named_png(folder: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "an archive, not a picture")
    path = folder / "archive.png"
    path.write_bytes(buffer.getvalue())
    return path


def html_named_jpg(folder: Path) -> Path:
    path = folder / "error_page.jpg"
    path.write_text("<!doctype html><html><body>403 Forbidden</body></html>\n")
    return path


def ico_named_jpg(folder: Path) -> Path:
    """A real image in a format outside the accepted list (ICO): refused, not decoded."""
    path = folder / "favicon.jpg"
    Image.new("RGB", (32, 32), cf.GREEN).save(path, format="ICO")
    return path


def gray_alpha_png(folder: Path) -> Path:
    pixels = cf.photo_like_array((96, 64), seed=13)[..., 0]
    image = Image.merge("LA", (Image.fromarray(pixels), Image.new("L", (96, 64), 200)))
    path = folder / "gray_alpha.png"
    image.save(path)
    return path


def bmp_photo(folder: Path) -> Path:
    path = folder / "photo.bmp"
    Image.fromarray(cf.photo_like_array((120, 90), seed=14)).save(path)
    return path


def _named_photo(name: str, seed: int) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        return cf.good_jpeg(folder / name, (160, 120), seed=seed)

    return write


def named_directory(folder: Path) -> Path:
    """A folder called like a photo: listed by a manifest, it must be a fetch dead letter."""
    path = folder / "album.jpg"
    path.mkdir()
    return path


def named_pipe(folder: Path) -> Path:
    """A FIFO called like a photo: reading it would block forever."""
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return path


def dangling_symlink(folder: Path) -> Path:
    path = folder / "moved_away.jpg"
    path.symlink_to(folder / "does_not_exist.jpg")
    return path


# kind -> (writer, expected outcome, stage, reason regex)
_LOCAL_DEAD: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "empty": (cf.empty_file, "decode", r"^empty file$"),
    "truncated_jpeg": (cf.truncated_jpeg, "decode", r"^truncated image data$"),
    "truncated_png": (truncated_png, "decode", r"^truncated image data$"),
    "text_named_jpg": (cf.text_named_jpg, "decode", r"^not an image \(cannot identify format\)$"),
    "html_named_jpg": (html_named_jpg, "decode", r"^not an image"),
    "zip_named_png": (zip_named_png, "decode", r"^not an image"),
    "ico_named_jpg": (ico_named_jpg, "decode", r"^not an image"),
    "png_bomb": (cf.png_bomb, "decode", r"^decompression bomb: 1\.6e9 pixels"),
    "moderate_png_bomb": (moderate_png_bomb, "decode", r"^decompression bomb: 9000x9000 = 8\.1e7"),
    "jpeg_bomb": (jpeg_bomb, "decode", r"^decompression bomb: 4\.2e9 pixels"),
    "gif_bomb": (gif_bomb, "decode", r"^decompression bomb"),
    "corrupt_png": (cf.corrupt_png, "decode", r"^corrupt PNG data"),
    "repeated_scans_jpeg": (repeated_scans_jpeg, "decode", r"^JPEG with 1010 scans > limit 100$"),
    "slow_png": (slow_png, "decode", r"^decoding took longer than 1 s \(stopped\)$"),
    "tiny_1x1": (cf.tiny_png, "decode", r"^too small: 1x1"),
    "extreme_aspect": (cf.extreme_aspect_png, "decode", r"^extreme aspect ratio 100:1"),
    "directory_named_jpg": (named_directory, "fetch", r"^not a regular file \(a directory\)"),
    "fifo_named_jpg": (named_pipe, "fetch", r"^not a regular file \(a pipe"),
    "dangling_symlink": (dangling_symlink, "fetch", r"^no such file"),
}

_LOCAL_GOOD: dict[str, Callable[[Path], Path]] = {
    **cf.ODD_VALID_INPUTS,
    "gray_alpha_png": gray_alpha_png,
    "bmp": bmp_photo,
    "unicode_name": _named_photo("café ☕ 写真.jpg", seed=21),
    "spaces_name": _named_photo("my holiday photo (1).jpg", seed=22),
    "glob_chars_name": _named_photo("100% [best] #1?.jpg", seed=23),
}


# --- the loopback server ----------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: HostileServer

    def do_GET(self) -> None:
        path = urllib.parse.urlparse(self.path).path
        hits = self.server.count(path)
        if path in self.server.files:
            self._send(200, self.server.files[path])
        elif path == "/flaky.jpg":  # fails once, then works: the retry must get it
            if hits == 1:
                self._send(503, b"busy")
            else:
                self._send(200, self.server.files["/flaky-body"])
        elif path == "/moved.jpg":
            self._send(302, b"", {"Location": "/moved-target.jpg"})
        elif path == "/loop.jpg":
            self._send(302, b"", {"Location": "/loop.jpg"})
        elif path == "/to-file.jpg":  # SSRF through a redirect
            self._send(302, b"", {"Location": "file:///etc/passwd"})
        elif path == "/huge-declared.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif path == "/endless.jpg":
            self._endless()
        elif path == "/hang.jpg":
            self.server.stop.wait(SERVER_GIVES_UP_S)
        elif path == "/html.jpg":
            self._send(200, b"<html><body>soft 404</body></html>", {"Content-Type": "text/html"})
        else:
            self._send(404, b"not found")

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _endless(self) -> None:
        """200 with no length, then bytes as fast as the client takes them, until it hangs up."""
        self.send_response(200)
        self.end_headers()
        chunk = b"\xff\xd8" + b"\x00" * (64 * 1024 - 2)
        give_up = time.monotonic() + SERVER_GIVES_UP_S
        try:
            while not self.server.stop.is_set() and time.monotonic() < give_up:
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format: str, *args: object) -> None:
        pass


class HostileServer(http.server.ThreadingHTTPServer):
    """Serves good images and every kind of bad response on 127.0.0.1; ``close()`` when done."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> HostileServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def count(self, path: str) -> int:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            return self.hits[path]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_hostile_corpus(
    folder: Path, server: HostileServer | None, photos: list[Path]
) -> HostileCorpus:
    """Write ``folder/photos`` and ``folder/corpus.jsonl``; register URL bodies on ``server``.

    ``photos`` are real photos (copied in, never modified). Without ``server`` the manifest
    lists only local files and bad lines. Returns every input with its expected outcome.
    """
    photos_dir = folder / "photos"
    photos_dir.mkdir(parents=True)
    inputs: list[HostileInput] = []

    def local(kind: str, path: Path, expect: str, **fields: str) -> None:
        inputs.append(HostileInput(kind=kind, uri=str(path), expect=expect, **fields))

    for i, photo in enumerate(photos):
        local(f"real_photo_{i}", Path(shutil.copy(photo, photos_dir / photo.name)), TABLE)
    for kind, write in _LOCAL_GOOD.items():
        local(kind, write(photos_dir), TABLE)
    for kind, (write, stage, reason) in _LOCAL_DEAD.items():
        local(kind, write(photos_dir), DEAD_LETTER, stage=stage, reason=reason)
    # Same bytes under other names sort after the original, so the original is the one kept.
    first = photos_dir / photos[0].name
    copy = photos_dir / f"zz copy of {photos[0].name}"
    copy.write_bytes(first.read_bytes())
    local("duplicate_bytes", copy, DUPLICATE, kept_kind="real_photo_0")
    copy = photos_dir / "zz_copy_café.jpg"
    copy.write_bytes((photos_dir / "café ☕ 写真.jpg").read_bytes())
    local("duplicate_unicode", copy, DUPLICATE, kept_kind="unicode_name")
    # Two empty files: each is its own dead letter, never a "duplicate" of the other.
    empty_twin = photos_dir / "empty_twin.png"
    empty_twin.write_bytes(b"")
    local("empty_twin", empty_twin, DEAD_LETTER, stage="decode", reason=r"^empty file$")

    rows = [{"uri": os.path.relpath(item.uri, folder), "kind": item.kind} for item in inputs]
    if server is not None:
        rows += _url_inputs(server, inputs, photos_dir)
    _write_manifest(folder / "corpus.jsonl", rows, inputs)
    return HostileCorpus(photos_dir, folder / "corpus.jsonl", tuple(inputs))


def _url_inputs(
    server: HostileServer, inputs: list[HostileInput], photos_dir: Path
) -> list[dict[str, str]]:
    server.files["/good.jpg"] = cf.jpeg_bytes((200, 150), seed=31)
    server.files["/moved-target.jpg"] = cf.jpeg_bytes((200, 150), seed=32)
    server.files["/flaky-body"] = cf.jpeg_bytes((200, 150), seed=33)
    server.files["/same-as-local.jpg"] = (photos_dir / "photo.webp").read_bytes()
    refused = f"http://127.0.0.1:{_closed_port()}/photo.jpg"
    expected = [
        ("url_ok", server.url("/good.jpg"), TABLE, "", ""),
        ("url_redirect_once", server.url("/moved.jpg"), TABLE, "", ""),
        ("url_flaky_then_ok", server.url("/flaky.jpg"), TABLE, "", ""),
        ("url_404", server.url("/missing.jpg"), DEAD_LETTER, "fetch", r"^HTTP 404$"),
        ("url_timeout", server.url("/hang.jpg"), DEAD_LETTER, "fetch", r"^timed out after"),
        ("url_redirect_loop", server.url("/loop.jpg"), DEAD_LETTER, "fetch", r"too many redirects"),
        (
            "url_redirect_to_file",
            server.url("/to-file.jpg"),
            DEAD_LETTER,
            "fetch",
            r"redirect to unsupported scheme 'file'",
        ),
        (
            "url_endless_body",
            server.url("/endless.jpg"),
            DEAD_LETTER,
            "fetch",
            r"exceeds max_bytes",
        ),
        (
            "url_huge_declared",
            server.url("/huge-declared.jpg"),
            DEAD_LETTER,
            "fetch",
            r"exceeds max_bytes .*Content-Length",
        ),
        ("url_html_200", server.url("/html.jpg"), DEAD_LETTER, "decode", r"^not an image"),
        ("url_refused", refused, DEAD_LETTER, "fetch", r"connection failed"),
        ("url_ftp", "ftp://127.0.0.1/photo.jpg", DEAD_LETTER, "fetch", r"unsupported uri scheme"),
    ]
    rows = []
    for kind, uri, expect, stage, reason in expected:
        inputs.append(HostileInput(kind, uri, expect, stage, reason, local=False))
        rows.append({"uri": uri, "kind": kind})
    # The same bytes as a local file, over HTTP: "/" sorts before "h", so the local copy is kept.
    inputs.append(
        HostileInput(
            "url_duplicate_of_local",
            server.url("/same-as-local.jpg"),
            DUPLICATE,
            kept_kind="webp",
            local=False,
        )
    )
    rows.append({"uri": server.url("/same-as-local.jpg"), "kind": "url_duplicate_of_local"})
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]], inputs: list[HostileInput]) -> None:
    """JSONL, one row per input, then two unusable lines that must become read dead letters."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.append('{"uri": "broken json')
    inputs.append(
        HostileInput(
            "manifest_bad_json",
            f"{path}:{len(lines)}",
            DEAD_LETTER,
            "read",
            r"^invalid JSON",
            local=False,
        )
    )
    lines.append(json.dumps({"kind": "no uri here"}))
    inputs.append(
        HostileInput(
            "manifest_no_uri",
            f"{path}:{len(lines)}",
            DEAD_LETTER,
            "read",
            r"no 'uri'",
            local=False,
        )
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
