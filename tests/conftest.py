"""Fixtures shared by the whole suite: real photos and weights from the assets folder."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.joint import KIND_DUAL, DenseLayer, JointModel
from encoders.text_registry import create_text_encoder, fit_text_encoder
from imgsearch import settings
from models.artifacts import save_joint_model
from pipelines import index_job
from tests.index_args import fake_index_args
from tests.serving.conftest import FAKE_DIM, FAKE_IMAGE_ID, JOINT_MODEL


def _assets() -> Path:
    found = settings.assets_dir()
    if found is None or not found.is_dir():
        pytest.skip("no assets folder: " + settings.describe_assets_layout())
    return found


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return _assets()


@pytest.fixture(scope="session")
def mobilenet_weights(assets_dir: Path) -> Path:
    path = assets_dir / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    return path


@pytest.fixture(scope="session")
def coco_photos(assets_dir: Path) -> list[Path]:
    """Full-size COCO photos of mixed sizes (sorted, so tests pick the same ones every run)."""
    photos = sorted((assets_dir / "datasets" / "coco-mini" / "val2017").glob("*.jpg"))
    if len(photos) < 8:
        pytest.skip("coco-mini photos missing from the assets folder")
    return photos


@pytest.fixture()
def small_photo_dir(tmp_path: Path, coco_photos: list[Path]) -> Path:
    """A folder of six real photos (copied into the test's temp dir, never into the repo)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in coco_photos[:6]:
        shutil.copy(photo, folder / photo.name)
    return folder


@pytest.fixture(scope="session")
def flickr_caption_rows(assets_dir: Path) -> list[tuple[str, str]]:
    """The first 500 (image, caption) rows of Flickr8k's captions.tsv: 100 images x 5 captions."""
    path = assets_dir / "datasets" / "flickr8k" / "captions.tsv"
    if not path.is_file():
        pytest.skip(f"missing {path} (Flickr8k captions: image<TAB>caption per line)")
    with path.open(encoding="utf-8") as lines:
        next(lines)  # header
        return [tuple(next(lines).rstrip("\n").split("\t", 1)) for _ in range(500)]


@pytest.fixture(scope="session")
def coco(assets_dir: Path) -> Path:
    """The COCO-mini dataset folder with its val2017 captions (skips when missing)."""
    root = assets_dir / "datasets" / "coco-mini"
    if not (root / "annotations" / "captions_val2017.json").is_file():
        pytest.skip("coco-mini captions missing from the assets folder")
    return root


# The served index: real index versions made by the real index job, built once per session for
# the server tests (tests/serving) and the library API and client (tests/imgsearch). A
# bag-of-words text encoder fitted on real Flickr8k captions, a small dual joint model over the
# fake image encoder (random weights: these tests check wiring and the search contract, the
# trained-model quality is tested in tests/training), and two index versions of real COCO
# photos (v1: 6 photos, v2: 8 photos) made by ``pipelines.index_job`` with that model's joint
# shard.


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


SERVE_METADATA_COLUMNS = "site:string,taken:timestamp,rating:int"


def _index(photos: list[Path], out: Path, models: Path, version: str) -> Path:
    # A manifest of uris, so both versions name the same files (image ids derive from uris)
    # and each row's extra fields become the image's source metadata.
    corpus = out.parent / f"{version}-corpus.jsonl"
    # Typed metadata columns (filters): a site per photo, a date, a rating; row 3 has no rating.
    rows = [
        {"uri": str(p), "title": f"photo {p.stem}", "site": ("flickr", "coco")[i % 2],
         "taken": f"2020-0{1 + i % 9}-15", **({"rating": i} if i != 3 else {})}
        for i, p in enumerate(photos)
    ]  # fmt: skip
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    index_job.run(
        fake_index_args(
            corpus, out, version, "--models", str(models), "--joint_model", JOINT_MODEL,
            "--metadata_columns", SERVE_METADATA_COLUMNS,
        )
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def built_versions(tmp_path_factory, serve_photos, serve_models) -> dict[str, Path]:
    """Two index versions, built once: v1 over 6 photos, v2 over all 8."""
    base = tmp_path_factory.mktemp("serve-built")
    return {
        "v1": _index(serve_photos[:6], base / "v1", serve_models, "v1"),
        "v2": _index(serve_photos, base / "v2", serve_models, "v2"),
    }
