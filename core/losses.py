"""Reference losses (numpy only): the convention both backends are held to."""

from __future__ import annotations

import numpy as np

from dualkit.core.transformer import IGNORE_INDEX


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


TD_LOSSES = ("huber", "mse")


def td_targets(
    rewards: np.ndarray,
    terminated: np.ndarray,
    next_q_target: np.ndarray,
    gamma: float,
    next_q_online: np.ndarray | None = None,
) -> np.ndarray:
    """``r + gamma * (1 - terminated) * V(s')`` in float64, shape (B,).

    V(s') is max_a Q_target(s', a), or with ``next_q_online`` (double DQN) Q_target(s', argmax_a
    Q_online(s', a)). Only ``terminated`` stops the bootstrap: a transition cut by a time limit
    (truncated) is stored with terminated = 0 and bootstraps like any other.
    """
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    done = np.asarray(terminated, dtype=np.float64).reshape(-1)
    nq = np.asarray(next_q_target, dtype=np.float64)
    if nq.ndim != 2 or nq.shape[0] != r.shape[0] or done.shape != r.shape:
        raise ValueError(f"next_q_target must be (B, A) with B = len(rewards) = len(terminated), got {nq.shape}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if next_q_online is None:
        v = nq.max(axis=1)
    else:
        a = np.argmax(np.asarray(next_q_online), axis=1)
        v = nq[np.arange(len(a)), a]
    return r + gamma * (1.0 - done) * v


def td_loss(
    q: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminated: np.ndarray,
    next_q_target: np.ndarray,
    next_q_online: np.ndarray | None = None,
    *,
    gamma: float,
    kind: str = "huber",
) -> float:
    """Mean TD loss over the batch: Huber (delta 1, = torch smooth_l1) or squared error of
    Q(s, a) - target, the target held constant (see td_targets)."""
    if kind not in TD_LOSSES:
        raise ValueError(f"kind must be one of {TD_LOSSES}, got {kind!r}")
    qv = np.asarray(q, dtype=np.float64)
    a = np.asarray(actions).astype(np.int64).reshape(-1)
    if qv.ndim != 2 or a.shape != (qv.shape[0],) or qv.shape[0] == 0:
        raise ValueError(f"q must be (B, A) with B > 0 and actions (B,), got {qv.shape} and {a.shape}")
    if a.min() < 0 or a.max() >= qv.shape[1]:
        raise ValueError(f"actions must lie in [0, {qv.shape[1]})")
    d = qv[np.arange(len(a)), a] - td_targets(rewards, terminated, next_q_target, gamma, next_q_online)
    if kind == "mse":
        return float(np.mean(d * d))
    ad = np.abs(d)
    return float(np.mean(np.where(ad < 1.0, 0.5 * d * d, ad - 0.5)))


def masked_mse(
    pred: np.ndarray, images: np.ndarray, mask: np.ndarray, patch_size: int, norm_pix: bool = False, eps: float = 1e-6
) -> float:
    """Masked-image-modelling loss: mean squared error on masked patches only (MAE's).

    ``pred`` and ``images`` are (N, H, W, C); ``mask`` is (N, H/p, W/p), true (or 1) where a patch was
    hidden. Per patch, the squared error is averaged over its p*p*C values; the loss is the mean of
    that over masked patches. With ``norm_pix`` the targets are each patch's pixels normalised by the
    patch's own mean and unbiased variance, (x - mean) / sqrt(var + eps).
    """
    from dualkit.core.masking import normalized_targets, patchify

    x = np.asarray(images, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if p.shape != x.shape or x.ndim != 4:
        raise ValueError(f"pred and images must both be (N, H, W, C), got {p.shape} and {x.shape}")
    m = np.asarray(mask, dtype=np.float64).reshape(x.shape[0], -1)
    target = normalized_targets(x, patch_size, eps) if norm_pix else patchify(x, patch_size)
    if m.shape != target.shape[:2]:
        raise ValueError(f"mask must be (N, H/{patch_size}, W/{patch_size}), got {np.shape(mask)}")
    if m.sum() <= 0:
        raise ValueError("the mask hides no patch: the masked loss is undefined")
    per_patch = ((patchify(p, patch_size) - target) ** 2).mean(axis=-1)
    return float((per_patch * m).sum() / m.sum())


def masked_cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean softmax cross-entropy over the positions whose label is not ``ignore_index`` (token tasks).

    ``logits`` is (..., C) and ``labels`` (...) of the same leading shape. The denominator is the number of
    labelled positions; with none (e.g. an MLM batch where nothing was chosen) the loss is 0.0, which both
    backends return too (PyTorch's mean reduction would give 0/0 = NaN). Computed in float64."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if x.ndim < 1 or y.shape != x.shape[:-1]:
        raise ValueError(f"logits must be (..., C) and labels their leading shape, got {x.shape} and {y.shape}")
    x = x.reshape(-1, x.shape[-1])
    y = y.reshape(-1)
    keep = y != ignore_index
    if not keep.any():
        return 0.0
    y = y[keep]
    if y.min() < 0 or y.max() >= x.shape[1]:
        raise ValueError(f"labels must lie in [0, {x.shape[1]}) or equal ignore_index={ignore_index}")
    return float(-log_softmax(x[keep])[np.arange(y.size), y].mean())
