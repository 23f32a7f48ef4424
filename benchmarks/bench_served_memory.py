"""Bytes per image of a served index version, by how its vectors are stored and held.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_served_memory.py [--n 200000]``

1. Real 1280-d MobileNetV2 embeddings of the 1,000 Flickr8k dev photos (the index job, through
   ``training.features.dataset_features``), grown to ``--n`` as ``bench_ann.py`` grows them
   (interpolation towards real neighbours plus noise shaped like the data).
2. Two index versions of them, each a real Parquet table indexed by ``index.build`` (ScaNN tree
   + AH + rescoring at this size): a float32 table with float32 rescoring (the defaults), and
   an int8 table (``--embedding_storage int8``) with int8 rescoring (``--index_quantize int8``).
3. Each way of serving them is loaded as the server loads a version (``load_bundle``:
   checksums verified, ids, details, ScaNN, the held vectors) in a fresh process, after a
   25k-image version of the same kind (so imports and caches are not counted): its
   resident memory after the load minus before it, the load's peak above that, the time, the
   bytes the held vectors take, and the time of similar-to-id (which reads a held vector)
   over 500 images.

The figures are printed and written to ``benchmarks/results/served_memory.md`` (+ ``.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_ann import grow_embeddings
from benchmarks.bench_serving import write_table
from benchmarks.datasets import add_flickr8k_arg, flickr8k_dir
from benchmarks.machine import machine_line


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to serve: which version (its table storage = its ScaNN rescoring), and how the
    server holds the table's vectors (``--vectors-in-memory``)."""

    name: str
    storage: str
    held: str  # "stored", "float16" or "int8"


WAYS = (
    Way("float32 table and rescoring, held as stored (the defaults)", "float32", "stored"),
    Way("float32 table and rescoring, held as float16", "float32", "float16"),
    Way("float32 table and rescoring, held as int8", "float32", "int8"),
    Way("int8 table and rescoring, held as stored", "int8", "stored"),
)

# Run in a fresh process per way, so one way's freed memory does not hide the next one's.
_PROBE = r"""
import gc, json, re, sys, time
import numpy as np, psutil
from serving.state import QueryModels, load_bundle
out, warm, held = sys.argv[1], sys.argv[2], sys.argv[3]

def peak_kib():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1))

precision = None if held == "stored" else held
# A small version of the same kind first: what every load imports or caches (TensorFlow under
# ScaNN is ~700 MiB) is then not counted as the big version's.
load_bundle(warm, QueryModels(), vector_precision=precision).images.similar_to_image_id(
    load_bundle(warm, QueryModels()).images.hit_for_row(0, 0).image_id, 10)
process = psutil.Process()
gc.collect()
with open("/proc/self/clear_refs", "w") as refs:  # Linux: the peak (VmHWM) starts again here
    refs.write("5")
before = process.memory_info().rss
started = time.perf_counter()
bundle = load_bundle(out, QueryModels(), vector_precision=precision)
load_s = time.perf_counter() - started
searcher = bundle.images
gc.collect()
after = process.memory_info().rss
step = max(1, len(searcher) // 500)
ids = [searcher.hit_for_row(row, 0).image_id for row in range(0, len(searcher), step)]
times = []
for image_id in ids:
    started = time.perf_counter()
    searcher.similar_to_image_id(image_id, 10)
    times.append(time.perf_counter() - started)
print(json.dumps({
    "images": len(searcher),
    "rss_before_mib": before / 2**20,
    "rss_after_mib": after / 2**20,
    "peak_mib": (peak_kib() * 1024 - before) / 2**20,
    "load_s": load_s,
    "held_precision": searcher.vectors.precision,
    "held_bytes": searcher.vectors.nbytes,
    "similar_p50_ms": 1000 * float(np.percentile(times, 50)),
}))
"""


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def real_embeddings(flickr: Path, work: Path) -> tuple[np.ndarray, dict]:
    from encoders.base import EncoderSpec
    from training.captions import load_captioned_dataset
    from training.features import dataset_features

    dev = load_captioned_dataset(flickr, "dev")
    from index.manifest import read_manifest

    features = dataset_features(dev, work / "features", EncoderSpec(name="mobilenet_v2"))
    return features.table.embeddings, read_manifest(features.index_dir).encoder_spec


def build_version(out: Path, vectors: np.ndarray, spec: dict, encoder_id: str, storage: str):
    from index.build import BuildConfig, build_index

    if (out / "manifest.json").is_file():
        _log(f"reusing {out}")
        return
    shutil.rmtree(out, ignore_errors=True)  # a build that did not finish
    started = time.perf_counter()
    write_table(out, len(vectors), encoder_id, None, image=vectors, storage=storage)
    build_index(str(out), BuildConfig("v1", spec, k=10, quantize=storage), {"inputs": len(vectors)})
    _log(f"built the {storage} version in {time.perf_counter() - started:.0f} s")


