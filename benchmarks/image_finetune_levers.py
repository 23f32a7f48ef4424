"""Issue 16's image-side levers in the fine-tuning step: learned pooling (GPO), a deeper cut.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/image_finetune_levers.py
[--variants default gpo blocks5 ...] [--seeds 0 1]`` (writes
``benchmarks/results/image_finetune_levers.md`` and a JSON of the rows beside it; a run replaces
the rows it measures and keeps the others; bottom activations and text features are cached
under ``--work`` for reruns).

Each row is the recipe's image step (``training.image_finetune.fine_tune_dual_encoder``) as it
was when these levers were measured (``BASE``: MobileNetV2-flip's top three blocks for 10
epochs -- the default is now ``blocks5_long``'s five blocks for 15 -- fine-tuned in a dual
encoder on ``minilm_tfidf`` caption features, four cached views per photo, early stopping on
held-out *train* photos) with one thing changed, every row from the same ImageNet weights:

* ``default``: as the recipe trains it (global average pooling, three blocks);
* ``gpo``: ``encoders.grid_pooling.GeneralizedPooling`` instead of the average (VSE-infinity's
  rank-weighted pooling over the 7x7 grid; it starts as the average and learns rank weights);
* ``blocksN``: the top ``N`` blocks trainable (4: from ``block_14``, 5: from ``block_13``, the
  last 14x14 block), the bottom cut below them (``training.finetune_backbone.cut_layer``);
  ``_slow`` with the CNN at a third of the rate, ``_long`` (and ``default_long``) 15 epochs.

The seed draws the towers, the held-out photos and the batches; the cached crops are seed 0's.
The fine-tuned dual encoder is scored on the 1,000 Flickr8k dev photos (the photo and its
mirror pooled and averaged, as the encoder does) with their 5,000 captions, exact scoring; no
epoch is picked on dev.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.datasets import add_flickr8k_arg, flickr8k_dir
from benchmarks.machine import machine_line
from encoders.base import EncoderSpec
from encoders.text_registry import create_text_encoder, fit_text_encoder
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.captions import load_captioned_dataset
from training.finetune_backbone import build_split_backbone, cache_activations
from training.image_finetune import fine_tune_dual_encoder, image_features_from
from training.image_side import _pixel_loader
from training.joint_config import ImageFineTuneConfig
from training.train_joint_job import DEFAULT_TEXT_ENCODER, encode_texts

RESULTS = REPO / "benchmarks" / "results" / "image_finetune_levers.md"
SPEC = EncoderSpec(name="mobilenet_v2_flip")
# The recipe every variant changes one thing of: the default before five blocks won (its rows
# were measured against it), pinned so that a changed default does not re-mean the table.
BASE = ImageFineTuneConfig(trainable_blocks=3, epochs=10)
# Variant -> (what it changes, BASE overrides, learned pooling).
VARIANTS: dict[str, tuple[str, dict, bool]] = {
    "default": ("the recipe: top 3 blocks, global average pooling", {}, False),
    "default_long": ("the recipe with 15 epochs instead of 10", {"epochs": 15}, False),
    "gpo": ("learned pooling (GPO) over the 7x7 grid instead of the average", {}, True),
    "blocks4": ("top 4 blocks trainable (from block_14)", {"trainable_blocks": 4}, False),
    "blocks5": ("top 5 blocks trainable (from block_13, the last 14x14 block)",
                {"trainable_blocks": 5}, False),
    "blocks5_slow": ("top 5 blocks trainable, the CNN at a third of the recipe's rate (1e-4)",
                     {"trainable_blocks": 5, "backbone_learning_rate": 1e-4}, False),
    "blocks5_long": ("top 5 blocks trainable, 15 epochs instead of 10",
                     {"trainable_blocks": 5, "epochs": 15}, False),
}  # fmt: skip


class Data:
    """Text features and bottom activations, computed once per cut and cached on disk."""

    def __init__(self, dataset_dir: str, work: Path, views: int, seed: int) -> None:
        self.work, self.views, self.seed = work, views, seed
        self.train = load_captioned_dataset(dataset_dir, "train")
        self.dev = load_captioned_dataset(dataset_dir, "dev")
        spec = fit_text_encoder(
            DEFAULT_TEXT_ENCODER, self.train.caption_texts, work / "text", glove="auto"
        )
        encoder = create_text_encoder(spec)
        self.text = self._cached(
            "train_text", lambda: encode_texts(encoder, self.train.caption_texts)
        )
        self.dev_text = self._cached(
            "dev_text", lambda: encode_texts(encoder, self.dev.caption_texts)
        )
        self._acts: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _cached(self, name: str, compute) -> np.ndarray:
        path = self.work / f"{name}.npy"
        if path.is_file():
            return np.load(path)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, value)
        return value

    def activations(self, split) -> tuple[np.ndarray, np.ndarray]:
        """(train ``(views, N, ...)``, dev ``(2, N, ...)``) below ``split``'s cut."""
        cut = split.cut
        if cut not in self._acts:
            self._acts.clear()  # one cut in memory at a time
            train = self._cached(f"train_acts_{cut}_{self.views}", lambda: cache_activations(
                split, _pixel_loader(self.train, SPEC.image_size), len(self.train.images),
                self.views, self.seed,
            ))  # fmt: skip
            dev = self._cached(f"dev_acts_{cut}_2", lambda: cache_activations(
                split, _pixel_loader(self.dev, SPEC.image_size), len(self.dev.images), 2,
                self.seed,
            ))  # fmt: skip
            self._acts[cut] = (train, dev)
        return self._acts[cut]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_variant(variant: str, seed: int, data: Data, config: ImageFineTuneConfig) -> dict:
    import tensorflow as tf

    from encoders.grid_pooling import GeneralizedPooling

    _, overrides, learned_pooling = VARIANTS[variant]
    config = dataclasses.replace(config, **overrides, seed=seed)
    blocks = config.trainable_blocks
    split = build_split_backbone(SPEC, blocks)  # fresh ImageNet weights
    if learned_pooling:
        split = dataclasses.replace(split, pooling=GeneralizedPooling(name="gpo"))
    acts, dev_acts = data.activations(split)
    started = time.monotonic()
    model, history, _ = fine_tune_dual_encoder(
        split, acts, data.text, data.train.caption_image_index(), config, True, print
    )
    seconds = time.monotonic() - started
    features = image_features_from(tf.function(split.pooled), dev_acts, True)
    image_emb = unit(model.image_tower(features, training=False).numpy())
    text_emb = unit(model.text_tower(data.dev_text, training=False).numpy())
    own = data.dev.caption_image_index()
    t2i = retrieval_metrics(text_to_image_ranks(text_emb, image_emb, own))
    i2t = retrieval_metrics(image_to_text_ranks(image_emb, text_emb, own))
    result = {
        "variant": variant,
        "seed": seed,
        "trainable_blocks": blocks,
        "cut": split.cut,
        "t2i": {k: t2i[k] for k in ("R@1", "R@5", "R@10", "MRR")},
        "i2t": {k: i2t[k] for k in ("R@1", "R@5", "R@10")},
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(len(history.epochs), 1), 1),
    }
    if split.pooling is not None:
        weights = np.asarray(split.pooling.rank_weights())
        # Rank weights, largest value first: how far from the average (1/49 each) it moved.
        result["top_rank_weights"] = [round(float(w), 4) for w in weights[::-1][:5]]
        result["bottom_rank_weights"] = [round(float(w), 4) for w in weights[:5]]
    print(json.dumps(result), flush=True)
    return result


