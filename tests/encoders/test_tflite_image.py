"""The int8 TFLite image encoder on real photos: quality against float32, ids, batches, parity.

One quantized model per session (``imgsearch quantize``'s ``main`` over 40 real COCO-mini photos,
about 20 s on 2 cores); every other test reuses it. Measured with it on the 40 held-out COCO
photos: mean cosine to float32 0.990, the worst 0.976 (the 0.98 bar below on the mean; 1,000
Flickr8k photos with 400 calibration photos in benchmarks/results/encode.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders import quantize_cli
from encoders.base import EncoderSpec
from encoders.imaging import decode_image
from encoders.quantize import worst_layers
from encoders.registry import (
    IMAGE_ENCODER_NAMES,
    check_image_encoder,
    create_image_encoder,
    image_encoder_dim,
    image_encoder_id,
)
from encoders.tags import check_tag_head
from encoders.tflite_image import TfliteImageEncoder, cpu_budget

CALIBRATION = 40
HELD_OUT = 40


def _pixels(photos: list[Path]) -> np.ndarray:
    return np.stack([decode_image(p.read_bytes(), (224, 224))[0] for p in photos])


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory, coco_photos: list[Path], mobilenet_weights: Path) -> Path:
    if len(coco_photos) < CALIBRATION + HELD_OUT:
        pytest.skip("needs 80 coco-mini val photos")
    folder = tmp_path_factory.mktemp("calibration")
    for photo in coco_photos[:CALIBRATION]:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path_factory.mktemp("int8") / "mobilenet_v2_int8.tflite"
    status = quantize_cli.main(
        ["--encoder", "mobilenet_v2", "--weights", str(mobilenet_weights),
         "--calibration", str(folder), "--photos", str(CALIBRATION), "--debug_photos", "16",
         "--out", str(out)]
    )  # fmt: skip
    assert status == 0 and out.is_file()
    return out


@pytest.fixture(scope="module")
def int8_spec(int8_file: Path) -> EncoderSpec:
    return EncoderSpec(name="mobilenet_v2_int8", weights=str(int8_file))


@pytest.fixture(scope="module")
def int8_encoder(int8_spec: EncoderSpec) -> TfliteImageEncoder:
    encoder = create_image_encoder(int8_spec)
    assert isinstance(encoder, TfliteImageEncoder)
    return encoder


@pytest.fixture(scope="module")
def held_out(coco_photos: list[Path]) -> np.ndarray:
    return _pixels(coco_photos[CALIBRATION : CALIBRATION + HELD_OUT])


def test_int8_vectors_stay_close_to_float32_on_held_out_photos(
    int8_encoder, held_out, mobilenet_weights
) -> None:
    float32 = create_image_encoder(EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights)))
    reference = float32.encode(held_out)
    vectors = int8_encoder.encode(held_out)
    assert vectors.shape == (HELD_OUT, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(axis=1)
    assert cosine.mean() >= 0.98, f"mean cosine {cosine.mean():.4f}"  # measured 0.990
    assert cosine.min() >= 0.95, f"worst cosine {cosine.min():.4f}"  # measured 0.976


def test_encoder_id_is_the_file_hash_distinct_from_float32(
    int8_spec, int8_encoder, int8_file, tmp_path, mobilenet_weights
) -> None:
    assert "mobilenet_v2_int8" in IMAGE_ENCODER_NAMES
    assert image_encoder_dim(int8_spec) == check_image_encoder(int8_spec) == 1280
    assert image_encoder_id(int8_spec) == int8_encoder.encoder_id
    assert int8_encoder.encoder_id.startswith("mobilenet_v2_int8/tflite-")
    float32 = EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights))
    assert image_encoder_id(float32) != int8_encoder.encoder_id
    copy = tmp_path / "copy.tflite"
    shutil.copy(int8_file, copy)  # the same bytes elsewhere: the same version
    assert image_encoder_id(EncoderSpec(name="mobilenet_v2_int8", weights=str(copy))) == (
        int8_encoder.encoder_id
    )
    assert int8_encoder.num_threads == cpu_budget() >= 1


def test_batches_of_any_size_give_the_same_rows(int8_encoder, held_out) -> None:
    pixels = held_out[:41]
    whole = int8_encoder.encode(pixels)
    parts = np.concatenate(
        [int8_encoder.encode(pixels[:1]), int8_encoder.encode(pixels[1:8]),
         int8_encoder.encode(pixels[8:41])]
    )  # fmt: skip
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-6)
    assert int8_encoder.encode(pixels[:0]).shape == (0, 1280)
    with pytest.raises(ValueError, match="uint8"):
        int8_encoder.encode(pixels[:2].astype(np.float32))


@pytest.mark.parametrize("chosen_by", ["--encoder", "--precision"])
def test_index_job_and_searcher_agree_on_a_photo(
    int8_spec, small_photo_dir, tmp_path, chosen_by
) -> None:
    """Named (``--encoder mobilenet_v2_int8 --weights F``) or chosen by the launcher for the
    stock encoder (``--precision int8 --int8_weights F``), the same int8 encoder runs."""
    from pipelines import index_job
    from serving.searcher import ImageSearcher

    out = tmp_path / "index"
    if chosen_by == "--encoder":
        flags = ["--encoder", int8_spec.name, "--weights", int8_spec.weights]
    else:
        flags = ["--precision", "int8", "--int8_weights", int8_spec.weights]
    index_job.run(
        ["--corpus", str(small_photo_dir), "--out", str(out), *flags, "--run_version", "int8"]
    )
    searcher = ImageSearcher.load(str(out))
    assert searcher.encoder_id == image_encoder_id(int8_spec)
    for photo in sorted(small_photo_dir.iterdir()):
        hits = searcher.search_image_path(str(photo), k=3)
        assert Path(hits[0].uri).name == photo.name
        # The batch path and the query path ran the same encoder on the same pixels.
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_an_int8_index_job_never_loads_tensorflow(int8_spec, small_photo_dir, tmp_path) -> None:
    """The whole job, ScaNN build included (scann's package would import it), in a fresh
    process: the int8 encoder's memory and start-up advantage is real only if nothing does."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipelines import index_job\n"
        "index_job.run(sys.argv[1:])\n"
        "print('tensorflow' in sys.modules)\n"
    )
    argv = ["--corpus", str(small_photo_dir), "--out", str(tmp_path / "index"), "--encoder",
            int8_spec.name, "--weights", int8_spec.weights, "--run_version", "no-tf"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_missing_file_and_unsupported_features_say_what_to_do(
    int8_encoder, int8_spec, assets_dir, monkeypatch, tmp_path
) -> None:
    head = assets_dir / "weights" / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
    with pytest.raises(ValueError, match="no pooled features"):  # refused at launch, not in a batch
        check_tag_head(head, int8_spec)
    monkeypatch.setenv("IMGSEARCH_ASSETS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="imgsearch quantize --encoder mobilenet_v2"):
        check_image_encoder(EncoderSpec(name="mobilenet_v2_int8", weights="auto"))
    with pytest.raises(ValueError, match=r"quantized \.tflite"):
        check_image_encoder(EncoderSpec(name="mobilenet_v2_int8", weights="none"))
    with pytest.raises(NotImplementedError, match="embeddings only"):
        int8_encoder.pooled_features(np.zeros((1, 224, 224, 3), np.uint8))
    assert not hasattr(int8_encoder, "encode_with_features")  # tags/captions refuse it


def test_worst_layers_ranks_by_rmse_per_scale() -> None:
    rows = [
        {"tensor_name": "a", "scale": "0.5", "mean_squared_error": "0.01"},  # 0.2
        {"tensor_name": "b", "scale": "0.1", "mean_squared_error": "0.01"},  # 1.0
        {"tensor_name": "c", "scale": "0", "mean_squared_error": "1"},  # no scale: 0
        {"tensor_name": "d", "scale": "0.1", "mean_squared_error": "nan"},
        {"tensor_name": "e", "scale": "0.1", "mean_squared_error": "0.01"},  # ties b: by name
    ]
    assert worst_layers(rows, 3) == ["b", "e", "a"]
    assert worst_layers(rows, 0) == []
    with pytest.raises(ValueError):
        worst_layers(rows, -1)
