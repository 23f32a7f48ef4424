"""Semantic hashing (ITQ, autoencoder) next to ScaNN tree-AH, int8 and exact float32 search.

Run: ``.venv/bin/python benchmarks/bench_hashing.py [--quick] [--table DIR] [--image-n 1000000]``

The image vectors are those of ``benchmarks/bench_ann.py`` (``load_images``): the real Flickr8k
MobileNetV2 embedding table grown to ``--image-n`` vectors by interpolation towards real
neighbours plus shaped noise, PCA-projected (uncentred) to 256-d and renormalised; its tuning
queries choose the autoencoder's epoch, its evaluation queries are measured here.

Hashing: ``training.hashing`` fits ITQ and the binary-bottleneck autoencoder on a random
``--train-sample`` of the database at 64/128/256 bits; search is ``index.hamming``: the query's
code (encoding counted in the time), Hamming top R over the packed codes of every database row,
exact re-ranking of those R with the float32 rows. Next to it, in the same run: exact float32
(NumPy), ScaNN brute force over int8 (``--index_quantize int8``), ScaNN tree-AH with the
project's default parameters (``choose_scann_params``) rescoring float32 and int8. Figures:
bytes per image held by the search, recall@10 against exact float32, single-thread queries/s
(one query per call, one thread). Printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ann_baselines import threads
from bench_ann import DEFAULT_TABLE, load_images

from benchmarks.machine import machine_line
from index.ann_measure import single_query_latencies
from index.hamming import CodeColumns, HashEncoder, hamming_top_r, rerank
from index.scann_index import (
    build_searcher,
    choose_scann_params,
    exact_top_k,
    save_searcher,
    search_batched,
)
from ranking.recall import recall_per_query
from training.hashing import AutoencoderTraining, train_autoencoder, train_itq

logger = logging.getLogger("bench_hashing")

K = 10
BITS = (64, 128, 256)
RERANK = (100, 1000)


@dataclasses.dataclass
class Row:
    method: str
    knobs: str
    bytes_per_image: float  # what the search holds in memory per image
    code_bytes: float | None  # of which the binary code (hashing) or the index (others)
    recall: float
    recall_se: float
    qps_single: float
    p50_ms: float
    build_s: float


def _recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    per_query = recall_per_query(found, exact)
    return float(per_query.mean()), float(per_query.std(ddof=1) / math.sqrt(len(found)))


def _single_thread(search_one, queries: np.ndarray, rounds: int) -> tuple[float, float]:
    with threads(1):
        seconds = single_query_latencies(search_one, queries, rounds=rounds)
    return 1.0 / float(seconds.mean()), 1e3 * float(np.percentile(seconds, 50))


def hashing_rows(
    encoder: HashEncoder,
    database: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    fit_s: float,
    args: argparse.Namespace,
) -> list[Row]:
    codes = CodeColumns.from_packed(encoder.encode(database))  # what a searcher would hold
    query_codes = encoder.encode(queries)
    float_bytes = database.shape[1] * 4
    rows = []
    for r in RERANK:
        candidates, _ = hamming_top_r(codes, query_codes, r)
        found = np.stack(
            [rerank(database, q, c, K)[0] for q, c in zip(queries, candidates, strict=True)]
        )
        recall = _recall(found, exact)

        def one(q: np.ndarray, r=r) -> object:
            top, _ = hamming_top_r(codes, encoder.encode(q[np.newaxis]), r)
            return rerank(database, q, top[0], K)

        qps, p50 = _single_thread(one, queries[: args.single_queries], 2)
        rows.append(
            Row(
                f"{encoder.method} {encoder.bits} bits",
                f"R={r}",
                encoder.bytes_per_code + float_bytes,
                encoder.bytes_per_code,
                *recall,
                qps,
                p50,
                fit_s,
            )
        )
        logger.info("%s", rows[-1])
    return rows


def scann_rows(
    database: np.ndarray, queries: np.ndarray, exact: np.ndarray, args: argparse.Namespace
) -> list[Row]:
    rows = []
    default = choose_scann_params(len(database), database.shape[1], K)
    brute = choose_scann_params(1, database.shape[1], K)  # brute force
    configs = [
        ("ScaNN brute force int8", dataclasses.replace(brute, quantize="int8"), ""),
        ("ScaNN tree-AH, float32 rescoring", default, ""),
        ("ScaNN tree-AH, int8 rescoring", dataclasses.replace(default, quantize="int8"), ""),
    ]
    for name, params, _ in configs:
        gc.collect()
        began = time.perf_counter()
        with threads(os.cpu_count() or 1):
            searcher = build_searcher(database, params)
        build_s = time.perf_counter() - began
        with tempfile.TemporaryDirectory(prefix="bench-hashing-scann-") as folder:
            save_searcher(searcher, folder)
            size = sum(f.stat().st_size for f in Path(folder).iterdir())
        found, _ = search_batched(searcher, queries, K, params)
        recall = _recall(found, exact)
        if params.kind == "brute_force":

            def one(q: np.ndarray, s=searcher) -> object:
                return s.search(q, final_num_neighbors=K)

            single = queries[: args.brute_single_queries]
            knobs = "exact int8 scoring"
        else:

            def one(q: np.ndarray, s=searcher, p=params) -> object:
                return s.search(
                    q,
                    final_num_neighbors=K,
                    pre_reorder_num_neighbors=p.reorder_k,
                    leaves_to_search=p.num_leaves_to_search,
                )

            single = queries[: args.single_queries]
            knobs = (
                f"leaves={params.num_leaves}, search={params.num_leaves_to_search}, "
                f"reorder={params.reorder_k}"
            )
        qps, p50 = _single_thread(one, single, 2)
        rows.append(Row(name, knobs, size / len(database), None, *recall, qps, p50, build_s))
        logger.info("%s", rows[-1])
        del searcher
    return rows


def exact_row(database: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> Row:
    def one(q: np.ndarray) -> object:
        scores = database @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    qps, p50 = _single_thread(one, queries[: args.brute_single_queries], 1)
    return Row("exact float32 (NumPy)", "", database.shape[1] * 4, None, 1.0, 0.0, qps, p50, 0.0)


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table_lines(rows: list[Row]) -> list[str]:
    lines = [
        "| method | knobs | bytes / image held | of which code | recall@10 ± SE | "
        "QPS 1 thread | p50 ms | fit / build s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        code = "" if row.code_bytes is None else f"{row.code_bytes:,.0f}"
        lines.append(
            f"| {row.method} | {row.knobs} | {row.bytes_per_image:,.0f} | {code} | "
            f"{row.recall:.4f} ± {row.recall_se:.4f} | {_fmt(row.qps_single)} | "
            f"{row.p50_ms:.3f} | {row.build_s:.1f} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k vectors, a few minutes")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="embedding table dir (Parquet)")
    parser.add_argument("--image-n", type=int, default=None, help="database vectors (1M)")
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--selection-queries", type=int, default=300)
    parser.add_argument("--eval-queries", type=int, default=500)
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--brute-single-queries", type=int, default=30)
    parser.add_argument("--train-sample", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "hashing.md"))
    args = parser.parse_args()
    args.image_n = args.image_n or (50_000 if args.quick else 1_000_000)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"machine: {machine_line()}")

    started = time.perf_counter()
    load_before = os.getloadavg()
    table = args.table if args.table and os.path.isdir(args.table) else None
    ds = load_images(
        table, args.image_n, args.pca_dim, args.selection_queries, args.eval_queries, args.seed
    )
    database, queries = ds.database, ds.eval_queries
    with threads(os.cpu_count() or 1):
        exact, _ = exact_top_k(database, queries, K)
    rows = [exact_row(database, queries, args)]
    rows += scann_rows(database, queries, exact, args)

    rng = np.random.default_rng(args.seed)
    sample = database[np.sort(rng.choice(len(database), args.train_sample, replace=False))]
    training = AutoencoderTraining(epochs=args.epochs, seed=args.seed)
    notes = []
    for bits in args.bits:
        with threads(os.cpu_count() or 1):
            began = time.perf_counter()
            itq, errors = train_itq(sample, bits, training.itq_iterations, args.seed)
            itq_s = time.perf_counter() - began
            began = time.perf_counter()
            autoencoder, history = train_autoencoder(sample, bits, training, ds.tuning_queries)
            ae_s = time.perf_counter() - began
        notes.append(
            f"{bits} bits: ITQ quantisation error {errors[0]:.2f} (random rotation) -> "
            f"{errors[-1]:.2f}; autoencoder kept epoch {history['best_epoch']} of "
            f"{args.epochs} (selection recall@10 R=100 by epoch: "
            + ", ".join(f"{e['selection_recall@10']:.3f}" for e in history["epochs"])
            + ")"
        )
        rows += hashing_rows(itq, database, queries, exact, itq_s, args)
        rows += hashing_rows(autoencoder, database, queries, exact, ae_s, args)
    total_s = time.perf_counter() - started
    load_after = os.getloadavg()

    out = [
        "# Semantic hashing vs ScaNN, int8 and exact (generated by benchmarks/bench_hashing.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"`{' '.join(['benchmarks/bench_hashing.py', *sys.argv[1:]])}`, {total_s / 60:.1f} min.",
        f"Machine: {machine_line()}; numpy {np.__version__} "
        f"({'np.bitwise_count' if hasattr(np, 'bitwise_count') else 'lookup-table'} popcount).",
        f"Load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.1f}' for x in load_after)}: other processes shared the cores.",
        "",
        f"## {ds.name}",
        "",
        # bench_ann's description ends with a note on faiss HNSW, which does not run here.
        ds.description.split(" faiss HNSW")[0],
        "",
        f"Hashers fit on a random {args.train_sample:,}-row sample of the database; the "
        f"autoencoder's epoch is chosen on {args.selection_queries} separate queries. "
        f"Recall@10 against exact float32 over {len(queries)} evaluation queries; QPS 1 thread: "
        f"one query per call on one thread ({args.single_queries} queries, best of 2 rounds; "
        f"exact and ScaNN brute force: {args.brute_single_queries}). Hashing's time includes "
        "coding the query, the Hamming scan over every row and the exact re-ranking. Bytes / "
        "image held: hashing = code + the float32 row it re-ranks with; ScaNN = its serialized "
        "files / N (tree-AH: AH codes + the rescoring copy + leaf ids); exact = float32.",
        "",
        *table_lines(rows),
        "",
        *[f"- {note}" for note in notes],
        "- ScaNN runs with the project's default parameters (`choose_scann_params`, what "
        "`imgsearch index` builds), not autotuned: `benchmarks/results/ann.md` has the same "
        "data autotuned (tree-AH at recall 0.95 and ~15k QPS on one thread).",
        "",
    ]
    Path(args.report).write_text("\n".join(out) + "\n")
    print("\n".join(table_lines(rows)))
    print("\n".join(notes))
    print(f"wrote {args.report} ({total_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
