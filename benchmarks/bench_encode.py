"""Image encoding throughput: decode-only ceiling, model only, and the two overlapped.

Run: ``.venv/bin/python benchmarks/bench_encode.py [--images 512] [--threads N]``

For each device this process can use (the CPU always; the first GPU when TensorFlow sees one)
it builds MobileNetV2 with that device's inference policy (``encoders.inference_policy``) and
measures, on real photos from the assets folder:

* decode only: ``encoders.imaging.decode_image`` on ``--threads`` threads, no model. The
  ceiling of any encoder fed by this host's CPUs.
* model only: ``encoder.encode`` on already decoded pixels, in the policy's chunk size.
* overlapped: ``encoders.overlap.encode_overlapped``, decode threads feeding the model.

Two corpora: Flickr8k (224x224 JPEGs, cheap to decode) and COCO (full-size JPEGs, 640x480
typical, the realistic case).

Then the int8 encoder beside float32 (``--int8-photos 1000``; ``0`` skips it): ``imgsearch
quantize``'s conversion calibrated on the last 400 Flickr8k photos, measured on the first
``--int8-photos`` (disjoint): model-only images/s of both, timed in alternating rounds on the same
pixels (the ratio is what counts on a shared machine), mean and 1st-percentile cosine of the int8
vectors to float32's, and each encoder's peak RSS in a fresh process (build + encode 256 photos).

Writes ``benchmarks/results/encode.md`` and ``encode.json`` (the capacity plan reads the JSON's
``rows``). Anchor (clip-retrieval, ViT-B/32): ~1,500 images/s on one consumer GPU, ~2,500/s per
A100, limited by resizing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_model
from encoders.base import EncoderSpec
from encoders.imaging import decode_image
from encoders.inference_policy import (
    CPU_POLICY,
    InferencePolicy,
    choose_policy,
    detect_accelerators,
)
from encoders.overlap import encode_overlapped
from imgsearch import settings

RESULTS = REPO / "benchmarks" / "results"
SIZE = (224, 224)


def _corpora(assets: Path, count: int) -> dict[str, list[bytes]]:
    flickr = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:count]
    coco = sorted((assets / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))
    coco += sorted((assets / "datasets" / "coco-mini" / "train2017").glob("*.jpg"))
    # Cycle the 239 COCO photos up to the same count: decode cost is per image, not per file.
    coco = [coco[i % len(coco)] for i in range(count)] if coco else []
    return {
        "flickr8k 224x224": [p.read_bytes() for p in flickr],
        "coco full-size": [p.read_bytes() for p in coco],
    }


def _decode(data: bytes) -> np.ndarray:
    return decode_image(data, SIZE)[0]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def decode_only(images: list[bytes], threads: int) -> float:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(_decode, images[:32]))  # warm the pool and Pillow
        start = time.perf_counter()
        list(pool.map(_decode, images))
        return _rate(len(images), time.perf_counter() - start)


def model_only(encoder, pixels: np.ndarray) -> float:
    encoder.encode(pixels[: encoder.policy.chunk_size])  # trace / XLA-compile outside the clock
    start = time.perf_counter()
    encoder.encode(pixels)
    return _rate(len(pixels), time.perf_counter() - start)


def overlapped(encoder, images: list[bytes], threads: int) -> float:
    chunk = encoder.policy.chunk_size
    start = time.perf_counter()
    results = list(
        encode_overlapped(encoder, images, _decode, batch_size=chunk, decode_threads=threads)
    )
    seconds = time.perf_counter() - start
    assert all(error is None for _, _, error in results)
    return _rate(len(images), seconds)


def measure(policy: InferencePolicy, corpora, weights: str, threads: int) -> list[dict]:
    from encoders.keras_image import KerasImageEncoder

    encoder = KerasImageEncoder(EncoderSpec(weights=weights), policy)
    rows = []
    for name, images in corpora.items():
        if not images:
            continue
        with ThreadPoolExecutor(threads) as pool:
            pixels = np.stack(list(pool.map(_decode, images)))
        row = {
            "device": policy.describe(),
            "corpus": name,
            "images": len(images),
            "decode_only": decode_only(images, threads),
            "model_only": model_only(encoder, pixels),
            "overlapped": overlapped(encoder, images, threads),
        }
        print(
            f"{row['device']:<45} {name:<18} decode {row['decode_only']:8.1f}/s  "
            f"model {row['model_only']:8.1f}/s  overlapped {row['overlapped']:8.1f}/s",
            flush=True,
        )
        rows.append(row)
    return rows


def _rss_child(name: str, weights: str, photos: list[str]) -> None:
    """In a fresh process: build ``name``, encode the photos, print peak RSS in MiB."""
    from encoders.registry import create_image_encoder

    encoder = create_image_encoder(EncoderSpec(name=name, weights=weights))
    pixels = np.stack([_decode(Path(p).read_bytes()) for p in photos])
    encoder.encode(pixels)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent
    # across exec, so a child of this (large) benchmark process would report the parent's peak.
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)


def peak_rss_mib(name: str, weights: str, photos: list[Path]) -> float:
    answer = subprocess.run(
        [sys.executable, __file__, "--rss-child", name, weights, *map(str, photos)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(answer.stdout.strip().splitlines()[-1])


def measure_int8(assets: Path, weights: str, count: int, rounds: int = 3) -> dict:
    """float32 MobileNetV2 and its selective int8, side by side on real Flickr8k photos."""
    from encoders.keras_backbones import resolve_weights
    from encoders.keras_image import KerasImageEncoder, build_embedding_models
    from encoders.quantize import quantize_embedding_model
    from encoders.tflite_image import TfliteImageEncoder

    photos = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    evaluation, calibration = photos[:count], photos[-400:]
    if len(photos) < count + 400:
        raise SystemExit(f"need {count + 400} Flickr8k photos, found {len(photos)}")
    decode = lambda paths: np.stack([_decode(p.read_bytes()) for p in paths])  # noqa: E731
    float32 = KerasImageEncoder(EncoderSpec(weights=weights), CPU_POLICY)
    started = time.perf_counter()
    keras_weights = resolve_weights("mobilenet_v2", weights).keras_weights
    model = build_embedding_models("mobilenet_v2", keras_weights, 224)[0]
    quantized = quantize_embedding_model(model, decode(calibration))
    quantize_seconds = time.perf_counter() - started
    path = Path(tempfile.mkdtemp(prefix="bench-int8-")) / "mobilenet_v2_int8.tflite"
    path.write_bytes(quantized.tflite)
    int8 = TfliteImageEncoder(EncoderSpec(name="mobilenet_v2_int8", weights=str(path)))

    pixels = decode(evaluation)
    reference, vectors = float32.encode(pixels), int8.encode(pixels)
    cosine = (reference * vectors).sum(axis=1)
    timed = pixels[:320]
    times: dict[str, list[float]] = {"float32": [], "int8": []}
    for _ in range(rounds):  # alternate, so both see the same load on a shared machine
        for label, encoder in (("float32", float32), ("int8", int8)):
            start = time.perf_counter()
            encoder.encode(timed)
            times[label].append(time.perf_counter() - start)
    rate = {label: len(timed) / float(np.median(t)) for label, t in times.items()}
    result = {
        "photos": count,
        "calibration_photos": len(calibration),
        "kept_float": len(quantized.denylist),
        "quantize_seconds": round(quantize_seconds, 1),
        "tflite_mib": round(len(quantized.tflite) / 2**20, 2),
        "threads": int8.num_threads,
        "float32_images_per_s": rate["float32"],
        "int8_images_per_s": rate["int8"],
        "speedup": rate["int8"] / rate["float32"],
        "cosine_mean": float(cosine.mean()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_min": float(cosine.min()),
        "float32_peak_rss_mib": peak_rss_mib("mobilenet_v2", weights, evaluation[:256]),
        "int8_peak_rss_mib": peak_rss_mib("mobilenet_v2_int8", str(path), evaluation[:256]),
    }
    print(
        f"int8 vs float32 on {count} Flickr8k photos: {rate['int8']:.1f} vs "
        f"{rate['float32']:.1f} images/s ({result['speedup']:.2f}x), cosine mean "
        f"{result['cosine_mean']:.4f} p1 {result['cosine_p1']:.4f}",
        flush=True,
    )
    return result


def _int8_lines(int8: dict) -> list[str]:
    return [
        "## int8 (mobilenet_v2_int8) beside float32 (mobilenet_v2)",
        "",
        f"Selective int8 TFLite (LiteRT, XNNPACK, {int8['threads']} threads), calibrated on "
        f"{int8['calibration_photos']} Flickr8k photos with the {int8['kept_float']} layers of "
        f"worst rmse/scale kept in float ({int8['quantize_seconds']} s to quantize, "
        f"{int8['tflite_mib']} MiB file); measured on {int8['photos']} other Flickr8k photos. "
        "Images/s: model only on the same 320 decoded photos, float32 and int8 timed in "
        "alternating rounds (median of 3), so the ratio holds on a shared machine even when "
        "the absolute figures do not. Peak RSS: a fresh process that builds the encoder and "
        "encodes 256 photos (the int8 one imports no TensorFlow).",
        "",
        "| encoder | images/s | ratio | cosine to float32 mean | p1 | min | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| mobilenet_v2 (float32, Keras) | {int8['float32_images_per_s']:,.1f} | 1.00 | 1 | 1 "
        f"| 1 | {int8['float32_peak_rss_mib']:,.0f} |",
        f"| mobilenet_v2_int8 (TFLite) | {int8['int8_images_per_s']:,.1f} | "
        f"{int8['speedup']:.2f} | {int8['cosine_mean']:.4f} | {int8['cosine_p1']:.4f} | "
        f"{int8['cosine_min']:.4f} | {int8['int8_peak_rss_mib']:,.0f} |",
        "",
        "Targets (issue 21): >= 2.5x float32's images/s, mean cosine >= 0.99.",
        "",
    ]


def write_results(
    rows: list[dict], args, seconds: float, gpu_seen: bool, int8: dict | None = None
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_cores": os.cpu_count(),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "gpu_seen": gpu_seen,
        "seconds": round(seconds, 1),
    }
    payload = {"meta": meta, "rows": rows, **({"int8": int8} if int8 else {})}
    (RESULTS / "encode.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Image encoding throughput (generated by benchmarks/bench_encode.py)",
        "",
        f"Run {meta['run_at']}, {meta['seconds']} s. Machine: {meta['cpu_cores']} cores "
        f"({meta['cpu_model']}), "
        f"{meta['platform']}; load average before {meta['load_average'][0]:.1f} (other "
        f"processes share these cores, so absolute figures are noisy). Decode threads: "
        f"{args.threads}. Encoder: MobileNetV2 224 (ImageNet weights).",
        "",
        "| device / policy | corpus | images | decode only /s | model only /s | overlapped /s "
        "| in turn /s | overlapped / min(decode, model) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bound = min(r["decode_only"], r["model_only"])
        in_turn = 1 / (1 / r["decode_only"] + 1 / r["model_only"])
        lines.append(
            f"| {r['device']} | {r['corpus']} | {r['images']} | {r['decode_only']:,.1f} | "
            f"{r['model_only']:,.1f} | {r['overlapped']:,.1f} | {in_turn:,.1f} | "
            f"{r['overlapped'] / bound:.2f} |"
        )
    lines += [
        "",
        "Decode only is the ceiling set by this host's CPUs for any model; overlapped close to "
        "min(decode, model) means decode and inference run concurrently. On a CPU-only host "
        "both compete for the same cores, so the realistic figure there is 'in turn' "
        "(1 / (1/decode + 1/model)); the overlap pays off when the model runs on a GPU.",
        "",
        (
            "GPU: measured above."
            if gpu_seen
            else "GPU: not measured (no GPU visible to this run). On a GPU the same script "
            "adds rows for the GPU policy (mixed float16 on tensor-core GPUs, XLA)."
        ),
        "Anchor: clip-retrieval reports ~1,500 images/s on one consumer GPU and ~2,500/s per "
        "A100 for ViT-B/32, limited by resizing (its decode-only ceiling).",
        "",
        *(_int8_lines(int8) if int8 else []),
    ]
    (RESULTS / "encode.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'encode.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per corpus")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--int8-photos", type=int, default=1000, help="0 skips the int8 part")
    if sys.argv[1:2] == ["--rss-child"]:
        _rss_child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        sys.exit(settings.describe_assets_layout())
    started = time.perf_counter()
    corpora = _corpora(assets, args.images)
    accelerators = detect_accelerators()
    policies = [CPU_POLICY]
    if accelerators:
        policies.append(choose_policy(accelerators))
    rows = []
    for policy in policies:
        rows += measure(policy, corpora, args.weights, args.threads)
    int8 = measure_int8(assets, args.weights, args.int8_photos) if args.int8_photos else None
    write_results(rows, args, time.perf_counter() - started, bool(accelerators), int8)


if __name__ == "__main__":
    main()
