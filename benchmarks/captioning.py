"""Caption quality of a trained captioner on Flickr8k dev: BLEU-1..4, CIDEr and examples.

Run: ``.venv/bin/python benchmarks/captioning.py --models MODELS_DIR [--images 1000]
[--dataset DIR] [--split dev] [--cache DIR] [--report benchmarks/results/captioning.md]``

Loads the models directory's latest ``captioner`` (``imgsearch train captioner``), computes the
split's spatial feature maps (cached, ``training.spatial_features``), decodes every image with
beam search (beam 3) and scores the captions against the five human ones with pycocoevalcap's
BLEU and CIDEr(-D) on the project tokenizer's words. Also a greedy (beam 1) decode for
comparison. Figures are printed and written to ``--report``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path

import numpy as np

from encoders.base import EncoderSpec
from encoders.captioner import Captioner
from imgsearch import settings
from models.artifacts import code_version, read_metadata, resolve_version
from training.captioner import caption_metrics
from training.captions import load_captioned_dataset
from training.spatial_features import spatial_features


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--name", default="captioner")
    assets = settings.assets_dir()
    default_dataset = str(assets / "datasets" / "flickr8k") if assets else None
    parser.add_argument("--dataset", default=default_dataset)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--cache", default="/tmp/imgsearch-caption-cache")
    parser.add_argument("--examples", type=int, default=10)
    parser.add_argument("--report", default="benchmarks/results/captioning.md")
    args = parser.parse_args()

    folder = resolve_version(args.models, args.name)
    metadata = read_metadata(folder)
    captioner = Captioner.load(folder)
    spec = EncoderSpec.from_json(
        {k: v for k, v in metadata["image_encoder"].items() if k != "encoder_id"}
    )
    dataset = load_captioned_dataset(args.dataset, args.split)
    images = dataset.images[: args.images]
    spatial, encoder_id = spatial_features(images, spec, args.cache)
    if encoder_id != captioner.config.image_encoder_id:
        raise SystemExit(f"captioner takes {captioner.config.image_encoder_id}, got {encoder_id}")
    spatial = np.asarray(spatial, np.float32)
    references = dataset.captions_by_image()
    refs = [references[name] for name, _ in images]
    rows = {}
    generated = {}
    for beam in (3, 1):
        started = time.perf_counter()
        out = captioner.caption(spatial, beam=beam)
        seconds = time.perf_counter() - started
        texts = [text for text, _ in out]
        generated[beam] = out
        rows[beam] = {
            **caption_metrics(texts, refs),
            "distinct": len(set(texts)),
            "ms_per_image": 1000 * seconds / len(images),
        }
        print(f"beam {beam}: {rows[beam]}")

    training = metadata.get("training_config", {})
    lines = [
        f"# Captioning: {metadata['model_name']} on {dataset.layout} {args.split}",
        "",
        f"`python benchmarks/captioning.py --models {args.models} --images {args.images}` — "
        f"{code_version()}, {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}.",
        "",
        f"Model `{metadata['model_name']}/{metadata['version']}`: MobileNetV2 7x7x1280 maps -> "
        f"GRU {captioner.config.units} units with additive attention "
        f"({captioner.config.attention_dim}), vocabulary {captioner.config.vocab_size} words; "
        f"trained on {metadata['dataset']['captions_used']} captions of "
        f"{metadata['dataset']['images_used']} {metadata['dataset']['split']} images for "
        f"{len(metadata['history'])} epochs in {training.get('seconds')} s on this machine's "
        f"CPU cores (loss {metadata['history'][0]['loss']} -> {metadata['history'][-1]['loss']}).",
        "",
        f"{len(images)} {args.split} images, 5 human references each; pycocoevalcap BLEU and "
        "CIDEr-D on lower-cased words without punctuation.",
        "",
        "| decoding | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr | distinct captions | ms/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for beam, r in rows.items():
        lines.append(
            f"| {'beam 3' if beam == 3 else 'greedy'} | {r['BLEU-1']:.3f} | {r['BLEU-2']:.3f} | "
            f"{r['BLEU-3']:.3f} | {r['BLEU-4']:.3f} | {r['CIDEr']:.3f} | {r['distinct']} | "
            f"{r['ms_per_image']:.1f} |"
        )
    lines += ["", "Examples (beam 3; first two human captions):", ""]
    for (name, _), (text, score) in list(zip(images, generated[3], strict=True))[: args.examples]:
        lines.append(f"- `{name}`: **{text}** (mean log-prob {score:.2f}) — human: "
                     + " / ".join(references[name][:2]))  # fmt: skip
    lines.append("")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines))
    print(json.dumps(rows, indent=2))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
