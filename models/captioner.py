"""Which captioner an index job runs: one pinned version, checked before launch.

``resolve_captioner`` runs in the launching process and pins one version of a captioner in a
models directory, so every worker loads the same weights even if ``LATEST`` moves during the
job; ``pipelines.captions`` runs it on batches of spatial maps.
"""

from __future__ import annotations

import dataclasses

from encoders.base import EncoderSpec
from models.artifacts import read_config, resolve_version


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
    from encoders.registry import image_encoder_id  # no TensorFlow

    recorded = str(config.get("image_encoder_id", ""))
    # The exact id (weights hash included): a fine-tuned CNN of the same architecture gives
    # other spatial maps, and captions decoded from them would be wrong.
    if recorded.split("/", 1)[0] != encoder.name or recorded != image_encoder_id(encoder):
        raise ValueError(
            f"--captioner {name} was trained on {recorded} spatial maps, but this job encodes "
            f"with {image_encoder_id(encoder)}"
        )
    if beam <= 0:
        raise ValueError(f"caption beam width must be positive, got {beam}")
    return CaptionerRef(models_dir, name, folder.name, beam)
