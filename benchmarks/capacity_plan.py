"""Capacity plan for a billion images, computed from figures measured on this project.

Run: ``.venv/bin/python benchmarks/capacity_plan.py [--images 300]``

Measures (here, now): the real index job (MobileNetV2, DirectRunner) on ``--images`` Flickr8k
photos, giving the table's bytes per image, the index shard's bytes per vector and the ScaNN
build rate. Reads (measured earlier by the other benchmarks): ``results/encode.json``
(decode and model images/s per core, ``bench_encode.py``) and ``results/ann.md`` (ScaNN QPS, build
time and size at 1M x 256, ``bench_ann.py``). Every other number is an assumption named in
``ASSUMPTIONS`` with its reason. Writes ``docs/capacity-plan.md`` and
``benchmarks/results/capacity_inputs.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch import settings
from index.ann_cost import memory_per_million

RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "capacity-plan.md"
GIB = 2**30
TARGET_IMAGES = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """What is not measured here, each with why (printed into the plan)."""

    dim: int = 1280  # MobileNetV2 pooled features, what the table stores today
    reduced_dim: int = 256  # PCA target the ANN benchmark measured at 1M (86.9% energy)
    serving_ram_gib: float = 64.0  # per replica: half of a 128 GiB n2-highmem-16, rest headroom
    target_qps: float = 1000.0  # peak queries/s the service must answer
    replication: int = 2  # every shard on >= 2 replicas: one can restart without an outage
    serving_threads: int = 16  # cores per replica (n2-highmem-16); QPS scales ~linearly
    cpu_worker_vcpus: int = 8  # n1-standard-8 CPU worker
    gpu_worker_vcpus: int = 8  # g2-standard-8: 8 vCPUs + 1 L4 (infra/pipeline-options.yaml)
    # Not measured (no GPU lent): MobileNetV2 is ~0.3 GFLOPs/image against ViT-B/32's ~4.4, so
    # an L4 in float16 is assumed to encode faster than 8 vCPUs can decode full-size JPEGs,
    # making the GPU worker decode-bound. clip-retrieval's anchor (1,500-2,500 images/s per
    # GPU for ViT-B/32, limited by resizing) supports that. Replace with bench_encode's GPU row.
    gpu_model_images_per_s: float = 3000.0
    incremental_fraction: float = 0.01
    gcs_list_objects_per_s: float = 5000.0  # one MatchFiles listing, 1,000 names a page
    dedupe_record_bytes: int = 200  # ImageRef (uri, id) + sha256 + size: no pixels, no bytes


ASSUMPTIONS = Assumptions()


def measure_index(images: int, assets: Path) -> dict:
    """Run the real index job on ``images`` Flickr8k photos; sizes and rates of its outputs."""
    from index.manifest import read_manifest
    from pipelines import index_job

    photos = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:images]
    with tempfile.TemporaryDirectory(prefix="imgsearch-plan-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for photo in photos:
            os.symlink(photo, corpus / photo.name)
        out = Path(tmp) / "out"
        started = time.perf_counter()
        result = index_job.run(["--corpus", str(corpus), "--out", str(out), "--run_version", "p"])
        wall = time.perf_counter() - started
        manifest = read_manifest(str(out / "manifest.json"))
        rows = result.counts["indexed"]
        table = sum(f["bytes"] for f in manifest.files_under("table"))
        index = sum(f["bytes"] for f in manifest.files_under("index"))
    return {
        "images": rows,
        "table_bytes_per_image": table / rows,
        "index_bytes_per_vector": index / rows,
        "job_wall_s": wall,
        "corpus_bytes_per_image": sum(p.stat().st_size for p in photos) / len(photos),
    }


def read_encode_rates(path: Path = RESULTS / "encode.json") -> dict:
    """Per-core decode and model rates on CPU, from bench_encode.py's last run."""
    data = json.loads(path.read_text())
    cores = data["meta"]["threads"]
    rows = {r["corpus"]: r for r in data["rows"] if r["device"].startswith("/CPU")}
    full = rows["coco full-size"]
    return {
        "source": f"{path.relative_to(REPO)} ({data['meta']['run_at']}, {cores} threads)",
        "decode_full_size_per_core": full["decode_only"] / cores,
        "decode_224_per_core": rows["flickr8k 224x224"]["decode_only"] / cores,
        "model_cpu_per_core": full["model_only"] / cores,
    }


