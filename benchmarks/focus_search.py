"""Focused image search on COCO-mini val2017: precision@5 of the focused class, focused vs plain.

Run: ``.venv/bin/python benchmarks/focus_search.py [--dataset DIR] [--report
benchmarks/results/focus_search.md]``

Encodes the 159 val2017 photos with the real MobileNetV2 (``create_image_encoder``, the
assets' ImageNet weights, the index job's decode path), keeping each photo's 7x7x1280 feature
map. The index is the photos' plain unit vectors, searched exactly (for 159 vectors ScaNN is
brute force anyway). For every query photo with two or more COCO classes
(``instances_val2017.json``) and every one of its classes that the focus vocabulary resolves
(``encoders.focus.FocusVocabulary`` over the ImageNet head and GloVe), the top 5 neighbours
(the query itself left out) are counted as hits when they contain that class: the plain query
against the focused ones (CAM and channel re-weighting, with the focus classes mixed by the
image's probabilities or uniformly). Figures are printed and written to ``--report``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_model
from encoders.base import EncoderSpec
from encoders.focus import (
    DEFAULT_METHOD,
    FocusVocabulary,
    UnknownFocus,
    class_vector,
    focused_vector,
)
from encoders.glove import load_glove
from encoders.imaging import decode_image
from encoders.registry import create_image_encoder
from encoders.tags import TagHead, resolve_tag_head
from imgsearch import settings

K = 5
CLASS_ONLY = "class direction alone (reference)"
VARIANTS = {  # name -> (method, mix the focus classes by the image's probabilities)
    "cam": ("cam", True),
    "cam, uniform mix": ("cam", False),
    "channels": ("channels", True),
    "channels, uniform mix": ("channels", False),
    "channels + class": ("channels+class", True),
    "channels + class, uniform mix": ("channels+class", False),
}


def coco_classes(annotations: Path) -> tuple[dict[str, set[str]], list[str]]:
    """file name -> its COCO class names, and every class name in COCO's order."""
    data = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {image["id"]: image["file_name"] for image in data["images"]}
    classes: dict[str, set[str]] = collections.defaultdict(set)
    for annotation in data["annotations"]:
        classes[files[annotation["image_id"]]].add(names[annotation["category_id"]])
    return classes, [c["name"] for c in data["categories"]]


