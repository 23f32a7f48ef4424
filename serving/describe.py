"""Captions and tags of a photo that is not in the index, as the index job would write them.

``POST /api/describe`` and ``imgsearch describe`` run the index job's own models on one backbone
pass of the index's image encoder (``encoders.tags.FeatureEncoder``): the ImageNet tag head
(``--tag_head auto``, stock MobileNetV2 only) and the models directory's captioner
(``imgsearch train captioner``, when it was trained on this encoder's spatial maps), its
distinct top beams. The same decode, encoder graph and float16 map as the index job, so a
photo described here gets the caption and tags its table row would hold (a test checks).

Whatever cannot run is named in ``missing`` (no captioner for this encoder, no head for a
fine-tuned CNN, ...); when neither can, the describer refuses with those reasons (400, as a
focus the index's encoder cannot give: this server cannot, whatever the photo).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import EncoderSpec, ImageEncoder
from encoders.tags import DEFAULT_TOP_K, SPATIAL_KEY, FeatureEncoder, TagHead
from serving.query_error import QueryError
from serving.uploads import decode_upload

if TYPE_CHECKING:
    from encoders.decode_pool import BoundDecoder
    from serving.state import IndexBundle

DEFAULT_CAPTIONER = "captioner"  # imgsearch train captioner's default --name
DEFAULT_CAPTIONS = 3


class Describer:
    """An image encoder's captioner and tag head, resolved once and loaded once."""

    def __init__(
        self,
        encoder: ImageEncoder,
        spec: EncoderSpec,
        models_dir: str | None,
        captioner: str = DEFAULT_CAPTIONER,
        tag_head: str | None = "auto",
        beam: int = 3,
        count: int = DEFAULT_CAPTIONS,
    ) -> None:
        from models.artifacts import resolve_version
        from models.captioner import resolve_captioner

        self.encoder_id, self.beam, self.count = encoder.encoder_id, beam, count
        self.missing: dict[str, str] = {}
        if not hasattr(encoder, "encode_with_features"):
            raise QueryError(
                400,
                f"cannot describe images: the index's encoder {encoder.encoder_id} gives no "
                f"pooled features or spatial maps (an int8 or fake encoder)",
            )
        self.captioner_id, self._captioner = None, None
        if not models_dir:
            self.missing["captions"] = "no models directory (--models) to find a captioner in"
        else:
            try:
                ref = resolve_captioner(models_dir, captioner, spec, beam)
            except (FileNotFoundError, ValueError) as exc:
                self.missing["captions"] = str(exc)
            else:
                from encoders.captioner import Captioner

                self.captioner_id = ref.model_id
                self._captioner = Captioner.load(resolve_version(models_dir, ref.name, ref.version))
        head = self._tag_head(spec, tag_head)
        if head is None and self._captioner is None:
            raise QueryError(400, "cannot describe images: " + "; ".join(self.missing.values()))
        self.tag_model = head.version if head is not None else None
        self._features = FeatureEncoder(encoder, head, DEFAULT_TOP_K, self._captioner is not None)
        self._lock = threading.Lock()  # one beam search at a time: it holds N x beam states

    def _tag_head(self, spec: EncoderSpec, tag_head: str | None) -> TagHead | None:
        from models.image_encoder import fitting_tag_head

        if tag_head is None:
            self.missing["tags"] = "no tag head"
            return None
        try:
            path = fitting_tag_head(tag_head, spec)
        except (FileNotFoundError, ValueError) as exc:
            self.missing["tags"] = str(exc)
            return None
        return TagHead.load(path)

    def describe(self, pixels: np.ndarray) -> dict[str, Any]:
        """One decoded image (``(size, size, 3)`` at the encoder's input size) -> its captions
        (best first, mean log-probability per word) and tags (probabilities)."""
        _, extras = self._features.analyze(pixels[np.newaxis])
        extra = extras[0]
        captions: list[tuple[str, float]] = []
        if self._captioner is not None:
            # As the index job's caption step: the float16 map of the encode step, in float32.
            spatial = extra[SPATIAL_KEY][np.newaxis].astype(np.float32)
            with self._lock:
                captions = self._captioner.captions(spatial, self.beam, self.count)[0]
        return {
            "captions": [{"text": text, "score": score} for text, score in captions],
            "tags": extra.get("tags", []),
            "encoder": self.encoder_id,
            "captioner": self.captioner_id,
            "tag_model": self.tag_model,
            "missing": dict(self.missing),
        }


class Describers:
    """The server's describers, one per image encoder (a reload may bring another encoder)."""

    def __init__(self, models_dir: str | None) -> None:
        self.models_dir = models_dir
        self._by_encoder: dict[str, Describer] = {}
        self._lock = threading.Lock()

    def for_encoder(self, encoder: ImageEncoder, spec: EncoderSpec) -> Describer:
        with self._lock:  # loading a captioner takes seconds: concurrent first calls wait
            describer = self._by_encoder.get(encoder.encoder_id)
            if describer is None:
                describer = Describer(encoder, spec, self.models_dir)
                self._by_encoder[encoder.encoder_id] = describer
            return describer


def describe_upload(
    bundle: IndexBundle, data: bytes, describers: Describers, decode: BoundDecoder
) -> dict[str, Any]:
    """An uploaded image -> its description under ``bundle``'s encoder (decoded as indexing
    does; 422 when it is not a usable image, 400 when nothing can describe it)."""
    encoder = bundle.images.image_encoder()
    spec = EncoderSpec.from_json(bundle.images.manifest.encoder_spec)
    describer = describers.for_encoder(encoder, spec)
    pixels, echo = decode_upload(data, decode, encoder.input_size)
    return {"image": echo, **describer.describe(pixels)}
