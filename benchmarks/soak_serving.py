"""Soak of the search server: sustained queries, hostile requests and hot reloads, loopback only.

Run: ``.venv/bin/python benchmarks/soak_serving.py [--photos 400] [--duration 120] [--reloads 4]``

1. Indexes ``--photos`` real Flickr8k photos twice with the real index job (``--encoder fake``):
   version A over the first 90 %, version B over all of them, in a publish root.
2. Starts ``imgsearch serve`` in its own process (one uvicorn worker) on 127.0.0.1, polling
   the pointer every 0.5 s.
3. For ``--duration`` seconds, client threads send a mix of image uploads, "similar" queries,
   details and thumbnails, plus hostile requests (image bombs, oversize and malformed uploads,
   huge k, path traversal) that must come back as 4xx; meanwhile the pointer flips between A and
   B ``--reloads`` times, so the server reloads under load.
4. Samples the server's RSS every second and prints: requests, failures (any 5xx, any
   transport error, any good query not answered 200, any hostile one not a 4xx), throughput,
   latency percentiles, versions served, RSS at warm-up, at the end and its peak; writes
   ``benchmarks/results/soak_serving.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
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
    """(method, path, httpx kwargs) of requests that must be answered with a 4xx."""
    from tests import corpus_factory as cf
    from tests import hostile_corpus as hc

    files = work / "hostile"
    files.mkdir(exist_ok=True)
    bomb = cf.png_bomb(files).read_bytes()
    jpeg_bomb = hc.jpeg_bomb(files).read_bytes()
    png = {"content-type": "image/png"}
    return [
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
                        response = client.request(method, path, **kwargs)
                        if 400 <= response.status_code < 500:
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
        _log(f"soak: {args.clients} clients for {args.duration:.0f}s, {args.reloads} reloads")
        started = time.monotonic()
        for client in clients:
            client.start()
        rss: list[tuple[float, int]] = []
        flips = [args.duration * (i + 1) / (args.reloads + 1) for i in range(args.reloads)]
        version = "A"
        while (elapsed := time.monotonic() - started) < args.duration:
            rss.append((elapsed, process.memory_info().rss))
            if flips and elapsed >= flips[0]:
                flips.pop(0)
                version = "B" if version == "A" else "A"
                write_pointer(str(root), version)
                _log(f"published {version} at {elapsed:.0f}s")
            time.sleep(1.0)
        stop.set()
        for client in clients:
            client.join(60)
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
        "hostile requests refused with 4xx": hostile_ok,
        "failed requests": len(failures),
        "throughput (good, req/s)": f"{len(latencies) / args.duration:.1f}",
        "latency p50 / p95 / p99 (ms)": " / ".join(
            f"{_percentile(latencies, q) * 1000:.1f}" for q in (0.5, 0.95, 0.99)
        ),
        "versions answered": ", ".join(versions),
        "reloads swapped (server count)": health["reload"]["reloads"],
        "server RSS warm / end / peak (MiB)": (
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
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs): "
        f"{args.photos} Flickr8k photos indexed with the fake encoder, versions A and B, "
        f"{args.clients} client threads for {args.duration:.0f} s on loopback, "
        f"{args.reloads} pointer flips (poll every 0.5 s). Every 10th request is hostile "
        "(image bombs, 11 MiB upload, non-image, wrong type, k=1e11, path traversal, 5000-char "
        "id) and must get a 4xx; a failure is any 5xx, transport error, or good query not 200.",
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
