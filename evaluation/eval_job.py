"""``imgsearch eval``: offline text<->image retrieval evaluation on a captioned dataset.

    imgsearch eval --dataset DIR --out OUT [--models MODELS_DIR] [--split dev] [Beam options]
    imgsearch eval score --submission FILE --dataset DIR [--split dev]
    imgsearch eval clicks --events DIR [--json]   (evaluation.clicks: the click log's figures)

Steps: validate the dataset (``training.captions``: every wrong line is listed, exit 2);
index its images with the real index job into ``OUT/index`` (the image encoder the models were
trained on, plus a joint shard for the first dual model); prepare every text->image method
(``evaluation.methods``: one per joint model for now); use every caption as a query. Writes
``OUT/metrics.json`` (schema in ``evaluation/README.md``, ``SCHEMA_VERSION``),
``OUT/submission.csv`` (``evaluation.submission``) and ``OUT/report.html`` (``evaluation.report``).

Without a text->image method (no ``--models``, or no joint model in it) there is nothing to
evaluate: the job fails with a hint to ``imgsearch train joint`` rather than writing empty
figures that a quality gate could read as a pass.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import evaluation.text_methods  # noqa: F401  (registers the tags, caption and fused families)
from encoders.base import EncoderSpec, l2_normalize
from encoders.query_bank import RERANK_DEPTH
from evaluation.captioning import captioning_section
from evaluation.eval_types import EvalConfig, MethodResult
from evaluation.methods import (
    Method,
    MethodContext,
    family_names,
    joint_model_names,
    prepare_methods,
)
from evaluation.submission import DEFAULT_TOP_K, score_submission, write_submission
from index.scann_index import exact_top_k
from models.artifacts import code_version
from models.captioner import resolve_captioner
from models.image_encoder import fitting_tag_head
from models.joint import flagged_image_encoder
from ranking.metrics import (
    DEFAULT_KS,
    image_to_text_ranks,
    ranks_from_scores,
    retrieval_metrics,
    text_to_image_ranks,
)
from ranking.recall import recall_per_query
from runtime.arguments import command_parser, show_defaults
from runtime.entry import run_module_main
from training.captions import DatasetError, load_captioned_dataset
from training.progress import progress

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ANN_K = 10
LATENCY_WARMUP = 3


class NoMethodError(ValueError):
    """Nothing to evaluate: no text->image method is available."""


def parse_args(argv: Sequence[str]) -> EvalConfig:
    parser = command_parser(
        "imgsearch eval",
        "Offline text<->image retrieval evaluation on a captioned dataset: indexes its images, "
        "queries every caption with every method, writes metrics.json, submission.csv and "
        "report.html. `imgsearch eval score` scores a submission file instead.",
        [
            "imgsearch eval --dataset ../shared/assets/datasets/flickr8k --split dev --models "
            "models --out eval-out",
            "imgsearch eval score --submission eval-out/submission.csv --dataset DIR --split dev",
        ],
    )
    parser.add_argument("--dataset", required=True, help="captioned folder, Flickr8k or COCO")
    parser.add_argument("--out", required=True, help="output folder (metrics, report, index)")
    parser.add_argument("--split", default=None, help="e.g. dev (Flickr8k) or val (COCO)")
    parser.add_argument("--models", default=None, help="models directory (imgsearch train)")
    parser.add_argument("--family", action="append", default=[], help="method families")
    parser.add_argument("--encoder", default=None, help="image encoder (default: the models')")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="submission list size")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--gallery-queries", type=int, default=6)
    parser.add_argument("--gallery-failures", type=int, default=4)
    args, beam_args = show_defaults(parser).parse_known_args(argv)
    # The rest goes to the index job: its flags and Beam's, nothing else (a typo is refused).
    from pipelines.options import check_known_args, option_strings

    check_known_args(beam_args, also_known=option_strings(parser))
    return EvalConfig(
        dataset=args.dataset,
        out=args.out,
        split=args.split,
        models_dir=args.models,
        families=tuple(args.family),
        encoder=args.encoder,
        weights=args.weights,
        submission_top_k=args.top_k,
        latency_queries=args.latency_queries,
        gallery_queries=args.gallery_queries,
        gallery_failures=args.gallery_failures,
        beam_args=tuple(beam_args),
        command=shlex.join(["imgsearch", "eval", *argv]),
    )


def extra_index_args(config: EvalConfig, spec: EncoderSpec) -> list[str]:
    """Index flags for the tag and caption families: tags from the assets' ImageNet head when
    the encoder can take it, captions from the models directory's captioner if it has one."""
    wanted = set(config.families or family_names())
    args: list[str] = []
    if wanted & {"tags", "fused"} and "--tag_head" not in config.beam_args:
        try:
            args += ["--tag_head", str(fitting_tag_head("auto", spec))]
        except (FileNotFoundError, ValueError) as error:
            logger.info("no tags in the evaluation index: %s", error)
    captioners = captioner_names(config.models_dir)
    if wanted & {"caption", "fused"} and captioners and "--captioner" not in config.beam_args:
        try:
            resolve_captioner(config.models_dir, captioners[0], spec)
            args += ["--captioner", captioners[0]]
        except ValueError as error:  # trained on another encoder's maps (e.g. before fine-tuning)
            logger.info("no captions in the evaluation index: %s", error)
    return args


