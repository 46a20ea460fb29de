"""The neutral DQN driver: the Gymnasium loop that feeds core's transitions and minibatches to a
backend's DQNAgent; epsilon-greedy acting, updates, target syncs, evaluation, logs, checkpoints.

Per vector step (``env.num_envs`` envs side by side): core draws the exploration coins, the backend
is asked for Q-values once for all envs (skipped when every env explores), core picks the actions,
the envs step, and only real transitions enter the replay buffer. Every ``train_freq`` environment
steps (after ``learning_starts``) ``gradient_steps`` updates run on minibatches core samples; every
``target_update`` updates the target is synced. All randomness is core's, from the run seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from core import checkpoint, registry
from core.batches import make_rng
from core.envs import EnvInfo, Evaluator, VectorRollout, env_info, episode_seeds
from core.errors import CheckpointError, TrainingError
from core.exploration import EpsilonGreedy, epsilon_at, greedy
from core.replay import ReplayBuffer
from core.runs import MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, prepare_run_dir, require_run_dir, write_json
from core.schedules import lr_at
from core.specs import DQNRunSpec, load_json, save_json, to_dict
from core.weights import QNET_PREFIX, init_qnet, qnet_shapes
from tasks.progress import progress_bar

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
    solved_at: int | None = None  # environment steps when an evaluation first reached dqn.stop_return
    run_dir: Path | None = None
    actions: list[np.ndarray] = field(default_factory=list)  # with record=True: the actions of every vector step
    q_values: list[np.ndarray] = field(default_factory=list)  # with record=True: each step's Q-values (nan = not asked)


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
    result.json and learning_curve.png. ``record`` keeps every step's actions and Q-values (parity L4);
    ``max_updates`` stops after that many updates, the schedules unchanged; ``test=False`` skips the final
    held-out evaluation."""
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    d = spec.dqn
    info = env_info(spec.env)
    weights = init_qnet(spec.qnet.hidden, info.obs_dim, info.num_actions, spec.seed, spec.dtype)
    if init_weights:
        weights.update({k: np.asarray(v).astype(spec.dtype) for k, v in init_weights.items()})
    agent = build_agent(backend, spec, info, weights, device)

    log = None
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
        log = MetricLog(run_dir / "metrics.jsonl")

    rollout = VectorRollout(spec.env, spec.seed, spec.dtype)
    evaluator = Evaluator(spec.env, episode_seeds(spec.env.eval_seed, d.eval_episodes), spec.dtype)
    buffer = ReplayBuffer(d.buffer_size, info.obs_dim, spec.dtype)
    explorer = EpsilonGreedy(spec.seed, info.num_actions)
    replay_rng = make_rng(spec.seed, "replay")
    horizon = planned_updates(spec)
    n_envs = spec.env.num_envs

    losses: list[float] = []
    ep_returns: list[float] = []
    ep_steps: list[int] = []
    evals: list[dict[str, Any]] = []
    actions_log: list[np.ndarray] = []
    q_log: list[np.ndarray] = []
    env_steps = updates = 0
    next_train = d.train_freq
    next_eval = d.eval_every if d.eval_every else None
    best: tuple[float, dict[str, np.ndarray], int] | None = None  # (eval mean, weights, env steps)
    solved_at: int | None = None
    last_loss_i = last_ep_i = 0
    t_start = time.perf_counter()
    bar = progress_bar(total=d.total_steps, desc=f"{backend.NAME} dqn {spec.env.id}", enabled=progress)
    bar.unit = "env step"

    def do_eval() -> dict[str, Any]:
        nonlocal best, last_loss_i, last_ep_i
        res = evaluate(agent, evaluator)
        recent_losses = losses[last_loss_i:]
        recent_eps = ep_returns[last_ep_i:]
        last_loss_i, last_ep_i = len(losses), len(ep_returns)
        wall = time.perf_counter() - t_start
        record_ = {
            "env_steps": env_steps,
            "updates": updates,
            "epsilon": epsilon_at(d.epsilon_start, d.epsilon_end, d.epsilon_fraction, d.total_steps, env_steps),
            "lr": lr_at(spec.schedule, spec.optim.lr, max(updates - 1, 0), horizon),
            "loss": float(np.mean(recent_losses)) if recent_losses else float("nan"),
            "train_return": float(np.mean(recent_eps)) if recent_eps else float("nan"),
            "train_episodes": len(ep_returns),
            "eval_return": res["return_mean"],
            "eval_return_std": res["return_std"],
            "eval_return_min": res["return_min"],
            "wall_s": wall,
            "steps_per_s": env_steps / wall if wall > 0 else 0.0,
        }
        evals.append(record_)
        if best is None or res["return_mean"] > best[0] or not d.keep_best:
            best = (res["return_mean"], agent.get_weights(), env_steps)
        if log is not None:
            log.append(record_)
            meta = checkpoint_meta(spec, backend, info, env_steps=best[2], updates=updates, eval_return=best[0])
            checkpoint.save(run_dir / MODEL_FILE, best[1], meta)
        bar.set_postfix(eval=f"{res['return_mean']:.1f}", refresh=False)
        return res

    try:
        while env_steps < d.total_steps:
            eps = epsilon_at(d.epsilon_start, d.epsilon_end, d.epsilon_fraction, d.total_steps, env_steps)
            explore, random_actions = explorer.draw(n_envs, eps)
            q = None if explore.all() else agent.act_values(rollout.obs)
            actions = explorer.select(q, explore, random_actions)
            if record:
                actions_log.append(actions)
                q_log.append(np.full((n_envs, info.num_actions), np.nan) if q is None else q)
            tr = rollout.step(actions)
            buffer.add(tr.obs, tr.actions, tr.rewards, tr.next_obs, tr.terminated)
            env_steps += len(tr)
            bar.update(len(tr))
            if tr.episode_returns:
                ep_returns.extend(tr.episode_returns)
                ep_steps.extend([env_steps] * len(tr.episode_returns))
                bar.set_postfix(ret=f"{np.mean(ep_returns[-20:]):.1f}", refresh=False)
            while next_train <= env_steps:
                if next_train >= d.learning_starts and len(buffer):
                    for _ in range(d.gradient_steps):
                        loss = agent.update(buffer.sample(d.batch_size, replay_rng), lr_at(spec.schedule, spec.optim.lr, updates, horizon))
                        if not math.isfinite(loss):
                            raise TrainingError(
                                f"TD loss became {loss} at update {updates + 1} ({env_steps} env steps); training stopped. "
                                "Lower optim.lr, set optim.clip_norm or use dqn.loss=huber."
                            )
                        losses.append(loss)
                        updates += 1
                        if updates % d.target_update == 0:
                            agent.sync_target(d.tau)
                        if max_updates is not None and updates >= max_updates:
                            break
                next_train += d.train_freq
                if max_updates is not None and updates >= max_updates:
                    break
            if max_updates is not None and updates >= max_updates:
                break
            if next_eval is not None and env_steps >= next_eval:
                next_eval += d.eval_every
                res = do_eval()
                if d.stop_return and res["return_mean"] >= d.stop_return:
                    solved_at = env_steps
                    break
        if not evals or evals[-1]["env_steps"] != env_steps:
            do_eval()  # the last weights are a candidate too
    finally:
        bar.close()
        rollout.close()
        evaluator.close()
    wall = time.perf_counter() - t_start

    assert best is not None
    kept = best[1] if d.keep_best else agent.get_weights()
    agent.set_weights(kept)
    test_res: dict[str, Any] = {}
    if test:
        tester = Evaluator(spec.env, episode_seeds(spec.env.test_seed, d.test_episodes), spec.dtype)
        try:
            test_res = {"seed": spec.env.test_seed, **evaluate(agent, tester)}
        finally:
            tester.close()
    result = DQNResult(
        losses=losses,
        episode_returns=ep_returns,
        episode_steps=ep_steps,
        evals=evals,
        test=test_res,
        weights=kept,
        env_steps=env_steps,
        updates=updates,
        wall_s=wall,
        steps_per_s=env_steps / wall if wall > 0 else 0.0,
        solved_at=solved_at,
        run_dir=run_dir,
        actions=actions_log,
        q_values=q_log,
    )
    if run_dir is not None:
        write_json(run_dir / RESULT_FILE, {
            "task": spec.task,
            "backend": backend.NAME,
            "device": device,
            "versions": backend.versions(),
            "env_id": info.id,
            "env_steps": env_steps,
            "updates": updates,
            "episodes": len(ep_returns),
            "wall_s": wall,
            "steps_per_s": result.steps_per_s,
            "solved_at": solved_at,
            "kept": {"env_steps": best[2], "eval_return": best[0]} if d.keep_best else "last",
            "test": test_res,
            "history": evals,
        })
        plot_learning_curve(result, run_dir / CURVE_FILE, f"{spec.env.id} DQN ({backend.NAME}, seed {spec.seed})")
    return result


