"""The DQN replay buffer: a numpy ring buffer of transitions and seeded minibatch sampling.

Both backends are handed the same minibatches: indices are drawn here, from a core generator
(``make_rng(seed, "replay")``), and the batch is plain numpy in the run's float dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """A minibatch of transitions; ``terminated`` is 1.0 where the episode really ended (no bootstrap)."""

    obs: np.ndarray  # (B, obs_dim) float
    actions: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float
    next_obs: np.ndarray  # (B, obs_dim) float
    terminated: np.ndarray  # (B,) float, 0.0 or 1.0

    def __len__(self) -> int:
        return len(self.actions)


class ReplayBuffer:
    """Fixed-capacity ring buffer; once full, each new transition overwrites the oldest one.

    Truncated transitions (time limit) are stored with ``terminated = 0``: they bootstrap.
    """

    def __init__(self, capacity: int, obs_dim: int, dtype: str = "float32"):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        self.capacity = int(capacity)
        self.dtype = np.dtype(dtype)
        self.obs = np.zeros((capacity, obs_dim), self.dtype)
        self.next_obs = np.zeros((capacity, obs_dim), self.dtype)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, self.dtype)
        self.terminated = np.zeros(capacity, self.dtype)
        self.pos = 0  # where the next transition goes
        self.size = 0
        self.added = 0  # transitions ever added

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        """Append a batch of n transitions (rows of each array), in order."""
        actions = np.asarray(actions).reshape(-1)
        n = len(actions)
        if n == 0:
            return
        obs = np.asarray(obs).reshape(n, -1)
        next_obs = np.asarray(next_obs).reshape(n, -1)
        if obs.shape[1] != self.obs.shape[1] or next_obs.shape != obs.shape:
            raise ValueError(f"observations must be ({n}, {self.obs.shape[1]}), got {obs.shape} and {next_obs.shape}")
        if n > self.capacity:  # only the newest `capacity` survive
            sl = slice(n - self.capacity, n)
            self.added += n - self.capacity
            obs, actions, next_obs = obs[sl], actions[sl], next_obs[sl]
            rewards, terminated = np.asarray(rewards).reshape(-1)[sl], np.asarray(terminated).reshape(-1)[sl]
            n = self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.next_obs[idx] = next_obs
        self.actions[idx] = actions
        self.rewards[idx] = np.asarray(rewards).reshape(-1)
        self.terminated[idx] = np.asarray(terminated).reshape(-1)
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.added += n

    def sample_indices(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` slots drawn uniformly with replacement (one ``rng.integers`` call)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return rng.integers(0, self.size, size=batch_size)

    def get(self, idx: np.ndarray) -> Batch:
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx])

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        return self.get(self.sample_indices(batch_size, rng))
