"""I/O-free composite transforms of the index job, in the order the data flows.

    ImageRef -> HashImages -> DedupeImages -> DecodeImages -> EncodeImages -> table rows
                     \\             \\              \\              \\
                      dead letters  duplicates    dead letters    dead letters

Only small records (uris and hashes) cross a shuffle. The bytes are read twice, once to hash
and once to decode, because shuffling pixels (or whole files) to dedupe would make every
runner move the corpus through its shuffle and make the DirectRunner hold it in memory;
reading a file twice costs far less than that on local disks and GCS alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from encoders.base import EncoderSpec
from encoders.imaging import DecodeLimits, ImageRejected, decode_image, sha256_hex
from index.schema import JOINT_EMBEDDING, JOINT_MODEL
from models.joint import JointModelRef
from pipelines import live_progress
from pipelines.model_handler import ImageEncoderModelHandler, encode_dead_letters
from pipelines.types import (
    STAGE_DECODE,
    STAGE_FETCH,
    DeadLetter,
    DecodedImage,
    DuplicateRecord,
    HashedImage,
    ImageRef,
    UniqueImage,
)
from storage.fetch import FetchError, FetchLimits, read_bytes

logger = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
DUPLICATES = "duplicates"

# The DoFns' readers, injected (tests pass faulty ones): both must pickle, as DoFns do.
# uri, limits -> the file's bytes; FetchError when it cannot be read.
Reader = Callable[[str, FetchLimits], bytes]
# bytes, (width, height), limits -> (pixels, original width, original height); ImageRejected
# for a file that is not an acceptable image.
Decoder = Callable[[bytes, tuple[int, int], DecodeLimits], tuple[np.ndarray, int, int]]


class HashImageFn(beam.DoFn):
    """ImageRef -> HashedImage; unreadable inputs -> ``dead_letters``."""

    def __init__(self, fetch_limits: FetchLimits, read: Reader = read_bytes) -> None:
        self.fetch_limits = fetch_limits
        self.read = read
        self.failed = Metrics.counter("imgsearch", "fetch_failed")

    def process(self, ref: ImageRef) -> Iterable[Any]:
        try:
            data = self.read(ref.uri, self.fetch_limits)
        except FetchError as exc:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, STAGE_FETCH, exc.reason, ref.image_id)
            )
            return
        if not data:
            # Caught here, not at decode, so that two empty files are two dead letters rather
            # than one dead letter plus a "duplicate" of it.
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, STAGE_DECODE, "empty file", ref.image_id)
            )
            return
        live_progress.bump("hashed")
        yield HashedImage(ref=ref, sha256=sha256_hex(data), num_bytes=len(data))


def choose_unique(
    sha256: str, copies: Iterable[HashedImage]
) -> tuple[UniqueImage, list[DuplicateRecord]]:
    """Keep the copy with the smallest uri (deterministic on every runner); record the others."""
    ordered = sorted(copies, key=lambda c: (c.ref.uri, c.ref.image_id))
    kept = ordered[0]
    duplicates = [
        DuplicateRecord(
            uri=c.ref.uri,
            image_id=c.ref.image_id,
            sha256=sha256,
            kept_uri=kept.ref.uri,
            kept_image_id=kept.ref.image_id,
        )
        for c in ordered[1:]
    ]
    unique = UniqueImage(
        ref=kept.ref,
        sha256=sha256,
        num_bytes=kept.num_bytes,
        duplicate_uris=tuple(d.uri for d in duplicates),
    )
    return unique, duplicates


def _split_duplicates(element: tuple[str, Iterable[HashedImage]]) -> Iterable[Any]:
    unique, duplicates = choose_unique(*element)
    yield unique
    for duplicate in duplicates:
        yield beam.pvalue.TaggedOutput(DUPLICATES, duplicate)


class DecodeImageFn(beam.DoFn):
    """UniqueImage -> DecodedImage at the encoder's input size; failures -> ``dead_letters``."""

    def __init__(
        self,
        size: tuple[int, int],
        decode_limits: DecodeLimits,
        fetch_limits: FetchLimits,
        read: Reader = read_bytes,
        decode: Decoder = decode_image,
    ) -> None:
        self.size = size
        self.decode_limits = decode_limits
        self.fetch_limits = fetch_limits
        self.read = read
        self.decode = decode
        self.rejected = Metrics.counter("imgsearch", "decode_rejected")
        self.unexpected = Metrics.counter("imgsearch", "decode_unexpected_errors")

    def process(self, image: UniqueImage) -> Iterable[Any]:
        ref = image.ref
        try:
            data = self.read(ref.uri, self.fetch_limits)
        except FetchError as exc:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, STAGE_FETCH, exc.reason, ref.image_id)
            )
            return
        if sha256_hex(data) != image.sha256:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS,
                DeadLetter(ref.uri, STAGE_FETCH, "content changed while indexing", ref.image_id),
            )
            return
        try:
            pixels, width, height = self.decode(data, self.size, self.decode_limits)
        except ImageRejected as exc:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, STAGE_DECODE, exc.reason, ref.image_id)
            )
            return
        except Exception as exc:
            # A decoder bug or an error Pillow was never known to raise. Re-raising would fail
            # the bundle on every retry (and on Dataflow, the job) over one file; instead the
            # file is a dead letter naming the error, and the traceback goes to the worker log.
            logger.exception("unexpected error decoding %s", ref.uri)
            self.unexpected.inc()
            reason = f"unexpected decode error: {type(exc).__name__}: {exc}"
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, STAGE_DECODE, reason, ref.image_id)
            )
            return
        yield DecodedImage(image=image, width=width, height=height, pixels=pixels)