def plot_learning_curve(result: DQNResult, path: Path, title: str) -> None:
    """Training episode returns (and their moving average) and greedy evaluations vs environment steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.runs import atomic_write_bytes
    import io

    fig, ax = plt.subplots(figsize=(7, 4))
    if result.episode_returns:
        x, y = np.array(result.episode_steps), np.array(result.episode_returns)
        ax.plot(x, y, ".", ms=2, alpha=0.3, color="tab:blue", label="training episode")
        k = min(20, len(y))
        ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), color="tab:blue", label=f"training, mean of {k}")
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
    if spec.task != "dqn":
        raise CheckpointError(f"{run_dir} holds a {spec.task!r} run, not a DQN agent")
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    info = EnvInfo(spec.env.id, int(meta["obs_dim"]), int(meta["num_actions"]), None)
    online = {k: v for k, v in weights.items() if k.startswith(QNET_PREFIX + ".")}
    checkpoint.check_fits(online, qnet_shapes(spec.qnet.hidden, info.obs_dim, info.num_actions), "the run's Q-network")
    return LoadedRun(spec, online, meta, info)


def load_agent(run: LoadedRun, backend_name: str | None, device: str = "cpu"):
    backend = registry.get_backend(backend_name, device)
    return build_agent(backend, run.spec, run.info, run.weights, registry.resolve_device(backend, device))


def evaluate_run(
    run_dir: Path, backend_name: str | None = None, device: str = "cpu", episodes: int | None = None, seed: int | None = None
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
    return {"env_id": run.spec.env.id, "backend": registry.resolve_name(backend_name), "trained_in": run.meta["backend"],
            "episodes": episodes, "seed": seed, **res}


NATIVE_SUFFIX = {"torch": ".pt", "tf": ".keras"}


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
