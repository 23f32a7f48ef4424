"""Text encoding under concurrent queries: each call on its own against the server's batcher.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_text_batching.py [--threads 1 4 16]``
(writes ``benchmarks/results/text_batching.md`` and the same figures as JSON beside it).

Every request is what the server's text route asks of the encoder (``serving.explain``): one
call with the query and its words. The encoder is the default recipe's, ``minilm_tfidf``
(MiniLM from its package beside a TF-IDF fitted on Flickr8k train captions); the queries are
distinct Flickr8k dev captions in a seeded random order, handed out to ``T`` client threads as
the server's thread pool would. Ways, measured side by side in one process: ``direct`` (each
request calls the encoder, as before); ``batched`` (``serving.text_batcher``: a 2 ms window,
one or two worker threads calling the encoder) without a cache; the cache with one worker and
no window (requests queued while the worker is busy still share its next call); and the
server's default,
batched with two workers and the 32 MiB LRU of recent texts. Caches start empty each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.datasets import add_flickr8k_arg, flickr8k_dir
from benchmarks.machine import machine_line
from encoders.text_registry import create_text_encoder, fit_text_encoder
from serving.explain import MAX_TERM_CHARS, query_terms
from serving.text_batcher import BatchingTextEncoder, TextBatching
from training.captions import load_captioned_dataset

RESULTS = REPO / "benchmarks" / "results" / "text_batching.md"


def requests_of(queries: list[str]) -> list[list[str]]:
    """What ``serving.explain.embed_with_terms`` hands the encoder for each query."""
    return [[q, *(t for t in query_terms(q) if len(t) <= MAX_TERM_CHARS)] for q in queries]


def run(encode, requests: list[list[str]], threads: int) -> dict:
    """``requests`` shared out to ``threads`` clients -> requests/s and latency percentiles."""
    position = iter(range(len(requests)))
    lock = threading.Lock()
    latencies: list[float] = []

    def client() -> None:
        mine = []
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                break
            started = time.perf_counter()
            encode(requests[i])
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "threads": threads,
        "requests": len(requests),
        "qps": len(requests) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flickr8k_arg(parser)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--queries", type=int, default=800, help="requests per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    dataset_dir = flickr8k_dir(parser, args)
    train = load_captioned_dataset(dataset_dir, "train")
    dev = load_captioned_dataset(dataset_dir, "dev")
    work = tempfile.TemporaryDirectory()  # the fitted TF-IDF, kept while the encoder runs
    spec = fit_text_encoder("minilm_tfidf", train.caption_texts, Path(work.name) / "text")
    encoder = create_text_encoder(spec)
    distinct = list(dict.fromkeys(dev.caption_texts))
    order = np.random.default_rng(0).permutation(len(distinct))
    queries = [distinct[i] for i in order]
    encoder.encode(queries[:64])  # trace every length bucket's graph before timing

    def batcher(**settings) -> object:
        # The cache these rows were measured with (the server's default is now 256 MiB; on
        # this run's fresh captions, each seen once, a larger cache only holds more words).
        settings = {"cache_mib": 32.0, **settings}
        return lambda: BatchingTextEncoder(encoder, TextBatching(**settings)).encode

    ways = {
        "direct": lambda: encoder.encode,
        "batched, 1 worker": batcher(cache_mib=0, workers=1),
        "batched, 2 workers": batcher(cache_mib=0, workers=2),
        "cache, 1 worker, no window": batcher(max_wait_s=0.0, workers=1),
        "batched + cache, 2 workers (server default)": batcher(),
    }
    results = []
    for threads in args.threads:
        # Each thread count gets fresh queries, so no way meets texts another way cached.
        start = (args.threads.index(threads) * args.queries) % len(queries)
        chunk = requests_of((queries * 2)[start : start + args.queries])
        for name, make in ways.items():
            figures = {"way": name, **run(make(), chunk, threads)}
            print(json.dumps(figures), flush=True)
            results.append(figures)
    load = os.getloadavg()
    lines = [
        "# Text encoding under concurrent queries (generated by benchmarks/bench_text_batching.py)",
        "",
        f"Run {time.strftime('%Y-%m-%dT%H:%M:%S%z')}, `benchmarks/bench_text_batching.py "
        f"--threads {' '.join(map(str, args.threads))} --queries {args.queries}`. "
        f"{machine_line()}; load average at the end {load[0]:.1f}.",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| client threads | way | requests/s | vs direct | p50 ms | p99 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for figures in results:
        direct = next(
            r for r in results if r["threads"] == figures["threads"] and r["way"] == "direct"
        )
        lines.append(
            f"| {figures['threads']} | {figures['way']} | {figures['qps']:.0f} | "
            f"{figures['qps'] / direct['qps']:.2f}x | {figures['p50_ms']:.1f} | "
            f"{figures['p99_ms']:.1f} |"
        )
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(report)
    work.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
