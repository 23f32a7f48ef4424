"""Fitted fusion weights: the model the fusion trainer saves and fused search reads.

``evaluation.train_fusion_job`` fits per-part weights (joint, caption, tags) on a dev split and
saves them as the ``fusion`` model; serving and the eval job read the latest version here.
"""

from __future__ import annotations

from models.artifacts import read_config, resolve_version

FUSION_MODEL = "fusion"


def fusion_weights(models_dir) -> tuple[dict[str, float], str] | None:
    """The latest fitted fusion weights in ``models_dir`` (and their version), or None."""
    if models_dir is None:
        return None
    try:
        folder = resolve_version(models_dir, FUSION_MODEL)
    except FileNotFoundError:
        return None
    return dict(read_config(folder)["weights"]), folder.name
