"""``imgsearch quantize``: make the int8 image encoder's ``.tflite`` file from real photos.

    imgsearch quantize --encoder mobilenet_v2 --weights auto --calibration DIR --out FILE.tflite

Builds the float32 embedding graph (``encoders.keras_image``), decodes ``--photos`` photos of
``--calibration`` exactly as the index job does (``encoders.imaging``), and converts the graph
to selective int8 calibrated on them (``encoders.quantize``). Then
``imgsearch index --encoder mobilenet_v2_int8 --weights FILE.tflite`` indexes with it.
The same photos and weights give the same file, hence the same encoder version.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.imaging import ImageRejected, decode_image
from encoders.keras_backbones import resolve_weights
from encoders.keras_image import build_embedding_models
from encoders.quantize import (
    DEFAULT_DEBUG_PHOTOS,
    DEFAULT_DENYLIST_SIZE,
    MIN_CALIBRATION_PHOTOS,
    quantize_embedding_model,
)
from encoders.tflite_image import TFLITE_ENCODERS, TFLITE_SUFFIX, variant_from_source
from runtime.arguments import command_parser, show_defaults
from storage.files import replace_by_rename

logger = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _parser() -> argparse.ArgumentParser:
    sources = sorted(variant.source for variant in TFLITE_ENCODERS.values())
    parser = command_parser(
        "imgsearch quantize",
        "Convert an image encoder to selective int8 (TFLite, XNNPACK) calibrated on real "
        "photos: about 3x float32's images/s on CPU at a mean cosine of ~0.99 to its vectors. "
        "Index with the result: --encoder mobilenet_v2_int8 --weights FILE.tflite.\n\n"
        "Calibrate on photos like the ones you will index (a few hundred); the photos are "
        "spread evenly over the folder's sorted file names, so a rerun makes the same file.",
        [
            "imgsearch quantize --encoder mobilenet_v2 --weights auto "
            "--calibration photos/ --out mobilenet_v2_int8.tflite",
            "imgsearch index --corpus photos/ --out out/ --encoder mobilenet_v2_int8 "
            "--weights mobilenet_v2_int8.tflite",
        ],
    )
    parser.add_argument("--encoder", default="mobilenet_v2", choices=sources)
    parser.add_argument(
        "--weights", default="auto", help="the float32 weights: auto, imagenet or a path"
    )
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--calibration", required=True, help="a folder of real photos")
    parser.add_argument("--photos", type=int, default=400, help="calibration photos to use")
    parser.add_argument(
        "--keep_float",
        type=int,
        default=DEFAULT_DENYLIST_SIZE,
        help="layers kept in float (the worst by rmse/scale); 0 = full int8",
    )
    parser.add_argument("--debug_photos", type=int, default=DEFAULT_DEBUG_PHOTOS)
    parser.add_argument("--out", required=True, help=f"the {TFLITE_SUFFIX} file to write")
    return show_defaults(parser)


def spread(items: Sequence[Path], count: int) -> list[Path]:
    """``count`` of ``items`` evenly spaced over the sequence (all of them when fewer)."""
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


def calibration_pixels(folder: Path, count: int, image_size: int) -> np.ndarray:
    """Decode ``count`` photos of ``folder`` like the index job -> ``(M, S, S, 3)`` uint8."""
    if not folder.is_dir():
        raise NotADirectoryError(f"--calibration {folder} is not a folder of photos")
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in PHOTO_SUFFIXES and not path.name.startswith(".")
    )
    pixels, rejected = [], 0
    for path in spread(files, count):
        try:
            pixels.append(decode_image(path.read_bytes(), (image_size, image_size))[0])
        except ImageRejected as reason:
            rejected += 1
            logger.warning("calibration photo %s skipped: %s", path, reason)
    if len(pixels) < MIN_CALIBRATION_PHOTOS:
        raise ValueError(
            f"--calibration {folder} gave {len(pixels)} usable photos ({len(files)} image files, "
            f"{rejected} rejected); need at least {MIN_CALIBRATION_PHOTOS}, a few hundred is best"
        )
    return np.stack(pixels)


def main(argv: Sequence[str]) -> int:
    """Run ``imgsearch quantize``; -> the exit status (user errors raise ValueError & co)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.photos < MIN_CALIBRATION_PHOTOS:
        parser.error(f"--photos must be >= {MIN_CALIBRATION_PHOTOS}, got {args.photos}")
    if args.keep_float < 0 or args.debug_photos < 1:
        parser.error("--keep_float must be >= 0 and --debug_photos >= 1")
    out = Path(args.out).expanduser()
    if not out.name.endswith(TFLITE_SUFFIX):
        raise ValueError(f"--out {out} must end in {TFLITE_SUFFIX}")
    name, _ = variant_from_source(args.encoder)
    resolved = resolve_weights(args.encoder, args.weights)  # fails before decoding anything
    calibration = calibration_pixels(Path(args.calibration), args.photos, args.image_size)
    model = build_embedding_models(args.encoder, resolved.keras_weights, args.image_size)[0]
    quantized = quantize_embedding_model(
        model, calibration, denylist_size=args.keep_float, debug_photos=args.debug_photos
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_by_rename(str(out.parent), out.name, quantized.tflite)
    digest = hashlib.sha256(quantized.tflite).hexdigest()[:12]
    print(
        f"wrote {out} ({len(quantized.tflite) / 2**20:.1f} MiB, sha256 {digest}): "
        f"{args.encoder} ({resolved.tag}) calibrated on {quantized.calibration_photos} photos, "
        f"{len(quantized.denylist)} layers kept in float"
    )
    print(
        f"index with: imgsearch index --int8_weights {out} ... (int8 on CPU workers, float32 on "
        f"GPU ones: --precision auto), or --encoder {name} --weights {out} (int8 everywhere)"
    )
    return 0
