"""Generated captions as table columns in a real index job (DirectRunner, MobileNetV2, Parquet)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index.table import parquet_files, read_caption_texts, read_table_columns, table_has_columns
from pipelines import index_job
from serving.details import ImageDetails
from tests.tiny_captioner import save_tiny_captioner

PHOTOS = ("1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg", "1007129816_e794419615.jpg")


@pytest.fixture()
def models(tmp_path: Path, mobilenet_weights: Path) -> Path:
    """A tiny untrained captioner for MobileNetV2 maps: wiring, not quality, is tested here."""
    models = tmp_path / "models"
    save_tiny_captioner(models, mobilenet_weights)
    return models


def test_index_job_adds_caption_and_tag_columns(assets_dir, tmp_path, models, mobilenet_weights):
    corpus = tmp_path / "photos"
    corpus.mkdir()
    for name in PHOTOS:
        shutil.copy(assets_dir / "datasets" / "flickr8k" / "images" / name, corpus / name)
    out = tmp_path / "out"
    result = index_job.run(
        ["--corpus", str(corpus), "--out", str(out), "--weights", str(mobilenet_weights),
         "--models", str(models), "--captioner", "captioner", "--tag_head", "auto",
         "--run_version", "t1"]
    )  # fmt: skip
    assert result.counts["indexed"] == 3
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    assert "_spatial" not in table.column_names
    for row in table.to_pylist():
        words = row["caption"].split()
        assert 1 <= len(words) <= 6 and all(w.isalpha() for w in words), row["caption"]
        assert np.isfinite(row["caption_score"]) and row["caption_score"] <= 0
        assert row["caption_model"].startswith("captioner/")
        assert len(row["tags"]) == 5
        # Every distinct beam of the width-3 search, best first: the first is the caption.
        texts = [c["text"] for c in row["captions"]]
        assert 1 <= len(texts) <= 3 and len(set(texts)) == len(texts)
        assert row["captions"][0] == {"text": row["caption"], "score": row["caption_score"]}
        scores = [c["score"] for c in row["captions"]]
        assert scores == sorted(scores, reverse=True)
    assert table_has_columns(str(out), ["caption", "tags", "captions"])
    ids = sorted(table.column("image_id").to_pylist())
    columns = read_table_columns(str(out), ["caption", "captions"], ids)
    assert len(columns["caption"]) == 3
    beams = read_caption_texts(str(out), ids)
    assert beams == [[c["text"] for c in cell] for cell in columns["captions"]]
    details = ImageDetails(table).describe(ids[0])
    assert details["captions"] == columns["captions"][0]

    # A table written before the captions column: each image's one caption is its list.
    older = tmp_path / "older"
    (older / "table").mkdir(parents=True)
    pq.write_table(table.drop_columns(["captions"]), older / "table" / "part-0.parquet")
    assert read_caption_texts(str(older), ids) == [[text] for text in columns["caption"]]
    assert ImageDetails(table.drop_columns(["captions"])).describe(ids[0])["captions"] == [
        {"text": columns["caption"][0], "score": details["caption_score"]}
    ]


def test_captioner_flags_are_checked_before_launch(tmp_path, models):
    base = ["--corpus", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="needs --models"):
        index_job.run([*base, "--captioner", "captioner"])
    with pytest.raises(ValueError, match="trained on"):
        index_job.run([*base, "--models", str(models), "--captioner", "captioner",
                       "--encoder", "fake", "--weights", "none"])  # fmt: skip
    with pytest.raises(FileNotFoundError):
        index_job.run([*base, "--models", str(models), "--captioner", "nothing"])
