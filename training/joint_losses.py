"""The contrastive losses of joint training (InfoNCE, VSE++ max violation) on TF tensors.

One function over a batch's unit embeddings, with the false negatives of a batch (two captions
of one image) masked; separate from the towers and the loop because it is plain math that the
tests check against a NumPy reference.
"""

from __future__ import annotations

from typing import Any

from training.joint_config import DUAL_LOSSES

# Masked logits: large and finite, so a row whose every entry is masked yields no NaN.
_MASKED_LOGIT = -1e9


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
