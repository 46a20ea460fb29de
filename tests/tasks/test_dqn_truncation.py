"""What the DQN driver stores for episode ends (tasks/dqn.py's loop, core/envs.py's rollout, core/replay.py's buffer):
a time-limit truncation is stored with terminated = 0, so its TD target bootstraps from the next state; a
termination is stored with terminated = 1 and does not."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.core import losses as ref_losses
from dualkit.core import registry
from dualkit.tasks import dqn, presets

pytestmark = pytest.mark.skipif(not registry.is_installed("torch"), reason="PyTorch is not installed")

SHORT = [
    "env.num_envs=2",
    "env.max_episode_steps=12",
    "qnet.hidden=[16]",
    "dqn.total_steps=600",
    "dqn.learning_starts=100",
    "dqn.train_freq=4",
    "dqn.batch_size=64",
    "dqn.buffer_size=1000",
    "dqn.eval_every=0",
    "dqn.stop_return=0",
]


def test_truncations_are_stored_non_terminal_and_bootstrap(monkeypatch):
    stored, sampled = [], []

    class Recording(dqn.ReplayBuffer):
        def add(self, obs, actions, rewards, next_obs, terminated):
            super().add(obs, actions, rewards, next_obs, terminated)
            stored.append(self.newest(len(np.asarray(actions).reshape(-1))))

        def sample(self, batch_size, rng):
            batch = super().sample(batch_size, rng)
            sampled.append(batch)
            return batch

    monkeypatch.setattr(dqn, "ReplayBuffer", Recording)
    spec = presets.load("dqn-cartpole", SHORT)
    run = dqn.train(spec, "torch", progress=False, record=True, test=False)
    term = np.concatenate([e[0] for e in run.ends]).astype(bool)
    limit = np.concatenate([e[1] for e in run.ends]).astype(bool) & ~term
    flags = np.concatenate([b.terminated for b in stored])
    assert limit.sum() >= 5 and term.sum() >= 5  # both kinds of episode end happened
    np.testing.assert_array_equal(flags[limit], 0.0)  # time limits: non-terminal
    np.testing.assert_array_equal(flags[term], 1.0)  # terminations: terminal
    np.testing.assert_array_equal(flags, term.astype(flags.dtype))
    np.testing.assert_array_equal(np.concatenate([e[2] for e in run.ends]), flags)  # what record=True reports

    # the updates drew truncated transitions, and their TD target bootstraps: gamma * max Q(next) is in it
    ends = np.concatenate([b.next_obs for b in stored])[limit]
    rows = [(b, i) for b in sampled for i in range(len(b)) if (b.next_obs[i] == ends).all(axis=1).any()]
    assert rows and all(b.terminated[i] == 0.0 for b, i in rows)
    b, i = rows[0]
    q, nq = np.zeros((1, 2)), np.array([[1.0, 3.0]])
    boot = ref_losses.td_loss(q, b.actions[i : i + 1], b.rewards[i : i + 1], b.terminated[i : i + 1], nq, gamma=0.5)
    end = ref_losses.td_loss(q, b.actions[i : i + 1], b.rewards[i : i + 1], np.ones(1), nq, gamma=0.5)
    assert boot != end
