"""A Beam ``ModelHandler`` that encodes ``DecodedImage`` batches into embedding-table rows.

The handler holds only the ``EncoderSpec`` (small, picklable); the encoder itself is built by
``load_model`` once per worker process through RunInference's shared handle. Used as::

    handler = ImageEncoderModelHandler(spec)
    results, failures = images | RunInference(handler).with_exception_handling()
    # results: a table row (dict) per image, or a DeadLetter for an image whose pixels the
    #          encoder cannot take (wrong shape or dtype): that image fails alone, its batch
    #          is still encoded, and it is not lost even without with_exception_handling().
    #          When the model raises on a batch, its images are retried one at a time: only
    #          the image(s) the model raises on become DeadLetters ("encoder failed: ...").
    # failures.failed_inferences: (batch, error) when the handler itself cannot run (a non-image
    #          element: a wiring bug); encode_dead_letters turns it into one DeadLetter each.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from encoders.base import EncoderSpec, ImageEncoder
from encoders.registry import create_image_encoder
from encoders.tags import FeatureEncoder, TagHead
from pipelines import live_progress
from pipelines.types import STAGE_ENCODE, DeadLetter, DecodedImage, embedding_row

METRICS_NAMESPACE = "imgsearch_encode"

logger = logging.getLogger(__name__)


def pixels_problem(image: DecodedImage, image_size: int) -> str | None:
    """Why the encoder cannot take ``image`` (its pixels are not ``(S, S, 3)`` uint8), or None.

    ``run_inference`` checks each image so one bad image becomes one dead letter instead of
    failing its whole batch.
    """
    pixels = image.pixels
    expected = (image_size, image_size, 3)
    if not isinstance(pixels, np.ndarray):
        return f"pixels must be a uint8{expected} array, got {type(pixels).__name__}"
    if pixels.shape != expected or pixels.dtype != np.uint8:
        return f"pixels must be uint8{expected} for the encoder, got {pixels.dtype}{pixels.shape}"
    return None


class EncoderUnavailable(RuntimeError):
    """The encoder could not be built: a failure of the job, never a dead letter per image."""


class LazyEncoder:
    """An encoder built by ``build`` on first ``get`` (thread-safe: RunInference may share it).

    Built in Beam's setup, a model that cannot load fails the job; built here, inside a batch,
    its error would reach RunInference's per-batch exception handling and turn every image
    into a dead letter. So a build failure is raised as ``EncoderUnavailable``, which
    ``encode_dead_letters`` raises again instead of writing dead letters.
    """

    def __init__(self, build: Callable[[], ImageEncoder | FeatureEncoder]) -> None:
        self._build = build
        self._encoder: ImageEncoder | FeatureEncoder | None = None
        self._lock = threading.Lock()

    def get(self) -> ImageEncoder | FeatureEncoder:
        with self._lock:
            if self._encoder is None:
                try:
                    self._encoder = self._build()
                except Exception as exc:
                    raise EncoderUnavailable(
                        f"the image encoder could not be built: {exc}"
                    ) from exc
            return self._encoder


class ImageEncoderModelHandler(
    ModelHandler[DecodedImage, dict[str, Any] | DeadLetter, LazyEncoder]
):
    """``DecodedImage`` -> embedding-table row (``pipelines.types.embedding_row``) or DeadLetter.

    Each batch's usable images are stacked into one ``(N, S, S, 3)`` array and encoded with one
    ``encode`` call.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        min_batch_size: int = 8,
        max_batch_size: int = 64,
        max_batch_duration_secs: int | None = None,
        tag_head: str | None = None,
        tags_top_k: int = 5,
        spatial: bool = False,
    ) -> None:
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                "need 1 <= min_batch_size <= max_batch_size, "
                f"got {min_batch_size} and {max_batch_size}"
            )
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )
        self.spec = spec
        # Extras of the same backbone pass: classifier tags (a head file) and the spatial map
        # (kept on the row for a captioning step).
        self.tag_head = tag_head
        self.tags_top_k = tags_top_k
        self.spatial = spatial

    def load_model(self) -> LazyEncoder:
        """The encoder, built on its first batch (TensorFlow and weights for Keras encoders):
        once per worker, and never by a run with nothing to encode (Beam sets the step up
        whether or not an element reaches it)."""
        return LazyEncoder(self._build_encoder)

    def _build_encoder(self) -> ImageEncoder | FeatureEncoder:
        encoder = create_image_encoder(self.spec)
        if self.tag_head is not None or self.spatial:
            head = TagHead.load(self.tag_head) if self.tag_head is not None else None
            encoder = FeatureEncoder(encoder, head, self.tags_top_k, self.spatial)
        # TensorFlow, Keras and the model are hundreds of thousands of objects that live as
        # long as the worker: out of the collector's sight, full collections triggered by the
        # per-image work no longer walk them again and again.
        gc.freeze()
        return encoder

    def run_inference(
        self,
        batch: Sequence[DecodedImage],
        model: LazyEncoder | ImageEncoder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[dict[str, Any] | DeadLetter]:
        """One ``encode`` call for the batch's usable images; results in input order.

        A usable image gives an embedding-table row, an unusable one a ``DeadLetter``. Anything
        that is not a ``DecodedImage`` raises TypeError, failing the batch: that is a wiring bug,
        not bad data.
        """
        refused: dict[int, DeadLetter] = {}
        usable: list[DecodedImage] = []
        for position, image in enumerate(batch):
            if not isinstance(image, DecodedImage):
                raise TypeError(f"expected DecodedImage elements, got {type(image).__name__}")
            problem = pixels_problem(image, self.spec.image_size)
            if problem is None:
                usable.append(image)
            else:
                ref = image.image.ref
                refused[position] = DeadLetter(ref.uri, STAGE_ENCODE, problem, ref.image_id)
        rows: Iterator[dict[str, Any] | DeadLetter] = iter(())
        live_progress.bump("encoded", len(usable))
        if usable:
            if isinstance(model, LazyEncoder):
                model = model.get()  # outside the try below: a build failure is not per image
            try:
                vectors, extras = _embed(model, np.stack([image.pixels for image in usable]))
            except Exception as exc:  # a model error: narrowed down to the image(s) below
                if len(usable) == 1:
                    rows = iter([_encode_failed(usable[0], exc)])
                else:
                    # One image that makes the model raise must not take its whole batch (up to
                    # max_batch_size good images) to the dead letters: retry them one at a time.
                    logger.warning(
                        "encoding a batch of %d failed (%s); retrying singly", len(usable), exc
                    )
                    rows = iter([_encode_alone(model, image) for image in usable])
            else:
                encoder_id = model.encoder_id
                rows = (
                    {**embedding_row(image, vector, encoder_id), **extra}
                    for image, vector, extra in zip(usable, vectors, extras, strict=True)
                )
        return [
            refused[position] if position in refused else next(rows)
            for position in range(len(batch))
        ]

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"ImageEncoderModelHandler takes no inference_args, got {sorted(inference_args)}"
            )

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return dict(self._batching_kwargs)

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        # The pixels dominate; pickling the batch just to measure it would copy them all.
        return sum(
            int(image.pixels.nbytes)
            for image in batch
            if isinstance(image, DecodedImage) and isinstance(image.pixels, np.ndarray)
        )

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def __repr__(self) -> str:
        return f"ImageEncoderModelHandler({self.spec}, batching={self._batching_kwargs})"


