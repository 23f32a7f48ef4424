"""Where ``"auto"`` finds pretrained files: the assets folder, looked up where a model is built.

An encoder spec travels to Beam workers and into manifests as ``weights="auto"``; the file it
means is found on the machine that builds the model (``$IMGSEARCH_ASSETS``, else
``../shared/assets`` beside the checkout). This is the only environment variable read below
``imgsearch.settings``, and only here.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_ENV = "IMGSEARCH_ASSETS"

# Relative to the checkout (this file lives in <repo>/encoders/): the shared assets folder
# that sits beside the repository on development and CI machines.
_DEFAULT_ASSETS = Path(__file__).resolve().parent.parent.parent / "shared" / "assets"


def assets_dir() -> Path | None:
    """Where pretrained weights and sample corpora are looked up, or None if nowhere.

    ``$IMGSEARCH_ASSETS`` wins; otherwise ``../shared/assets`` beside the checkout when it exists.
    """
    configured = os.environ.get(ASSETS_ENV)
    if configured:
        return Path(configured).expanduser()
    for candidate in (_DEFAULT_ASSETS, Path.cwd().parent / "shared" / "assets"):
        if candidate.is_dir():
            return candidate
    return None


def describe_assets_layout() -> str:
    """What a user must provide when nothing is found (used in error messages)."""
    return (
        f"Set {ASSETS_ENV} to a folder laid out like this (or pass explicit paths):\n"
        f"  weights/mobilenet_v2_1.0_224_no_top.weights.h5   ImageNet MobileNetV2 without top\n"
        f"  datasets/coco-mini/val2017/*.jpg                 a folder of photos to index\n"
        f"With internet access, --weights imagenet downloads Keras' ImageNet weights instead."
    )
