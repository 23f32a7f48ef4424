"""``imgsearch train joint``: fit text-to-image joint models on a captioned dataset.

Steps, each reusing what an earlier run made: the dataset's image features through the real
index job (``training.features``), the text encoder (fitted on the split's captions for the
kinds that need fitting), text features for every caption, then Word2VisualVec and/or the dual
encoder, each saved as a new version in the models directory with the encoder ids it needs
(``--ensemble N``: N seeds of each merged into one model), and with ``--mixed`` and both kinds,
the two side by side as a third model, ``mixed-<text encoder>`` (``encoders.joint``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.base import EncoderSpec
from encoders.joint import mixed_joint_model
from encoders.text_registry import (
    FITTED_TEXT_ENCODER_NAMES,
    TEXT_ENCODER_NAMES,
    TextEncoderSpec,
    create_text_encoder,
    fit_text_encoder,
)
from models.artifacts import save_joint_model
from training.captions import caption_pairs, load_captioned_dataset
from training.features import dataset_features
from training.joint import train_dual_encoder, train_w2vv
from training.joint_config import DualEncoderConfig, W2VVConfig
from training.joint_export import export_ensemble

logger = logging.getLogger(__name__)

JOINT_KINDS = ("w2vv", "dual")
# Saved besides the two when both are trained: encoders.joint.mixed_joint_model of them.
MIXED_KIND = "mixed"
_TEXT_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class TrainJointConfig:
    dataset: str
    split: str | None
    models_dir: str
    text_encoder: str = "minilm"
    text_path: str = "auto"
    kinds: tuple[str, ...] = JOINT_KINDS
    image_encoder: EncoderSpec = dataclasses.field(default_factory=EncoderSpec)
    epochs: int = 30
    max_seconds: float | None = None
    batch_size: int | None = None  # None: each trainer's default
    dual_loss: str = "infonce"
    seed: int = 0
    # Members per saved model: seeds seed, seed+1, ... merged into one model (see
    # training.joint_export.export_ensemble); 1 saves a single model.
    ensemble: int = 1
    # With both kinds: also save them side by side as ``mixed-<text encoder>``.
    mixed: bool = False

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1, got {self.ensemble}")


def parse_args(argv: Sequence[str]) -> tuple[TrainJointConfig, list[str]]:
    parser = argparse.ArgumentParser(prog="imgsearch train joint", description=__doc__)
    parser.add_argument("--dataset", required=True, help="captioned folder, Flickr8k or COCO")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="the models directory")
    parser.add_argument("--text-encoder", default="minilm", choices=TEXT_ENCODER_NAMES)
    parser.add_argument("--text-path", default="auto", help="GloVe/MiniLM source ('auto')")
    parser.add_argument("--kind", choices=[*JOINT_KINDS, "both"], default="both")
    parser.add_argument("--encoder", default="mobilenet_v2", help="image encoder")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None, help="per model")
    parser.add_argument(
        "--dual-loss", default="infonce", choices=["infonce", "vse++", "infonce+vse++"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="train this many seeds of each kind and save them merged as one model",
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="with --kind both, also save the two side by side as one model, mixed-<text>",
    )
    args, beam_args = parser.parse_known_args(argv)
    config = TrainJointConfig(
        dataset=args.dataset,
        split=args.split or None,
        models_dir=args.out,
        text_encoder=args.text_encoder,
        text_path=args.text_path,
        kinds=JOINT_KINDS if args.kind == "both" else (args.kind,),
        image_encoder=EncoderSpec(name=args.encoder, weights=args.weights),
        epochs=args.epochs,
        max_seconds=args.max_seconds,
        batch_size=args.batch_size,
        dual_loss=args.dual_loss,
        seed=args.seed,
        ensemble=args.ensemble,
        mixed=args.mixed,
    )
    return config, beam_args


def text_encoder_for(config: TrainJointConfig, captions: list[str]) -> TextEncoderSpec:
    """The spec of the text encoder to train with, fitting it on ``captions`` when it needs it."""
    if config.text_encoder not in FITTED_TEXT_ENCODER_NAMES:
        return TextEncoderSpec(config.text_encoder, config.text_path)
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:12]
    out = Path(config.models_dir) / "text" / f"{config.text_encoder}-{digest}"
    # --text-path names what the fitted encoder builds on: GloVe vectors, or MiniLM for
    # minilm_tfidf (fit_text_encoder takes either through ``glove``).
    return fit_text_encoder(config.text_encoder, captions, out, glove=config.text_path)


def encode_texts(encoder, texts: list[str]) -> np.ndarray:
    """All captions through the text encoder, in chunks (bounded memory, progress in the log)."""
    parts = []
    for start in range(0, len(texts), _TEXT_CHUNK):
        parts.append(encoder.encode(texts[start : start + _TEXT_CHUNK]))
        if start and start % (20 * _TEXT_CHUNK) == 0:
            logger.info("encoded %d/%d captions", start, len(texts))
    return np.concatenate(parts).astype(np.float32, copy=False)


def run(config: TrainJointConfig, beam_args: Sequence[str] = ()) -> list[Path]:
    """Train every kind in ``config.kinds``; -> the saved version folders."""
    dataset = load_captioned_dataset(config.dataset, config.split)
    features = dataset_features(
        dataset, Path(config.models_dir) / "features", config.image_encoder, beam_args
    )
    captions = dataset.caption_texts
    text_spec = text_encoder_for(config, captions)
    text_encoder = create_text_encoder(text_spec)
    start = time.perf_counter()
    text_feats = encode_texts(text_encoder, captions)
    logger.info("text features %s in %.1f s", text_feats.shape, time.perf_counter() - start)

    image_feats = features.image_embeddings
    pairs = caption_pairs(dataset, np.arange(len(dataset.images)))
    saved = []
    exported: dict[str, tuple] = {}
    for kind in config.kinds:
        members, histories = [], []
        for member in range(config.ensemble):
            common = {
                "epochs": config.epochs,
                "seed": config.seed + member,
                "max_seconds": config.max_seconds,
            }
            if config.batch_size is not None:
                common["batch_size"] = config.batch_size
            if kind == "w2vv":
                training = W2VVConfig(**common)
                trained, history = train_w2vv(text_feats, image_feats, pairs, training)
            else:
                training = DualEncoderConfig(loss=config.dual_loss, **common)
                trained, history = train_dual_encoder(text_feats, image_feats, pairs, training)
            members.append(trained)
            histories.append(history)
        model = export_ensemble(
            members, text_feats, image_feats, text_encoder.encoder_id, features.table.encoder_id
        )
        history = histories[0]
        metadata = {
            "text_encoder": {**text_spec.to_json(), "encoder_id": text_encoder.encoder_id},
            "image_encoder": {
                **config.image_encoder.to_json(),
                "encoder_id": features.table.encoder_id,
            },
            "dataset": dataset.summary(),
            "features_index": features.index_dir,
            "training_config": training.to_json(),
            "history": history.to_json(),
            "heldout_metrics": history.best_heldout,
            "ensemble": {
                "members": config.ensemble,
                "seeds": [config.seed + member for member in range(config.ensemble)],
                "member_heldout_metrics": [h.best_heldout for h in histories],
            },
        }
        name = f"{kind}-{config.text_encoder}"
        folder = save_joint_model(config.models_dir, name, model, metadata)
        logger.info("saved %s (held-out %s) to %s", name, history.best_heldout, folder)
        saved.append(folder)
        exported[kind] = (model, metadata, folder)
    if config.mixed and set(exported) == set(JOINT_KINDS):
        # Both kinds trained on the same features: also save them side by side as one model
        # (no extra training; each W2VV seed weighs as much as each dual seed).
        (w2vv, w2vv_meta, w2vv_folder), (dual, dual_meta, dual_folder) = (
            exported["w2vv"],
            exported["dual"],
        )
        model = mixed_joint_model(w2vv, float(config.ensemble), dual)
        metadata = {
            **{k: v for k, v in dual_meta.items() if k not in ("training_config", "history")},
            "mixed_of": {"w2vv": str(w2vv_folder), "dual": str(dual_folder)},
            "heldout_metrics": {
                "w2vv": w2vv_meta["heldout_metrics"],
                "dual": dual_meta["heldout_metrics"],
            },
        }
        name = f"{MIXED_KIND}-{config.text_encoder}"
        folder = save_joint_model(config.models_dir, name, model, metadata)
        logger.info("saved %s (w2vv and dual side by side) to %s", name, folder)
        saved.append(folder)
    return saved


def main(argv: Sequence[str]) -> int:
    config, beam_args = parse_args(argv)
    for folder in run(config, beam_args):
        print(f"saved {folder}")
    return 0
