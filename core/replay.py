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

    def packed(self) -> np.ndarray:
        """One (B, 2 * obs_dim + 3) array: obs, next_obs, reward, terminated, action (as a float, exact)."""
        dt = self.obs.dtype
        cols = [self.obs, self.next_obs, self.rewards[:, None], self.terminated[:, None], self.actions[:, None]]
        return np.concatenate([np.asarray(c, dtype=dt) for c in cols], axis=1)


class PackedBatch(Batch):
    """A Batch gathered from a ReplayBuffer: its fields are views of one packed array, which ``packed()``
    returns as is (a backend then converts one array per update instead of five)."""

    def __init__(self, rows: np.ndarray, obs_dim: int):
        d = obs_dim
        super().__init__(
            rows[:, :d], rows[:, 2 * d + 2].astype(np.int64), rows[:, 2 * d], rows[:, d : 2 * d], rows[:, 2 * d + 1]
        )
        object.__setattr__(self, "_rows", rows)

    def packed(self) -> np.ndarray:
        return self._rows


class ReplayBuffer:
    """Fixed-capacity ring buffer; once full, each new transition overwrites the oldest one.

    One row per transition, ``[obs | next_obs | reward | terminated | action]`` in the run's float dtype,
    so a minibatch is a single gather. Truncated transitions (time limit) are stored with
    ``terminated = 0``: they bootstrap.
    """

    def __init__(self, capacity: int, obs_dim: int, dtype: str = "float32"):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if obs_dim < 1:
            raise ValueError(f"obs_dim must be >= 1, got {obs_dim}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.dtype = np.dtype(dtype)
        self.data = np.zeros((capacity, 2 * obs_dim + 3), self.dtype)
        self.pos = 0  # where the next transition goes
        self.size = 0
        self.added = 0  # transitions ever added

    def __len__(self) -> int:
        return self.size

    @property
    def obs(self) -> np.ndarray:
        return self.data[:, : self.obs_dim]

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
        d = self.obs_dim
        obs = np.asarray(obs).reshape(n, -1)
        next_obs = np.asarray(next_obs).reshape(n, -1)
        if obs.shape[1] != d or next_obs.shape != obs.shape:
            raise ValueError(f"observations must be ({n}, {d}), got {obs.shape} and {next_obs.shape}")
        rows = np.empty((n, 2 * d + 3), self.dtype)
        rows[:, :d] = obs
        rows[:, d : 2 * d] = next_obs
        rows[:, 2 * d] = np.asarray(rewards).reshape(-1)
        rows[:, 2 * d + 1] = np.asarray(terminated).reshape(-1)
        rows[:, 2 * d + 2] = actions
        if n > self.capacity:  # only the newest `capacity` survive
            self.added += n - self.capacity
            rows, n = rows[n - self.capacity :], self.capacity
        end = self.pos + n
        if end <= self.capacity:
            self.data[self.pos : end] = rows
        else:
            k = self.capacity - self.pos
            self.data[self.pos :] = rows[:k]
            self.data[: n - k] = rows[k:]
        self.pos = end % self.capacity
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
        return PackedBatch(self.data[idx], self.obs_dim)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        return self.get(self.sample_indices(batch_size, rng))

    def newest(self, n: int) -> Batch:
        """The ``n`` transitions added last, oldest first, as the buffer holds them."""
        return self.get((self.pos - np.arange(min(n, self.size), 0, -1)) % self.capacity)

    def state(self) -> tuple[dict[str, int], np.ndarray]:
        """(counters, the filled rows in slot order) for a run checkpoint."""
        return {"pos": self.pos, "size": self.size, "added": self.added}, self.data[: self.size].copy()

    def load_state(self, counters: dict[str, int], rows: np.ndarray) -> None:
        size = int(counters["size"])
        if rows.shape != (size, self.data.shape[1]) or size > self.capacity:
            raise ValueError(
                f"saved replay rows {rows.shape} do not fit a buffer of {self.capacity} x {self.data.shape[1]}"
            )
        self.data[:] = 0
        self.data[:size] = rows
        self.pos, self.size, self.added = int(counters["pos"]), size, int(counters["added"])

    @property
    def nbytes(self) -> int:
        return self.size * self.data.shape[1] * self.data.itemsize
