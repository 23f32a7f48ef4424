"""Filtered search at 1M vectors: recall@10 against exact filtered search, and latency.

Run: ``.venv/bin/python benchmarks/bench_filters.py [--table OUT/table] [--n 1000000]``

The database is ``bench_ann``'s grown image embeddings (real ones from ``--table`` grown to
``--n`` and PCA-projected to ``--dim``, or synthetic stand-ins, as it says), indexed by ScaNN
with the index job's size rules (``index.scann_index.choose_scann_params``) and the server's
candidate depth. Filters keep 50%, 5% and 0.1% of the rows at random, and 5% of the rows
nearest one random direction (a filter correlated with the vectors, the hard case for
post-filtering). Each query runs alone, BLAS on one thread as ``imgsearch serve`` runs it,
through ``index.filtered_search`` with its default policy; recall@10 is against the exact
filtered answer. A sweep then times both paths (exact over the allowed rows, ANN with
oversampling) forced at several selectivities, which is what ``FilterPolicy``'s cut-over
rests on. Figures are printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ann import load_images

from benchmarks.machine import machine_line
from index.filtered_search import FilterPolicy, filtered_search
from index.scann_index import build_searcher, choose_scann_params, search_batched

K = 10
CANDIDATES = 1101  # ServeConfig().page_depth: the server rescores this many for every query


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def run_filter(name, allowed, queries, ann, vectors, policy):
    exact_policy = FilterPolicy(exact_max_rows=len(allowed), exact_below_selectivity=1.1)
    times, recalls, paths = [], [], set()
    for query in queries:
        started = time.perf_counter()
        found = filtered_search(query[None], allowed, K, ann, vectors, policy)
        times.append(time.perf_counter() - started)
        paths.add(found.path)
        truth = filtered_search(query[None], allowed, K, ann, vectors, exact_policy)
        want = set(truth.indices[0][truth.indices[0] >= 0].tolist())
        got = set(found.indices[0][found.indices[0] >= 0].tolist())
        recalls.append(len(want & got) / max(1, len(want)))
    return {
        "filter": name,
        "kept": f"{allowed.mean():.3%}",
        "rows": int(allowed.sum()),
        "path": "/".join(sorted(paths)),
        "recall": float(np.mean(recalls)),
        "p50": _percentile(times, 50),
        "p99": _percentile(times, 99),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", help="an index's table folder (real embeddings to grow)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--report", default="benchmarks/results/filters.md")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    print(machine_line())
    ds = load_images(args.table, args.n, args.dim, 0, args.queries, seed=7)
    database, queries = ds.database, ds.eval_queries
    params = choose_scann_params(len(database), database.shape[1], K)
    started = time.perf_counter()
    searcher = build_searcher(database, params)
    build_s = time.perf_counter() - started
    print(f"{ds.name}: ScaNN {params.kind} built in {build_s:.0f} s")

    def ann(q, n):
        return search_batched(searcher, q, n, params, CANDIDATES)

    def vectors(rows):
        return database[rows]

    rng = np.random.default_rng(11)
    n = len(database)
    direction = rng.standard_normal(database.shape[1]).astype(np.float32)
    near = np.zeros(n, bool)
    near[np.argsort(-(database @ direction))[: n // 20]] = True
    filters = [
        ("random 50%", rng.random(n) < 0.5),
        ("random 5%", rng.random(n) < 0.05),
        ("random 0.1%", rng.random(n) < 0.001),
        ("correlated 5% (nearest one direction)", near),
    ]
    policy = FilterPolicy()
    rows, sweep = [], []
    with threadpool_limits(1, user_api="blas"):
        for name, allowed in filters:
            row = run_filter(name, allowed, queries, ann, vectors, policy)
            rows.append(row)
            print(row)
        ann_only = FilterPolicy(exact_max_rows=0, exact_below_selectivity=0.0)
        exact_only = FilterPolicy(exact_max_rows=n, exact_below_selectivity=1.1)
        for keep in (0.005, 0.01, 0.02, 0.05, 0.1):
            allowed = rng.random(n) < keep
            timing = {}
            for label, forced in (("exact", exact_only), ("ann", ann_only)):
                times = []
                for query in queries[:200]:
                    started = time.perf_counter()
                    filtered_search(query[None], allowed, K, ann, vectors, forced)
                    times.append(time.perf_counter() - started)
                timing[label] = (_percentile(times, 50), _percentile(times, 99))
            sweep.append((keep, timing))
            print(keep, timing)
        # What stable pagination costs an unfiltered query: the server rescores CANDIDATES
        # for every page instead of the index's own reorder_k.
        depth = {}
        for label, candidates in (("reorder_k", 0), ("server", CANDIDATES)):
            times = []
            for query in queries:
                started = time.perf_counter()
                search_batched(searcher, query[None], K + 1, params, candidates)
                times.append(time.perf_counter() - started)
            depth[label] = (_percentile(times, 50), _percentile(times, 99))
        print(depth)

    command = " ".join([".venv/bin/python", "benchmarks/bench_filters.py", *(argv or sys.argv[1:])])
    lines = [
        "# Filtered search at scale",
        "",
        f"{dt.date.today().isoformat()} · {machine_line()} · `{command}`",
        "",
        f"{ds.description}",
        "",
        f"ScaNN {params.kind} ({params.num_leaves} leaves, {params.num_leaves_to_search} "
        f"searched, {CANDIDATES} candidates rescored, as the server asks), built in "
        f"{build_s:.0f} s. {len(queries)} queries, one at a time, BLAS on one thread; "
        f"recall@{K} against exact filtered search; the default `FilterPolicy` "
        f"(exact over at most {policy.exact_max_rows:,} rows or below "
        f"{policy.exact_below_selectivity:.0%} of them, else ANN with oversampling "
        f"x{policy.oversample}).",
        "",
        "| filter | rows kept | path | recall@10 | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['filter']} | {r['rows']:,} ({r['kept']}) | {r['path']} | {r['recall']:.3f} | "
            f"{r['p50']:.2f} | {r['p99']:.2f} |"
            for r in rows
        ),
        "",
        "Where the cut-over lies: both paths forced, 200 queries (p50 / p99 ms):",
        "",
        "| rows kept | exact over the allowed rows | ANN with oversampling |",
        "|---|---|---|",
        *(
            f"| {keep:.1%} | {t['exact'][0]:.2f} / {t['exact'][1]:.2f} | "
            f"{t['ann'][0]:.2f} / {t['ann'][1]:.2f} |"
            for keep, t in sweep
        ),
        "",
        f"Unfiltered, what stable pages cost: rescoring the index's reorder_k "
        f"({params.reorder_k}) candidates p50 / p99 {depth['reorder_k'][0]:.2f} / "
        f"{depth['reorder_k'][1]:.2f} ms; the server's {CANDIDATES} "
        f"{depth['server'][0]:.2f} / {depth['server'][1]:.2f} ms.",
        "",
    ]
    Path(args.report).write_text("\n".join(lines))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
