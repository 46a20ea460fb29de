"""The parity levels for DQN: each returns measured Checks against stated bounds (tasks/parity.py's).

L0 the TD loss vs core's numpy reference; L1 Q-values from the same weights; L2 gradients and L3 the
new weights after one update from the same weights and minibatch; L4 a real CartPole run in both
backends, update by update; L5 the outcome over seeds; port a trained agent played in the other backend.
Used by ``dualkit parity dqn-...``, the benchmarks and tests/parity/test_dqn_parity.py.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import losses as ref_losses
from dualkit.core import optim_ref, registry
from dualkit.core.batches import make_rng
from dualkit.core.exploration import q_margin
from dualkit.core.replay import Batch
from dualkit.core.specs import OptimSpec, QNetSpec
from dualkit.core.weights import QNET_PREFIX, init_qnet, target_names
from dualkit.tasks.dqn_spec import DQNRunSpec
from dualkit.tasks.parity import BACKENDS, Check, bound, check, max_rel_diff, rel_diff

L5_MIN_RETURN = 475.0  # CartPole-v1's "solved" threshold, on the mean of 20 greedy episodes
L5_MIN_SEEDS = 2  # of 3 seeds per backend
OBS_DIM, NUM_ACTIONS = 5, 3  # probe sizes for L0-L3 (not CartPole's, so no axis mix-up can hide)
GAMMA = 0.99

QNET_VARIANTS = {
    "relu-64x64": QNetSpec(hidden=(64, 64), activation="relu"),
    "tanh-32x16x8": QNetSpec(hidden=(32, 16, 8), activation="tanh"),
}
# (loss, double DQN, optimizer): every TD-loss path, with and without global-norm clipping (clip 0.5 is active)
UPDATE_VARIANTS: dict[str, tuple[str, bool, OptimSpec]] = {
    "huber-adam": ("huber", False, OptimSpec(name="adam", lr=1e-3)),
    "huber-double-adam-clip": ("huber", True, OptimSpec(name="adam", lr=1e-3, clip_norm=0.5)),
    "mse-sgd-momentum": ("mse", False, OptimSpec(name="sgd", lr=1e-2, momentum=0.9)),
    "mse-double-adamw-clip": ("mse", True, OptimSpec(name="adamw", lr=1e-3, weight_decay=0.01, clip_norm=0.5)),
}


def probe_td(seed: int, dtype: str, batch: int = 96) -> dict[str, np.ndarray]:
    """Random TD inputs: a third of the rows terminated (no bootstrap), a third truncated by a time limit
    (stored as terminated = 0: they bootstrap), the rest ordinary; TD errors on both sides of Huber's kink."""
    rng = make_rng(seed, "parity-td")
    kind = np.arange(batch) % 3  # 0 terminated, 1 truncated, 2 ordinary
    return {
        "q": rng.normal(0.0, 3.0, (batch, NUM_ACTIONS)).astype(dtype),
        "actions": rng.integers(0, NUM_ACTIONS, batch).astype(np.int64),
        "rewards": rng.normal(0.0, 2.0, batch).astype(dtype),
        "terminated": (kind == 0).astype(dtype),
        "next_q_target": rng.normal(0.0, 3.0, (batch, NUM_ACTIONS)).astype(dtype),
        "next_q_online": rng.normal(0.0, 3.0, (batch, NUM_ACTIONS)).astype(dtype),
    }


def probe_batch(seed: int, dtype: str, batch: int = 64, obs_dim: int = OBS_DIM) -> Batch:
    rng = make_rng(seed, "parity-batch")
    return Batch(
        obs=rng.normal(size=(batch, obs_dim)).astype(dtype),
        actions=rng.integers(0, NUM_ACTIONS, batch).astype(np.int64),
        rewards=rng.normal(1.0, 1.0, batch).astype(dtype),
        next_obs=rng.normal(size=(batch, obs_dim)).astype(dtype),
        terminated=(rng.random(batch) < 0.2).astype(dtype),
    )


