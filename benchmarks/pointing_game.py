"""The pointing game for "why this image" heatmaps, on COCO-mini val2017.

Run (after training a joint model, e.g. the demo's quick dual encoder over plain MobileNetV2):
``imgsearch train joint --dataset ../shared/assets/datasets/flickr8k --split train --out MODELS
--text-encoder tfidf --kind dual --finetune-blocks 0 --ensemble 1 --encoder mobilenet_v2`` then
``.venv/bin/python benchmarks/pointing_game.py --models MODELS``.

The real index job indexes the val2017 photos with the model's image encoder; for every photo
showing at least two object classes and every class in it the text encoder knows, the served
explanation (``serving.explain_routes.explain``) of "a photo of a <class>" is asked where its
peak is. A hit: the peak lies inside (or within ``--tolerance`` pixels of) a box of that class
(Zhang et al., "Top-down Neural Attention by Excitation Backprop", 2016). Baselines: the photo's
centre, and the peak of the class-agnostic feature energy (``|S[i, j]|``: where the CNN fires,
whatever the query). Occlusion checks the gradient: a grey patch slid over the encoder's crop,
the score drop per position, its peak's pointing accuracy, and its correlation with the signed
Grad-CAM averaged over the same patches. Also the latency of one whole explanation (read,
decode, CNN pass, gradient, PNG). Writes ``benchmarks/results/pointing_game.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from benchmarks.machine import cpu_model
from encoders import saliency
from encoders.base import l2_normalize
from encoders.imaging import decode_image
from imgsearch import settings
from models.joint import joint_model_image_encoder
from pipelines import index_job
from serving.explain_routes import explain, explanation_png
from serving.state import QueryModels, load_bundle

PATCH, STRIDE = 64, 32  # occlusion over the 224 x 224 crop: 6 x 6 positions
GREY = 128


def boxes_by_photo(annotations: Path) -> tuple[dict[str, dict[str, list]], dict[str, tuple]]:
    """file stem -> class name -> [x, y, w, h] boxes; and file stem -> (width, height)."""
    data = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    stems = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
    sizes = {Path(im["file_name"]).stem: (im["width"], im["height"]) for im in data["images"]}
    boxes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for a in data["annotations"]:
        if not a.get("iscrowd"):
            boxes[stems[a["image_id"]]][names[a["category_id"]]].append(a["bbox"])
    return boxes, sizes


def inside(point: tuple[float, float], boxes: list, tolerance: float) -> bool:
    x, y = point
    return any(
        bx - tolerance <= x <= bx + bw + tolerance and by - tolerance <= y <= by + bh + tolerance
        for bx, by, bw, bh in boxes
    )


def seen(boxes: list, crop: tuple[float, float, float, float]) -> list:
    """Boxes that overlap the part of the photo the encoder sees."""
    left, top, right, bottom = crop
    return [b for b in boxes if b[0] < right and b[0] + b[2] > left and b[1] < bottom
            and b[1] + b[3] > top]  # fmt: skip


def occlusion_scores(encoder, pixels: np.ndarray, targets: np.ndarray, layers) -> np.ndarray:
    """``(T, 6, 6)`` score drops for each target when a grey patch covers each position."""
    positions = range(0, pixels.shape[0] - PATCH + 1, STRIDE)
    batch = []
    for top in positions:
        for left in positions:
            occluded = pixels.copy()
            occluded[top : top + PATCH, left : left + PATCH] = GREY
            batch.append(occluded)
    _, pooled, _ = encoder.encode_with_features(np.stack([pixels, *batch]))
    vectors = l2_normalize(pooled)
    for layer in layers:
        vectors = layer(vectors)
    scores = l2_normalize(vectors) @ targets.T  # (1 + P, T)
    side = len(positions)
    return (scores[0][None, :] - scores[1:]).T.reshape(len(targets), side, side)


def patch_means(cells: np.ndarray) -> np.ndarray:
    """The signed Grad-CAM averaged over each occlusion patch (at the crop's 224 px)."""
    heat = saliency.upsample(cells, (224, 224))
    positions = range(0, 224 - PATCH + 1, STRIDE)
    return np.array(
        [[heat[t : t + PATCH, s : s + PATCH].mean() for s in positions] for t in positions]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="models directory")
    parser.add_argument("--model", default=None, help="joint model name (default: the default)")
    parser.add_argument("--work", default="/tmp/imgsearch-pointing-game")
    parser.add_argument("--tolerance", type=float, default=15.0, help="pixels, as Zhang et al.")
    parser.add_argument("--occlusion-photos", type=int, default=40, help="photos occluded")
    parser.add_argument(
        "--report", default=str(REPO / "benchmarks" / "results" / "pointing_game.md")
    )
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores)", flush=True)
    coco = assets / "datasets" / "coco-mini"
    boxes, sizes = boxes_by_photo(coco / "annotations" / "instances_val2017.json")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.csv"
    photos = sorted((coco / "val2017").glob("*.jpg"))
    with corpus.open("w", newline="") as handle:
        csv.writer(handle).writerows([("uri", "id"), *((str(p), p.stem) for p in photos)])
    models = QueryModels.load(args.models, args.model)
    assert models.model_version is not None, "no joint model loaded"
    spec = joint_model_image_encoder(args.models, models.model_version[0])
    index_dir = work / "index"
    if not (index_dir / "manifest.json").is_file():
        encoder_args = ["--encoder", spec.name, "--weights", spec.weights,
                        "--image_size", str(spec.image_size)]  # fmt: skip
        index_job.run(["--corpus", str(corpus), "--out", str(index_dir), *encoder_args])
    bundle = load_bundle(str(index_dir), models)
    text = bundle.text
    assert text is not None, "the joint model did not load"
    encoder = bundle.images.image_encoder()
    layers = text.joint.image_layers

    hits = {"Grad-CAM peak": [], "centre of the photo": [], "feature-energy peak": []}
    occlusion = {"Grad-CAM peak": [], "occlusion peak": [], "correlation": []}
    small = []  # per pair: the class's boxes cover under a quarter of the photo ("difficult")
    negative_mass, latencies, skipped_unknown, pairs_photos = [], [], set(), 0
    for photo in photos:
        classes = boxes.get(photo.stem, {})
        if len(classes) < 2 or photo.stem not in sizes:
            continue
        width, height = sizes[photo.stem]
        crop = saliency.cover_box((width, height), encoder.input_size)
        wanted = []
        for name in sorted(classes):
            visible = seen(classes[name], crop)
            known = np.any(text.text_encoder.encode([name])[0])
            if not known:
                skipped_unknown.add(name)
            elif visible:
                wanted.append((name, visible))
        if not wanted:
            continue
        pairs_photos += 1
        pixels, _, _ = decode_image(photo.read_bytes(), size=encoder.input_size)
        _, _, spatial = encoder.encode_with_features(pixels[None])
        energy = np.linalg.norm(spatial[0], axis=-1)
        energy_peak = saliency.peak_point(energy, crop)
        centre = (width / 2, height / 2)
        for name, visible in wanted:
            started = time.perf_counter()
            found = explain(bundle, photo.stem, text=f"a photo of a {name}")
            explanation_png(found)
            latencies.append(time.perf_counter() - started)
            hits["Grad-CAM peak"].append(inside(found.peak(), visible, args.tolerance))
            hits["centre of the photo"].append(inside(centre, visible, args.tolerance))
            hits["feature-energy peak"].append(inside(energy_peak, visible, args.tolerance))
            small.append(sum(b[2] * b[3] for b in classes[name]) < 0.25 * width * height)
            positive, negative = found.positive.sum(), found.negative.sum()
            negative_mass.append(negative / max(positive + negative, 1e-12))
        if pairs_photos <= args.occlusion_photos:
            targets = l2_normalize(
                text.embed_queries([f"a photo of a {name}" for name, _ in wanted])
            )
            drops = occlusion_scores(encoder, pixels, targets, layers)
            for (name, visible), drop in zip(wanted, drops, strict=True):
                found = explain(bundle, photo.stem, text=f"a photo of a {name}")
                signed = found.positive - found.negative
                occlusion["Grad-CAM peak"].append(inside(found.peak(), visible, args.tolerance))
                occ_peak = saliency.peak_point(drop, crop)
                occlusion["occlusion peak"].append(inside(occ_peak, visible, args.tolerance))
                occlusion["correlation"].append(
                    float(np.corrcoef(patch_means(signed).ravel(), drop.ravel())[0, 1])
                )
        print(f"{photo.stem}: {', '.join(n for n, _ in wanted)}", flush=True)

    pairs = len(hits["Grad-CAM peak"])
    lat = np.array(latencies[1:] or latencies) * 1000  # the first call traces the CNN
    lines = [
        '# Pointing game: "why this image" heatmaps on COCO-mini val2017',
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} on {cpu_model()} "
        f"({os.cpu_count()} cores) by `benchmarks/pointing_game.py --models MODELS"
        f"{' --model ' + args.model if args.model else ''}`.",
        "",
        f"Joint model: {models.model_version[0]}/{models.model_version[1]} "
        f"({text.joint.kind}, text {text.text_encoder.encoder_id}, image {encoder.encoder_id}). "
        f"{pairs} (photo, class) pairs from {pairs_photos} photos showing two or more object "
        'classes; query "a photo of a <class>"; a hit when the point lies in a box of that '
        f"class or within {args.tolerance:g} px of one (boxes outside the encoder's centre crop "
        "are not counted). Classes the text encoder does not know were left out: "
        f"{', '.join(sorted(skipped_unknown)) or 'none'}.",
        "",
        "| pointer | hits | accuracy | small objects (boxes < 1/4 of the photo) |",
        "|---|---:|---:|---:|",
        *(
            f"| {k} | {sum(v)} / {len(v)} | {np.mean(v):.3f} | "
            f"{np.mean([h for h, s in zip(v, small, strict=True) if s]):.3f} ({sum(small)}) |"
            for k, v in hits.items()
        ),
        "",
        f"Negative map: on average {np.mean(negative_mass):.2f} of the Grad-CAM mass is "
        "negative (the map sums to zero before the ReLU: the cosine is scale-invariant).",
        "",
        f"Occlusion check on the first {min(pairs_photos, args.occlusion_photos)} photos "
        f"({len(occlusion['correlation'])} pairs; a {PATCH} px grey patch, stride {STRIDE}, "
        "over the 224 px crop):",
        "",
        "| | value |",
        "|---|---:|",
        f"| Grad-CAM peak accuracy | {np.mean(occlusion['Grad-CAM peak']):.3f} |",
        f"| occlusion-drop peak accuracy | {np.mean(occlusion['occlusion peak']):.3f} |",
        "| Pearson r, signed Grad-CAM per patch vs score drop (median) | "
        f"{np.median(occlusion['correlation']):.3f} |",
        "",
        f"Latency of one explanation through `serving.explain_routes.explain` + PNG "
        f"({len(lat)} calls after the first; read, two decodes, one CNN pass, gradient, PNG): "
        f"p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms "
        f"(1-minute load average at the end {os.getloadavg()[0]:.1f}: other work on the cores "
        "slows it).",
        "",
    ]
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
