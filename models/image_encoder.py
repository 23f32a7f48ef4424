"""Fine-tuned image encoders as model versions in the models directory.

A fine-tuned CNN is the stock architecture with other weights, so it is saved as one Keras
``.weights.h5`` file in a version folder (``image-<architecture>/<version>/``, with the usual
``config.json`` and ``metadata.json``) and named by an ordinary ``EncoderSpec`` whose
``weights`` is that file: the index job, the query path and evaluation build it exactly as they
build the stock encoder, and its version tag (a hash of the file) keeps its rows apart.

A joint model trained on it records the spec and the file's place inside the models directory
(``models_file``), so ``recorded_image_encoder`` still finds the weights after the directory
moves (copied to another disk or to a bucket).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from encoders.base import EncoderSpec
from models.artifacts import save_model_version
from storage.files import exists, join_path, read_json

KIND_IMAGE_ENCODER = "image_encoder"
WEIGHTS_FILE = "backbone.weights.h5"  # Keras 3 loads weights only from *.weights.h5


def image_encoder_model_name(architecture: str) -> str:
    """The model name a fine-tuned ``architecture`` is saved under."""
    return f"image-{architecture}"


def save_image_encoder(
    models_dir: str | Path,
    base: EncoderSpec,
    write_weights: Callable[[str], None],
    metadata: Mapping[str, Any],
) -> tuple[EncoderSpec, str]:
    """Publish fine-tuned weights for ``base``'s architecture -> (the spec that builds the
    encoder, the weights file's path relative to ``models_dir``)."""
    name = image_encoder_model_name(base.name)
    config = {"kind": KIND_IMAGE_ENCODER, "architecture": base.name, "image_size": base.image_size}
    folder = save_model_version(
        models_dir, name, config, metadata, lambda out: write_weights(str(out / WEIGHTS_FILE))
    )
    relative = f"{name}/{folder.name}/{WEIGHTS_FILE}"
    weights = str(folder / WEIGHTS_FILE)
    spec = EncoderSpec(name=base.name, weights=weights, image_size=base.image_size)
    return spec, relative


def is_fine_tuned(spec: EncoderSpec) -> bool:
    """Whether ``spec``'s weights are a fine-tuned version saved by ``save_image_encoder``
    (its folder's ``config.json`` says so). Heads trained on the stock CNN's pooled features,
    such as the ImageNet tag classifier, do not fit its features."""
    if spec.weights in ("auto", "imagenet", "none"):
        return False
    config = join_path(str(Path(spec.weights).parent), "config.json")
    if "://" in spec.weights:
        config = spec.weights.rsplit("/", 1)[0] + "/config.json"
    return exists(config) and read_json(config).get("kind") == KIND_IMAGE_ENCODER


def fitting_tag_head(head: str, spec: EncoderSpec) -> Path:
    """The classifier-head file ``head`` names (``"auto"``: the assets' ImageNet head), once it
    can tag ``spec``'s images: FileNotFoundError when there is none, ValueError when it does not
    fit (``encoders.tags.check_tag_head``: another width, no pooled features) or ``spec`` is a
    fine-tuned encoder, whose pooled features the stock CNN's head would mislabel."""
    from encoders.tags import check_tag_head, resolve_tag_head

    path = resolve_tag_head(head)
    check_tag_head(path, spec)
    if is_fine_tuned(spec):
        raise ValueError(
            f"--tag_head {head} classifies the stock CNN's pooled features, but {spec.weights} "
            f"is a fine-tuned encoder (its top blocks changed), so its tags would be wrong; tag "
            f"images encoded with the stock weights, or go without tags"
        )
    return path


def recorded_image_encoder(models_dir: str | Path, entry: Mapping[str, Any]) -> EncoderSpec:
    """The image encoder a model's metadata names (its ``image_encoder`` entry).

    Weights saved in the models directory (``models_file``) are looked up under ``models_dir``
    first, so a moved directory still finds them; otherwise the recorded ``weights`` stand.
    """
    spec = EncoderSpec.from_json(dict(entry))
    relative = entry.get("models_file")
    if relative:
        moved = join_path(str(models_dir), str(relative))
        if exists(moved):
            return EncoderSpec(name=spec.name, weights=moved, image_size=spec.image_size)
    return spec
