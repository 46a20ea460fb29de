"""Gymnasium environments for DQN: creation with clear errors, space checks, seeding, rollouts.

Gymnasium is numpy-level, so it lives in core. Two rules decide what a transition is:
- bootstrap on ``terminated`` only, never on ``truncated`` (a time limit is not a terminal state);
- a vector env with next-step autoreset (Gymnasium's default) spends the step after an episode's end
  on the reset: that step's (obs, action, reward, next obs) is not a transition and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from dualkit.core.batches import make_rng
from dualkit.core.errors import EnvError
from dualkit.core.specs import EnvSpec

SUPPORTED = (
    "dualkit's DQN supports environments with a flat Box observation space of shape (n,) "
    "(e.g. CartPole-v1, Acrobot-v1, MountainCar-v0) and a Discrete action space"
)
# rollouts of an env without any time limit stop after this many steps (counted as truncated)
FALLBACK_MAX_STEPS = 100_000


@dataclass(frozen=True)
class EnvInfo:
    id: str
    obs_dim: int
    num_actions: int
    max_episode_steps: int | None  # the time limit in force, None if the env has none


def check_spaces(env_id: str, observation_space: spaces.Space, action_space: spaces.Space) -> EnvInfo:
    """Raise EnvError, saying what is supported, for spaces the MLP Q-network cannot handle."""
    if not isinstance(action_space, spaces.Discrete):
        kind = "continuous" if isinstance(action_space, spaces.Box) else type(action_space).__name__
        raise EnvError(
            f"env {env_id!r} has a {kind} action space {action_space}; DQN picks one of finitely many actions. "
            f"{SUPPORTED}. For continuous actions use an actor-critic method (not part of dualkit)."
        )
    if int(action_space.start) != 0:
        raise EnvError(
            f"env {env_id!r} has actions Discrete({action_space.n}, start={action_space.start}); "
            f"{SUPPORTED} starting at 0"
        )
    if not isinstance(observation_space, spaces.Box):
        raise EnvError(
            f"env {env_id!r} has a {type(observation_space).__name__} observation space {observation_space}; "
            f"{SUPPORTED}. "
            "Wrap it into a Box (e.g. gymnasium.wrappers.FlattenObservation / one-hot) to use it."
        )
    shape = tuple(observation_space.shape)
    if len(shape) != 1:
        what = "image" if len(shape) in (2, 3) else f"{len(shape)}-d"
        raise EnvError(
            f"env {env_id!r} has {what} observations of shape {shape}; the Q-network is an MLP over flat vectors "
            f"(no CNN). {SUPPORTED}."
        )
    if int(action_space.n) < 1 or shape[0] < 1:
        raise EnvError(f"env {env_id!r} has an empty space: observations {shape}, {action_space.n} actions")
    return EnvInfo(env_id, int(shape[0]), int(action_space.n), None)


def make_env(spec: EnvSpec) -> gym.Env:
    """``gymnasium.make(spec.id)`` (with ``spec.max_episode_steps`` if set), its spaces checked."""
    kwargs = {"max_episode_steps": spec.max_episode_steps} if spec.max_episode_steps > 0 else {}
    try:
        env = gym.make(spec.id, **kwargs)
    except gym.error.UnregisteredEnv as exc:
        raise EnvError(
            f"env.id={spec.id!r}: no such Gymnasium environment ({exc}). "
            f"Registered ones include: {', '.join(_examples())}"
        ) from None
    except (gym.error.DependencyNotInstalled, ImportError) as exc:
        raise EnvError(f"env.id={spec.id!r} needs a package that is not installed: {exc}") from None
    except gym.error.Error as exc:
        raise EnvError(f"env.id={spec.id!r} could not be created: {exc}") from None
    try:
        check_spaces(spec.id, env.observation_space, env.action_space)
    except EnvError:
        env.close()
        raise
    return env


def _examples() -> list[str]:
    names = [k for k in gym.registry if "/" not in k and not k.startswith(("phys2d", "tabular"))]
    return sorted(names)[:12] + ["..."]


def env_info(spec: EnvSpec) -> EnvInfo:
    """Create the env once to check it and read its sizes and time limit."""
    env = make_env(spec)
    try:
        info = check_spaces(spec.id, env.observation_space, env.action_space)
        limit = env.spec.max_episode_steps if env.spec is not None else None
        return EnvInfo(info.id, info.obs_dim, info.num_actions, limit)
    finally:
        env.close()


def train_seeds(seed: int, num_envs: int) -> list[int]:
    """Reset seeds of the training envs, from the run seed (stream ``"env/train"``)."""
    return [int(s) for s in make_rng(seed, "env/train").integers(0, 2**31 - 1, size=num_envs)]


def episode_seeds(base: int, n: int) -> list[int]:
    """Seeds of ``n`` evaluation episodes: ``base, base + 1, ...`` (the same in every backend)."""
    return [int(base) + i for i in range(n)]


def make_vector_env(spec: EnvSpec, num_envs: int) -> SyncVectorEnv:
    """Gymnasium's SyncVectorEnv (next-step autoreset) of ``num_envs`` checked envs."""
    make_env(spec).close()  # fail here, with dualkit's message, rather than inside the vector env
    return SyncVectorEnv(
        [lambda: make_env(spec) for _ in range(num_envs)], copy=False, autoreset_mode=AutoresetMode.NEXT_STEP
    )


