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

Features are frozen: the image CNN and the text encoder ran once, upstream. Fine-tuning their top
layers would need pixels and token ids in the batches instead of table rows; that belongs to a
later trainer that wraps ``KerasImageEncoder``'s model (see ``_build_tower`` for where a
trainable backbone would sit). Training uses the GPU when TensorFlow sees one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import l2_normalize
from encoders.joint import (
    KIND_DUAL,
    KIND_W2VV,
    DenseLayer,
    JointModel,
    ensemble_joint_models,
)
from ranking.metrics import retrieval_metrics, text_to_image_ranks

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

W2VV_LOSSES = ("cosine", "mse", "infonce")
DUAL_LOSSES = ("infonce", "vse++", "infonce+vse++")
# Rows embedded per call at evaluation time (bounds memory on the held-out slice).
_EMBED_CHUNK = 4096
# Masked logits: large and finite, so a row whose every entry is masked yields no NaN.
_MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class TrainingSchedule:
    """What both trainers share: optimisation, early stopping and the seed.

    ``heldout_fraction`` of the training images (with all their captions) is held out to pick
    the best epoch by text-to-image R@5; 0 trains every epoch and keeps the last.
    ``max_seconds`` stops after the epoch that crosses it (None: no time limit).
    """

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    heldout_fraction: float = 0.05
    patience: int = 5
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ValueError("epochs and patience must be >= 1 and batch_size >= 2")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be positive and weight_decay non-negative")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class W2VVConfig(TrainingSchedule):
    """Word2VisualVec: ``text_dim -> hidden_units (activation, dropout) -> image_dim``.

    ``loss`` is ``"cosine"`` or ``"mse"`` regression onto the unit image embedding (the
    original W2VV), or ``"infonce"``: the predicted vector must pick its own image embedding out
    of the batch at a fixed ``temperature`` (W2VV++, Li et al. 2019, swapped regression for a
    ranking loss because regression to the mean image collapses predictions onto a few "hub"
    images). The image side stays the identity either way, so the image index serves the
    model's text queries as it is.
    ``input_dropout`` drops text-feature entries during training (a regulariser for wide sparse
    features such as TF-IDF, where the first layer otherwise memorises captions).
    """

    hidden_units: tuple[int, ...] = (2048,)
    activation: str = "relu"
    dropout: float = 0.5
    input_dropout: float = 0.0
    loss: str = "infonce"
    temperature: float = 0.05
    # The best of a small sweep on Flickr8k train (MiniLM text, MobileNetV2 images).
    learning_rate: float = 5e-4
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in W2VV_LOSSES:
            raise ValueError(f"unknown w2vv loss {self.loss!r}; known: {W2VV_LOSSES}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        _check_tower(self.hidden_units, self.activation, self.dropout, self.input_dropout)


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig(TrainingSchedule):
    """Two towers into a ``dim``-d space; empty ``*_hidden_units`` makes a tower linear.

    ``loss`` is ``"infonce"`` (symmetric, temperature learnt from ``temperature`` and clipped at
    ``min_temperature``), ``"vse++"`` (max-violation hinge with ``margin``) or their sum.
    ``text_input_dropout`` drops text-feature entries during training (see ``W2VVConfig``).
    """

    dim: int = 256
    # Linear towers by default: in a sweep on Flickr8k train, 1-hidden-layer towers overfit
    # within two epochs and did no better on dev than linear ones.
    text_hidden_units: tuple[int, ...] = ()
    image_hidden_units: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.2
    text_input_dropout: float = 0.0
    loss: str = "infonce"
    temperature: float = 0.07
    learn_temperature: bool = True
    min_temperature: float = 0.01
    margin: float = 0.2
    batch_size: int = 512
    learning_rate: float = 3e-4
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in DUAL_LOSSES:
            raise ValueError(f"unknown dual-encoder loss {self.loss!r}; known: {DUAL_LOSSES}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if not 0 < self.min_temperature <= self.temperature:
            raise ValueError("need 0 < min_temperature <= temperature")
        _check_tower(self.text_hidden_units, self.activation, self.dropout, self.text_input_dropout)
        _check_tower(self.image_hidden_units, self.activation, self.dropout)


def _check_tower(
    hidden_units: tuple[int, ...], activation: str, dropout: float, input_dropout: float = 0.0
) -> None:
    if any(units < 1 for units in hidden_units):
        raise ValueError(f"hidden units must be positive, got {hidden_units}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    for rate in (dropout, input_dropout):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rates must be in [0, 1), got {rate}")


@dataclasses.dataclass
class TrainingHistory:
    """Per-epoch figures (``loss``, held-out ``R@k``/``MRR``/``median_rank``, ``seconds``, and
    ``temperature`` for the dual encoder), the epoch kept, and the data sizes."""

    epochs: list[dict[str, float]]
    best_epoch: int
    best_heldout: dict[str, float]
    train_pairs: int
    heldout_pairs: int
    heldout_images: int
    seconds: float
    stopped_early: bool
    device: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class TrainedJointModel:
    """The Keras towers a trainer produced; ``to_joint_model`` exports the NumPy model to save.

    ``image_tower`` is None for ``w2vv`` (identity). The towers end before the L2 normalisation,
    which ``embed_*`` apply (and ``JointModel`` applies identically).
    """

    kind: str
    config: W2VVConfig | DualEncoderConfig
    text_dim: int
    image_dim: int
    text_tower: keras.Model
    image_tower: keras.Model | None
    logit_scale: float = 1.0

    def embed_text_features(self, text_feats: np.ndarray) -> np.ndarray:
        """``(N, text_dim)`` -> ``(N, dim)`` unit vectors, run through Keras."""
        return _embed(self.text_tower, text_feats)

    def embed_image_features(self, image_feats: np.ndarray) -> np.ndarray:
        """``(N, image_dim)`` -> ``(N, dim)`` unit vectors, run through Keras."""
        if self.image_tower is None:
            return l2_normalize(image_feats)
        return _embed(self.image_tower, image_feats)

    def to_joint_model(self, text_encoder_id: str, image_encoder_id: str) -> JointModel:
        """The same model as plain NumPy layers, naming the encoders its inputs come from."""
        return JointModel(
            kind=self.kind,
            text_encoder_id=text_encoder_id,
            image_encoder_id=image_encoder_id,
            text_dim=self.text_dim,
            image_dim=self.image_dim,
            text_layers=_export_tower(self.text_tower),
            image_layers=_export_tower(self.image_tower) if self.image_tower is not None else (),
            logit_scale=self.logit_scale,
        )


def _mean_output_norm(tower: keras.Model, feats: np.ndarray) -> float:
    """The mean length of ``tower``'s raw (unnormalised) outputs on ``feats``."""
    feats = np.asarray(feats, dtype=np.float32)
    norms = [
        np.linalg.norm(
            np.asarray(tower(feats[start : start + _EMBED_CHUNK], training=False)), axis=1
        )
        for start in range(0, len(feats), _EMBED_CHUNK)
    ]
    return float(np.mean(np.concatenate(norms)))


def export_ensemble(
    members: list[TrainedJointModel],
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    text_encoder_id: str,
    image_encoder_id: str,
) -> JointModel:
    """Several trained models of one kind (e.g. seeds) as one ``JointModel`` to save.

    Each member's towers are scaled by one over their mean output length on the training
    features, so every member weighs alike in the merged vectors (see
    ``encoders.joint.ensemble_joint_models``): the losses only constrain directions, and two
    seeds can end with very different raw lengths.
    """
    exported = [m.to_joint_model(text_encoder_id, image_encoder_id) for m in members]
    if len(members) == 1:
        return exported[0]
    text_scales = [1.0 / _mean_output_norm(m.text_tower, text_feats) for m in members]
    image_scales = [
        1.0 / _mean_output_norm(m.image_tower, image_feats) if m.image_tower is not None else 1.0
        for m in members
    ]
    return ensemble_joint_models(exported, text_scales, image_scales)


def _embed(tower: keras.Model, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float32)
    chunks = [
        np.asarray(tower(feats[start : start + _EMBED_CHUNK], training=False))
        for start in range(0, len(feats), _EMBED_CHUNK)
    ]
    out = np.concatenate(chunks) if chunks else np.zeros((0, tower.output_shape[-1]), np.float32)
    return l2_normalize(out)


def _export_tower(tower: keras.Model) -> tuple[DenseLayer, ...]:
    """The Dense layers of a tower as NumPy layers (Dropout is the identity at inference)."""
    import keras

    layers = []
    for layer in tower.layers:
        if isinstance(layer, keras.layers.Dropout):
            continue
        if not isinstance(layer, keras.layers.Dense):
            raise TypeError(f"cannot export layer {layer.name} of type {type(layer).__name__}")
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        layers.append(DenseLayer(kernel, bias, keras.activations.serialize(layer.activation)))
    return tuple(layers)


def _build_tower(
    name: str,
    input_dim: int,
    hidden_units: tuple[int, ...],
    output_units: int,
    activation: str,
    dropout: float,
    seed: int,
    input_dropout: float = 0.0,
) -> keras.Model:
    """Dense(+activation, +dropout) per hidden width, then a linear Dense to ``output_units``.

    Only Dense and Dropout, so ``_export_tower`` maps it one to one onto ``DenseLayer``s. A
    fine-tuned backbone would be prepended here (pixels -> pooled features -> these layers).
    """
    import keras

    layers: list[Any] = [keras.Input((input_dim,), name=f"{name}_features")]
    if input_dropout:
        layers.append(
            keras.layers.Dropout(input_dropout, seed=seed + 999, name=f"{name}_input_dropout")
        )
    for position, units in enumerate(hidden_units):
        layers.append(
            keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * position),
                name=f"{name}_dense_{position}",
            )
        )
        if dropout:
            layers.append(
                keras.layers.Dropout(
                    dropout, seed=seed + 2 * position + 1, name=f"{name}_dropout_{position}"
                )
            )
    layers.append(
        keras.layers.Dense(
            output_units,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1000),
            name=f"{name}_out",
        )
    )
    return keras.Sequential(layers, name=name)


