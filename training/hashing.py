"""Semantic hashing trainers: ITQ (the baseline) and a binary-bottleneck autoencoder.

Both read float embeddings ``(N, dim)`` and return an ``index.hamming.HashEncoder``:

- ``train_itq`` (Gong & Lazebnik 2011), pure NumPy: centre, PCA to ``bits`` dims, then
  alternate ``B = sign(V R)`` and the orthogonal Procrustes ``R`` minimising ``||B - V R||``.
- ``train_autoencoder`` (Salakhutdinov & Hinton's semantic hashing, Keras): an encoder with a
  linear path started at the ITQ projection plus a ReLU MLP branch started at zero, a binary
  bottleneck (``tanh`` forward-corrected to ``sign`` by a straight-through estimator: the
  decoder and the similarity loss see the exact bits, gradients flow through ``tanh``), and a
  ReLU decoder reconstructing the embedding. Loss: reconstruction plus a neighbour term, the KL
  from each row's softmax over its batch by centred cosine to the softmax by code agreement
  ``b_i . b_j / bits``, on batches of anchors with some of their true nearest neighbours:
  reconstruction alone keeps what rebuilds a vector, not what ranks its neighbours (on
  Flickr8k its codes fall far below ITQ within a few epochs). The epoch kept is the one with the
  best recall on selection queries, epoch 0 (the ITQ start) included, so it matches ITQ at
  worst on those queries.

``code_recall`` scores an encoder the way search uses it: Hamming top R, exact re-ranking, recall
of the exact float top k.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from index.hamming import HashEncoder, check_bits, hamming_search
from index.scann_index import exact_top_k
from ranking.recall import recall_per_query

logger = logging.getLogger(__name__)

METHODS = ("autoencoder", "itq")

NEIGHBOURS = 10  # a training batch's anchors bring some of their NEIGHBOURS nearest rows
NEIGHBOURS_PER_ANCHOR = 3


def _check_data(embeddings: np.ndarray, bits: int) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    check_bits(bits)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"embeddings must be a non-empty (N, dim) matrix, got {x.shape}")
    if bits > x.shape[1]:
        raise ValueError(f"{bits} bits need at least {bits}-d embeddings, these are {x.shape[1]}-d")
    if bits > len(x):
        raise ValueError(f"{bits} bits need at least {bits} rows to fit, got {len(x)}")
    return x


def pca_projection(embeddings: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (dim,), components (dim, bits))``: the top ``bits`` principal directions."""
    x = _check_data(embeddings, bits)
    mean = x.mean(axis=0)
    centred = (x - mean).astype(np.float64)
    # Eigenvectors of the dim x dim covariance: one GEMM, cheaper than an SVD of the table.
    variance, directions = np.linalg.eigh(centred.T @ centred / len(x))
    top = np.argsort(variance)[::-1][:bits]
    return mean.astype(np.float32), directions[:, top].astype(np.float32)


def quantization_error(projected: np.ndarray, rotation: np.ndarray | None = None) -> float:
    """``||sign(V R) - V R||_F^2 / N``: what ITQ minimises (``R = I``: PCA then sign)."""
    rotated = projected if rotation is None else projected @ rotation
    signs = np.where(rotated > 0, 1.0, -1.0)
    return float(np.sum((signs - rotated) ** 2) / len(projected))


def train_itq(
    embeddings: np.ndarray, bits: int, iterations: int = 50, seed: int = 0, encoder_id: str = ""
) -> tuple[HashEncoder, list[float]]:
    """ITQ codes for ``embeddings`` -> ``(encoder, quantisation error per iteration)``.

    The error list starts with the random rotation's and ends with the returned one's.
    """
    x = _check_data(embeddings, bits)
    mean, components = pca_projection(x, bits)
    projected = ((x - mean) @ components).astype(np.float64)
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
    errors = [quantization_error(projected, rotation)]
    for _ in range(iterations):
        codes = np.where(projected @ rotation > 0, 1.0, -1.0)
        # Orthogonal Procrustes: R maximising tr(B^T V R) is U W^T for V^T B = U S W^T.
        u, _, wt = np.linalg.svd(projected.T @ codes)
        rotation = u @ wt
        errors.append(quantization_error(projected, rotation))
    kernel = (components.astype(np.float64) @ rotation).astype(np.float32)
    bias = (-mean.astype(np.float64) @ kernel).astype(np.float32)
    return HashEncoder("itq", kernel, bias, encoder_id=encoder_id), errors


