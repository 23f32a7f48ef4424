"""Small, deterministic test inputs written on demand: good photos, odd-but-valid images, junk.

Every function takes a folder, writes one file into it and returns the file's path. Files stay
far below 50 KB (a decompression bomb is a 100-byte PNG whose header lies), so tests can make
dozens of them per run. Nothing here is random without a seed.

``BAD_INPUTS`` and ``ODD_VALID_INPUTS`` name every kind, so tests can parametrize over them and
a new kind added here is picked up by every such test.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

# Colours used where a test checks where a region ended up.
RED = (230, 20, 20)
GREEN = (20, 200, 40)
BLUE = (20, 40, 230)
YELLOW = (240, 220, 30)


def photo_like_array(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 picture with smooth gradients, blobs and mild grain.

    ``size`` is ``(width, height)``, as in PIL. Smooth content compresses like a photo (small
    JPEGs) while still giving resizing and colour conversion something to get wrong.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-0.5, 0.5, size=(2, 3)) * 200
    image = base + (xs / width)[..., None] * slope[0] + (ys / height)[..., None] * slope[1]
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.08, 0.3) * min(width, height)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(-90, 90, size=3)
    image += rng.normal(0, 3, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def jpeg_bytes(size: tuple[int, int] = (320, 240), seed: int = 0, quality: int = 85) -> bytes:
    """The bytes ``good_jpeg`` writes, for tests that need them in memory."""
    buffer = io.BytesIO()
    Image.fromarray(photo_like_array(size, seed)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def good_jpeg(path: Path, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """A valid, photo-like RGB JPEG of ``size`` (width, height); same seed, same bytes."""
    path.write_bytes(jpeg_bytes(size, seed))
    return path


# --- inputs that must be rejected ---------------------------------------------------------


def empty_file(folder: Path) -> Path:
    path = folder / "empty.jpg"
    path.write_bytes(b"")
    return path


def truncated_jpeg(folder: Path) -> Path:
    """A real JPEG cut in half: the header parses, the scan data ends early."""
    data = jpeg_bytes((320, 240), seed=1)
    path = folder / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def text_named_jpg(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("This is not a picture, whatever the name says.\n" * 5)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC a reader checks."""
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png(ihdr: bytes, idat: bytes) -> bytes:
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(folder: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (1-bit grey), a decompression bomb.

    The IDAT holds only a few compressed rows: a decoder that trusted the header would allocate
    the whole canvas before noticing, which is exactly what the header check must prevent.
    """
    # bit depth 1, colour type 0 (grey), compression 0, filter 0, interlace 0
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    path = folder / f"bomb_{width}x{height}.png"
    path.write_bytes(_png(ihdr, zlib.compress(row * 4, 9)))
    return path


def corrupt_png(folder: Path) -> Path:
    """A 64x64 RGB PNG with a valid header and CRCs whose IDAT is not a zlib stream.

    Opening works; only decoding fails, so this checks that errors from ``load()`` are caught.
    """
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)  # 8-bit RGB
    path = folder / "corrupt.png"
    path.write_bytes(_png(ihdr, b"\x78\x9c" + bytes(range(200))))
    return path


def tiny_png(folder: Path) -> Path:
    """A valid 1x1 PNG: decodable, but useless to an encoder."""
    path = folder / "one_pixel.png"
    Image.new("RGB", (1, 1), RED).save(path)
    return path


def extreme_aspect_png(folder: Path) -> Path:
    """A valid 1000x10 strip (100:1, a banner or a separator line, not a photo)."""
    path = folder / "strip_1000x10.png"
    Image.new("RGB", (1000, 10), BLUE).save(path)
    return path


# --- odd but valid inputs ------------------------------------------------------------------


def cmyk_jpeg(folder: Path) -> Path:
    """A CMYK JPEG (as print workflows write), pure cyan."""
    path = folder / "cmyk.jpg"
    Image.new("CMYK", (96, 64), (255, 0, 0, 0)).save(path, quality=90)
    return path


def gray16_png(folder: Path) -> Path:
    """A 16-bit greyscale PNG, a left-to-right ramp over the full 0..65535 range.

    Clipping to 8 bits (what a naive ``convert("L")`` does) would turn all but the first column
    white; scaling keeps the ramp.
    """
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    path = folder / "gray16.png"
    Image.fromarray(np.tile(ramp, (64, 1))).save(path)
    return path


def palette_png_transparent(folder: Path) -> Path:
    """A palette PNG: left half palette index 0 (black, but transparent), right half red."""
    indices = np.zeros((64, 128), dtype=np.uint8)
    indices[:, 64:] = 1
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, *RED])
    path = folder / "palette_transparent.png"
    image.save(path, transparency=0)
    return path


def rgba_png(folder: Path) -> Path:
    """An RGBA PNG: left half fully transparent blue, right half opaque green."""
    pixels = np.zeros((64, 128, 4), dtype=np.uint8)
    pixels[:, :64] = (*BLUE, 0)
    pixels[:, 64:] = (*GREEN, 255)
    path = folder / "rgba.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def animated_gif(folder: Path) -> Path:
    """Three frames, red then green then blue: only the first (red) should be used."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def animated_webp(folder: Path) -> Path:
    """Three lossless WebP frames, red then green then blue."""
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)]
    path = folder / "animated.webp"
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True
    )
    return path


def webp(folder: Path) -> Path:
    """A lossy still WebP photo."""
    path = folder / "photo.webp"
    Image.fromarray(photo_like_array((160, 120), seed=3)).save(path, quality=80)
    return path


def quadrants_array(size: tuple[int, int]) -> np.ndarray:
    """``(height, width, 3)``: top-left red, top-right green, bottom-left blue, bottom-right
    yellow, so a test can tell every rotation and flip apart."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = YELLOW
    return pixels


def exif_rotated_jpeg(folder: Path) -> Path:
    """A 96x48 landscape JPEG of ``quadrants_array`` tagged EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display": shown upright it is a 48x96
    portrait whose top-right quadrant is red (the stored top-left).
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    path = folder / "rotated_exif6.jpg"
    Image.fromarray(quadrants_array((96, 48))).save(path, quality=95, exif=exif.tobytes())
    return path


def grayscale_jpeg(folder: Path) -> Path:
    path = folder / "gray.jpg"
    Image.fromarray(photo_like_array((160, 120), seed=4)).convert("L").save(path, quality=85)
    return path


BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    "empty": empty_file,
    "truncated_jpeg": truncated_jpeg,
    "text_named_jpg": text_named_jpg,
    "png_bomb": png_bomb,
    "corrupt_png": corrupt_png,
    "tiny": tiny_png,
    "extreme_aspect": extreme_aspect_png,
}

ODD_VALID_INPUTS: dict[str, Callable[[Path], Path]] = {
    "cmyk_jpeg": cmyk_jpeg,
    "gray16_png": gray16_png,
    "palette_png_transparent": palette_png_transparent,
    "rgba_png": rgba_png,
    "animated_gif": animated_gif,
    "animated_webp": animated_webp,
    "webp": webp,
    "exif_rotated_jpeg": exif_rotated_jpeg,
    "grayscale_jpeg": grayscale_jpeg,
}
