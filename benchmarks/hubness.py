"""Hubness correction (``encoders.query_bank``) on Flickr8k dev: each trained model's figures
with and without it, a sweep of its knobs, and what computing the bias costs at load.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/hubness.py --models DIR`` where ``DIR`` holds
models saved by ``imgsearch train joint`` (their query banks included), e.g. the ``default``
folder ``benchmarks/text_to_image.py`` trains. Writes ``benchmarks/results/hubness.md`` and a
JSON beside it. Every figure is exact scoring over the 1,000 dev photos with all 5,000 dev
captions as queries, as ``imgsearch eval`` scores them; the bank is the model's own (training
captions and photos, never dev), subsampled for the smaller bank sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.datasets import add_flickr8k_arg, flickr8k_dir
from benchmarks.machine import machine_line
from encoders.joint import JOINT_KINDS
from encoders.query_bank import (
    DEFAULT_BANK_SIZE,
    DEFAULT_STRENGTH,
    DEFAULT_TEMPERATURE,
    QueryBank,
    gallery_bias,
    sample_rows,
)
from models.artifacts import list_models, read_config, read_metadata
from models.image_encoder import recorded_image_encoder
from models.query_model import load_query_model
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.captions import load_captioned_dataset
from training.features import dataset_features
from training.train_joint_job import encode_texts

TEMPERATURES = (0.01, 0.02, 0.03, 0.05, 0.1)
STRENGTHS = (0.25, 0.5, 0.75, 1.0)
BANK_SIZES = (128, 256, 512)
KEYS = ("R@1", "R@5", "R@10")


def figures(caps: np.ndarray, imgs: np.ndarray, caption_image: np.ndarray, bank: QueryBank | None):
    """Text->image and image->text R@K of caption and image vectors, corrected by ``bank``."""
    image_bias = caption_bias = None
    if bank is not None:
        image_bias, caption_bias = bank.image_bias(imgs), bank.text_bias(caps)
    t2i = retrieval_metrics(text_to_image_ranks(caps, imgs, caption_image, item_bias=image_bias))
    i2t = retrieval_metrics(image_to_text_ranks(imgs, caps, caption_image, item_bias=caption_bias))
    return {"text_to_image": {k: t2i[k] for k in KEYS}, "image_to_text": {k: i2t[k] for k in KEYS}}


def model_rows(models_dir: Path, name: str, dev, work: Path) -> list[dict]:
    folder = next(m for m in list_models(models_dir) if m.name == name).path
    spec = recorded_image_encoder(models_dir, read_metadata(folder)["image_encoder"])
    features = dataset_features(dev, work / "dev-features", spec)
    query = load_query_model(models_dir, name, image_encoder_id=features.table.encoder_id)
    joint, saved = query.joint, query.joint.query_bank
    if saved is None:
        raise SystemExit(f"{name} has no query bank: retrain it with imgsearch train joint")
    caps = joint.embed_text_features(encode_texts(query.text_encoder, dev.caption_texts))
    imgs = joint.embed_image_features(features.image_embeddings)
    caption_image = dev.caption_image_index()

    def row(setting: str, bank: QueryBank | None) -> dict:
        return {"model": name, "setting": setting,
                **figures(caps, imgs, caption_image, bank)}  # fmt: skip

    rows = [row("plain scores", None), row("default", saved)]
    for temperature in TEMPERATURES:
        for strength in STRENGTHS:
            bank = QueryBank(saved.texts, saved.images, temperature, strength)
            rows.append(row(f"T {temperature}, strength {strength}", bank))
    for size in BANK_SIZES:
        if size < len(saved.texts):
            bank = QueryBank(saved.texts[sample_rows(len(saved.texts), size)],
                             saved.images[sample_rows(len(saved.images), size)],
                             saved.temperature, saved.strength)  # fmt: skip
            rows.append(row(f"bank {size}", bank))
    return rows


def load_cost(bank_size: int, dims=(256, 1280, 1792), rows: int = 100_000) -> list[dict]:
    """Seconds to compute the bias of ``rows`` random unit vectors, scaled to a million."""
    rng = np.random.default_rng(0)
    out = []
    for dim in dims:
        gallery = rng.standard_normal((rows, dim)).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        bank = gallery[:bank_size].copy()
        started = time.perf_counter()
        gallery_bias(gallery, bank, DEFAULT_TEMPERATURE, DEFAULT_STRENGTH)
        seconds = time.perf_counter() - started
        out.append({"dim": dim, "bank": bank_size, "rows": rows, "seconds": seconds,
                    "seconds_per_million": seconds * 1e6 / rows})  # fmt: skip
    return out


def write_report(path: Path, rows: list[dict], cost: list[dict], models_dir: str) -> None:
    def cells(r: dict) -> str:
        t, i = r["text_to_image"], r["image_to_text"]
        return (
            " | ".join(f"{t[k]:.3f}" for k in KEYS)
            + " | "
            + " | ".join(f"{i[k]:.3f}" for k in KEYS)
        )

    lines = [
        "# Hubness correction with a query bank, Flickr8k dev",
        "",
        f"Generated by `benchmarks/hubness.py --models {models_dir}` (e.g. the `default` models "
        f"of `text_to_image.py`). Machine: {machine_line()}.",
        "",
        "Each model as `imgsearch train joint` saved it (its bank: 1,024 training captions and "
        "photos in its space) scored on the 1,000 dev photos with their 5,000 captions, exact "
        "scoring: `plain scores` ranks by dot product, `default` subtracts each item's bias "
        f"(`T {DEFAULT_TEMPERATURE}, strength {DEFAULT_STRENGTH}`, what `imgsearch eval` and the "
        "server use), the other rows change one knob (`bank N`: a sample of N of the bank's rows).",
        "",
        "| model | setting | text->image R@1 | R@5 | R@10 | image->text R@1 | R@5 | R@10 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["setting"]
        name = f"**{name}**" if name in ("plain scores", "default") else name
        lines.append(f"| {r['model']} | {name} | {cells(r)} |")
    lines += [
        "",
        "Cost of the bias at load (the server computes it once per index version, in the space "
        "queries search): random unit vectors against the bank, on this machine.",
        "",
        "| dim | bank | seconds per million rows |",
        "|---:|---:|---:|",
        *(f"| {c['dim']} | {c['bank']} | {c['seconds_per_million']:.1f} |" for c in cost),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", required=True, help="models saved by imgsearch train joint")
    parser.add_argument("--names", nargs="*", default=None, help="default: every joint model")
    parser.add_argument("--work", default="/tmp/imgsearch-hubness", help="dev features cache")
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/hubness.md"))
    add_flickr8k_arg(parser)
    args = parser.parse_args()
    dev = load_captioned_dataset(flickr8k_dir(parser, args), "dev")
    models_dir = Path(args.models)
    names = args.names or sorted(
        m.name for m in list_models(models_dir) if read_config(m.path).get("kind") in JOINT_KINDS
    )
    rows = [r for name in names for r in model_rows(models_dir, name, dev, Path(args.work))]
    cost = load_cost(DEFAULT_BANK_SIZE)
    report = Path(args.report)
    report.with_suffix(".json").write_text(json.dumps({"rows": rows, "load_cost": cost}, indent=1))
    write_report(report, rows, cost, args.models)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
