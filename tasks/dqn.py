"""The neutral DQN driver: the Gymnasium loop that feeds core's transitions and minibatches to a
backend's DQNAgent; epsilon-greedy acting, updates, target syncs, evaluation, logs, checkpoints.

Per vector step (``env.num_envs`` envs side by side): core draws the exploration coins, the backend
is asked for Q-values once for all envs (skipped when every env explores), core picks the actions,
the envs step, and only real transitions enter the replay buffer. Every ``train_freq`` environment
steps (after ``learning_starts``) ``gradient_steps`` updates run on minibatches core samples; every
``target_update`` updates the target is synced. All randomness is core's, from the run seed.
"""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry, runstate
from dualkit.core.batches import make_rng
from dualkit.core.envs import EnvInfo, Evaluator, VectorRollout, env_info, episode_seeds
from dualkit.core.errors import CheckpointError, Interrupted, RunError, SpecError, TrainingError
from dualkit.core.exploration import EpsilonGreedy, epsilon_at, greedy
from dualkit.core.interrupt import StopSignal
from dualkit.core.replay import ReplayBuffer
from dualkit.core.runs import MODEL_FILE, SPEC_FILE, one_writer, prepare_run_dir, require_run_dir
from dualkit.core.runstate import RunState
from dualkit.core.schedules import lr_at
from dualkit.core.specs import load_json, save_json, to_dict
from dualkit.core.weights import QNET_PREFIX, TARGET_PREFIX, init_qnet, qnet_shapes
from dualkit.tasks.base import NATIVE_SUFFIX
from dualkit.tasks.dqn_spec import DQNRunSpec
from dualkit.tasks.loop import Cadence, RunLog, check_finite, interrupted
from dualkit.tasks.progress import progress_bar

CURVE_FILE = "learning_curve.png"


@dataclass
class DQNResult:
    losses: list[float]  # one per update, in order
    episode_returns: list[float]  # training episodes, in the order they finished
    episode_steps: list[int]  # environment steps when each of them finished
    evals: list[dict[str, Any]]  # the periodic greedy evaluations (also the lines of metrics.jsonl)
    test: dict[str, Any]  # the final greedy evaluation on held-out seeds (empty with test=False)
    weights: dict[str, np.ndarray]  # the weights kept (best-evaluated or last, see dqn.keep_best)
    env_steps: int
    updates: int
    wall_s: float
    steps_per_s: float  # environment steps per second of the whole run (acting, training, evaluating)
    eval_s: float = 0.0  # of wall_s, the time spent in the periodic greedy evaluations
    solved_at: int | None = None  # environment steps when an evaluation first reached dqn.stop_return
    run_dir: Path | None = None
    actions: list[np.ndarray] = field(default_factory=list)  # with record=True: the actions of every vector step
    q_values: list[np.ndarray] = field(default_factory=list)  # with record=True: each step's Q-values (nan = not asked)
    # with record=True, per vector step: the envs' terminated and truncated flags of the stored transitions, and the
    # terminated flag the replay buffer holds for them (parity checks that a time limit is stored as non-terminal)
    ends: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # segments (backend per session) and, after a resume, where from


