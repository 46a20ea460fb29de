"""Differentiable losses in PyTorch, matching core.losses."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualkit.backends.torch.runtime import framework_device, to_tensor
from dualkit.core.transformer import IGNORE_INDEX


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def td_targets(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    gamma: float,
    next_q_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """``r + gamma * (1 - terminated) * V(s')``, (B,); double DQN when ``next_q_online`` is given."""
    if next_q_online is None:
        v = next_q_target.max(dim=1).values
    else:
        v = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + gamma * (1.0 - terminated) * v


def td_loss(
    q: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    next_q_target: torch.Tensor,
    next_q_online: torch.Tensor | None = None,
    *,
    gamma: float,
    kind: str = "huber",
) -> torch.Tensor:
    """Mean Huber (delta 1) or squared TD error of Q(s, a); the target carries no gradient."""
    q_taken = q.gather(1, actions.reshape(-1, 1)).squeeze(1)  # (B,), never (B, 1): no broadcasting
    target = td_targets(rewards, terminated, next_q_target, gamma, next_q_online).detach()
    if kind == "mse":
        return F.mse_loss(q_taken, target)
    return F.smooth_l1_loss(q_taken, target, beta=1.0)


def masked_mse(
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean squared error on masked patches only (MAE's loss); pred and images (N, H, W, C), mask (N, H/p, W/p)
    true where hidden. With ``norm_pix`` each target patch is normalised by its own mean and unbiased variance."""
    n, h, w, c = images.shape
    p = patch_size

    def patches(t: torch.Tensor) -> torch.Tensor:
        return (
            t.reshape(n, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(n, (h // p) * (w // p), p * p * c)
        )

    target = patches(images.detach())
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE's
        target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((patches(pred) - target) ** 2).mean(dim=-1)
    m = mask.reshape(n, -1).to(pred.dtype)
    return (per_patch * m).sum() / m.sum()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not ``ignore_index``; logits (..., C), labels (...).
    With no labelled position it is 0 with zero gradients (a plain mean would be 0/0 = NaN)."""
    y = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y, ignore_index=ignore_index, reduction="sum")
    return total / (y != ignore_index).sum().clamp(min=1).to(logits.dtype)


def numpy_loss(name: str, *arrays: np.ndarray, device: str = "cpu", **kwargs) -> float:
    """Evaluate the loss ``name`` of this module on numpy inputs (for the loss parity level)."""
    dev = framework_device(device)
    tensors = [to_tensor(a, torch.long if a.dtype.kind in "iu" else None, dev) for a in arrays]
    return float(globals()[name](*tensors, **kwargs).item())
