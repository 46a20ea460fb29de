"""Learning-rate schedules, computed here per step and handed to the backend (no framework schedule is used)."""

from __future__ import annotations

import math

import numpy as np

from dualkit.core.errors import SpecError
from dualkit.core.specs import ScheduleSpec

_NAMES = ("constant", "step", "cosine", "linear")


def lr_at(spec: ScheduleSpec, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate for 0-based ``step``: linear warm-up, then constant, step decay, or cosine or linear
    decay to min_lr at ``total_steps``.

    "linear" is BERT's schedule (Hugging Face's ``get_linear_schedule_with_warmup``) with min_lr = 0: after
    the warm-up its values are HF's exactly, ``base * max(0, (total - step) / max(1, total - warmup))``.
    The warm-up differs by one step: HF's is ``step / warmup`` (its first step has lr 0), this module's
    ``(step + 1) / warmup``, the convention every schedule here shares."""
    if spec.name not in _NAMES:
        raise SpecError(f"schedule.name={spec.name!r} is not one of: {', '.join(_NAMES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    w = max(0, spec.warmup_steps)
    if step < w:
        # (step + 1) so the first step already trains and the last warm-up step reaches base_lr.
        return float(base_lr * (step + 1) / w)
    t = step - w
    if spec.name == "constant":
        return float(base_lr)
    if spec.name == "step":
        if spec.step_size < 1:
            raise SpecError("schedule.step_size must be >= 1")
        return float(base_lr * spec.gamma ** (t // spec.step_size))
    T = max(1, total_steps - w)
    if spec.name == "linear":  # HF's formula, so also its 0 after a warm-up that fills the whole run
        return float(spec.min_lr + (base_lr - spec.min_lr) * max(0.0, (total_steps - step) / T))
    t = min(t, T)  # past the planned end the cosine stays at its floor
    return float(spec.min_lr + (base_lr - spec.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / T)))


def lr_table(spec: ScheduleSpec, base_lr: float, total_steps: int) -> np.ndarray:
    """float64 array of lr_at(spec, base_lr, i, total_steps) for i in range(total_steps)."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if spec.name not in _NAMES:
        raise SpecError(f"schedule.name={spec.name!r} is not one of: {', '.join(_NAMES)}")
    return np.array([lr_at(spec, base_lr, i, total_steps) for i in range(total_steps)], dtype=np.float64)