def planned_updates(spec: DQNRunSpec) -> int:
    """Updates a full run makes (for the learning-rate schedule's horizon)."""
    d = spec.dqn
    # rounds run at env steps k * train_freq (k >= 1) that are >= learning_starts and <= total_steps
    first = max(1, -(-d.learning_starts // d.train_freq))
    rounds = max(0, d.total_steps // d.train_freq - first + 1)
    return max(1, rounds * d.gradient_steps)


def build_agent(backend: ModuleType, spec: DQNRunSpec, info: EnvInfo, weights: dict[str, np.ndarray], device: str):
    d = spec.dqn
    return backend.DQNAgent(
        spec.qnet, info.obs_dim, info.num_actions, weights, spec.optim, d.gamma, d.loss, d.double, spec.dtype, device
    )


def greedy_policy(agent):
    """The agent's greedy policy for a batch of observations (argmax taken in core)."""
    return lambda obs: greedy(agent.act_values(obs))


def evaluate(agent, evaluator: Evaluator) -> dict[str, Any]:
    returns, lengths = evaluator.run(greedy_policy(agent))
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "returns": [float(r) for r in returns],
        "lengths": [int(n) for n in lengths],
    }


def checkpoint_meta(spec: DQNRunSpec, backend: ModuleType, info: EnvInfo, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "dqn",
        "spec": to_dict(spec),
        "backend": backend.NAME,
        "versions": backend.versions(),
        "env_id": info.id,
        "obs_dim": info.obs_dim,
        "num_actions": info.num_actions,
        **extra,
    }


@one_writer
def train(
    spec: DQNRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    init_weights: dict[str, np.ndarray] | None = None,
    record: bool = False,
    max_updates: int | None = None,
    test: bool = True,
) -> DQNResult:
    """Train ``spec`` on one backend. With ``run_dir`` it writes spec.json, metrics.jsonl, model.safetensors,
    run checkpoints (for :func:`resume`), result.json and learning_curve.png. ``record`` keeps every step's
    actions and Q-values (parity L4); ``max_updates`` stops after that many updates, the schedules
    unchanged; ``test=False`` skips the final held-out evaluation."""
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    info = env_info(spec.env)
    weights = init_qnet(spec.qnet.hidden, info.obs_dim, info.num_actions, spec.seed, spec.dtype)
    if init_weights:
        weights.update({k: np.asarray(v).astype(spec.dtype) for k, v in init_weights.items()})
    agent = build_agent(backend, spec, info, weights, device)
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
    loop = DQNLoop(
        spec,
        backend,
        device,
        agent,
        info,
        RunState(task=spec.task),
        run_dir,
        progress=progress,
        record=record,
        max_updates=max_updates,
        test=test,
    )
    return loop.run()


def _buffer_note(buffer: ReplayBuffer, saved: bool) -> str:
    size = f"{len(buffer):,} transitions, {buffer.nbytes / 2**20:.1f} MB"
    return (
        f"replay buffer ({size}) included"
        if saved
        else f"replay buffer ({size}) not included: dqn.checkpoint_buffer=false"
    )


@dataclass
class DQNLoop:
    """One DQN run from ``state`` on: a fresh state, or one restored from a run checkpoint whose tensors
    ``extra`` (replay buffer, rollout, best weights) are passed in. :meth:`run` trains and returns the result.

    What a run checkpoint holds (core.runstate): the online and target weights, the optimizer state,
    ``state.step`` = updates with one loss each, the evaluations as history, the explore and replay
    generators, and in ``state.counters`` the loop's position (env steps, next train/eval points, training
    episodes, best evaluation, wall time) with every env's state (core.envs.snapshot_env). Checkpoints
    are written at safe points between two vector steps: every ``dqn.checkpoint_every_steps`` env steps,
    every ``dqn.checkpoint_every_minutes``, at the end and on SIGINT/SIGTERM.

    ``state.counters`` is the loop's position as run checkpoints store it; its keys are a file format
    (older checkpoints resume with them), so the loop reads and writes that dict rather than a copy:
    ``env_steps``, ``next_train``, ``next_eval`` (None: no periodic evaluation), ``solved_at``, ``done``,
    ``eval_s``, ``wall_s``, ``last_loss_i``/``last_ep_i`` (the losses and episodes already averaged into an
    evaluation record), ``ep_returns``/``ep_steps``, ``best`` (the kept evaluation), ``refill_until`` (no
    updates before this many env steps after a resume without the buffer), ``segments`` (one per session),
    and from the first checkpoint on ``buffer`` and ``rollout`` (their states; None when not saved).
    """

    spec: DQNRunSpec
    backend: ModuleType
    device: str
    agent: Any
    info: EnvInfo
    state: RunState
    run_dir: Path | None
    progress: bool = True
    record: bool = False  # keep every step's actions and Q-values (parity L4)
    max_updates: int | None = None  # stop after this many updates, the schedules unchanged
    test: bool = True  # evaluate the kept weights on the held-out seeds at the end
    extra: InitVar[dict[str, np.ndarray] | None] = None

    rollout: VectorRollout = field(init=False)
    evaluator: Evaluator = field(init=False)
    buffer: ReplayBuffer = field(init=False)
    explorer: EpsilonGreedy = field(init=False)
    replay_rng: np.random.Generator = field(init=False)
    horizon: int = field(init=False)  # the learning-rate schedule's length in updates
    best_weights: dict[str, np.ndarray] | None = field(init=False, default=None)
    actions: list[np.ndarray] = field(init=False, default_factory=list)
    q_values: list[np.ndarray] = field(init=False, default_factory=list)
    ends: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(init=False, default_factory=list)
    log: RunLog = field(init=False)
    cadence: Cadence = field(init=False)
    stop: StopSignal | None = field(init=False, default=None)
    bar: Any = field(init=False, default=None)
    meta: dict[str, Any] = field(init=False)  # what every run checkpoint's metadata says about the run
    wall_before: float = field(init=False)  # wall seconds of the sessions before this one
    t_start: float = field(init=False)

    def __post_init__(self, extra: dict[str, np.ndarray] | None) -> None:
        spec, d = self.spec, self.spec.dqn
        self.rollout = VectorRollout(spec.env, spec.seed, spec.dtype)
        self.evaluator = Evaluator(spec.env, episode_seeds(spec.env.eval_seed, d.eval_episodes), spec.dtype)
        self.buffer = ReplayBuffer(d.buffer_size, self.info.obs_dim, spec.dtype)
        self.explorer = EpsilonGreedy(spec.seed, self.info.num_actions)
        self.replay_rng = make_rng(spec.seed, "replay")
        self.horizon = planned_updates(spec)
        c = self.counters
        if not c:
            c.update(
                env_steps=0,
                next_train=d.train_freq,
                next_eval=d.eval_every or None,
                solved_at=None,
                done=False,
                eval_s=0.0,
                wall_s=0.0,
                last_loss_i=0,
                last_ep_i=0,
                ep_returns=[],
                ep_steps=[],
                best=None,
                refill_until=0,
                segments=[],
            )
        else:
            self._restore(extra or {})
        c["segments"].append(
            {
                "backend": self.backend.NAME,
                "device": self.device,
                "from_step": self.state.step,
                "from_env_steps": c["env_steps"],
            }
        )
        self.meta = checkpoint_meta(spec, self.backend, self.info) if self.run_dir is not None else {}
        self.cadence = Cadence(d.checkpoint_every_steps, d.checkpoint_every_minutes, c["env_steps"])
        self.wall_before = c["wall_s"]
        self.t_start = time.perf_counter()

    def _restore(self, extra: dict[str, np.ndarray]) -> None:
        """A resumed run: put every generator, env and buffer back where the checkpoint had them."""
        spec, c = self.spec, self.counters
        runstate.restore_rng(self.explorer.rng, self.state.rngs["explore"])
        runstate.restore_rng(self.replay_rng, self.state.rngs["replay"])
        if c.get("buffer") is not None:
            self.buffer.load_state(c["buffer"], extra["replay.rows"])
        else:  # checkpoint_buffer=false: refill before updating again
            c["refill_until"] = c["env_steps"] + spec.dqn.learning_starts
        if c.get("rollout") is not None:
            self.rollout.set_state(c["rollout"], _part(extra, "rollout."))
        else:  # an env dualkit cannot snapshot: its episodes in progress were lost; new ones start here
            self.rollout.close()
            self.rollout = VectorRollout(spec.env, spec.seed + 1_000_003 * len(c["segments"]), spec.dtype)
        if c["best"] is not None:
            self.best_weights = _part(extra, "best.")

    @property
    def counters(self) -> dict[str, Any]:
        return self.state.counters

    @property
    def losses(self) -> list[float]:
        """The TD loss of every update so far (the run state's step losses)."""
        return self.state.step_losses

    @property
    def evals(self) -> list[dict[str, Any]]:
        """The periodic evaluation records so far (the run state's history)."""
        return self.state.history

    def wall(self) -> float:
        """Wall seconds of the whole run, earlier sessions included."""
        return self.wall_before + time.perf_counter() - self.t_start

    def limit_reached(self) -> bool:
        return self.max_updates is not None and len(self.losses) >= self.max_updates

    def run(self) -> DQNResult:
        """Train, then evaluate the kept weights on the held-out seeds; with a run folder also write the model,
        run checkpoints, metrics.jsonl, TensorBoard events, result.json and the learning curve."""
        self.log = RunLog(self.run_dir)
        try:
            self.loop()
            return self.finish()
        finally:
            self.log.close()

    def loop(self) -> None:
        """The Gymnasium loop from the current position to the end of the budget, the early stop or
        ``max_updates``: act, store, learn, evaluate, checkpoint; then a last evaluation and checkpoint."""
        d, c = self.spec.dqn, self.counters
        n_envs = self.spec.env.num_envs
        self.bar = progress_bar(
            total=d.total_steps, desc=f"{self.backend.NAME} dqn {self.spec.env.id}", enabled=self.progress
        )
        self.bar.unit = "env step"
        self.bar.update(c["env_steps"])
        try:
            with StopSignal(enabled=self.run_dir is not None) as self.stop:
                if self.run_dir is not None and not runstate.list_checkpoints(self.run_dir):
                    self.save_run()  # step 0: from the first moment on, the run folder is resumable
                while c["env_steps"] < d.total_steps and not c["done"]:
                    # Act: core draws the exploration coins; Q-values are asked only when some env acts greedily.
                    eps = epsilon_at(d.epsilon_start, d.epsilon_end, d.epsilon_fraction, d.total_steps, c["env_steps"])
                    explore, random_actions = self.explorer.draw(n_envs, eps)
                    q = None if explore.all() else self.agent.act_values(self.rollout.obs)
                    actions = self.explorer.select(q, explore, random_actions)
                    if self.record:
                        self.actions.append(actions)
                        self.q_values.append(np.full((n_envs, self.info.num_actions), np.nan) if q is None else q)
                    tr = self.rollout.step(actions)
                    self.buffer.add(tr.obs, tr.actions, tr.rewards, tr.next_obs, tr.terminated)
                    if self.record:
                        self.ends.append(
                            (tr.terminated.copy(), tr.truncated.copy(), self.buffer.newest(len(tr)).terminated)
                        )
                    env_steps = c["env_steps"] = c["env_steps"] + len(tr)
                    self.bar.update(len(tr))
                    if tr.episode_returns:
                        c["ep_returns"].extend(tr.episode_returns)
                        c["ep_steps"].extend([env_steps] * len(tr.episode_returns))
                        self.bar.set_postfix(ret=f"{np.mean(c['ep_returns'][-20:]):.1f}", refresh=False)

                    # Learn: a round of gradient_steps updates at every train_freq env steps that have passed,
                    # once learning_starts (or a resume's refill) is behind.
                    start = max(d.learning_starts, c["refill_until"])
                    while c["next_train"] <= env_steps and not self.limit_reached():
                        if c["next_train"] >= start and len(self.buffer):
                            for _ in range(d.gradient_steps):
                                self.update(env_steps)
                                if self.limit_reached():
                                    break
                        c["next_train"] += d.train_freq
                    if self.limit_reached():
                        break

                    if c["next_eval"] is not None and env_steps >= c["next_eval"]:
                        c["next_eval"] += d.eval_every
                        res = self.evaluate()
                        if d.stop_return and res["return_mean"] >= d.stop_return:
                            c["solved_at"], c["done"] = env_steps, True
                    # The checkpoint at the run's end is written below, after the last evaluation.
                    if (
                        self.run_dir is not None
                        and not c["done"]
                        and env_steps < d.total_steps
                        and (self.stop.requested or self.cadence.due(env_steps))
                    ):
                        path = self.save_run()
                        if self.stop.requested:
                            raise self.stopped_error(path)
                if not self.evals or self.evals[-1]["env_steps"] != c["env_steps"]:
                    self.evaluate()  # the last weights are a candidate too
                # A run cut by max_updates is not done: a resume may train it on.
                c["done"] = not self.limit_reached() or c["env_steps"] >= d.total_steps
                if self.run_dir is not None:
                    self.save_run()
        finally:
            self.bar.close()
            self.rollout.close()
            self.evaluator.close()

    def update(self, env_steps: int) -> None:
        """One gradient step on a minibatch core samples from the buffer; the target follows every
        ``target_update`` updates."""
        d = self.spec.dqn
        lr = lr_at(self.spec.schedule, self.spec.optim.lr, len(self.losses), self.horizon)
        loss = self.agent.update(self.buffer.sample(d.batch_size, self.replay_rng), lr)
        check_finite(
            loss,
            "TD loss",
            f"update {len(self.losses) + 1} ({env_steps} env steps)",
            "training stopped. Lower optim.lr, set optim.clip_norm or use dqn.loss=huber.",
        )
        self.losses.append(loss)
        self.log.step(len(self.losses), {"loss": loss, "lr": lr})
        if len(self.losses) % d.target_update == 0:
            self.agent.sync_target(d.tau)

    def evaluate(self) -> dict[str, Any]:
        """A greedy evaluation of the current weights: its record goes to the history and metrics.jsonl, and
        the weights become the kept ones (model.safetensors) when they are the best so far (or with
        ``dqn.keep_best=false``, always)."""
        d, c = self.spec.dqn, self.counters
        t_eval = time.perf_counter()
        res = evaluate(self.agent, self.evaluator)  # the module-level greedy evaluation
        c["eval_s"] += time.perf_counter() - t_eval
        recent_losses = self.losses[c["last_loss_i"] :]
        recent_eps = c["ep_returns"][c["last_ep_i"] :]
        c["last_loss_i"], c["last_ep_i"] = len(self.losses), len(c["ep_returns"])
        env_steps, now = c["env_steps"], self.wall()
        rec = {
            "env_steps": env_steps,
            "updates": len(self.losses),
            "epsilon": epsilon_at(d.epsilon_start, d.epsilon_end, d.epsilon_fraction, d.total_steps, env_steps),
            "lr": lr_at(self.spec.schedule, self.spec.optim.lr, max(len(self.losses) - 1, 0), self.horizon),
            "loss": float(np.mean(recent_losses)) if recent_losses else float("nan"),
            "train_return": float(np.mean(recent_eps)) if recent_eps else float("nan"),
            "train_episodes": len(c["ep_returns"]),
            "eval_return": res["return_mean"],
            "eval_return_std": res["return_std"],
            "eval_return_min": res["return_min"],
            "wall_s": now,
            "steps_per_s": env_steps / now if now > 0 else 0.0,
        }
        self.evals.append(rec)
        if c["best"] is None or res["return_mean"] > c["best"]["eval_return"] or not d.keep_best:
            c["best"] = {"eval_return": res["return_mean"], "env_steps": env_steps}
            self.best_weights = self.agent.get_weights()
        self.log.record(rec, env_steps, prefix="eval/")
        if self.run_dir is not None:
            meta = checkpoint_meta(
                self.spec,
                self.backend,
                self.info,
                env_steps=c["best"]["env_steps"],
                updates=len(self.losses),
                eval_return=c["best"]["eval_return"],
            )
            checkpoint.save(self.run_dir / MODEL_FILE, self.best_weights, meta)
        self.bar.set_postfix(eval=f"{res['return_mean']:.1f}", refresh=False)
        return res

    def save_run(self) -> Path:
        """Write a run checkpoint of the loop as it stands between two vector steps."""
        d, c = self.spec.dqn, self.counters
        c["wall_s"] = self.wall()
        self.state.step = len(self.losses)
        self.state.rngs = {
            "explore": runstate.capture_rng(self.explorer.rng),
            "replay": runstate.capture_rng(self.replay_rng),
        }
        tensors: dict[str, np.ndarray] = {}
        c["buffer"] = None
        if d.checkpoint_buffer:
            c["buffer"], tensors["replay.rows"] = self.buffer.state()
        snap = self.rollout.get_state()
        c["rollout"] = None
        if snap is not None:
            c["rollout"] = snap[0]
            tensors.update({f"rollout.{k}": v for k, v in snap[1].items()})
        if self.best_weights is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
        path = runstate.save(
            self.run_dir,
            self.state,
            self.agent.get_weights(),
            self.agent.get_optimizer_state(),
            meta=self.meta,
            extra=tensors,
            keep=d.keep_checkpoints,
        )
        self.cadence.saved(c["env_steps"])
        return path

    def stopped_error(self, path: Path) -> Interrupted:
        """What the run stops with after Ctrl-C / SIGTERM, once checkpoint ``path`` is written."""
        d, c = self.spec.dqn, self.counters
        where = (
            f"env step {c['env_steps']:,} of {d.total_steps:,}, update {len(self.losses):,}; "
            f"{_buffer_note(self.buffer, d.checkpoint_buffer)}"
        )
        return interrupted(self.stop, path, where, self.run_dir, self.backend.NAME)

    def finish(self) -> DQNResult:
        """The kept weights (best-evaluated or last) into the agent, their held-out test, the result, and with a
        run folder result.json and the learning curve."""
        spec, d, c = self.spec, self.spec.dqn, self.counters
        total_wall = self.wall()
        assert self.best_weights is not None  # the loop's last evaluation always sets them
        kept = self.best_weights if d.keep_best else self.agent.get_weights()
        self.agent.set_weights(kept)
        test_res: dict[str, Any] = {}
        if self.test:
            tester = Evaluator(spec.env, episode_seeds(spec.env.test_seed, d.test_episodes), spec.dtype)
            try:
                test_res = {"seed": spec.env.test_seed, **evaluate(self.agent, tester)}
            finally:
                tester.close()
        env_steps, updates = c["env_steps"], len(self.losses)
        result = DQNResult(
            losses=list(self.losses),
            episode_returns=list(c["ep_returns"]),
            episode_steps=list(c["ep_steps"]),
            evals=self.evals,
            test=test_res,
            weights=kept,
            env_steps=env_steps,
            updates=updates,
            wall_s=total_wall,
            steps_per_s=env_steps / total_wall if total_wall > 0 else 0.0,
            eval_s=c["eval_s"],
            solved_at=c["solved_at"],
            run_dir=self.run_dir,
            actions=self.actions,
            q_values=self.q_values,
            ends=self.ends,
            extra={"segments": c["segments"]},
        )
        if self.run_dir is not None:
            self.log.result(
                spec,
                self.backend,
                self.device,
                c["segments"],
                env_id=self.info.id,
                env_steps=env_steps,
                updates=updates,
                episodes=len(c["ep_returns"]),
                wall_s=total_wall,
                steps_per_s=result.steps_per_s,
                eval_s=c["eval_s"],
                solved_at=c["solved_at"],
                kept=c["best"] if d.keep_best else "last",
                test=test_res,
                history=self.evals,
            )
            plot_learning_curve(
                result, self.run_dir / CURVE_FILE, f"{spec.env.id} DQN ({self.backend.NAME}, seed {spec.seed})"
            )
        return result


def _part(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The tensors under ``prefix``, named without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# Fields a resumed run may change: the budget (more env steps, or fewer down to those already taken; the
# epsilon and learning-rate schedules then follow the new total), the early stop, and checkpointing.
RESUMABLE_FIELDS = (
    "dqn.total_steps",
    "dqn.stop_return",
    "dqn.checkpoint_every_steps",
    "dqn.checkpoint_every_minutes",
    "dqn.keep_checkpoints",
    "dqn.checkpoint_buffer",
)


@one_writer(create=False)
def resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> DQNResult:
    """Continue a DQN run from its newest run checkpoint, in place.

    ``backend_name`` defaults to the backend that wrote the checkpoint; the other one continues the run
    (hand-over) from the canonical online and target weights and optimizer state. The spec is the run's
    spec.json with ``overrides``; only :data:`RESUMABLE_FIELDS` may differ from the checkpointed spec.
    Every check runs before anything in the run folder is written: a refused resume leaves it as it was.
    """
    req = runstate.open_for_resume(run_dir, "dqn", "dqn", "DQN", overrides, RESUMABLE_FIELDS)
    run_dir, spec, ckpt, st, c = req.run_dir, req.spec, req.ckpt, req.ckpt.state, req.ckpt.state.counters
    if "env_steps" not in c:
        raise CheckpointError(f"{ckpt.path} has no DQN loop state in its counters; the file is damaged")
    d = spec.dqn
    solved = c["solved_at"] is not None and d.stop_return > 0 and c["best"]["eval_return"] >= d.stop_return
    if c["done"] and (solved or c["env_steps"] >= d.total_steps):
        why = (
            f"it reached dqn.stop_return={d.stop_return} at {c['solved_at']} env steps; to train on, resume with "
            f"--set dqn.stop_return=0 --set dqn.total_steps=N (N > {c['env_steps']})"
            if solved
            else f"{c['env_steps']} env steps of {d.total_steps}; to train it longer, resume with "
            f"--set dqn.total_steps=N (N > {c['env_steps']})"
        )
        raise RunError(f"{run_dir} is already complete ({why})")
    if d.total_steps < c["env_steps"]:
        raise SpecError(
            f"cannot resume: dqn.total_steps={d.total_steps} but the run has taken {c['env_steps']} env steps; "
            f"dqn.total_steps must be at least {c['env_steps']}"
        )
    backend = registry.get_backend(backend_name or ckpt.backend, device)
    device = registry.resolve_device(backend, device)
    info = env_info(spec.env)
    if (info.obs_dim, info.num_actions) != (ckpt.meta.get("obs_dim"), ckpt.meta.get("num_actions")):
        raise CheckpointError(
            f"{spec.env.id} no longer has the spaces the run was trained on "
            f"(obs {ckpt.meta.get('obs_dim')}, actions {ckpt.meta.get('num_actions')})"
        )
    shapes = qnet_shapes(spec.qnet.hidden, info.obs_dim, info.num_actions)
    checkpoint.check_fits(
        ckpt.weights,
        {**shapes, **qnet_shapes(spec.qnet.hidden, info.obs_dim, info.num_actions, TARGET_PREFIX)},
        "the run's Q-networks",
    )
    runstate.check_optimizer_state(ckpt, spec.optim, list(shapes))
    backend.seed(spec.seed)
    agent = build_agent(backend, spec, info, ckpt.weights, device)
    agent.set_optimizer_state(ckpt.optim)

    # Every check passed: from here on the run folder is written.
    runstate.reopen_run_dir(req, st.history)
    resumed = {"resumed_from": str(ckpt.path), "resumed_step": st.step, "skipped": ckpt.skipped}  # before it moves
    notes = []
    if c.get("buffer") is None:
        notes.append(
            f"the checkpoint has no replay buffer; {d.learning_starts} transitions are collected before updates resume"
        )
    if c.get("rollout") is None:
        notes.append(
            f"warning: {spec.env.id}'s state cannot be saved; the episodes in progress start over, so this run "
            "no longer matches an uninterrupted one step for step"
        )
    runstate.report_resume(
        req, backend.NAME, f"env step {c['env_steps']:,} (update {st.step:,})", notes, quiet=not progress
    )
    c["done"] = False
    result = DQNLoop(spec, backend, device, agent, info, st, run_dir, progress=progress, extra=ckpt.extra).run()
    result.extra.update(resumed)
    return result


def plot_learning_curve(result: DQNResult, path: Path, title: str) -> None:
    """Training episode returns (and their moving average) and greedy evaluations vs environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from dualkit.core.runs import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4))
    if result.episode_returns:
        x, y = np.array(result.episode_steps), np.array(result.episode_returns)
        ax.plot(x, y, ".", ms=2, alpha=0.3, color="tab:blue", label="training episode")
        k = min(20, len(y))
        ax.plot(
            x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), color="tab:blue", label=f"training, mean of {k}"
        )
    if result.evals:
        ex = [e["env_steps"] for e in result.evals]
        em = np.array([e["eval_return"] for e in result.evals])
        es = np.array([e["eval_return_std"] for e in result.evals])
        ax.errorbar(ex, em, yerr=es, fmt="o-", color="tab:orange", capsize=3, label="greedy evaluation")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# -- trained agents: evaluate and port ------------------------------------------------------------------
@dataclass
class LoadedRun:
    spec: DQNRunSpec
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    info: EnvInfo


def load_run(run_dir: Path) -> LoadedRun:
    """A DQN run folder's spec and canonical checkpoint, checked to fit the spec's Q-network."""
    run_dir = require_run_dir(run_dir)
    spec = load_json(run_dir / SPEC_FILE)
    if not isinstance(spec, DQNRunSpec):
        raise CheckpointError(f"{run_dir} holds a {spec.task!r} run, not a DQN agent")
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    if meta.get("kind") != "dqn":  # a spec.json copied from another run: the model is not a Q-network
        raise CheckpointError(
            f"{run_dir / MODEL_FILE} holds a {meta.get('kind')!r} model, but {SPEC_FILE} says a DQN run; "
            "the two come from different runs (restore the run's own spec.json)"
        )
    info = EnvInfo(spec.env.id, int(meta["obs_dim"]), int(meta["num_actions"]), None)
    online = {k: v for k, v in weights.items() if k.startswith(QNET_PREFIX + ".")}
    checkpoint.check_fits(online, qnet_shapes(spec.qnet.hidden, info.obs_dim, info.num_actions), "the run's Q-network")
    return LoadedRun(spec, online, meta, info)


def load_agent(run: LoadedRun, backend_name: str | None, device: str = "cpu"):
    backend = registry.get_backend(backend_name, device)
    return build_agent(backend, run.spec, run.info, run.weights, registry.resolve_device(backend, device))


def evaluate_run(
    run_dir: Path,
    backend_name: str | None = None,
    device: str = "cpu",
    episodes: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Greedy returns of a run's agent in any backend, on seeded episodes (default: the held-out test seeds)."""
    run = load_run(run_dir)
    env_check = env_info(run.spec.env)
    if (env_check.obs_dim, env_check.num_actions) != (run.info.obs_dim, run.info.num_actions):
        raise CheckpointError(f"{run.spec.env.id} no longer has the spaces the agent was trained on")
    agent = load_agent(run, registry.resolve_name(backend_name), device)
    episodes = episodes or run.spec.dqn.test_episodes
    seed = run.spec.env.test_seed if seed is None else seed
    evaluator = Evaluator(run.spec.env, episode_seeds(seed, episodes), run.spec.dtype)
    try:
        res = evaluate(agent, evaluator)
    finally:
        evaluator.close()
    return {
        "env_id": run.spec.env.id,
        "backend": registry.resolve_name(backend_name),
        "trained_in": run.meta["backend"],
        "episodes": episodes,
        "seed": seed,
        **res,
    }


def port_run(run_dir: Path, to: str, out: Path, device: str = "cpu", episodes: int | None = None) -> dict[str, Any]:
    """Write the run's Q-network as backend ``to``'s native artifact and check the port.

    Both the training backend and ``to`` play the same held-out seeded episodes greedily from the same
    canonical checkpoint: the returns must be identical. The Q-values of every observation the source
    agent saw are compared too (worst relative difference), with the greedy actions they imply.
    """
    run = load_run(run_dir)
    to = registry.resolve_name(to)
    out = Path(out)
    if out.suffix != NATIVE_SUFFIX[to]:
        raise TrainingError(f"--out for backend {to!r} must end in {NATIVE_SUFFIX[to]}, got {out.name!r}")
    source = run.meta["backend"]
    src = load_agent(run, source, device)
    dst = load_agent(run, to, device)
    episodes = episodes or run.spec.dqn.test_episodes
    seen: list[np.ndarray] = []

    def src_policy(obs: np.ndarray) -> np.ndarray:
        seen.append(obs.copy())
        return greedy(src.act_values(obs))

    evaluator = Evaluator(run.spec.env, episode_seeds(run.spec.env.test_seed, episodes), run.spec.dtype)
    try:
        ret_src, _ = evaluator.run(src_policy)
        ret_dst, _ = evaluator.run(greedy_policy(dst))
    finally:
        evaluator.close()
    obs = np.concatenate(seen)
    qa, qb = src.act_values(obs), dst.act_values(obs)
    dst.save_native(str(out))
    return {
        "from": source,
        "to": to,
        "artifact": str(out),
        "episodes": episodes,
        "returns_from": [float(r) for r in ret_src],
        "returns_to": [float(r) for r in ret_dst],
        "identical_returns": bool(np.array_equal(ret_src, ret_dst)),
        "observations": len(obs),
        "max_rel_q_diff": float(np.abs(qa - qb).max() / max(np.abs(qa).max(), 1e-30)),
        "same_greedy_actions": float((greedy(qa) == greedy(qb)).mean()),
        "return_from": float(ret_src.mean()),
        "return_to": float(ret_dst.mean()),
    }


def with_budget(spec: DQNRunSpec, **dqn: Any) -> DQNRunSpec:
    """``spec`` with some ``dqn`` fields replaced (tests, parity levels)."""
    return replace(spec, dqn=replace(spec.dqn, **dqn))
