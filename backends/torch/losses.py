"""Differentiable losses in PyTorch, matching core.losses."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch.runtime import to_tensor, torch_device


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def numpy_loss(name: str, *arrays: np.ndarray, device: str = "cpu", **kwargs) -> float:
    """Evaluate the loss ``name`` of this module on numpy inputs (for the loss parity level)."""
    dev = torch_device(device)
    tensors = [to_tensor(a, dev, torch.long if a.dtype.kind in "iu" else None) for a in arrays]
    return float(globals()[name](*tensors, **kwargs).item())
