"""The image side of ``imgsearch train joint``: which encoder the joint models are trained on,
and the training photos' embeddings under it.

Two ways, chosen by ``--finetune-blocks``:

- ``frozen_image_side`` (0): the stock encoder's embeddings, through the real index job
  (``training.features``), as before;
- ``fine_tuned_image_side`` (1-3): the photos' bottom activations are cached once (under the
  models directory's ``features/``, reused by a later run over the same photos), the CNN's top
  blocks are trained inside a dual encoder (``training.image_finetune``), and the fine-tuned
  weights are saved as a new image-encoder version (``models.image_encoder``). The photos'
  embeddings under it come from the same cache (views 0 and 1 are the photo and its mirror), so
  no pixel is decoded twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.base import EncoderSpec
from encoders.imaging import ImageRejected, decode_image
from encoders.keras_backbones import architecture_for
from encoders.registry import image_encoder_id
from models.image_encoder import save_image_encoder
from storage.files import read_bytes
from training.captions import CaptionedDataset, DatasetError, caption_pairs
from training.features import dataset_features
from training.joint_config import ImageFineTuneConfig
from training.joint_fit import TrainingHistory
from training.joint_model import TrainedJointModel

logger = logging.getLogger(__name__)

ACTIVATIONS_FILE = "activations.npy"


@dataclasses.dataclass(eq=False)
class ImageSide:
    """What the joint trainers need from the image side.

    ``features[i]`` is the unit embedding of ``dataset.images`` row ``pairs``' image rows point
    at; ``entry`` is the ``image_encoder`` metadata every model trained on it records.
    """

    spec: EncoderSpec
    encoder_id: str
    features: np.ndarray
    pairs: np.ndarray
    entry: dict[str, Any]
    fine_tuned: tuple[TrainedJointModel, TrainingHistory] | None = None


def frozen_image_side(
    dataset: CaptionedDataset, models_dir: str, spec: EncoderSpec, beam_args: Sequence[str]
) -> ImageSide:
    """The stock encoder's embeddings of the dataset's photos, through the index job."""
    features = dataset_features(dataset, Path(models_dir) / "features", spec, beam_args)
    encoder_id = features.table.encoder_id
    return ImageSide(
        spec=spec,
        encoder_id=encoder_id,
        features=features.image_embeddings,
        pairs=caption_pairs(dataset, np.arange(len(dataset.images))),
        entry={**spec.to_json(), "encoder_id": encoder_id, "features_index": features.index_dir},
    )


def activations_dir(models_dir: str, dataset: CaptionedDataset, spec: EncoderSpec, cut: str,
                    views: int, seed: int) -> Path:  # fmt: skip
    """Where the cached activations of ``dataset`` below ``cut`` live: named by what they hold."""
    digest = hashlib.sha256()
    digest.update(f"{spec}|{cut}|views={views}|seed={seed}\n".encode())
    for name, uri in dataset.images:
        digest.update(f"{name}\t{uri}\n".encode())
    split = dataset.split or "all"
    name = f"finetune-{dataset.layout}-{split}-{digest.hexdigest()[:12]}"
    return Path(models_dir) / "features" / name


def _pixel_loader(dataset: CaptionedDataset, size: int) -> Callable[[Sequence[int]], np.ndarray]:
    """``rows -> (len(rows), size, size, 3)`` uint8, decoded as the index job decodes; a photo
    that fails raises ``DatasetError`` naming it (a training set with silently missing photos
    would give a wrong model)."""

    def load(rows: Sequence[int]) -> np.ndarray:
        pixels, problems = [], {}
        for row in rows:
            name, uri = dataset.images[row]
            try:
                pixels.append(decode_image(read_bytes(uri), (size, size))[0])
            except (ImageRejected, OSError) as err:
                problems.setdefault("unreadable image", []).append(f"{name}: {err}")
        if problems:
            raise DatasetError(dataset.root, problems)
        return np.stack(pixels)

    return load


def fine_tuned_image_side(
    dataset: CaptionedDataset,
    models_dir: str,
    base: EncoderSpec,
    text_feats: np.ndarray,
    config: ImageFineTuneConfig,
    progress: Callable[[str], None],
) -> ImageSide:
    """Fine-tune ``base``'s top blocks on the dataset's captions and save the new encoder."""
    from training.finetune_backbone import build_split_backbone, cache_activations
    from training.image_finetune import fine_tune_dual_encoder

    split = build_split_backbone(base, config.trainable_blocks)
    cache = activations_dir(models_dir, dataset, base, split.cut, config.views, config.seed)
    path = cache / ACTIVATIONS_FILE
    if path.is_file():
        progress(f"reusing the cached image activations in {cache}")
        activations = np.load(path)
    else:
        activations = cache_activations(
            split, _pixel_loader(dataset, base.image_size), len(dataset.images), config.views,
            config.seed, progress,
        )  # fmt: skip
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{ACTIVATIONS_FILE}.partial.npy"
        np.save(partial, activations)
        partial.rename(path)
    mirror = architecture_for(base.name).flip_average
    model, history, features = fine_tune_dual_encoder(
        split, activations, text_feats, dataset.caption_image_index(), config, mirror, progress
    )
    metadata = {
        "base_encoder": {**base.to_json(), "encoder_id": image_encoder_id(base)},
        "dataset": dataset.summary(),
        "training_config": config.to_json(),
        "history": history.to_json(),
        "heldout_metrics": history.best_heldout,
    }
    spec, relative = save_image_encoder(models_dir, base, split.save_backbone, metadata)
    encoder_id = image_encoder_id(spec)
    progress(f"saved the fine-tuned image encoder {encoder_id} ({spec.weights})")
    return ImageSide(
        spec=spec,
        encoder_id=encoder_id,
        features=features,
        pairs=caption_pairs(dataset, np.arange(len(dataset.images))),
        entry={
            **spec.to_json(),
            "encoder_id": encoder_id,
            "models_file": relative,
            "fine_tuned_from": metadata["base_encoder"],
        },
        fine_tuned=(model, history),
    )
