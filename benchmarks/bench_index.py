"""Index-job throughput next to the raw encoder, for float32 and int8, and memory as it grows.

Run: ``.venv/bin/python benchmarks/bench_index.py [--sizes 1000 3000 7091] [--workers 1 2]
[--encoders mobilenet_v2 mobilenet_v2_int8] [--int8-weights FILE.tflite]``

For each corpus size, worker count and encoder it runs the real ``imgsearch index``
(DirectRunner, in a subprocess whose whole process tree is sampled for peak RSS), just after
timing the same encoder alone on decoded photos in this process (the machine's speed drifts, so
each run has its own reference), and prints images/s of each run, its ratio to that tight loop,
int8's whole-run speed-up over float32 at the same size and workers, and the mean cosine of the
int8 run's stored vectors to float32's.

The int8 file is ``imgsearch quantize``'s, calibrated on the last 400 Flickr8k photos (what a
user does: calibrate on their own corpus), unless ``--int8-weights`` names one. The photos come
from the assets folder; nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks.machine import machine_line
from benchmarks.process_memory import tree_rss_bytes
from imgsearch import settings

FLOAT32, INT8 = "mobilenet_v2", "mobilenet_v2_int8"
CALIBRATION_PHOTOS = 400


def run_index(
    corpus: str, out: str, encoder: str, weights: str, workers: int
) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes of the whole process tree, and the job's summary."""
    cmd = [
        sys.executable, "-m", "imgsearch.cli", "index", "--corpus", corpus, "--out", out,
        "--encoder", encoder, "--weights", weights, "--batch_size", "32",
    ]  # fmt: skip
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
            peak = max(peak, tree_rss_bytes(ps))
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


def make_int8(photos: list[Path], weights: str, folder: Path) -> str:
    """``imgsearch quantize`` calibrated on ``photos`` (symlinked into a folder): its path."""
    calibration = folder / "calibration"
    calibration.mkdir()
    for path in photos:
        (calibration / path.name).symlink_to(path)
    out = folder / "mobilenet_v2_int8.tflite"
    cmd = [
        sys.executable, "-m", "imgsearch.cli", "quantize", "--encoder", FLOAT32, "--weights",
        weights, "--calibration", str(calibration), "--photos", str(len(photos)), "--out", str(out),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip
    print(f"quantized on {len(photos)} photos in {time.perf_counter() - started:.0f} s: {out}")
    return str(out)


class TightLoop:
    """Each encoder's model alone on decoded photos, in this process: the reference of a run.

    The machine's speed drifts (other tenants, thermal state), so each index run is compared
    with a tight loop of its own encoder timed just before it, not with one figure for all.
    """

    def __init__(self, paths: list[Path], encoders: dict[str, str], batch: int = 32) -> None:
        from encoders.base import EncoderSpec
        from encoders.imaging import decode_image
        from encoders.registry import create_image_encoder

        self.batch = batch
        self.encoders = {
            name: create_image_encoder(EncoderSpec(name=name, weights=weights))
            for name, weights in encoders.items()
        }
        size = next(iter(self.encoders.values())).input_size
        start = time.perf_counter()
        self.pixels = np.stack([decode_image(p.read_bytes(), size)[0] for p in paths])
        self.decode_rate = len(paths) / (time.perf_counter() - start)
        for encoder in self.encoders.values():
            encoder.encode(self.pixels[:batch])  # warm-up: tracing and first-call allocation

    def rate(self, name: str, rounds: int = 2) -> float:
        """Images/s of ``name`` over the photos, batch by batch (best of ``rounds``)."""
        encoder, best = self.encoders[name], float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, len(self.pixels), self.batch):
                encoder.encode(self.pixels[i : i + self.batch])
            best = min(best, time.perf_counter() - start)
        return len(self.pixels) / best


def paired_vectors(a_out: str, b_out: str) -> tuple[np.ndarray, np.ndarray]:
    """Two index outputs' stored vectors of the same images, row for row (sorted by id)."""
    from index.table import read_embedding_table, table_files

    a = read_embedding_table(table_files(a_out))
    b = read_embedding_table(table_files(b_out))
    if a.image_ids != b.image_ids:
        raise RuntimeError(f"{a_out} and {b_out} indexed different images")
    return a.embeddings, b.embeddings