class EnvBatch:
    """A lean stand-in for SyncVectorEnv with next-step autoreset, step for step the same results (same
    resets, same RNG use) without its per-env bookkeeping (info merging, space iteration), which costs as
    much as a CartPole step itself: the step after an episode's end resets that env (unseeded, so its RNG
    continues) and reports reward 0, terminated and truncated False."""

    def __init__(self, spec: EnvSpec, num_envs: int):
        self.envs = [make_env(spec) for _ in range(num_envs)]
        self.num_envs = num_envs
        self.autoreset = np.zeros(num_envs, bool)

    def reset(self, seed: list[int]) -> tuple[np.ndarray, dict]:
        self.autoreset[:] = False
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seed)]), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        n = self.num_envs
        obs, rewards = [None] * n, np.zeros(n)
        terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            if self.autoreset[i]:
                obs[i], _ = env.reset()
            else:
                obs[i], rewards[i], terminated[i], truncated[i], _ = env.step(int(actions[i]))
        self.autoreset = terminated | truncated
        return np.stack(obs), rewards, terminated, truncated, {}

    def close(self) -> None:
        for env in self.envs:
            env.close()


# -- env state for run checkpoints ---------------------------------------------------------------------
def snapshot_env(env: gym.Env) -> dict | None:
    """The JSON state of an env mid-episode, or None where dualkit cannot take it.

    Gymnasium has no generic get/set state. Classic-control envs (CartPole, Acrobot, MountainCar, ...)
    keep their whole dynamic state in ``unwrapped.state`` (plus CartPole's ``steps_beyond_terminated``);
    with the env's RNG position and the TimeLimit count that is everything their next steps depend on.
    """
    u = env.unwrapped
    state = getattr(u, "state", None)
    if state is None:
        return None
    arr = np.asarray(state)
    if arr.dtype.kind not in "fiub":
        return None
    snap: dict = {
        "state": arr.tolist(),  # floats round-trip exactly through JSON (repr)
        "state_dtype": arr.dtype.str,
        "state_is_array": isinstance(state, np.ndarray),
        "np_random": u.np_random.bit_generator.state,
        "wrappers": {},
    }
    if hasattr(u, "steps_beyond_terminated"):
        snap["steps_beyond_terminated"] = u.steps_beyond_terminated
    w = env
    while isinstance(w, gym.Wrapper):  # the time-limit count is what a resumed episode needs to truncate on time
        if hasattr(w, "_elapsed_steps"):
            snap["wrappers"][type(w).__name__] = {"_elapsed_steps": w._elapsed_steps}
        w = w.env
    return snap


def restore_env(env: gym.Env, snap: dict) -> None:
    """Put an env (freshly made from the same spec) back at a :func:`snapshot_env` state."""
    env.reset()  # leaves the wrappers' bookkeeping (order enforcing, checks) in the after-reset state
    u = env.unwrapped
    arr = np.asarray(snap["state"], dtype=np.dtype(snap["state_dtype"]))
    u.state = arr if snap["state_is_array"] else tuple(arr.tolist())
    u.np_random.bit_generator.state = snap["np_random"]
    if "steps_beyond_terminated" in snap:
        u.steps_beyond_terminated = snap["steps_beyond_terminated"]
    w = env
    while isinstance(w, gym.Wrapper):
        for key, value in snap["wrappers"].get(type(w).__name__, {}).items():
            setattr(w, key, value)
        w = w.env


