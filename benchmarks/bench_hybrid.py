"""Hybrid (BM25 + joint model) text->image search on Flickr8k: weight learnt on train, dev reported.

Run: ``.venv/bin/python benchmarks/bench_hybrid.py [--models DIR] [--work DIR] [--scale 1000000]
[--report benchmarks/results/hybrid.md]``

Splits: Flickr8k's train split is cut in two (seeded): ``fit`` (5,091 images) trains the joint
model (``imgsearch demo``'s recipe: dual-tfidf on the frozen MobileNetV2) and
the captioner; ``tune`` (the other 1,000 train images) learns the fusion weight; dev is only
reported. Models trained on all of train would score their own training images better than
new ones (both the joint model and the captioner), so a weight tuned there would be tuned to
parts that look better than they are. ``--models DIR`` reuses models already trained so (the
script trains them into it when it holds none).

For tune and dev, the split's photos are indexed by the real index job (joint shard, generated
captions: ``imgsearch eval``'s indexing) and loaded as a served ``IndexBundle``; every row's text
is its generated caption alone; the split's human captions (5 per photo) are the queries and
never row text. Per query: vector alone (the joint model over every image), BM25 alone (over
every image), and ``serving.hybrid_search`` (candidates: each part's top 200, rescored on both)
at every weight of a 0..1 grid. Ranks are pessimistic (ties count as ranked above, as
``imgsearch eval``); a query whose photo is not among the hybrid candidates counts as rank
N + 1. The weight maximising mean(R@1, R@5, R@10) on tune is the learnt one; other normalisations
of the two parts are compared on tune too. Then BM25 at ``--scale`` synthetic rows grown from
the fit split's human captions: build time, memory, and 5-word query latency. Figures are
printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import logging
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_line
from imgsearch import settings
from ranking.bm25 import BM25Index
from ranking.fusion import own_ranks, recall_objective
from ranking.metrics import retrieval_metrics
from serving import hybrid_search as hybrid

logger = logging.getLogger("bench_hybrid")

GRID = tuple(round(0.05 * i, 2) for i in range(21))
HELD_OUT = 1000  # train images kept out of the models' training, to tune the weight on
SCALE_QUERIES = 200
# The captioner's training budget: the CLI's default 600 s gives a bare epoch on a busy 2-core
# machine; 2,400 s gives a few (its log says how many).
CAPTIONER_SECONDS = 2400
KS = ("R@1", "R@5", "R@10", "MRR")


def prepare_dataset(source: Path, root: Path, held_out: int = HELD_OUT, seed: int = 0) -> Path:
    """A dataset folder with splits fit (train minus ``held_out``), tune (those) and dev.

    Images and captions are links to ``source``; only the split files are new.
    """
    (root / "splits").mkdir(parents=True, exist_ok=True)
    for name in ("images", "captions.tsv"):
        if not (root / name).exists():
            (root / name).symlink_to(source / name)
    train = [n for n in (source / "splits" / "train.txt").read_text().split() if n]
    tune = set(np.random.default_rng(seed).choice(len(train), held_out, replace=False).tolist())
    splits = {
        "fit": [n for i, n in enumerate(train) if i not in tune],
        "tune": [n for i, n in enumerate(train) if i in tune],
        "dev": [n for n in (source / "splits" / "dev.txt").read_text().split() if n],
    }
    for split, names in splits.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def ensure_models(dataset: Path, models: Path, cache: Path) -> tuple[str, str]:
    """The joint model and captioner in ``models``, trained on the fit split when missing."""
    from evaluation.eval_job import captioner_names
    from evaluation.methods import joint_model_names
    from training import train_captioner_job, train_joint_job

    fit = ["--dataset", str(dataset), "--split", "fit", "--out", str(models)]
    if not joint_model_names(models):
        # The demo's recipe (imgsearch.demo), on the captioner's encoder: the index job
        # captions with the encoder it indexes with.
        recipe = ["--text-encoder", "tfidf", "--kind", "dual", "--encoder", "mobilenet_v2",
                  "--finetune-blocks", "0", "--ensemble", "1", "--no-mixed"]  # fmt: skip
        train_joint_job.main([*fit, *recipe])
    if not captioner_names(str(models)):
        budget = ["--max-seconds", str(CAPTIONER_SECONDS)]
        train_captioner_job.main([*fit, "--eval-split", "", "--cache", str(cache), *budget])
    return joint_model_names(models)[0], captioner_names(str(models))[0]


@dataclasses.dataclass
class SplitRun:
    """One split's queries scored every way."""

    split: str
    images: int
    queries: int
    vector_ranks: np.ndarray
    bm25_ranks: np.ndarray
    candidates: list[hybrid.Candidates]  # per query, the served candidate depth
    exact: list[hybrid.Candidates]  # per query, every image a candidate
    own: np.ndarray  # per query, the searcher row of its photo
    latency_ms: list[float]
    captioner: str
    examples: list[tuple[str, str]]


