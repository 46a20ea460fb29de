"""Differentiable losses in TensorFlow, matching core.losses."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualkit.backends.tf.runtime import framework_device, to_tensor
from dualkit.core.transformer import IGNORE_INDEX


def softmax_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Mean cross-entropy; label smoothing as in PyTorch: (1 - s) * nll + s * mean_k(-log p_k)."""
    logp = tf.nn.log_softmax(logits)
    nll = -tf.gather(logp, labels, batch_dims=1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll + label_smoothing * -tf.reduce_mean(logp, axis=-1)
    return tf.reduce_mean(nll)


def td_targets(
    rewards: tf.Tensor,
    terminated: tf.Tensor,
    next_q_target: tf.Tensor,
    gamma: float,
    next_q_online: tf.Tensor | None = None,
) -> tf.Tensor:
    """``r + gamma * (1 - terminated) * V(s')``, (B,); double DQN when ``next_q_online`` is given."""
    if next_q_online is None:
        v = tf.reduce_max(next_q_target, axis=1)
    else:
        v = tf.gather(next_q_target, tf.argmax(next_q_online, axis=1), batch_dims=1)
    return rewards + tf.constant(gamma, rewards.dtype) * (1.0 - terminated) * v


def td_loss(
    q: tf.Tensor,
    actions: tf.Tensor,
    rewards: tf.Tensor,
    terminated: tf.Tensor,
    next_q_target: tf.Tensor,
    next_q_online: tf.Tensor | None = None,
    *,
    gamma: float,
    kind: str = "huber",
) -> tf.Tensor:
    """Mean Huber (delta 1) or squared TD error of Q(s, a); the target carries no gradient."""
    q_taken = tf.gather(q, tf.reshape(actions, [-1]), batch_dims=1)  # (B,), never (B, 1): no broadcasting
    d = q_taken - tf.stop_gradient(td_targets(rewards, terminated, next_q_target, gamma, next_q_online))
    if kind == "mse":
        return tf.reduce_mean(d * d)
    ad = tf.abs(d)
    return tf.reduce_mean(tf.where(ad < 1.0, 0.5 * d * d, ad - 0.5))  # torch smooth_l1_loss(beta=1)


def masked_mse(
    pred: tf.Tensor, images: tf.Tensor, mask: tf.Tensor, patch_size: int, norm_pix: bool = False, eps: float = 1e-6
) -> tf.Tensor:
    """Mean squared error on masked patches only (MAE's loss); pred and images (N, H, W, C), mask (N, H/p, W/p)
    true where hidden. With ``norm_pix`` each target patch is normalised by its own mean and unbiased variance."""
    _, h, w, c = images.shape
    p = patch_size

    def patches(t: tf.Tensor) -> tf.Tensor:
        t = tf.reshape(t, [-1, h // p, p, w // p, p, c])
        return tf.reshape(tf.transpose(t, [0, 1, 3, 2, 4, 5]), [-1, (h // p) * (w // p), p * p * c])

    target = patches(tf.stop_gradient(images))
    if norm_pix:
        d = p * p * c
        mean = tf.reduce_mean(target, axis=-1, keepdims=True)
        var = tf.reduce_sum(tf.square(target - mean), axis=-1, keepdims=True) / tf.constant(d - 1, target.dtype)
        target = (target - mean) / tf.sqrt(var + tf.constant(eps, target.dtype))
    per_patch = tf.reduce_mean(tf.square(patches(pred) - target), axis=-1)
    m = tf.reshape(tf.cast(mask, pred.dtype), tf.shape(per_patch))
    return tf.reduce_sum(per_patch * m) / tf.reduce_sum(m)


def masked_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = IGNORE_INDEX) -> tf.Tensor:
    """Mean cross-entropy over the positions whose label is not ``ignore_index``; logits (..., C), labels (...).
    With no labelled position it is 0 with zero gradients (a plain mean would be 0/0 = NaN)."""
    y = tf.reshape(labels, [-1])
    keep = tf.not_equal(y, ignore_index)
    logp = tf.nn.log_softmax(tf.reshape(logits, [-1, tf.shape(logits)[-1]]))
    nll = -tf.gather(logp, tf.where(keep, y, tf.zeros_like(y)), batch_dims=1)  # ignored rows gather class 0 ...
    total = tf.reduce_sum(tf.where(keep, nll, tf.zeros_like(nll)))  # ... and are dropped here, gradient too
    return total / tf.maximum(tf.reduce_sum(tf.cast(keep, logits.dtype)), tf.constant(1.0, logits.dtype))


def numpy_loss(name: str, *arrays: np.ndarray, device: str = "cpu", **kwargs) -> float:
    """Evaluate the loss ``name`` of this module on numpy inputs (for the loss parity level)."""
    with tf.device(framework_device(device)):
        tensors = [to_tensor(a, tf.int64 if a.dtype.kind in "iu" else None) for a in arrays]
        return float(globals()[name](*tensors, **kwargs).numpy())