def captioner_names(models_dir: str | None) -> list[str]:
    """Captioners with a published version in ``models_dir`` (sorted)."""
    from encoders.captioner import KIND_CAPTIONER
    from models.artifacts import list_models

    if models_dir is None:
        return []
    return sorted(
        {m.name for m in list_models(models_dir) if m.kind == KIND_CAPTIONER and m.latest}
    )


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "queries": int(ms.size),
    }


def _recall_of(rows: np.ndarray, own: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """R@k of result lists ``rows`` (Q, K) against one correct row per query."""
    hit_at = np.where(rows == own[:, None], np.arange(1, rows.shape[1] + 1), np.inf).min(axis=1)
    return {f"R@{k}": float(np.mean(hit_at <= k)) for k in ks if k <= rows.shape[1]}


def _overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the approximate top-k found (-1 pads never match):
    the autotuner's and ANN benchmark's recall, so every recall@k in the project agrees."""
    return float(recall_per_query(approx, exact).mean())


def ann_figures(method: Method, own_rows: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """ScaNN vs brute force over the same vectors, with the caption queries of ``method``.

    A corrected method (a query bank's bias per row) is compared as the server runs it: the
    index's top ``RERANK_DEPTH`` re-sorted by score minus bias, against that exact ranking.
    """
    k = max(ks)
    if method.index_bias is None:
        exact, _ = exact_top_k(method.index_vectors, l2_normalize(method.caption_vectors), k)
        approx = method.ann_search(method.caption_vectors, k)
    else:
        scores = l2_normalize(method.caption_vectors) @ method.index_vectors.T
        scores -= method.index_bias[None]
        exact = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        candidates = method.ann_search(method.caption_vectors, max(k, RERANK_DEPTH))
        found = np.where(candidates >= 0, candidates, 0)
        rescored = np.where(candidates >= 0, np.take_along_axis(scores, found, 1), -np.inf)
        order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
        approx = np.where(
            np.isfinite(np.take_along_axis(rescored, order, 1)),
            np.take_along_axis(candidates, order, 1),
            -1,
        )
    exact_r, approx_r = _recall_of(exact, own_rows, ks), _recall_of(approx, own_rows, ks)
    return {
        "index": method.ann_name,
        "k": k,
        f"recall@{k}": _overlap(approx, exact),
        "exact": exact_r,
        "approximate": approx_r,
        "delta": {key: approx_r[key] - exact_r[key] for key in exact_r},
    }


def image_ann_figures(images, table, k: int = ANN_K) -> dict[str, Any]:
    """Image->image: the image ScaNN index vs brute force, every indexed image as a query."""
    queries = l2_normalize(table.embeddings)
    exact, _ = exact_top_k(queries, queries, k)
    row_of = {image_id: row for row, image_id in enumerate(table.image_ids)}
    approx = np.full_like(exact, -1)
    for q, hits in enumerate(images.search_vectors(queries, k)):
        approx[q, : len(hits)] = [row_of[h.image_id] for h in hits]
    return {"index": "scann image index", "k": k, f"recall@{k}": _overlap(approx, exact)}


def latency_figures(method: Method, queries: list[str], k: int = ANN_K) -> dict[str, Any]:
    """Single-query serving time (text encoding + search), warm, in milliseconds."""

    def one(text: str) -> None:
        if method.scored_by_hook or (method.corrected and method.ann_search is None):
            scores = method.query_scores([text])[0]
            np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            return
        vector = method.embed_query(text)[np.newaxis]
        if method.ann_search is not None:
            # A corrected method's server asks the index for RERANK_DEPTH candidates and
            # re-sorts them by corrected score (a sort of 100 numbers: not timed apart).
            method.ann_search(vector, max(k, RERANK_DEPTH) if method.corrected else k)
        else:
            exact_top_k(method.image_vectors, l2_normalize(vector), k)

    for text in queries[:LATENCY_WARMUP]:
        one(text)
    seconds = []
    for text in queries:
        start = time.perf_counter()
        one(text)
        seconds.append(time.perf_counter() - start)
    return {**_percentiles(seconds), "search": method.ann_name or "exact (BLAS)", "k": k}


def _evaluate_method(method: Method, caption_image: np.ndarray, top_k: int) -> MethodResult:
    if method.scored_by_hook or method.corrected:
        scores = method.scores()
        t2i = ranks_from_scores(scores, [[image] for image in caption_image])
        captions_of = [[] for _ in range(scores.shape[1])]
        for caption, image in enumerate(caption_image):
            captions_of[image].append(caption)
        by_image = scores.T if method.scored_by_hook else method.image_to_text_scores()
        i2t = ranks_from_scores(by_image, captions_of)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
        return MethodResult(method, t2i, i2t, top)
    t2i = text_to_image_ranks(method.caption_vectors, method.image_vectors, caption_image)
    i2t = image_to_text_ranks(method.image_vectors, method.caption_vectors, caption_image)
    top, _ = exact_top_k(l2_normalize(method.image_vectors), method.caption_vectors, top_k)
    return MethodResult(method, t2i, i2t, top)


def index_for_methods(
    config: EvalConfig, dataset, joint_names: list[str]
) -> tuple[EncoderSpec, MethodContext]:
    """Index ``dataset``'s images into ``OUT/index`` with what the methods need (a joint shard,
    tags, captions) -> the image encoder spec and the methods' context."""
    from serving.searcher import ImageSearcher
    from training.features import dataset_features

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = flagged_image_encoder(  # the flags', else the first joint model's encoder
        config.models_dir, joint_names[0] if joint_names else "", config.encoder, config.weights
    )
    index_args: list[str] = []
    dual = [name for name in joint_names if name.startswith("dual-")]
    if dual:  # a joint ScaNN shard, so text queries of that model run on ScaNN as in serving
        index_args = ["--models", str(config.models_dir), "--joint_model", dual[0]]
    index_args += extra_index_args(config, spec)
    if "--captioner" in index_args and "--models" not in index_args:
        index_args += ["--models", str(config.models_dir)]
    features = dataset_features(
        dataset, out, spec, [*index_args, *config.beam_args], out=out / "index", reuse=False
    )
    images = ImageSearcher.load(str(out / "index"))
    models_dir = Path(config.models_dir) if config.models_dir else None
    return spec, MethodContext(models_dir, features, images)


def run(argv_or_config: Sequence[str] | EvalConfig) -> dict[str, Any]:
    """Run the evaluation; -> the content written to ``OUT/metrics.json``.

    Raises ``DatasetError`` (a ValueError listing the wrong lines) on a malformed dataset and
    ``NoMethodError`` when there is nothing to evaluate.
    """
    config = argv_or_config
    if not isinstance(config, EvalConfig):
        config = parse_args(list(config))
    started = time.perf_counter()
    dataset = load_captioned_dataset(config.dataset, config.split)  # fails before any work
    joint_names = joint_model_names(config.models_dir)
    # Checked before the (costly) indexing. The default run compares everything against a
    # joint model (the primary method); tags alone need no model but must be asked for.
    if not joint_names and set(config.families or ["joint"]) <= {"joint"}:
        raise NoMethodError(
            "no text->image method to evaluate: "
            + (f"{config.models_dir} holds no joint model" if config.models_dir else "no --models")
            + "; train one with `imgsearch train joint --dataset DIR --split train "
            "--out MODELS_DIR` and pass --models MODELS_DIR (or ask for --family tags)"
        )
    out = Path(config.out)
    spec, context = index_for_methods(config, dataset, joint_names)
    features, images = context.features, context.images
    methods = prepare_methods(context, list(config.families) or None)
    if not methods:
        raise NoMethodError("the method families found nothing to evaluate")

    caption_image = dataset.caption_image_index()
    own_rows = features.image_rows[caption_image]  # table row of each caption's image
    results = [
        _evaluate_method(m, caption_image, config.submission_top_k)
        for m in progress(methods, desc="ranking every caption", unit="method")
    ]
    step = max(1, len(dataset.captions) // max(1, config.latency_queries))
    latency_sample = dataset.caption_texts[::step][: config.latency_queries]

    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset.summary(),
        "images": len(dataset.images),
        "queries": len(dataset.captions),
        "primary_method": methods[0].name,
        "methods": {},
        "ann": {"text_to_image": {}, "image_to_image": None},
        "latency_ms": {},
    }
    for result in progress(results, desc="ANN recall and latency", unit="method"):
        method = result.method
        metrics["methods"][method.name] = {
            "family": method.family,
            "description": method.description,
            "text_to_image": retrieval_metrics(result.t2i_ranks, DEFAULT_KS),
            "image_to_text": retrieval_metrics(result.i2t_ranks, DEFAULT_KS),
        }
        if method.ann_search is not None:
            metrics["ann"]["text_to_image"][method.name] = ann_figures(method, own_rows, DEFAULT_KS)
        metrics["latency_ms"][method.name] = latency_figures(method, latency_sample)
    metrics["ann"]["image_to_image"] = image_ann_figures(images, features.table)
    metrics["index"] = {
        "dir": str(out / "index"),
        "version": images.manifest.version,
        "encoder_spec": spec.to_json(),
        "encoder_id": features.table.encoder_id,
        "joint_model": features.table.joint_model or None,
        "scann_params": images.manifest.scann_params,
    }
    captioning = captioning_section(features)
    if captioning is not None:  # the index has generated captions: how good are they
        metrics["captioning"] = captioning
    metrics["provenance"] = {
        "command": config.command or f"evaluation.eval_job.run({config!r})",
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }

    primary = results[0]
    names = dataset.image_names
    write_submission(
        out / "submission.csv", dataset, [[names[r] for r in row] for row in primary.top_rows]
    )
    metrics["submission"] = {
        "file": "submission.csv",
        "method": primary.method.name,
        "score": score_submission(out / "submission.csv", dataset),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "summary.md").write_text(results_markdown(metrics))

    from evaluation.report import write_report

    write_report(out / "report.html", metrics, dataset, results, config)
    logger.info("evaluation written to %s", out)
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    """A plain-text table of the headline figures."""
    lines = [
        f"{metrics['dataset']['path']} (split {metrics['dataset']['split']}): "
        f"{metrics['images']} images, {metrics['queries']} caption queries",
        f"{'method':24s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'MRR':>6s} {'medR':>6s}"
        f" | i2t {'R@1':>6s} {'R@5':>6s} {'R@10':>6s}",
    ]
    for name, figures in metrics["methods"].items():
        t, i = figures["text_to_image"], figures["image_to_text"]
        lines.append(
            f"{name:24s} {t['R@1']:6.3f} {t['R@5']:6.3f} {t['R@10']:6.3f} {t['MRR']:6.3f} "
            f"{t['median_rank']:6.1f} |     {i['R@1']:6.3f} {i['R@5']:6.3f} {i['R@10']:6.3f}"
        )
    for name, ann in metrics["ann"]["text_to_image"].items():
        recall = ann[f"recall@{ann['k']}"]
        lines.append(
            f"ANN {name}: {ann['index']} recall@{ann['k']} {recall:.3f}, "
            f"delta R@10 {ann['delta']['R@10']:+.4f}"
        )
    lines.append(f"ANN image->image recall@10 {metrics['ann']['image_to_image']['recall@10']:.3f}")
    for name, lat in metrics["latency_ms"].items():
        lines.append(
            f"latency {name}: p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, "
            f"p99 {lat['p99']:.2f} ms ({lat['search']})"
        )
    captioning = metrics.get("captioning")
    if captioning is not None:
        figures = ", ".join(
            f"{key} " + ("missing" if captioning[key] is None else f"{captioning[key]:.3f}")
            for key in ("BLEU-1", "BLEU-4", "METEOR", "CIDEr")
        )
        lines.append(
            f"captions {captioning['captioner']} ({captioning['images']} images): {figures}"
        )
        lines += [f"  no {part}: {why}" for part, why in captioning.get("missing", {}).items()]
    return "\n".join(lines)


def results_markdown(metrics: dict[str, Any]) -> str:
    """The headline figures as Markdown (``OUT/summary.md``), for notes and results folders."""
    data = metrics["dataset"]
    lines = [
        f"# imgsearch eval: {data['layout']} {data['split'] or '(all images)'}",
        "",
        f"`{metrics['provenance']['command']}`",
        "",
        f"{metrics['images']} images, {metrics['queries']} caption queries; "
        f"{metrics['provenance']['code_version']}, {metrics['provenance']['created_at']}, "
        f"{metrics['provenance']['seconds']} s; image encoder `{metrics['index']['encoder_id']}`, "
        f"ScaNN `{metrics['index']['scann_params'].get('kind')}`.",
        "",
        "| method | t2i R@1 | R@5 | R@10 | MRR | median rank | i2t R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in metrics["methods"].items():
        t, i = figures["text_to_image"], figures["image_to_text"]
        lines.append(
            f"| {name} | {t['R@1']:.4f} | {t['R@5']:.4f} | {t['R@10']:.4f} | {t['MRR']:.4f} | "
            f"{t['median_rank']:.1f} | {i['R@1']:.4f} | {i['R@5']:.4f} | {i['R@10']:.4f} |"
        )
    lines += [
        "",
        "| method | ANN index | recall@10 vs exact | ΔR@1 | ΔR@5 | ΔR@10 "
        "| p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, lat in metrics["latency_ms"].items():
        ann = metrics["ann"]["text_to_image"].get(name)
        if ann is None:
            cells = f"{lat['search']} | - | - | - | -"
        else:
            d = ann["delta"]
            cells = (
                f"{ann['index']} | {ann['recall@10']:.4f} | {d['R@1']:+.4f} | {d['R@5']:+.4f} | "
                f"{d['R@10']:+.4f}"
            )
        lines.append(
            f"| {name} | {cells} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} |"
        )
    image_ann = metrics["ann"]["image_to_image"]
    lines += ["", f"Image->image: {image_ann['index']} recall@10 {image_ann['recall@10']:.4f}.", ""]
    return "\n".join(lines)


def _score_main(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch eval score",
        "Score a submission (a CSV of ranked image ids per caption query) against a dataset.",
        ["imgsearch eval score --submission eval-out/submission.csv --dataset DIR --split dev"],
    )
    parser.add_argument("--submission", required=True, help="the CSV to score")
    parser.add_argument("--dataset", required=True, help="captioned folder, Flickr8k or COCO")
    parser.add_argument("--split", default=None, help="e.g. dev (Flickr8k) or val (COCO)")
    args = parser.parse_args(argv)
    dataset = load_captioned_dataset(args.dataset, args.split)
    print(json.dumps(score_submission(args.submission, dataset), indent=2))
    return 0


def main(argv: Sequence[str]) -> int:
    """CLI entry: 0 on success, 2 with the listed problems on a bad dataset or no method."""
    argv = list(argv)
    try:
        if argv and argv[0] == "score":
            return _score_main(argv[1:])
        if argv and argv[0] == "clicks":
            from evaluation import clicks

            return clicks.main(argv[1:])
        metrics = run(argv)
    except (DatasetError, NoMethodError) as error:
        print(f"imgsearch eval: error: {error}", file=sys.stderr)
        return 2
    print(summary(metrics))
    print(f"wrote {Path(parse_args(argv).out) / 'metrics.json'} and report.html")
    return 0


if __name__ == "__main__":  # the nightly DAG runs `python -m evaluation.eval_job`
    run_module_main(main)
