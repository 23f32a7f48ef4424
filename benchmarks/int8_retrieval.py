"""Retrieval quality of the int8 encoder against float32, through the real commands.

Run: ``.venv/bin/python benchmarks/int8_retrieval.py [--work DIR]``

The same recipe on each encoder's vectors, on Flickr8k (the assets folder):

1. ``imgsearch quantize`` calibrated on 400 *train* photos (every 15th of the split);
2. ``imgsearch train joint --encoder E --finetune-blocks 0 --kind dual --ensemble 1
   --no-mixed`` on train, for ``E`` = ``mobilenet_v2`` and ``mobilenet_v2_int8`` (a joint model
   is trained on one encoder's vectors and refuses another's, so each encoder gets its own);
3. ``imgsearch eval --split dev`` with each models folder (1,000 dev photos, 5,000 captions).

Then it compares the two ``metrics.json`` (text->image and image->text R@K of the dual model,
the image index's ANN recall@10) and the two dev indexes' vectors (mean cosine, and how far each
photo's ten nearest neighbours agree). A step whose output is already in ``--work`` is not run
again. Writes ``benchmarks/results/int8_retrieval.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_index import paired_vectors
from benchmarks.machine import machine_line
from imgsearch import settings
from index.scann_index import exact_top_k

RESULTS = REPO / "benchmarks" / "results"
CALIBRATION_EVERY = 15
CALIBRATION_PHOTOS = 400
MODEL = "dual-minilm_tfidf"
TOLERANCE = 0.01  # issue 21's gate: R@10 within 0.01 of float32


def _run(args: list[str], log: Path) -> float:
    """Run ``imgsearch ARGS``; its seconds. The output goes to ``log``."""
    started = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "imgsearch.cli", *args], cwd=REPO, check=True, stdout=out,
            stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
    return time.perf_counter() - started


def neighbour_agreement(a_dir: Path, b_dir: Path, k: int = 10) -> dict[str, float]:
    """Mean cosine of the same photos' vectors, and the overlap of their k nearest neighbours
    (exact, ties to the lower row, each photo itself left out)."""
    a, b = paired_vectors(str(a_dir), str(b_dir))

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        top, _ = exact_top_k(vectors, vectors, k + 1)
        return np.stack([row[row != i][:k] for i, row in enumerate(top)])

    na, nb = neighbours(a), neighbours(b)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb, strict=True)])
    return {
        "photos": len(a),
        "cosine_mean": float((a * b).sum(axis=1).mean()),
        f"neighbour_overlap@{k}": float(overlap),
        "same_nearest": float(np.mean(na[:, 0] == nb[:, 0])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/imgsearch-int8-retrieval")
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    flickr = assets / "datasets" / "flickr8k"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    tflite = work / "mobilenet_v2_int8.tflite"
    if not tflite.is_file():
        calibration = work / "calibration"
        calibration.mkdir(exist_ok=True)
        train = (flickr / "splits" / "train.txt").read_text().split()
        for name in train[::CALIBRATION_EVERY][:CALIBRATION_PHOTOS]:
            link = calibration / name
            if not link.exists():
                link.symlink_to(flickr / "images" / name)
        seconds["quantize"] = _run(
            ["quantize", "--encoder", "mobilenet_v2", "--weights", "auto", "--calibration",
             str(calibration), "--out", str(tflite)], work / "quantize.log",
        )  # fmt: skip
    encoders = {
        "float32": ["--encoder", "mobilenet_v2", "--weights", "auto"],
        "int8": ["--encoder", "mobilenet_v2_int8", "--weights", str(tflite)],
    }
    metrics = {}
    for label, flags in encoders.items():
        models, out = work / f"models-{label}", work / f"eval-{label}"
        if not (models / MODEL).is_dir():
            seconds[f"train {label}"] = _run(
                ["train", "joint", "--dataset", str(flickr), "--split", "train", "--out",
                 str(models), *flags, "--finetune-blocks", "0", "--kind", "dual", "--ensemble",
                 "1", "--no-mixed"], work / f"train-{label}.log",
            )  # fmt: skip
        if not (out / "metrics.json").is_file():
            seconds[f"eval {label}"] = _run(
                ["eval", "--dataset", str(flickr), "--split", "dev", "--models", str(models),
                 "--family", "joint", "--out", str(out)], work / f"eval-{label}.log",
            )  # fmt: skip
        metrics[label] = json.loads((out / "metrics.json").read_text())
    agreement = neighbour_agreement(work / "eval-float32" / "index", work / "eval-int8" / "index")
    write_report(metrics, agreement, seconds)
    return 0


def _figures(report: dict) -> dict[str, dict[str, float]]:
    method = report["methods"][MODEL]
    return {
        "text_to_image": method["text_to_image"],
        "image_to_text": method["image_to_text"],
        "image_index_recall@10": report["ann"]["image_to_image"]["recall@10"],
    }


def write_report(metrics: dict, agreement: dict, seconds: dict[str, float]) -> None:
    figures = {label: _figures(report) for label, report in metrics.items()}
    f32, int8 = figures["float32"], figures["int8"]
    gate = {
        f"{direction}/R@10": round(int8[direction]["R@10"] - f32[direction]["R@10"], 4)
        for direction in ("text_to_image", "image_to_text")
    }
    passed = all(abs(delta) <= TOLERANCE for delta in gate.values())
    lines = [
        "# The int8 encoder's retrieval quality against float32 (generated by "
        "benchmarks/int8_retrieval.py)",
        "",
        f"Machine: {machine_line()}. Flickr8k: `imgsearch quantize` calibrated on "
        f"{CALIBRATION_PHOTOS} train photos; `imgsearch train joint` (dual, minilm_tfidf text "
        "features, frozen CNN, one seed) on train with each encoder; `imgsearch eval --split "
        "dev --family joint` (1,000 photos, 5,000 captions, exact scoring).",
        "",
        "| encoder | text->image R@1 | R@5 | R@10 | MRR | image->text R@1 | R@5 | R@10 | "
        "image index ANN recall@10 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, f in figures.items():
        t, i = f["text_to_image"], f["image_to_text"]
        lines.append(
            f"| {label} | {t['R@1']:.3f} | {t['R@5']:.3f} | {t['R@10']:.3f} | {t['MRR']:.3f} | "
            f"{i['R@1']:.3f} | {i['R@5']:.3f} | {i['R@10']:.3f} | "
            f"{f['image_index_recall@10']:.4f} |"
        )
    lines += [
        "",
        "int8 minus float32, R@10: "
        + ", ".join(f"{name} {delta:+.4f}" for name, delta in gate.items())
        + f" (gate: within {TOLERANCE}): **{'pass' if passed else 'FAIL'}**.",
        "",
        f"The same {agreement['photos']} dev photos through both encoders: mean cosine "
        f"{agreement['cosine_mean']:.4f}; their ten nearest neighbours (image->image, exact) "
        f"overlap {agreement['neighbour_overlap@10']:.3f}, the nearest is the same photo for "
        f"{agreement['same_nearest']:.3f} of them.",
        "",
        "Seconds (steps run this time; reused outputs are not timed): "
        + (", ".join(f"{step} {s:.0f}" for step, s in seconds.items()) or "none")
        + ".",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8_retrieval.md").write_text("\n".join(lines))
    payload = {"figures": figures, "gate": gate, "passed": passed, "agreement": agreement}
    (RESULTS / "int8_retrieval.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
