"""The DQN spec (``task = "dqn"``): environment, Q-network, optimizer, schedule and the DQN loop's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualkit.core.specs import (
    EnvSpec,
    OptimSpec,
    QNetSpec,
    ScheduleSpec,
    check_choices,
    optim_checks,
    register_task,
    schedule_checks,
)


@dataclass(frozen=True)
class DQNSpec:
    total_steps: int = 100_000  # environment steps (real transitions, summed over the envs)
    gamma: float = 0.99
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_starts: int = 1_000  # environment steps before the first update
    train_freq: int = 4  # environment steps between two rounds of updates
    gradient_steps: int = 1  # updates per round
    target_update: int = 250  # gradient updates between two target syncs
    tau: float = 1.0  # at each sync: target = tau * online + (1 - tau) * target (1 = hard copy)
    double: bool = False  # double DQN: the online net picks the next action, the target net values it
    loss: str = "huber"  # huber (delta 1) | mse
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_fraction: float = 0.1  # linear decay over this fraction of total_steps
    eval_every: int = 5_000  # environment steps between greedy evaluations (0 = only at the end)
    eval_episodes: int = 10
    test_episodes: int = 20  # the final greedy evaluation on held-out seeds (env.test_seed + i)
    stop_return: float = 0.0  # stop once a greedy evaluation's mean return reaches this (0 = never)
    keep_best: bool = True  # checkpoint the best-evaluated weights rather than the last ones
    # Run checkpoints (RUN/checkpoints/, for `dualkit train --resume`): every this many env steps (0 = off),
    # every this many minutes (0 = off), at the end and on SIGINT/SIGTERM; the newest keep_checkpoints kept.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 5.0
    keep_checkpoints: int = 3
    # The replay buffer goes into each run checkpoint (buffer_size x (2 obs_dim + 3) floats); without it a resumed
    # run refills learning_starts transitions before updating again.
    checkpoint_buffer: bool = True


@dataclass(frozen=True)
class DQNRunSpec:
    task: str = "dqn"
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
    env: EnvSpec = field(default_factory=EnvSpec)
    qnet: QNetSpec = field(default_factory=QNetSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    dqn: DQNSpec = field(default_factory=DQNSpec)


_DQN_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("qnet", "activation"): ("relu", "tanh"),
    ("dqn", "loss"): ("huber", "mse"),
    ("schedule", "name"): ("constant", "step", "cosine"),
}


def _dqn_checks(spec: DQNRunSpec) -> list[tuple[bool, str]]:
    check_choices(spec, _DQN_CHOICES)
    d, e = spec.dqn, spec.env
    return (
        optim_checks(spec.optim)
        + schedule_checks(spec.schedule)
        + [
            (bool(e.id.strip()), "env.id must name a Gymnasium environment, e.g. CartPole-v1"),
            (e.num_envs >= 1, "env.num_envs must be >= 1"),
            (e.max_episode_steps >= 0, "env.max_episode_steps must be >= 0 (0 = the env's own limit)"),
            (e.eval_seed >= 0 and e.test_seed >= 0, "env.eval_seed and env.test_seed must be >= 0"),
            (
                len(spec.qnet.hidden) >= 1 and all(h > 0 for h in spec.qnet.hidden),
                "qnet.hidden needs one or more sizes > 0",
            ),
            (0.0 <= d.gamma <= 1.0, f"dqn.gamma must be in [0, 1], got {d.gamma}"),
            (d.batch_size >= 1, "dqn.batch_size must be >= 1"),
            (
                d.buffer_size >= d.batch_size,
                f"dqn.buffer_size ({d.buffer_size}) must be >= dqn.batch_size ({d.batch_size}): the buffer cannot hold "
                "one batch",
            ),
            (d.total_steps >= 1, "dqn.total_steps must be >= 1"),
            (d.learning_starts >= 0, "dqn.learning_starts must be >= 0"),
            (d.train_freq >= 1 and d.gradient_steps >= 1, "dqn.train_freq and dqn.gradient_steps must be >= 1"),
            (d.target_update >= 1, "dqn.target_update must be >= 1 (gradient updates between target syncs)"),
            (0.0 < d.tau <= 1.0, "dqn.tau must be in (0, 1]"),
            (
                0.0 <= d.epsilon_end <= 1.0 and 0.0 <= d.epsilon_start <= 1.0,
                "dqn.epsilon_start/epsilon_end must be in [0, 1]",
            ),
            (0.0 < d.epsilon_fraction <= 1.0, "dqn.epsilon_fraction must be in (0, 1]"),
            (d.eval_every >= 0, "dqn.eval_every must be >= 0 (0 = evaluate only at the end)"),
            (d.eval_episodes >= 1 and d.test_episodes >= 1, "dqn.eval_episodes and dqn.test_episodes must be >= 1"),
            (d.checkpoint_every_steps >= 0, "dqn.checkpoint_every_steps must be >= 0 (0 = off)"),
            (d.checkpoint_every_minutes >= 0, "dqn.checkpoint_every_minutes must be >= 0 (0 = off)"),
            (d.keep_checkpoints >= 1, "dqn.keep_checkpoints must be >= 1"),
        ]
    )


register_task("dqn", DQNRunSpec, _dqn_checks)
