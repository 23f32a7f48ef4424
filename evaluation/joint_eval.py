"""Text<->image retrieval figures of a trained joint model on a captioned dataset.

Exact scoring (BLAS) over the whole evaluation set, so the figures measure the representation,
not the ANN index; queries are every caption, as in the Flickr8k/COCO retrieval protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encoders.text_registry import TextEncoderSpec, create_text_encoder
from models.artifacts import LATEST, load_joint_model, read_metadata, resolve_version
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.features import DatasetFeatures
from training.train_joint_job import encode_texts


def evaluate_joint_model(
    models_dir: str | Path, name: str, features: DatasetFeatures, version: str = LATEST
) -> dict[str, Any]:
    """-> ``{"text_to_image": {...}, "image_to_text": {...}}`` for model ``name`` on ``features``.

    ValueError when the model was trained on other image vectors than the features hold.
    """
    joint = load_joint_model(models_dir, name, version)
    if joint.image_encoder_id != features.table.encoder_id:
        raise ValueError(
            f"{name} was trained on {joint.image_encoder_id} vectors, the evaluation features "
            f"are {features.table.encoder_id}"
        )
    metadata = read_metadata(resolve_version(models_dir, name, version))
    text_encoder = create_text_encoder(TextEncoderSpec.from_json(metadata["text_encoder"]))
    dataset = features.dataset
    caption_vecs = joint.embed_text_features(encode_texts(text_encoder, dataset.caption_texts))
    image_vecs = joint.embed_image_features(features.image_embeddings)
    caption_image = dataset.caption_image_index()
    return {
        "text_to_image": retrieval_metrics(
            text_to_image_ranks(caption_vecs, image_vecs, caption_image)
        ),
        "image_to_text": retrieval_metrics(
            image_to_text_ranks(image_vecs, caption_vecs, caption_image)
        ),
    }
