"""Latency of the query modes: plain text, query syntax, mixed (image + text), relevance feedback.

Run: ``.venv/bin/python benchmarks/bench_query_modes.py [--n 100000] [--queries 500]``

1. Builds (once; reused from ``--work``) the publish root of ``benchmarks/bench_serving.py`` at
   ``--n`` synthetic clustered vectors (64-d image, 256-d joint embeddings, real Parquet table,
   ScaNN via ``index.build``) with its bag-of-words + dual joint model (random weights: latency
   does not depend on what they learned).
2. Loads it into the real app (``serving.app.create_app``) and asks it through Starlette's
   TestClient, in process: the whole route (form or JSON parsing, encoders, towers, ScaNN,
   ``why``, JSON) without a socket. One thread, BLAS limited to one thread as ``imgsearch
   serve`` runs.
3. ``--queries`` rounds of one request per mode, interleaved (Flickr8k dev captions in random
   order, random indexed ids) after 20 warm-up rounds; prints the CPU model and p50/p99 per
   mode and writes ``benchmarks/results/query_modes.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_serving import _captions, build

from benchmarks.machine import cpu_model
from imgsearch import settings

WARM_UP = 20
K = 10


def _photo(assets: Path) -> bytes:
    """A real COCO photo when the assets have one, else a seeded synthetic 640x480 JPEG."""
    photos = sorted((assets / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    from PIL import Image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def measure(modes: dict[str, Callable[[int], object]], count: int) -> dict[str, dict]:
    """p50/p99 ms per mode; rounds interleave the modes, so a busy moment hits all alike."""
    for i in range(WARM_UP):
        for ask in modes.values():
            ask(i)
    timings: dict[str, list[float]] = {name: [] for name in modes}
    for i in range(WARM_UP, WARM_UP + count):
        for name, ask in modes.items():
            started = time.perf_counter()
            response = ask(i)
            timings[name].append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
    results = {}
    for name, seconds in timings.items():
        ms = np.asarray(seconds) * 1000
        results[name] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
        print(f"{name:<44} p50 {results[name]['p50']:7.2f} ms   p99 {results[name]['p99']:7.2f} ms")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500, help="timed requests per mode")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-bench"))
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/query_modes.md"))
    args = parser.parse_args(argv)
    assets = settings.assets_dir()
    if assets is None:
        sys.exit(settings.describe_assets_layout())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)
    root, models = build(work, args.n, assets)

    from fastapi.testclient import TestClient
    from threadpoolctl import threadpool_limits

    from serving.app import create_app
    from serving.config import ServeConfig

    threadpool_limits(1, user_api="blas")  # as `imgsearch serve` runs
    started = time.perf_counter()
    app = create_app(ServeConfig(index=str(root), models_dir=str(models), poll_interval_s=0,
                                 verify=False))  # fmt: skip
    print(f"loaded {args.n:,} images in {time.perf_counter() - started:.1f} s", flush=True)
    captions = [c.replace('"', "") for c in _captions(assets, "dev")[:2000]]
    rng = np.random.default_rng(11)
    order = rng.permutation(len(captions))
    ids = [f"img{i:08d}" for i in rng.integers(0, args.n, 10 * (args.queries + WARM_UP))]
    photo = _photo(assets)

    def caption(i: int) -> str:
        return captions[order[i % len(captions)]]

    with TestClient(app) as client:

        def plain(i: int):
            return client.get("/api/search", params={"q": caption(i), "k": K})

        def syntax(i: int):
            q = f'"{caption(i)}" + 0.5:beach - snow'
            return client.get("/api/search", params={"q": q, "k": K})

        def mixed_id(i: int):
            form = {"image_id": (None, ids[i]), "q": (None, f'"{caption(i)}" - snow')}
            return client.post("/api/search/mixed", params={"k": K}, files=form)

        def mixed_upload(i: int):
            form = {"file": ("q.jpg", photo, "image/jpeg"), "q": (None, caption(i))}
            return client.post("/api/search/mixed", params={"k": K}, files=form)

        def feedback(i: int):
            judged = ids[4 * i : 4 * i + 4]
            body = {"q": caption(i), "relevant": judged[:3], "not_relevant": judged[3:], "k": K}
            return client.post("/api/feedback/search", json=body)

        def feedback_images(i: int):
            body = {"relevant": ids[5 * i : 5 * i + 5], "k": K}
            return client.post("/api/feedback/search", json=body)

        modes: dict[str, Callable[[int], object]] = {
            "text, plain (GET /api/search)": plain,
            "text, syntax: 3 terms (GET /api/search)": syntax,
            "mixed: image_id + 2 terms": mixed_id,
            "mixed: uploaded JPEG + 1 term": mixed_upload,
            "feedback: q + 3 relevant + 1 not relevant": feedback,
            "feedback: 5 relevant images, no text": feedback_images,
        }
        results = measure(modes, args.queries)
    report = render(args, results, len(photo))
    Path(args.report).write_text(report)
    print(f"wrote {args.report}")
    return 0


def render(args, results: dict[str, dict], photo_bytes: int) -> str:
    lines = [
        "# Query modes: latency (generated by benchmarks/bench_query_modes.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} on {cpu_model()} "
        f"({os.cpu_count()} cores, CPU only, shared with other jobs; 1-minute load average at "
        f"the end: {os.getloadavg()[0]:.1f}).",
        "",
        f"Index: {args.n:,} synthetic clustered unit vectors (64-d image, 256-d joint "
        "embeddings; `benchmarks/bench_serving.py`'s build: Parquet table -> `index.build`, "
        "ScaNN tree + AH + exact rescoring). Text side: bag-of-words encoder fitted on Flickr8k "
        "train captions -> dual joint model tower (random weights). Image side: the `fake` "
        f"64-d encoder; the upload is a {photo_bytes:,}-byte JPEG decoded as indexing does.",
        f"Requests: the real app (`serving.app.create_app`) through Starlette's TestClient, in "
        f"process (routing, form/JSON parsing, encoders, towers, ScaNN, `why`, JSON; no "
        f"socket), one at a time, BLAS on one thread; {args.queries} timed rounds of one "
        f"request per mode (interleaved) after {WARM_UP} warm-up rounds, k={K}; Flickr8k dev "
        "captions in random order, random indexed ids.",
        "",
        "| mode | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    for name, figures in results.items():
        lines.append(f"| {name} | {figures['p50']:.2f} | {figures['p99']:.2f} |")
    lines += [
        "",
        "A syntax query embeds every term in one text-encoder call (one fixed batch size, so "
        "one TensorFlow trace) and skips the plain query's per-word explanation; `why` scores "
        "each part against the hits' joint vectors instead. Feedback looks the judged images' "
        "vectors up by id and projects them through the image tower; nothing is re-encoded.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