def render(results: list[dict], config: ImageFineTuneConfig, machine: str) -> str:
    lines = [
        "# Image-side levers of the fine-tuning step, Flickr8k dev",
        "",
        f"Generated by `benchmarks/image_finetune_levers.py` (rows may come from separate runs "
        f"of it; each keeps the others' rows). {machine}.",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        f"Recipe settings: {config.views} cached views per photo, up to {config.epochs} epochs "
        f"(patience {config.patience}), batch {config.batch_size}, tower rate "
        f"{config.learning_rate:g}, CNN rate {config.backbone_learning_rate:g}.",
        "",
        "| variant | change | seed | text->image R@1 | R@5 | R@10 | MRR | image->text R@1 | R@5 "
        "| R@10 | best epoch | s / epoch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate(VARIANTS)}
    results = sorted(results, key=lambda r: (order.get(r["variant"], 99), r["seed"]))
    for r in results:
        t, i = r["t2i"], r["i2t"]
        lines.append(
            f"| {r['variant']} | {VARIANTS[r['variant']][0]} | {r['seed']} | {t['R@1']:.3f} "
            f"| {t['R@5']:.3f} | {t['R@10']:.3f} | {t['MRR']:.3f} | {i['R@1']:.3f} | "
            f"{i['R@5']:.3f} | {i['R@10']:.3f} | {r['best_epoch']}/{r['epochs_run']} | "
            f"{r['seconds_per_epoch']:.0f} |"
        )
    for variant in dict.fromkeys(r["variant"] for r in results):
        rows = [r for r in results if r["variant"] == variant]
        if len(rows) < 2:
            continue

        def mean(side: str, key: str, rows=rows) -> float:
            return float(np.mean([r[side][key] for r in rows]))

        lines.append(
            f"| **{variant}, mean** | | {len(rows)} seeds | {mean('t2i', 'R@1'):.3f} | "
            f"{mean('t2i', 'R@5'):.3f} | {mean('t2i', 'R@10'):.3f} | {mean('t2i', 'MRR'):.3f} | "
            f"{mean('i2t', 'R@1'):.3f} | {mean('i2t', 'R@5'):.3f} | {mean('i2t', 'R@10'):.3f} "
            "| | |"
        )
    for r in results:
        if "top_rank_weights" in r:
            lines += [
                "",
                f"Learnt rank weights ({r['variant']}, seed {r['seed']}; the average gives each "
                f"of the 49 ranks {1 / 49:.4f}): the five largest values' weights "
                f"{r['top_rank_weights']}, the five smallest values' {r['bottom_rank_weights']}.",
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flickr8k_arg(parser)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/image_finetune_levers"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    dataset_dir = flickr8k_dir(parser, args)
    config = BASE
    data = Data(dataset_dir, args.work, config.views, config.seed)
    json_path = args.out.with_suffix(".json")
    kept = json.loads(json_path.read_text()) if json_path.is_file() else []
    measured = {(v, s) for v in args.variants for s in args.seeds}
    results = [r for r in kept if (r["variant"], r["seed"]) not in measured]
    for seed in args.seeds:
        for variant in args.variants:
            results.append(run_variant(variant, seed, data, config))
            # Written after every row: a long run stopped early keeps what it measured.
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            args.out.write_text(render(results, config, machine_line()))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
