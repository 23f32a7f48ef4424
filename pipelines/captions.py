"""Generated captions in the index job: which captioner, checked before launch, and the step.

``resolve_captioner`` pins one captioner version in the launching process (so every worker loads
the same weights even if ``LATEST`` moves). The encode step keeps each image's spatial feature
map on its row (``encoders.tags.SPATIAL_KEY``, the same backbone pass as the embedding);
``AddCaptions`` batches rows, runs beam search once per batch with a captioner loaded once per
worker (``DoFn.setup``), writes ``caption``, ``caption_score`` and ``caption_model``, and drops
the map before the table write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np

from encoders.base import EncoderSpec
from encoders.tags import SPATIAL_KEY
from pipelines.types import CAPTION, CAPTION_MODEL, CAPTION_SCORE
from training.artifacts import read_config, resolve_version


@dataclasses.dataclass(frozen=True)
class CaptionerRef:
    """One pinned version of a captioner in a models directory (a local path)."""

    models_dir: str
    name: str
    version: str
    beam: int = 3

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


def resolve_captioner(
    models_dir: str, name: str, encoder: EncoderSpec, beam: int = 3
) -> CaptionerRef:
    """Check captioner ``name`` takes ``encoder``'s spatial maps; pin its latest version.

    FileNotFoundError when it does not exist; ValueError when it is not a captioner or was
    trained on another encoder's maps (the exact id, with the weights' hash, is checked again
    on every batch).
    """
    from encoders.captioner import KIND_CAPTIONER

    folder = resolve_version(models_dir, name)
    config = read_config(folder)
    if config.get("kind") != KIND_CAPTIONER:
        raise ValueError(f"--captioner {name} is a {config.get('kind')!r} model, not a captioner")
    trained_on = str(config.get("image_encoder_id", "")).split("/", 1)[0]
    if trained_on != encoder.name:
        raise ValueError(
            f"--captioner {name} was trained on {config.get('image_encoder_id')} spatial maps, "
            f"but this job encodes with {encoder.name}"
        )
    if beam <= 0:
        raise ValueError(f"caption beam width must be positive, got {beam}")
    return CaptionerRef(models_dir, name, folder.name, beam)


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
        captions = self._captioner.caption(spatial, beam=self.ref.beam)
        for row, (text, score) in zip(rows, captions, strict=True):
            out = {key: value for key, value in row.items() if key != SPATIAL_KEY}
            yield {**out, CAPTION: text, CAPTION_SCORE: float(score),
                   CAPTION_MODEL: self.ref.model_id}  # fmt: skip


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
