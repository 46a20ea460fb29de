"""Classification metrics (numpy only): used for real evaluation and as the parity oracle."""

from __future__ import annotations

import numpy as np

from dualkit.core.losses import softmax_cross_entropy


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if n == 0:
        raise ValueError("empty batch")
    return y


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction correct; accepts (N, K) logits (argmax, first index on ties) or (N,) predictions."""
    x = np.asarray(logits_or_preds)
    preds = np.argmax(x, axis=1) if x.ndim == 2 else x
    if preds.ndim != 1:
        raise ValueError(f"expected (N, K) logits or (N,) predictions, got shape {x.shape}")
    y = _labels(labels, preds.shape[0])
    return float(np.mean(preds.astype(np.int64) == y))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction whose true class is among the k highest scores (k clipped to K).

    A sample counts when fewer than k classes score strictly higher than the true class, so classes
    tied at the boundary all count as in the top k (the tf.math.in_top_k rule; deterministic, unlike topk).
    """
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = _labels(labels, x.shape[0])
    k = min(k, x.shape[1])
    true_score = x[np.arange(x.shape[0]), y][:, None]
    higher = np.sum(x > true_score, axis=1)
    return float(np.mean(higher < k))


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predicted ones."""
    p = np.asarray(preds).astype(np.int64)
    if p.ndim != 1:
        raise ValueError(f"preds must be (N,), got shape {p.shape}")
    y = _labels(labels, p.shape[0])
    for name, arr in (("preds", p), ("labels", y)):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def macro_f1(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN), over classes seen in labels or preds."""
    cm = confusion_matrix(preds, labels, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    # A class absent from both labels and preds has no defined F1; leaving it out matches sklearn's default.
    seen = denom > 0
    return float(np.mean(2 * tp[seen] / denom[seen]))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0
) -> dict[str, float]:
    """{"loss", "accuracy", "top5", "macro_f1"} for one set of (N, K) logits."""
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[1] != num_classes:
        raise ValueError(f"logits must be (N, {num_classes}), got shape {x.shape}")
    preds = np.argmax(x, axis=1)
    return {
        "loss": softmax_cross_entropy(x, labels, label_smoothing),
        "accuracy": accuracy(preds, labels),
        "top5": top_k_accuracy(x, labels, min(5, num_classes)),
        "macro_f1": macro_f1(preds, labels, num_classes),
    }
