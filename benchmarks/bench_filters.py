"""Filtered search at 1M vectors: recall@10 against exact filtered search, latency, cut-over.

Run: ``.venv/bin/python benchmarks/bench_filters.py [--table DIR] [--n 1000000]``

The database is ``bench_ann``'s grown image embeddings (``load_images``: the Flickr8k
MobileNetV2 embedding table of ``imgsearch index``, ``--table``, grown to ``--n`` vectors and
PCA-projected to ``--dim``; synthetic stand-ins without a table, as the report then says),
indexed by ScaNN with the index job's size rules (``choose_scann_params``) and searched with
the server's rescoring depth (``ServeConfig.page_depth``), as ``serving.searcher`` does.

Filters keep 50%, 5% and 0.1% of the rows at random, and 5% of the rows nearest one database
row (a filter correlated with the vectors: most queries' neighbourhoods hold none of it, the
hard case for post-filtering). Each query runs alone through ``index.filtered_search`` with
the default ``FilterPolicy``, BLAS on one thread (``imgsearch serve`` answers a request on one
thread); a query's time is the fastest of ``--rounds`` (the machine is shared). Recall@10 is
against brute force over the allowed rows (``exact_top_k``).

The sweep forces each path (exact over the allowed rows; ANN with oversampling) at
selectivities from 0.1% to 50%, which is where ``FilterPolicy``'s selectivity cut-over comes
from; the same on a ``--small-n`` index (a subset of the rows, indexed by its own size rules)
shows how many allowed rows ANN needs whatever the selectivity (``exact_max_rows``). Then
oversampling factors, the exact path's block size, and what evaluating a filter over 1M rows
of metadata costs (``ranking.filter_syntax``; the server caches the mask per filter).
Figures are printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ann_baselines import threads
from bench_ann import DEFAULT_TABLE, load_images

import index.filtered_search as filtered_search_module
from benchmarks.machine import machine_line
from index.filtered_search import FilterPolicy, filtered_search
from index.scann_index import (
    ScannParams,
    build_searcher,
    choose_scann_params,
    exact_top_k,
    search_batched,
)
from ranking.recall import recall_per_query

logger = logging.getLogger("bench_filters")

K = 10
# ServeConfig().page_depth (max_offset 1000 + max_k 100 + 1): the server rescores this many
# ANN candidates for every query, so that all pages of a query come from one ranking.
CANDIDATES = 1101
TARGET_RECALL = 0.95
TARGET_P99_MS = 20.0
SWEEP = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
# Exact scoring of more rows than this share is timed only where it stays affordable: its cost
# is linear in the rows (the sweep below shows it), and 200k rows take ~0.1 s a query.
EXACT_SWEEP_MAX = 0.1
SMALL_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.5)
OVERSAMPLE = (1.0, 2.0, 4.0)
OVERSAMPLE_AT = (0.5, 0.05, 0.01)
BLOCKS = (1024, 4096, 16384, 65536)
ANN_ONLY = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0.0)
EXACT_ONLY = FilterPolicy(exact_max_rows=2**62, exact_below_selectivity=2.0)


@dataclasses.dataclass
class Measured:
    """One filter under one policy: recall and single-query latency over the queries."""

    name: str
    rows: int
    share: float
    recall: float
    p50_ms: float
    p99_ms: float
    paths: str  # e.g. "ann 481, exact 19, of which exact after ANN 19"
    fallbacks: int  # queries the ANN left short, scored exactly
    mean_candidates: float
    retried: float  # share of queries whose ANN asked more than once (a deeper second call)


def exact_filtered(database: np.ndarray, queries: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The oracle: brute force over the allowed rows, as global rows ``(M, K)``."""
    rows = np.flatnonzero(allowed)
    found, _ = exact_top_k(database[rows], queries, min(K, len(rows)))
    return rows[found]


