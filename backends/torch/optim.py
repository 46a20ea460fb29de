"""Optimizers from core's OptimSpec on top of torch.optim (whose semantics core.optim_ref follows).

The learning rate of every step is handed in by the caller (core.schedules); state converts to and
from core's canonical names (see core.optim_ref.state_names).
"""

from __future__ import annotations

import numpy as np
import torch

from dualkit.backends.torch.runtime import Layout, framework_device, to_numpy, to_tensor
from dualkit.core.optim_ref import decays
from dualkit.core.specs import OptimSpec


class Optimizer:
    def __init__(
        self, spec: OptimSpec, params: dict[str, torch.nn.Parameter], layouts: dict[str, Layout] | None = None
    ):
        """``layouts``: per parameter name, (canonical -> torch, torch -> canonical) conversions of its
        weight, as in tf's Optimizer; a slot has its weight's layout, so the state is canonical at this
        boundary. Names without one are already canonical (every weight of this backend's models)."""
        self.spec = spec
        self.params = params
        self.layouts = layouts or {}
        self.plist = list(params.values())
        # One param group per weight-decay value (OptimSpec.decay_1d), each in the order of ``params``.
        groups = [
            {
                "params": [p for p in self.plist if decays(spec, tuple(p.shape)) == d],
                "weight_decay": spec.weight_decay if d else 0.0,
            }
            for d in (True, False)
        ]
        groups = [g for g in groups if g["params"]]
        if spec.name == "sgd":
            self.opt = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
        elif spec.name in ("adam", "adamw"):
            cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
            kwargs = dict(lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)
            # the fused kernel: the same math in one call for all tensors (the per-tensor loop dominates small models)
            try:
                self.opt = cls(groups, fused=True, **kwargs)
            except (RuntimeError, ValueError):  # a device or dtype torch has no fused kernel for
                self.opt = cls(groups, **kwargs)
        else:  # specs are validated; this guards against a new name added in one place only
            raise ValueError(f"unknown optimizer {spec.name!r}")
        self.step_count = 0

    def apply(self, grads: list[torch.Tensor], lr: float) -> None:
        """Clip (global norm, as clip_grad_norm_) and apply one update with learning rate ``lr``.

        ``grads``: one per parameter, in the order of ``params``, laid out like its parameter (what
        ``loss.backward()`` leaves in ``p.grad``; passing those is free). They are consumed: clipping scales
        them in place, and afterwards every ``p.grad`` is None, so the next backward starts from nothing.
        """
        for p, g in zip(self.plist, grads, strict=True):
            if p.grad is not g:
                p.grad = g
        if self.spec.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.plist, self.spec.clip_norm)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.step_count += 1
        self.opt.zero_grad(set_to_none=True)

    def get_state(self) -> dict[str, np.ndarray]:
        """Canonical optimizer state; buffers that torch has not created yet are zeros."""
        out: dict[str, np.ndarray] = {"step": np.array(float(self.step_count))}
        for name, p in self.params.items():
            st = self.opt.state.get(p, {})
            zeros = np.zeros(tuple(p.shape), dtype=to_numpy(p).dtype)
            if self.spec.name == "sgd" and self.spec.momentum > 0:
                buf = st.get("momentum_buffer")
                out[f"momentum.{name}"] = zeros if buf is None else to_numpy(buf).copy()
            elif self.spec.name in ("adam", "adamw"):
                out[f"exp_avg.{name}"] = to_numpy(st["exp_avg"]).copy() if "exp_avg" in st else zeros
                out[f"exp_avg_sq.{name}"] = to_numpy(st["exp_avg_sq"]).copy() if "exp_avg_sq" in st else zeros
        return {k: v if k == "step" else self._layout(k, v, to_canonical=True) for k, v in out.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.step_count = int(np.asarray(state["step"]))
        for name, p in self.params.items():

            def load(key: str, p: torch.Tensor = p) -> torch.Tensor:  # in the parameter's memory format (channels_last)
                value = self._layout(key, np.asarray(state[key]), to_canonical=False)
                return torch.empty_like(p).copy_(torch.as_tensor(value, dtype=p.dtype, device=p.device))

            if self.spec.name == "sgd" and self.spec.momentum > 0:
                self.opt.state[p] = {"momentum_buffer": load(f"momentum.{name}")}
            elif self.spec.name in ("adam", "adamw"):
                self.opt.state[p] = {
                    "step": torch.tensor(
                        float(self.step_count),
                        dtype=torch.float32,
                        device=p.device if self.opt.param_groups[0].get("fused") else None,
                    ),
                    "exp_avg": load(f"exp_avg.{name}"),
                    "exp_avg_sq": load(f"exp_avg_sq.{name}"),
                }

    def _layout(self, key: str, value: np.ndarray, to_canonical: bool) -> np.ndarray:
        convert = self.layouts.get(key.split(".", 1)[1])  # "exp_avg.<param>" -> its weight's layout
        if convert is None:
            return value
        return np.ascontiguousarray(convert[1 if to_canonical else 0](value))


def apply_updates(
    spec: OptimSpec,
    params: dict[str, np.ndarray],
    grads_seq: list[dict[str, np.ndarray]],
    lrs: list[float],
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Apply one update per (grads, lr) pair to copies of ``params``; for the optimizer parity level."""
    dev = framework_device(device)
    tensors = {n: torch.nn.Parameter(to_tensor(v, device=dev).clone()) for n, v in params.items()}
    opt = Optimizer(spec, tensors)
    for grads, lr in zip(grads_seq, lrs):
        opt.apply([to_tensor(grads[n], device=dev).clone() for n in tensors], lr)  # clipping scales grads in place
    return {n: to_numpy(p).copy() for n, p in tensors.items()}, opt.get_state()
