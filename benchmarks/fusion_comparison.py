"""Every single text->image method vs the fused ranking on Flickr8k dev (R@1/5/10).

Run: ``.venv/bin/python benchmarks/fusion_comparison.py --models MODELS_DIR
[--dataset DIR] [--split dev] [--work DIR] [--report benchmarks/results/fusion.md]``

``MODELS_DIR`` holds a joint model (``imgsearch train joint``) and a captioner (``imgsearch
train captioner``). Steps: ``imgsearch train fusion`` on the split (fits the fusion weights,
with cross-fitted figures), then ``imgsearch eval`` on the same split with every family: the
joint models, ``caption-*`` over the generated captions, ``tags-glove``, ``fused-rrf`` and
``fused-weighted``. The fitted weights are evaluated on the split they were fitted on, so the
table also gives the cross-fitted figures (weights fitted on the other half of the images),
which are the honest estimate. Figures are printed and written to ``--report``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

from evaluation import eval_job, train_fusion_job
from imgsearch import settings
from models.artifacts import code_version, read_config, read_metadata, resolve_version
from models.fusion_weights import FUSION_MODEL

KS = ("R@1", "R@5", "R@10")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True)
    assets = settings.assets_dir()
    parser.add_argument(
        "--dataset", default=str(assets / "datasets" / "flickr8k") if assets else None
    )
    parser.add_argument("--split", default="dev")
    parser.add_argument("--work", default="/tmp/imgsearch-fusion-comparison")
    parser.add_argument("--report", default="benchmarks/results/fusion.md")
    args = parser.parse_args()

    code = train_fusion_job.main(["--dataset", args.dataset, "--split", args.split,
                                  "--out", args.models, "--work", f"{args.work}/fit"])  # fmt: skip
    if code != 0:
        raise SystemExit(code)
    fusion = resolve_version(args.models, FUSION_MODEL)
    fusion_meta, weights = read_metadata(fusion), read_config(fusion)["weights"]
    metrics = eval_job.run(["--dataset", args.dataset, "--split", args.split, "--out",
                            f"{args.work}/eval", "--models", args.models,
                            "--latency-queries", "50"])  # fmt: skip
    methods = metrics["methods"]
    singles = {n: m for n, m in methods.items() if m["family"] != "fused"}
    best_single = {k: max(m["text_to_image"][k] for m in singles.values()) for k in KS}
    cross = fusion_meta["cross_fitted"]

    lines = [
        f"# Fused ranking vs single methods: {metrics['dataset']['layout']} {args.split}",
        "",
        f"`python benchmarks/fusion_comparison.py --models {args.models}` — {code_version()}, "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"{metrics['provenance']['seconds']} s for the eval step.",
        "",
        f"{metrics['images']} images, {metrics['queries']} caption queries (text->image). Caption "
        f"methods search each image's generated caption "
        f"(`{methods.get('caption-bm25', {}).get('description', {}).get('captioner', '-')}`); "
        "tags are the ImageNet head's top 5 per image.",
        "",
        "| method | family | R@1 | R@5 | R@10 | MRR | median rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        t = m["text_to_image"]
        lines.append(f"| {name} | {m['family']} | {t['R@1']:.4f} | {t['R@5']:.4f} | "
                     f"{t['R@10']:.4f} | {t['MRR']:.4f} | {t['median_rank']:.1f} |")  # fmt: skip
    lines.append(
        f"| fused-weighted, {cross['folds']}-fold cross-fitted | fused | {cross['R@1']:.4f} | "
        f"{cross['R@5']:.4f} | {cross['R@10']:.4f} | {cross['MRR']:.4f} | "
        f"{cross['median_rank']:.1f} |"
    )
    for label, ablation in fusion_meta.get("ablations_cross_fitted", {}).items():
        lines.append(
            f"| ablation: fused-weighted over {label}, cross-fitted | fused | "
            f"{ablation['R@1']:.4f} | {ablation['R@5']:.4f} | {ablation['R@10']:.4f} | "
            f"{ablation['MRR']:.4f} | {ablation['median_rank']:.1f} |"
        )
    lines += ["", f"Fitted weights (z-scored parts): `{json.dumps(weights)}`; per fold: "
              f"`{json.dumps(fusion_meta['fold_weights'])}`.", ""]  # fmt: skip
    for label, figures in [
        (name, methods[name]["text_to_image"]) for name in methods if name.startswith("fused")
    ] + [("fused-weighted cross-fitted", cross)]:
        beats = {k: figures[k] > best_single[k] for k in KS}
        verdict = "beats" if all(beats.values()) else "does NOT beat"
        lines.append(
            f"- {label} {verdict} the best single method on every one of R@1/5/10 "
            f"({', '.join(f'{k} {figures[k]:.4f} vs {best_single[k]:.4f}' for k in KS)})."
        )
    lines.append("")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
