"""Reference losses (numpy only): the convention both backends are held to."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in the input's float dtype (integers become float64)."""
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    # Subtracting the row max keeps exp() from overflowing; the result is unchanged mathematically.
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _check_batch(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},), got shape {labels.shape}")
    if logits.shape[0] == 0:
        raise ValueError("empty batch")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0) -> float:
    """Mean cross-entropy over the batch, as torch.nn.functional.cross_entropy(label_smoothing=...)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    _check_batch(x, y)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    nll = -log_softmax(x)
    picked = nll[np.arange(x.shape[0]), y]
    # torch mixes the one-hot target with the uniform distribution over all K classes (true class included).
    per_sample = (1.0 - label_smoothing) * picked + label_smoothing * nll.mean(axis=1)
    return float(per_sample.mean())
