"""Several trained joint models (e.g. seeds) exported as one ``encoders.joint.JointModel``.

Separate from the towers (``training.joint_model``) because merging needs the training features
to weigh each member alike; a single model exports through ``TrainedJointModel.to_joint_model``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from encoders.joint import JointModel, ensemble_joint_models
from training.joint_model import _EMBED_CHUNK, TrainedJointModel

if TYPE_CHECKING:
    import keras


def _mean_output_norm(tower: keras.Model, feats: np.ndarray) -> float:
    """The mean length of ``tower``'s raw (unnormalised) outputs on ``feats``."""
    feats = np.asarray(feats, dtype=np.float32)
    norms = [
        np.linalg.norm(
            np.asarray(tower(feats[start : start + _EMBED_CHUNK], training=False)), axis=1
        )
        for start in range(0, len(feats), _EMBED_CHUNK)
    ]
    return float(np.mean(np.concatenate(norms)))


def export_ensemble(
    members: list[TrainedJointModel],
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    text_encoder_id: str,
    image_encoder_id: str,
) -> JointModel:
    """Several trained models of one kind (e.g. seeds) as one ``JointModel`` to save.

    Each member's towers are scaled by one over their mean output length on the training
    features, so every member weighs alike in the merged vectors (see
    ``encoders.joint.ensemble_joint_models``): the losses only constrain directions, and two
    seeds can end with very different raw lengths.
    """
    exported = [m.to_joint_model(text_encoder_id, image_encoder_id) for m in members]
    if len(members) == 1:
        return exported[0]
    text_scales = [1.0 / _mean_output_norm(m.text_tower, text_feats) for m in members]
    image_scales = [
        1.0 / _mean_output_norm(m.image_tower, image_feats) if m.image_tower is not None else 1.0
        for m in members
    ]
    return ensemble_joint_models(exported, text_scales, image_scales)