def _disk_bytes(out: Path, folder: str) -> int:
    return sum(p.stat().st_size for p in (out / folder).rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_flickr8k_arg(parser)
    parser.add_argument("--n", type=int, default=200_000, help="images in the index")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "imgsearch-memory"))
    parser.add_argument("--report", default=str(REPO / "benchmarks/results/served_memory.md"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    real, spec = real_embeddings(Path(flickr8k_dir(parser, args)), work)
    from encoders.base import EncoderSpec
    from encoders.registry import create_image_encoder

    encoder_id = create_image_encoder(EncoderSpec.from_json(spec)).encoder_id
    grown, _ = grow_embeddings(real, args.n, real.shape[1], np.random.default_rng(0))
    outs, warm = {}, {}
    for storage in sorted({way.storage for way in WAYS}):
        outs[storage] = work / f"{storage}-{args.n}"
        build_version(outs[storage], grown, spec, encoder_id, storage)
        warm[storage] = work / f"{storage}-warm"  # 25k: a tree-AH index, as the big one
        build_version(warm[storage], grown[:25_000], spec, encoder_id, storage)
    del grown

    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for way in WAYS:
        out = outs[way.storage]
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, str(out), str(warm[way.storage]), way.held],
            capture_output=True, text=True, check=True, env=env, cwd=REPO,
        )  # fmt: skip
        figures = json.loads(probe.stdout.strip().splitlines()[-1])
        resident = (figures["rss_after_mib"] - figures["rss_before_mib"]) * 2**20
        row = {
            "way": way.name,
            "table_storage": way.storage,
            "held": way.held,
            **figures,
            "served_bytes_per_image": resident / figures["images"],
            "held_bytes_per_image": figures["held_bytes"] / figures["images"],
            "scann_disk_bytes_per_image": _disk_bytes(out, "index") / figures["images"],
            "table_disk_bytes_per_image": _disk_bytes(out, "table") / figures["images"],
        }
        rows.append(row)
        _log(
            f"{way.name}: {row['served_bytes_per_image']:.0f} B/image resident "
            f"(held vectors {row['held_bytes_per_image']:.0f}), load {row['load_s']:.1f} s, "
            f"peak {row['peak_mib']:.0f} MiB, similar-to-id p50 {row['similar_p50_ms']:.2f} ms"
        )
    report = Path(args.report)
    report.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    report.write_text(render(args, rows, real.shape))
    print(report.read_text())
    return 0


def render(args, rows: list[dict], real_shape: tuple[int, int]) -> str:
    n = rows[0]["images"]
    lines = [
        "# Bytes per image of a served index version (generated by "
        "benchmarks/bench_served_memory.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"`benchmarks/bench_served_memory.py --n {args.n}`. {machine_line()}.",
        "",
        f"Index: {n:,} images, {real_shape[1]}-d MobileNetV2 embeddings grown from the "
        f"{real_shape[0]:,} Flickr8k dev photos (as `bench_ann.py` grows them), no joint shard; "
        "a real Parquet table indexed by `index.build` (ScaNN tree + AH + rescoring, default "
        "parameters; the table's storage is also the rescoring's, `--embedding_storage` / "
        "`--index_quantize`). Each row loads one version as the server does (`load_bundle`: "
        "checksums verified, ids, details, ScaNN, the held vectors) in a fresh process, after "
        "loading a 25k-image version of the same kind (imports and caches are not counted): "
        "resident memory after the load minus before it, per image, and the load's peak above "
        "where it started; `held` is the part that "
        "is the table's vectors (`--vectors-in-memory`). "
        "Similar-to-id: median over 500 images, k=10 (it reads a held vector, then searches).",
        "",
        "| way | served B/image | held vectors B/image | ScaNN files B/image | table files "
        "B/image | load s | load's peak MiB | similar-to-id p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['way']} | {r['served_bytes_per_image']:,.0f} | "
            f"{r['held_bytes_per_image']:,.0f} | {r['scann_disk_bytes_per_image']:,.0f} | "
            f"{r['table_disk_bytes_per_image']:,.0f} | {r['load_s']:.1f} | {r['peak_mib']:,.0f} | "
            f"{r['similar_p50_ms']:.2f} |"
        )
    base = rows[0]["served_bytes_per_image"]
    per_million = "; ".join(
        f"{r['way']}: {r['served_bytes_per_image'] * 1e6 / 2**30:.2f} GiB "
        f"({r['served_bytes_per_image'] / base:.2f}x)"
        for r in rows
    )
    lines += [
        "",
        f"Per million images: {per_million}. The rest of a served image beside the held "
        "vectors is ScaNN's (its rescoring copy and AH codes) and the ids, URIs and details.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