@dataclass
class Transitions:
    """What one vector step produced: the real transitions (autoreset steps dropped) and finished episodes."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray  # bool; truncated transitions are here with terminated = False
    truncated: np.ndarray
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.actions)


class VectorRollout:
    """Seeded training envs stepped together, yielding only real transitions.

    Each sub-env is reset once with its seed from ``train_seeds``; later episodes continue its RNG,
    so the whole stream of observations is a function of the run seed and the actions taken.
    """

    def __init__(self, spec: EnvSpec, seed: int, dtype: str = "float32"):
        self.num_envs = spec.num_envs
        self.dtype = np.dtype(dtype)
        self.envs = EnvBatch(spec, spec.num_envs)
        obs, _ = self.envs.reset(seed=train_seeds(seed, spec.num_envs))
        self.obs = obs.astype(self.dtype)
        self.pending_reset = np.zeros(self.num_envs, bool)  # the last step ended the episode
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, np.int64)

    def step(self, actions: np.ndarray) -> Transitions:
        actions = np.asarray(actions, dtype=np.int64)
        next_obs, rewards, terminated, truncated, _ = self.envs.step(actions)
        next_obs = next_obs.astype(self.dtype)  # a copy: the vector env reuses its buffer (copy=False)
        obs, valid = self.obs, ~self.pending_reset
        ended = terminated | truncated
        self.ep_return += np.where(valid, rewards, 0.0)
        self.ep_length += valid
        finished = ended & valid
        out_returns = self.ep_return[finished].tolist()
        out_lengths = self.ep_length[finished].tolist()
        self.ep_return[finished] = 0.0
        self.ep_length[finished] = 0
        self.pending_reset = ended
        self.obs = next_obs
        if valid.all():
            return Transitions(obs, actions, rewards, next_obs, terminated, truncated, out_returns, out_lengths)
        return Transitions(
            obs[valid],
            actions[valid],
            rewards[valid],
            next_obs[valid],
            terminated[valid],
            truncated[valid],
            out_returns,
            out_lengths,
        )

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(JSON part, arrays) of where every env stands, or None if an env cannot be snapshot
        (see :func:`snapshot_env`)."""
        snaps = [snapshot_env(env) for env in self.envs.envs]
        if any(s is None for s in snaps):
            return None
        arrays = {
            "obs": self.obs.copy(),
            "pending_reset": self.pending_reset.copy(),
            "ep_return": self.ep_return.copy(),
            "ep_length": self.ep_length.copy(),
            "autoreset": self.envs.autoreset.copy(),
        }
        return {"envs": snaps}, arrays

    def set_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if len(meta["envs"]) != self.num_envs:
            raise ValueError(f"the saved rollout has {len(meta['envs'])} envs, this one {self.num_envs}")
        for env, snap in zip(self.envs.envs, meta["envs"]):
            restore_env(env, snap)
        self.obs = np.asarray(arrays["obs"], self.dtype).copy()
        self.pending_reset = np.asarray(arrays["pending_reset"], bool).copy()
        self.ep_return = np.asarray(arrays["ep_return"], np.float64).copy()
        self.ep_length = np.asarray(arrays["ep_length"], np.int64).copy()
        self.envs.autoreset = np.asarray(arrays["autoreset"], bool).copy()

    def close(self) -> None:
        self.envs.close()


class Evaluator:
    """Greedy episodes on fixed seeds, played side by side: one batched action call per step for the
    episodes still running (finished ones are no longer stepped)."""

    def __init__(self, spec: EnvSpec, seeds: list[int], dtype: str = "float32"):
        if not seeds:
            raise ValueError("an evaluation needs at least one episode")
        self.seeds = list(seeds)
        self.dtype = np.dtype(dtype)
        self.envs = [make_env(spec) for _ in self.seeds]
        limit = spec.max_episode_steps or (self.envs[0].spec.max_episode_steps if self.envs[0].spec else None)
        self.max_steps = int(limit or FALLBACK_MAX_STEPS)

    def run(self, act: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(returns, lengths) of one episode per seed; ``act(obs (n, d)) -> actions (n,)``."""
        n = len(self.seeds)
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, self.seeds)]).astype(self.dtype)
        returns, lengths = np.zeros(n), np.zeros(n, np.int64)
        running = np.arange(n)
        for _ in range(self.max_steps):
            actions = np.asarray(act(obs), dtype=np.int64)
            keep, next_obs = [], []
            for j, i in enumerate(running):
                o, r, terminated, truncated, _ = self.envs[i].step(int(actions[j]))
                returns[i] += r
                lengths[i] += 1
                if not (terminated or truncated):
                    keep.append(j)
                    next_obs.append(o)
            if not keep:
                break
            running = running[keep]
            obs = np.asarray(next_obs, dtype=self.dtype)
        return returns, lengths

    def close(self) -> None:
        for env in self.envs:
            env.close()
