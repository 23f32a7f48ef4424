"""Batch route against the single-query route: text queries per second, side by side in one run.

Run: ``.venv/bin/python benchmarks/bench_batch_queries.py [--n 1000000] [--work DIR]``

The index is ``bench_serving``'s (built once into ``--work`` and reused: ``--n`` synthetic
clustered vectors, 64-d image and 256-d joint shards, a real bag-of-words text encoder feeding a
dual joint model). The same Flickr8k dev captions are answered three ways, each timed over the
same queries, alternating rounds so load from other processes falls on all of them:

- in process (no HTTP, BLAS on one thread as ``imgsearch serve`` runs): ``serving.queries``'
  ``text_query`` once per caption, against ``serving.batch_search.batch_query`` per batch;
- over HTTP to ``imgsearch serve`` (one process, one uvicorn worker, loopback) from two client
  threads (keep-alive): ``GET /api/search?q=...&k=10`` per caption, against ``POST
  /api/search/batch`` with ``--batch`` captions per request.

The single route also explains each hit word by word (``why.terms``); the batch route does not
(its OpenAPI description says so), which is part of what batching saves. Figures are printed and
written into ``benchmarks/results/serving.md`` (its batch section, replaced on each run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_serving import _captions, build, wait_ready
from benchmarks.machine import machine_line
from imgsearch import settings
from ranking.query_syntax import is_plain

SECTION = "<!-- bench_batch_queries.py: this section is replaced by its next run -->"
K = 10
ROUNDS = 3


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def in_process(root: Path, models: Path, captions: list[str], batch: int) -> dict[str, float]:
    """Queries per second of the two ways, best round each (one thread, no HTTP)."""
    from threadpoolctl import threadpool_limits

    from index.publish import resolve_index
    from serving import queries
    from serving.batch_search import BatchItem, batch_query
    from serving.paging import PageRequest
    from serving.state import QueryModels, load_bundle

    threadpool_limits(1, user_api="blas")
    index_dir, version = resolve_index(str(root))
    models_loaded = QueryModels.load(str(models))
    bundle = load_bundle(index_dir, models_loaded, version, verify=False)
    page = PageRequest(K)
    groups = [[BatchItem(c, None) for c in chunk] for chunk in _chunks(captions, batch)]
    for caption in captions[:20]:  # warm: traced functions, caches
        queries.text_query(bundle, caption, page, None)
    batch_query(bundle, groups[0], page, None)
    best = {"single": 0.0, "batch": 0.0}
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for caption in captions:
            queries.text_query(bundle, caption, page, None)
        best["single"] = max(best["single"], len(captions) / (time.perf_counter() - started))
        started = time.perf_counter()
        for group in groups:
            answers = batch_query(bundle, group, page, None)
            assert all("error" not in a for a in answers), answers[:1]
        best["batch"] = max(best["batch"], len(captions) / (time.perf_counter() - started))
    return best


def over_http(url: str, captions: list[str], batch: int, threads: int) -> dict[str, float]:
    """Queries per second of the two routes, best round each, ``threads`` client threads."""
    import httpx

    def single(part: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for caption in part:
                answer = client.get("/api/search", params={"q": caption, "k": K})
                answer.raise_for_status()

    def batched(part: list[list[str]]) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for group in part:
                body = {"queries": [{"q": c} for c in group], "k": K}
                answer = client.post("/api/search/batch", json=body)
                answer.raise_for_status()
                assert len(answer.json()["results"]) == len(group)

    groups = _chunks(captions, batch)
    best = {"single": 0.0, "batch": 0.0}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(single, [captions[:20]] * threads))  # warm-up
        for _ in range(ROUNDS):
            started = time.perf_counter()
            list(pool.map(single, [captions[i::threads] for i in range(threads)]))
            best["single"] = max(best["single"], len(captions) / (time.perf_counter() - started))
            started = time.perf_counter()
            list(pool.map(batched, [groups[i::threads] for i in range(threads)]))
            best["batch"] = max(best["batch"], len(captions) / (time.perf_counter() - started))
    return best


def render(args, http: dict, local: dict, load: tuple) -> str:
    when = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    lines = [
        SECTION,
        "## Batch queries (generated by benchmarks/bench_batch_queries.py)",
        "",
        f"Run {when}, `benchmarks/bench_batch_queries.py --n {args.n} --batch {args.batch}`. "
        f"{machine_line()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (other processes share the cores; the ratios come from one run).",
        "",
        f"Index as above ({args.n:,} images, 256-d joint shard). {args.queries:,} Flickr8k dev "
        f"captions, k={K}, each way timed {ROUNDS} times in alternating rounds, best round "
        f"shown. Batch route: {args.batch} captions per request (the most it takes is "
        "`serving.batch_routes.MAX_BATCH_QUERIES`); all text queries of a batch are embedded "
        "in one encoder call and searched in one ScaNN batch, and its answers leave out the "
        "single route's per-word contributions. The HTTP client is Python (httpx) on the "
        "same 2 cores, slower than wrk: compare the routes with each other here, not with "
        "the wrk figures above.",
        "",
        "| way | single-query route, queries/s | batch route, queries/s | batch / single |",
        "|---|---:|---:|---:|",
        f"| HTTP, {args.threads} client threads, one server process | {http['single']:.0f} | "
        f"{http['batch']:.0f} | {http['batch'] / http['single']:.1f}x |",
        f"| in process, one thread, no HTTP | {local['single']:.0f} | {local['batch']:.0f} | "
        f"{local['batch'] / local['single']:.1f}x |",
        "",
    ]
    return "\n".join(lines)


def write_section(report: Path, section: str) -> None:
    """Replace the batch section of ``report`` (or append it); the rest stays as it is."""
    text = report.read_text() if report.is_file() else ""
    if SECTION in text:
        text = text[: text.index(SECTION)]
    report.write_text(text.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-bench"))
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=18766)
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/serving.md"))
    args = parser.parse_args(argv)
    assets = settings.assets_dir()
    if assets is None:
        sys.exit(settings.describe_assets_layout())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root, models = build(work, args.n, assets)
    # Plain text only: a caption with quotes or + / - is the query syntax, which the batch
    # route does not take (and a lone quote is a 400 on both routes).
    captions = [c for c in _captions(assets, "dev") if is_plain(c)][: args.queries]

    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(work / "batch-server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(root), "--models",
             str(models), "--port", str(args.port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(url)
            http = over_http(url, captions, args.batch, args.threads)
        finally:
            server.terminate()
            server.wait(60)
    print(f"HTTP: {http}", flush=True)
    local = in_process(root, models, captions, args.batch)
    print(f"in process: {local}", flush=True)
    section = render(args, http, local, os.getloadavg())
    write_section(Path(args.report), section)
    print(section)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
