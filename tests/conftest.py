"""Fixtures shared by the whole suite: real photos and weights from the assets folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgsearch import settings


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
