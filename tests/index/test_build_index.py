"""build_index and the manifest, on real Parquet tables written with the pipeline's schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.build import BuildConfig, build_index
from index.manifest import (
    FORMAT_VERSION,
    IndexManifest,
    ManifestVerificationError,
    file_entry,
    read_manifest,
    verify_files,
    write_manifest,
)
from index.scann_index import ScannParams, exact_top_k, load_searcher, search_batched
from index.schema import embedding_table_schema
from index.shards import read_ids
from index.table import read_embedding_table
from pipelines.types import image_id_for_uri

ENCODER_ID = "fake/1"
ENCODER_SPEC = {"name": "fake", "weights": "none", "image_size": 32}
COUNTS = {"inputs": 230, "duplicates": 20, "dead_letters": 10}


def table_rows(
    num_rows: int, dim: int, seed: int = 0, encoder_id: str = ENCODER_ID
) -> tuple[list[dict], np.ndarray]:
    """Rows shaped like the index job's table, with seeded unit-norm embeddings."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((num_rows, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = []
    for i in range(num_rows):
        uri = f"gs://corpus/photos/img{seed}-{i:05d}.jpg"
        rows.append(
            {
                "image_id": image_id_for_uri(uri),
                "uri": uri,
                "duplicate_uris": [],
                "sha256": f"{i:064x}",
                "num_bytes": 1000 + i,
                "width": 640,
                "height": 480,
                "embedding": embeddings[i].tolist(),
                "encoder": encoder_id,
                "metadata": "",
            }
        )
    return rows, embeddings


def write_embedding_table(
    out_dir: Path, rows: list[dict], dim: int, num_files: int = 3, seed: int = 0
) -> list[Path]:
    """Write ``rows`` shuffled over ``num_files`` Parquet files under ``out_dir/table``."""
    table_dir = out_dir / "table"
    table_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(rows))
    paths = []
    for shard, part in enumerate(np.array_split(order, num_files)):
        path = table_dir / f"embeddings-{shard:05d}-of-{num_files:05d}.parquet"
        shard_rows = [rows[i] for i in part]
        pq.write_table(pa.Table.from_pylist(shard_rows, schema=embedding_table_schema(dim)), path)
        paths.append(path)
    return paths


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Path, IndexManifest, list[dict], np.ndarray]:
    rows, embeddings = table_rows(200, 32)
    write_embedding_table(tmp_path, rows, 32)
    manifest = build_index(str(tmp_path), BuildConfig("run-1", ENCODER_SPEC, k=10), COUNTS)
    return tmp_path, manifest, rows, embeddings


