"""Epsilon-greedy exploration: the epsilon schedule and the seeded coin flips both backends share.

A backend only supplies Q-values; which action is taken is decided here, in numpy, so two backends
given the same seed take the same exploratory actions, and the same greedy action wherever their
Q-values agree on the argmax.
"""

from __future__ import annotations

import numpy as np

from dualkit.core.batches import make_rng


def epsilon_at(start: float, end: float, fraction: float, total_steps: int, step: int) -> float:
    """Linear decay from ``start`` to ``end`` over the first ``fraction * total_steps`` steps, then ``end``."""
    duration = max(fraction * total_steps, 1.0)
    t = min(max(step, 0) / duration, 1.0)
    return float(start + (end - start) * t)


def greedy(q: np.ndarray) -> np.ndarray:
    """argmax over actions; ties go to the lowest index (numpy's rule, the same for both backends)."""
    return np.argmax(np.asarray(q), axis=1).astype(np.int64)


def q_margin(q: np.ndarray) -> np.ndarray:
    """Per row, the best Q-value minus the second best (inf with one action): how close to a tie."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[1] < 2:
        return np.full(q.shape[0], np.inf)
    top2 = np.partition(q, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class EpsilonGreedy:
    """Seeded exploration draws, ``make_rng(seed, "explore")``.

    Draw order per call (part of the reproducibility contract): ``n`` uniforms (explore where
    ``u < epsilon``), then ``n`` random actions, both always drawn whatever epsilon is.
    """

    def __init__(self, seed: int, num_actions: int, stream: str = "explore"):
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.num_actions = int(num_actions)
        self.rng = make_rng(seed, stream)

    def draw(self, n: int, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        """(explore mask (n,) bool, random actions (n,) int64) for one step of ``n`` envs."""
        explore = self.rng.random(n) < epsilon
        random_actions = self.rng.integers(0, self.num_actions, size=n)
        return explore, random_actions

    @staticmethod
    def select(q: np.ndarray | None, explore: np.ndarray, random_actions: np.ndarray) -> np.ndarray:
        """Random action where ``explore``, greedy elsewhere; ``q`` may be None when every env explores."""
        if q is None:
            if not np.all(explore):
                raise ValueError("Q-values are needed where an env does not explore")
            return random_actions.astype(np.int64)
        return np.where(explore, random_actions, greedy(q)).astype(np.int64)
