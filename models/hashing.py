"""Pin a semantic-hashing model (``imgsearch train hashing``) for the index job's
``--hash_model``."""

from __future__ import annotations

from encoders.base import EncoderSpec
from encoders.registry import image_encoder_dim, image_encoder_id
from index.hash_codes import HashCodes
from models.artifacts import load_hashing_model, resolve_version


def resolve_hash_model(models_dir: str, name: str, encoder: EncoderSpec) -> HashCodes:
    """The LATEST version of hashing model ``name``, checked against the job's ``encoder``.

    FileNotFoundError when it does not exist; ValueError when it is another kind of model or
    was trained on another encoder's embeddings (its bits would mean nothing for these).
    """
    folder = resolve_version(models_dir, name)
    try:
        model = load_hashing_model(models_dir, name, folder.name)
    except ValueError as exc:
        raise ValueError(f"--hash_model {name}: {exc}") from None
    encoder_id, dim = image_encoder_id(encoder), image_encoder_dim(encoder)
    if model.dim != dim or (model.encoder_id and model.encoder_id != encoder_id):
        raise ValueError(
            f"--hash_model {name} was trained on {model.encoder_id or 'unknown'} embeddings "
            f"({model.dim}-d), but this job encodes with {encoder_id} ({dim}-d); train one on "
            f"a table of this encoder (`imgsearch train hashing --table OUT/table`)"
        )
    return HashCodes(model, f"{name}/{folder.name}")
