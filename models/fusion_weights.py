"""TODO docstring for models.fusion_weights."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

FUSION_MODEL = "fusion"


def fusion_weights(models_dir) -> tuple[dict[str, float], str] | None:
    """The latest fitted fusion weights in ``models_dir`` (and their version), or None."""
    from models.artifacts import read_config, resolve_version

    if models_dir is None:
        return None
    try:
        folder = resolve_version(models_dir, FUSION_MODEL)
    except FileNotFoundError:
        return None
    return dict(read_config(folder)["weights"]), folder.name
