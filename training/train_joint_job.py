"""``imgsearch train joint``: fit text-to-image joint models on a captioned dataset.

With no flag beyond ``--dataset``, ``--split`` and ``--out`` it trains the default recipe
(the best one measured on Flickr8k dev, ``benchmarks/results/text_to_image.md``):

1. text features for every caption from ``minilm_tfidf`` (MiniLM sentence vectors beside a
   TF-IDF fitted on the split's captions);
2. the image side (``training.image_side``): the top five blocks of the mirror-averaging
   MobileNetV2 fine-tuned inside a dual encoder on cached activations of four views per photo,
   saved as a new image-encoder version in the models directory (``--finetune-blocks 0``
   keeps the CNN frozen and reads its features through the real index job instead);
3. Word2VisualVec and the dual encoder on the photos' embeddings under that encoder, three
   seeds of each merged into one model (``--ensemble``), and the two side by side as
   ``mixed-<text encoder>`` (``--no-mixed`` skips it);
4. each saved model carries a query bank (``encoders.query_bank``): 1,024 of the split's
   captions and photos in its space, from which search subtracts each item's hubness
   (``--query-bank 0`` saves none).

Each step reuses what an earlier run made (fitted text encoders, cached activations, indexed
features); progress (epochs, held-out R@K, time left) goes through ``training.progress``: a bar
on a terminal, log lines otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.base import EncoderSpec
from encoders.joint import JointModel, mixed_joint_model
from encoders.query_bank import DEFAULT_BANK_SIZE, QueryBank, sample_rows
from encoders.text_registry import (
    FITTED_TEXT_ENCODER_NAMES,
    TEXT_ENCODER_NAMES,
    TextEncoderSpec,
    create_text_encoder,
    fit_text_encoder,
)
from models.artifacts import save_joint_model
from runtime.arguments import command_parser, show_defaults
from training.captions import load_captioned_dataset
from training.finetune_backbone import fine_tunable
from training.image_side import ImageSide, fine_tuned_image_side, frozen_image_side
from training.joint import train_dual_encoder, train_w2vv
from training.joint_config import DualEncoderConfig, ImageFineTuneConfig, W2VVConfig
from training.joint_export import export_ensemble
from training.progress import Progress, note

logger = logging.getLogger(__name__)

JOINT_KINDS = ("w2vv", "dual")
# The default recipe (benchmarks/results/text_to_image.md has the ablation behind each choice).
DEFAULT_TEXT_ENCODER = "minilm_tfidf"
DEFAULT_IMAGE_ENCODER = "mobilenet_v2_flip"
DEFAULT_ENSEMBLE = 3
# Saved besides the two when both are trained: encoders.joint.mixed_joint_model of them.
MIXED_KIND = "mixed"
_TEXT_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class TrainJointConfig:
    dataset: str
    split: str | None
    models_dir: str
    text_encoder: str = DEFAULT_TEXT_ENCODER
    text_path: str = "auto"
    kinds: tuple[str, ...] = JOINT_KINDS
    image_encoder: EncoderSpec = dataclasses.field(
        default_factory=lambda: EncoderSpec(name=DEFAULT_IMAGE_ENCODER)
    )
    epochs: int = 30
    max_seconds: float | None = None
    batch_size: int | None = None  # None: each trainer's default
    dual_loss: str = "infonce"
    seed: int = 0
    # Members per saved model: seeds seed, seed+1, ... merged into one model (see
    # training.joint_export.export_ensemble); 1 saves a single model.
    ensemble: int = DEFAULT_ENSEMBLE
    # With both kinds: also save them side by side as ``mixed-<text encoder>``.
    mixed: bool = True
    # The image CNN's top blocks trained first (training.image_side); 0 keeps it frozen.
    finetune: ImageFineTuneConfig | None = dataclasses.field(default_factory=ImageFineTuneConfig)
    # Training captions and photos kept with each model for hubness correction; 0: none.
    query_bank: int = DEFAULT_BANK_SIZE

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be at least 1, got {self.ensemble}")
        if self.query_bank < 0:
            raise ValueError(f"query_bank must be >= 0, got {self.query_bank}")
        if self.finetune is not None and not fine_tunable(self.image_encoder.name):
            raise ValueError(
                f"--finetune-blocks needs a MobileNetV2 encoder, not {self.image_encoder.name}; "
                f"pass --finetune-blocks 0 to train on its frozen features"
            )


def parse_args(argv: Sequence[str]) -> tuple[TrainJointConfig, list[str]]:
    parser = command_parser(
        "imgsearch train joint",
        "Fit text-to-image joint models on a captioned dataset. With only --dataset, --split "
        'and --out it trains the default recipe (README, "Text queries"): the fine-tuned '
        "CNN, MiniLM + TF-IDF captions, Word2VisualVec and dual encoders, three seeds each, "
        "and the mixed model; about an hour on two CPU cores.",
        [
            "imgsearch train joint --dataset ../shared/assets/datasets/flickr8k --split train "
            "--out models",
            "imgsearch train joint --dataset DIR --split train --out models --text-encoder "
            "tfidf --kind dual --finetune-blocks 0 --ensemble 1   (a minute: the demo's model)",
        ],
    )
    parser.add_argument("--dataset", required=True, help="captioned folder, Flickr8k or COCO")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="the models directory")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, choices=TEXT_ENCODER_NAMES)
    parser.add_argument("--text-path", default="auto", help="GloVe/MiniLM source ('auto')")
    parser.add_argument("--kind", choices=[*JOINT_KINDS, "both"], default="both")
    parser.add_argument("--encoder", default=DEFAULT_IMAGE_ENCODER, help="image encoder")
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
        default=DEFAULT_ENSEMBLE,
        help="train this many seeds of each kind and save them merged as one model",
    )
    parser.add_argument(
        "--mixed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --kind both, also save the two side by side as one model, mixed-<text>",
    )
    finetune = ImageFineTuneConfig()
    parser.add_argument(
        "--finetune-blocks",
        type=int,
        default=finetune.trainable_blocks,
        choices=[0, 1, 2, 3, 4, 5],
        help="train the image CNN's top N blocks first, saved as a new image encoder "
        "(0: keep the encoder frozen)",
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=finetune.epochs, help="fine-tuning epochs at most"
    )
    parser.add_argument(
        "--finetune-views",
        type=int,
        default=finetune.views,
        help="views cached per photo: the photo, its mirror, then random resized crops",
    )
    parser.add_argument(
        "--query-bank",
        type=int,
        default=DEFAULT_BANK_SIZE,
        help="training captions and photos saved with each model, whose similarity to an item "
        "is subtracted from its scores (hubness correction; 0: none, plain scores)",
    )
    args, beam_args = show_defaults(parser).parse_known_args(argv)
    if args.finetune_blocks:
        finetune = dataclasses.replace(
            finetune, trainable_blocks=args.finetune_blocks, epochs=args.finetune_epochs,
            views=args.finetune_views, seed=args.seed, max_seconds=args.max_seconds,
        )  # fmt: skip
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
        finetune=finetune if args.finetune_blocks else None,
        query_bank=args.query_bank,
    )
    return config, beam_args


def with_query_bank(
    model: JointModel, text_feats: np.ndarray, image_feats: np.ndarray, size: int, seed: int = 0
) -> JointModel:
    """``model`` with a bank of ``size`` training captions and photos embedded by it (0: none).

    A fixed sample (``seed``), so retraining on the same split keeps the same bank rows.
    """
    if size == 0:
        return model
    texts = model.embed_text_features(text_feats[sample_rows(len(text_feats), size, seed)])
    images = model.embed_image_features(image_feats[sample_rows(len(image_feats), size, seed)])
    return model.with_query_bank(QueryBank(texts, images))


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
    with Progress(total=len(texts), desc="encoding captions", unit="caption") as done:
        for start in range(0, len(texts), _TEXT_CHUNK):
            parts.append(encoder.encode(texts[start : start + _TEXT_CHUNK]))
            done.update(min(_TEXT_CHUNK, len(texts) - start))
    return np.concatenate(parts).astype(np.float32, copy=False)


def run(
    config: TrainJointConfig, beam_args: Sequence[str] = (), progress: Any = note
) -> list[Path]:
    """Train every kind in ``config.kinds``; -> the saved version folders.

    ``progress(message)`` receives the long steps' news (default ``training.progress.note``,
    which the CLI's logging shows).
    """
    started = time.perf_counter()
    dataset = load_captioned_dataset(config.dataset, config.split)
    captions = dataset.caption_texts
    text_spec = text_encoder_for(config, captions)
    text_encoder = create_text_encoder(text_spec)
    progress(f"encoding {len(captions)} captions with {text_encoder.encoder_id}")
    text_feats = encode_texts(text_encoder, captions)
    progress(f"text features {text_feats.shape} in {time.perf_counter() - started:.0f} s")

    image_side: ImageSide
    if config.finetune is not None:
        image_side = fine_tuned_image_side(
            dataset, config.models_dir, config.image_encoder, text_feats, config.finetune,
            progress,
        )  # fmt: skip
    else:
        image_side = frozen_image_side(dataset, config.models_dir, config.image_encoder, beam_args)
    image_feats, pairs = image_side.features, image_side.pairs
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
            progress(
                f"trained {kind} seed {common['seed']} ({member + 1}/{config.ensemble}): "
                f"held-out R@5 {history.best_heldout.get('R@5', float('nan')):.3f}, "
                f"{time.perf_counter() - started:.0f} s so far"
            )
        model = export_ensemble(
            members, text_feats, image_feats, text_encoder.encoder_id, image_side.encoder_id
        )
        model = with_query_bank(model, text_feats, image_feats, config.query_bank, config.seed)
        history = histories[0]
        metadata = {
            "text_encoder": {**text_spec.to_json(), "encoder_id": text_encoder.encoder_id},
            "image_encoder": image_side.entry,
            "dataset": dataset.summary(),
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
        model = with_query_bank(model, text_feats, image_feats, config.query_bank, config.seed)
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