def precision_at_k(scores: np.ndarray, query: int, wanted: np.ndarray) -> float:
    order = [j for j in np.argsort(-scores, kind="stable") if j != query][:K]
    return float(np.mean(wanted[order]))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    assets = settings.assets_dir()
    default = str(assets / "datasets" / "coco-mini") if assets else None
    parser.add_argument("--dataset", default=default)
    parser.add_argument("--report", default="benchmarks/results/focus_search.md")
    args = parser.parse_args()
    root = Path(args.dataset)
    photos = sorted((root / "val2017").glob("*.jpg"))
    labels_of, class_names = coco_classes(root / "annotations" / "instances_val2017.json")

    started = time.perf_counter()
    encoder = create_image_encoder(EncoderSpec("mobilenet_v2", "auto", 224))
    pixels = np.stack([decode_image(p.read_bytes(), size=encoder.input_size)[0] for p in photos])
    embeddings, pooled, spatial = encoder.encode_with_features(pixels)
    encode_s = time.perf_counter() - started
    head = TagHead.load(resolve_tag_head("auto"))
    probabilities = head.probabilities(pooled)
    vocabulary = FocusVocabulary(head.synonyms, load_glove())

    mapping: dict[str, str] = {}
    targets = {}
    for name in class_names:
        try:
            target = vocabulary.resolve(name)
        except UnknownFocus as exc:
            mapping[name] = f"no match (nearest: {', '.join(exc.nearest[:3])})"
            continue
        targets[name] = target
        shown = ", ".join(target.labels[:4]) + (
            f" (+{len(target.labels) - 4})" if len(target.labels) > 4 else ""
        )
        mapping[name] = f"{target.match}: {shown}"

    contains = {
        name: np.array([name in labels_of.get(p.name, set()) for p in photos]) for name in targets
    }
    results: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    queries = skipped = 0
    vectors_s = 0.0
    for q, photo in enumerate(photos):
        present = labels_of.get(photo.name, set())
        if len(present) < 2:
            continue
        queries += 1
        for name in sorted(present):
            if name not in targets:
                skipped += 1
                continue
            wanted = contains[name]
            results[name]["plain"].append(precision_at_k(embeddings @ embeddings[q], q, wanted))
            for variant, (method, mixed) in VARIANTS.items():
                t0 = time.perf_counter()
                vector = focused_vector(spatial[q], head.kernel, targets[name].classes, method,
                                        probabilities[q] if mixed else None)  # fmt: skip
                vectors_s += time.perf_counter() - t0
                results[name][variant].append(precision_at_k(embeddings @ vector, q, wanted))
            # Reference, not a focus method: the class direction alone ignores the query photo
            # (every query of a class gets the same neighbours), the most P@5 can reward.
            direction = class_vector(head.kernel, targets[name].classes)
            results[name][CLASS_ONLY].append(precision_at_k(embeddings @ direction, q, wanted))

    columns = ["plain", *VARIANTS, CLASS_ONLY]
    pairs = sum(len(r["plain"]) for r in results.values())
    overall = {c: np.mean([v for r in results.values() for v in r[c]]) for c in columns}
    macro = {c: np.mean([np.mean(r[c]) for r in results.values()]) for c in columns}
    machine = f"{os.cpu_count()} cores ({cpu_model()}), {platform.platform()}"
    lines = [
        "# Focused image search: precision@5 of the focused class",
        "",
        "Written by `benchmarks/focus_search.py` (rerun it to refresh). COCO-mini val2017: "
        f"{len(photos)} photos indexed with MobileNetV2 ({encoder.encoder_id}),"
        " plain unit vectors, exact search. Queries: every photo with two or more COCO classes "
        f"({queries}), once per class of it the focus vocabulary resolves: {pairs} (query, class) "
        f"pairs; {skipped} pairs skipped for a class with no ImageNet match (mostly `person`). "
        f"A neighbour (top {K}, the query left out) is a hit when it contains the focused class. "
        f"The last column is a reference, not a focus method: the head's class direction alone "
        f"as the query, which ignores the photo (every query of a class gets the same "
        f"neighbours), so it shows how much of P@5 a query can earn without being similar.",
        "",
        f"Machine: {machine}. Encoding {len(photos)} photos (decode + CNN): {encode_s:.1f} s; "
        f"a focused vector from a stored map: "
        f"{1000 * vectors_s / max(1, pairs * len(VARIANTS)):.2f} ms. Default method: "
        f"`{DEFAULT_METHOD}` (uniform mix).",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        "| P@5, all pairs | " + " | ".join(f"{overall[c]:.3f}" for c in columns) + " |",
        "| P@5, mean over classes | " + " | ".join(f"{macro[c]:.3f}" for c in columns) + " |",
        "",
        "Per class (pairs: queries showing the class; classes with at least 3 pairs):",
        "",
        "| class | pairs | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name in sorted(results, key=lambda n: -len(results[n]["plain"])):
        if len(results[name]["plain"]) >= 3:
            figures = " | ".join(f"{np.mean(results[name][c]):.2f}" for c in columns)
            lines.append(f"| {name} | {len(results[name]['plain'])} | {figures} |")
    lines += [
        "",
        "Which ImageNet labels each COCO class name resolves to (`label`: a label or synonym; "
        "`term`: a head noun or hypernym of labels; `glove`: nearest labels in GloVe 50-d):",
        "",
        "| COCO class | focus classes |",
        "|---|---|",
        *[f"| {name} | {mapping[name]} |" for name in class_names],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    Path(args.report).write_text(report)


if __name__ == "__main__":
    main()
