"""The training loop both joint trainers share: seeded batches, AdamW, held-out early stopping.

``_fit`` takes a model's towers and a loss function and runs the epochs, keeping the weights of
the epoch with the best held-out text-to-image R@5; it returns a ``TrainingHistory``. Kept
apart from the two trainers (``training.joint``), which only build towers and losses and hand
them over.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np

from ranking.metrics import retrieval_metrics, text_to_image_ranks
from training.joint_batches import epoch_order, split_heldout
from training.joint_config import TrainingSchedule
from training.joint_model import TrainedJointModel
from training.progress import progress

logger = logging.getLogger(__name__)


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


def epoch_figures(record: dict[str, float]) -> str:
    """The figures a progress bar shows after an epoch: ``"loss 0.512, R@5 0.310"``."""
    shown = [f"loss {record['loss']:.3f}"]
    shown += [f"{key} {record[key]:.3f}" for key in ("R@1", "R@5") if key in record]
    return ", ".join(shown)


def _better(candidate: dict[str, float], best: dict[str, float] | None) -> bool:
    if best is None:
        return True
    return (candidate["R@5"], candidate["MRR"]) > (best["R@5"], best["MRR"])


class _BestEpoch:
    """Early stopping shared by both training loops: keeps the weights of the epoch with the
    best held-out figures (every epoch's when nothing is held out) and says when ``patience``
    epochs in a row did not beat it."""

    def __init__(self, variables: list[Any], patience: int, has_heldout: bool) -> None:
        self.variables, self.patience, self.has_heldout = variables, patience, has_heldout
        self.best: dict[str, float] | None = None
        self.epoch, self.stale = 0, 0
        self._weights: list[np.ndarray] | None = None

    def should_stop(self, record: dict[str, float]) -> bool:
        """Record ``record`` (its ``epoch`` and held-out figures) -> whether to stop now."""
        if not self.has_heldout or _better(record, self.best):
            self.best, self.epoch, self.stale = record, int(record["epoch"]), 0
            self._weights = [v.numpy().copy() for v in self.variables]
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self) -> dict[str, float]:
        """Put the best epoch's weights back -> its held-out figures."""
        if self.best is None or self._weights is None:
            raise RuntimeError("no epoch completed")  # unreachable: epochs >= 1 is validated
        for variable, value in zip(self.variables, self._weights, strict=True):
            variable.assign(value)
        return {k: v for k, v in self.best.items() if k not in ("epoch", "loss", "seconds")}


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
    best = _BestEpoch(variables, schedule.patience, len(heldout_pairs) > 0)
    stopped_early = False
    logger.info(
        "training %s on %s: %d pairs (%d held out for early stopping), %d epochs max",
        model.kind,
        _device(),
        len(train_pairs),
        len(heldout_pairs),
        schedule.epochs,
    )
    epochs = progress(range(1, schedule.epochs + 1), desc=f"training {model.kind}", unit="epoch")
    for epoch in epochs:
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
        epochs.set_postfix(epoch_figures(record))

        if best.should_stop(record):
            stopped_early = True
            break
        if schedule.max_seconds is not None and time.monotonic() - started > schedule.max_seconds:
            logger.info(
                "stopping after epoch %d: max_seconds %.0f reached", epoch, schedule.max_seconds
            )
            stopped_early = True
            break

    best_heldout = best.restore()
    return TrainingHistory(
        epochs=history,
        best_epoch=best.epoch,
        best_heldout=best_heldout,
        train_pairs=len(train_pairs),
        heldout_pairs=len(heldout_pairs),
        heldout_images=len(np.unique(heldout_pairs[:, 1])),
        seconds=time.monotonic() - started,
        stopped_early=stopped_early,
        device=_device(),
    )