def read_ann(path: Path = RESULTS / "ann.md") -> dict:
    """ScaNN at 1M x 256, recall@10 0.95: QPS on one thread, build seconds, index MiB."""
    text = path.read_text()
    section = text[text.index("## image embeddings") :]
    row = re.search(r"^\| ScaNN tree-AH \(autotuned\) \| 0\.95 \|(.*)$", section, flags=re.M)
    cells = [c.strip().replace(",", "") for c in row.group(1).split("|")]
    # knobs | recall tuning | recall eval | QPS 1 thread | p50 | p99 | QPS batched | build | MiB
    return {
        "source": f"{path.relative_to(REPO)}",
        "vectors": 1_000_000,
        "dim": 256,
        "knobs": cells[0],
        "qps_one_thread": float(cells[3]),
        "build_s_2_cores": float(cells[7]),
        "index_mib": float(cells[8]),
    }


# ---- the plan: pure functions of the inputs ------------------------------------------------


def shards_for(total_bytes: float, per_replica_bytes: float) -> int:
    """Shards so that each fits one serving replica's memory budget."""
    return max(1, math.ceil(total_bytes / per_replica_bytes))


def replicas_per_shard(target_qps: float, qps_per_replica: float, replication: int) -> int:
    """Every query fans out to all shards, so each shard must answer the full target QPS."""
    return max(replication, math.ceil(target_qps / qps_per_replica))


def shard_qps(qps_1m_one_thread: float, shard_vectors: float, threads: int) -> float:
    """ScaNN QPS of one replica holding ``shard_vectors``.

    Scaling rule (conservative): the autotuned tree-AH searched a fixed fraction of the leaves
    (4 of 1000) at 1M; holding recall at larger N keeps that fraction, so points scored per
    query, and time per query, grow linearly with the shard.
    """
    return qps_1m_one_thread * threads * (1_000_000 / shard_vectors)


def worker_hours(images: float, images_per_s_per_worker: float) -> float:
    return images / images_per_s_per_worker / 3600


