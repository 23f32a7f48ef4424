"""Soak of the search server: sustained queries, hostile requests and hot reloads, loopback only.

Run: ``.venv/bin/python benchmarks/soak_serving.py [--photos 400] [--duration 120] [--reloads 4]``

1. Indexes ``--photos`` real Flickr8k photos twice with the real index job (``--encoder fake``):
   version A over the first 90 %, version B over all of them, in a publish root.
2. Starts ``imgsearch serve`` (a supervisor and its serving worker) on 127.0.0.1, polling
   the pointer every 0.5 s.
3. For ``--duration`` seconds, client threads send a mix of image uploads, "similar" queries,
   details and thumbnails, plus hostile requests that must come back as 4xx: image bombs,
   oversize and malformed uploads, huge k, path traversal, and issue 24's uploads that are tiny
   on the wire and expensive to decode or parse (float TIFF, lossless WebP, RGBA PNG, a JPEG of
   1,000 scans, a PNG of 873k chunks, forms of 800k parts, a 501-character query). A good
   request answered 429 (every decoder busy) is retried after its Retry-After, as a client
   should; only its final answer counts. Meanwhile the pointer flips between A and B
   ``--reloads`` times, so the server reloads under load, and an attacker thread keeps
   ``--idle-sockets`` connections open that send nothing, drip a header byte a second, or stall
   in a body, reopening each one the server closes.
4. Samples the server's RSS (all its processes) every second and prints: requests,
   failures (any 5xx, any transport error, any good query not answered 200, any hostile one not
   a 4xx), throughput, latency percentiles, versions served, RSS at warm-up, at the end and its
   peak, and how long the server let the attacking connections live; writes
   ``benchmarks/results/soak_serving.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx
import psutil

from benchmarks.machine import machine_line
from benchmarks.process_memory import tree_rss_bytes
from imgsearch import settings


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_root(work: Path, photos: int, assets: Path) -> tuple[Path, list[Path]]:
    """A publish root with versions A (first 90 % of the photos) and B (all), serving A."""
    from index.publish import version_dir, write_pointer
    from pipelines import index_job

    images = sorted((assets / "datasets/flickr8k/images").glob("*.jpg"))[:photos]
    root = work / "root"
    if (root / "latest.json").exists():
        return root, images
    for version, chosen in (("A", images[: photos * 9 // 10]), ("B", images)):
        corpus = work / f"{version}.jsonl"
        corpus.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in chosen))
        _log(f"indexing {len(chosen)} photos as version {version}")
        index_job.run(
            ["--corpus", str(corpus), "--out", version_dir(str(root), version),
             "--encoder", "fake", "--weights", "none", "--image_size", "64",
             "--run_version", version]
        )  # fmt: skip
    write_pointer(str(root), "A")
    return root, images


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def hostile_requests(work: Path) -> list[tuple[str, str, dict]]:
    """(method, path, httpx kwargs) of requests that must be answered with a 4xx (or with the
    statuses under ``expect``)."""
    from tests import corpus_factory as cf
    from tests import hostile_corpus as hc
    from tests import hostile_uploads as hu

    files = work / "hostile"
    files.mkdir(exist_ok=True)
    bomb = cf.png_bomb(files).read_bytes()
    jpeg_bomb = hc.jpeg_bomb(files).read_bytes()
    png = {"content-type": "image/png"}
    form, boundary = hu.many_part_form()
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}"}
    costly = [
        (hu.float_tiff(), "image/tiff"), (hu.lossless_webp(), "image/webp"),
        (hu.rgba_png(), "image/png"), (hu.repeated_scans_jpeg(), "image/jpeg"),
    ]  # fmt: skip
    return [
        *(
            ("POST", "/api/search/image", {"content": data, "headers": {"content-type": kind}})
            for data, kind in costly
        ),
        # A valid image that takes seconds to decode (873k chunks): answered, 200 or 422 once
        # stopped at the decode deadline, in a worker while the rest is served (or 429 when
        # both workers are taken by earlier ones).
        (
            "POST",
            "/api/search/image",
            {"content": hu.chunky_png(), "headers": png, "expect": (200, 422, 429)},
        ),
        ("POST", "/api/search/image", {"content": form, "headers": multipart}),
        ("GET", "/api/search", {"params": {"q": "a dog " * 84}}),  # 504 characters
        ("GET", "/api/words/suggestions", {"params": {"q": "x" * 501}}),
        ("POST", "/api/search/image", {"content": bomb, "headers": png}),
        ("POST", "/api/search/image", {"content": jpeg_bomb, "headers": png}),
        ("POST", "/api/search/image", {"content": b"\xff" * (11 * 2**20), "headers": png}),
        ("POST", "/api/search/image", {"content": b"<html>", "headers": png}),
        ("POST", "/api/search/image", {"content": b"x", "headers": {"content-type": "text/x"}}),
        ("GET", "/api/search?q=dog&k=100000000000", {}),
        ("GET", "/thumbnails/..%2F..%2Fetc%2Fpasswd", {}),
        ("GET", "/api/images/%2Fetc%2Fpasswd", {}),
        ("GET", "/api/similar/" + "x" * 5000, {}),
    ]


class Attacker(threading.Thread):
    """Keeps ``per_kind`` connections of each kind open -- sending nothing, dripping a header
    byte a second, stalled after part of a body -- and records how long the server let each
    live before closing it; a closed one is reopened."""

    KINDS = ("idle", "slow-header", "stalled-body")

    def __init__(self, port: int, per_kind: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.per_kind, self.stop = port, per_kind, stop
        self.lifetimes: dict[str, list[float]] = {kind: [] for kind in self.KINDS}
        self.refused = 0

    def _open(self, kind: str) -> tuple[socket.socket, str, float] | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.refused += 1
            return None
        sock.setblocking(False)
        try:
            if kind == "slow-header":
                sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            elif kind == "stalled-body":
                sock.send(
                    b"POST /api/search/image HTTP/1.1\r\nHost: x\r\ncontent-type: "
                    b"image/png\r\ncontent-length: 5000000\r\n\r\n" + b"\0" * 65536
                )
        except OSError:
            pass
        return sock, kind, time.monotonic()

    def run(self) -> None:
        import select

        open_ = [c for kind in self.KINDS for _ in range(self.per_kind) if (c := self._open(kind))]
        last_drip = time.monotonic()
        while not self.stop.is_set():
            ready, _, _ = select.select([c[0] for c in open_], [], [], 0.2)
            now = time.monotonic()
            for entry in [c for c in open_ if c[0] in ready]:
                sock, kind, opened = entry
                try:
                    closed = sock.recv(65536) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    self.lifetimes[kind].append(now - opened)
                    sock.close()
                    open_.remove(entry)
                    if (again := self._open(kind)) is not None:
                        open_.append(again)
            if now - last_drip >= 1.0:
                last_drip = now
                for sock, kind, _ in open_:
                    if kind == "slow-header":
                        try:
                            sock.send(b"X")
                        except OSError:
                            pass
        for sock, _, _ in open_:
            sock.close()

    def longest(self) -> str:
        return ", ".join(
            f"{kind} {max(times):.1f} s ({len(times)} closed)" if times else f"{kind} never closed"
            for kind, times in self.lifetimes.items()
        )


# A well-formed request shed with 429 is sent again after its Retry-After, this many times
# (about 30 s in all): it fails only if it is never answered.
RETRIES = 6


class Client(threading.Thread):
    """Sends good and hostile requests in a fixed rotation until stopped."""

    def __init__(self, url, seed, image_ids, uploads, hostile, stop) -> None:
        super().__init__(daemon=True)
        self.url, self.seed, self.image_ids, self.uploads = url, seed, image_ids, uploads
        self.hostile, self.stop = hostile, stop
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.hostile_ok = 0
        self.retried = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = self.seed
            while not self.stop.is_set():
                i += 1
                image_id = self.image_ids[i % len(self.image_ids)]
                kind = i % 10
                started = time.perf_counter()
                try:
                    if kind == 9:
                        method, path, kwargs = self.hostile[(i // 10) % len(self.hostile)]
                        kwargs = dict(kwargs)
                        expect = kwargs.pop("expect", range(400, 500))
                        response = client.request(method, path, **kwargs)
                        if response.status_code in expect:
                            self.hostile_ok += 1
                        else:
                            self.failures.append(f"hostile {path[:60]}: {response.status_code}")
                        continue
                    if kind < 4:
                        response = client.post(
                            "/api/search/image?k=10",
                            content=self.uploads[i % len(self.uploads)],
                            headers={"content-type": "image/jpeg"},
                        )
                    elif kind < 7:
                        response = client.get(f"/api/similar/{image_id}", params={"k": 10})
                    elif kind == 7:
                        response = client.get(f"/api/images/{image_id}")
                    else:
                        response = client.get(f"/thumbnails/{image_id}")
                    for _ in range(RETRIES):  # shed (every decoder busy): retry when told
                        if response.status_code != 429:  # even after stop: answer it
                            break
                        self.retried += 1
                        time.sleep(float(response.headers.get("retry-after", "1")))
                        response = client.send(response.request)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:120]}")
                elif kind < 7:
                    self.versions.add(response.json()["version"])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--reloads", type=int, default=4, help="pointer flips during the load")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--idle-sockets", type=int, default=30, help="attacking connections of each kind"
    )
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-soak"))
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/soak_serving.md"))
    args = parser.parse_args(argv)
    assets = settings.assets_dir()
    if assets is None:
        raise SystemExit("no assets folder: " + settings.describe_assets_layout())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root, images = build_root(work, args.photos, assets)

    from index.publish import write_pointer
    from serving.searcher import ImageSearcher

    image_ids = [ImageSearcher.load(str(root / "versions/A")).hit_for_row(r, 0).image_id
                 for r in range(20)]  # fmt: skip
    uploads = [p.read_bytes() for p in images[:: max(1, len(images) // 16)]]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen(
        [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(root),
         "--port", str(port), "--poll-seconds", "0.5"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        process = psutil.Process(server.pid)
        stop = threading.Event()
        hostile = hostile_requests(work)
        clients = [Client(url, i, image_ids, uploads, hostile, stop) for i in range(args.clients)]
        attacker = Attacker(port, args.idle_sockets, stop)
        _log(f"soak: {args.clients} clients for {args.duration:.0f}s, {args.reloads} reloads, "
             f"{args.idle_sockets} attacking connections of each kind")  # fmt: skip
        started = time.monotonic()
        attacker.start()
        for client in clients:
            client.start()
        rss: list[tuple[float, int]] = []
        flips = [args.duration * (i + 1) / (args.reloads + 1) for i in range(args.reloads)]
        version = "A"
        while (elapsed := time.monotonic() - started) < args.duration:
            rss.append((elapsed, tree_rss_bytes(process)))
            if flips and elapsed >= flips[0]:
                flips.pop(0)
                version = "B" if version == "A" else "A"
                write_pointer(str(root), version)
                _log(f"published {version} at {elapsed:.0f}s")
            time.sleep(1.0)
        stop.set()
        for client in clients:
            client.join(60)
        attacker.join(10)
        health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    latencies = [x for c in clients for x in c.latencies]
    failures = [x for c in clients for x in c.failures]
    hostile_ok = sum(c.hostile_ok for c in clients)
    versions = sorted(set().union(*(c.versions for c in clients)))
    warm = next((value for t, value in rss if t >= min(10.0, args.duration / 4)), rss[0][1])
    mib = lambda value: value / 2**20  # noqa: E731
    figures = {
        "requests": len(latencies) + hostile_ok,
        "good requests": len(latencies),
        "hostile requests answered as they must (4xx)": hostile_ok,
        "failed requests": len(failures),
        "throughput (good, req/s)": f"{len(latencies) / args.duration:.1f}",
        "latency p50 / p95 / p99 (ms)": " / ".join(
            f"{_percentile(latencies, q) * 1000:.1f}" for q in (0.5, 0.95, 0.99)
        ),
        "good requests shed (429) and retried": sum(c.retried for c in clients),
        "attacking connections: longest lived": attacker.longest(),
        "versions answered": ", ".join(versions),
        "reloads swapped (server count)": health["reload"]["reloads"],
        "server RSS, all its processes, warm / end / peak (MiB)": (
            f"{mib(warm):.0f} / {mib(rss[-1][1]):.0f} / {mib(max(v for _, v in rss)):.0f}"
        ),
        "RSS growth after warm-up (MiB)": f"{mib(rss[-1][1] - warm):+.1f}",
    }
    for name, value in figures.items():
        print(f"{name:38s} {value}")
    for failure in failures[:10]:
        print("  failure:", failure)
    report = [
        "# Serving soak: sustained load, hostile requests and hot reloads",
        "",
        f"Generated by `benchmarks/soak_serving.py` on {dt.date.today()} "
        f"({machine_line()}): "
        f"{args.photos} Flickr8k photos indexed with the fake encoder, versions A and B, "
        f"{args.clients} client threads for {args.duration:.0f} s on loopback, "
        f"{args.reloads} pointer flips (poll every 0.5 s). Every 10th request is hostile "
        "(image bombs, 11 MiB upload, non-image, wrong type, k=1e11, path traversal, 5000-char "
        "id; issue 24's float TIFF, lossless WebP, RGBA PNG, 1,000-scan JPEG, 873k-chunk PNG, "
        "800k-part form, 501-character queries) and must get a 4xx; a failure is any 5xx, "
        "transport error, or good query not finally 200 (a 429 is retried after Retry-After). "
        f"Meanwhile {args.idle_sockets} connections of each kind sit idle, drip a header byte "
        "a second, or stall in a body, reopened as the server closes them.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in figures.items()),
        "",
        "RSS samples (s, MiB): "
        + ", ".join(f"{t:.0f}:{mib(v):.0f}" for t, v in rss[:: max(1, len(rss) // 24)]),
        "",
    ]
    Path(args.report).write_text("\n".join(report))
    _log(f"wrote {args.report}")
    if (work / "hostile").exists():
        shutil.rmtree(work / "hostile")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
