"""The index job end to end: DirectRunner, Parquet, ScaNN, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from index.manifest import read_manifest
from index.schema import embedding_table_schema
from index.table import parquet_files
from pipelines import index_job
from pipelines.types import image_id_for_uri
from serving.searcher import ImageSearcher
from tests.index_args import fake_index_args

REPO = Path(__file__).resolve().parents[2]


def _read_table(out: Path):
    return pq.ParquetDataset(parquet_files(str(out / "table"))).read().sort_by("image_id")


@pytest.fixture()
def corpus(small_photo_dir: Path) -> Path:
    photos = sorted(small_photo_dir.glob("*.jpg"))
    shutil.copy(photos[0], small_photo_dir / "zz_duplicate.jpg")
    (small_photo_dir / "notes.jpg").write_text("not an image")
    (small_photo_dir / ".DS_Store").write_bytes(b"\0")
    return small_photo_dir


def test_index_run_writes_table_index_and_manifest(corpus, tmp_path):
    out = tmp_path / "out"
    result = index_job.run(fake_index_args(corpus, out, "test-1"))

    assert result.counts == {
        "inputs": 8,
        "indexed": 6,
        "duplicates": 1,
        "dead_letters": 1,
        "hidden_files_skipped": 1,
    }
    assert "dead letters  1" in result.summary()
    table = _read_table(out)
    assert table.schema.remove_metadata() == embedding_table_schema(64).remove_metadata()
    assert table.num_rows == 6
    first = corpus / sorted(p.name for p in corpus.glob("*.jpg"))[0]
    row = table.filter(pc.equal(table["uri"], str(first))).to_pylist()[0]
    assert row["duplicate_uris"] == [str(corpus / "zz_duplicate.jpg")]
    assert row["image_id"] == image_id_for_uri(str(first))
    assert row["encoder"] == "fake/v1"
    assert np.linalg.norm(row["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert 0 < row["width"] and 0 < row["height"]

    manifest = read_manifest(str(out))
    assert manifest.version == "test-1" and manifest.dim == 64
    assert manifest.counts["indexed"] == 6

    searcher = ImageSearcher.load(str(out))
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    for i, hits in enumerate(searcher.search_vectors(vectors, k=3)):
        assert hits[0].image_id == table["image_id"][i].as_py()
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_relative_corpus_paths_are_stored_absolute(small_photo_dir, tmp_path, monkeypatch):
    """Issue 24: a relative corpus (a folder, and a manifest of paths relative to it) gave
    relative uris, which the server resolved against its own working directory."""
    photos = sorted(small_photo_dir.glob("*.jpg"))[:2]
    (small_photo_dir / "m.jsonl").write_text(
        "".join(json.dumps({"uri": p.name}) + "\n" for p in photos)
    )
    every = {str(p) for p in small_photo_dir.glob("*.jpg")}
    monkeypatch.chdir(small_photo_dir.parent)
    relative = Path(small_photo_dir.name)
    for corpus, expected in ((relative, every), (relative / "m.jsonl", {str(p) for p in photos})):
        out = tmp_path / corpus.name
        index_job.run(fake_index_args(corpus, out, "v1"))
        assert set(_read_table(out)["uri"].to_pylist()) == expected


def test_rerun_is_idempotent(corpus, tmp_path):
    out = tmp_path / "out"
    index_job.run(fake_index_args(corpus, out, "test-1", "--table_shards", "3"))
    first = _read_table(out)
    assert len(parquet_files(str(out / "table"))) == 3
    index_job.run(fake_index_args(corpus, out, "test-1", "--table_shards", "2"))
    second = _read_table(out)
    assert len(parquet_files(str(out / "table"))) == 2  # no stale shard of the first run
    assert first.equals(second)


def test_manifest_corpus_with_ids_metadata_and_missing_files(corpus, tmp_path):
    photos = sorted(corpus.glob("*.jpg"))[:3]
    manifest = tmp_path / "corpus.csv"
    lines = ["uri,id,title"]
    lines += [f"{p},photo-{i},title {i}" for i, p in enumerate(photos)]
    lines += ["missing.jpg,gone,never there", ",noid,no uri at all"]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"

    result = index_job.run(fake_index_args(manifest, out, "test-1"))

    assert result.counts["inputs"] == 5
    assert (result.counts["indexed"], result.counts["dead_letters"]) == (3, 2)
    rows = _read_table(out).to_pylist()
    assert [r["image_id"] for r in rows] == ["photo-0", "photo-1", "photo-2"]
    assert json.loads(rows[1]["metadata"]) == {"title": "title 1"}
    dead = pq.ParquetDataset(parquet_files(str(out / "dead_letters"))).read().to_pylist()
    assert sorted((d["stage"], d["image_id"]) for d in dead) == [("fetch", "gone"), ("read", "")]


def test_bad_flags_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--corpus is required"):
        index_job.run(["--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--target_recall must be in"):
        index_job.run(["--corpus", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--target_recall", "1.5"])  # fmt: skip
    with pytest.raises(ValueError, match="matched no files"):
        index_job.run(["--corpus", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])


@pytest.mark.slow
def test_cli_index_and_search_with_real_mobilenet(corpus, tmp_path, mobilenet_weights):
    """What a user runs: `imgsearch index` then `imgsearch search`, real weights, real photos."""
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cli = [sys.executable, "-m", "imgsearch.cli"]
    indexed = subprocess.run(
        [
            *cli,
            "index",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--weights",
            str(mobilenet_weights),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert indexed.returncode == 0, indexed.stderr[-3000:]
    assert "table rows    6" in indexed.stdout and "duplicates    1" in indexed.stdout

    query = sorted(corpus.glob("*.jpg"))[2]
    searched = subprocess.run(
        [*cli, "search", "--index", str(out), "--image", str(query), "-k", "3", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert searched.returncode == 0, searched.stderr[-3000:]
    hits = json.loads(searched.stdout)
    assert len(hits) == 3
    # The query path re-encodes the file with the same encoder code as the pipeline, so the
    # indexed copy of the query is found with a dot product of 1.
    assert hits[0]["uri"] == str(query)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[1]["score"] < 0.95

    missing = subprocess.run(
        [*cli, "search", "--index", str(out), "--image-id", "no-such-id"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert missing.returncode == 2 and "no-such-id" in missing.stderr