def plan(measured: dict, encode: dict, ann: dict, a: Assumptions = ASSUMPTIONS) -> dict:
    n = TARGET_IMAGES
    per_million = {
        f"{name} (dim {dim})": value
        for dim in (a.dim, a.reduced_dim)
        for name, value in memory_per_million(dim).items()
        if name in ("float32", "float16", "int8", "scann_tree_ah_no_reorder",
                    "scann_tree_ah_int8_reorder", "scann_tree_ah_float32_reorder")
    }  # fmt: skip
    measured_index_per_million = measured["index_bytes_per_vector"] * 1e6
    budget = a.serving_ram_gib * GIB
    serving = []
    for label, per_vector in (
        ("1280-d, float32 reorder (today's index)", per_million[f"scann_tree_ah_float32_reorder (dim {a.dim})"] / 1e6),  # noqa: E501
        ("1280-d, int8 reorder", per_million[f"scann_tree_ah_int8_reorder (dim {a.dim})"] / 1e6),
        ("256-d PCA, int8 reorder", per_million[f"scann_tree_ah_int8_reorder (dim {a.reduced_dim})"] / 1e6),  # noqa: E501
        ("256-d PCA, AH only (no reorder)", per_million[f"scann_tree_ah_no_reorder (dim {a.reduced_dim})"] / 1e6),  # noqa: E501
    ):  # fmt: skip
        total = per_vector * n
        shards = shards_for(total, budget)
        shard_vectors = n / shards
        # QPS measured at 256-d; 1280-d AH codes are 5x longer to score: scale by dim.
        qps = shard_qps(ann["qps_one_thread"], shard_vectors, a.serving_threads) * (
            ann["dim"] / (a.dim if label.startswith("1280") else a.reduced_dim)
        )
        replicas = replicas_per_shard(a.target_qps, qps, a.replication)
        serving.append({
            "choice": label, "bytes_per_vector": per_vector, "total_gib": total / GIB,
            "shards": shards, "vectors_per_shard": shard_vectors, "qps_per_replica": qps,
            "replicas_per_shard": replicas, "machines": shards * replicas,
        })  # fmt: skip

    cpu_rate = a.cpu_worker_vcpus / (
        1 / encode["decode_full_size_per_core"] + 1 / encode["model_cpu_per_core"]
    )  # on CPU, decode and model share the cores: they run in turn
    gpu_rate = min(a.gpu_worker_vcpus * encode["decode_full_size_per_core"],
                   a.gpu_model_images_per_s)  # fmt: skip
    dataflow = []
    for label, rate in (("CPU n1-standard-8", cpu_rate), ("GPU g2-standard-8 (1 L4)", gpu_rate)):
        full = worker_hours(n, rate)
        dataflow.append({
            "worker": label, "images_per_s_per_worker": rate,
            "full_worker_hours": full,
            "incremental_worker_hours": full * a.incremental_fraction,
            "full_hours_on_500_workers": full / 500,
        })  # fmt: skip
    build_core_s_per_million = ann["build_s_2_cores"] * 2  # measured on 2 cores
    return {
        "per_million_bytes": per_million,
        "measured_index_per_million_bytes": measured_index_per_million,
        "table_total_tib": measured["table_bytes_per_image"] * n / 2**40,
        "corpus_total_tib_flickr_like": measured["corpus_bytes_per_image"] * n / 2**40,
        "serving": serving,
        "dataflow": dataflow,
        "scann_build_core_hours_1b": build_core_s_per_million * 1000 / 3600,
        "listing_hours_1b": n / a.gcs_list_objects_per_s / 3600,
        "launcher_table_gib_1b": a.dim * 4 * n / GIB,
        "dedupe_shuffle_gib_1b": a.dedupe_record_bytes * n / GIB,
    }


