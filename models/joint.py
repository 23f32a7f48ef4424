"""Joint-space image embeddings in the index job: which dual model, checked before launch.

``resolve_joint_model`` runs in the launching process and pins one model version, so every
worker loads the same weights even if ``LATEST`` moves during the job. ``JointEmbeddingFn``
(in ``pipelines.transforms``) applies it to each table row.
"""

from __future__ import annotations

import dataclasses

from encoders.base import EncoderSpec
from encoders.joint import KIND_DUAL, KIND_W2VV
from encoders.registry import image_encoder_dim
from models.artifacts import (
    list_models,
    load_joint_model,
    read_config,
    read_metadata,
    resolve_version,
)
from models.image_encoder import recorded_image_encoder


@dataclasses.dataclass(frozen=True)
class JointModelRef:
    """One pinned version of a dual joint model in a models directory (a local path)."""

    models_dir: str
    name: str
    version: str
    dim: int  # width of the joint space: the table's joint_embedding column
    image_encoder_id: str  # the encoder whose vectors the image tower takes

    @property
    def model_id(self) -> str:
        """``name/version``: what the table's ``joint_model`` column holds."""
        return f"{self.name}/{self.version}"


def resolve_joint_model(models_dir: str, name: str, encoder: EncoderSpec) -> JointModelRef:
    """Check model ``name`` can add joint embeddings to a table made by ``encoder``; pin it.

    FileNotFoundError when it does not exist; ValueError when it is a Word2VisualVec model
    (whose image side is the image embedding itself) or was trained on another image encoder.
    The exact encoder id (it includes a hash of the weights) is compared again on every row.
    """
    folder = resolve_version(models_dir, name)
    kind = read_config(folder).get("kind")
    if kind == KIND_W2VV:
        raise ValueError(
            f"--joint_model {name} is a w2vv model: its image side is the image embedding "
            f"itself, so the image index already serves its text queries and no joint column "
            f"is needed; pass a {KIND_DUAL!r} model"
        )
    if kind != KIND_DUAL:
        raise ValueError(f"--joint_model {name} is a {kind!r} model, not a {KIND_DUAL!r} one")
    model = load_joint_model(models_dir, name, folder.name)
    trained_on = read_metadata(folder).get("image_encoder", {})
    expected = {"name": encoder.name, "image_size": encoder.image_size}
    recorded = {key: trained_on.get(key, expected[key]) for key in expected}
    recorded["name"] = model.image_encoder_id.split("/", 1)[0]
    dim = image_encoder_dim(encoder)
    if recorded != expected or model.image_dim != dim:
        raise ValueError(
            f"--joint_model {name} was trained on {model.image_encoder_id} image vectors "
            f"({model.image_dim}-d, {recorded}), but this job encodes with {encoder} ({dim}-d)"
        )
    return JointModelRef(models_dir, name, folder.name, model.dim, model.image_encoder_id)


def default_dual_model(models_dir: str) -> str | None:
    """The dual model an index job adds when ``--models`` comes without ``--joint_model``: the
    first by name with a published version, ``dual-*`` names first, which is the one serving
    (``models.query_model.default_joint_model``) and evaluation query by default, so their text
    queries search this index's joint shard. None when ``models_dir`` holds no dual model.
    """
    names = {m.name for m in list_models(models_dir) if m.kind == KIND_DUAL and m.latest}
    ordered = sorted(names, key=lambda name: (not name.startswith("dual-"), name))
    return ordered[0] if ordered else None


def joint_model_image_encoder(models_dir: str, name: str) -> EncoderSpec:
    """The image encoder joint model ``name`` was trained on, as its metadata records it (a
    fine-tuned encoder's weights are found in ``models_dir`` even after the folder moved)."""
    return recorded_image_encoder(
        models_dir, read_metadata(resolve_version(models_dir, name)).get("image_encoder", {})
    )


def flagged_image_encoder(
    models_dir: str,
    joint_model: str,
    encoder: str = "",
    weights: str = "",
    image_size: int | None = None,
) -> EncoderSpec:
    """The image encoder a job builds from its flags: ``encoder``, ``weights`` and
    ``image_size`` where given, the rest from the encoder ``joint_model`` (a name in
    ``models_dir``; ``""`` for none) was trained on, fine-tuned weights included, else the stock
    defaults. Another architecture than the joint model's takes its own default weights.

    The index job, ``imgsearch eval`` and the captioner's training all resolve it here, so a
    captioner trained without flags takes the maps of the encoder an index of the same models
    is built with.
    """
    spec = EncoderSpec()
    if joint_model:
        spec = joint_model_image_encoder(models_dir, joint_model)
    if encoder and encoder != spec.name:
        spec = EncoderSpec(name=encoder)  # another architecture: its own default weights
    return EncoderSpec(
        name=encoder or spec.name,
        weights=weights or spec.weights,
        image_size=image_size or spec.image_size,
    )