def _check_inputs(
    text_feats: np.ndarray, image_feats: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    text_feats = np.ascontiguousarray(text_feats, dtype=np.float32)
    image_feats = np.ascontiguousarray(image_feats, dtype=np.float32)
    pairs = np.asarray(pairs, dtype=np.int64)
    for name, feats in (("text_feats", text_feats), ("image_feats", image_feats)):
        if feats.ndim != 2 or len(feats) == 0:
            raise ValueError(f"{name} must be a non-empty (rows, dim) matrix, got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise ValueError(
            f"pairs must be a non-empty (P, 2) [text_row, image_row] array, got {pairs.shape}"
        )
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(text_feats):
        raise ValueError(f"pairs name text rows outside [0, {len(text_feats)})")
    if pairs[:, 1].min() < 0 or pairs[:, 1].max() >= len(image_feats):
        raise ValueError(f"pairs name image rows outside [0, {len(image_feats)})")
    empty = int((np.abs(text_feats[np.unique(pairs[:, 0])]).sum(axis=1) == 0).sum())
    if empty:
        # Text encoders return zero rows for texts with no known token; they teach nothing.
        logger.warning("%d paired caption(s) have all-zero text features", empty)
    return text_feats, image_feats, pairs


def split_heldout(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pairs`` by image: a seeded ``fraction`` of the images, with all their captions,
    goes to the held-out part -> ``(train_pairs, heldout_pairs)``."""
    images = np.unique(pairs[:, 1])
    count = round(fraction * len(images))
    if fraction > 0 and count == 0:
        count = 1
    if count >= len(images):
        raise ValueError(f"holding out {count} of {len(images)} images leaves none to train on")
    rng = np.random.default_rng([seed, 1])
    heldout_images = rng.choice(images, size=count, replace=False)
    held = np.isin(pairs[:, 1], heldout_images)
    return pairs[~held], pairs[held]


def epoch_order(image_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of pair positions in which each image's captions lie far apart.

    Round ``r`` takes the ``r``-th (shuffled) caption of every image, in a shuffled image order;
    the rounds are concatenated. A batch therefore holds one caption per image except where it
    straddles two rounds, which the loss masks.
    """
    order = rng.permutation(len(image_rows))
    # Stable sort by image after the shuffle: each image's captions in random order, contiguous.
    by_image = order[np.argsort(image_rows[order], kind="stable")]
    sorted_images = image_rows[by_image]
    starts = np.flatnonzero(np.r_[True, sorted_images[1:] != sorted_images[:-1]])
    counts = np.diff(np.r_[starts, len(by_image)])
    round_of = np.arange(len(by_image)) - np.repeat(starts, counts)
    image_rank = np.empty(len(starts), dtype=np.int64)
    image_rank[rng.permutation(len(starts))] = np.arange(len(starts))
    rank_of = np.repeat(image_rank, counts)
    return by_image[np.lexsort((rank_of, round_of))]


@functools.cache
def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


def _heldout_metrics(
    model: TrainedJointModel, text_feats: np.ndarray, image_feats: np.ndarray, pairs: np.ndarray
) -> dict[str, float]:
    """Text-to-image retrieval among the held-out images only."""
    images, query_image_index = np.unique(pairs[:, 1], return_inverse=True)
    ranks = text_to_image_ranks(
        model.embed_text_features(text_feats[pairs[:, 0]]),
        model.embed_image_features(image_feats[images]),
        query_image_index,
    )
    return retrieval_metrics(ranks)


def _better(candidate: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    return (candidate["R@5"], candidate["MRR"]) > (best["R@5"], best["MRR"])


def _fit(
    model: TrainedJointModel,
    loss_fn: Any,
    extra_variables: list[Any],
    text_feats: np.ndarray,
    image_feats: np.ndarray,
    pairs: np.ndarray,
    schedule: TrainingSchedule,
    after_step: Any = None,
    temperature: Any = None,
) -> TrainingHistory:
    """The loop both trainers share: seeded batches, AdamW, held-out early stopping.

    ``loss_fn(text_batch, image_batch, image_rows, training) -> scalar`` computes the loss from
    feature batches; ``after_step`` (e.g. clipping the temperature) runs after each update;
    ``temperature()``, when given, is recorded each epoch.
    """
    import keras
    import tensorflow as tf

    started = time.monotonic()
    train_pairs, heldout_pairs = split_heldout(pairs, schedule.heldout_fraction, schedule.seed)
    towers = [t for t in (model.text_tower, model.image_tower) if t is not None]
    variables = [v for tower in towers for v in tower.trainable_variables] + extra_variables
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule.learning_rate, weight_decay=schedule.weight_decay
    )
    # Decay kernels only: shrinking biases or the temperature is no regulariser.
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in variables if len(v.shape) < 2] + extra_variables
    )
    optimizer.build(variables)

    all_text = tf.constant(text_feats)
    all_image = tf.constant(image_feats)
    index_spec = tf.TensorSpec([None], tf.int64)

    @tf.function(input_signature=[index_spec, index_spec])
    def train_step(text_rows: tf.Tensor, image_rows: tf.Tensor) -> tf.Tensor:
        text_batch = tf.gather(all_text, text_rows)
        image_batch = tf.gather(all_image, image_rows)
        with tf.GradientTape() as tape:
            loss = loss_fn(text_batch, image_batch, image_rows, True)
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        if after_step is not None:
            after_step()
        return loss

    rng = np.random.default_rng([schedule.seed, 2])
    history: list[dict[str, float]] = []
    best: dict[str, float] | None = None
    best_epoch, best_weights, stale, stopped_early = 0, None, 0, False
    logger.info(
        "training %s on %s: %d pairs (%d held out for early stopping), %d epochs max",
        model.kind,
        _device(),
        len(train_pairs),
        len(heldout_pairs),
        schedule.epochs,
    )
    for epoch in range(1, schedule.epochs + 1):
        epoch_started = time.monotonic()
        order = train_pairs[epoch_order(train_pairs[:, 1], rng)]
        losses = []
        for start in range(0, len(order), schedule.batch_size):
            batch = order[start : start + schedule.batch_size]
            if len(batch) < 2:
                continue  # a contrastive batch of one has no negatives
            # Kept as tensors: converting each one would wait for the device after every step.
            losses.append(train_step(batch[:, 0], batch[:, 1]))
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": float(np.mean([float(loss) for loss in losses])),
            "seconds": time.monotonic() - epoch_started,
        }
        if temperature is not None:
            record["temperature"] = temperature()
        if len(heldout_pairs):
            metrics = _heldout_metrics(model, text_feats, image_feats, heldout_pairs)
            record.update({k: v for k, v in metrics.items() if k != "queries"})
        history.append(record)
        logger.info("epoch %s", {k: round(v, 4) for k, v in record.items()})

        if len(heldout_pairs) == 0 or _better(record, best):
            best, best_epoch, stale = record, epoch, 0
            best_weights = [v.numpy().copy() for v in variables]
        else:
            stale += 1
            if stale >= schedule.patience:
                stopped_early = True
                break
        if schedule.max_seconds is not None and time.monotonic() - started > schedule.max_seconds:
            logger.info(
                "stopping after epoch %d: max_seconds %.0f reached", epoch, schedule.max_seconds
            )
            stopped_early = True
            break

    if best is None or best_weights is None:
        raise RuntimeError("no epoch completed")  # unreachable: epochs >= 1 is validated
    for variable, value in zip(variables, best_weights, strict=True):
        variable.assign(value)
    return TrainingHistory(
        epochs=history,
        best_epoch=best_epoch,
        best_heldout={k: v for k, v in best.items() if k not in ("epoch", "loss", "seconds")},
        train_pairs=len(train_pairs),
        heldout_pairs=len(heldout_pairs),
        heldout_images=len(np.unique(heldout_pairs[:, 1])),
        seconds=time.monotonic() - started,
        stopped_early=stopped_early,
        device=_device(),
    )


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


