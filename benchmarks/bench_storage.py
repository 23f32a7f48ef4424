"""What each embedding storage and ScaNN index costs per million vectors, and what it loses.

Run: ``.venv/bin/python benchmarks/bench_storage.py [--photos 1000] [--report PATH]``

On real MobileNetV2 embeddings of Flickr8k dev photos (the assets folder), one run measures:

- the embedding table as the index job writes it (``index.schema.embedding_table_schema``,
  Parquet, snappy) in float32, float16 and int8 + per-row scale: bytes on disk per vector,
  scaled to a million, the decode error after ``read_embedding_table``, and recall@10 of exact
  search over the decoded copy against float32 (held-out photos as queries);
- ScaNN brute force and tree-AH (``build_searcher``) over the same vectors: serialized bytes per
  vector per file (the float32 copy, the AH codes, the leaf tokens) and recall@10;
- the in-memory model of ``index.ann_cost.memory_per_million`` beside those figures.

Figures are printed and written to ``--report`` (markdown); nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imgsearch import settings
from index.ann_cost import memory_per_million
from index.scann_index import (
    ScannParams,
    build_searcher,
    exact_top_k,
    save_searcher,
    search_batched,
)
from index.schema import compact_row, embedding_table_schema
from index.table import read_embedding_table
from pipelines.types import image_id_for_uri
from ranking.recall import recall_per_query

MIB = 2**20
MILLION = 1_000_000
K = 10


def encode_photos(assets: Path, count: int) -> tuple[np.ndarray, str]:
    from encoders.base import EncoderSpec
    from encoders.imaging import decode_image
    from encoders.registry import create_image_encoder

    flickr = assets / "datasets" / "flickr8k"
    names = (flickr / "splits" / "dev.txt").read_text().split()[:count]
    weights = assets / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
    encoder = create_image_encoder(EncoderSpec(name="mobilenet_v2", weights=str(weights)))
    vectors = []
    for start in range(0, len(names), 64):
        pixels = np.stack(
            [
                decode_image((flickr / "images" / n).read_bytes())[0]
                for n in names[start : start + 64]
            ]
        )
        vectors.append(encoder.encode(pixels))
    return np.concatenate(vectors).astype(np.float32), encoder.encoder_id


def table_rows(vectors: np.ndarray, encoder_id: str) -> list[dict]:
    rows = []
    for i, vector in enumerate(vectors):
        uri = f"flickr8k/dev/{i:05d}.jpg"
        rows.append(
            {
                "image_id": image_id_for_uri(uri),
                "uri": uri,
                "duplicate_uris": [],
                "sha256": f"{i:064x}",
                "num_bytes": 50_000,
                "width": 224,
                "height": 224,
                "embedding": vector.tolist(),
                "encoder": encoder_id,
                "metadata": "",
            }
        )
    return rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(recall_per_query(found, truth).mean())


def storage_rows(vectors: np.ndarray, encoder_id: str, workdir: Path, num_queries: int) -> list:
    dim = vectors.shape[1]
    rows = table_rows(vectors, encoder_id)
    queries, database = vectors[:num_queries], vectors[num_queries:]
    truth, _ = exact_top_k(database, queries, K)
    results = []
    for storage in ("float32", "float16", "int8"):
        path = workdir / f"{storage}.parquet"
        compact = [compact_row(row, storage) for row in rows]
        pq.write_table(
            pa.Table.from_pylist(compact, schema=embedding_table_schema(dim, None, storage)), path
        )
        started = time.perf_counter()
        table = read_embedding_table([str(path)])
        read_s = time.perf_counter() - started
        order = {image_id_for_uri(r["uri"]): i for i, r in enumerate(rows)}
        decoded = table.embeddings[np.argsort([order[i] for i in table.image_ids])]
        error = np.abs(decoded - vectors).max()
        cosine = float(np.sum(decoded * vectors, axis=1).min())
        found, _ = exact_top_k(decoded[num_queries:], queries, K)
        results.append(
            {
                "storage": storage,
                "disk_per_vector": path.stat().st_size / len(vectors),
                "embedding_bytes": {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4}[
                    storage
                ],
                "max_abs_error": float(error),
                "min_cosine": cosine,
                "recall": recall(found, truth),
                "read_s": read_s,
            }
        )
    return results


def scann_rows(vectors: np.ndarray, num_queries: int, workdir: Path) -> list:
    queries, database = vectors[:num_queries], vectors[num_queries:]
    truth, _ = exact_top_k(database, queries, K)
    num_leaves = max(2, round(np.sqrt(len(database))))
    tree = ScannParams(
        kind="tree_ah",
        num_neighbors=K,
        num_leaves=num_leaves,
        # The size rules of choose_scann_params (10% of the leaves, at least 8).
        num_leaves_to_search=min(num_leaves, max(8, int(np.ceil(0.1 * num_leaves)))),
        training_sample_size=len(database),
        dims_per_block=2,
        anisotropic_quantization_threshold=0.2,
        reorder_k=10 * K,
    )
    configs = [
        dataclasses.replace(base, quantize=quantize)
        for base in (ScannParams(kind="brute_force", num_neighbors=K), tree)
        for quantize in ("float32", "bfloat16", "int8")
    ]
    results = []
    for params in configs:
        started = time.perf_counter()
        searcher = build_searcher(database, params)
        build_s = time.perf_counter() - started
        folder = workdir / f"{params.kind}-{params.quantize}"
        save_searcher(searcher, str(folder))
        files = {p.name: p.stat().st_size for p in folder.iterdir()}
        found, _ = search_batched(searcher, queries, K, params)
        results.append(
            {
                "kind": f"{params.kind}, {params.quantize}",
                "files": files,
                "rows": len(database),
                "recall": recall(found, truth),
                "build_s": build_s,
            }
        )
    return results


def machine_line() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.platform()}; load {load}"


def report(args, dim, encoder_id, count, storage, scann, elapsed) -> str:
    lines = [
        "# Embedding storage and index memory per million vectors "
        "(generated by benchmarks/bench_storage.py)",
        "",
        f"Run {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, "
        f"`benchmarks/bench_storage.py --photos {args.photos}`, {elapsed:.0f} s. "
        f"Machine: {machine_line()}.",
        "",
        f"Data: {count} real {dim}-d embeddings of Flickr8k dev photos by `{encoder_id}`; the "
        f"first {args.queries} are queries, the rest the database. Per-million figures scale the "
        "measured per-vector bytes linearly (Parquet row groups and ScaNN's per-index overheads "
        "are small and shrink per vector as N grows).",
        "",
        "## Embedding table (`--embedding_storage`)",
        "",
        "| storage | embedding bytes/vector | Parquet bytes/vector (whole row) "
        "| Parquet per million | max abs error | min cosine to float32 | recall@10 vs float32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in storage:
        lines.append(
            f"| {r['storage']} | {r['embedding_bytes']:,} | {r['disk_per_vector']:,.0f} | "
            f"{r['disk_per_vector'] * MILLION / MIB:,.0f} MiB | {r['max_abs_error']:.2e} | "
            f"{r['min_cosine']:.6f} | {r['recall']:.4f} |"
        )
    lines += [
        "",
        "Readers (`read_embedding_table`, so the index build and `ImageSearcher`) decode every "
        "storage to unit float32, so in memory the table costs float32 either way "
        f"({4 * dim * MILLION / MIB:,.0f} MiB per million at dim {dim}); the compact storages "
        "save disk, table I/O (GCS reads at every load) and Dataflow shuffle bytes, not serving "
        "RAM. int8 stores a float32 scale per row (max |component| / 127), so its error per "
        "component is at most half a step of that row's scale.",
        "",
        "## ScaNN index (serialized, per vector)",
        "",
        "| index, `--index_quantize` | per-row files (bytes/vector) | per-row total per million "
        "| other files (KiB, whole index) | recall@10 | build s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in scann:
        # .npy files hold one entry per row and scale with N; the codebook, partitioner and
        # config do not (the partitioner grows with the leaves, ~sqrt(N)).
        per_row = {n: b / r["rows"] for n, b in sorted(r["files"].items()) if n.endswith(".npy")}
        other = {n: b / 1024 for n, b in sorted(r["files"].items()) if not n.endswith(".npy")}
        lines.append(
            f"| {r['kind']} | {', '.join(f'{n} {b:,.1f}' for n, b in per_row.items())} | "
            f"{sum(per_row.values()) * MILLION / MIB:,.0f} MiB | "
            f"{', '.join(f'{n} {b:,.1f}' for n, b in other.items())} | {r['recall']:.4f} | "
            f"{r['build_s']:.2f} |"
        )
    model = memory_per_million(dim)
    lines += [
        "",
        "`dataset.npy` is the float32 copy ScaNN keeps for brute force and for tree-AH's exact "
        "rescoring (`bfloat16_dataset.npy` / `int8_dataset.npy` with `--index_quantize`); "
        "`hashed_dataset.npy` the AH codes (one byte per 2-dim block on disk, two blocks a "
        "byte in memory, LUT16); `datapoint_to_token.npy` the leaf of each row. "
        "The tree-AH row is here for its bytes per row: on a few hundred rows (few leaves, a "
        "tiny training set) its recall says nothing about the 20k+ row shards `build_index` "
        "builds trees for; see `benchmarks/results/ann.md` for recall at a million.",
        "",
        f"## In-memory model at dim {dim} (`index.ann_cost.memory_per_million`)",
        "",
        "| what | per million vectors |",
        "|---|---:|",
    ]
    for name, value in model.items():
        lines.append(f"| {name} | {value / MIB:,.0f} MiB |")
    lines += [
        "",
        "A serving process holds the decoded table (float32) plus its ScaNN shards: brute force "
        "= 2 float32 copies, tree-AH = float32 copy + AH codes + leaf ids + the float32 "
        "rescoring copy; `--index_quantize int8|bfloat16` cuts ScaNN's copy by 4x/2x (the "
        "decoded table stays float32 for `similar_to_image_id` and `embeddings`).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "storage.md"))
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        print("no assets folder: " + settings.describe_assets_layout(), file=sys.stderr)
        return 2
    started = time.perf_counter()
    vectors, encoder_id = encode_photos(Path(assets), args.photos)
    print(f"encoded {len(vectors)} photos in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        storage = storage_rows(vectors, encoder_id, Path(tmp), args.queries)
        scann = scann_rows(vectors, args.queries, Path(tmp))
    text = report(args, vectors.shape[1], encoder_id, len(vectors), storage, scann,
                  time.perf_counter() - started)  # fmt: skip
    Path(args.report).write_text(text)
    print(text)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