def measure(
    name: str,
    allowed: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    search: Callable,
    policy: FilterPolicy,
    rounds: int,
) -> Measured:
    """Each query alone, its fastest of ``rounds``; recall and paths from the first round."""
    search(queries[0][None], allowed, policy)  # warm caches and lazy initialisation
    best = np.full(len(queries), np.inf)
    found = np.full((len(queries), K), -1, np.int64)
    paths: Counter[str] = Counter()
    candidates, retried = [], 0
    first_n = math.ceil(K / max(allowed.mean(), 1e-12) * policy.oversample)
    clock = time.perf_counter
    for round_ in range(rounds):
        for i, query in enumerate(queries):
            started = clock()
            result = search(query[None], allowed, policy)
            best[i] = min(best[i], clock() - started)
            if round_ == 0:
                found[i] = result.indices[0]
                paths[result.path] += 1
                paths["fallback"] += result.exact_fallbacks
                candidates.append(result.candidates)
                retried += result.candidates > min(first_n, policy.max_candidates, len(allowed))
    shown = [f"{p} {paths[p]}" for p in ("ann", "exact") if paths[p]]
    if paths["fallback"]:
        shown.append(f"of which exact after ANN {paths['fallback']}")
    return Measured(
        name,
        int(allowed.sum()),
        float(allowed.mean()),
        float(recall_per_query(found, truth).mean()),
        1e3 * float(np.percentile(best, 50)),
        1e3 * float(np.percentile(best, 99)),
        ", ".join(shown),
        paths["fallback"],
        float(np.mean(candidates)),
        retried / len(queries),
    )


def choose_policy(
    sweep: dict[float, dict[str, Measured]],
    small_sweep: dict[float, dict[str, Measured]],
    per_row_ms: float,
) -> tuple[FilterPolicy, str]:
    """The cut-over the sweeps support, and why.

    ``exact_below_selectivity``: the smallest swept share from which on ANN (forced) meets the
    recall target and is no slower than exact at p50 (where exact was timed; p99 on a shared
    machine is mostly the scheduler's). ``exact_max_rows``: the most allowed rows at which
    ANN was seen to miss the recall target above that share, on either index (one that meets
    it at its loosest filter), rounded up to 5,000s: ANN's recall depends on the allowed rows
    it can reach, not only on their share.
    """
    shares = sorted(sweep)
    cut = shares[-1]
    for share in reversed(shares):
        ann, exact = sweep[share]["ann"], sweep[share].get("exact")
        if ann.recall < TARGET_RECALL or (exact is not None and ann.p50_ms > exact.p50_ms):
            break
        cut = share
    # An index that misses the target at its loosest filter misses it unfiltered too: that is
    # its own tuning, not something exact scoring of few rows would fix.
    grids = [g for g in (sweep, small_sweep) if g[max(g)]["ann"].recall >= TARGET_RECALL]
    missed = [
        m["ann"].rows
        for grid in grids
        for share, m in grid.items()
        if share >= cut and m["ann"].recall < TARGET_RECALL
    ]
    max_rows = 5000 * math.ceil(max(missed) / 5000) if missed else 1000
    why = (
        f"ANN (forced) meets recall@{K} >= {TARGET_RECALL} and is no slower than exact at p50 "
        f"from {cut:.1%} of the rows up; above that share it missed the target with up to "
        f"{max(missed, default=0):,} allowed rows (both indexes); exact costs "
        f"{per_row_ms * 1e3:.2f} ms per 1,000 allowed rows (fit over the sweep), so "
        f"{max_rows:,} rows cost ~{per_row_ms * max_rows:.1f} ms"
    )
    chosen = dataclasses.replace(
        FilterPolicy(), exact_below_selectivity=cut, exact_max_rows=max_rows
    )
    return chosen, why


