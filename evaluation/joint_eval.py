"""Text<->image retrieval figures of a trained joint model on a captioned dataset.

Exact scoring (BLAS) over the whole evaluation set, so the figures measure the representation,
not the ANN index; queries are every caption, as in the Flickr8k/COCO retrieval protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.artifacts import LATEST
from models.query_model import load_query_model
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.features import DatasetFeatures
from training.train_joint_job import encode_texts


def evaluate_joint_model(
    models_dir: str | Path, name: str, features: DatasetFeatures, version: str = LATEST
) -> dict[str, Any]:
    """-> ``{"text_to_image": {...}, "image_to_text": {...}}`` for model ``name`` on ``features``.

    A model with a query bank is scored with its hubness correction, and ``"plain"`` holds
    the same two figures by plain dot products.

    ``EncoderMismatchError`` (a ValueError) when the model was trained on other image vectors
    than the features hold, or its text encoder is not the one it was trained on.
    """
    query = load_query_model(
        models_dir,
        name,
        version,
        image_encoder_id=features.table.encoder_id,
        images="the evaluation features",
    )
    joint, text_encoder = query.joint, query.text_encoder
    dataset = features.dataset
    caption_vecs = joint.embed_text_features(encode_texts(text_encoder, dataset.caption_texts))
    image_vecs = joint.embed_image_features(features.image_embeddings)
    caption_image = dataset.caption_image_index()

    def figures(image_bias=None, caption_bias=None) -> dict[str, Any]:
        return {
            "text_to_image": retrieval_metrics(
                text_to_image_ranks(caption_vecs, image_vecs, caption_image, item_bias=image_bias)
            ),
            "image_to_text": retrieval_metrics(
                image_to_text_ranks(image_vecs, caption_vecs, caption_image, item_bias=caption_bias)
            ),
        }

    bank = joint.query_bank
    if bank is None:
        return figures()
    # As imgsearch eval and the server rank: minus the bias of the bank saved with the model.
    corrected = figures(bank.image_bias(image_vecs), bank.text_bias(caption_vecs))
    return {**corrected, "plain": figures()}
