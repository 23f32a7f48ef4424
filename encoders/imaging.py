"""Bytes of one image in, model-ready pixels (or the reason it was rejected) out.

Pure PIL + NumPy, no Beam and no TensorFlow: the index job and the serving query path both call
``decode_image``, so a photo indexed in batch and the same photo sent as a query become the same
pixels. Everything here is deterministic for a given Pillow/libjpeg build.

The order of the checks matters: the header is read first (cheap), the pixel count, shape and
the memory decoding will take are judged on it, and only then is the image decoded, at a reduced
scale for large JPEGs. What a header cannot bound (time spent in a decoder, a plugin allocating
more than predicted) ``encoders.decode_pool`` bounds by decoding in worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Formats an input may be in. A closed list keeps Pillow's rarer plugins (EPS runs Ghostscript,
# PSD/FLI/... see little fuzzing) away from untrusted bytes. The JPEG plugin also opens the
# multi-picture JPEGs many cameras write, which Pillow then reports as format "MPO".
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

_JPEG_FORMATS = ("JPEG", "MPO")

# What Pillow raises for malformed data besides OSError: its parsers use SyntaxError for bad
# headers, and hostile files reach struct/index/value errors deep inside plugins. Listed, not
# ``except Exception``, so a bug in this module still surfaces as a bug.
_PIL_DATA_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
)

# Decode a JPEG at 1/2, 1/4 or 1/8 scale only while it stays at least this many times larger
# than what the resize needs: the DCT scaling is a box filter, the final bicubic resize then
# smooths it (the same margin ``Image.thumbnail`` uses with its ``reducing_gap``).
_DRAFT_GAP = 2.0

# Resize in two steps (integer ``reduce`` then bicubic) when shrinking by more than this factor:
# much faster on big non-JPEG images and visually the same as one bicubic pass.
_REDUCING_GAP = 3.0

_WHITE = (255, 255, 255)

# EXIF orientation -> the transpose that makes the image upright. The same table as
# ``PIL.ImageOps.exif_transpose``; kept here because the orientation is needed before loading
# (to size the JPEG draft) and a broken EXIF block must mean "upright", not a rejected image.
_EXIF_ORIENTATION = 0x0112

_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SWAPS_SIDES = frozenset({5, 6, 7, 8})

# ``warnings.catch_warnings`` swaps process-wide state; this lock keeps concurrent decodes
# (Beam runs several DoFn threads per worker) from restoring each other's filters.
_OPEN_LOCK = threading.Lock()

_PIXELS_IN_PIL_MESSAGE = re.compile(r"\((\d+) pixels\)")

_Side = TypeVar("_Side", int, float)
_Drafted = TypeVar("_Drafted")


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """What an input must satisfy to be decoded; all judged on the header, before decoding.

    ``max_pixels`` guards against decompression bombs (a tiny file declaring a huge canvas).
    Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, about 8.9e7 by default) still applies on
    top, so limits above it only take effect if that global is raised by the application.

    ``max_decode_bytes`` bounds the memory decoding takes, estimated from the mode, format and
    size (``decode_bytes_estimate``): a 40 MP float TIFF needs ten times the memory of a
    40 MP greyscale PNG although both pass ``max_pixels``. ``max_jpeg_scans`` refuses
    progressive JPEGs that repeat their scans (each costs a pass over the whole image;
    ordinary files have about ten).
    """

    max_pixels: int = 64_000_000
    min_side: int = 8
    max_aspect_ratio: float = 30.0  # longer side / shorter side
    max_decode_bytes: int = 2**30
    max_jpeg_scans: int = 100

    def __post_init__(self) -> None:
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if self.max_decode_bytes < 2**20 or self.max_jpeg_scans < 1:
            raise ValueError("max_decode_bytes must be >= 1 MiB and max_jpeg_scans >= 1")


class ImageRejected(ValueError):
    """The bytes are not a usable image; ``reason`` says why in words fit for a dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``: the content key used for deduplication."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    size: tuple[int, int] = (224, 224),
    limits: DecodeLimits = DecodeLimits(),  # frozen, so one shared default is safe
    *,
    jpeg_draft: bool = True,
) -> tuple[np.ndarray, int, int]:
    """Validate, decode, orient, convert to RGB, resize and centre-crop one image.

    Args:
        data: the encoded file, as read from storage or received in a query.
        size: ``(height, width)`` of the output, the encoder's input size.
        limits: what the header must satisfy before any pixel is decoded.
        jpeg_draft: decode large JPEGs at a reduced DCT scale (much faster, nearly identical
            pixels). Leave it on; it exists so tests can compare against a full decode.

    Returns:
        ``(pixels, width, height)``: ``pixels`` is a writable uint8 array of shape
        ``(size[0], size[1], 3)`` in RGB; ``width``/``height`` are the original dimensions after
        EXIF orientation (so a portrait photo stored sideways reports as portrait).

    Raises:
        ImageRejected: with a specific ``reason`` (empty, not an image, decompression bomb, too
        small, extreme aspect ratio, truncated or corrupt data, unsupported colour mode).
    """
    out_height, out_width = size
    if out_height < 1 or out_width < 1:
        raise ValueError(f"output size must be positive, got {size}")

    def draft(im: Image.Image) -> tuple[float, float]:
        # The part of the (possibly drafted) image that holds the picture, in its own pixels:
        # a 333-wide JPEG drafted at 1/2 is 167 pixels wide but shows only 166.5 of them.
        if jpeg_draft and im.format in _JPEG_FORMATS:
            # A JPEG's EXIF block sits in its header, so reading it here decodes nothing.
            return _draft_jpeg(im, (out_height, out_width), _orientation(im))
        return im.size

    with _upright_picture(data, limits, draft) as (picture, stored_size, orientation, extent):
        width, height = _upright_size(stored_size, orientation)
        if orientation in _TRANSPOSE_FOR_ORIENTATION:
            extent = _upright_size(extent, orientation)
        resized = _resize_cover(picture, (out_height, out_width), extent)
        pixels = np.array(resized.convert("RGB"), dtype=np.uint8)
    return pixels, width, height


