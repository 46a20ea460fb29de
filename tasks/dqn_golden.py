"""DQN's parity levels as golden cases (tasks/golden.py): the computations of tasks/dqn_parity.py's L0-L4 for one
backend on recorded inputs, none of which needs the environment when checked.

L4 is a real CartPole run recorded as the driver feeds the agent (a torch CPU run of dqn_parity's L4 spec through
tasks/dqn.py's loop with its agent calls recorded): every acting observation, every minibatch with its learning
rate, and every target sync, in order. Checking replays those transitions open loop in one backend: the TD loss
of each update and the Q-values (greedy actions) at each acting step, against both backends' replays on CPU.
Gymnasium is needed only to record; the time-limit check of dqn_parity.level4_truncation (a property of the shared
driver, not of a backend) has no golden form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.replay import PackedBatch
from dualkit.core.runstate import RunState
from dualkit.core.specs import OptimSpec, QNetSpec
from dualkit.core.weights import QNET_PREFIX, init_qnet
from dualkit.tasks.dqn_parity import (
    GAMMA,
    L4_MIN_UPDATES,
    OBS_DIM,
    QNET_VARIANTS,
    UPDATE_VARIANTS,
    l4_spec,
    probe_batch,
    probe_td,
    probe_weights,
)
from dualkit.tasks.dqn_spec import DQNRunSpec
from dualkit.tasks.golden import (
    Arrays,
    Compare,
    GoldenCase,
    Recorder,
    pack_batches,
    prefixed,
    unpack_batches,
    weights_in,
    weights_of,
)

GOLDEN_LEVELS = ("L0", "L1", "L2", "L3", "L4")
SEED = 0
L3_LR = 3e-3  # as dqn_parity.level2_3
ACT, UPDATE, SYNC = 0, 1, 2  # L4's recorded agent calls, in order


def agent(
    backend: str,
    device: str,
    qnet: QNetSpec,
    inputs: Arrays,
    optim: OptimSpec,
    dtype: str,
    loss: str = "huber",
    double: bool = False,
    gamma: float = GAMMA,
) -> Any:
    """The backend's DQNAgent from the case's weights (sizes from the online network's first and last layer)."""
    w = weights_of(inputs)
    layers = sorted(k for k in w if k.startswith(QNET_PREFIX + ".") and k.endswith(".weight"))
    obs_dim, num_actions = int(w[layers[0]].shape[1]), int(w[layers[-1]].shape[0])
    return registry.get_backend(backend, device).DQNAgent(
        qnet, obs_dim, num_actions, w, optim, gamma, loss, double, dtype, device
    )


# -- L0-L3 ------------------------------------------------------------------------------------------------------
def loss_case(dtype: str) -> GoldenCase:
    def run(backend: str, device: str, i: Arrays) -> Arrays:
        m = registry.get_backend(backend, device)
        out = {}
        for kind in ("huber", "mse"):
            for double in (False, True):
                arrays = [i["q"], i["actions"], i["rewards"], i["terminated"], i["next_q_target"]]
                if double:
                    arrays.append(i["next_q_online"])
                loss = m.numpy_loss("td_loss", *arrays, gamma=GAMMA, kind=kind, device=device)
                out[f"loss/{kind}{' double' if double else ''}"] = np.asarray(loss)
        return out

    return GoldenCase("L0", "td loss", dtype, lambda: probe_td(SEED, dtype), run, {"loss": Compare("rel")})


def qvalue_cases(dtype: str) -> list[GoldenCase]:
    cases = []
    for variant, qnet in QNET_VARIANTS.items():

        def inputs(qnet: QNetSpec = qnet) -> Arrays:
            return {**weights_in(probe_weights(qnet, SEED, dtype)), "obs": probe_batch(SEED, dtype, 128).obs}

        def run(backend: str, device: str, i: Arrays, qnet: QNetSpec = qnet) -> Arrays:
            return {"q": agent(backend, device, qnet, i, OptimSpec(), dtype).act_values(i["obs"])}

        cases.append(GoldenCase("L1", f"{variant} Q-values", dtype, inputs, run, {"q": Compare("abs")}))
    return cases


def update_cases(levels: list[str], dtype: str) -> list[GoldenCase]:
    """Per update variant, from the same weights and minibatch: loss and gradients (L2), the new online weights
    after one update (L3)."""
    qnet = QNET_VARIANTS["relu-64x64"]

    def inputs() -> Arrays:
        return {**weights_in(probe_weights(qnet, SEED, dtype)), "batch": probe_batch(SEED, dtype).packed()}

    cases = []
    for variant, (loss, double, optim) in UPDATE_VARIANTS.items():

        def make(backend: str, device: str, i: Arrays, v: tuple = (loss, double, optim)) -> Any:
            return agent(backend, device, qnet, i, v[2], dtype, v[0], v[1])

        def grads(backend: str, device: str, i: Arrays, make: Any = make) -> Arrays:
            value, g = make(backend, device, i).loss_and_grads(PackedBatch(i["batch"], OBS_DIM))
            return {"grads/loss": np.asarray(value), **prefixed("grads", g)}

        def update(backend: str, device: str, i: Arrays, make: Any = make) -> Arrays:
            ag = make(backend, device, i)
            ag.update(PackedBatch(i["batch"], OBS_DIM), L3_LR)
            return prefixed("params", {k: v for k, v in ag.get_weights().items() if k.startswith(QNET_PREFIX + ".")})

        if "L2" in levels:
            cases.append(GoldenCase("L2", variant, dtype, inputs, grads, {"grads": Compare("rel")}))
        if "L3" in levels:
            cases.append(GoldenCase("L3", f"{variant} new weights", dtype, inputs, update, {"params": Compare("rel")}))
    return cases


# -- L4 ---------------------------------------------------------------------------------------------------------
def recorded_run(base: DQNRunSpec, dtype: str, min_updates: int) -> Arrays:
    """The agent calls of L4's run (dqn_parity.level4's spec, ``min_updates`` updates) as tasks/dqn.py's loop makes
    them in a torch CPU run: the initial weights, and in order every acting observation, minibatch (with its
    learning rate) and target sync."""
    from dualkit.core.envs import env_info  # Gymnasium: needed to record, never to check
    from dualkit.tasks.dqn import DQNLoop, build_agent

    spec = l4_spec(base, dtype)
    backend = registry.get_backend("torch", "cpu")
    info = env_info(spec.env)
    weights = init_qnet(spec.qnet.hidden, info.obs_dim, info.num_actions, spec.seed, spec.dtype)
    inner = build_agent(backend, spec, info, weights, "cpu")
    start = inner.get_weights()
    rec = Recorder(inner, ("act_values", "update", "sync_target"), limit_method="update", limit=min_updates)
    state = RunState(task=spec.task)
    DQNLoop(spec, backend, "cpu", rec, info, state, None, progress=False, max_updates=min_updates, test=False).run()
    kinds = {"act_values": ACT, "update": UPDATE, "sync_target": SYNC}
    return {
        **weights_in(start),
        "calls": np.array([kinds[m] for m, _ in rec.calls], np.int8),
        **pack_batches("obs", [a[0] for a in rec.args("act_values")]),
        **pack_batches("batch", [a[0].packed() for a in rec.args("update")]),
        "lr": np.array([a[1] for a in rec.args("update")], np.float64),
        "tau": np.array([a[0] for a in rec.args("sync_target")], np.float64),
    }


def run_case(base: DQNRunSpec, dtype: str, min_updates: int) -> GoldenCase:
    spec = l4_spec(base, dtype)
    d = spec.dqn

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        ag = agent(backend, device, spec.qnet, i, spec.optim, dtype, d.loss, d.double, d.gamma)
        obs, batches = iter(unpack_batches("obs", i)), iter(unpack_batches("batch", i))
        lrs, taus = iter(i["lr"]), iter(i["tau"])
        losses, q = [], []
        for call in i["calls"]:
            if call == ACT:
                q.append(ag.act_values(next(obs)))
            elif call == UPDATE:
                rows = next(batches)
                losses.append(ag.update(PackedBatch(rows, (rows.shape[1] - 3) // 2), float(next(lrs))))
            else:
                ag.sync_target(float(next(taus)))
        return {"losses": np.array(losses), "q": np.concatenate(q) if q else np.zeros((0, 2))}

    return GoldenCase(
        "L4",
        "CartPole run, recorded transitions",
        dtype,
        lambda: recorded_run(base, dtype, min_updates),
        run,
        {"losses": Compare("steps"), "q": Compare("argmax")},
    )


def golden_cases(spec: DQNRunSpec, levels: list[str], dtype: str, l4_steps: int | None = None) -> list[GoldenCase]:
    """DQN's golden cases for ``levels`` (of GOLDEN_LEVELS) in ``dtype``; ``l4_steps``: L4's updates."""
    cases: list[GoldenCase] = []
    if "L0" in levels:
        cases.append(loss_case(dtype))
    if "L1" in levels:
        cases += qvalue_cases(dtype)
    cases += update_cases(levels, dtype)
    if "L4" in levels:
        cases.append(run_case(spec, dtype, l4_steps or L4_MIN_UPDATES))
    return cases
