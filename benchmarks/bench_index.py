"""Index-job throughput next to the raw encoder, and memory as the corpus grows.

Run: ``.venv/bin/python benchmarks/bench_index.py [--sizes 1000 7091] [--workers 1 2]``

For each corpus size it runs the real ``imgsearch index`` (DirectRunner, in a subprocess whose
whole process tree is sampled for peak RSS), then, in this process, a tight loop calling the
same encoder on the same decoded images, and prints images/s of both and their ratio. The
Flickr8k photos come from the assets folder; nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch import settings


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_index(corpus: str, out: str, weights: str, workers: int) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes of the whole process tree, and the job's summary."""
    cmd = [
        sys.executable,
        "-m",
        "imgsearch.cli",
        "index",
        "--corpus",
        corpus,
        "--out",
        out,
        "--weights",
        weights,
        "--batch_size",
        "32",
    ]
    if workers > 1:
        cmd += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(ps))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"index failed:\n{stderr[-4000:]}")
    return wall, peak, stdout.strip()


def raw_encoder_rate(paths: list[Path], weights: str, batch: int = 32) -> tuple[float, float]:
    """(decode-only images/s, encode-only images/s) on the same images, in this process."""
    from encoders.base import EncoderSpec
    from encoders.imaging import decode_image
    from encoders.registry import create_image_encoder

    encoder = create_image_encoder(EncoderSpec(name="mobilenet_v2", weights=weights))
    start = time.perf_counter()
    pixels = np.stack([decode_image(p.read_bytes(), encoder.input_size)[0] for p in paths])
    decode_rate = len(paths) / (time.perf_counter() - start)
    encoder.encode(pixels[:batch])  # warm-up: tracing and first-call allocation
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        encoder.encode(pixels[i : i + batch])
    return decode_rate, len(pixels) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 7091])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--raw-sample", type=int, default=1000, help="images for the tight loop")
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "index.md"))
    args = parser.parse_args()

    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    images = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    weights = str(assets / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5")
    print(f"{len(images)} Flickr8k photos; {os.cpu_count()} cores")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            subset = images[:size]
            corpus = Path(tmp) / f"corpus-{size}"
            corpus.mkdir()
            for path in subset:  # symlinks: the corpus is read in place, never copied
                (corpus / path.name).symlink_to(path)
            for workers in args.workers:
                out = str(Path(tmp) / f"out-{size}-{workers}")
                wall, peak, summary = run_index(str(corpus), out, weights, workers)
                rows.append((size, workers, wall, size / wall, peak / 2**20))
                print(
                    f"index {size:5d} images, {workers} worker(s): {wall:7.1f} s "
                    f"{size / wall:6.1f} img/s  peak RSS {peak / 2**20:7.0f} MiB"
                )
                print("   " + summary.replace("\n", "\n   "))

    decode_rate, encode_rate = raw_encoder_rate(images[: args.raw_sample], weights)
    print(
        f"tight loop on {args.raw_sample} images: decode {decode_rate:.1f} img/s, "
        f"encode {encode_rate:.1f} img/s, decode+encode serial "
        f"{1 / (1 / decode_rate + 1 / encode_rate):.1f} img/s"
    )

    lines = [
        "# Index job throughput (generated by benchmarks/bench_index.py)",
        "",
        f"Machine: {os.cpu_count()} cores, CPU only. Encoder: MobileNetV2 (224, ImageNet), "
        "batch 32. Corpus: Flickr8k photos (224x224 JPEG).",
        "",
        "| images | workers | wall s | images/s | ratio to raw encoder | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size, workers, wall, rate, peak in rows:
        lines.append(
            f"| {size} | {workers} | {wall:.1f} | {rate:.1f} | "
            f"{rate / encode_rate:.2f} | {peak:.0f} |"
        )
        print(
            f"ratio pipeline/raw encoder at {size} images, {workers} worker(s): "
            f"{rate / encode_rate:.2f}"
        )
    # Steady state: the extra images of the larger run over the extra seconds, which cancels the
    # fixed start-up (interpreter, TensorFlow import, model build, ScaNN build) of both runs.
    for workers in args.workers:
        runs = sorted((size, wall) for size, w, wall, _, _ in rows if w == workers)
        if len(runs) >= 2 and runs[-1][1] > runs[0][1]:
            (n1, t1), (n2, t2) = runs[0], runs[-1]
            marginal = (n2 - n1) / (t2 - t1)
            line = (
                f"Steady state, {workers} worker(s), from {n1} to {n2} images: "
                f"{marginal:.1f} images/s, ratio to raw encoder {marginal / encode_rate:.2f}"
            )
            print(line)
            lines += ["", line + "."]
    lines += [
        "",
        f"Raw encoder tight loop ({args.raw_sample} decoded images, batch 32): "
        f"{encode_rate:.1f} images/s; decode only: {decode_rate:.1f} images/s.",
        "",
        "Wall time includes process start, TensorFlow import, model load and the ScaNN build.",
    ]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
