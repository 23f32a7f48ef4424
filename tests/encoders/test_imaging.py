"""encoders.imaging on generated odd/hostile files and on real COCO photos."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from encoders.imaging import DecodeLimits, ImageRejected, decode_image, sha256_hex
from tests import corpus_factory as cf
from tests import hostile_uploads as hostile

# The reason each bad kind must be rejected with (prefixes, so details may follow).
EXPECTED_REASONS = {
    "empty": "empty file",
    "truncated_jpeg": "truncated image data",
    "text_named_jpg": "not an image (cannot identify format)",
    "png_bomb": "decompression bomb: 1.6e9 pixels > limit 6.4e7",
    "corrupt_png": "corrupt PNG data: ",
    "tiny": "too small: 1x1",
    "extreme_aspect": "extreme aspect ratio 100:1",
}

# (width, height) each odd-but-valid kind must report: original size after EXIF orientation.
EXPECTED_SIZES = {
    "cmyk_jpeg": (96, 64),
    "gray16_png": (256, 64),
    "palette_png_transparent": (128, 64),
    "rgba_png": (128, 64),
    "animated_gif": (64, 48),
    "animated_webp": (64, 48),
    "webp": (160, 120),
    "exif_rotated_jpeg": (48, 96),
    "grayscale_jpeg": (160, 120),
}

WHITE = (255, 255, 255)


def _decode_file(path: Path, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    pixels, _, _ = decode_image(path.read_bytes(), size)
    return pixels


def _assert_colour(pixel: np.ndarray, expected: tuple[int, int, int], tolerance: int = 12) -> None:
    assert np.abs(pixel.astype(int) - np.array(expected)).max() <= tolerance, (pixel, expected)


def test_every_kind_in_the_factory_has_an_expectation() -> None:
    assert set(EXPECTED_REASONS) == set(cf.BAD_INPUTS)
    assert set(EXPECTED_SIZES) == set(cf.ODD_VALID_INPUTS)


@pytest.mark.parametrize("kind", sorted(cf.BAD_INPUTS))
def test_bad_input_is_rejected_with_its_reason(kind: str, tmp_path: Path) -> None:
    path = cf.BAD_INPUTS[kind](tmp_path)
    assert path.stat().st_size < 50_000
    with pytest.raises(ImageRejected) as caught:
        decode_image(path.read_bytes())
    assert caught.value.reason.startswith(EXPECTED_REASONS[kind]), caught.value.reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("kind", sorted(cf.ODD_VALID_INPUTS))
def test_odd_but_valid_input_decodes(kind: str, tmp_path: Path) -> None:
    path = cf.ODD_VALID_INPUTS[kind](tmp_path)
    assert path.stat().st_size < 50_000
    pixels, width, height = decode_image(path.read_bytes())
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    assert (width, height) == EXPECTED_SIZES[kind]


def test_bomb_within_pillows_limit_is_judged_on_the_header(tmp_path: Path) -> None:
    # 8.1e7 pixels: over our limit, under Pillow's own warning threshold (about 8.9e7), so our
    # header check is what stops it, and the reason names the declared size.
    path = cf.png_bomb(tmp_path, 9000, 9000)
    with pytest.raises(ImageRejected, match=r"^decompression bomb: 9000x9000 = 8.1e7 pixels"):
        decode_image(path.read_bytes())


def test_max_pixels_is_checked_before_decoding() -> None:
    data = cf.jpeg_bytes((320, 240))
    with pytest.raises(ImageRejected, match=r"320x240 = 7.7e4 pixels > limit 1.0e3"):
        decode_image(data, limits=DecodeLimits(max_pixels=1000))


@pytest.mark.parametrize("side", [10_000, 40_000])  # Pillow's warning band, then its error
def test_pillow_bomb_guard_becomes_a_rejection_not_a_warning(side: int, tmp_path: Path) -> None:
    path = cf.png_bomb(tmp_path, side, side)
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageRejected, match=r"^decompression bomb: "):
            decode_image(path.read_bytes())
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_limits_are_configurable() -> None:
    data = cf.jpeg_bytes((320, 40))  # 8:1
    decode_image(data)
    with pytest.raises(ImageRejected, match=r"^extreme aspect ratio 8:1"):
        decode_image(data, limits=DecodeLimits(max_aspect_ratio=4))
    with pytest.raises(ImageRejected, match=r"^too small: 320x40"):
        decode_image(data, limits=DecodeLimits(min_side=64))


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        DecodeLimits(max_pixels=0)
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        DecodeLimits(max_aspect_ratio=0.5)


def test_rejection_survives_pickling() -> None:
    # Beam may ship exceptions between processes; the reason must come along.
    error = pickle.loads(pickle.dumps(ImageRejected("too small: 1x1")))
    assert error.reason == "too small: 1x1"


def test_exif_orientation_swaps_sides_and_rotates_pixels(tmp_path: Path) -> None:
    path = cf.exif_rotated_jpeg(tmp_path)
    with Image.open(path) as stored:
        assert stored.size == (96, 48)  # the file really is stored sideways
    # Output 128 high x 64 wide has the upright 1:2 shape, so nothing is cropped away.
    pixels, width, height = decode_image(path.read_bytes(), size=(128, 64))
    assert (width, height) == (48, 96)
    assert pixels.shape == (128, 64, 3)
    # Rotating the stored quadrants (red green / blue yellow) 90 degrees clockwise:
    _assert_colour(pixels[32, 16], cf.BLUE)  # top-left
    _assert_colour(pixels[32, 48], cf.RED)  # top-right
    _assert_colour(pixels[96, 16], cf.YELLOW)  # bottom-left
    _assert_colour(pixels[96, 48], cf.GREEN)  # bottom-right


def test_output_is_height_by_width_and_centre_cropped() -> None:
    # A 2:1 landscape of the quadrant pattern cropped to a square keeps the middle half: the
    # left edge of the output is the stored x = 1/4 column, still red on top and blue below.
    data = io.BytesIO()
    Image.fromarray(cf.quadrants_array((200, 100))).save(data, "PNG")
    pixels, width, height = decode_image(data.getvalue(), size=(50, 80))
    assert (width, height) == (200, 100)
    assert pixels.shape == (50, 80, 3)
    square, _, _ = decode_image(data.getvalue(), size=(64, 64))
    _assert_colour(square[16, 2], cf.RED)
    _assert_colour(square[48, 2], cf.BLUE)
    _assert_colour(square[16, 61], cf.GREEN)
    _assert_colour(square[48, 61], cf.YELLOW)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    pixels = _decode_file(cf.palette_png_transparent(tmp_path), size=(64, 128))
    # The transparent palette entry is black: ignoring transparency would show black here.
    _assert_colour(pixels[32, 16], WHITE, tolerance=0)
    _assert_colour(pixels[32, 110], cf.RED, tolerance=0)


def test_rgba_alpha_is_composited_on_white(tmp_path: Path) -> None:
    pixels = _decode_file(cf.rgba_png(tmp_path), size=(64, 128))
    _assert_colour(pixels[32, 16], WHITE, tolerance=0)  # transparent blue must not show
    _assert_colour(pixels[32, 110], cf.GREEN, tolerance=0)


def test_16_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    pixels = _decode_file(cf.gray16_png(tmp_path), size=(64, 256))
    ramp = pixels[32, :, 0].astype(int)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # still grey
    assert ramp[0] <= 2 and ramp[-1] >= 253
    assert np.all(np.diff(ramp) >= 0)
    # Clipping 0..65535 to 8 bits would make nearly everything 255.
    assert abs(ramp.mean() - 127.5) < 3


def test_cmyk_and_greyscale_become_rgb(tmp_path: Path) -> None:
    _assert_colour(_decode_file(cf.cmyk_jpeg(tmp_path))[112, 112], (0, 255, 255), tolerance=3)
    grey = _decode_file(cf.grayscale_jpeg(tmp_path))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert grey.std() > 5  # a picture, not a flat fill


@pytest.mark.parametrize("make", [cf.animated_gif, cf.animated_webp])
def test_animation_uses_its_first_frame(make: Callable[[Path], Path], tmp_path: Path) -> None:
    pixels = _decode_file(make(tmp_path))
    _assert_colour(pixels.reshape(-1, 3).mean(axis=0).round(), cf.RED, tolerance=1)


def test_real_photos_decode_with_their_sizes(coco_photos: list[Path]) -> None:
    for photo in coco_photos[:4]:
        pixels, width, height = decode_image(photo.read_bytes())
        with Image.open(photo) as im:
            assert (width, height) == im.size
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
        assert pixels.std() > 10


def test_draft_decode_is_close_to_full_decode(coco_photos: list[Path]) -> None:
    # COCO photos are at most 640 wide, so a small output is what makes drafting kick in.
    differs = 0
    for photo in coco_photos[:8]:
        data = photo.read_bytes()
        for size in [(64, 64), (96, 128)]:
            drafted, dims, _ = decode_image(data, size)
            full, full_dims, _ = decode_image(data, size, jpeg_draft=False)
            assert dims == full_dims
            diff = np.abs(drafted.astype(int) - full.astype(int))
            assert diff.mean() < 1.0, (photo.name, size, diff.mean())
            differs += int(diff.any())
    assert differs > 0, "drafting never changed a pixel: was it applied at all?"


def test_draft_on_a_large_photo_is_close_to_full_decode(coco_photos: list[Path]) -> None:
    with Image.open(coco_photos[0]) as photo:
        big = photo.convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    drafted, width, height = decode_image(buffer.getvalue())
    full, _, _ = decode_image(buffer.getvalue(), jpeg_draft=False)
    assert (width, height) == (2400, 1800)
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 1.0


def test_decode_is_deterministic_and_thread_safe(coco_photos: list[Path]) -> None:
    payloads = [photo.read_bytes() for photo in coco_photos[:6]]
    serial = [decode_image(data)[0] for data in payloads]
    assert all(np.array_equal(a, decode_image(d)[0]) for a, d in zip(serial, payloads, strict=True))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda d: decode_image(d)[0], payloads * 2))
    for index, pixels in enumerate(threaded):
        assert np.array_equal(pixels, serial[index % len(serial)])


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_hex(b"abc").startswith("ba7816bf")


# Files of a few hundred KB at most whose decode would take hundreds of MB (issue 24's attacks):
# each is refused on its header, before any pixel is decoded.
_QUERY_LIMITS = DecodeLimits(max_pixels=40_000_000, max_decode_bytes=384 * 2**20)


@pytest.mark.parametrize(
    "make, reason",
    [
        (hostile.float_tiff,
         r"needs about 492 MiB to decode \(6300x6300 F TIFF\) > limit 384 MiB"),
        (hostile.lossless_webp,
         r"needs about 606 MiB to decode \(6300x6300 RGB WEBP\) > limit 384 MiB"),
        (hostile.rgba_png,
         r"needs about 481 MiB to decode \(6000x6000 RGBA PNG\) > limit 384 MiB"),
    ],
)  # fmt: skip
def test_decode_memory_is_judged_on_the_header(make, reason) -> None:
    data = make()
    assert len(data) < 1_000_000
    with pytest.raises(ImageRejected, match=reason):
        decode_image(data, limits=_QUERY_LIMITS)


def test_a_jpeg_repeating_its_scans_is_refused_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="JPEG with 1010 scans > limit 100"):
        decode_image(hostile.repeated_scans_jpeg(2000, 1000))
    ordinary = hostile.encoded(Image.new("RGB", (300, 200), (9, 9, 9)), "JPEG", progressive=True)
    assert decode_image(ordinary)[1:] == (300, 200)


def _reference_high_depth(values: np.ndarray) -> np.ndarray:
    """The conversion written the plain way (whole-array float64): what the banded one keeps."""
    values = values.astype(np.float64)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if values.dtype.kind == "f" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    stretched = np.nan_to_num((values - low) / (high - low))
    return np.clip(np.round(stretched * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["unit_float", "wide_float", "nan_float", "int32"])
def test_high_depth_is_converted_in_bands_to_the_same_pixels(kind: str) -> None:
    from encoders.imaging import _high_depth_to_uint8

    rng = np.random.default_rng(3)
    values = {
        "unit_float": rng.random((700, 90), dtype=np.float32),
        "wide_float": (rng.random((700, 90)) * 4000 - 1000).astype(np.float32),
        "nan_float": np.where(rng.random((700, 90)) < 0.1, np.nan, rng.random((700, 90))).astype(
            np.float32
        ),
        "int32": rng.integers(-(2**31), 2**31 - 1, (700, 90), dtype=np.int32),
    }[kind]
    np.testing.assert_array_equal(_high_depth_to_uint8(values), _reference_high_depth(values))
    grey = rng.integers(0, 65536, (600, 40)).astype(np.uint16)
    np.testing.assert_array_equal(
        _high_depth_to_uint8(grey), ((grey.astype(np.uint32) * 255 + 32767) // 65535)
    )
