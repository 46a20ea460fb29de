"""The DQN agent's steps in PyTorch: batched action values, the update, the target network, weights."""

from __future__ import annotations

import numpy as np
import torch

from dualkit.backends.torch.losses import td_loss
from dualkit.backends.torch.optim import Optimizer
from dualkit.backends.torch.qnet import build_qnet, canonical_variables
from dualkit.backends.torch.runtime import DTYPES, framework_device, save_native, to_numpy, to_tensor
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
        self.obs_dim = obs_dim
        self.online = build_qnet(qnet, obs_dim, num_actions, dtype, name="online").to(self.device)
        # its own tensors
        self.target = build_qnet(qnet, obs_dim, num_actions, dtype, name="target").to(self.device)
        self.target.requires_grad_(False)
        self.variables = {
            **canonical_variables(self.online, QNET_PREFIX),
            **canonical_variables(self.target, TARGET_PREFIX),
        }
        self.params = canonical_variables(self.online, QNET_PREFIX)
        self.set_weights(weights)
        self.optimizer = Optimizer(optim, self.params)

    # -- steps ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def act_values(self, obs: np.ndarray) -> np.ndarray:
        """Online Q-values (N, num_actions) for a batch of observations (one call for all envs)."""
        return self.online(to_tensor(obs, self.dtype, self.device)).numpy(force=True)

    def _loss(self, batch: Batch) -> torch.Tensor:
        # one conversion of the packed minibatch (obs, next_obs, reward, terminated, action), then views
        d = self.obs_dim
        rows = to_tensor(batch.packed(), self.dtype, self.device)
        obs, next_obs, rewards, terminated = rows[:, :d], rows[:, d : 2 * d], rows[:, 2 * d], rows[:, 2 * d + 1]
        actions = rows[:, 2 * d + 2].long()
        # the next-state values carry no gradient: computed outside autograd, the backward pass covers
        # only the obs rows (cheaper than one online pass over obs and next_obs, cut after the fact)
        with torch.no_grad():
            next_q_target = self.target(next_obs)
            next_q_online = self.online(next_obs) if self.double else None
        q = self.online(obs)
        return td_loss(
            q, actions, rewards, terminated, next_q_target, next_q_online, gamma=self.gamma, kind=self.loss_kind
        )

    def update(self, batch: Batch, lr: float) -> float:
        """One optimizer step on a minibatch; returns the TD loss before the step."""
        loss = self._loss(batch)
        loss.backward()
        self.optimizer.apply([p.grad for p in self.params.values()], lr)
        return float(loss.item())

    def loss_and_grads(self, batch: Batch) -> tuple[float, dict[str, np.ndarray]]:
        """The TD loss and its gradient w.r.t. every online weight (canonical names); no state changes."""
        loss = self._loss(batch)
        # torch.autograd.grad, not backward: the parameters' .grad (the optimizer's input) stays untouched
        grads = dict(zip(self.params, torch.autograd.grad(loss, list(self.params.values()))))
        return float(loss.item()), {n: to_numpy(g).copy() for n, g in grads.items()}

    @torch.no_grad()
    def sync_target(self, tau: float = 1.0) -> None:
        """target <- tau * online + (1 - tau) * target; tau = 1 copies."""
        for t, p in zip(self.target.parameters(), self.online.parameters()):
            if tau >= 1.0:
                t.copy_(p)
            else:
                t.copy_(tau * p + (1.0 - tau) * t)

    # -- canonical weights -------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        """Online (``q.*``) and target (``target.*``) weights in the canonical layout."""
        return {n: to_numpy(t).copy() for n, t in self.variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the given tensors; without any ``target.*`` the target becomes a copy of the online net."""
        if not any(n.startswith(TARGET_PREFIX + ".") for n in weights):
            weights = {**weights, **target_names(weights)}
        with torch.no_grad():
            for name, value in weights.items():
                if name not in self.variables:
                    raise KeyError(f"{name!r} is not a tensor of this Q-network; expected {list(self.variables)}")
                self.variables[name].copy_(torch.as_tensor(np.asarray(value)))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    # -- native artifact ----------------------------------------------------------------------------
    def save_native(self, path: str) -> None:
        """A plain PyTorch state dict (``.pt``) of the online network; keys are the canonical names. Written
        to a temp name, then renamed."""
        save_native({n: t.detach().cpu() for n, t in canonical_variables(self.online, QNET_PREFIX).items()}, path)
