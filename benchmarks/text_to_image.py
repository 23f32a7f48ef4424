"""Text<->image retrieval on Flickr8k dev: the default recipe and each lever's contribution.

Run: ``.venv/bin/python benchmarks/text_to_image.py [--recipes frozen finetune1 default ...]``
(the ablation, written to ``benchmarks/results/text_to_image.md`` with a JSON of the figures),
or ``--compare-text-encoders [--encoders minilm tfidf ...]`` (frozen features, one row per text
encoder, written to ``text_to_image_frozen.md``).

Each recipe is ``imgsearch train joint``'s own code (``train_joint_job.run``) on Flickr8k train
with a few settings changed from the defaults (``RECIPES``); ``default`` is the command with no
flag. Every model it saves is evaluated on the 1,000 dev photos, indexed by the real index job
with the encoder the model was trained on (a fine-tuned one included), every dev caption a
query, exact scoring. Recipes share the work folder's caches (fitted text encoders, bottom
activations, stock features), so the table costs one cache fill, not one per row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from encoders.base import EncoderSpec
from evaluation.joint_eval import evaluate_joint_model
from imgsearch import settings
from models.artifacts import list_models, read_metadata
from models.image_encoder import recorded_image_encoder
from training import train_joint_job
from training.captions import load_captioned_dataset
from training.features import dataset_features
from training.joint_config import ImageFineTuneConfig
from training.progress import note, progress

ENCODERS = ("minilm", "tfidf", "glove_sif", "glove_idf", "glove_mean", "bow")
QUICK_ENCODERS = ("minilm", "minilm_tfidf", "tfidf")
FLOOR = {"R@1": 0.13, "R@5": 0.36, "R@10": 0.49}
BAR = {"R@1": 0.20, "R@5": 0.48, "R@10": 0.62}
# The targets on dev (text->image, image->text).
TARGET_T2I = {"R@1": 0.30, "R@5": 0.60, "R@10": 0.72}
TARGET_I2T = {"R@1": 0.42, "R@5": 0.72, "R@10": 0.82}
_FT = ImageFineTuneConfig()
# Recipe name -> (what it changes, TrainJointConfig overrides). "default" changes nothing.
RECIPES: dict[str, tuple[str, dict]] = {
    "frozen": ("frozen CNN (the recipe before fine-tuning)", {"finetune": None}),
    "finetune1": ("fine-tune the top block (Conv_1) only",
                  {"finetune": dataclasses.replace(_FT, trainable_blocks=1)}),
    "finetune2": ("fine-tune the top two blocks (block_16, Conv_1)",
                  {"finetune": dataclasses.replace(_FT, trainable_blocks=2)}),
    "finetune3": ("fine-tune the top three blocks (block_15, block_16, Conv_1) for 10 epochs "
                  "(the default before)",
                  {"finetune": dataclasses.replace(_FT, trainable_blocks=3, epochs=10)}),
    "default": ("default: fine-tune the top five blocks (from block_13) for 15 epochs, "
                "scores corrected by each model's query bank", {}),
    "hard": ("default + VSE++ hardest negatives after half the fine-tuning epochs",
             {"finetune": dataclasses.replace(_FT, hard_negatives_from=0.5)}),
    "long": ("default with 25 fine-tuning epochs instead of 15",
             {"finetune": dataclasses.replace(_FT, epochs=25)}),
    "no_crops": ("default without random crops (photo and mirror only)",
                 {"finetune": dataclasses.replace(_FT, views=2)}),
    "minilm": ("default with MiniLM alone as text features",
               {"text_encoder": "minilm"}),
    "single_seed": ("default with one seed per model instead of three", {"ensemble": 1}),
    "ensemble5": ("default with five seeds per model instead of three", {"ensemble": 5}),
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="ablation rows"
    )
    parser.add_argument(
        "--compare-text-encoders",
        action="store_true",
        help="instead of the ablation: frozen features, one row per text encoder",
    )
    parser.add_argument("--encoders", nargs="+", default=None, help="text encoders (compare)")
    parser.add_argument(
        "--image-encoders", nargs="+", default=["mobilenet_v2_flip"], help="image encoders"
    )
    parser.add_argument("--ensemble", type=int, default=1, help="seeds merged per model")
    parser.add_argument("--quick", action="store_true", help="3 text encoders, 3-seed ensembles")
    parser.add_argument("--work", default="/tmp/imgsearch-text-to-image", help="models + features")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown from the JSON next to it (same other options), no training",
    )
    parser.add_argument("--report", default=None, help="default: results/text_to_image[_frozen].md")
    args = parser.parse_args()
    results = REPO / "benchmarks" / "results"
    if args.compare_text_encoders:
        args.report = args.report or str(results / "text_to_image_frozen.md")
        if args.quick:
            args.encoders = args.encoders or list(QUICK_ENCODERS)
            args.ensemble = 3 if args.ensemble == 1 else args.ensemble
        args.encoders = args.encoders or list(ENCODERS)
    args.report = args.report or str(results / "text_to_image.md")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # Quiet logs, but the training's progress (bars on a terminal, lines otherwise) and news.
    logging.getLogger("training.progress").setLevel(logging.INFO)

    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    flickr = assets / "datasets" / "flickr8k"
    dev = load_captioned_dataset(flickr, "dev")
    work = Path(args.work)
    if args.render_only:
        rows = json.loads(Path(args.report).with_suffix(".json").read_text())
        (write_report if args.compare_text_encoders else write_ablation)(args, rows, dev)
        return 0
    if not args.compare_text_encoders:
        # Rows of recipes not rerun now are kept from the JSON beside the report, so the table
        # can be filled one recipe at a time; all rows are shown in RECIPES order.
        saved = Path(args.report).with_suffix(".json")
        kept = json.loads(saved.read_text()) if saved.is_file() else []
        rows = [row for row in kept if row["recipe"] not in args.recipes]
        order = list(RECIPES)
        for recipe in progress(args.recipes, desc="recipes", unit="recipe"):
            rows += run_recipe(recipe, flickr, dev, work)
            rows.sort(key=lambda row: order.index(row["recipe"]))
            write_ablation(args, rows, dev)  # after each row: a long run shows its progress
        return 0

    rows = []
    for image_encoder in args.image_encoders:
        spec = EncoderSpec(name=image_encoder)
        dev_features = dataset_features(dev, work / "features", spec)
        for name in progress(args.encoders, desc=f"{image_encoder} text encoders", unit="encoder"):
            # One models directory per configuration (model names are kind-text encoder), all
            # sharing the feature indexes, which are named by encoder and images.
            models_dir = work / f"{image_encoder}-ensemble{args.ensemble}"
            models_dir.mkdir(parents=True, exist_ok=True)
            if not (models_dir / "features").exists():
                (models_dir / "features").symlink_to((work / "features").resolve())
            config = train_joint_job.TrainJointConfig(
                dataset=str(flickr), split="train", models_dir=str(models_dir),
                text_encoder=name, image_encoder=spec, epochs=args.epochs,
                ensemble=args.ensemble, mixed=True, finetune=None,
            )  # fmt: skip
            start = time.perf_counter()
            train_joint_job.run(config)
            train_seconds = time.perf_counter() - start
            for kind in (*train_joint_job.JOINT_KINDS, train_joint_job.MIXED_KIND):
                model = f"{kind}-{name}"
                figures = evaluate_joint_model(models_dir, model, dev_features)
                rows.append({"image_encoder": dev_features.table.encoder_id,
                             "text_encoder": name, "model": kind, "ensemble": args.ensemble,
                             "train_seconds": train_seconds, **figures})  # fmt: skip
                t2i = figures["text_to_image"]
                print(f"{image_encoder} {model:18s} x{args.ensemble} R@1 {t2i['R@1']:.3f} "
                      f"R@5 {t2i['R@5']:.3f} R@10 {t2i['R@10']:.3f} "
                      f"median rank {t2i['median_rank']:.0f}")  # fmt: skip

    write_report(args, rows, dev)
    return 0


def run_recipe(recipe: str, flickr: Path, dev, work: Path) -> list[dict]:
    """Train ``recipe`` with ``train_joint_job.run``, evaluate every model it saved on dev."""
    what, overrides = RECIPES[recipe]
    models_dir = work / recipe
    models_dir.mkdir(parents=True, exist_ok=True)
    for shared in ("features", "text"):  # caches every recipe may reuse
        (work / shared).mkdir(parents=True, exist_ok=True)
        if not (models_dir / shared).exists():
            (models_dir / shared).symlink_to((work / shared).resolve())
    config = train_joint_job.TrainJointConfig(
        dataset=str(flickr), split="train", models_dir=str(models_dir), **overrides
    )
    note(f"recipe {recipe}: {what}")
    start = time.perf_counter()
    saved = train_joint_job.run(config)
    train_seconds = time.perf_counter() - start
    rows = []
    names = {m.name for m in list_models(models_dir)}
    for folder in saved:
        model = folder.parent.name
        if model.startswith("image-") or model not in names:
            continue
        entry = read_metadata(folder)["image_encoder"]
        spec = recorded_image_encoder(models_dir, entry)
        features = dataset_features(dev, work / "dev-features", spec)
        figures = evaluate_joint_model(models_dir, model, features)
        plain = figures.pop("plain", None)
        rows.append({"recipe": recipe, "what": what, "model": model.split("-", 1)[0],
                     "text_encoder": config.text_encoder, "image_encoder": entry["encoder_id"],
                     "ensemble": config.ensemble, "train_seconds": train_seconds,
                     **figures})  # fmt: skip
        t2i, i2t = figures["text_to_image"], figures["image_to_text"]
        note(f"{recipe} {model}: text->image R@1 {t2i['R@1']:.3f} R@5 {t2i['R@5']:.3f} "
             f"R@10 {t2i['R@10']:.3f}; image->text R@1 {i2t['R@1']:.3f}")  # fmt: skip
        if plain is not None:  # the same model without its query bank's correction
            rows.append({**rows[-1], **plain, "what": f"{what}, plain scores",
                         "model": f"{rows[-1]['model']} (no query bank)"})  # fmt: skip
    return rows


def _meets(figures: dict, target: dict) -> bool:
    return all(figures[k] >= v for k, v in target.items())


def write_ablation(args: argparse.Namespace, rows: list[dict], dev) -> None:
    lines = [
        "# Text <-> image retrieval on Flickr8k dev: each lever's contribution",
        "",
        "Generated by `benchmarks/text_to_image.py --recipes "
        f"{' '.join(dict.fromkeys(r['recipe'] for r in rows))}` (rows may come from separate "
        "runs of it; each keeps the others' rows). Every recipe is "
        "`imgsearch train joint` on Flickr8k train with the change named (`default` is the "
        f"command with no flag); every model it saves is evaluated on the {len(dev.images)} dev "
        f"photos (indexed by the index job with the model's own image encoder) with all "
        f"{len(dev.captions)} dev captions as queries, exact scoring. `w2vv` and `dual` are "
        "ensembles of the recipe's seeds; `mixed` is the two side by side (what the README "
        "serves); a `(no query bank)` row is the model above it ranked by plain dot "
        "products, without the hubness correction of the query bank saved with it "
        "(`encoders/query_bank.py`). Train seconds: the whole command on this machine's 2 CPU "
        "cores, caches (text encoders, bottom activations) shared between rows, so a row after "
        "the first "
        "may not pay for filling them; `imgsearch train joint` on a fresh machine is timed "
        "in the README.",
        "",
        "| recipe | change | model | text->image R@1 | R@5 | R@10 | MRR | median rank | "
        "image->text R@1 | R@5 | R@10 | train s | meets targets |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        t, i = row["text_to_image"], row["image_to_text"]
        meets = _meets(t, TARGET_T2I) and _meets(i, TARGET_I2T)
        lines.append(
            f"| {row['recipe']} | {row['what']} | {row['model']} | {t['R@1']:.3f} | "
            f"{t['R@5']:.3f} | {t['R@10']:.3f} | {t['MRR']:.3f} | {t['median_rank']:.0f} | "
            f"{i['R@1']:.3f} | {i['R@5']:.3f} | {i['R@10']:.3f} | {row['train_seconds']:.0f} | "
            f"{'yes' if meets else 'no'} |"
        )
    lines += [
        "",
        f"Targets (issue 16): text->image {TARGET_T2I}, image->text {TARGET_I2T}. "
        f"CNN-era bar (m-CNN, ICCV 2015): {BAR}.",
    ]
    Path(args.report).write_text("\n".join(lines) + "\n")
    Path(args.report).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.report}")


def write_report(args: argparse.Namespace, rows: list[dict], dev) -> None:
    command = " ".join(arg for arg in sys.argv[1:] if arg != "--render-only")
    lines = [
        "# Text -> image retrieval on Flickr8k dev (generated by benchmarks/text_to_image.py)",
        "",
        f"Command: `benchmarks/text_to_image.py {command}` (frozen features: before the CNN "
        f"was fine-tuned; `text_to_image.md` has the default recipe). "
        f"{len(dev.images)} dev images, {len(dev.captions)} caption queries, exact scoring. "
        f"Models trained on Flickr8k train ({args.epochs} epochs max, early stopping on 5% of "
        f"train images); `ensemble` seeds are merged into one saved model (what the index and "
        f"`imgsearch search --text` serve); `mixed` is the W2VV and dual models of the two rows "
        f"above it side by side, one model. 2 shared CPU cores.",
        "",
        "| image encoder | text encoder | model | ensemble | R@1 | R@5 | R@10 | MRR | "
        "median rank | image->text R@1 | R@5 | R@10 | train+features s | clears the bar |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        t, i = row["text_to_image"], row["image_to_text"]
        bar = all(t[k] >= v for k, v in BAR.items())
        lines.append(
            f"| {row['image_encoder']} | {row['text_encoder']} | {row['model']} | "
            f"{row['ensemble']} | {t['R@1']:.3f} | {t['R@5']:.3f} | {t['R@10']:.3f} | "
            f"{t['MRR']:.3f} | {t['median_rank']:.0f} | {i['R@1']:.3f} | {i['R@5']:.3f} | "
            f"{i['R@10']:.3f} | {row['train_seconds']:.0f} | {'yes' if bar else 'no'} |"
        )
    lines += [
        "",
        f"Floor named by the issue (projection heads on frozen features): {FLOOR}. "
        f"Bar (m-CNN, ICCV 2015): {BAR}.",
        "Train seconds cover text-encoder fitting, caption encoding and both models "
        "(the shared image features are indexed once, on the first run). "
        "`benchmarks/text_to_image_served.py` checks the best model through the index job and "
        "`TextSearcher` (`text_to_image_served.md`).",
    ]
    Path(args.report).write_text("\n".join(lines) + "\n")
    Path(args.report).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.report}")


if __name__ == "__main__":
    sys.exit(main())
