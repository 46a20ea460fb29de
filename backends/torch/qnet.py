"""The DQN Q-network (an MLP) in PyTorch. Module names make state_dict keys the canonical names
(after the network's prefix: ``q.`` for the online network, ``target.`` for the target network)."""

from __future__ import annotations

import torch
from torch import nn

from dualkit.core.specs import QNetSpec

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


class _QNet(nn.Module):  # private: the public surface is build_qnet, as in backends/tf/qnet.py
    """Observations (N, obs_dim) -> Q-values (N, num_actions): ``fc{i}`` + activation, then ``out``."""

    def __init__(self, spec: QNetSpec, obs_dim: int, num_actions: int):
        super().__init__()
        fan_in = obs_dim
        for i, width in enumerate(spec.hidden):
            self.add_module(f"fc{i}", nn.Linear(fan_in, width))
            fan_in = width
        self.out = nn.Linear(fan_in, num_actions)
        self.n_hidden = len(spec.hidden)
        self.act = ACTIVATIONS[spec.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_hidden):
            x = self.act(getattr(self, f"fc{i}")(x))
        return self.out(x)


def build_qnet(spec: QNetSpec, obs_dim: int, num_actions: int, dtype: str = "float32", name: str = "qnet") -> nn.Module:
    """Observations (N, obs_dim) -> Q-values (N, num_actions): ``fc{i}`` + activation, then ``out``.

    ``name`` is the model's name in the Keras twin (it tells the online and the target model apart in a
    saved archive); a torch module has no name, so it is accepted and unused here.
    """
    return _QNet(spec, obs_dim, num_actions).to(dtype=getattr(torch, dtype))


def canonical_variables(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """canonical name -> the network's tensor (no layout change: torch's layout is the canonical one)."""
    return {f"{prefix}.{n}": p for n, p in model.named_parameters()}