def contrastive_losses(
    text_emb: Any,
    image_emb: Any,
    image_rows: Any,
    logit_scale: Any,
    loss: str = "infonce",
    margin: float = 0.2,
) -> Any:
    """A contrastive loss (one of ``DUAL_LOSSES``) on a batch of unit embeddings (TF tensors).

    Entry ``(i, j)`` of the similarity matrix pairs caption ``i`` with image ``j``; the diagonal
    holds the positives. Off-diagonal entries whose image is the same as the row's own (two
    captions of one image in a batch) are masked out of both directions instead of counting as
    negatives.
    """
    import tensorflow as tf

    similarity = tf.matmul(text_emb, image_emb, transpose_b=True)
    size = tf.shape(similarity)[0]
    diagonal = tf.eye(size, dtype=tf.bool)
    same_image = tf.equal(image_rows[:, None], image_rows[None, :])
    false_negative = tf.logical_and(same_image, tf.logical_not(diagonal))
    labels = tf.range(size)
    total = tf.constant(0.0)
    if loss not in DUAL_LOSSES:
        raise ValueError(f"unknown contrastive loss {loss!r}; known: {DUAL_LOSSES}")
    if "infonce" in loss:
        logits = tf.where(false_negative, _MASKED_LOGIT, similarity * logit_scale)
        text_to_image = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        image_to_text = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits))
        total += tf.reduce_mean(text_to_image + image_to_text) / 2.0
    if "vse++" in loss:
        positive = tf.linalg.diag_part(similarity)
        not_negative = tf.logical_or(same_image, diagonal)
        # VSE++ max violation: only the hardest negative of each caption and of each image.
        cost_text = tf.where(not_negative, 0.0, tf.nn.relu(margin + similarity - positive[:, None]))
        cost_image = tf.where(
            not_negative, 0.0, tf.nn.relu(margin + similarity - positive[None, :])
        )
        total += tf.reduce_mean(
            tf.reduce_max(cost_text, axis=1) + tf.reduce_max(cost_image, axis=0)
        )
    return total


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