def metadata_columns(n: int, rng: np.random.Generator):
    """``n`` rows of synthetic metadata shaped like a table's: site, width, taken, tags."""
    import pyarrow as pa

    from index.schema import TAG_TYPE

    sites = pa.array(rng.choice(["flickr", "coco", "unsplash", "local"], n))
    widths = pa.array(rng.choice([320, 640, 800, 1024, 2048], n).astype(np.int64))
    seconds = rng.integers(1_500_000_000, 1_700_000_000, n) * 1_000_000
    taken = pa.array(seconds, pa.timestamp("us", tz="UTC"))
    counts = rng.integers(0, 5, n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    labels = pa.array(rng.choice([f"label{i}" for i in range(49)] + ["dog"], offsets[-1]))
    scores = pa.array(rng.random(offsets[-1]).astype(np.float32))
    tags = pa.ListArray.from_arrays(
        pa.array(offsets), pa.StructArray.from_arrays([labels, scores], ["label", "score"])
    ).cast(TAG_TYPE)
    return {"site": sites, "width": widths, "taken": taken, "tags": tags}


def mask_costs(n: int, rounds: int) -> list[tuple[str, float, float]]:
    """(filter, ms to parse and mask ``n`` rows, share kept) for a few filters."""
    from ranking.filter_syntax import parse_filter

    columns = metadata_columns(n, np.random.default_rng(1))
    fields = {"site": "string", "width": "int", "taken": "timestamp", "tags": "string_list"}
    texts = (
        'site = "flickr"',
        'site = "flickr" AND width >= 800 AND tags HAS "dog"',
        '(site = "coco" OR site != "local") AND NOT taken < "2020-01-01" AND width IN (640, 800)',
    )
    out = []
    for text in texts:
        best = math.inf
        for _ in range(rounds):
            started = time.perf_counter()
            kept = parse_filter(text, fields).mask(columns)
            best = min(best, time.perf_counter() - started)
        out.append((text, 1e3 * best, float(kept.mean())))
    return out


@dataclasses.dataclass
class Index:
    """Vectors and their ScaNN searcher, searched one query at a time as the server does."""

    database: np.ndarray
    searcher: object
    params: ScannParams

    @classmethod
    def build(cls, database: np.ndarray) -> tuple[Index, float]:
        """An index with the index job's size rules, and its build seconds (all cores)."""
        params = choose_scann_params(len(database), database.shape[1], K)
        started = time.perf_counter()
        with threads(os.cpu_count() or 1):
            searcher = build_searcher(database, params)
        return cls(database, searcher, params), time.perf_counter() - started

    def describe(self) -> str:
        p = self.params
        return (
            f"{len(self.database):,} rows, {p.num_leaves} leaves, {p.num_leaves_to_search} "
            f"searched, reorder_k {p.reorder_k}"
        )

    def ann(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN at the server's rescoring depth, as ``serving.searcher`` asks it."""
        return search_batched(self.searcher, queries, depth, self.params, CANDIDATES)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.database[rows]

    def search(self, query: np.ndarray, allowed: np.ndarray, policy: FilterPolicy):
        return filtered_search(query, allowed, K, self.ann, self.vectors, policy)


def run_sweep(
    index: Index, masks, queries, truths, rounds, exact_max: float
) -> dict[float, dict[str, Measured]]:
    """Each random filter with each path forced (exact only up to ``exact_max`` of the rows)."""
    sweep: dict[float, dict[str, Measured]] = {}
    for share, allowed in masks.items():
        forced = [("ann", ANN_ONLY)] + ([("exact", EXACT_ONLY)] if share <= exact_max else [])
        sweep[share] = {}
        for label, policy in forced:
            sweep[share][label] = measure(
                f"{share:.1%} {label}", allowed, queries, truths[share], index.search, policy,
                rounds,
            )  # fmt: skip
            logger.info("%s", sweep[share][label])
    return sweep


def standard_filters(database: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The filters every filtered-search figure uses: 50%, 5% and 0.1% of the rows at random,
    and the 5% of rows nearest one database row (correlated with the vectors)."""
    n = len(database)
    centre = database[rng.integers(n)]
    near = np.zeros(n, bool)
    near[np.argpartition(-(database @ centre), n // 20)[: n // 20]] = True
    return {
        "random 50%": rng.random(n) < 0.5,
        "random 5%": rng.random(n) < 0.05,
        "random 0.1%": rng.random(n) < 0.001,
        "correlated 5% (nearest one row)": near,
    }


def random_masks(n: int, shares, rng: np.random.Generator) -> dict[float, np.ndarray]:
    return {share: rng.random(n) < share for share in shares}


def oracle_answers(database, queries, masks) -> dict:
    with threads(os.cpu_count() or 1):
        return {key: exact_filtered(database, queries, allowed) for key, allowed in masks.items()}


def run_oversampling(index: Index, masks, queries, truths, rounds) -> list[tuple]:
    out = []
    for share in OVERSAMPLE_AT:
        for factor in OVERSAMPLE:
            policy = dataclasses.replace(ANN_ONLY, oversample=factor)
            measured = measure(
                f"{share:.0%} x{factor:g}", masks[share], queries, truths[share], index.search,
                policy, rounds,
            )  # fmt: skip
            out.append((factor, measured))
            logger.info("%s", measured)
    return out


def run_blocks(index: Index, allowed, queries, truth, rounds) -> list[tuple[int, Measured]]:
    """The exact path at each block size (``EXACT_BLOCK_ROWS`` set for the run, then reset)."""
    default, out = filtered_search_module.EXACT_BLOCK_ROWS, []
    try:
        for block in BLOCKS:
            filtered_search_module.EXACT_BLOCK_ROWS = block
            measured = measure(
                f"block {block}", allowed, queries, truth, index.search, EXACT_ONLY, rounds
            )
            out.append((block, measured))
    finally:
        filtered_search_module.EXACT_BLOCK_ROWS = default
    return out


def run_contiguous(index: Index, allowed, queries, truth, rounds) -> Measured:
    """The exact path reading the allowed rows' vectors from a contiguous copy, not gathering
    them from the whole matrix: what a per-filter cache of those vectors would give."""
    rows = np.flatnonzero(allowed)
    copy = index.database[rows]

    def vectors(asked: np.ndarray) -> np.ndarray:  # the exact path asks runs of allowed rows
        start = int(np.searchsorted(rows, asked[0]))
        return copy[start : start + len(asked)]

    def run(query: np.ndarray, allowed_rows: np.ndarray, policy: FilterPolicy):
        return filtered_search(query, allowed_rows, K, index.ann, vectors, policy)

    return measure("contiguous", allowed, queries, truth, run, EXACT_ONLY, rounds)


def unfiltered_depth(index: Index, queries: np.ndarray) -> dict[str, tuple[float, float]]:
    """What stable pages cost an unfiltered query: the server rescores ``CANDIDATES`` for
    every page instead of the index's own reorder_k (p50, p99 ms)."""
    depth = {}
    for label, candidates in (("reorder_k", 0), ("server", CANDIDATES)):
        times = []
        for query in queries:
            started = time.perf_counter()
            search_batched(index.searcher, query[None], K + 1, index.params, candidates)
            times.append(time.perf_counter() - started)
        depth[label] = (
            1e3 * float(np.percentile(times, 50)),
            1e3 * float(np.percentile(times, 99)),
        )
    return depth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help="embedding table dir (Parquet)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--small-n", type=int, default=100_000, help="the second index's rows")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500, help="per filter (>= 500)")
    parser.add_argument("--sweep-queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "filters.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(machine_line())
    started_all, load_before = time.perf_counter(), os.getloadavg()

    table = args.table if args.table and os.path.isdir(args.table) else None
    with threads(os.cpu_count() or 1):
        ds = load_images(table, args.n, args.dim, 0, args.queries, args.seed)
    database, queries = ds.database, ds.eval_queries
    n = len(database)
    index, build_s = Index.build(database)
    logger.info("ScaNN over %s built in %.0f s", index.describe(), build_s)

    rng = np.random.default_rng(args.seed + 1)
    filters = standard_filters(database, rng)
    sweep_masks = random_masks(n, SWEEP, rng)
    sweep_queries = queries[: args.sweep_queries]
    truths = oracle_answers(database, queries, filters)
    sweep_truths = oracle_answers(database, sweep_queries, sweep_masks)
    logger.info("exact filtered answers ready")

    policy = FilterPolicy()
    with threads(1):
        sweep = run_sweep(
            index, sweep_masks, sweep_queries, sweep_truths, args.rounds, EXACT_SWEEP_MAX
        )
        timed = [(m["exact"].rows, m["exact"].p50_ms) for m in sweep.values() if "exact" in m]
        per_row_ms = float(np.polyfit(*zip(*timed, strict=True), 1)[0])
        oversampling = run_oversampling(
            index, sweep_masks, sweep_queries, sweep_truths, args.rounds
        )
        block_args = (sweep_masks[0.05], sweep_queries[:50], sweep_truths[0.05][:50], args.rounds)
        blocks = run_blocks(index, *block_args)
        contiguous = run_contiguous(index, *block_args)
        rows = []
        for name, allowed in filters.items():
            rows.append(
                measure(name, allowed, queries, truths[name], index.search, policy, args.rounds)
            )
            logger.info("%s", rows[-1])
        depth = unfiltered_depth(index, queries)
    del index

    small, small_build_s = Index.build(np.ascontiguousarray(database[: args.small_n]))
    logger.info("ScaNN over %s built in %.0f s", small.describe(), small_build_s)
    small_masks = random_masks(args.small_n, SMALL_SWEEP, rng)
    small_truths = oracle_answers(small.database, sweep_queries, small_masks)
    with threads(1):
        small_sweep = run_sweep(
            small, small_masks, sweep_queries, small_truths, args.rounds, max(SMALL_SWEEP)
        )
    del small
    chosen, why = choose_policy(sweep, small_sweep, per_row_ms)
    logger.info("the sweeps support %s: %s", chosen, why)
    masks = mask_costs(n, args.rounds)
    total_min = (time.perf_counter() - started_all) / 60
    load_after = os.getloadavg()

    command = " ".join([".venv/bin/python benchmarks/bench_filters.py", *(argv or sys.argv[1:])])
    params = choose_scann_params(n, database.shape[1], K)
    out = [
        "# Filtered search at scale (generated by benchmarks/bench_filters.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, `{command}`, "
        f"{total_min:.1f} min.",
        f"Machine: {machine_line()}.",
        f"Load average (1/5/15 min) before {_load(load_before)}, after {_load(load_after)}: "
        "other processes shared the cores, so absolute times are high and noisy (each query's "
        f"time is its fastest of {args.rounds} rounds); the paths' ratios come from one run.",
        "",
        ds.description.split(" faiss HNSW")[0],  # bench_ann's note on its own baselines
        "",
        f"ScaNN {params.kind}: {params.num_leaves} leaves, {params.num_leaves_to_search} "
        f"searched, reorder_k {params.reorder_k} (`choose_scann_params`), built in "
        f"{build_s:.0f} s; searched with {CANDIDATES} candidates rescored, as the server asks. "
        f"Each query alone through `index.filtered_search`, BLAS on one thread; recall@{K} "
        "against brute force over the allowed rows.",
        "",
        *policy_section(policy, rows, args.queries),
        *sweep_section(
            f"## Where exact beats ANN ({args.sweep_queries} queries, random filters, each "
            "path forced)",
            sweep,
        ),
        f"Exact above {EXACT_SWEEP_MAX:.0%} of the rows is not timed: its cost is linear in the "
        "allowed rows.",
        "",
        *sweep_section(
            f"## The same on a smaller index ({args.small_n:,} of the rows, its own size "
            f"rules, built in {small_build_s:.0f} s)",
            small_sweep,
        ),
        *choice_lines(chosen, why, policy),
        *oversampling_section(oversampling, args.sweep_queries),
        *blocks_section(blocks, filtered_search_module.EXACT_BLOCK_ROWS, contiguous),
        *mask_section(masks, n, args.rounds),
        f"Unfiltered, what stable pages cost: rescoring the index's reorder_k "
        f"({params.reorder_k}) candidates p50 / p99 {depth['reorder_k'][0]:.2f} / "
        f"{depth['reorder_k'][1]:.2f} ms; the server's {CANDIDATES} "
        f"{depth['server'][0]:.2f} / {depth['server'][1]:.2f} ms.",
    ]
    Path(args.report).write_text("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"wrote {args.report} ({total_min:.1f} min)")
    return 0


def _load(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def policy_section(policy: FilterPolicy, rows: list[Measured], queries: int) -> list[str]:
    def verdict(m: Measured) -> str:
        return "yes" if m.recall >= TARGET_RECALL and m.p99_ms <= TARGET_P99_MS else "**no**"

    return [
        f"## The default policy ({queries} queries per filter)",
        "",
        f"`FilterPolicy()`: exact over at most {policy.exact_max_rows:,} allowed rows or below "
        f"{policy.exact_below_selectivity:.1%} of the rows, else ANN asking k / selectivity x "
        f"{policy.oversample:g} candidates (at most {policy.max_candidates:,}). Targets: "
        f"recall@{K} >= {TARGET_RECALL}, p99 <= {TARGET_P99_MS:g} ms.",
        "",
        "| filter | rows kept | paths (queries) | recall@10 | p50 ms | p99 ms | mean candidates "
        "| meets targets |",
        "|---|---:|---|---:|---:|---:|---:|---|",
        *(
            f"| {m.name} | {m.rows:,} ({m.share:.1%}) | {m.paths} | {m.recall:.4f} | "
            f"{m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.mean_candidates:,.0f} | {verdict(m)} |"
            for m in rows
        ),
        "",
    ]


def sweep_section(title: str, sweep: dict[float, dict[str, Measured]]) -> list[str]:
    out = [
        title,
        "",
        "| rows kept | exact p50 / p99 ms | ANN p50 / p99 ms | ANN recall@10 | ANN mean "
        "candidates | ANN asked twice | ANN fell back to exact |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for share in sorted(sweep):
        ann, exact = sweep[share]["ann"], sweep[share].get("exact")
        shown = "not timed" if exact is None else f"{exact.p50_ms:.2f} / {exact.p99_ms:.2f}"
        out.append(
            f"| {ann.rows:,} ({share:.1%}) | {shown} | {ann.p50_ms:.2f} / {ann.p99_ms:.2f} | "
            f"{ann.recall:.4f} | {ann.mean_candidates:,.0f} | {ann.retried:.0%} | "
            f"{ann.fallbacks} |"
        )
    return [*out, ""]


def choice_lines(chosen: FilterPolicy, why: str, policy: FilterPolicy) -> list[str]:
    same = (chosen.exact_below_selectivity, chosen.exact_max_rows) == (
        policy.exact_below_selectivity,
        policy.exact_max_rows,
    )
    return [
        f"**Cut-over the sweeps support**: exact below {chosen.exact_below_selectivity:.1%} of "
        f"the rows or up to {chosen.exact_max_rows:,} rows; {why}. "
        + (
            "These are `FilterPolicy`'s defaults."
            if same
            else f"`FilterPolicy`'s defaults ({policy.exact_below_selectivity:.1%}, "
            f"{policy.exact_max_rows:,} rows) differ from it."
        ),
        "",
    ]


def oversampling_section(oversampling, queries: int) -> list[str]:
    return [
        f"## Oversampling ({queries} queries, ANN forced)",
        "",
        "| rows kept | oversample | recall@10 | p50 / p99 ms | mean candidates | asked twice | "
        "paths |",
        "|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {m.share:.1%} | x{factor:g} | {m.recall:.4f} | {m.p50_ms:.2f} / {m.p99_ms:.2f} | "
            f"{m.mean_candidates:,.0f} | {m.retried:.0%} | {m.paths} |"
            for factor, m in oversampling
        ),
        "",
    ]


def blocks_section(blocks, default: int, contiguous: Measured) -> list[str]:
    return [
        f"## Exact path block size (50 queries, {blocks[0][1].rows:,} allowed rows)",
        "",
        "| rows gathered per block | p50 / p99 ms |",
        "|---:|---:|",
        *(
            f"| {block:,}{' (default)' if block == default else ''} | "
            f"{m.p50_ms:.2f} / {m.p99_ms:.2f} |"
            for block, m in blocks
        ),
        f"| {default:,}, read from a contiguous copy of the allowed rows' vectors (no gather) | "
        f"{contiguous.p50_ms:.2f} / {contiguous.p99_ms:.2f} |",
        "",
    ]


def mask_section(masks, n: int, rounds: int) -> list[str]:
    return [
        f"## Evaluating a filter over {n:,} rows of metadata",
        "",
        "Synthetic columns shaped like a table's (site string, width int, taken timestamp, "
        "tags `list<struct<label, score>>` with 0-4 tags a row); parse + `Filter.mask`, fastest "
        f"of {rounds}. The server computes it once per filter and caches the mask.",
        "",
        "| filter | ms | rows kept |",
        "|---|---:|---:|",
        *(f"| `{text}` | {ms:.1f} | {kept:.1%} |" for text, ms, kept in masks),
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
