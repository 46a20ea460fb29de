"""Optimizers from core's OptimSpec, written out in TensorFlow with PyTorch's semantics (core.optim_ref).

Keras's own optimizers differ (Adam's epsilon placement, SGD momentum sign, decoupled weight decay
everywhere), so the update is written here. The learning rate of every step is handed in by the
caller (core.schedules); state converts to and from core's canonical names.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualkit.backends.tf.runtime import Layout, framework_device, to_numpy
from dualkit.core.optim_ref import decays
from dualkit.core.specs import OptimSpec


class Optimizer:
    def __init__(self, spec: OptimSpec, params: dict[str, tf.Variable], layouts: dict[str, Layout] | None = None):
        """``layouts``: per parameter name, (canonical -> Keras, Keras -> canonical) conversions of its
        weight (runtime.CONV_LAYOUT, DENSE_LAYOUT, ...); a slot has its weight's layout, so the state is
        canonical at this boundary. Names without one are already canonical."""
        self.spec = spec
        self.layouts = layouts or {}
        self.names = list(params)
        self.vars = list(params.values())
        self.step_count = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="step")
        self.slots: dict[str, tf.Variable] = {}
        for name, v in params.items():
            for key in self._slot_keys():
                self.slots[f"{key}.{name}"] = tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False)

    def _slot_keys(self) -> tuple[str, ...]:
        if self.spec.name == "sgd":
            return ("momentum",) if self.spec.momentum > 0 else ()
        return ("exp_avg", "exp_avg_sq")

    def apply(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        """Clip (global norm, as torch's clip_grad_norm_) and apply one update with learning rate ``lr``;
        ``grads``: one per parameter, in the order of ``params``. Traceable inside tf.function.

        Scalars (lr, bias corrections) are computed in float64 and rounded once, as torch does with
        Python floats.
        """
        s = self.spec
        lr = tf.cast(lr, tf.float64)
        if s.clip_norm > 0:
            norm = tf.linalg.global_norm(grads)
            coef = tf.minimum(tf.constant(1.0, norm.dtype), tf.constant(s.clip_norm, norm.dtype) / (norm + 1e-6))
            grads = [g * tf.cast(coef, g.dtype) for g in grads]
        self.step_count.assign_add(1.0)
        t = self.step_count
        if s.name in ("adam", "adamw"):
            step_size = lr / (1.0 - tf.pow(tf.constant(s.beta1, tf.float64), t))
            bc2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(s.beta2, tf.float64), t))
        for name, var, g in zip(self.names, self.vars, grads):
            dt = var.dtype

            def c(x, dt=dt):
                # tf.cast(python_float, float64) would round through float32 first
                return tf.constant(x, dt) if isinstance(x, (int, float)) else tf.cast(x, dt)

            wd = s.weight_decay if decays(s, tuple(var.shape)) else 0.0
            if s.name == "sgd":
                if wd:
                    g = g + c(wd) * var
                if s.momentum > 0:
                    buf = self.slots[f"momentum.{name}"]
                    buf.assign(buf * c(s.momentum) + g)
                    g = g + c(s.momentum) * buf if s.nesterov else tf.identity(buf)
                var.assign(var - c(lr) * g)
            else:
                if s.name == "adamw" and wd:
                    var.assign(var * c(1.0 - lr * wd))
                elif wd:
                    g = g + c(wd) * var
                m, v = self.slots[f"exp_avg.{name}"], self.slots[f"exp_avg_sq.{name}"]
                m.assign(m + (g - m) * c(1.0 - s.beta1))  # torch's lerp
                v.assign(v * c(s.beta2) + g * g * c(1.0 - s.beta2))
                denom = tf.sqrt(v) / c(bc2_sqrt) + c(s.eps)
                var.assign(var - c(step_size) * (m / denom))

    def get_state(self) -> dict[str, np.ndarray]:
        """Canonical optimizer state (core.optim_ref names; slots in the canonical layout, like their weights)."""
        out = {"step": np.array(float(self.step_count.numpy()))}
        out.update({k: self._layout(k, to_numpy(v), to_canonical=True) for k, v in self.slots.items()})
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.step_count.assign(float(np.asarray(state["step"])))
        for k, v in self.slots.items():
            v.assign(self._layout(k, np.asarray(state[k]), to_canonical=False).astype(v.dtype.as_numpy_dtype))

    def _layout(self, key: str, value: np.ndarray, to_canonical: bool) -> np.ndarray:
        convert = self.layouts.get(key.split(".", 1)[1])  # "exp_avg.<param>" -> its weight's layout
        if convert is None:
            return value.copy()
        return np.ascontiguousarray(convert[1 if to_canonical else 0](value))


def apply_updates(
    spec: OptimSpec,
    params: dict[str, np.ndarray],
    grads_seq: list[dict[str, np.ndarray]],
    lrs: list[float],
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Apply one update per (grads, lr) pair to copies of ``params``; for the optimizer parity level."""
    with tf.device(framework_device(device)):
        variables = {n: tf.Variable(np.array(v)) for n, v in params.items()}
        opt = Optimizer(spec, variables)
        for grads, lr in zip(grads_seq, lrs):
            opt.apply([tf.constant(grads[n]) for n in variables], tf.constant(lr, tf.float64))
    return {n: to_numpy(v).copy() for n, v in variables.items()}, opt.get_state()