def score_split(dataset_root: Path, split: str, models: Path, joint: str, work: Path) -> SplitRun:
    """Index the split (joint shard + generated captions), load it as served, score its queries."""
    from evaluation import eval_job
    from evaluation.eval_types import EvalConfig
    from index.schema import CAPTION_MODEL
    from index.table import read_table_columns, table_has_columns
    from serving.state import QueryModels, load_bundle
    from training.captions import load_captioned_dataset

    dataset = load_captioned_dataset(dataset_root, split)
    config = EvalConfig(dataset=str(dataset_root), out=str(work / f"eval-{split}"), split=split,
                        models_dir=str(models), families=("caption",))  # fmt: skip
    _, context = eval_job.index_for_methods(config, dataset, [joint])
    features = context.features
    if not table_has_columns(features.index_dir, ["caption", CAPTION_MODEL]):
        raise SystemExit(f"{features.index_dir} has no generated captions: no captioner in "
                         f"{models} that takes the index's image encoder")  # fmt: skip
    bundle = load_bundle(features.index_dir, QueryModels.load(str(models), joint))
    keywords = hybrid.HybridIndex.from_details(bundle.details, bundle.searcher_rows, ["caption"])
    ids = features.table.image_ids
    own = np.array([bundle.images.row_of(ids[r])
                    for r in features.image_rows[dataset.caption_image_index()]])  # fmt: skip
    queries = dataset.caption_texts
    n = len(bundle.images)
    logger.info("%s: %d images, %d queries", split, n, len(queries))
    vector = np.concatenate(
        [bundle.text.score_all(queries[i : i + 500]) for i in range(0, len(queries), 500)]
    )
    tokens = hybrid.tokenize(queries)
    bm25 = np.stack([keywords.keywords.scores(words) for words in tokens])
    candidates = [
        hybrid.candidate_scores(bundle, keywords, q, hybrid.DEFAULT_CANDIDATES) for q in queries
    ]
    exact = [hybrid.candidate_scores(bundle, keywords, q, n) for q in queries]
    latency = []
    for query in queries[:: max(1, len(queries) // 200)]:
        started = time.perf_counter()
        hybrid.hybrid_search(bundle, query, 10, keywords=keywords)
        latency.append((time.perf_counter() - started) * 1000)
    captions = read_table_columns(features.index_dir, ["caption", CAPTION_MODEL], list(ids[:3]))
    examples = list(zip(ids[:3], captions["caption"], strict=True))
    return SplitRun(
        split=split,
        images=n,
        queries=len(queries),
        vector_ranks=own_ranks(vector, own),
        bm25_ranks=own_ranks(bm25, own),
        candidates=candidates,
        exact=exact,
        own=own,
        latency_ms=latency,
        captioner=captions[CAPTION_MODEL][0],
        examples=examples,
    )


# The served normalisation and the alternatives compared on tune (raw parts -> 0..1-ish parts).
def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 1e-12 else np.ones_like(x)


def _by_max(x: np.ndarray) -> np.ndarray:
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def _z(x: np.ndarray) -> np.ndarray:
    std = float(x.std()) if x.size else 0.0
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


NORMALISATIONS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "served: cosine min-max, BM25 / max": hybrid.normalized_parts,
    "cosine as is, BM25 / max": lambda c, b: (c, _by_max(b)),
    "both min-max": lambda c, b: (_minmax(c), _minmax(b)),
    "both z-scored": lambda c, b: (_z(c), _z(b)),
}


def hybrid_ranks(
    found: Sequence[hybrid.Candidates], own: np.ndarray, weights: Sequence[float], total: int,
    normalise=hybrid.normalized_parts,
) -> dict[float, np.ndarray]:  # fmt: skip
    """Per weight, the pessimistic rank of each query's photo among its candidates
    (``total`` + 1 when it is not one)."""
    ranks = {w: np.full(len(found), total + 1, dtype=np.int64) for w in weights}
    for q, (cand, mine) in enumerate(zip(found, own, strict=True)):
        at = np.flatnonzero(cand.rows == mine)
        if not at.size:
            continue
        vector, keyword = normalise(cand.cosine, cand.bm25)
        for w in weights:
            fused = hybrid.fuse(vector, keyword, w)
            ranks[w][q] = int(np.count_nonzero(fused >= fused[at[0]]))
    return ranks


def best_weight(ranks: dict[float, np.ndarray]) -> tuple[float, float]:
    """The weight with the highest mean(R@1, R@5, R@10) (the lowest such weight on ties)."""
    scored = [(recall_objective(r), -w, w) for w, r in ranks.items()]
    objective, _, weight = max(scored)
    return weight, objective


def synthetic_documents(real: Sequence[Sequence[str]], n: int, seed: int = 0) -> list[list[str]]:
    """``n`` caption-like word lists grown from ``real`` ones: each a random real caption with
    a third of its words swapped for words drawn by corpus frequency, two tag-like words, and
    half the time a rare title word from a long tail (so the vocabulary grows with ``n``)."""
    rng = np.random.default_rng(seed)
    flat = np.array([w for words in real for w in words], dtype=object)
    picks = rng.integers(len(real), size=n)
    swaps = rng.random(sum(len(real[i]) for i in picks)) < 1 / 3
    swapped = iter(flat[rng.integers(len(flat), size=int(swaps.sum()))].tolist())
    tags = flat[rng.integers(len(flat), size=2 * n)].tolist()
    rare = rng.zipf(1.3, size=n)
    swap_at = iter(swaps.tolist())
    documents = []
    for i, pick in enumerate(picks.tolist()):
        words = [next(swapped) if next(swap_at) else w for w in real[pick]]
        words += tags[2 * i : 2 * i + 2]
        if rare[i] > 1 and i % 2:
            words.append(f"title{rare[i] % 200_000}")
        documents.append(words)
    return documents


def scale_figures(real: Sequence[Sequence[str]], queries: Sequence[Sequence[str]], n: int) -> dict:
    documents = synthetic_documents(real, n)
    tokens = sum(len(d) for d in documents)
    texts = [" ".join(d) for d in documents[:100_000]]
    hybrid.tokenize(texts[:10])  # the tokenizer's TensorFlow trace, not timed
    started, cpu = time.perf_counter(), time.process_time()
    hybrid.tokenize(texts)
    tokenize_s = (time.perf_counter() - started) * n / len(texts)
    tokenize_cpu = (time.process_time() - cpu) * n / len(texts)
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    index = BM25Index.build(documents)
    build_s, build_cpu = time.perf_counter() - started, time.process_time() - cpu
    del index
    gc.collect()
    tracemalloc.start()  # a second build: tracing slows Python allocations, so not timed
    index = BM25Index.build(documents)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    figures = {
        "docs": n,
        "tokens": tokens,
        "terms": len(index.vocabulary),
        "nnz": index.weights.nnz,
        "tokenize_s": tokenize_s,
        "tokenize_cpu_s": tokenize_cpu,
        "build_s": build_s,
        "build_cpu_s": build_cpu,
        "index_mib": index.nbytes / 2**20,
        "build_peak_mib": peak / 2**20,
    }
    sizes = np.diff(index.weights.indptr)
    figures["entries_per_query"] = float(np.median(
        [sum(int(sizes[index.vocabulary[w]]) for w in set(q) if w in index.vocabulary)
         for q in queries]))  # fmt: skip
    calls = {
        "scores": index.scores,
        "top_200": lambda q: index.top_k(q, hybrid.DEFAULT_CANDIDATES),
    }
    for name, call in calls.items():
        for q in queries[:5]:
            call(q)
        wall, cpu_ms = [], []
        for q in queries:
            started, cpu = time.perf_counter(), time.thread_time()
            call(q)
            wall.append((time.perf_counter() - started) * 1000)
            cpu_ms.append((time.thread_time() - cpu) * 1000)
        figures[name] = {
            "p50": float(np.percentile(wall, 50)),
            "p95": float(np.percentile(wall, 95)),
            "cpu_p50": float(np.percentile(cpu_ms, 50)),
        }
    return figures


def _metrics_row(label: str, ranks: np.ndarray, extra: str = "") -> str:
    m = retrieval_metrics(ranks)
    return f"| {label} | " + " | ".join(f"{m[k]:.4f}" for k in KS) + f" | {extra} |"


def main() -> None:
    from threadpoolctl import threadpool_limits

    from training.captions import load_captioned_dataset

    logging.basicConfig(level=logging.INFO)
    threadpool_limits(1, user_api="blas")  # as `imgsearch serve` runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    assets = settings.assets_dir()
    parser.add_argument(
        "--source", default=str(assets / "datasets" / "flickr8k") if assets else None
    )
    parser.add_argument("--work", default="/tmp/hybrid-bench")
    parser.add_argument("--models", default=None, help="default: WORK/models")
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--report", default="benchmarks/results/hybrid.md")
    args = parser.parse_args()
    if not args.source:
        raise SystemExit("no Flickr8k: pass --source (" + settings.describe_assets_layout() + ")")
    machine = machine_line()
    print(machine)
    work = Path(args.work)
    models = Path(args.models or work / "models")
    root = prepare_dataset(Path(args.source), work / "flickr8k-tune")
    joint, _ = ensure_models(root, models, work / "spatial-cache")
    runs = {split: score_split(root, split, models, joint, work) for split in ("tune", "dev")}

    tune, dev = runs["tune"], runs["dev"]
    sweep = {s: hybrid_ranks(r.candidates, r.own, GRID, r.images) for s, r in runs.items()}
    learnt, objective = best_weight(sweep["tune"])
    default = hybrid.DEFAULT_HYBRID_WEIGHT
    default_dev = hybrid_ranks(dev.candidates, dev.own, [default], dev.images)[default]
    exact_dev = hybrid_ranks(dev.exact, dev.own, [default], dev.images)[default]
    in_candidates = np.mean([np.isin(o, c.rows) for o, c in zip(dev.own, dev.candidates,
                                                                 strict=True)])  # fmt: skip
    normalisations = []
    for label, normalise in NORMALISATIONS.items():
        ranks = hybrid_ranks(tune.candidates, tune.own, GRID, tune.images, normalise)
        w, obj = best_weight(ranks)
        dev_ranks = hybrid_ranks(dev.candidates, dev.own, [w], dev.images, normalise)[w]
        normalisations.append((label, w, obj, recall_objective(dev_ranks)))
    fit = load_captioned_dataset(root, "fit")
    real = hybrid.tokenize(fit.caption_texts)
    dev_captions = load_captioned_dataset(root, "dev").caption_texts
    five = [w[:5] for w in hybrid.tokenize(dev_captions) if len(w) >= 5][:SCALE_QUERIES]
    scale = scale_figures(real, five, args.scale)
    load = os.getloadavg()

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lines = [
        "# Hybrid search (BM25 over generated captions + joint model): Flickr8k",
        "",
        f"`.venv/bin/python benchmarks/bench_hybrid.py --models {models}` — {now}, {machine}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} while it ran (a shared "
        "machine: wall times are inflated by other jobs, CPU times less so).",
        "",
        f"Models trained on Flickr8k train minus {HELD_OUT} held-out images (split `fit`, "
        f"{len(fit.images)} images): joint `{joint}` (dual, TF-IDF text, frozen "
        f"MobileNetV2), captioner `{dev.captioner}`. Row text = the generated caption only; "
        "queries = the 5 human captions of every photo (never row text). Weight learnt on the "
        f"held-out train images (`tune`, {tune.images} photos, {tune.queries} queries); dev "
        f"({dev.images} photos, {dev.queries} queries) is reported only. Hybrid candidates: "
        f"each part's top {hybrid.DEFAULT_CANDIDATES}; a photo outside them counts as rank "
        "N + 1. Ranks pessimistic on ties.",
        "",
        "Examples of row text (dev): " + "; ".join(f"`{c}`" for _, c in dev.examples),
        "",
        "## Dev: text -> image",
        "",
        "| method | R@1 | R@5 | R@10 | MRR | note |",
        "|---|---|---|---|---|---|",
        _metrics_row("vector alone (joint model, every image)", dev.vector_ranks),
        _metrics_row("BM25 alone (generated captions, every image)", dev.bm25_ranks),
        _metrics_row(
            f"hybrid, default weight {default}",
            default_dev,
            f"photo among the candidates for {in_candidates:.1%} of queries",
        ),
        _metrics_row(
            f"hybrid, weight {default}, every image a candidate",
            exact_dev,
            "the cost of the top-C approximation",
        ),
        _metrics_row(f"hybrid, learnt weight {learnt} (if it differs)", sweep["dev"][learnt]),
        "",
        f"Learnt weight on tune: **{learnt}** (mean R@1/5/10 {objective:.4f}); "
        f"`DEFAULT_HYBRID_WEIGHT` = {default}"
        + (" (the same)." if abs(learnt - default) < 1e-9 else " — UPDATE the constant."),
        "",
        "## Weight sweep (keyword share w; score = (1 - w) * vector + w * keyword)",
        "",
        "| w | tune R@1 | tune R@5 | tune R@10 | tune MRR "
        "| dev R@1 | dev R@5 | dev R@10 | dev MRR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in GRID:
        t, d = retrieval_metrics(sweep["tune"][w]), retrieval_metrics(sweep["dev"][w])
        lines.append(f"| {w} | " + " | ".join(f"{t[k]:.4f}" for k in KS) + " | "
                     + " | ".join(f"{d[k]:.4f}" for k in KS) + " |")  # fmt: skip
    lines += [
        "",
        "## Normalisation of the two parts (weight learnt on tune for each)",
        "",
        "| normalisation | learnt w | tune mean R@1/5/10 | dev mean R@1/5/10 |",
        "|---|---|---|---|",
        *[f"| {label} | {w} | {t:.4f} | {d:.4f} |" for label, w, t, d in normalisations],
        "",
        f"Tune figures for vector alone / BM25 alone: mean R@1/5/10 "
        f"{recall_objective(tune.vector_ranks):.4f} / {recall_objective(tune.bm25_ranks):.4f}.",
        "",
        f"Served `hybrid_search` latency on dev ({dev.images} images, top 10, BLAS on one "
        "thread as `imgsearch serve` runs it; two TensorFlow calls a query: the text encoder "
        f"and the tokenizer): p50 "
        f"{np.percentile(dev.latency_ms, 50):.1f} ms, p95 "
        f"{np.percentile(dev.latency_ms, 95):.1f} ms over {len(dev.latency_ms)} queries.",
        "",
        f"## BM25 at {scale['docs']:,} rows",
        "",
        f"Synthetic rows grown from the fit split's human captions (`synthetic_documents`): "
        f"{scale['tokens']:,} tokens, {scale['terms']:,} distinct terms, {scale['nnz']:,} "
        "stored (row, term) weights.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| build (token lists -> index), wall / CPU | {scale['build_s']:.1f} s / "
        f"{scale['build_cpu_s']:.1f} s |",
        f"| tokenising the row texts (TensorFlow tokenizer, extrapolated from 100k), wall / CPU "
        f"| {scale['tokenize_s']:.1f} s / {scale['tokenize_cpu_s']:.1f} s |",
        f"| index memory (weights, row indices, pointers, idf) | {scale['index_mib']:.1f} MiB |",
        f"| peak traced memory while building (lists excluded) | "
        f"{scale['build_peak_mib']:.0f} MiB |",
        f"| 5-word query: stored weights touched (median) | {scale['entries_per_query']:,.0f} |",
        f"| `scores` (all rows), p50 / p95 wall, p50 CPU | {scale['scores']['p50']:.1f} / "
        f"{scale['scores']['p95']:.1f} / {scale['scores']['cpu_p50']:.1f} ms |",
        f"| `top_k(200)`, p50 / p95 wall, p50 CPU | {scale['top_200']['p50']:.1f} / "
        f"{scale['top_200']['p95']:.1f} / {scale['top_200']['cpu_p50']:.1f} ms |",
        "",
        f"Queries: the first 5 content words of {len(five)} dev human captions.",
        "",
    ]
    report = "\n".join(lines)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report)
    print(report)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