@dataclasses.dataclass(frozen=True)
class AutoencoderTraining:
    hidden: int = 256  # width of the encoder's MLP branch and of the decoder
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3  # the decoder's; the encoder moves at encoder_learning_rate
    # Faster encoders overfit a few thousand rows within epochs (recall on held-out queries
    # falls below the ITQ start on Flickr8k); 3e-5 keeps it near the start.
    encoder_learning_rate: float = 3e-5
    warmup_epochs: int = 1  # decoder only: a random decoder's gradients would wreck the start
    similarity_weight: float = 1.0
    reconstruction_weight: float = 0.1
    neighbour_temperature: float = 0.1  # pairs weighted by exp(cosine / T): neighbours count
    itq_iterations: int = 50
    rerank: int = 100  # R of the selection recall
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "batch_size", "itq_iterations", "rerank"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.epochs < 0 or self.learning_rate <= 0 or self.similarity_weight < 0:
            raise ValueError("epochs and similarity_weight must be >= 0, learning_rate > 0")


def code_recall(
    encoder: HashEncoder,
    database: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    r: int = 100,
    exact: np.ndarray | None = None,
) -> float:
    """Mean recall@k of Hamming top ``r`` + exact re-ranking against the exact float top k."""
    if exact is None:
        exact, _ = exact_top_k(database, queries, k)
    found, _ = hamming_search(
        encoder.encode(database), database, queries, encoder.encode(queries), k, r
    )
    return float(recall_per_query(found, exact).mean())


