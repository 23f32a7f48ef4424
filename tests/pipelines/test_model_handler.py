"""ImageEncoderModelHandler in real Beam pipelines (with the fake encoder), and the registry."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from encoders.base import EncoderSpec
from encoders.fake import FakeImageEncoder
from encoders.registry import IMAGE_ENCODER_NAMES, create_image_encoder, image_encoder_dim
from pipelines.model_handler import METRICS_NAMESPACE, ImageEncoderModelHandler, encode_dead_letters
from pipelines.types import (
    STAGE_ENCODE,
    DeadLetter,
    DecodedImage,
    ImageRef,
    UniqueImage,
    image_id_for_uri,
)

SIZE = 32
SPEC = EncoderSpec(name="fake", weights="none", image_size=SIZE)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _decoded(path: Path, pixels: np.ndarray | None = None) -> DecodedImage:
    uri = path.as_uri()
    with Image.open(path) as image:
        width, height = image.size
        if pixels is None:
            # A plain squash-resize; the pipeline's own resizing is tested elsewhere.
            pixels = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
    unique = UniqueImage(
        ref=ImageRef(uri=uri, image_id=image_id_for_uri(uri), metadata_json='{"split": "val"}'),
        sha256="0" * 64,
        num_bytes=path.stat().st_size,
        duplicate_uris=(f"{uri}?copy",),
    )
    return DecodedImage(image=unique, width=width, height=height, pixels=pixels)


@pytest.fixture(scope="module")
def images(coco_photos: list[Path]) -> list[DecodedImage]:
    return [_decoded(path) for path in coco_photos[:6]]


def _expected_rows(images: list[DecodedImage]) -> dict[str, np.ndarray]:
    vectors = FakeImageEncoder(SPEC).encode(np.stack([image.pixels for image in images]))
    return {image.image.ref.image_id: vector for image, vector in zip(images, vectors, strict=True)}


def _rows_match(images: list[DecodedImage]):
    expected = _expected_rows(images)
    by_id = {image.image.ref.image_id: image for image in images}

    def check(rows: list[dict]) -> None:
        assert sorted(row["image_id"] for row in rows) == sorted(expected)
        for row in rows:
            source = by_id[row["image_id"]]
            assert row["encoder"] == "fake/v1"
            assert row["uri"] == source.image.ref.uri
            assert row["duplicate_uris"] == list(source.image.duplicate_uris)
            assert (row["width"], row["height"]) == (source.width, source.height)
            assert row["metadata"] == '{"split": "val"}'
            assert len(row["embedding"]) == 64
            # Same vector as the encoder gives outside Beam, whatever batch the row was in.
            np.testing.assert_allclose(row["embedding"], expected[row["image_id"]], atol=1e-6)

    return check


def test_run_inference_writes_one_row_per_image(images: list[DecodedImage]) -> None:
    handler = ImageEncoderModelHandler(SPEC, min_batch_size=2, max_batch_size=4)

    with TestPipeline() as pipeline:
        rows = pipeline | beam.Create(images) | RunInference(handler)
        assert_that(rows, _rows_match(images))


def _split(results: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
    split = results | beam.Map(
        lambda result: beam.pvalue.TaggedOutput(
            "dead" if isinstance(result, DeadLetter) else "rows", result
        )
    ).with_outputs("dead", "rows")
    return split.rows, split.dead


def test_bad_images_become_dead_letters_without_losing_their_batch(
    images: list[DecodedImage], coco_photos: list[Path]
) -> None:
    wrong_size = _decoded(coco_photos[6], pixels=np.zeros((SIZE * 2, SIZE, 3), np.uint8))
    wrong_dtype = _decoded(coco_photos[7], pixels=np.zeros((SIZE, SIZE, 3), np.float32))
    # One batch of eight holds all of them: the bad two must not take the good six down.
    handler = ImageEncoderModelHandler(SPEC, min_batch_size=8, max_batch_size=8)

    with TestPipeline() as pipeline:
        inputs = pipeline | beam.Create([*images[:3], wrong_size, *images[3:], wrong_dtype])
        results, failures = inputs | RunInference(handler).with_exception_handling()
        rows, dead_letters = _split(results)

        assert_that(rows, _rows_match(images), label="good images encoded")
        assert_that(
            dead_letters | beam.Map(lambda letter: (letter.uri, letter.stage, letter.image_id)),
            equal_to(
                [
                    (bad.image.ref.uri, STAGE_ENCODE, bad.image.ref.image_id)
                    for bad in (wrong_size, wrong_dtype)
                ]
            ),
            label="bad images dead-lettered",
        )
        assert_that(
            dead_letters | beam.Map(lambda letter: letter.reason),
            equal_to(
                [
                    "pixels must be uint8(32, 32, 3) for the encoder, got uint8(64, 32, 3)",
                    "pixels must be uint8(32, 32, 3) for the encoder, got float32(32, 32, 3)",
                ]
            ),
            label="reasons say what was wrong",
        )
        assert_that(failures.failed_inferences, equal_to([]), label="no batch failed")


def test_a_batch_the_handler_cannot_run_goes_to_failed_inferences(
    images: list[DecodedImage],
) -> None:
    # A non-image element is a wiring bug: RunInference's dead-letter output catches its batch.
    handler = ImageEncoderModelHandler(SPEC, min_batch_size=3, max_batch_size=3)

    with TestPipeline() as pipeline:
        inputs = pipeline | beam.Create([images[0], images[1], "not an image"])
        results, failures = inputs | RunInference(handler).with_exception_handling()
        dead_letters = failures.failed_inferences | beam.FlatMap(encode_dead_letters)

        assert_that(
            dead_letters
            | "Refused" >> beam.Filter(lambda letter: letter.uri == "'not an image'")
            | beam.Map(
                lambda letter: "TypeError" in letter.reason and "DecodedImage" in letter.reason
            ),
            equal_to([True]),
            label="the bad element is dead-lettered with its reason",
        )
        # Whichever batches the runner formed, every element comes out exactly once.
        accounted = (
            results | "RowUris" >> beam.Map(lambda row: row["uri"]),
            dead_letters | "DeadUris" >> beam.Map(lambda letter: letter.uri),
        ) | beam.Flatten()
        assert_that(
            accounted,
            equal_to([images[0].image.ref.uri, images[1].image.ref.uri, "'not an image'"]),
            label="nothing lost",
        )


def test_run_inference_outside_beam_keeps_order(
    images: list[DecodedImage], coco_photos: list[Path]
) -> None:
    handler = ImageEncoderModelHandler(SPEC)
    model = handler.load_model()
    bad = _decoded(coco_photos[6], pixels=np.zeros((SIZE, SIZE), np.uint8))

    results = list(handler.run_inference([images[0], bad, *images[1:3]], model))

    assert [
        result.uri if isinstance(result, DeadLetter) else result["uri"] for result in results
    ] == [image.image.ref.uri for image in (images[0], bad, *images[1:3])]
    assert isinstance(results[1], DeadLetter)
    assert "got uint8(32, 32)" in results[1].reason
    assert list(handler.run_inference([], model)) == []
    only_bad = handler.run_inference([bad], model)
    assert [type(result) for result in only_bad] == [DeadLetter]


def test_encode_dead_letters_reads_beam_and_plain_errors(images: list[DecodedImage]) -> None:
    # The (batch, (type, repr, traceback)) shape RunInference gives failed_inferences.
    failure = (images[:2], (RuntimeError, "RuntimeError('out of memory')", ["Traceback ..."]))

    letters = encode_dead_letters(failure)

    assert letters == [
        DeadLetter(
            image.image.ref.uri,
            STAGE_ENCODE,
            "RuntimeError('out of memory')",
            image.image.ref.image_id,
        )
        for image in images[:2]
    ]
    assert encode_dead_letters((images[0], ValueError("x")))[0].reason == "ValueError('x')"


def test_handler_settings_and_pickling() -> None:
    handler = ImageEncoderModelHandler(
        SPEC, min_batch_size=4, max_batch_size=16, max_batch_duration_secs=5
    )

    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 4,
        "max_batch_size": 16,
        "max_batch_duration_secs": 5,
    }
    assert handler.get_metrics_namespace() == METRICS_NAMESPACE == "imgsearch_encode"
    batch = [
        DecodedImage(
            image=UniqueImage(ImageRef("u", "i"), "s", 1),
            width=1,
            height=1,
            pixels=np.zeros((SIZE, SIZE, 3), np.uint8),
        )
    ] * 3
    assert handler.get_num_bytes(batch) == 3 * SIZE * SIZE * 3
    restored = pickle.loads(pickle.dumps(handler))
    assert restored.spec == SPEC
    assert restored.batch_elements_kwargs() == handler.batch_elements_kwargs()
    with pytest.raises(ValueError, match="inference_args"):
        handler.validate_inference_args({"temperature": 1.0})
    with pytest.raises(ValueError, match="min_batch_size"):
        ImageEncoderModelHandler(SPEC, min_batch_size=10, max_batch_size=2)


def test_registry_knows_every_encoder_and_rejects_others() -> None:
    assert IMAGE_ENCODER_NAMES == (
        "fake",
        "mobilenet_v2",
        "efficientnet_b0",
        "resnet50",
        "mobilenet_v2_flip",
        "mobilenet_v2_int8",
    )
    assert isinstance(create_image_encoder(SPEC), FakeImageEncoder)
    dims = {name: image_encoder_dim(EncoderSpec(name=name)) for name in IMAGE_ENCODER_NAMES}
    assert dims == {
        "fake": 64,
        "mobilenet_v2": 1280,
        "efficientnet_b0": 1280,
        "resnet50": 2048,
        "mobilenet_v2_flip": 1280,
        "mobilenet_v2_int8": 1280,
    }
    for bad_call in (create_image_encoder, image_encoder_dim):
        with pytest.raises(
            ValueError,
            match="known: fake, mobilenet_v2, efficientnet_b0, resnet50, mobilenet_v2_flip",
        ):
            bad_call(EncoderSpec(name="clip"))


def test_importing_the_beam_side_does_not_import_tensorflow() -> None:
    # A fresh interpreter: this test process may already have TensorFlow from other tests.
    code = (
        "import sys\n"
        "import encoders.fake, encoders.registry, pipelines.model_handler, encoders.keras_image\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr[-2000:]
