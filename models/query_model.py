"""A joint model ready to answer text queries: its towers, its text encoder, checked together.

``load_query_model`` is the one place that loads a joint model (``models.artifacts``) together
with the text encoder named in its metadata (``encoders.text_registry``) and checks that they
fit each other, and, when asked, the image vectors they will be used with. Serving (start-up and
``TextSearcher.load``) and evaluation (``imgsearch eval`` methods, ``evaluate_joint_model``) all
go through it, so a mismatch is refused the same way, with the same error, everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from encoders.base import TextEncoder
from encoders.joint import JointModel
from encoders.text_registry import TextEncoderSpec, create_text_encoder
from models.artifacts import LATEST, list_models, load_joint_model, read_metadata, resolve_version

logger = logging.getLogger(__name__)


class EncoderMismatchError(ValueError):
    """The query encoder is not the encoder that made the vectors it is used with.

    Raised when a joint model meets image vectors of another image encoder, or a text encoder
    other than the one it was trained on (and by ``serving.searcher`` for image queries).
    """


@dataclasses.dataclass(frozen=True)
class QueryModel:
    """One pinned version of a joint model with its text encoder (built, not yet warmed up)."""

    name: str
    version: str
    folder: Path
    joint: JointModel
    text_spec: TextEncoderSpec
    text_encoder: TextEncoder
    metadata: dict[str, Any]

    @property
    def model_version(self) -> tuple[str, str]:
        """``(name, version)``: what an index's joint shard records as its model."""
        return self.name, self.version

    @property
    def model_id(self) -> str:
        """``name/version``: what a table's ``joint_model`` column holds."""
        return f"{self.name}/{self.version}"

    @property
    def image_encoder_id(self) -> str:
        return self.joint.image_encoder_id

    @property
    def text_encoder_id(self) -> str:
        return self.joint.text_encoder_id


def default_joint_model(models_dir: str | Path) -> str:
    """The joint model to use when none is named: a dual encoder if any, else Word2VisualVec."""
    names = sorted({m.name for m in list_models(models_dir)})
    for prefix in ("dual-", "w2vv-"):
        for name in names:
            if name.startswith(prefix):
                return name
    raise FileNotFoundError(
        f"no joint model in {models_dir}; train one with "
        "`imgsearch train joint --dataset DIR --split train --out MODELS_DIR`"
    )


def check_query_encoders(
    joint: JointModel,
    *,
    image_encoder_id: str | None = None,
    text_encoder_id: str | None = None,
    model: str = "joint model",
    images: str = "the index",
) -> None:
    """EncoderMismatchError unless ``joint`` takes vectors of these encoders (None: unchecked).

    ``model`` names the model and ``images`` where the image vectors come from, in the message.
    """
    if image_encoder_id is not None and joint.image_encoder_id != image_encoder_id:
        raise EncoderMismatchError(
            f"{model} was trained on {joint.image_encoder_id} image vectors, but {images} "
            f"holds {image_encoder_id} vectors; use it with the image encoder it was trained "
            f"on (or retrain it)"
        )
    if text_encoder_id is not None and joint.text_encoder_id != text_encoder_id:
        raise EncoderMismatchError(
            f"{model} expects {joint.text_encoder_id} text features, got {text_encoder_id}"
        )


def load_query_model(
    models_dir: str | Path,
    name: str | None = None,
    version: str = LATEST,
    *,
    image_encoder_id: str | None = None,
    images: str = "the index",
) -> QueryModel:
    """Load joint model ``name`` (None: ``default_joint_model``) and its text encoder.

    ``version`` (default: the one ``LATEST`` names) is resolved once, so the weights and the
    metadata are of the same version even if ``LATEST`` moves meanwhile. FileNotFoundError or
    ValueError as ``models.artifacts.load_joint_model`` raises them; EncoderMismatchError when
    ``image_encoder_id`` is given and the model was trained on another image encoder's vectors
    (checked before the text encoder is built), or when the text encoder its metadata names is
    not the one its towers were trained on.
    """
    name = name or default_joint_model(models_dir)
    folder = resolve_version(models_dir, name, version)
    joint = load_joint_model(models_dir, name, folder.name)
    label = f"joint model {name} ({folder.name})"
    check_query_encoders(joint, image_encoder_id=image_encoder_id, model=label, images=images)
    metadata = read_metadata(folder)
    spec = TextEncoderSpec.from_json(metadata["text_encoder"])
    text_encoder = create_text_encoder(spec)
    check_query_encoders(joint, text_encoder_id=text_encoder.encoder_id, model=label)
    logger.info("text queries through %s/%s with %s", name, folder.name, spec)
    return QueryModel(name, folder.name, folder, joint, spec, text_encoder, metadata)
