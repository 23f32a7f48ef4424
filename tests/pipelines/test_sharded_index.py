"""Sharded indexes: built by a Beam job (DirectRunner), merged by the searcher, real ScaNN."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.build import BuildConfig, build_index
from index.manifest import read_manifest, verify_files
from index.scann_index import ScannParams, exact_top_k
from index.schema import embedding_table_schema
from index.shards import read_ids, shard_of_ids
from index.table import read_embedding_table
from serving.searcher import ImageSearcher
from tests.index.test_build_index import ENCODER_SPEC, table_rows, write_embedding_table
from tests.index_args import fake_index_args

DIM = 24
NUM_ROWS = 900
SHARDS = 3


@pytest.fixture(scope="module")
def sharded_and_single(tmp_path_factory: pytest.TempPathFactory):
    """The same table indexed as 3 shards and as 1 (brute force: exact in both)."""
    rows, embeddings = table_rows(NUM_ROWS, DIM, seed=21)
    sharded, single = tmp_path_factory.mktemp("sharded"), tmp_path_factory.mktemp("single")
    for out in (sharded, single):
        write_embedding_table(out, rows, DIM, num_files=4)
    manifest = build_index(
        str(sharded), BuildConfig("s3", ENCODER_SPEC, k=10, num_shards=SHARDS), {}
    )
    build_index(str(single), BuildConfig("s1", ENCODER_SPEC, k=10), {})
    return sharded, single, manifest, rows, embeddings


def test_shard_of_ids_is_stable_and_even() -> None:
    ids = [f"img-{i}" for i in range(6000)]
    shards = shard_of_ids(ids, 4)
    # The rule itself (not Python's salted hash()): the same id lands in the same shard in
    # every process and every run.
    expected = int.from_bytes(hashlib.sha256(b"img-7").digest()[:8], "big") % 4
    assert shards[7] == expected
    assert np.array_equal(shards, shard_of_ids(ids, 4))
    counts = np.bincount(shards, minlength=4)
    assert counts.min() > 0.9 * 1500 and counts.max() < 1.1 * 1500
    assert shard_of_ids(ids[:5], 1).tolist() == [0] * 5
    with pytest.raises(ValueError, match="num_shards"):
        shard_of_ids(ids, 0)


def test_sharded_build_writes_self_contained_shards(sharded_and_single) -> None:
    out, _, manifest, rows, _ = sharded_and_single
    assert read_manifest(str(out)) == manifest
    verify_files(str(out), manifest)
    assert manifest.sharding == {
        "assignment": "sha256(image_id)[:8] mod index_shards",
        "num_shards": SHARDS,
    }
    assert [s["index_dir"] for s in manifest.shards] == [
        f"index/shard-{i:05d}" for i in range(SHARDS)
    ]
    assert manifest.counts["indexed"] == NUM_ROWS
    seen: set[str] = set()
    for number, shard in enumerate(manifest.shards):
        image_ids, _ = read_ids(str(out / shard["ids_file"]))
        assert len(image_ids) == shard["count"] > 0
        assert set(shard_of_ids(image_ids, SHARDS).tolist()) == {number}
        assert not seen & set(image_ids)
        seen |= set(image_ids)
        files = manifest.files_under(shard["index_dir"])
        assert shard["bytes"] == sum(entry["bytes"] for entry in files)
        assert {"scann_assets.pbtxt", "ids.parquet"} <= {e["path"].rsplit("/")[-1] for e in files}
        assert ScannParams.from_json(shard["scann_params"]).kind == "brute_force"
    assert seen == {row["image_id"] for row in rows}  # one global id space, nothing lost
    # The builders' result files are bookkeeping, removed once the manifest is written.
    assert not (out / "index" / "_shard_results").exists()


def test_merge_over_shards_equals_one_index(sharded_and_single) -> None:
    sharded_dir, single_dir, _, rows, embeddings = sharded_and_single
    sharded, single = ImageSearcher.load(str(sharded_dir)), ImageSearcher.load(str(single_dir))
    assert len(sharded) == len(single) == NUM_ROWS
    queries = np.random.default_rng(5).standard_normal((40, DIM)).astype(np.float32)
    for k in (1, 10, 50):
        got, want = sharded.search_vectors(queries, k), single.search_vectors(queries, k)
        assert [[h.image_id for h in hits] for hits in got] == [
            [h.image_id for h in hits] for hits in want
        ]
        np.testing.assert_allclose(
            [[h.score for h in hits] for hits in got],
            [[h.score for h in hits] for hits in want],
            rtol=0,
            atol=1e-6,
        )
    # A stored vector finds itself, whichever shard holds it; global rows map back right.
    hits = sharded.similar_to_image_id(rows[17]["image_id"], 5)
    assert rows[17]["image_id"] not in {h.image_id for h in hits}
    assert sharded.search_vector(embeddings[17], 1)[0].image_id == rows[17]["image_id"]
    row_of = {sharded.hit_for_row(r, 0.0).image_id: r for r in range(len(sharded))}
    np.testing.assert_array_equal(sharded.vectors[row_of[rows[3]["image_id"]]], embeddings[3])
    # k beyond the index is clipped, not padded.
    assert len(sharded.search_vector(embeddings[0], NUM_ROWS + 5)) == NUM_ROWS


def test_joint_shards_are_built_and_merged(tmp_path: Path) -> None:
    rows, _ = table_rows(300, 8, seed=4)
    joint = np.random.default_rng(4).standard_normal((300, 6)).astype(np.float32)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    for row, vector in zip(rows, joint, strict=True):
        row["joint_embedding"] = vector.tolist()
        row["joint_model"] = "dual/3"
    (tmp_path / "table").mkdir()
    schema = embedding_table_schema(8, 6)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), tmp_path / "table" / "embeddings-0.parquet"
    )
    manifest = build_index(str(tmp_path), BuildConfig("j", ENCODER_SPEC, k=5, num_shards=2), {})
    assert manifest.joint_index["model"] == "dual" and manifest.joint_index["model_version"] == "3"
    assert [s["index_dir"] for s in manifest.joint_shards] == [
        "index/joint-shard-00000",
        "index/joint-shard-00001",
    ]
    searcher = ImageSearcher.load(str(tmp_path))
    hits = searcher.search_joint_vectors(joint[:20], 3)
    assert [h[0].image_id for h in hits] == [row["image_id"] for row in rows[:20]]
    exact, _ = exact_top_k(joint, joint[20:30], 3)
    got = searcher.search_joint_vectors(joint[20:30], 3)
    assert [[h.image_id for h in hs] for hs in got] == [
        [rows[i]["image_id"] for i in row] for row in exact
    ]


def test_bad_shard_requests_are_refused(tmp_path: Path) -> None:
    rows, _ = table_rows(4, 8)
    write_embedding_table(tmp_path, rows, 8, num_files=1)
    with pytest.raises(ValueError, match="num_shards"):
        BuildConfig("v", ENCODER_SPEC, num_shards=0)
    with pytest.raises(ValueError, match="autotuning sharded"):
        BuildConfig("v", ENCODER_SPEC, num_shards=2, target_recall=0.9)
    # 4 rows over 16 shards: some shard is empty; refused before the old index is touched.
    build_index(str(tmp_path), BuildConfig("v1", ENCODER_SPEC), {})
    with pytest.raises(ValueError, match=r"shard\(s\) \[.*\] with no rows"):
        build_index(str(tmp_path), BuildConfig("v", ENCODER_SPEC, num_shards=16), {})
    assert read_manifest(str(tmp_path)).version == "v1"
    table = read_embedding_table([str(p) for p in (tmp_path / "table").glob("*.parquet")])
    assert len(table) == 4


def test_one_shard_manifests_of_the_old_format_still_load(tmp_path: Path) -> None:
    rows, embeddings = table_rows(50, 8, seed=2)
    write_embedding_table(tmp_path, rows, 8, num_files=2)
    build_index(str(tmp_path), BuildConfig("old", ENCODER_SPEC, k=5), {})
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    data.pop("lineage")
    data["shards"] = [
        {key: shard[key] for key in ("index_dir", "ids_file", "count")} for shard in data["shards"]
    ]
    path.write_text(json.dumps(data))
    searcher = ImageSearcher.load(str(tmp_path))
    assert searcher.manifest.lineage is None
    assert searcher.search_vector(embeddings[9], 1)[0].image_id == rows[9]["image_id"]


def test_index_job_with_index_shards(small_photo_dir: Path, tmp_path: Path) -> None:
    """``imgsearch index --index_shards 2`` on real photos: two shards, one searchable index."""
    from pipelines import index_job

    # Fixed ids (a manifest corpus), so the shards' rows do not depend on the temp path: ids
    # hashed from uris could leave one of two shards empty in 1 run of 32.
    ids = [f"photo-{i}" for i in range(6)]
    assert set(shard_of_ids(ids, 2).tolist()) == {0, 1}
    manifest = tmp_path / "corpus.csv"
    photos = sorted(small_photo_dir.glob("*.jpg"))
    manifest.write_text(
        "uri,id\n" + "".join(f"{p},{i}\n" for p, i in zip(photos, ids, strict=True))
    )
    out = tmp_path / "out"
    args = fake_index_args(manifest, out, "sharded")
    result = index_job.run([*args, "--index_shards", "2"])
    assert len(result.manifest.shards) == 2
    assert sum(s["count"] for s in result.manifest.shards) == result.counts["indexed"] == 6
    searcher = ImageSearcher.load(str(out))
    assert sorted(searcher.hit_for_row(r, 0).image_id for r in range(6)) == ids
    for row in range(len(searcher)):
        top = searcher.search_vector(searcher.vectors[row], 1)[0]
        assert top.image_id == searcher.hit_for_row(row, 0).image_id
    with pytest.raises(ValueError, match="--index_shards must be >= 1"):
        index_job.run([*args, "--index_shards", "0"])
