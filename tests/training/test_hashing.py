"""Semantic hashing: ITQ beats PCA + sign, the autoencoder's codes survive the models dir, and
``imgsearch train hashing`` runs end to end on a table made by the index job."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.hamming import KIND_HASHING
from models.artifacts import list_models, load_hashing_model, read_metadata, save_hashing_model
from pipelines import index_job
from tests.index_args import fake_index_args
from training import train_hashing_job
from training.hashing import (
    AutoencoderTraining,
    code_recall,
    pca_projection,
    quantization_error,
    train_autoencoder,
    train_itq,
)


def _clustered(rows: int = 1200, dim: int = 48, seed: int = 0) -> np.ndarray:
    """Unit vectors around 30 non-negative centres, shaped like pooled CNN features."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((30, dim)))
    points = centres[rng.integers(0, 30, rows)] + 0.6 * rng.standard_normal((rows, dim))
    points = np.maximum(points, 0.0)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_itq_reduces_quantisation_error_against_pca_then_sign():
    x = _clustered()
    for bits in (16, 32):
        mean, components = pca_projection(x, bits)
        projected = (x - mean) @ components
        encoder, errors = train_itq(x, bits, iterations=30)
        assert errors[-1] < quantization_error(projected)
        assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(errors))
        # The saved projection gives ITQ's own codes: sign(V R).
        rotation = np.linalg.lstsq(components, encoder.kernel, rcond=None)[0]
        np.testing.assert_array_equal(
            np.unpackbits(encoder.encode(x), axis=1), (projected @ rotation > 0).astype(np.uint8)
        )
    with pytest.raises(ValueError, match="at least 64-d"):
        train_itq(x, 64)


def test_autoencoder_codes_round_trip_through_the_models_dir(tmp_path: Path):
    x = _clustered(rows=700, dim=32, seed=1)
    database, queries = x[100:], x[:100]
    training = AutoencoderTraining(hidden=32, epochs=3, batch_size=128, itq_iterations=10)
    encoder, history = train_autoencoder(database, 16, training, queries[:50], "fake/v1")
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2, 3]
    assert encoder.method == "autoencoder" and len(encoder.mlp) == 2
    itq, _ = train_itq(database, 16, 10)
    # The epoch kept is the best on the selection queries, the ITQ start included.
    best = history["epochs"][history["best_epoch"]]["selection_recall@10"]
    assert best >= history["epochs"][0]["selection_recall@10"]
    assert code_recall(encoder, database, queries[:50], r=100) == pytest.approx(best)
    assert code_recall(itq, database, queries, r=100) > 0.5

    folder = save_hashing_model(tmp_path, "hashing-16", encoder, {"history": history})
    loaded = load_hashing_model(tmp_path, "hashing-16")
    np.testing.assert_array_equal(loaded.encode(x), encoder.encode(x))
    assert (loaded.bits, loaded.dim, loaded.encoder_id) == (16, 32, "fake/v1")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "metadata.json", "weights.npz"
    ]  # fmt: skip


def test_train_hashing_job_end_to_end_on_an_index_job_table(tmp_path: Path, assets_dir: Path):
    photos = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:100]
    if len(photos) < 100:
        pytest.skip("Flickr8k photos missing from the assets folder")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for photo in photos:
        shutil.copy(photo, corpus / photo.name)
    index_job.run(fake_index_args(corpus, tmp_path / "out", "test-1"))
    models = tmp_path / "models"
    argv = ["--table", str(tmp_path / "out"), "--bits", "64", "--out", str(models),
            "--eval-queries", "10", "--selection-queries", "10", "--rerank", "10", "40",
            "--epochs", "2", "--hidden", "32", "--itq-iterations", "10"]  # fmt: skip
    assert train_hashing_job.main(argv) == 0
    (version,) = list_models(models)
    assert (version.name, version.kind, version.latest) == ("hashing-64", KIND_HASHING, True)
    metadata = read_metadata(version.path)
    assert metadata["dataset"]["rows"] == 100 and metadata["dataset"]["rows_trained"] == 80
    assert metadata["image_encoder"]["encoder_id"].startswith("fake/")
    figures = metadata["heldout_metrics"]
    assert set(figures) == {"itq", "autoencoder"}
    for method in figures.values():
        assert method["bytes_per_code"] == 8
        assert 0.0 <= method["recall@10_R10"] <= method["recall@10_R40"] <= 1.0
    assert figures["itq"]["quantization_error"] < figures["itq"]["pca_sign_quantization_error"]
    assert load_hashing_model(models, "hashing-64").method == "autoencoder"
    with pytest.raises(SystemExit):
        train_hashing_job.parse_args(["--table", "t", "--out", "m", "--bits", "32"])
