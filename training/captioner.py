"""Training and scoring the captioner: teacher forcing, a time budget, BLEU and CIDEr.

``train_captioner`` feeds (spatial map, caption) pairs in random order, the next word as the
target and ``<pad>`` positions ignored by the loss. ``caption_metrics`` scores generated
captions against the human ones with the COCO caption evaluation code (``pycocoevalcap``:
BLEU-1..4 of Papineni et al. and CIDEr-D of Vedantam et al.), on the project tokenizer's words.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from encoders.captioner import Captioner
from encoders.text_tokenize import tokenize_words
from training.progress import Progress

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CaptionerTraining:
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_seconds: float | None = None  # stop after the batch that crosses it
    seed: int = 0


def train_captioner(
    captioner: Captioner,
    spatial: np.ndarray,
    caption_image: np.ndarray,
    captions: Sequence[str],
    training: CaptionerTraining,
) -> list[dict[str, Any]]:
    """Fit ``captioner`` on ``captions[i]`` describing ``spatial[caption_image[i]]``.

    ``spatial`` may be a float16 memory map (read a batch at a time). -> per-epoch history
    (mean loss, seconds); stops early at ``max_seconds``.
    """
    import keras
    import tensorflow as tf

    if len(caption_image) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(caption_image)} image indices")
    tokens = captioner.vocabulary.encode(captions, captioner.config.max_len)
    # Batches are cut to their longest caption: most Flickr8k captions are ~12 words.
    lengths = (tokens != 0).sum(axis=1)
    model = captioner.model
    optimizer = keras.optimizers.Adam(training.learning_rate, clipnorm=5.0)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)

    @tf.function(reduce_retracing=True)
    def step(features, inputs, targets):
        with tf.GradientTape() as tape:
            logits = model((features, inputs), training=True)
            loss = loss_fn(targets, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(training.seed)
    started = time.perf_counter()
    history = []
    for epoch in range(training.epochs):
        order = rng.permutation(len(captions))
        losses = []
        epoch_start = time.perf_counter()
        batches = Progress(
            range(0, len(order), training.batch_size),
            desc=f"captioner epoch {epoch + 1}/{training.epochs}", unit="batch", leave=False,
        )  # fmt: skip
        for start in batches:
            batch = np.sort(order[start : start + training.batch_size])
            width = int(lengths[batch].max())
            features = np.asarray(spatial[caption_image[batch]], dtype=np.float32)
            rows = tokens[batch, :width]
            losses.append(float(step(features, rows[:, :-1], rows[:, 1:])))
            batches.set_postfix(f"loss {losses[-1]:.3f}")
            if training.max_seconds and time.perf_counter() - started > training.max_seconds:
                break
        history.append(
            {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "batches": len(losses),
             "seconds": round(time.perf_counter() - epoch_start, 1)}
        )  # fmt: skip
        logger.info("captioner epoch %s", history[-1])
        if training.max_seconds and time.perf_counter() - started > training.max_seconds:
            logger.info("captioner: time budget of %.0f s reached", training.max_seconds)
            break
    return history


class MeteorUnavailable(RuntimeError):
    """METEOR could not be computed here (it runs pycocoevalcap's Java program)."""


def meteor_score(generated: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """METEOR 1.5 (pycocoevalcap's jar, English, normalised) of ``generated[i]`` against
    ``references[i]``; ``MeteorUnavailable`` saying what to install when Java is missing."""
    import shutil

    if len(generated) != len(references) or not generated:
        raise ValueError(f"{len(generated)} captions for {len(references)} reference sets")
    if shutil.which("java") is None:
        raise MeteorUnavailable(
            "METEOR needs a Java runtime and none is on PATH: `make java` installs Debian's "
            "default-jre-headless"
        )
    from pycocoevalcap.meteor.meteor import Meteor

    res = {i: [_words([text])[0]] for i, text in enumerate(generated)}
    gts = {i: _words(refs) for i, refs in enumerate(references)}
    try:
        meteor = Meteor()
        try:
            score, _ = meteor.compute_score(gts, res)
        finally:
            del meteor  # its __del__ ends the Java process
    except (OSError, ValueError) as exc:  # the jar failed to start, or died mid-way
        raise MeteorUnavailable(f"METEOR's Java program failed: {exc!r}") from exc
    return float(score)


def _words(texts: Sequence[str]) -> list[str]:
    """Each text as its lower-case words joined by spaces (the project's tokenizer)."""
    return [" ".join(tokens) for tokens in tokenize_words(list(texts))]


def caption_metrics(
    generated: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4 and CIDEr(-D) of ``generated[i]`` against ``references[i]`` (pycocoevalcap)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if len(generated) != len(references) or not generated:
        raise ValueError(f"{len(generated)} captions for {len(references)} reference sets")

    res = {i: _words([text]) for i, text in enumerate(generated)}
    gts = {i: _words(refs) for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)}, "CIDEr": float(cider)}
