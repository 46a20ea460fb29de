"""core.envs: clear errors for unknown or unsupported envs, seeding, and what counts as a transition."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dualkit.core.envs import Evaluator, VectorRollout, check_spaces, env_info, episode_seeds, make_env, train_seeds
from dualkit.core.errors import EnvError
from dualkit.core.specs import EnvSpec


class _ImageEnv(gym.Env):
    observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


gym.register("dualkit-test/ImageObs-v0", entry_point=_ImageEnv, max_episode_steps=10)


def test_unknown_env_names_the_problem():
    with pytest.raises(EnvError, match=r"env.id='CartPol-v1': no such Gymnasium environment.*Did you mean"):
        make_env(EnvSpec(id="CartPol-v1"))
    with pytest.raises(EnvError, match="no such Gymnasium environment"):
        make_env(EnvSpec(id="NoSuchNamespace/Foo-v0"))


def test_continuous_actions_are_refused_with_what_is_supported():
    with pytest.raises(EnvError, match=r"continuous action space.*Discrete action space"):
        make_env(EnvSpec(id="Pendulum-v1"))


def test_image_observations_are_refused_with_what_is_supported():
    with pytest.raises(EnvError, match=r"image observations of shape \(32, 32, 3\).*MLP.*flat Box observation"):
        make_env(EnvSpec(id="dualkit-test/ImageObs-v0"))
    with pytest.raises(EnvError, match="Discrete observation space"):
        check_spaces("FrozenLake-v1", spaces.Discrete(16), spaces.Discrete(4))


def test_env_info_reads_sizes_and_time_limit():
    info = env_info(EnvSpec(id="CartPole-v1"))
    assert (info.obs_dim, info.num_actions, info.max_episode_steps) == (4, 2, 500)
    assert env_info(EnvSpec(id="CartPole-v1", max_episode_steps=50)).max_episode_steps == 50
    assert env_info(EnvSpec(id="Acrobot-v1")).num_actions == 3


def test_seeds_are_reproducible():
    assert train_seeds(0, 4) == train_seeds(0, 4) != train_seeds(1, 4)
    assert episode_seeds(100, 3) == [100, 101, 102]


def test_rollout_drops_autoreset_steps_and_never_bootstraps_truncation():
    """With a 20-step limit, every episode of a constant-action CartPole ends; check each transition."""
    spec = EnvSpec(id="CartPole-v1", num_envs=3, max_episode_steps=20)
    roll = VectorRollout(spec, seed=0)
    rng = np.random.default_rng(0)
    total, episodes, lengths, truncated_seen = 0, 0, [], 0
    for _ in range(300):
        tr = roll.step(rng.integers(0, 2, 3))
        assert len(tr) <= 3
        # every transition's obs is a real state: never the final obs of a finished episode followed by a reset
        # (the autoreset step would store the terminal obs, with the pole past its bound, as a start state)
        assert np.all(np.abs(tr.obs[:, 2]) <= 12 * 2 * math.pi / 360)
        assert tr.obs.dtype == np.float32
        truncated_seen += int(tr.truncated.sum())
        # terminated (stored, no bootstrap) exactly where the pole or cart left its bounds; a time limit alone
        # (truncated) leaves terminated False, so that transition bootstraps
        out = (np.abs(tr.next_obs[:, 2]) > 12 * 2 * math.pi / 360) | (np.abs(tr.next_obs[:, 0]) > 2.4)
        np.testing.assert_array_equal(tr.terminated, out)
        total += len(tr)
        episodes += len(tr.episode_returns)
        lengths += tr.episode_lengths
        np.testing.assert_array_equal(tr.episode_returns, tr.episode_lengths)  # CartPole pays 1 per step
    roll.close()
    assert total < 900  # the autoreset steps were dropped
    assert sum(lengths) <= total and total - sum(lengths) <= 3 * 20  # every counted step belongs to an episode
    assert max(lengths) <= 20 and truncated_seen > 0 and episodes > 20


def test_rollout_transitions_chain_within_an_episode():
    spec = EnvSpec(id="CartPole-v1", num_envs=1, max_episode_steps=5)
    roll = VectorRollout(spec, seed=1)
    prev, chained, boundaries = None, 0, 0
    for _ in range(40):
        tr = roll.step(np.array([0]))
        if len(tr) == 0:
            boundaries += 1  # the autoreset step: nothing is stored
            prev = None
            continue
        if prev is not None:
            np.testing.assert_array_equal(tr.obs[0], prev)  # next_obs of one transition is obs of the next
            chained += 1
        prev = tr.next_obs[0]
        if tr.terminated[0] or tr.truncated[0]:
            assert tr.truncated[0] == (not tr.terminated[0])
    roll.close()
    assert boundaries >= 5 and chained > 10


def test_evaluator_is_deterministic_per_seed():
    ev = Evaluator(EnvSpec(id="CartPole-v1"), episode_seeds(5, 4))

    def policy(obs):  # push toward the pole's lean: a decent policy
        return (obs[:, 2] > 0).astype(np.int64)

    r1, l1 = ev.run(policy)
    r2, _ = ev.run(policy)
    ev.close()
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(r1, l1)
    assert r1.min() > 20 and len(set(r1.tolist())) > 1  # different seeds, different episodes


def test_env_batch_steps_exactly_like_gymnasium_sync_vector_env():
    """VectorRollout's lean EnvBatch gives SyncVectorEnv's (next-step autoreset) results, step for step."""
    from dualkit.core.envs import EnvBatch, make_vector_env

    spec = EnvSpec(id="CartPole-v1", num_envs=5, max_episode_steps=30)
    actions = np.random.default_rng(0).integers(0, 2, (300, 5))
    ref, lean = make_vector_env(spec, 5), EnvBatch(spec, 5)
    np.testing.assert_array_equal(ref.reset(seed=train_seeds(3, 5))[0], lean.reset(seed=train_seeds(3, 5))[0])
    for a in actions:
        for x, y in zip(ref.step(a)[:4], lean.step(a)[:4]):
            np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
    ref.close()
    lean.close()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0"])
def test_rollout_state_restored_in_fresh_envs_continues_step_for_step(env_id):
    """A run checkpoint's env snapshot (mid-episode, across resets and time limits) continues exactly."""
    from dualkit.core.envs import VectorRollout

    spec = EnvSpec(id=env_id, num_envs=3, max_episode_steps=40)
    actions = np.random.default_rng(0).integers(0, 2, (300, 3))
    a = VectorRollout(spec, 0)
    for x in actions[:130]:
        a.step(x)
    meta, arrays = a.get_state()
    json.loads(json.dumps(meta))  # the JSON part survives the checkpoint's metadata
    b = VectorRollout(spec, 99)  # other seeds: everything must come from the snapshot
    b.set_state(meta, arrays)
    for x in actions[130:]:
        ta, tb = a.step(x), b.step(x)
        for f in ("obs", "rewards", "next_obs", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(ta, f), getattr(tb, f), err_msg=f)
        assert ta.episode_returns == tb.episode_returns
    a.close()
    b.close()


def test_an_env_without_a_state_attribute_has_no_snapshot():
    from dualkit.core.envs import snapshot_env

    class Opaque(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

    env = Opaque()
    env.reset(seed=0)
    assert snapshot_env(env) is None