def thumbnail_jpeg(data: bytes, max_side: int, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """Encoded image -> a JPEG of it whose longer side is at most ``max_side`` (upright, RGB,
    transparency on white), under ``decode_image``'s checks: the header is judged (pixels,
    shape, JPEG scans, decode memory) before a pixel is decoded, and a large JPEG is decoded at
    a reduced DCT scale. ImageRejected with the reason, as ``decode_image``."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")

    def draft(im: Image.Image) -> None:
        if im.format in _JPEG_FORMATS:
            im.draft("RGB", (max_side, max_side))  # the largest scale still >= max_side

    with _upright_picture(data, limits, draft) as (picture, _, _, _):
        picture.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        picture.convert("RGB").save(out, format="JPEG", quality=85)
    return out.getvalue()


@contextlib.contextmanager
def _upright_picture(
    data: bytes, limits: DecodeLimits, draft: Callable[[Image.Image], _Drafted]
) -> Iterator[tuple[Image.Image, tuple[int, int], int, _Drafted]]:
    """The checks and decode every caller shares, in their one order: the header is judged,
    ``draft(im)`` may ask for a reduced JPEG scale (its result is passed on), the memory is
    judged, and only then are pixels decoded, converted (``_to_rgb_or_grey``) and turned
    upright. Yields ``(picture, stored size, EXIF orientation, draft's result)``, valid inside
    the ``with`` (the opened image is closed after it)."""
    if not data:
        raise ImageRejected("empty file")
    im = _open_header(data, limits)
    with im:  # releases the BytesIO; pixels copied out inside the block stay valid
        stored_size = im.size
        # Pixel count, shorter side and aspect ratio do not depend on orientation, so the header
        # is judged before EXIF is read (for a PNG, reading EXIF decodes the whole image).
        _check_shape(stored_size, limits)
        if im.format in _JPEG_FORMATS:
            _check_scans(data, limits)
        drafted = draft(im)
        _check_memory(im, stored_size, limits)  # after the draft: it shrinks what is decoded
        _load(im)
        orientation = _orientation(im)
        # Grey images stay one channel until resized: the same pixels (the resize works per
        # channel), without a full-size RGB copy.
        picture = _to_rgb_or_grey(im)
        if orientation in _TRANSPOSE_FOR_ORIENTATION:
            picture = picture.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
        yield picture, stored_size, orientation, drafted


def _open_header(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Identify the format and read the header only; Pillow decodes nothing yet."""
    try:
        # Pillow warns between MAX_IMAGE_PIXELS and twice that, and raises above. Turn the warning
        # into an error here (scoped, under a lock) so a bomb is a rejected input, never noise in
        # the worker log; the global MAX_IMAGE_PIXELS is left alone.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(_pil_bomb_reason(exc, limits)) from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (cannot identify format)") from None
    except _PIL_DATA_ERRORS as exc:
        raise ImageRejected(f"unreadable image header: {exc}") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8), or 1 when absent or unreadable."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_DATA_ERRORS as exc:
        # A corrupt EXIF block does not make the pixels unusable; treat the image as upright.
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright_size(stored_size: tuple[_Side, _Side], orientation: int) -> tuple[_Side, _Side]:
    """``(width, height)`` as displayed: orientations 5..8 store the image sideways."""
    stored_width, stored_height = stored_size
    if orientation in _SWAPS_SIDES:
        return stored_height, stored_width
    return stored_width, stored_height


def _check_shape(size: tuple[int, int], limits: DecodeLimits) -> None:
    """Reject on the header's ``(width, height)``, before any decoding work."""
    width, height = size
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageRejected(
            f"decompression bomb: {width}x{height} = {_sci(pixels)} pixels"
            f" > limit {_sci(limits.max_pixels)}"
        )
    shorter, longer = sorted(size)
    if shorter < limits.min_side:
        raise ImageRejected(f"too small: {width}x{height} (shorter side < {limits.min_side})")
    if longer / shorter > limits.max_aspect_ratio:
        raise ImageRejected(
            f"extreme aspect ratio {longer / shorter:.0f}:1 ({width}x{height},"
            f" limit {limits.max_aspect_ratio:g}:1)"
        )


# Bytes per pixel a decode holds at its peak, by Pillow mode: the decoded image (Pillow keeps
# RGB in 4 bytes), the conversion to RGB (transparency: an RGBA copy, a white canvas and the
# alpha band) and a margin for the resize. Measured with ru_maxrss on Pillow 11, 3000x3000.
_PEAK_BYTES_PER_PIXEL = {
    "1": 6, "L": 2, "P": 6, "RGB": 5, "CMYK": 9, "YCbCr": 9, "LAB": 9, "HSV": 9,
    "I;16": 7, "I;16L": 7, "I;16B": 7, "I;16N": 7, "I": 13, "F": 13,
}  # fmt: skip
_TRANSPARENT_BYTES_PER_PIXEL = 14  # RGBA, LA, PA, or a palette/grey image with tRNS
# libwebp decodes into its own RGB(A) buffer before Pillow copies it.
_WEBP_EXTRA_BYTES_PER_PIXEL = 11
# A progressive JPEG keeps every DCT coefficient (2 bytes, up to 3 components at full
# resolution) until its last scan, whatever scale it is drafted to.
_PROGRESSIVE_BYTES_PER_PIXEL = 6

_JPEG_SOS = b"\xff\xda"

# Grey modes deeper than 8 bits (converted by ``_high_depth_to_uint8``) and modes with alpha.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _has_transparency(im: Image.Image) -> bool:
    """An alpha band, or palette / grey transparency (tRNS) that Pillow applies as alpha."""
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def decode_bytes_estimate(im: Image.Image, stored_size: tuple[int, int]) -> int:
    """The peak memory decoding ``im`` takes, from its header: ``im`` is opened (and drafted,
    for a JPEG) but not loaded; ``stored_size`` is its size before any draft."""
    width, height = im.size
    per_pixel = (
        _TRANSPARENT_BYTES_PER_PIXEL
        if _has_transparency(im)
        else _PEAK_BYTES_PER_PIXEL.get(im.mode, _TRANSPARENT_BYTES_PER_PIXEL)
    )
    if im.format == "WEBP":
        per_pixel += _WEBP_EXTRA_BYTES_PER_PIXEL
    total = width * height * per_pixel
    if im.format in _JPEG_FORMATS and (im.info.get("progressive") or im.info.get("progression")):
        total += stored_size[0] * stored_size[1] * _PROGRESSIVE_BYTES_PER_PIXEL
    return total


def _check_memory(im: Image.Image, stored_size: tuple[int, int], limits: DecodeLimits) -> None:
    needed = decode_bytes_estimate(im, stored_size)
    if needed > limits.max_decode_bytes:
        width, height = stored_size
        raise ImageRejected(
            f"needs about {needed / 2**20:.0f} MiB to decode ({width}x{height} {im.mode}"
            f" {im.format}) > limit {limits.max_decode_bytes / 2**20:.0f} MiB"
        )


def _check_scans(data: bytes, limits: DecodeLimits) -> None:
    """Count a JPEG's scans without decoding: in entropy-coded data a 0xFF byte is always
    followed by 0x00 or a restart marker, so 0xFFDA only ever starts a scan (an embedded
    thumbnail's few scans count too, which the margin of the limit absorbs)."""
    scans = data.count(_JPEG_SOS)
    if scans > limits.max_jpeg_scans:
        raise ImageRejected(f"JPEG with {scans} scans > limit {limits.max_jpeg_scans}")


def _draft_jpeg(im: Image.Image, size: tuple[int, int], orientation: int) -> tuple[float, float]:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale when that still leaves enough pixels.

    ``im`` is an opened, not yet loaded JPEG; ``size`` the output ``(height, width)``;
    ``orientation`` its EXIF orientation. The scale keeps at least ``_DRAFT_GAP`` times the
    pixels the cover-resize needs along both sides, so the final bicubic resize still
    antialiases. Returns the picture's extent ``(width, height)`` in the drafted image's pixels
    (fractional when a side does not divide by the scale).
    """
    stored_size = im.size
    out_height, out_width = size
    width, height = _upright_size(stored_size, orientation)
    scale = max(out_width / width, out_height / height)  # the cover-resize factor
    needed = _upright_size(  # back to the stored (maybe sideways) layout that draft works on
        (math.ceil(width * scale * _DRAFT_GAP), math.ceil(height * scale * _DRAFT_GAP)),
        orientation,
    )
    if needed[0] >= stored_size[0] or needed[1] >= stored_size[1]:
        return stored_size
    drafted = im.draft("RGB", needed)
    if drafted is None:  # e.g. already drafted, or a layout libjpeg cannot scale
        return stored_size
    _, (_, _, extent_width, extent_height) = drafted
    return extent_width, extent_height


def _load(im: Image.Image) -> None:
    """Decode the pixels (first frame of an animation); data errors become ``ImageRejected``."""
    try:
        im.load()
    except Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than its canvas
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except _PIL_DATA_ERRORS as exc:
        message = str(exc)
        if "truncated" in message or isinstance(exc, EOFError):
            raise ImageRejected("truncated image data") from None
        raise ImageRejected(f"corrupt {im.format} data: {message}") from None


def _to_rgb_or_grey(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, or 8-bit grey ("L") for a grey image without transparency;
    transparency is composited onto white."""
    mode = im.mode
    try:
        if mode in _HIGH_DEPTH_MODES:
            return Image.fromarray(_high_depth_to_uint8(np.asarray(im)), mode="L")
        if _has_transparency(im):
            # Pillow applies palette / tRNS transparency when converting to RGBA.
            rgba = im.convert("RGBA")
            background = Image.new("RGB", rgba.size, _WHITE)
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return im.convert("RGB") if mode not in ("RGB", "L") else im
    except ValueError as exc:  # Pillow has no conversion from this mode (e.g. LAB)
        raise ImageRejected(f"unsupported color mode {mode}: {exc}") from None


# Rows converted at a time from high-depth to 8 bits: the float temporaries stay a few MB.
_BAND_ROWS = 256


def _high_depth_to_uint8(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float grey -> uint8, scaled rather than clipped.

    16-bit data (also 16-bit PNGs that Pillow hands over as 32-bit "I") maps 0..65535 to
    0..255; float data in [0, 1] maps to 0..255; anything else is stretched from its min to max.
    Converted in bands of rows, so the only full-size array made is the uint8 result.
    """
    is_float = values.dtype.kind == "f"
    out = np.empty(values.shape, dtype=np.uint8)
    if not is_float and values.min() >= 0 and values.max() <= 65535:
        for start in range(0, values.shape[0], _BAND_ROWS):
            band = values[start : start + _BAND_ROWS].astype(np.uint32)
            band *= 255
            band += 32767
            band //= 65535
            out[start : start + _BAND_ROWS] = band
        return out
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if is_float and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        out.fill(0)
        return out
    for start in range(0, values.shape[0], _BAND_ROWS):
        # float64 per band: int32 data keeps its precision, and the band is small.
        band = values[start : start + _BAND_ROWS].astype(np.float64)
        band -= low
        band /= high - low
        np.nan_to_num(band, copy=False)
        band *= 255.0
        np.round(band, out=band)
        np.clip(band, 0, 255, out=band)
        out[start : start + _BAND_ROWS] = band
    return out


def _resize_cover(
    im: Image.Image, size: tuple[int, int], extent: tuple[float, float]
) -> Image.Image:
    """Resize so the picture covers ``size`` (height, width), cropping the overflow equally.

    ``extent`` is the ``(width, height)`` of ``im`` that holds the picture (``im.size`` unless
    a JPEG draft left a partial last row/column). For a square output this is "shorter side to
    the target, then centre-crop". Cropping is done through ``box`` in source coordinates, so
    only the kept region is resampled and the result is exactly ``size``.
    """
    out_height, out_width = size
    width, height = extent
    box_width = min(width, height * out_width / out_height)
    box_height = min(height, width * out_height / out_width)
    left = (width - box_width) / 2
    top = (height - box_height) / 2
    return im.resize(
        (out_width, out_height),
        Image.Resampling.BICUBIC,
        box=(left, top, left + box_width, top + box_height),
        reducing_gap=_REDUCING_GAP,
    )


def _pil_bomb_reason(exc: Warning | Exception, limits: DecodeLimits) -> str:
    """A reason for a bomb that Pillow's own guard caught before the size reached us."""
    found = _PIXELS_IN_PIL_MESSAGE.search(str(exc))
    if found is None:
        return f"decompression bomb: {exc}"
    pixels = int(found.group(1))
    limit = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    return f"decompression bomb: {_sci(pixels)} pixels > limit {_sci(limit)}"


def _sci(value: int) -> str:
    """1_600_000_000 -> '1.6e9' (short, unambiguous, and grep-able in dead letters)."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
