"""Session fixtures for the server tests: real index versions made by the real index job.

Built once per session: a bag-of-words text encoder fitted on real Flickr8k captions, a small
dual joint model over the fake image encoder (random weights: these tests check wiring and the
search contract, the trained-model quality is tested in tests/training), and two index versions
of real COCO photos (v1: 6 photos, v2: 8 photos) made by ``pipelines.index_job`` with that
model's joint shard.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.joint import KIND_DUAL, DenseLayer, JointModel
from encoders.text_registry import create_text_encoder, fit_text_encoder
from index.publish import version_dir, write_pointer
from models.artifacts import save_joint_model
from pipelines import index_job
from tests.index_args import fake_index_args

JOINT_MODEL = "dual-serve-test"
FAKE_IMAGE_ID = "fake/v1"
FAKE_DIM = 64


def _layer(rng, inputs: int, units: int, activation: str = "linear") -> DenseLayer:
    kernel = rng.standard_normal((inputs, units)).astype(np.float32) / np.sqrt(inputs)
    return DenseLayer(kernel, rng.standard_normal(units).astype(np.float32) * 0.1, activation)


@pytest.fixture(scope="session")
def serve_photos(tmp_path_factory, coco_photos: list[Path]) -> list[Path]:
    """Eight real COCO photos of mixed sizes, copied into a temp dir (never into the repo)."""
    folder = tmp_path_factory.mktemp("serve-photos")
    for photo in coco_photos[:8]:
        shutil.copy(photo, folder / photo.name)
    return sorted(folder.iterdir())


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory, flickr_caption_rows) -> Path:
    """A models dir holding one dual joint model (bag-of-words text side, fake image side)."""
    models = tmp_path_factory.mktemp("serve-models")
    captions = [caption for _, caption in flickr_caption_rows]
    spec = fit_text_encoder("bow", captions, models / "bow-text", min_count=2)
    text_encoder = create_text_encoder(spec)
    rng = np.random.default_rng(5)
    model = JointModel(
        KIND_DUAL, text_encoder.encoder_id, FAKE_IMAGE_ID, text_encoder.dim, FAKE_DIM,
        text_layers=(_layer(rng, text_encoder.dim, 32, "relu"), _layer(rng, 32, 16)),
        image_layers=(_layer(rng, FAKE_DIM, 16),),
    )  # fmt: skip
    metadata = {
        "text_encoder": {**spec.to_json(), "encoder_id": text_encoder.encoder_id},
        "image_encoder": {"name": "fake", "image_size": 64, "encoder_id": FAKE_IMAGE_ID},
    }
    save_joint_model(
        models, JOINT_MODEL, model, metadata, now=dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    )
    return models


def _index(photos: list[Path], out: Path, models: Path, version: str) -> Path:
    # A manifest of uris, so both versions name the same files (image ids derive from uris)
    # and each row's extra fields become the image's source metadata.
    corpus = out.parent / f"{version}-corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"uri": str(p), "title": f"photo {p.stem}"}) + "\n" for p in photos)
    )
    index_job.run(
        fake_index_args(corpus, out, version, "--models", str(models), "--joint_model", JOINT_MODEL)
    )
    return out


@pytest.fixture(scope="session")
def built_versions(tmp_path_factory, serve_photos, serve_models) -> dict[str, Path]:
    """Two index versions, built once: v1 over 6 photos, v2 over all 8."""
    base = tmp_path_factory.mktemp("serve-built")
    return {
        "v1": _index(serve_photos[:6], base / "v1", serve_models, "v1"),
        "v2": _index(serve_photos, base / "v2", serve_models, "v2"),
    }


def publish(root: Path, built: Path, version: str) -> Path:
    """Copy a built index into ``root`` as ``version`` and point ``latest.json`` at it."""
    target = Path(version_dir(str(root), version))
    shutil.copytree(built, target)
    write_pointer(str(root), version)
    return target


@pytest.fixture()
def publish_root(tmp_path: Path, built_versions) -> Path:
    """A fresh publish root serving v1."""
    root = tmp_path / "published"
    publish(root, built_versions["v1"], "v1")
    return root
