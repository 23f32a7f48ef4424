"""A corpus of distinct real photos larger than the assets: Flickr8k photos and variants of them.

Run: ``.venv/bin/python benchmarks/variant_corpus.py OUT_DIR N`` (also used by bench_incremental).

The assets hold 7,091 Flickr8k photos; a benchmark whose fixed costs (process start, imports,
model load) must be small next to the per-image work needs more. Variant ``k`` of a photo is a
deterministic crop (88-100% of each side), a mirror on odd ``k`` and a small brightness change,
resized back to the photo's size and saved as a JPEG at quality 90: new bytes (a new content
hash, so never a duplicate) and new pixels of a real scene, at the cost per image of the
originals. Variant 0 is the original file itself, linked, not copied.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]


def variant_bytes(photo: Path, k: int) -> bytes:
    """Variant ``k`` (>= 1) of ``photo`` as JPEG bytes; the same bytes for the same inputs."""
    rng = random.Random(f"{photo.name}/{k}")
    with Image.open(photo) as image:
        image = image.convert("RGB")
        width, height = image.size
        cw, ch = round(width * rng.uniform(0.88, 1.0)), round(height * rng.uniform(0.88, 1.0))
        left, top = rng.randint(0, width - cw), rng.randint(0, height - ch)
        image = image.crop((left, top, left + cw, top + ch)).resize((width, height))
        if k % 2:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _write(job: tuple[Path, int, Path]) -> None:
    photo, k, target = job
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(variant_bytes(photo, k))
        tmp.rename(target)


def variant_paths(photos: list[Path], n: int, folder: Path) -> list[Path]:
    """The first ``n`` images of the corpus under ``folder``: originals first, then variants."""
    paths = []
    for index in range(n):
        k, photo = divmod(index, len(photos))
        name = photos[photo].name if k == 0 else f"{Path(photos[photo].name).stem}-v{k:02d}.jpg"
        paths.append(folder / f"v{k:02d}" / name)
    return paths


def make_variants(
    photos: list[Path], n: int, folder: Path, workers: int | None = None
) -> list[Path]:
    """Create (or find, from an earlier call) the first ``n`` images under ``folder``."""
    paths = variant_paths(photos, n, folder)
    jobs = []
    for index, path in enumerate(paths):
        k, photo = divmod(index, len(photos))
        path.parent.mkdir(parents=True, exist_ok=True)
        if k == 0:
            if not path.exists():
                path.symlink_to(photos[photo])
        elif not path.exists():
            jobs.append((photos[photo], k, path))
    if jobs:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            list(pool.map(_write, jobs, chunksize=64))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from imgsearch import settings

    assets = settings.assets_dir()
    if assets is None:
        raise SystemExit("no assets folder (../shared/assets)")
    photos = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    paths = make_variants(photos, args.n, args.folder)
    print(f"{len(paths)} images under {args.folder}")


if __name__ == "__main__":
    main()
