"""Generated captions in the index job: which captioner, checked before launch, and the step.

``resolve_captioner`` pins one captioner version in the launching process (so every worker loads
the same weights even if ``LATEST`` moves). The encode step keeps each image's spatial feature
map on its row (``encoders.tags.SPATIAL_KEY``, the same backbone pass as the embedding);
``AddCaptions`` batches rows, runs beam search once per batch with a captioner loaded once per
worker (``DoFn.setup``), writes ``caption``, ``caption_score``, ``caption_model`` and
``captions`` (every distinct beam, best first: up to ``--caption_beam`` of them), and drops the
map before the table write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np

from encoders.tags import SPATIAL_KEY
from index.schema import CAPTION, CAPTION_MODEL, CAPTION_SCORE, CAPTIONS
from models.artifacts import resolve_version
from models.captioner import CaptionerRef


class CaptionBatchFn(beam.DoFn):
    """A batch of table rows with spatial maps -> the rows with their generated captions."""

    def __init__(self, ref: CaptionerRef) -> None:
        self.ref = ref
        self._captioner = None

    def setup(self) -> None:
        from encoders.captioner import Captioner

        self._captioner = Captioner.load(resolve_version(self.ref.models_dir, self.ref.name,
                                                         self.ref.version))  # fmt: skip

    def process(self, rows: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        expected = self._captioner.config.image_encoder_id
        if rows and rows[0]["encoder"] != expected:
            raise ValueError(
                f"captioner {self.ref.model_id} takes {expected} spatial maps, but this job's "
                f"encoder is {rows[0]['encoder']}"
            )
        spatial = np.stack([row[SPATIAL_KEY] for row in rows]).astype(np.float32)
        beam = self.ref.beam
        found = self._captioner.captions(spatial, beam=beam, count=beam)
        for row, captions in zip(rows, found, strict=True):
            out = {key: value for key, value in row.items() if key != SPATIAL_KEY}
            listed = [{"text": text, "score": float(score)} for text, score in captions]
            yield {**out, CAPTION: listed[0]["text"], CAPTION_SCORE: listed[0]["score"],
                   CAPTION_MODEL: self.ref.model_id, CAPTIONS: listed}  # fmt: skip


class AddCaptions(beam.PTransform):
    """PCollection[table row with a spatial map] -> rows with ``caption`` columns, no map."""

    def __init__(self, ref: CaptionerRef, max_batch_size: int = 64) -> None:
        super().__init__()
        self.ref = ref
        self.max_batch_size = max_batch_size

    def expand(self, rows):
        return (
            rows
            | "BatchForCaptions"
            >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch_size)
            | "Caption" >> beam.ParDo(CaptionBatchFn(self.ref))
        )
