"""What the eval job hands its writers: the run's config and each method's arrays.

Kept apart from ``evaluation.eval_job`` so the report and the submission writer read these
types without importing the job that calls them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from evaluation.methods import Method
from evaluation.submission import DEFAULT_TOP_K


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    dataset: str
    out: str
    split: str | None = None
    models_dir: str | None = None
    families: tuple[str, ...] = ()  # empty: every registered family
    encoder: str | None = None  # None: the image encoder the models were trained on
    weights: str | None = None
    submission_top_k: int = DEFAULT_TOP_K
    latency_queries: int = 100
    gallery_queries: int = 6
    gallery_failures: int = 4
    beam_args: tuple[str, ...] = ()
    command: str = ""


@dataclasses.dataclass
class MethodResult:
    """Per-method arrays the report and the submission need beyond ``metrics.json``."""

    method: Method
    t2i_ranks: np.ndarray  # (captions,)
    i2t_ranks: np.ndarray  # (images,)
    top_rows: np.ndarray  # (captions, top_k) dataset image rows, best first (exact)
