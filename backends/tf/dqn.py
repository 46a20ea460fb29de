"""The DQN agent's steps in TensorFlow: batched action values, the update, the target network, weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from dualkit.backends.tf.losses import td_loss
from dualkit.backends.tf.optim import Optimizer
from dualkit.backends.tf.qnet import build_qnet, canonical_variables
from dualkit.backends.tf.runtime import DTYPES, framework_device, save_native, to_numpy, to_tensor
from dualkit.core.replay import Batch
from dualkit.core.specs import OptimSpec, QNetSpec
from dualkit.core.weights import QNET_PREFIX, TARGET_PREFIX, target_names


class DQNAgent:
    """An online Q-network, its target copy and optimizer. Inputs are numpy from core; outputs are numpy."""

    def __init__(
        self,
        qnet: QNetSpec,
        obs_dim: int,
        num_actions: int,
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        gamma: float = 0.99,
        loss: str = "huber",
        double: bool = False,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.device = framework_device(device)
        self.dtype = DTYPES[dtype]
        self.gamma, self.loss_kind, self.double = float(gamma), loss, bool(double)
        with tf.device(self.device):
            self.online = build_qnet(qnet, obs_dim, num_actions, dtype, name="online")
            self.target = build_qnet(qnet, obs_dim, num_actions, dtype, name="target")  # its own variables
            online_vars = canonical_variables(self.online, QNET_PREFIX)
            self.variables = {**online_vars, **canonical_variables(self.target, TARGET_PREFIX)}
            self.set_weights(weights)
            self.params = {n: v for n, (v, _, _) in online_vars.items()}
            self.optimizer = Optimizer(optim, self.params, {n: (to, fr) for n, (_, to, fr) in self.variables.items()})
        self._pairs = [
            (self.variables[n][0], self.variables[TARGET_PREFIX + n[len(QNET_PREFIX) :]][0]) for n in online_vars
        ]
        self.obs_dim = obs_dim
        obs = tf.TensorSpec((None, obs_dim), self.dtype)
        # A minibatch travels as one (B, 2 * obs_dim + 3) array: obs, next_obs, reward, terminated, action.
        # One numpy -> tensor conversion per update instead of five (each costs as much as a small matmul).
        packed = tf.TensorSpec((None, 2 * obs_dim + 3), self.dtype)
        scalar = tf.TensorSpec((), tf.float64)
        # Traced once each, for any batch size; called through their concrete functions (the cheapest call).
        self._fns = {
            "act": tf.function(self._act, input_signature=[obs]),
            "update": tf.function(self._update, input_signature=[packed, scalar]),
            "grads": tf.function(self._loss_and_grads, input_signature=[packed]),
            "sync": tf.function(self._sync, input_signature=[scalar, scalar]),
        }
        self._concrete: dict[str, Callable] = {}
        self._lr: tuple[float | None, tf.Tensor | None] = (None, None)

    def _call(self, name: str, *args):
        fn = self._concrete.get(name)
        if fn is None:
            with tf.device(self.device):  # traced once under the device: its ops stay placed there
                fn = self._concrete[name] = self._fns[name].get_concrete_function()
        return fn(*args)

    # -- compiled bodies ------------------------------------------------------------------------
    def _act(self, obs: tf.Tensor) -> tf.Tensor:
        return self.online(obs, training=False)

    def _loss(self, packed: tf.Tensor) -> tf.Tensor:
        d = self.obs_dim
        obs, next_obs = packed[:, :d], packed[:, d : 2 * d]
        rewards, terminated = packed[:, 2 * d], packed[:, 2 * d + 1]
        actions = tf.cast(packed[:, 2 * d + 2], tf.int64)
        # the next-state values carry no gradient: kept off the tape, the backward pass covers only the
        # obs rows (cheaper than one online pass over obs and next_obs, cut after the fact)
        next_q_target = tf.stop_gradient(self.target(next_obs, training=False))
        next_q_online = tf.stop_gradient(self.online(next_obs, training=False)) if self.double else None
        q = self.online(obs, training=True)
        return td_loss(
            q, actions, rewards, terminated, next_q_target, next_q_online, gamma=self.gamma, kind=self.loss_kind
        )

    def _loss_and_grads(self, packed: tf.Tensor):
        trainable = list(self.params.values())
        with tf.GradientTape() as tape:
            loss = self._loss(packed)
        return loss, tape.gradient(loss, trainable)

    def _update(self, packed: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        loss, grads = self._loss_and_grads(packed)
        self.optimizer.apply(grads, lr)
        return loss

    def _sync(self, tau: tf.Tensor, one_minus_tau: tf.Tensor) -> tf.Tensor:
        for p, t in self._pairs:
            # the factors are rounded to the variable dtype once, as torch does with Python floats
            t.assign(tf.cast(tau, t.dtype) * p + tf.cast(one_minus_tau, t.dtype) * t)
        return tau

    def _pack(self, batch: Batch) -> tf.Tensor:
        return to_tensor(np.asarray(batch.packed(), dtype=self.dtype.as_numpy_dtype), self.dtype)

    # -- steps ---------------------------------------------------------------------------------
    def act_values(self, obs: np.ndarray) -> np.ndarray:
        """Online Q-values (N, num_actions) for a batch of observations (one call for all envs)."""
        return self._call("act", to_tensor(obs, self.dtype)).numpy()

    def update(self, batch: Batch, lr: float) -> float:
        """One optimizer step on a minibatch; returns the TD loss before the step."""
        if lr != self._lr[0]:  # a schedule changes lr rarely between steps: reuse the tensor
            self._lr = (lr, tf.constant(lr, tf.float64))
        return float(self._call("update", self._pack(batch), self._lr[1]).numpy())

    def loss_and_grads(self, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
        """The TD loss and its gradient w.r.t. every online weight (canonical names); no state changes."""
        loss, grads = self._call("grads", self._pack(batch))
        return float(loss.numpy()), {n: self.variables[n][2](to_numpy(g)).copy() for n, g in zip(self.params, grads)}

    def sync_target(self, tau: float = 1.0) -> None:
        """target <- tau * online + (1 - tau) * target; tau = 1 copies (exactly: 1 * p + 0 * t = p)."""
        self._call("sync", tf.constant(tau, tf.float64), tf.constant(1.0 - tau, tf.float64))

    # -- canonical weights -------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """Online (``q.*``) and target (``target.*``) weights in the canonical layout."""
        return {n: np.ascontiguousarray(from_tf(to_numpy(v))) for n, (v, _, from_tf) in self.variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the given tensors; without any ``target.*`` the target becomes a copy of the online net."""
        if not any(n.startswith(TARGET_PREFIX + ".") for n in weights):
            weights = {**weights, **target_names(weights)}
        for name, value in weights.items():
            if name not in self.variables:
                raise KeyError(f"{name!r} is not a tensor of this Q-network; expected {list(self.variables)}")
            var, to_tf, _ = self.variables[name]
            var.assign(np.ascontiguousarray(to_tf(np.asarray(value))).astype(var.dtype))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """Canonical optimizer state (core.optim_ref names; slots in the canonical layout, like their weights)."""
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    # -- native artifact ----------------------------------------------------------------------------
    def save_native(self, path: str) -> None:
        """A Keras ``.keras`` archive of the online network; written to a temp name, then renamed."""
        save_native(self.online, path)