def test_build_index_publishes_a_verified_manifest(built) -> None:
    out, manifest, _, _ = built
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.version == "run-1"
    assert manifest.created_at.endswith("+00:00")
    assert manifest.encoder_id == ENCODER_ID
    assert manifest.encoder_spec == ENCODER_SPEC
    assert manifest.dim == 32
    assert manifest.counts == {**COUNTS, "indexed": 200}
    assert ScannParams.from_json(manifest.scann_params).kind == "brute_force"
    [shard] = manifest.shards
    shard_files = manifest.files_under("index/shard-00000")
    assert shard == {
        "index_dir": "index/shard-00000",
        "ids_file": "index/shard-00000/ids.parquet",
        "count": 200,
        "scann_params": manifest.scann_params,
        "bytes": sum(entry["bytes"] for entry in shard_files),
        "sha256": shard["sha256"],
    }
    assert len(shard["sha256"]) == 64
    assert manifest.lineage == {"built_from": "run-1", "built_count": 200, "updates": []}
    paths = {entry["path"] for entry in manifest.files}
    assert {f"table/embeddings-0000{i}-of-00003.parquet" for i in range(3)} <= paths
    assert {"index/shard-00000/ids.parquet", "index/shard-00000/scann_assets.pbtxt"} <= paths
    # Every file under table/ and index/ is listed, nothing else (and no temp file is left).
    on_disk = {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert paths == on_disk
    assert read_manifest(str(out)) == manifest
    assert read_manifest(str(out / "manifest.json")) == manifest
    verify_files(str(out), manifest)


def test_index_rows_are_sorted_by_image_id_and_searchable(built) -> None:
    out, manifest, rows, embeddings = built
    image_ids, uris = read_ids(str(out / "index/shard-00000/ids.parquet"))
    assert image_ids == sorted(row["image_id"] for row in rows)
    uri_of = {row["image_id"]: row["uri"] for row in rows}
    assert uris == [uri_of[image_id] for image_id in image_ids]

    # Row i of ScaNN is row i of ids.parquet: the stored vector of image_ids[i] finds row i.
    by_id = {row["image_id"]: embeddings[i] for i, row in enumerate(rows)}
    sorted_embeddings = np.stack([by_id[image_id] for image_id in image_ids])
    searcher = load_searcher(str(out / "index/shard-00000"))
    params = ScannParams.from_json(manifest.scann_params)
    indices, _ = search_batched(searcher, sorted_embeddings, 5, params)
    np.testing.assert_array_equal(indices, exact_top_k(sorted_embeddings, sorted_embeddings, 5)[0])
    assert indices[:, 0].tolist() == list(range(200))


def test_index_does_not_depend_on_how_the_table_was_split(tmp_path: Path) -> None:
    rows, _ = table_rows(150, 16, seed=3)
    one, three = tmp_path / "one", tmp_path / "three"
    write_embedding_table(one, rows, 16, num_files=1, seed=1)
    write_embedding_table(three, rows, 16, num_files=3, seed=2)
    build_index(str(one), BuildConfig("v", ENCODER_SPEC, k=10), {})
    build_index(str(three), BuildConfig("v", ENCODER_SPEC, k=10), {})
    ids = "index/shard-00000/ids.parquet"
    assert read_ids(str(one / ids)) == read_ids(str(three / ids))
    assert (one / "index/shard-00000/dataset.npy").read_bytes() == (
        three / "index/shard-00000/dataset.npy"
    ).read_bytes()


def test_rebuild_removes_the_stale_index(built) -> None:
    out, _, _, _ = built
    stale_shard = out / "index" / "shard-00007"
    stale_shard.mkdir()
    (stale_shard / "scann_assets.pbtxt").write_text("stale")
    (out / "index" / "leftover.txt").write_text("stale")
    manifest = build_index(str(out), BuildConfig("run-2", ENCODER_SPEC), COUNTS)
    assert not stale_shard.exists()
    assert not (out / "index" / "leftover.txt").exists()
    assert all("shard-00007" not in entry["path"] for entry in manifest.files)
    assert read_manifest(str(out)).version == "run-2"
    verify_files(str(out), manifest)


def test_verify_files_detects_a_changed_byte(built) -> None:
    out, manifest, _, _ = built
    target = out / "table" / "embeddings-00001-of-00003.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    target.write_bytes(bytes(data))
    with pytest.raises(ManifestVerificationError, match=r"sha256 mismatch: table/embeddings-00001"):
        verify_files(str(out), manifest)


def test_verify_files_detects_missing_and_truncated_files(built) -> None:
    out, manifest, _, _ = built
    os.remove(out / "index" / "shard-00000" / "ids.parquet")
    with open(out / "index" / "shard-00000" / "dataset.npy", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ManifestVerificationError) as error:
        verify_files(str(out), manifest)
    message = str(error.value)
    assert "missing: index/shard-00000/ids.parquet" in message
    assert "size mismatch: index/shard-00000/dataset.npy" in message


def test_mixed_encoder_ids_are_refused(tmp_path: Path) -> None:
    rows, _ = table_rows(20, 8)
    other, _ = table_rows(5, 8, seed=1, encoder_id="mobilenet_v2/imagenet-1")
    write_embedding_table(tmp_path, rows + other, 8)
    with pytest.raises(ValueError, match="mixes encoder ids"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {})
    assert not (tmp_path / "manifest.json").exists()


def test_files_with_different_dims_are_refused(tmp_path: Path) -> None:
    write_embedding_table(tmp_path, table_rows(10, 8)[0], 8, num_files=1)
    wide = tmp_path / "wide"
    write_embedding_table(wide, table_rows(10, 16, seed=1)[0], 16, num_files=1)
    (wide / "table" / "embeddings-00000-of-00001.parquet").rename(
        tmp_path / "table" / "embeddings-00001-of-00002.parquet"
    )
    with pytest.raises(ValueError, match="disagree on the dimension"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {})


def test_duplicate_image_ids_are_refused(tmp_path: Path) -> None:
    rows, _ = table_rows(10, 8)
    write_embedding_table(tmp_path, [*rows, rows[3]], 8)
    with pytest.raises(ValueError, match="more than one table row"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {})


def test_empty_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty table"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {})
    (tmp_path / "table").mkdir()
    pq.write_table(
        pa.Table.from_pylist([], schema=embedding_table_schema(8)),
        tmp_path / "table" / "embeddings-00000-of-00001.parquet",
    )
    with pytest.raises(ValueError, match="empty table"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {})
    assert not (tmp_path / "manifest.json").exists()


def test_counts_must_agree_with_the_table(tmp_path: Path) -> None:
    write_embedding_table(tmp_path, table_rows(10, 8)[0], 8)
    with pytest.raises(ValueError, match="counts"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC), {"indexed": 11})


