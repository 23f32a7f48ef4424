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

import collections
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.utils.windowed_value import WindowedValue

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


# Files read and decoded ahead of the element being emitted, on DECODE_THREADS threads: the
# encoder downstream runs in this same thread (one fused stage), so without them the cores sit
# out every decode while the model waits, and the model sits out every decode and read. 64 is
# two encode batches (the next batch decodes while this one encodes), ~10 MB of 224 px pixels.
DECODE_LOOKAHEAD = 64
# Two decode at once on a 2-core worker (the decode pool's two processes), more only wait on
# reads, which is what a gs:// corpus needs: four keep two GETs in flight beside two decodes.
DECODE_THREADS = 4


class DecodeImageFn(beam.DoFn):
    """UniqueImage -> DecodedImage at the encoder's input size; failures -> ``dead_letters``.

    Each image is read, checked and decoded on a thread of the DoFn's own pool, up to
    ``lookahead`` images ahead of the one it emits, and emitted in arrival order: the reads and
    decodes of the next images overlap the encoding of the previous batch downstream (Pillow
    and the decode pool's pipes release the GIL; so do TensorFlow and LiteRT). ``lookahead``
    0 decodes each image in ``process``, in turn.
    """

    def __init__(
        self,
        size: tuple[int, int],
        decode_limits: DecodeLimits,
        fetch_limits: FetchLimits,
        read: Reader = read_bytes,
        decode: Decoder = decode_image,
        lookahead: int = DECODE_LOOKAHEAD,
    ) -> None:
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.size = size
        self.decode_limits = decode_limits
        self.fetch_limits = fetch_limits
        self.read = read
        self.decode = decode
        self.lookahead = lookahead
        self.rejected = Metrics.counter("imgsearch", "decode_rejected")
        self.unexpected = Metrics.counter("imgsearch", "decode_unexpected_errors")
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: collections.deque = collections.deque()

    def setup(self) -> None:
        if self.lookahead:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                DECODE_THREADS, thread_name_prefix="imgsearch-decode"
            )

    def start_bundle(self) -> None:
        self._pending = collections.deque()

    def process(
        self, image: UniqueImage, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam
    ) -> Iterable[Any]:
        if self._threads is None:
            output, counter = self._decoded(image)
            _bump(counter)
            yield output
            return
        self._pending.append((self._threads.submit(self._decoded, image), window, timestamp))
        # In arrival order: the oldest as soon as it is done, and always once past lookahead.
        while self._pending and (len(self._pending) > self.lookahead or self._pending[0][0].done()):
            yield from self._emit_pending()

    def finish_bundle(self) -> Iterable[Any]:
        while self._pending:
            yield from self._emit_pending()

    def teardown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(cancel_futures=True)
            self._threads = None

    def _emit_pending(self) -> Iterable[Any]:
        future, window, timestamp = self._pending.popleft()
        output, counter = future.result()
        _bump(counter)
        # An earlier element's output carries that element's window, not the current one's.
        if isinstance(output, beam.pvalue.TaggedOutput):
            yield beam.pvalue.TaggedOutput(
                output.tag, WindowedValue(output.value, timestamp, (window,))
            )
        else:
            yield WindowedValue(output, timestamp, (window,))

    def _decoded(self, image: UniqueImage) -> tuple[Any, Any]:
        """(the DecodedImage or a TaggedOutput dead letter, the counter to bump or None)."""
        ref = image.ref

        def dead(stage: str, reason: str) -> Any:
            return beam.pvalue.TaggedOutput(
                DEAD_LETTERS, DeadLetter(ref.uri, stage, reason, ref.image_id)
            )

        try:
            data = self.read(ref.uri, self.fetch_limits)
        except FetchError as exc:
            return dead(STAGE_FETCH, exc.reason), None
        if sha256_hex(data) != image.sha256:
            return dead(STAGE_FETCH, "content changed while indexing"), None
        try:
            pixels, width, height = self.decode(data, self.size, self.decode_limits)
        except ImageRejected as exc:
            return dead(STAGE_DECODE, exc.reason), self.rejected
        except Exception as exc:
            # A decoder bug or an error Pillow was never known to raise. Re-raising would fail
            # the bundle on every retry (and on Dataflow, the job) over one file; instead the
            # file is a dead letter naming the error, and the traceback goes to the worker log.
            logger.exception("unexpected error decoding %s", ref.uri)
            reason = f"unexpected decode error: {type(exc).__name__}: {exc}"
            return dead(STAGE_DECODE, reason), self.unexpected
        return DecodedImage(image=image, width=width, height=height, pixels=pixels), None


def _bump(counter: Any) -> None:
    """Count a decode outcome on the bundle's thread, not a pool's: Beam's metrics are per
    thread (an increment on another thread is lost)."""
    if counter is not None:
        counter.inc()


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
