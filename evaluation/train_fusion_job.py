"""``imgsearch train fusion``: fit the weights of the fused ranking on a development split.

    imgsearch train fusion --dataset DIR --split dev --out MODELS_DIR [--work DIR] [--folds 2]

Indexes the split's images as ``imgsearch eval`` does (joint shard, tags, the models' captioner),
prepares every single method (joint, caption, tags families), and fits ``weighted_fusion``
weights (``ranking.fusion.fit_weights``) on all the split's caption queries. Weights fitted and
evaluated on the same split flatter the fused figures, so it also reports ``--folds``-fold
cross-fitted figures (images split into folds; each fold's queries are ranked with weights
fitted on the other folds' queries), saved in the metadata beside the in-sample ones.
Saved as a new version of the ``fusion`` model, which ``imgsearch eval`` (``fused-weighted``)
and serving pick up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ranking.fusion import fit_weights, own_ranks, weighted_fusion
from ranking.metrics import retrieval_metrics
from runtime.arguments import command_parser, show_defaults

logger = logging.getLogger(__name__)

BASE_FAMILIES = ("joint", "caption", "tags")


def cross_fitted_ranks(
    parts: dict[str, np.ndarray], own: np.ndarray, folds: int, seed: int = 0
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Ranks of every query under weights fitted without its image's fold; -> (ranks, weights
    of each fold). Queries of one image stay in one fold (no leakage through shared images)."""
    rng = np.random.default_rng(seed)
    images = np.unique(own)
    fold_of_image = dict(zip(images, rng.permutation(len(images)) % folds, strict=True))
    fold = np.array([fold_of_image[i] for i in own])
    ranks = np.zeros(len(own), dtype=np.int64)
    fold_weights = []
    for f in range(folds):
        train, test = fold != f, fold == f
        weights, _ = fit_weights({n: s[train] for n, s in parts.items()}, own[train])
        fused = weighted_fusion({n: s[test] for n, s in parts.items()}, weights)
        ranks[test] = own_ranks(fused, own[test])
        fold_weights.append(weights)
    return ranks, fold_weights


def main(argv: Sequence[str]) -> int:
    from evaluation import eval_job
    from evaluation.methods import family_methods, joint_model_names
    from models.artifacts import save_model_version
    from models.fusion_weights import FUSION_MODEL
    from training.captions import load_captioned_dataset

    logging.basicConfig(level=logging.INFO)
    parser = command_parser(
        "imgsearch train fusion",
        "Fit the weights of the fused ranking (joint model, captions, tags) on a development "
        "split, with cross-fitted figures beside the in-sample ones.",
        [
            "imgsearch train fusion --dataset ../shared/assets/datasets/flickr8k --split dev "
            "--out models",
        ],
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument(
        "--out", required=True, help="the models directory (joint models, captioner)"
    )
    parser.add_argument("--work", default=None, help="folder for the index (default OUT/.fusion)")
    parser.add_argument("--folds", type=int, default=2)
    args, beam_args = show_defaults(parser).parse_known_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    config = eval_job.EvalConfig(
        dataset=args.dataset, out=args.work or f"{args.out}/.fusion", split=args.split or None,
        models_dir=args.out, beam_args=tuple(beam_args),
    )  # fmt: skip
    dataset = load_captioned_dataset(config.dataset, config.split)
    _, context = eval_job.index_for_methods(config, dataset, joint_model_names(args.out))
    methods = [m for family in BASE_FAMILIES for m in family_methods(context, family)]
    if len({m.family for m in methods}) < 2:
        print("imgsearch train fusion: error: fewer than two method families to fuse", flush=True)
        return 2
    own = dataset.caption_image_index()
    parts = {m.name: m.scores() for m in methods}
    weights, objective = fit_weights(parts, own)
    cv_ranks, fold_weights = cross_fitted_ranks(parts, own, args.folds)
    singles = {n: retrieval_metrics(own_ranks(s, own)) for n, s in parts.items()}
    # Ablation: what fusing the joint models alone gives, so the captions' and tags' share of
    # the gain is visible.
    joint_parts = {m.name: parts[m.name] for m in methods if m.family == "joint"}
    ablations = {}
    if 1 < len(joint_parts) < len(parts):
        joint_ranks, _ = cross_fitted_ranks(joint_parts, own, args.folds)
        ablations["joint models only"] = {"folds": args.folds, **retrieval_metrics(joint_ranks)}
    in_sample = retrieval_metrics(own_ranks(weighted_fusion(parts, weights), own))
    metadata: dict[str, Any] = {
        "dataset": dataset.summary(),
        "objective": "mean of R@1, R@5, R@10 (text->image)",
        "in_sample": in_sample,
        "cross_fitted": {"folds": args.folds, **retrieval_metrics(cv_ranks)},
        "fold_weights": fold_weights,
        "ablations_cross_fitted": ablations,
        "single_methods": singles,
    }
    config_json = {"kind": "fusion", "rule": "weighted z-scores", "weights": weights,
                   "objective_value": objective}  # fmt: skip
    folder = save_model_version(args.out, FUSION_MODEL, config_json, metadata, lambda _: None)
    print(f"fusion weights {weights}")
    print(f"in-sample {in_sample}\ncross-fitted {metadata['cross_fitted']}")
    print(f"saved {folder}")
    return 0
