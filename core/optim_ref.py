"""One optimizer step in numpy (float64), with PyTorch's exact semantics: the convention both backends follow.

State is a flat dict of named arrays: "step" (0-d float64, steps taken) and, per parameter,
``momentum.<name>`` (sgd with momentum > 0), ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` (adam, adamw).
"""

from __future__ import annotations

import math

import numpy as np

from dualkit.core.errors import SpecError
from dualkit.core.specs import OptimSpec

_KINDS = ("sgd", "adam", "adamw")


def _slots(spec: OptimSpec) -> tuple[str, ...]:
    if spec.name not in _KINDS:
        raise SpecError(f"optim.name={spec.name!r} is not one of: {', '.join(_KINDS)}")
    if spec.name == "sgd":
        return ("momentum",) if spec.momentum > 0 else ()
    return ("exp_avg", "exp_avg_sq")


def decays(spec: OptimSpec, shape: tuple[int, ...]) -> bool:
    """Whether weight decay applies to a parameter of this shape (OptimSpec.decay_1d)."""
    return spec.weight_decay > 0 and (spec.decay_1d or len(shape) > 1)


def state_names(spec: OptimSpec, param_names: list[str]) -> list[str]:
    """Canonical state names: "step", then each parameter's slots in the order of ``param_names``."""
    slots = _slots(spec)
    return ["step"] + [f"{slot}.{name}" for name in param_names for slot in slots]


def init_state(spec: OptimSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fresh state: step 0 and zero slots shaped (and typed) like their parameter."""
    state: dict[str, np.ndarray] = {"step": np.zeros((), dtype=np.float64)}
    for name in state_names(spec, list(params))[1:]:
        p = np.asarray(params[name.split(".", 1)[1]])
        state[name] = np.zeros(p.shape, dtype=p.dtype)
    return state


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """torch.nn.utils.clip_grad_norm_: scale all grads by min(1, max_norm / (total + 1e-6)); return the pre-clip
    total."""
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    g64 = {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}
    total = math.sqrt(sum(float(np.sum(g * g)) for g in g64.values()))
    # torch always multiplies by the clamped coef rather than branching; np.minimum (unlike min) keeps a NaN
    # norm as NaN, so non-finite gradients propagate exactly as in torch.
    coef = float(np.minimum(max_norm / (total + 1e-6), 1.0))
    clipped = {k: (g64[k] * coef).astype(np.asarray(grads[k]).dtype) for k in grads}
    return clipped, total


def step(
    spec: OptimSpec,
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
    lr: float,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One update with learning rate ``lr``; pure: returns (new_params, new_state), inputs untouched."""
    names = state_names(spec, list(params))
    if set(grads) != set(params):
        raise ValueError(f"grads and params name different tensors: {sorted(set(grads) ^ set(params))}")
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"optimizer state lacks {missing}")

    g64 = {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}
    if spec.clip_norm > 0:
        g64, _ = clip_by_global_norm(g64, spec.clip_norm)
    t = float(state["step"]) + 1.0
    new_state: dict[str, np.ndarray] = {"step": np.asarray(t, dtype=np.float64)}
    new_params: dict[str, np.ndarray] = {}

    for name, p_in in params.items():
        p = np.array(p_in, dtype=np.float64)  # a copy: the caller's arrays are never written
        g = g64[name]
        wd = spec.weight_decay if decays(spec, p.shape) else 0.0
        if spec.name == "sgd":
            if wd:
                g = g + wd * p
            if spec.momentum > 0:
                # Zero-initialised buffer: mu*0 + g equals torch's first-step clone of g.
                buf = spec.momentum * np.asarray(state[f"momentum.{name}"], dtype=np.float64) + g
                g = g + spec.momentum * buf if spec.nesterov else buf
                new_state[f"momentum.{name}"] = buf
            p = p - lr * g
        else:
            if spec.name == "adamw":
                p = p * (1.0 - lr * wd)  # decoupled decay, applied before the moment update
            elif wd:
                g = g + wd * p  # adam: plain L2 folded into the gradient
            b1, b2 = spec.beta1, spec.beta2
            m = b1 * np.asarray(state[f"exp_avg.{name}"], dtype=np.float64) + (1.0 - b1) * g
            v = b2 * np.asarray(state[f"exp_avg_sq.{name}"], dtype=np.float64) + (1.0 - b2) * g * g
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            # eps is added after the bias correction of sqrt(v), exactly as torch does (not to v itself).
            denom = np.sqrt(v) / math.sqrt(bc2) + spec.eps
            p = p - (lr / bc1) * (m / denom)
            new_state[f"exp_avg.{name}"] = m
            new_state[f"exp_avg_sq.{name}"] = v
        new_params[name] = p.astype(np.asarray(p_in).dtype)

    # Slots keep their parameter's dtype, as torch's state tensors do.
    for key in names[1:]:
        new_state[key] = new_state[key].astype(np.asarray(params[key.split(".", 1)[1]]).dtype)
    return new_params, new_state
