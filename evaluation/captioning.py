"""Caption quality in ``imgsearch eval``: the index's generated captions against the human ones.

When the evaluation index has a ``caption`` column (the models directory holds a captioner
that fits the encoder; ``eval_job.extra_index_args`` adds ``--captioner``), every dataset
image's generated caption is scored against its human captions with pycocoevalcap: BLEU-1..4,
CIDEr and METEOR. METEOR runs a Java program; without Java the number is ``None`` and
``missing`` says what to install, so it is never dropped silently. ``examples`` are a few images
with both captions, for the report's gallery.
"""

from __future__ import annotations

import logging
from typing import Any

from index.schema import CAPTION, CAPTION_MODEL
from index.table import read_table_columns, table_has_columns
from training.captioner import MeteorUnavailable, caption_metrics, meteor_score
from training.features import DatasetFeatures

logger = logging.getLogger(__name__)

EXAMPLES = 8


def captioning_section(features: DatasetFeatures) -> dict[str, Any] | None:
    """``{"images", "captioner", "BLEU-1".."BLEU-4", "METEOR", "CIDEr", "examples"[, "missing"]}``
    for the dataset's images, or None when the index has no generated captions."""
    if not table_has_columns(features.index_dir, [CAPTION]):
        return None
    values = read_table_columns(
        features.index_dir, [CAPTION, CAPTION_MODEL], features.table.image_ids
    )
    dataset = features.dataset
    generated = [values[CAPTION][row] for row in features.image_rows]
    human = dataset.captions_by_image()
    references = [human[name] for name in dataset.image_names]
    section: dict[str, Any] = {
        "images": len(generated),
        "captioner": values[CAPTION_MODEL][0] if generated else None,
        **caption_metrics(generated, references),
    }
    try:
        section["METEOR"] = meteor_score(generated, references)
    except MeteorUnavailable as exc:
        logger.warning("no METEOR in the captioning figures: %s", exc)
        section["METEOR"] = None
        section["missing"] = {"METEOR": str(exc)}
    step = max(1, len(generated) // EXAMPLES)
    section["examples"] = [
        {"image": dataset.image_names[i], "generated": generated[i], "human": references[i]}
        for i in range(0, len(generated), step)[:EXAMPLES]
    ]
    return section
