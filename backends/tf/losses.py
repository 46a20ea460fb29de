"""Differentiable losses in TensorFlow, matching core.losses."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tf.runtime import tf_device, to_tensor


def softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean cross-entropy; label smoothing as in PyTorch: (1 - s) * nll + s * mean_k(-log p_k)."""
    logp = tf.nn.log_softmax(logits)
    nll = -tf.gather(logp, labels, batch_dims=1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * -tf.reduce_mean(logp, axis=-1)
    return tf.reduce_mean(nll)


def numpy_loss(name: str, *arrays: np.ndarray, device: str = "cpu", **kwargs) -> float:
    """Evaluate the loss ``name`` of this module on numpy inputs (for the loss parity level)."""
    with tf.device(tf_device(device)):
        tensors = [to_tensor(a, tf.int64 if a.dtype.kind in "iu" else None) for a in arrays]
        return float(globals()[name](*tensors, **kwargs).numpy())
