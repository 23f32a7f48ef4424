"""The one place the CLI, the DAG and the jobs read environment variables.

Everything else receives these values through its config object, so a test or a DAG can point
the code at other assets without touching the environment. The one exception is the assets
folder that ``"auto"`` weights resolve against: a model is built where it runs (a Beam worker,
a serving process), so ``encoders.assets`` looks it up there; this module re-exports it for
the CLI and the DAG.
"""

from __future__ import annotations

import os
from pathlib import Path

from encoders.assets import ASSETS_ENV, assets_dir, describe_assets_layout

__all__ = ["ASSETS_ENV", "assets_dir", "dag_defaults", "describe_assets_layout"]


def dag_defaults() -> dict[str, str]:
    """Defaults for the nightly DAG's params (each can be overridden when triggering a run)."""
    assets = assets_dir()
    corpus = str(assets / "datasets" / "coco-mini" / "val2017") if assets else ""
    return {
        "corpus": os.environ.get("IMGSEARCH_CORPUS", corpus),
        "output_root": os.environ.get("IMGSEARCH_OUTPUT_ROOT", str(Path.home() / "imgsearch")),
    }
