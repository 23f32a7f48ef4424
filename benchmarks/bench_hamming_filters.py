"""Filtered image search at 1M vectors: the served Hamming index against ScaNN's filtered search.

Run: ``.venv/bin/python benchmarks/bench_hamming_filters.py [--table DIR] [--n 1000000]
[--bits 128] [--rerank 1000]``

The database is ``bench_ann``'s grown image embeddings (``load_images``: the Flickr8k
MobileNetV2 embedding table of ``imgsearch index``, ``--table``, grown to ``--n`` vectors and
PCA-projected to ``--dim``), as ``bench_filters`` and ``bench_hashing`` use. Two searchers of
the same rows, each as ``imgsearch serve`` runs it:

- ScaNN with the index job's size rules, through ``index.filtered_search`` with the default
  ``FilterPolicy`` (``bench_filters.Index``: ANN with oversampling, exact below 1% of the rows);
- ``index.hash_codes.HammingIndex`` (``--image-search hamming``): ITQ codes fit on a
  ``--train-sample`` of the rows, Hamming top ``--rerank`` of the allowed rows, exact
  re-ranking with the float rows.

Filters as in ``bench_filters``: none, 50%, 5% and 0.1% of the rows at random, and the 5% of
rows nearest one database row (correlated with the vectors: the hard case for ANN
post-filtering). Each query alone, BLAS on one thread, its fastest of ``--rounds``; recall@10
against brute force over the allowed rows. Figures are printed and written to ``--report``;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ann_baselines import threads
from bench_ann import DEFAULT_TABLE, load_images
from bench_filters import Index, K, exact_filtered, standard_filters

from benchmarks.machine import machine_line
from index.filtered_search import FilterPolicy
from index.hamming import CodeColumns
from index.hash_codes import HammingIndex
from index.scann_index import exact_top_k
from ranking.recall import recall_per_query
from training.hashing import train_itq

logger = logging.getLogger("bench_hamming_filters")


def timed(search, queries: np.ndarray, rounds: int) -> tuple[np.ndarray, float, float]:
    """``search(query (1, d)) -> rows (K,)`` for each query alone: rows of the first round,
    p50 and p99 ms of each query's fastest round."""
    search(queries[:1])  # warm caches and lazy initialisation
    best = np.full(len(queries), np.inf)
    found = np.full((len(queries), K), -1, np.int64)
    for round_ in range(rounds):
        for i in range(len(queries)):
            started = time.perf_counter()
            rows = search(queries[i : i + 1])
            best[i] = min(best[i], time.perf_counter() - started)
            if round_ == 0:
                found[i, : len(rows)] = rows[:K]
    return found, 1e3 * float(np.percentile(best, 50)), 1e3 * float(np.percentile(best, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help="embedding table dir (Parquet)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--rerank", type=int, default=1000)
    parser.add_argument("--train-sample", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--report", default=str(REPO / "benchmarks" / "results" / "hamming_filters.md")
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(machine_line())
    started_all, load_before = time.perf_counter(), os.getloadavg()
    table = args.table if args.table and os.path.isdir(args.table) else None
    with threads(os.cpu_count() or 1):
        ds = load_images(table, args.n, args.dim, 0, args.queries, args.seed)
    database, queries = ds.database, ds.eval_queries
    n = len(database)

    index, build_s = Index.build(database)
    rng = np.random.default_rng(args.seed + 1)
    started = time.perf_counter()
    sample = database[np.sort(rng.choice(n, min(args.train_sample, n), replace=False))]
    encoder, _ = train_itq(sample, args.bits, 50, args.seed)
    codes = CodeColumns.from_packed(encoder.encode(database))
    hamming = HammingIndex(encoder, codes, args.rerank)
    code_s = time.perf_counter() - started
    logger.info("ScaNN built in %.0f s; ITQ %d bits fit and coded in %.0f s", build_s,
                args.bits, code_s)  # fmt: skip

    filters = {"none": None, **standard_filters(database, rng)}
    policy = FilterPolicy()
    rows = []
    for name, allowed in filters.items():
        with threads(os.cpu_count() or 1):
            if allowed is None:
                truth, _ = exact_top_k(database, queries, K)
            else:
                truth = exact_filtered(database, queries, allowed)
        mask = np.ones(n, bool) if allowed is None else allowed

        def scann_one(query, mask=mask):
            return index.search(query, mask, policy).indices[0]

        def hamming_one(query, allowed=allowed):
            return hamming.ranked(query, K, database, allowed)[0][0]

        with threads(1):
            measured = {}
            for label, search in (("scann", scann_one), ("hamming", hamming_one)):
                found, p50, p99 = timed(search, queries, args.rounds)
                measured[label] = (float(recall_per_query(found, truth).mean()), p50, p99)
        rows.append((name, int(mask.sum()), measured))
        logger.info("%s: %s", name, measured)
    total_min = (time.perf_counter() - started_all) / 60

    scann_bytes = _saved_bytes(index) / n
    command = " ".join(
        [".venv/bin/python benchmarks/bench_hamming_filters.py", *(argv or sys.argv[1:])]
    )
    out = [
        "# Filtered image search: Hamming codes vs ScaNN (generated by "
        "benchmarks/bench_hamming_filters.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, `{command}`, "
        f"{total_min:.1f} min.",
        f"Machine: {machine_line()}.",
        f"Load average (1/5/15 min) before {_load(load_before)}, after "
        f"{_load(os.getloadavg())}: other processes may have shared the cores.",
        "",
        ds.description.split(" faiss HNSW")[0],
        "",
        f"ScaNN {index.describe()} (`choose_scann_params`), built in {build_s:.0f} s, through "
        f"`index.filtered_search` with the default `FilterPolicy` (exact below "
        f"{policy.exact_below_selectivity:.0%} of the rows or {policy.exact_max_rows:,} rows, "
        f"oversample x{policy.oversample:g}) and the server's rescoring depth. Hamming: ITQ "
        f"{args.bits} bits fit on {len(sample):,} rows, coding all rows {code_s:.0f} s, "
        f"`HammingIndex` with re-ranking of the {args.rerank} nearest allowed codes "
        f"(`imgsearch serve --image-search hamming --hamming-rerank {args.rerank}`). "
        f"{args.queries} queries, each alone on one thread, fastest of {args.rounds} rounds; "
        f"recall@{K} against brute force over the allowed rows.",
        "",
        f"Held per image: ScaNN's index files {scann_bytes:,.0f} B (its own float32 "
        f"rescoring copy included); the codes {args.bits // 8} B. Serving keeps the table's "
        f"float32 rows ({4 * args.dim:,} B here) beside either, for similar-by-id and exact "
        f"scoring.",
        "",
        "| filter | rows allowed | ScaNN recall@10 | p50 ms | p99 ms | Hamming recall@10 "
        "| p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, allowed_rows, m in rows:
        (sr, s50, s99), (hr, h50, h99) = m["scann"], m["hamming"]
        out.append(
            f"| {name} | {allowed_rows:,} | {sr:.3f} | {s50:.2f} | {s99:.2f} | {hr:.3f} | "
            f"{h50:.2f} | {h99:.2f} |"
        )
    out.append("")
    Path(args.report).write_text("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"wrote {args.report} ({total_min:.1f} min)")
    return 0


def _saved_bytes(index: Index) -> int:
    """The bytes of ScaNN's serialized files: what a served version holds for its index."""
    import tempfile

    from index.scann_index import save_searcher

    with tempfile.TemporaryDirectory(prefix="bench-hamming-scann-") as folder:
        save_searcher(index.searcher, folder)
        return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def _load(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    raise SystemExit(main())