def _embed(
    model: ImageEncoder | FeatureEncoder, pixels: np.ndarray
) -> tuple[np.ndarray, Sequence[dict[str, Any]]]:
    """A pixel batch -> (unit embeddings, per-image extra columns such as tags or captions)."""
    if isinstance(model, FeatureEncoder):
        return model.analyze(pixels)
    return model.encode(pixels), [{}] * len(pixels)


def _encode_alone(
    model: ImageEncoder | FeatureEncoder, image: DecodedImage
) -> dict[str, Any] | DeadLetter:
    """One image through the model: its row, or a DeadLetter naming what the model raised."""
    try:
        vectors, extras = _embed(model, image.pixels[np.newaxis])
    except Exception as exc:  # any failure of this one image is its dead letter
        return _encode_failed(image, exc)
    return {**embedding_row(image, vectors[0], model.encoder_id), **extras[0]}


def _encode_failed(image: DecodedImage, exc: Exception) -> DeadLetter:
    ref = image.image.ref
    reason = f"encoder failed: {type(exc).__name__}: {exc}"
    return DeadLetter(ref.uri, STAGE_ENCODE, reason, ref.image_id)


def encode_dead_letters(failure: tuple[Any, Any]) -> list[DeadLetter]:
    """A ``failed_inferences`` record ``(batch, error)`` -> one ``DeadLetter`` per element.

    ``error`` is Beam's ``(exception type, repr, traceback lines)`` triple (or an exception).
    Elements that are not images (the TypeError case) are named by their repr.
    """
    failed, error = failure
    if isinstance(error, EncoderUnavailable) or (
        isinstance(error, tuple) and error and error[0] is EncoderUnavailable
    ):
        raise EncoderUnavailable(str(error if isinstance(error, BaseException) else error[1]))
    if isinstance(error, BaseException):
        reason = repr(error)
    elif isinstance(error, tuple) and len(error) >= 2:
        reason = str(error[1])
    else:
        reason = str(error)
    elements = list(failed) if isinstance(failed, list | tuple) else [failed]
    letters = []
    for element in elements:
        if isinstance(element, DecodedImage):
            ref = element.image.ref
            letters.append(DeadLetter(ref.uri, STAGE_ENCODE, reason, ref.image_id))
        else:
            letters.append(DeadLetter(repr(element)[:200], STAGE_ENCODE, reason))
    return letters