# ---- the document --------------------------------------------------------------------------


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def render(measured: dict, encode: dict, ann: dict, p: dict, a: Assumptions, meta: dict) -> str:
    mib = 2**20
    lines = [
        "# Capacity plan: a billion images",
        "",
        f"Generated by `benchmarks/capacity_plan.py` on {meta['run_at']} ({meta['machine']}). "
        "Every figure is either measured here (cited) or an assumption listed at the end; rerun "
        "the script after a benchmark changes. No GPU was available: GPU rates are assumptions, "
        "not measurements.",
        "",
        "## Measured inputs",
        "",
        f"- Index job, real MobileNetV2 on {measured['images']} Flickr8k photos (DirectRunner, "
        f"this run): table **{_n(measured['table_bytes_per_image'])} bytes/image** (1280 float32 "
        f"= 5,120 bytes of vector; the rest is ids, uris and metadata columns and, at this "
        f"small size, each file's footer; Parquet cannot compress float noise), index shard "
        f"{_n(measured['index_bytes_per_vector'])} bytes/vector "
        f"(ScaNN files + ids at this size), {measured['job_wall_s']:.0f} s wall including "
        "TensorFlow start and model load.",
        f"- Encoding on CPU ({encode['source']}): decode+resize of full-size COCO JPEGs "
        f"{_n(encode['decode_full_size_per_core'], 1)}/s per core, of 224x224 JPEGs "
        f"{_n(encode['decode_224_per_core'], 1)}/s per core; MobileNetV2 float32 "
        f"{_n(encode['model_cpu_per_core'], 1)} images/s per core.",
        f"- ScaNN at 1M x 256, recall@10 0.95 ({ann['source']}): {_n(ann['qps_one_thread'])} "
        f"QPS on one thread, {ann['build_s_2_cores']:.0f} s build on 2 cores, "
        f"{_n(ann['index_mib'], 1)} MiB serialized ({ann['knobs']}).",
        "",
        "## Bytes per image in the table",
        "",
        f"{_n(measured['table_bytes_per_image'])} bytes/image -> **{p['table_total_tib']:.2f} "
        "TiB for 1B images**. Scales linearly with images and with dim (float32: 4 bytes a "
        "dimension). Storing float16 halves it; a 256-d PCA table is 1/5. The photos "
        f"themselves (Flickr8k-sized, {_n(measured['corpus_bytes_per_image'])} bytes each) "
        f"would be {p['corpus_total_tib_flickr_like']:.0f} TiB; full-size photos 5-10x more.",
        "",
        "## Index memory per million vectors, per compression choice",
        "",
        "From `index.ann_cost.memory_per_million` (checked against the serialized sizes "
        f"in ann.md: {_n(ann['index_mib'], 0)} MiB measured for 1M x 256 with a float32 "
        f"reorder copy vs {_n(p['per_million_bytes']['scann_tree_ah_float32_reorder (dim 256)'] / mib, 0)}"  # noqa: E501
        " MiB computed).",
        "",
        "| storage | MiB per 1M vectors | GiB for 1B |",
        "|---|---:|---:|",
    ]
    for name, value in p["per_million_bytes"].items():
        lines.append(f"| {name} | {_n(value / mib)} | {_n(value * 1000 / GIB)} |")
    lines += [
        "",
        "Linear in N and in dim; AH codes are dim/4 bytes (2 dims per 4-bit block), so the "
        "reorder copy dominates whenever it is kept.",
        "",
        f"## Shards and serving replicas for 1B images ({_n(a.target_qps)} QPS, "
        f"{a.serving_ram_gib:.0f} GiB per replica, {a.serving_threads} threads, "
        f"replication {a.replication})",
        "",
        "| index | bytes/vector | total GiB | shards | vectors/shard | QPS/replica | "
        "replicas/shard | machines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in p["serving"]:
        lines.append(
            f"| {s['choice']} | {_n(s['bytes_per_vector'])} | {_n(s['total_gib'])} | "
            f"{s['shards']} | {_n(s['vectors_per_shard'])} | {_n(s['qps_per_replica'])} | "
            f"{s['replicas_per_shard']} | {s['machines']} |"
        )
    lines += [
        "",
        "Scaling: shards = total / memory per replica; every query fans out to every shard, so "
        "each shard needs enough replicas for the whole QPS. QPS per replica is the measured "
        "1M figure x threads x (1M / vectors per shard) (the autotuned search scores a fixed "
        "fraction of leaves, so work per query grows linearly with the shard) x (256 / dim) for "
        "longer codes. The choice that matters is the reorder copy: dropping it from float32 "
        "to int8 and the dimension to 256 cuts the fleet by an order of magnitude; recall must "
        "be re-measured for each (bench_ann.py) before switching.",
        "",
        "## Dataflow worker-hours",
        "",
        "| worker | images/s per worker | full reindex (1B) worker-hours | "
        f"{a.incremental_fraction:.0%} incremental worker-hours | full reindex hours on 500 "
        "workers |",
        "|---|---:|---:|---:|---:|",
    ]
    for d in p["dataflow"]:
        lines.append(
            f"| {d['worker']} | {_n(d['images_per_s_per_worker'])} | "
            f"{_n(d['full_worker_hours'])} | {_n(d['incremental_worker_hours'])} | "
            f"{_n(d['full_hours_on_500_workers'], 1)} |"
        )
    lines += [
        "",
        "CPU worker: 8 vCPUs at the measured per-core decode and model rates, which share the "
        "cores (1 / (1/decode + 1/model)). GPU worker: the smaller of 8 vCPUs of measured "
        f"full-size decode and the assumed GPU model rate ({_n(a.gpu_model_images_per_s)}/s, "
        "not measured): decode-bound, so vCPUs per GPU is the knob (g2-standard-16 doubles "
        "decode for the same L4). Linear in images; the incremental run encodes only new "
        "images, given a manifest of them (listing all 1B objects to find them would dominate).",
        "",
        f"ScaNN build: {_n(p['scann_build_core_hours_1b'], 0)} core-hours for 1B vectors at the "
        "measured 1M rate (k-means training + AH + reorder), parallel per shard: minutes per "
        "shard on a 32-core builder.",
        "",
        "## Where the plan breaks first",
        "",
        "In order of the corpus size at which each breaks today:",
        "",
        "1. **The index build runs in the launching process over the whole table** "
        "(`index_job.run` -> `build_index` reads every row into memory): "
        f"{_n(a.dim * 4 * 1e7 / GIB)} GiB at 10M images, {_n(p['launcher_table_gib_1b'])} GiB "
        "at 1B. Breaks around 10-20M images on a large launcher. Fix: build shards in a second "
        "Beam stage (group rows by shard id, one ScaNN build per shard on the workers).",
        "2. **Serving holds every shard and every table vector** (`ImageSearcher.load`: "
        "ScaNN's rescoring copy and AH codes, and the table's vectors as stored for "
        "similar-to-id): 10.7 GiB per million 1280-d images with float32 tables and rescoring, "
        "3.7 GiB with int8 ones (`benchmarks/results/served_memory.md`), in every replica. "
        "Breaks around 5M (float32) or 15-20M (int8) images per 64 GiB node. Fix: a shard "
        "router fanning out to shard servers, ids -> vectors looked up in the shard that holds "
        "them.",
        f"3. **Listing the corpus**: one `MatchFiles` walks every object; at ~"
        f"{_n(a.gcs_list_objects_per_s)} objects/s that is {_n(p['listing_hours_1b'], 0)} hours "
        "for 1B before any image is read. Fix: feed a sharded Parquet manifest "
        "(`--corpus manifest.parquet` already works) produced by GCS inventory reports.",
        f"4. **Shuffle of the dedupe GroupByKey**: 1B records of ~{a.dedupe_record_bytes} bytes "
        f"(no pixels: the graph test checks decoded images are never shuffled) is "
        f"{_n(p['dedupe_shuffle_gib_1b'])} GiB of shuffle, routine for Dataflow Shuffle; a cost, "
        "not a break. Each image is read twice (hash, then decode): 2B GCS reads per full "
        "reindex.",
        "5. **Decode**: on GPU workers the vCPUs, not the GPU, bound throughput; resizing cost "
        "grows with source resolution (full-size COCO decodes ~3-10x slower than 224x224).",
        "",
        "## Assumptions",
        "",
    ]
    for field in dataclasses.fields(a):
        lines.append(f"- `{field.name}` = {getattr(a, field.name)}")
    lines += [
        "",
        "Reasons are in `Assumptions` in benchmarks/capacity_plan.py. GPU figures were not "
        "measured: run `benchmarks/bench_encode.py` on a GPU worker and replace "
        "`gpu_model_images_per_s`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="photos for the index run")
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        sys.exit(settings.describe_assets_layout())
    measured = measure_index(args.images, assets)
    encode, ann = read_encode_rates(), read_ann()
    result = plan(measured, encode, ann)
    meta = {
        "run_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    inputs = {"meta": meta, "measured": measured, "encode": encode, "ann": ann, "plan": result}
    (RESULTS / "capacity_inputs.json").write_text(json.dumps(inputs, indent=2) + "\n")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render(measured, encode, ann, result, ASSUMPTIONS, meta))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
