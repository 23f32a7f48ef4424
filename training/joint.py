"""Training joint text-image embeddings on precomputed features (TensorFlow, imported lazily).

Inputs are arrays, so the trainers do not care which encoders made them:

- ``text_feats``: ``(T, text_dim)`` float32, one row per caption (a ``TextEncoder``'s output);
- ``image_feats``: ``(N, image_dim)`` float32, one row per image (the embedding table's column);
- ``pairs``: ``(P, 2)`` int ``[text_row, image_row]``, one per caption (``captions.caption_pairs``).

Two models:

- ``train_w2vv``: Word2VisualVec (Dong, Li, Snoek): an MLP regresses a caption's features onto
  its image's (unit) embedding, with a cosine or MSE loss. The joint space is the image space.
- ``train_dual_encoder``: a projection tower per side into a shared space, trained with the
  symmetric InfoNCE loss and a learnable, clipped temperature, optionally with (or replaced by)
  VSE++'s max-violation hinge on the hardest negative of each row and column.

Both hold out a seeded slice of the *training* images (never dev) and stop early on its
text-to-image R@5, restoring the best epoch. Batches are built so two captions of one image
rarely meet, and when they do a mask keeps them from being each other's negatives.

Features are frozen here: the image CNN and the text encoder ran once, upstream. The trainer
that also adapts the CNN's top blocks is ``training.image_finetune``; ``imgsearch train joint``
runs it first by default and trains these two on the fine-tuned encoder's embeddings. Training
uses the GPU when TensorFlow sees one.

This module holds the two trainers; each builds its towers and loss and hands them to the
shared pieces, one module per step of the data flow:

- ``training.joint_config``: the settings (``TrainingSchedule``, ``W2VVConfig``,
  ``DualEncoderConfig``), validated without TensorFlow;
- ``training.joint_batches``: input checks, the held-out split and the batch order (NumPy);
- ``training.joint_model``: the Keras towers and ``TrainedJointModel``;
- ``training.joint_losses``: ``contrastive_losses`` (InfoNCE, VSE++);
- ``training.joint_fit``: the training loop with early stopping, and ``TrainingHistory``;
- ``training.joint_export``: ``export_ensemble``, several models merged into one ``JointModel``.
"""

from __future__ import annotations

import math

import numpy as np

from encoders.joint import KIND_DUAL, KIND_W2VV
from training.joint_batches import _check_inputs
from training.joint_config import DualEncoderConfig, W2VVConfig
from training.joint_fit import TrainingHistory, _fit
from training.joint_losses import contrastive_losses
from training.joint_model import TrainedJointModel, _build_tower


def train_w2vv(
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    pairs: np.ndarray,
    config: W2VVConfig | None = None,
) -> tuple[TrainedJointModel, TrainingHistory]:
    """Word2VisualVec: regress each caption's text features onto its image's unit embedding.

    Returns the trained towers (the best held-out epoch) and the history.
    """
    import tensorflow as tf

    config = config or W2VVConfig()
    text_feats, image_feats, pairs = _check_inputs(text_feats, image_feats, pairs)
    text_tower = _build_tower(
        "text_tower",
        text_feats.shape[1],
        config.hidden_units,
        image_feats.shape[1],
        config.activation,
        config.dropout,
        config.seed,
        config.input_dropout,
    )
    model = TrainedJointModel(
        kind=KIND_W2VV,
        config=config,
        text_dim=text_feats.shape[1],
        image_dim=image_feats.shape[1],
        text_tower=text_tower,
        image_tower=None,
    )

    def loss_fn(
        text_batch: tf.Tensor, image_batch: tf.Tensor, image_rows: tf.Tensor, training: bool
    ) -> tf.Tensor:
        predicted = text_tower(text_batch, training=training)
        target = tf.math.l2_normalize(image_batch, axis=1)
        if config.loss == "infonce":
            predicted = tf.math.l2_normalize(predicted, axis=1)
            return contrastive_losses(predicted, target, image_rows, 1.0 / config.temperature)
        if config.loss == "mse":
            return tf.reduce_mean(tf.reduce_sum(tf.square(predicted - target), axis=1))
        cosine = tf.reduce_sum(tf.math.l2_normalize(predicted, axis=1) * target, axis=1)
        return tf.reduce_mean(1.0 - cosine)

    history = _fit(model, loss_fn, [], text_feats, image_feats, pairs, config)
    return model, history


def train_dual_encoder(
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    pairs: np.ndarray,
    config: DualEncoderConfig | None = None,
) -> tuple[TrainedJointModel, TrainingHistory]:
    """Two projection towers into one space, trained contrastively (see ``DualEncoderConfig``).

    Returns the trained towers (the best held-out epoch, with its temperature as
    ``logit_scale = 1 / T``) and the history.
    """
    import keras
    import tensorflow as tf

    config = config or DualEncoderConfig()
    text_feats, image_feats, pairs = _check_inputs(text_feats, image_feats, pairs)
    text_tower = _build_tower(
        "text_tower",
        text_feats.shape[1],
        config.text_hidden_units,
        config.dim,
        config.activation,
        config.dropout,
        config.seed,
        config.text_input_dropout,
    )
    image_tower = _build_tower(
        "image_tower",
        image_feats.shape[1],
        config.image_hidden_units,
        config.dim,
        config.activation,
        config.dropout,
        config.seed + 10_000,
    )
    # log(1 / T) as in CLIP: learning the log keeps the scale positive and the steps relative.
    log_scale = keras.Variable(
        math.log(1.0 / config.temperature),
        trainable=config.learn_temperature,
        name="log_logit_scale",
        dtype="float32",
    )
    max_log_scale = math.log(1.0 / config.min_temperature)
    model = TrainedJointModel(
        kind=KIND_DUAL,
        config=config,
        text_dim=text_feats.shape[1],
        image_dim=image_feats.shape[1],
        text_tower=text_tower,
        image_tower=image_tower,
        logit_scale=1.0 / config.temperature,
    )

    def loss_fn(
        text_batch: tf.Tensor, image_batch: tf.Tensor, image_rows: tf.Tensor, training: bool
    ) -> tf.Tensor:
        text_emb = tf.math.l2_normalize(text_tower(text_batch, training=training), axis=1)
        image_emb = tf.math.l2_normalize(image_tower(image_batch, training=training), axis=1)
        scale = tf.exp(log_scale.value)
        return contrastive_losses(
            text_emb, image_emb, image_rows, scale, config.loss, config.margin
        )

    def clip_temperature() -> None:
        log_scale.assign(tf.clip_by_value(log_scale.value, 0.0, max_log_scale))

    history = _fit(
        model,
        loss_fn,
        [log_scale] if config.learn_temperature else [],
        text_feats,
        image_feats,
        pairs,
        config,
        after_step=clip_temperature if config.learn_temperature else None,
        temperature=lambda: 1.0 / math.exp(float(log_scale.numpy())),
    )
    model.logit_scale = math.exp(float(log_scale.numpy()))
    return model, history
