"""``imgsearch index --models DIR [--joint_model NAME]``: joint column, joint shard, text search."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from encoders.base import TextEncoder
from encoders.joint import KIND_DUAL, KIND_W2VV, DenseLayer, JointModel
from imgsearch import cli
from index.manifest import read_manifest
from index.schema import embedding_table_schema
from index.table import parquet_files
from models.artifacts import save_joint_model
from models.joint import JointModelRef
from pipelines import index_job
from pipelines.options import IndexConfig
from pipelines.transforms import JointEmbeddingFn
from serving.searcher import ImageSearcher
from serving.text_search import TextSearcher
from tests.index_args import fake_index_args

FAKE_ID = "fake/v1"
NOW = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)


class HashTextEncoder(TextEncoder):
    """Deterministic text features: each word adds a seeded random vector."""

    name, version, dim = "hash", "v1", 16

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            row = np.zeros(self.dim, np.float32)
            for word in text.split():
                seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
                row += np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            rows.append(row / max(np.linalg.norm(row), 1e-12))
        return np.stack(rows)


def _layer(rng, inputs: int, units: int, activation: str = "linear") -> DenseLayer:
    kernel = rng.standard_normal((inputs, units)).astype(np.float32) / np.sqrt(inputs)
    return DenseLayer(kernel, rng.standard_normal(units).astype(np.float32) * 0.1, activation)


def _save(models: Path, name: str, kind: str, image_id: str = FAKE_ID, image_dim: int = 64):
    rng = np.random.default_rng(len(name))
    if kind == KIND_DUAL:
        model = JointModel(
            KIND_DUAL, "hash/v1", image_id, 16, image_dim,
            text_layers=(_layer(rng, 16, 24, "relu"), _layer(rng, 24, 12)),
            image_layers=(_layer(rng, image_dim, 12),),
        )  # fmt: skip
    else:
        model = JointModel(
            KIND_W2VV, "hash/v1", image_id, 16, image_dim, text_layers=(_layer(rng, 16, 64),)
        )
    metadata = {
        "text_encoder": {"name": "hash", "encoder_id": "hash/v1"},
        "image_encoder": {"name": image_id.split("/")[0], "image_size": 64, "encoder_id": image_id},
    }
    return model, save_joint_model(models, name, model, metadata, now=NOW)


def test_joint_model_adds_column_index_and_text_search(small_photo_dir: Path, tmp_path: Path):
    models, out = tmp_path / "models", tmp_path / "out"
    model, folder = _save(models, "dual-test", KIND_DUAL)
    index_job.run(
        fake_index_args(
            small_photo_dir, out, "test-1", "--models", str(models), "--joint_model", "dual-test"
        )
    )

    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read().sort_by("image_id")
    assert table.schema.remove_metadata() == embedding_table_schema(64, 12).remove_metadata()
    assert set(table["joint_model"].to_pylist()) == {f"dual-test/{folder.name}"}
    embedding = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    joint = np.stack(table["joint_embedding"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(joint, model.embed_image_features(embedding), atol=1e-5)

    manifest = read_manifest(str(out))
    assert manifest.joint_index["model"] == "dual-test"
    assert manifest.joint_index["model_version"] == folder.name
    assert manifest.joint_index["dim"] == 12
    listed = {entry["path"] for entry in manifest.files}
    assert f"{manifest.joint_index['shard']['ids_file']}" in listed
    assert any(p.startswith("index/joint-shard-00000/") and "ids" not in p for p in listed)

    images = ImageSearcher.load(str(out))  # verifies every checksum, joint shard included
    via_index = TextSearcher(images, model, HashTextEncoder(), ("dual-test", folder.name))
    projected = TextSearcher(images, model, HashTextEncoder())  # no version: projection
    assert via_index.uses_joint_index and not projected.uses_joint_index
    queries = ["a dog on grass", "red car", "two people walking"]
    for a, b in zip(
        via_index.search_many(queries, 4), projected.search_many(queries, 4), strict=True
    ):
        assert [h.image_id for h in a] == [h.image_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)

    # Another version of the model: the joint shard is not its space, so it projects.
    other = TextSearcher(images, model, HashTextEncoder(), ("dual-test", "20000101T000000Z-0"))
    assert not other.uses_joint_index


def test_index_without_joint_model_keeps_the_schema_and_manifest(small_photo_dir, tmp_path):
    out = tmp_path / "out"
    index_job.run(fake_index_args(small_photo_dir, out, "test-1"))
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    assert table.schema.remove_metadata() == embedding_table_schema(64).remove_metadata()
    assert "joint_index" not in (out / "manifest.json").read_text()
    assert read_manifest(str(out)).joint_index is None
    with pytest.raises(ValueError, match="no joint index"):
        ImageSearcher.load(str(out)).search_joint_vectors(np.ones((1, 12)), 3)


def test_invalid_joint_models_are_clear_errors_before_launch(tmp_path: Path):
    models, corpus = tmp_path / "models", tmp_path / "corpus"
    corpus.mkdir()
    _save(models, "w2vv-test", KIND_W2VV)
    _save(models, "dual-mobilenet", KIND_DUAL, "mobilenet_v2/v1-6714965a05ee-224", 1280)
    out = tmp_path / "out"

    def run(*extra: str) -> None:
        index_job.run(fake_index_args(corpus, out, "test-1", *extra))

    with pytest.raises(ValueError, match=r"w2vv model.*no joint column"):
        run("--models", str(models), "--joint_model", "w2vv-test")
    with pytest.raises(FileNotFoundError, match="no model 'nope'"):
        run("--models", str(models), "--joint_model", "nope")
    with pytest.raises(ValueError, match="trained on mobilenet_v2"):
        run("--models", str(models), "--joint_model", "dual-mobilenet")
    with pytest.raises(ValueError, match="go together"):
        run("--joint_model", "w2vv-test")
    # --models alone: its dual model, which must fit the explicit encoder (the fake one here).
    with pytest.raises(ValueError, match=r"trained on mobilenet_v2.*--models' default joint"):
        run("--models", str(models))
    only_w2vv = tmp_path / "w2vv-only"
    _save(only_w2vv, "w2vv-test", KIND_W2VV)
    with pytest.raises(ValueError, match=r"no published dual joint model.*imgsearch train joint"):
        run("--models", str(only_w2vv))
    with pytest.raises(FileNotFoundError, match="no model 'nope'"):  # captions only: no joint
        run("--models", str(only_w2vv), "--captioner", "nope")
    assert not out.exists()  # nothing was launched or cleared


def test_models_alone_default_to_their_dual_model_and_explicit_flags_override(tmp_path: Path):
    models = tmp_path / "models"
    _save(models, "w2vv-test", KIND_W2VV)
    _, mobilenet = _save(models, "dual-mobilenet", KIND_DUAL, "mobilenet_v2/v1-x-224", 1280)
    _, fake = _save(models, "dual-test", KIND_DUAL)

    def config(*flags: str) -> IndexConfig:
        argv = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), *flags]
        return IndexConfig.from_options(PipelineOptions(["--models", str(models), *argv]))

    chosen = config()  # the first dual model by name, and the encoder it was trained on
    assert chosen.joint_model.model_id == f"dual-mobilenet/{mobilenet.name}"
    assert (chosen.encoder.name, chosen.encoder.image_size) == ("mobilenet_v2", 64)
    named = config("--joint_model", "dual-test")
    assert named.joint_model.model_id == f"dual-test/{fake.name}"
    assert named.encoder.name == "fake"
    assert config("--joint_model", "none").joint_model is None
    with pytest.raises(
        ValueError, match=r"dual-mobilenet was trained on .*\"image_size\": 96.*none drops it"
    ):
        config("--image_size", "96")  # an explicit flag the default model does not fit


def test_cli_index_with_models_alone_adds_the_joint_column(small_photo_dir, tmp_path, capsys):
    models, out = tmp_path / "models", tmp_path / "out"
    _save(models, "w2vv-test", KIND_W2VV)
    _, folder = _save(models, "dual-test", KIND_DUAL)
    argv = ["--corpus", str(small_photo_dir), "--out", str(out), "--models", str(models)]
    assert cli.main(["index", *argv, "--run_version", "t1"]) == 0, capsys.readouterr().err
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    assert set(table["joint_model"].to_pylist()) == {f"dual-test/{folder.name}"}
    assert set(table["encoder"].to_pylist()) == {FAKE_ID}  # the model's encoder, not the stock
    assert read_manifest(str(out)).joint_index["model"] == "dual-test"


def test_joint_fn_refuses_rows_of_another_encoder_version(tmp_path: Path):
    models = tmp_path / "models"
    _, folder = _save(models, "dual-old", KIND_DUAL, "fake/v0")
    fn = JointEmbeddingFn(JointModelRef(str(models), "dual-old", folder.name, 12, "fake/v0"))
    fn.setup()
    row = {"encoder": FAKE_ID, "embedding": np.ones(64, np.float32) / 8}
    with pytest.raises(ValueError, match=r"takes fake/v0 image vectors.*encoder is fake/v1"):
        list(fn.process(row))


def test_a_models_query_bank_reranks_every_search_path_by_score_minus_bias(
    small_photo_dir: Path, tmp_path: Path
):
    """Joint shard, projection and W2VV's image index all rank by score minus each image's
    bank bias, and their hits carry the corrected score; ``score_all`` subtracts it too."""
    from encoders.base import l2_normalize
    from encoders.query_bank import QueryBank

    models, out = tmp_path / "models", tmp_path / "out"
    dual, folder = _save(models, "dual-test", KIND_DUAL)
    index_job.run(
        fake_index_args(
            small_photo_dir, out, "test-1", "--models", str(models), "--joint_model", "dual-test"
        )
    )
    images = ImageSearcher.load(str(out))
    stored = images.vectors.decoded()
    queries = ["a dog on grass", "red car", "two people walking"]
    rng = np.random.default_rng(7)
    w2vv, _ = _save(models, "w2vv-test", KIND_W2VV)
    for model, version in ((dual, ("dual-test", folder.name)), (dual, None), (w2vv, None)):
        # A bank crowded around one image's direction makes that image a hub.
        gallery = stored if model.kind == KIND_W2VV else model.embed_image_features(stored)
        crowd = gallery[:1] + 0.2 * rng.standard_normal((40, model.dim)).astype(np.float32)
        bank = QueryBank(l2_normalize(crowd), l2_normalize(crowd), temperature=0.05, strength=1)
        plain = TextSearcher(images, model, HashTextEncoder(), version)
        corrected = TextSearcher(images, model.with_query_bank(bank), HashTextEncoder(), version)
        bias = bank.image_bias(gallery)
        np.testing.assert_allclose(corrected.image_bias, bias, atol=1e-4)
        expected = l2_normalize(plain.embed_queries(queries)) @ gallery.T - bias[None]
        np.testing.assert_allclose(corrected.score_all(queries), expected, atol=1e-4)
        for row, hits in zip(expected, corrected.search_many(queries, 4), strict=True):
            best = np.argsort(-row, kind="stable")[:4]
            assert [h.image_id for h in hits] == [images.hit_for_row(r, 0).image_id for r in best]
            np.testing.assert_allclose([h.score for h in hits], row[best], atol=1e-4)
        pairs = zip(plain.search_many(queries, 4), corrected.search_many(queries, 4), strict=True)
        moved = [[h.image_id for h in a] != [h.image_id for h in b] for a, b in pairs]
        assert any(moved), "the hub's bias changed no ranking: the test shows nothing"