def probe_weights(qnet: QNetSpec, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """Online weights, and a different target network (so a mixed-up target cannot pass)."""
    online = init_qnet(qnet.hidden, OBS_DIM, NUM_ACTIONS, seed, dtype)
    target = target_names(init_qnet(qnet.hidden, OBS_DIM, NUM_ACTIONS, seed + 1, dtype))
    return {**online, **target}


def _agents(qnet: QNetSpec, loss: str, double: bool, optim: OptimSpec, dtype: str, device: str, seed: int):
    weights = probe_weights(qnet, seed, dtype)
    return [
        registry.get_backend(name, device).DQNAgent(
            qnet, OBS_DIM, NUM_ACTIONS, weights, optim, GAMMA, loss, double, dtype, device
        )
        for name in BACKENDS
    ], weights


def level0(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Each backend's TD loss (Huber, MSE; double DQN off/on) vs core's numpy reference."""
    p = probe_td(seed, dtype)
    out = []
    for name in BACKENDS:
        backend = registry.get_backend(name, device)
        for kind in ("huber", "mse"):
            for double in (False, True):
                arrays = [p["q"], p["actions"], p["rewards"], p["terminated"], p["next_q_target"]]
                if double:
                    arrays.append(p["next_q_online"])
                got = backend.numpy_loss("td_loss", *arrays, gamma=GAMMA, kind=kind, device=device)
                want = ref_losses.td_loss(*arrays, gamma=GAMMA, kind=kind)
                out.append(
                    check(
                        "L0",
                        f"{name} td {kind}{' double' if double else ''}",
                        rel_diff(got, want),
                        dtype,
                        device,
                        f"{len(p['actions'])} rows: terminated, truncated, ordinary",
                    )
                )
    return out


def level1(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Q-values of torch vs tf from the same canonical weights (max abs diff)."""
    out = []
    obs = probe_batch(seed, dtype, 128).obs
    for variant, qnet in QNET_VARIANTS.items():
        a, b = _agents(qnet, "huber", False, OptimSpec(), dtype, device, seed)[0]
        out.append(
            check(
                "L1",
                variant,
                float(np.abs(a.act_values(obs) - b.act_values(obs)).max()),
                dtype,
                device,
                "max abs Q-value diff",
            )
        )
    return out


def level2_3(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """One update from the same weights and minibatch: loss and gradients torch vs tf (L2); the new weights
    torch vs tf, and each vs core's reference optimizer step from that backend's gradients (L3)."""
    out = []
    batch = probe_batch(seed, dtype)
    qnet = QNET_VARIANTS["relu-64x64"]
    lr = 3e-3
    for variant, (loss, double, optim) in UPDATE_VARIANTS.items():
        agents, w0 = _agents(qnet, loss, double, optim, dtype, device, seed)
        (la, ga), (lb, gb) = (ag.loss_and_grads(batch) for ag in agents)
        worst, tensor = max_rel_diff(gb, ga)
        out.append(
            check("L2", f"{variant}", max(worst, rel_diff(lb, la)), dtype, device, f"loss {la:.5g}, worst: {tensor}")
        )
        online0 = {k: v for k, v in w0.items() if k.startswith(QNET_PREFIX + ".")}
        new = []
        for name, ag, grads in zip(BACKENDS, agents, (ga, gb)):
            ag.update(batch, lr)
            got = {k: v for k, v in ag.get_weights().items() if k.startswith(QNET_PREFIX + ".")}
            ref, _ = optim_ref.step(
                optim,
                {k: v.astype(np.float64) for k, v in online0.items()},
                {k: g.astype(np.float64) for k, g in grads.items()},
                optim_ref.init_state(optim, online0),
                lr,
            )
            worst, tensor = max_rel_diff(got, ref)
            out.append(check("L3", f"{name} {variant} vs reference step", worst, dtype, device, f"worst: {tensor}"))
            target_kept = all(
                np.array_equal(v, w0[k]) for k, v in ag.get_weights().items() if not k.startswith(QNET_PREFIX + ".")
            )
            if not target_kept:
                out.append(Check("L3", f"{name} {variant} target untouched by the update", 1.0, 0.0, False, "", dtype))
            new.append(got)
        worst, tensor = max_rel_diff(new[1], new[0])
        out.append(check("L3", f"{variant} new weights torch vs tf", worst, dtype, device, f"worst: {tensor}"))
    return out


# -- L4: a real run --------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    updates: int  # updates compared
    worst_rel_loss: float
    worst_at: int  # 1-based update of the worst gap
    first_tie: int | None  # first vector step with a greedy choice closer than the tie tolerance (either backend)
    first_mismatch: int | None  # first vector step where the two backends' actions differ
    mismatches_before_tie: int
    tie_margin: float
    tie_env_steps: int | None


def tie_tolerance(dtype: str, device: str, q_scale: float) -> float:
    """Two Q-values closer than this may be ordered differently by the two backends: the L1 bound at this scale."""
    return bound("L1", dtype, device) * max(1.0, q_scale)


def compare_runs(a, b, dtype: str, device: str, min_updates: int) -> Trajectory:
    """a = tf run, b = torch run (the reference), both recorded (train(record=True))."""
    n = min(len(a.losses), len(b.losses), min_updates)
    la, lb = np.array(a.losses[:n]), np.array(b.losses[:n])
    per = np.abs(la - lb) / np.maximum(np.abs(lb), 1e-30)
    first_tie = first_mismatch = tie_env_steps = None
    tie_margin = float("nan")
    mismatches_before_tie = 0
    steps = min(len(a.actions), len(b.actions))
    n_envs = len(b.actions[0]) if steps else 1
    for t in range(steps):
        if first_tie is None:
            for q in (a.q_values[t], b.q_values[t]):
                asked = ~np.isnan(q).any(axis=1)
                if asked.any():
                    m = q_margin(q[asked])
                    tol = tie_tolerance(dtype, device, float(np.abs(q[asked]).max()))
                    if (m < tol).any():
                        first_tie, tie_margin, tie_env_steps = t, float(m.min()), t * n_envs
                        break
        if not np.array_equal(a.actions[t], b.actions[t]):
            if first_mismatch is None:
                first_mismatch = t
            if first_tie is None:
                mismatches_before_tie += 1
        if first_tie is not None and first_mismatch is not None:
            break
    return Trajectory(
        n,
        float(per.max()) if n else float("nan"),
        int(per.argmax()) + 1 if n else 0,
        first_tie,
        first_mismatch,
        mismatches_before_tie,
        tie_margin,
        tie_env_steps,
    )


# float32 runs are chaotic: Adam turns gradient gaps into weight gaps that grow along the run, and from the
# first greedy choice whose two Q-values are closer than their rounding gap the runs part for good. With an
# update every 2 env steps the first 1000 updates come early in the run, before that happens (README, "Why the
# parity settings").
L4_TRAIN_FREQ = 2
L4_MIN_UPDATES = 1000


# Double DQN picks each next state's action by an argmax of the online Q-values, and CartPole's two
# Q-values sit ~0.03 apart: over 256 rows an update, some pair ties to float32 rounding within ~100
# updates, the two backends bootstrap from different actions and the loss jumps (measured on the preset:
# 1.7e-7 up to update 82, 8.7e-3 at update 83, 3.2 by update 963, and actions apart from vector step 207).
# Plain DQN's max is continuous in the Q-values (1.9e-6 over 1000 updates, actions identical throughout),
# so float32 L4 runs the preset without double DQN; float64, whose rounding flips no such tie, keeps it,
# and L0-L3 check double DQN's target and update in both dtypes.
L4_DOUBLE = {"float32": False}


def l4_spec(base: DQNRunSpec, dtype: str, train_freq: int | None = L4_TRAIN_FREQ) -> DQNRunSpec:
    """The preset (schedules unchanged) in ``dtype``, an update every ``train_freq`` env steps, no evaluations
    (and in float32 without double DQN, see L4_DOUBLE)."""
    dqn = replace(base.dqn, eval_every=0, stop_return=0.0, double=L4_DOUBLE.get(dtype, base.dqn.double))
    if train_freq:
        dqn = replace(dqn, train_freq=train_freq)
    return replace(base, dtype=dtype, dqn=dqn)


def level4(
    base: DQNRunSpec,
    dtype: str = "float32",
    device: str = "cpu",
    min_updates: int = 1000,
    train_freq: int | None = L4_TRAIN_FREQ,
) -> tuple[list[Check], Trajectory]:
    """The same seeded CartPole run in both backends: the TD loss of each of the first ``min_updates``
    updates, and the actions taken, step by step, until the first near-tie of two Q-values.
    ``train_freq=None`` keeps the preset's own (see L4_TRAIN_FREQ)."""
    from dualkit.tasks.dqn import train

    spec = l4_spec(base, dtype, train_freq)
    runs = {
        name: train(spec, name, device=device, progress=False, record=True, max_updates=min_updates, test=False)
        for name in BACKENDS
    }
    tr = compare_runs(runs["tf"], runs["torch"], dtype, device, min_updates)
    where = (
        "no near-tie"
        if tr.first_tie is None
        else f"first near-tie at vector step {tr.first_tie} (~{tr.tie_env_steps} env steps, margin {tr.tie_margin:.2e})"
    )
    diverge = (
        "actions identical throughout"
        if tr.first_mismatch is None
        else f"first differing action at vector step {tr.first_mismatch}"
    )
    loss_check = check(
        "L4",
        f"TD loss per update ({tr.updates} updates)",
        tr.worst_rel_loss,
        dtype,
        device,
        f"worst at update {tr.worst_at}; {diverge}; {where}",
    )
    loss_check.passed = loss_check.passed and tr.updates >= min_updates
    actions_check = Check(
        "L4",
        "actions identical until the first near-tie",
        float(tr.mismatches_before_tie),
        0.0,
        tr.mismatches_before_tie == 0,
        f"{diverge}; {where}",
        dtype,
    )
    return [loss_check, actions_check], tr


# -- L4 across time limits ----------------------------------------------------------------------------------
# Whether a time-limit truncation bootstraps is decided by the shared driver (tasks/dqn.py stores the env's
# `terminated`, never `truncated`, as the buffer's terminal flag), so both backends see the same flags and the
# per-update comparison alone cannot tell a wrong driver. This check runs the preset with a time limit short enough
# that episodes hit it during the compared updates, compares the TD loss per update as L4 does, and checks every
# stored transition's flag against the env's own terminated/truncated in each backend's run.
TRUNCATION_MAX_EPISODE_STEPS = 30  # random CartPole episodes last ~22 steps: a quarter of them reach 30
TRUNCATION_UPDATES = 300


def level4_truncation(
    base: DQNRunSpec,
    dtype: str = "float32",
    device: str = "cpu",
    min_updates: int = TRUNCATION_UPDATES,
    max_episode_steps: int = TRUNCATION_MAX_EPISODE_STEPS,
) -> list[Check]:
    """The preset (as L4 runs it) with ``env.max_episode_steps`` set: the TD loss of each update torch vs tf, and
    the terminal flag the replay buffer stores for every transition: the env's ``terminated``, so that truncated
    transitions bootstrap. Fails if no truncation happened before the last compared update."""
    from dualkit.tasks.dqn import train

    spec = l4_spec(base, dtype)
    spec = replace(spec, env=replace(spec.env, max_episode_steps=max_episode_steps))
    runs = {
        name: train(spec, name, device=device, progress=False, record=True, max_updates=min_updates, test=False)
        for name in BACKENDS
    }
    tr = compare_runs(runs["tf"], runs["torch"], dtype, device, min_updates)
    loss_check = check(
        "L4",
        f"TD loss per update across time limits ({tr.updates} updates, limit {max_episode_steps} steps)",
        tr.worst_rel_loss,
        dtype,
        device,
        f"worst at update {tr.worst_at}",
    )
    loss_check.passed = loss_check.passed and tr.updates >= min_updates
    wrong, counts, truncations = 0, [], []
    for name, run in runs.items():
        term = np.concatenate([e[0] for e in run.ends]).astype(bool)
        trunc = np.concatenate([e[1] for e in run.ends]).astype(bool)
        stored = np.concatenate([e[2] for e in run.ends]) != 0
        limit = trunc & ~term  # a step that hits the limit and the pole's bound at once is a termination
        wrong += int((stored != term).sum())
        truncations.append(int(limit.sum()))
        counts.append(
            f"{name}: {int(limit.sum())} time-limit ends, {int((stored & limit).sum())} stored terminal; "
            f"{int(term.sum())} terminations, {int((stored & term).sum())} stored terminal"
        )
    flags_check = Check(
        "L4",
        "time-limit truncations stored non-terminal (bootstrap), terminations terminal",
        float(wrong),
        0.0,
        wrong == 0 and min(truncations) >= 1,
        f"transitions whose stored flag is not the env's terminated, over {tr.updates} updates; " + "; ".join(counts),
        dtype,
    )
    return [loss_check, flags_check]


# -- L5: the outcome -------------------------------------------------------------------------------------
def level5(
    base: DQNRunSpec, device: str = "cpu", seeds: tuple[int, ...] = (0, 1, 2)
) -> tuple[list[Check], dict[str, list[dict[str, Any]]]]:
    """Each backend trained per seed within the preset's budget: greedy return on 20 held-out episodes."""
    from dualkit.tasks.dqn import train

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in BACKENDS}
    for name in BACKENDS:
        for seed in seeds:
            r = train(replace(base, seed=seed), name, device=device, progress=False)
            runs[name].append(
                {
                    "seed": seed,
                    "return": r.test["return_mean"],
                    "min": r.test["return_min"],
                    "env_steps": r.env_steps,
                    "solved_at": r.solved_at,
                    "wall_s": r.wall_s,
                    "steps_per_s": r.steps_per_s,
                }
            )
    out = []
    need = min(L5_MIN_SEEDS, len(seeds))
    for name in BACKENDS:
        solved = sum(r["return"] >= L5_MIN_RETURN for r in runs[name])
        detail = "; ".join(
            f"seed {r['seed']}: {r['return']:.1f} after {r['env_steps']} steps, {r['wall_s']:.0f} s" for r in runs[name]
        )
        out.append(
            Check(
                "L5",
                f"{name} seeds with greedy return >= {L5_MIN_RETURN:g}",
                float(solved),
                float(need),
                solved >= need,
                detail + f" (bound is a floor; budget {base.dqn.total_steps} env steps)",
            )
        )
    return out, runs


# -- port ------------------------------------------------------------------------------------------------
def port_spec(base: DQNRunSpec, total_steps: int = 5000) -> DQNRunSpec:
    """A short run of the preset: the port is about carrying an agent over, not about its quality."""
    return replace(
        base,
        dqn=replace(
            base.dqn,
            total_steps=total_steps,
            learning_starts=min(base.dqn.learning_starts, total_steps // 4),
            eval_every=0,
            stop_return=0.0,
        ),
    )


def port_checks(base: DQNRunSpec, device: str = "cpu", total_steps: int = 5000) -> list[Check]:
    """Train in A, write the run, play the same seeded episodes in B from the checkpoint, both ways."""
    from dualkit.tasks.base import NATIVE_SUFFIX
    from dualkit.tasks.dqn import port_run, train

    out = []
    spec = port_spec(base, total_steps)
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("tf", "torch"), ("torch", "tf")):
            run_dir = Path(tmp) / f"run-{src}"
            train(spec, src, run_dir=run_dir, device=device, progress=False, test=False)
            rep = port_run(run_dir, dst, Path(tmp) / f"model{NATIVE_SUFFIX[dst]}", device=device)
            c = check(
                "port",
                f"{src} -> {dst}",
                rep["max_rel_q_diff"],
                base.dtype,
                device,
                f"{rep['episodes']} episodes, returns {rep['return_from']:.1f} vs {rep['return_to']:.1f}, "
                f"identical returns: {rep['identical_returns']}, {rep['observations']} observations",
            )
            c.passed = c.passed and rep["identical_returns"]
            out.append(c)
    return out


def run_levels(
    base: DQNRunSpec,
    levels: list[str],
    dtypes: list[str],
    device: str = "cpu",
    seeds: int = 3,
    l4_steps: int | None = None,
) -> list[Check]:
    """The requested levels (L0..L5, port) for ``dualkit parity <dqn preset>``; L0-L4 in each dtype (``l4_steps``:
    L4's updates instead of L4_MIN_UPDATES)."""
    checks: list[Check] = []
    for dtype in dtypes:
        if "L0" in levels:
            checks += level0(dtype, device)
        if "L1" in levels:
            checks += level1(dtype, device)
        if "L2" in levels or "L3" in levels:
            checks += [c for c in level2_3(dtype, device) if c.level in levels]
        if "L4" in levels:
            checks += level4(base, dtype, device, min_updates=l4_steps or L4_MIN_UPDATES)[0]
            checks += level4_truncation(base, dtype, device)
    if "L5" in levels and seeds > 0:
        checks += level5(base, device, tuple(range(seeds)))[0]
    if "port" in levels:
        checks += port_checks(base, device)
    return checks
