"""Differentiable losses in TensorFlow, matching core.losses."""

from __future__ import annotations

import tensorflow as tf


def softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean cross-entropy; label smoothing as in PyTorch: (1 - s) * nll + s * mean_k(-log p_k)."""
    logp = tf.nn.log_softmax(logits)
    nll = -tf.gather(logp, labels, batch_dims=1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * -tf.reduce_mean(logp, axis=-1)
    return tf.reduce_mean(nll)