def stored_cosine(float32_out: str, int8_out: str) -> tuple[float, float]:
    """(mean, 1st percentile) cosine between the two runs' stored vectors of the same images."""
    a, b = paired_vectors(float32_out, int8_out)
    cosine = (a * b).sum(axis=1)
    return float(cosine.mean()), float(np.percentile(cosine, 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 7091])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--encoders", nargs="+", default=[FLOAT32, INT8],
                        choices=[FLOAT32, INT8])  # fmt: skip
    parser.add_argument("--int8-weights", default=None, help="a .tflite (default: quantize one)")
    parser.add_argument("--raw-sample", type=int, default=640, help="images for the tight loop")
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "index.md"))
    parser.add_argument("--render", default=None, help="only rewrite the report from this JSON")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        args.sizes, args.workers = saved["sizes"], saved["workers"]
        summarise(saved["rows"], saved["tight_loop_runs"], saved["decode_only"], saved["machine"],
                  args)  # fmt: skip
        return 0

    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    images = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    float32_weights = str(assets / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5")
    machine = machine_line()
    print(f"{len(images)} Flickr8k photos; {machine}")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = {FLOAT32: float32_weights}
        if INT8 in args.encoders:
            weights[INT8] = args.int8_weights or make_int8(
                images[-CALIBRATION_PHOTOS:], float32_weights, Path(tmp)
            )
        weights = {name: weights[name] for name in args.encoders}
        tight = TightLoop(images[: args.raw_sample], weights)
        for size in args.sizes:
            subset = images[:size]
            corpus = Path(tmp) / f"corpus-{size}"
            corpus.mkdir()
            for path in subset:  # symlinks: the corpus is read in place, never copied
                (corpus / path.name).symlink_to(path)
            for workers in args.workers:
                outs = {}
                for name in args.encoders:
                    out = outs[name] = str(Path(tmp) / f"out-{size}-{workers}-{name}")
                    reference = tight.rate(name)
                    wall, peak, summary = run_index(str(corpus), out, name, weights[name], workers)
                    rows.append(dict(encoder=name, images=size, workers=workers, wall_s=wall,
                                     images_per_s=size / wall, tight_loop=reference,
                                     ratio_to_tight_loop=size / wall / reference,
                                     peak_rss_mib=peak / 2**20))  # fmt: skip
                    print(
                        f"index {size:5d} images, {workers} worker(s), {name}: {wall:7.1f} s "
                        f"{size / wall:6.1f} img/s (tight loop just before: {reference:.1f}, "
                        f"ratio {size / wall / reference:.2f})  peak RSS {peak / 2**20:7.0f} MiB"
                    )
                    print("   " + summary.replace("\n", "\n   "))
                if FLOAT32 in outs and INT8 in outs:
                    mean, p1 = stored_cosine(outs[FLOAT32], outs[INT8])
                    rows[-1].update(cosine_mean=mean, cosine_p1=p1)

    runs = {name: [r["tight_loop"] for r in rows if r["encoder"] == name] for name in weights}
    summarise(rows, runs, tight.decode_rate, machine, args)
    return 0


def summarise(rows: list[dict], runs: dict[str, list[float]], decode_rate: float, machine: str,
              args) -> None:  # fmt: skip
    """Speed-ups, ratios to the median tight loop, steady states; writes the report."""
    # Each encoder's median reference: one tight loop timed at a slow moment of the host would
    # otherwise make its run's ratio look better than it is (or worse, at a fast one).
    references = {name: float(np.median(times)) for name, times in runs.items()}
    for row in rows:
        row["ratio_to_median_tight_loop"] = row["images_per_s"] / references[row["encoder"]]
        base = next(
            (r for r in rows if r["encoder"] == FLOAT32 and r["images"] == row["images"]
             and r["workers"] == row["workers"]),
            None,
        )  # fmt: skip
        if base is not None:
            row["speedup_over_float32"] = row["images_per_s"] / base["images_per_s"]
    steady = steady_states(rows, references)
    write_report(Path(args.report), rows, steady, references, decode_rate, args, machine)
    payload = dict(machine=machine, sizes=args.sizes, workers=args.workers, rows=rows,
                   steady=steady, tight_loop=references, tight_loop_runs=runs,
                   decode_only=decode_rate)  # fmt: skip
    Path(args.report).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")


def steady_states(rows: list[dict], tight: dict[str, float]) -> list[dict]:
    """Per (encoder, workers): the extra images of the largest run over its extra seconds, which
    cancels the fixed start-up (interpreter, imports, model build, ScaNN build) of both runs."""
    found = []
    for name in tight:
        for workers in sorted({r["workers"] for r in rows}):
            runs = sorted(
                (r["images"], r["wall_s"])
                for r in rows
                if r["encoder"] == name and r["workers"] == workers
            )
            if len(runs) >= 2 and runs[-1][1] > runs[0][1]:
                (n1, t1), (n2, t2) = runs[0], runs[-1]
                marginal = (n2 - n1) / (t2 - t1)
                found.append(dict(encoder=name, workers=workers, from_images=n1, to_images=n2,
                                  images_per_s=marginal,
                                  ratio_to_tight_loop=marginal / tight[name],
                                  startup_s=t1 - n1 / marginal))  # fmt: skip
    return found


def write_report(
    path: Path, rows, steady, tight: dict[str, float], decode_rate: float, args, machine: str
) -> None:
    lines = [
        "# Index job throughput (generated by benchmarks/bench_index.py)",
        "",
        f"Machine: {machine}, CPU only. Encoders: MobileNetV2 224 float32 (Keras, ImageNet "
        "weights) and its selective int8 (`imgsearch quantize`, calibrated on 400 of the "
        "photos, LiteRT/XNNPACK), batch 32. Corpus: the first N Flickr8k photos (JPEGs about "
        f"500x375). Command: `bench_index.py --sizes {' '.join(map(str, args.sizes))} --workers "
        f"{' '.join(map(str, args.workers))}`.",
        "",
        "| encoder | images | workers | wall s | images/s | its tight loop just before, "
        "images/s | ratio to it | ratio to the median tight loop | int8 / float32 | cosine to "
        "float32 | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup_over_float32']:.2f}" if "speedup_over_float32" in r else ""
        cosine = f"{r['cosine_mean']:.4f} (p1 {r['cosine_p1']:.4f})" if "cosine_mean" in r else ""
        lines.append(
            f"| {r['encoder']} | {r['images']} | {r['workers']} | {r['wall_s']:.1f} | "
            f"{r['images_per_s']:.1f} | {r['tight_loop']:.1f} | {r['ratio_to_tight_loop']:.2f} "
            f"| {r['ratio_to_median_tight_loop']:.2f} | {speedup} | {cosine} "
            f"| {r['peak_rss_mib']:.0f} |"
        )
    lines.append("")
    for s in steady:
        line = (
            f"Steady state, {s['encoder']}, {s['workers']} worker(s), from {s['from_images']} to "
            f"{s['to_images']} images: {s['images_per_s']:.1f} images/s, ratio to its median tight "
            "loop "
            f"{s['ratio_to_tight_loop']:.2f}; fixed cost (start-up, index build) "
            f"{s['startup_s']:.1f} s."
        )
        print(line)
        lines += [line, ""]
    lines += [
        f"Tight loop: the encoder alone on {args.raw_sample} decoded photos, batch 32, best of "
        "2, timed in this process just before each run; each run's ratio is to it and to the "
        "median of those references (the host's speed drifts between runs: a reference timed "
        "at a slow moment makes its run's ratio look better than it is); the medians: "
        + ", ".join(f"{name} {rate:.1f} images/s" for name, rate in tight.items())
        + f"; decode only (one thread): {decode_rate:.1f} images/s.",
        "",
        "Wall time includes process start, imports, model load, the near-duplicate step and the "
        "ScaNN build; the tight loop is the model alone on decoded pixels.",
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    sys.exit(main())
