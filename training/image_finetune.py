"""A dual encoder trained through the image CNN's top blocks (TensorFlow, imported lazily).

The frozen-feature trainers (``training.joint``) can only rotate and scale what ImageNet
training put in the pooled vector. Here the image side is ``top blocks -> global average pool
-> L2 norm -> linear tower``, trained jointly with the text tower by the symmetric InfoNCE loss
(learnt, clipped temperature), optionally with VSE++'s hardest-negative hinge after a warm-up.
The top runs on cached bottom activations (``training.finetune_backbone``), one random view
(photo, mirror or crop) of each photo per epoch.

Early stopping holds out a seeded slice of the *training* photos (never dev) and scores them
as the encoder will at index time: for a mirror-averaging encoder the mean of the photo's and
its mirror's pooled features (views 0 and 1), normalised, then the tower.

Returns the trained model (a ``TrainedJointModel``: the towers, exported as today's dual
model), the history, and ``image_features``, the train photos' embeddings under the fine-tuned
CNN, which the frozen-feature trainers take next without re-encoding a pixel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from encoders.joint import KIND_DUAL
from ranking.metrics import image_to_text_ranks, retrieval_metrics, text_to_image_ranks
from training.finetune_backbone import SplitBackbone
from training.joint_batches import split_heldout
from training.joint_config import DualEncoderConfig, ImageFineTuneConfig
from training.joint_fit import TrainingHistory, _BestEpoch, _device
from training.joint_losses import contrastive_losses
from training.joint_model import TrainedJointModel, _build_tower
from training.progress import Progress, note

# Photos per call when embedding the cached activations (bounds memory).
_EMBED_CHUNK = 256


def image_features(
    split: SplitBackbone, activations: np.ndarray, mirror_average: bool
) -> np.ndarray:
    """``(views, N, h, w, c)`` cached activations -> ``(N, dim)`` unit image embeddings, the
    numbers the encoder with this backbone gives (views 0 and 1 are the photo and its mirror)."""
    import tensorflow as tf

    return image_features_from(tf.function(split.pooled), activations, mirror_average)


def fine_tune_dual_encoder(
    split: SplitBackbone,
    activations: np.ndarray,
    text_feats: np.ndarray,
    caption_images: np.ndarray,
    config: ImageFineTuneConfig,
    mirror_average: bool,
    progress: Callable[[str], None] = note,
) -> tuple[TrainedJointModel, TrainingHistory, np.ndarray]:
    """Train the top of ``split`` and two towers on captions -> (model, history, features).

    ``activations`` ``(views, N, h, w, c)`` from ``cache_activations``; ``text_feats`` one row
    per caption; ``caption_images[c]`` the photo row of caption ``c``. The weights of the best
    held-out epoch are restored in ``split.backbone`` and the towers. ``features`` are the
    ``N`` photos' unit embeddings under the restored backbone.
    """
    import keras
    import tensorflow as tf

    if activations.shape[0] < config.views:
        raise ValueError(f"{activations.shape[0]} cached views, the config asks for {config.views}")
    text_feats = np.ascontiguousarray(text_feats, dtype=np.float32)
    caption_images = np.asarray(caption_images, dtype=np.int64)
    pairs = np.stack([np.arange(len(caption_images)), caption_images], axis=1)
    train_pairs, heldout_pairs = split_heldout(pairs, config.heldout_fraction, config.seed)
    train_images = np.unique(train_pairs[:, 1])
    captions_of = _captions_by_image(train_pairs, activations.shape[1])
    image_dim = int(split.top.output.shape[-1])

    tower_config = DualEncoderConfig(
        dim=config.dim, text_hidden_units=config.text_hidden_units, dropout=config.dropout,
        temperature=config.temperature, min_temperature=config.min_temperature,
        seed=config.seed,
    )  # fmt: skip
    text_tower = _build_tower(
        "text_tower", text_feats.shape[1], config.text_hidden_units, config.dim, "relu",
        config.dropout, config.seed,
    )  # fmt: skip
    image_tower = _build_tower(
        "image_tower", image_dim, (), config.dim, "relu", config.dropout, config.seed + 10_000
    )
    log_scale = keras.Variable(math.log(1.0 / config.temperature), name="log_logit_scale")
    max_log_scale = math.log(1.0 / config.min_temperature)
    tower_variables = [
        *text_tower.trainable_variables, *image_tower.trainable_variables,
        *split.pooling_variables,
    ]  # fmt: skip
    backbone_variables = list(split.trainable_variables)
    steps_per_epoch = max(1, len(train_images) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    def optimizer(rate: float, variables: list[Any]) -> Any:
        opt = keras.optimizers.AdamW(
            learning_rate=keras.optimizers.schedules.CosineDecay(rate, total_steps),
            weight_decay=config.weight_decay,
        )
        # Decay kernels only: shrinking biases or the temperature is no regulariser.
        opt.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) < 2])
        opt.build(variables)
        return opt

    tower_optimizer = optimizer(config.learning_rate, [*tower_variables, log_scale])
    backbone_optimizer = (
        optimizer(config.backbone_learning_rate, backbone_variables) if backbone_variables else None
    )
    all_text = tf.constant(text_feats)
    pooled = tf.function(lambda batch: split.pooled(batch))

    @tf.function
    def train_step(acts: tf.Tensor, text_rows: tf.Tensor, image_rows: tf.Tensor, hard: bool):
        with tf.GradientTape() as tape:
            features = tf.math.l2_normalize(split.pooled(acts), axis=1)
            image_emb = tf.math.l2_normalize(image_tower(features, training=True), axis=1)
            text_batch = tf.gather(all_text, text_rows)
            text_emb = tf.math.l2_normalize(text_tower(text_batch, training=True), axis=1)
            scale = tf.exp(log_scale)
            loss = contrastive_losses(text_emb, image_emb, image_rows, scale)
            if hard:
                loss += contrastive_losses(
                    text_emb, image_emb, image_rows, scale, "vse++", config.margin
                )
        variables = [*tower_variables, log_scale, *backbone_variables]
        gradients = tape.gradient(loss, variables)
        split_at = len(tower_variables) + 1
        tower_optimizer.apply_gradients(
            zip(gradients[:split_at], variables[:split_at], strict=True)
        )
        if backbone_optimizer is not None:
            backbone_optimizer.apply_gradients(
                zip(gradients[split_at:], variables[split_at:], strict=True)
            )
        log_scale.assign(tf.clip_by_value(log_scale, 0.0, max_log_scale))
        return loss

    heldout_images = np.unique(heldout_pairs[:, 1])

    def heldout_metrics() -> dict[str, float]:
        acts = activations[:, heldout_images]
        features = image_features_from(pooled, acts, mirror_average)
        image_emb = _unit(image_tower(features, training=False).numpy())
        text_emb = _unit(text_tower(text_feats[heldout_pairs[:, 0]], training=False).numpy())
        own = np.searchsorted(heldout_images, heldout_pairs[:, 1])
        t2i = retrieval_metrics(text_to_image_ranks(text_emb, image_emb, own))
        i2t = retrieval_metrics(image_to_text_ranks(image_emb, text_emb, own))
        return {
            **{k: v for k, v in t2i.items() if k != "queries"},
            **{f"i2t_{k}": i2t[k] for k in ("R@1", "R@5", "R@10")},
        }

    rng = np.random.default_rng([config.seed, 3])
    variables = [*tower_variables, log_scale, *backbone_variables]
    history: list[dict[str, float]] = []
    best = _BestEpoch(variables, config.patience, len(heldout_images) > 0)
    stopped_early = False
    started = time.monotonic()
    progress(
        f"fine-tuning {split.spec.name}'s top {config.trainable_blocks} block(s) with a dual "
        f"encoder on {_device()}: {len(train_images)} photos ({len(heldout_images)} held out), "
        f"{config.views} views each, {config.epochs} epochs max"
    )
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.monotonic()
        order = rng.permutation(train_images)
        hard = 0 < config.hard_negatives_from <= (epoch - 1) / config.epochs
        losses = []
        steps = Progress(
            range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", unit="step",
            leave=False,
        )  # fmt: skip
        for step in steps:
            images = order[step * config.batch_size : (step + 1) * config.batch_size]
            views = rng.integers(0, config.views, len(images))
            captions = np.array([rng.choice(captions_of[i]) for i in images])
            acts = tf.constant(activations[views, images].astype(np.float32))
            losses.append(train_step(acts, captions, tf.constant(images), hard))
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": float(np.mean([float(loss) for loss in losses])),
            "seconds": time.monotonic() - epoch_started,
            "temperature": 1.0 / math.exp(float(log_scale.numpy())),
        }
        if len(heldout_images):
            record.update(heldout_metrics())
        history.append(record)
        elapsed = time.monotonic() - started
        left = elapsed / epoch * (config.epochs - epoch)
        progress(
            f"epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}, held-out text->image "
            f"R@1 {record.get('R@1', float('nan')):.3f} R@5 {record.get('R@5', float('nan')):.3f} "
            f"R@10 {record.get('R@10', float('nan')):.3f}, {record['seconds']:.0f} s, "
            f"at most {left / 60:.1f} min left"
        )
        if best.should_stop(record):
            stopped_early = True
            break
        if config.max_seconds is not None and elapsed > config.max_seconds:
            stopped_early = True
            break
    best_heldout = best.restore()
    model = TrainedJointModel(
        kind=KIND_DUAL, config=tower_config, text_dim=text_feats.shape[1], image_dim=image_dim,
        text_tower=text_tower, image_tower=image_tower,
        logit_scale=math.exp(float(log_scale.numpy())),
    )  # fmt: skip
    trained = TrainingHistory(
        epochs=history,
        best_epoch=best.epoch,
        best_heldout=best_heldout,
        train_pairs=len(train_pairs),
        heldout_pairs=len(heldout_pairs),
        heldout_images=len(heldout_images),
        seconds=time.monotonic() - started,
        stopped_early=stopped_early,
        device=_device(),
    )
    return model, trained, image_features_from(pooled, activations, mirror_average)


def image_features_from(pooled: Any, activations: np.ndarray, mirror_average: bool) -> np.ndarray:
    """Like ``image_features`` with an already traced pooling function."""
    count = activations.shape[1]
    out = []
    for start in range(0, count, _EMBED_CHUNK):
        stop = min(start + _EMBED_CHUNK, count)
        features = pooled(activations[0, start:stop].astype(np.float32)).numpy()
        if mirror_average:
            mirrored = pooled(activations[1, start:stop].astype(np.float32)).numpy()
            features = (features + mirrored) / 2.0
        out.append(features)
    return _unit(np.concatenate(out))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _captions_by_image(pairs: np.ndarray, num_images: int) -> list[np.ndarray]:
    order = np.argsort(pairs[:, 1], kind="stable")
    bounds = np.searchsorted(pairs[order, 1], np.arange(num_images + 1))
    return [pairs[order[bounds[i] : bounds[i + 1]], 0] for i in range(num_images)]