class HashImages(beam.PTransform):
    """PCollection[ImageRef] -> (PCollection[HashedImage], PCollection[DeadLetter]).

    ``read`` defaults to ``storage.fetch.read_bytes`` (this module's, when constructed).
    """

    def __init__(self, fetch_limits: FetchLimits, read: Reader | None = None) -> None:
        super().__init__()
        self.fn = HashImageFn(fetch_limits, read or read_bytes)

    def expand(self, refs):
        hashed = refs | beam.ParDo(self.fn).with_outputs(DEAD_LETTERS, main="hashed")
        return hashed.hashed, hashed[DEAD_LETTERS]


class DedupeImages(beam.PTransform):
    """PCollection[HashedImage] -> (PCollection[UniqueImage], PCollection[DuplicateRecord])."""

    def expand(self, hashed):
        split = (
            hashed
            | "KeyByContent" >> beam.Map(lambda h: (h.sha256, h))
            | "GroupByContent" >> beam.GroupByKey()
            | "KeepOne" >> beam.FlatMap(_split_duplicates).with_outputs(DUPLICATES, main="unique")
        )
        return split.unique, split[DUPLICATES]


class DecodeImages(beam.PTransform):
    """PCollection[UniqueImage] -> (PCollection[DecodedImage], PCollection[DeadLetter]).

    ``read`` and ``decode`` default to ``storage.fetch.read_bytes`` and
    ``encoders.imaging.decode_image`` (this module's, looked up when constructed).
    """

    def __init__(
        self,
        size: tuple[int, int],
        decode_limits: DecodeLimits,
        fetch_limits: FetchLimits,
        read: Reader | None = None,
        decode: Decoder | None = None,
    ) -> None:
        super().__init__()
        self.fn = DecodeImageFn(
            size, decode_limits, fetch_limits, read or read_bytes, decode or decode_image
        )

    def expand(self, images):
        decoded = images | beam.ParDo(self.fn).with_outputs(DEAD_LETTERS, main="decoded")
        return decoded.decoded, decoded[DEAD_LETTERS]


def _split_encoded(result: Any) -> Iterable[Any]:
    """The handler yields a row per image, or a DeadLetter for an image the model refused."""
    if isinstance(result, DeadLetter):
        yield beam.pvalue.TaggedOutput(DEAD_LETTERS, result)
    else:
        yield result


class EncodeImages(beam.PTransform):
    """PCollection[DecodedImage] -> (PCollection[table row dict], PCollection[DeadLetter]).

    Batched model calls through RunInference: the model loads once per worker process and a
    batch that fails goes to dead letters instead of failing the bundle forever.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        max_batch_size: int = 32,
        tag_head: str | None = None,
        tags_top_k: int = 5,
        spatial: bool = False,
    ) -> None:
        super().__init__()
        self.handler = ImageEncoderModelHandler(
            spec,
            min_batch_size=min(8, max_batch_size),
            max_batch_size=max_batch_size,
            tag_head=tag_head,
            tags_top_k=tags_top_k,
            spatial=spatial,
        )

    def expand(self, images):
        results, dlq = images | RunInference(self.handler).with_exception_handling()
        split = results | "SplitRefused" >> beam.FlatMap(_split_encoded).with_outputs(
            DEAD_LETTERS, main="rows"
        )
        failed = dlq.failed_inferences | "FailedBatches" >> beam.FlatMap(encode_dead_letters)
        dead_letters = (split[DEAD_LETTERS], failed) | "EncodeDeadLetters" >> beam.Flatten()
        return split.rows, dead_letters


class JointEmbeddingFn(beam.DoFn):
    """Table row -> the same row plus ``joint_embedding`` and ``joint_model`` (a dual model's).

    The model (NumPy weights) loads once per worker in ``setup``. A row made by another image
    encoder than the model was trained on fails the job with a clear error: its joint vectors
    would be meaningless, and every row of the run shares the encoder.
    """

    def __init__(self, model: JointModelRef) -> None:
        self.model_ref = model
        self._model = None

    def setup(self) -> None:
        from models.artifacts import load_joint_model  # lazy: only jobs with a joint model

        ref = self.model_ref
        self._model = load_joint_model(ref.models_dir, ref.name, ref.version)

    def process(self, row: dict[str, Any]) -> Iterable[dict[str, Any]]:
        if row["encoder"] != self._model.image_encoder_id:
            raise ValueError(
                f"joint model {self.model_ref.model_id} takes {self._model.image_encoder_id} "
                f"image vectors, but this job's encoder is {row['encoder']}: train the joint "
                f"model on this encoder's features or index with the encoder it was trained on"
            )
        features = np.asarray(row["embedding"], dtype=np.float32)[np.newaxis]
        joint = self._model.embed_image_features(features)[0]
        yield {**row, JOINT_EMBEDDING: joint.tolist(), JOINT_MODEL: self.model_ref.model_id}


class AddJointEmbeddings(beam.PTransform):
    """PCollection[table row dict] -> rows with the joint model's image embedding added."""

    def __init__(self, model: JointModelRef) -> None:
        super().__init__()
        self.model = model

    def expand(self, rows):
        return rows | beam.ParDo(JointEmbeddingFn(self.model))