def test_read_embedding_table_reshapes_the_column(tmp_path: Path) -> None:
    rows, embeddings = table_rows(50, 12)
    paths = write_embedding_table(tmp_path, rows, 12)
    table = read_embedding_table([str(p) for p in paths])
    assert table.embeddings.shape == (50, 12) and table.embeddings.dtype == np.float32
    row_of = {row["image_id"]: i for i, row in enumerate(rows)}
    np.testing.assert_array_equal(
        table.embeddings, embeddings[[row_of[image_id] for image_id in table.image_ids]]
    )


def test_manifest_round_trip_and_format_check(built, tmp_path: Path) -> None:
    _, manifest, _, _ = built
    target = tmp_path / "elsewhere"
    path = write_manifest(str(target), manifest)
    assert os.listdir(target) == ["manifest.json"]  # the temp file was renamed, not left
    assert IndexManifest.from_json(json.loads(Path(path).read_text())) == manifest

    newer = {**manifest.to_json(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(ValueError, match="format_version"):
        IndexManifest.from_json(newer)
    escaping = {
        **manifest.to_json(),
        "files": [{"path": "../etc/passwd", "bytes": 1, "sha256": ""}],
    }
    with pytest.raises(ValueError, match=r"\.\."):
        IndexManifest.from_json(escaping)
    with pytest.raises(ValueError, match="lacks"):
        IndexManifest.from_json({"format_version": FORMAT_VERSION})


def test_read_manifest_without_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has not finished"):
        read_manifest(str(tmp_path))


def test_file_entry(tmp_path: Path) -> None:
    path = tmp_path / "table" / "a.parquet"
    path.parent.mkdir()
    path.write_bytes(b"abc")
    entry = file_entry(str(path), str(tmp_path))
    assert entry == {
        "path": "table/a.parquet",
        "bytes": 3,
        # sha256("abc"), from FIPS 180-2's test vectors
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }
    with pytest.raises(ValueError, match="not under"):
        file_entry(str(path), str(tmp_path / "index"))


def test_bad_arguments_leave_the_published_version_alone(built) -> None:
    out, manifest, _, _ = built
    with pytest.raises(ValueError, match="k must be"):
        BuildConfig("run-2", ENCODER_SPEC, k=0)
    with pytest.raises(ValueError, match="version"):
        BuildConfig("", ENCODER_SPEC, k=10)
    assert read_manifest(str(out)) == manifest
    verify_files(str(out), manifest)


def test_target_recall_autotunes_and_records_the_measurements(tmp_path: Path) -> None:
    from serving.searcher import ImageSearcher

    # Clustered vectors, big enough (25k) that a tree beats brute force.
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((50, 16)).astype(np.float32)
    rows, _ = table_rows(25_000, 16, seed=3)
    data = centres[rng.integers(0, 50, 25_000)] + 0.3 * rng.standard_normal((25_000, 16))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    for row, vector in zip(rows, data, strict=True):
        row["embedding"] = vector.tolist()
    write_embedding_table(tmp_path, rows, 16, num_files=2)

    manifest = build_index(
        str(tmp_path), BuildConfig("tuned", ENCODER_SPEC, k=10, target_recall=0.9), {}
    )

    assert manifest.tuning is not None and manifest.tuning["target"]["recall"] == 0.9
    assert manifest.tuning["met_target"] and manifest.tuning["recall"] >= 0.9
    assert manifest.scann_params == manifest.tuning["params"]
    assert manifest.scann_params["kind"] == "tree_ah"
    assert read_manifest(str(tmp_path)).tuning == manifest.tuning

    # The published index keeps that recall on queries it has not seen.
    searcher = ImageSearcher.load(str(tmp_path))
    queries = data[rng.integers(0, 25_000, 300)] + 0.05 * rng.standard_normal((300, 16))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact, _ = exact_top_k(searcher.vectors.decoded(), queries, 10)
    row_of = {searcher.hit_for_row(r, 0.0).image_id: r for r in range(len(searcher))}
    recalls = [
        len({row_of[hit.image_id] for hit in hits} & set(truth.tolist())) / 10
        for hits, truth in zip(searcher.search_vectors(queries, 10), exact, strict=True)
    ]
    assert np.mean(recalls) >= 0.85