def _scaled_itq(itq: HashEncoder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ITQ's kernel and bias divided by each bit's spread: the same signs, z of unit scale, so
    ``tanh`` starts neither saturated nor linear."""
    spread = itq.project(x).std(axis=0) + 1e-6
    return itq.kernel / spread, itq.bias / spread


def train_autoencoder(
    embeddings: np.ndarray,
    bits: int,
    training: AutoencoderTraining,
    selection_queries: np.ndarray | None = None,
    encoder_id: str = "",
) -> tuple[HashEncoder, dict[str, Any]]:
    """Fit the binary-bottleneck autoencoder -> ``(encoder, history)``.

    With ``selection_queries``, the epoch whose codes reach the best recall@10 (Hamming top
    ``training.rerank`` re-ranked, over ``embeddings``) is returned; epoch 0 is the ITQ start.
    Without, the last epoch. Batches are built from every row's exact nearest neighbours (an
    N x N scan): fit on a sample of a large table.
    """
    import tensorflow as tf

    x = _check_data(embeddings, bits)
    itq, _ = train_itq(x, bits, training.itq_iterations, training.seed, encoder_id)
    kernel0, bias0 = _scaled_itq(itq, x)
    tf.keras.utils.set_random_seed(training.seed)
    dense = tf.keras.layers.Dense
    linear = dense(bits, name="linear")
    branch = tf.keras.Sequential([
        dense(training.hidden, activation="relu", name="branch_hidden"),
        dense(bits, kernel_initializer="zeros", name="branch_out"),
    ])  # fmt: skip
    decoder = tf.keras.Sequential([dense(training.hidden, activation="relu"), dense(x.shape[1])])
    linear.build((None, x.shape[1]))
    linear.set_weights([kernel0, bias0])
    branch.build((None, x.shape[1]))
    decoder.build((None, bits))
    mean = tf.constant(x.mean(axis=0))
    # Scale of code agreement in the student softmax, learnt with the encoder.
    code_scale = tf.Variable(1.0 / training.neighbour_temperature, name="code_scale")
    encoder_variables = [*linear.trainable_variables, *branch.trainable_variables, code_scale]
    decoder_variables = list(decoder.trainable_variables)
    encoder_optimizer = tf.keras.optimizers.Adam(training.encoder_learning_rate)
    decoder_optimizer = tf.keras.optimizers.Adam(training.learning_rate)

    def encoder_now() -> HashEncoder:
        (w1, b1), (w2, b2) = (layer.get_weights() for layer in branch.layers)
        k, b = linear.get_weights()
        return HashEncoder("autoencoder", k, b, ((w1, b1), (w2, b2)), encoder_id=encoder_id)

    @tf.function(reduce_retracing=True)
    def step(batch: tf.Tensor, train_encoder: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            z = linear(batch) + branch(batch)
            soft = tf.tanh(z)
            codes = soft + tf.stop_gradient(tf.sign(soft) - soft)  # straight-through
            reconstruction = decoder(codes)
            recon_loss = tf.reduce_mean(tf.reduce_sum((reconstruction - batch) ** 2, axis=1))
            centred = tf.math.l2_normalize(batch - mean, axis=1)
            target = tf.matmul(centred, centred, transpose_b=True)
            similar = tf.matmul(codes, codes, transpose_b=True) / bits
            # Each row's neighbour distribution by cosine, matched by the one by code agreement
            # (KL, the diagonal left out): what ranks candidates, not the absolute similarity.
            off_diagonal = -1e9 * tf.eye(tf.shape(batch)[0])
            teacher = tf.nn.softmax(target / training.neighbour_temperature + off_diagonal)
            student = tf.nn.log_softmax(similar * code_scale + off_diagonal)
            sim_loss = -tf.reduce_mean(tf.reduce_sum(teacher * student, axis=1))
            loss = training.reconstruction_weight * recon_loss + (
                training.similarity_weight * sim_loss
            )
        grads = tape.gradient(loss, [*encoder_variables, *decoder_variables])
        decoder_optimizer.apply_gradients(
            zip(grads[len(encoder_variables) :], decoder_variables, strict=True)
        )
        if train_encoder:
            encoder_optimizer.apply_gradients(
                zip(grads[: len(encoder_variables)], encoder_variables, strict=True)
            )
        return recon_loss, sim_loss

    exact = None
    if selection_queries is not None:
        exact, _ = exact_top_k(x, selection_queries, 10)

    def selection_recall(encoder: HashEncoder) -> float | None:
        if selection_queries is None:
            return None
        return code_recall(encoder, x, selection_queries, 10, training.rerank, exact)

    best = encoder_now()
    best_recall = selection_recall(best)
    history: dict[str, Any] = {
        "epochs": [{"epoch": 0, "selection_recall@10": best_recall}],
        "best_epoch": 0,
    }
    rng = np.random.default_rng(training.seed)
    # Batches of anchors each with some of its nearest neighbours: random batches hold almost
    # no true neighbours, and the neighbour ranking is what the codes must keep.
    neighbours, _ = exact_top_k(x, x, NEIGHBOURS + 1)
    anchors_per_batch = max(1, training.batch_size // (1 + NEIGHBOURS_PER_ANCHOR))
    started = time.perf_counter()
    for epoch in range(1, training.epochs + 1):
        order = rng.permutation(len(x))
        recon_sum = sim_sum = 0.0
        batches = 0
        for begin in range(0, len(x), anchors_per_batch):
            anchors = order[begin : begin + anchors_per_batch]
            picks = rng.integers(1, neighbours.shape[1], (len(anchors), NEIGHBOURS_PER_ANCHOR))
            rows = np.unique(np.concatenate([anchors, neighbours[anchors[:, None], picks].ravel()]))
            recon, sim = step(tf.constant(x[rows]), tf.constant(epoch > training.warmup_epochs))
            recon_sum += float(recon)
            sim_sum += float(sim)
            batches += 1
        current = encoder_now()
        recall = selection_recall(current)
        history["epochs"].append({
            "epoch": epoch, "reconstruction": round(recon_sum / batches, 5),
            "similarity": round(sim_sum / batches, 5), "selection_recall@10": recall,
        })  # fmt: skip
        logger.info("hashing autoencoder epoch %d: %s", epoch, history["epochs"][-1])
        if best_recall is None or (recall is not None and recall > best_recall):
            best, best_recall, history["best_epoch"] = current, recall, epoch
    history["seconds"] = round(time.perf_counter() - started, 1)
    return best, history
