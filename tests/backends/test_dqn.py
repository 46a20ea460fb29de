"""Each backend's DQNAgent on its own: Q-values vs a numpy MLP, the TD loss and gradients, the target network
as a real copy (hard and soft sync), canonical weights, optimizer state, native artifact. Every test runs
for both backends (the ``backend`` fixture, conftest.py)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from dualkit.core import losses as ref_losses
from dualkit.core import optim_ref
from dualkit.core.batches import make_rng
from dualkit.core.replay import Batch
from dualkit.core.specs import OptimSpec, QNetSpec
from dualkit.core.weights import init_qnet, qnet_shapes, target_names

NATIVE = {"torch": ".pt", "tf": ".keras"}

OBS, ACTIONS = 5, 3
QNET = QNetSpec(hidden=(16, 8), activation="relu")
ADAM = OptimSpec(name="adam", lr=1e-2)


def make(backend: ModuleType, qnet=QNET, optim=ADAM, loss="huber", double=False, dtype="float32", seed=0, weights=None):
    w = init_qnet(qnet.hidden, OBS, ACTIONS, seed, dtype) if weights is None else weights
    return backend.DQNAgent(qnet, OBS, ACTIONS, w, optim, 0.9, loss, double, dtype, "cpu")


def batch(n=32, seed=0, dtype="float32") -> Batch:
    rng = make_rng(seed, "test-batch")
    return Batch(
        rng.normal(size=(n, OBS)).astype(dtype),
        rng.integers(0, ACTIONS, n).astype(np.int64),
        rng.normal(size=n).astype(dtype),
        rng.normal(size=(n, OBS)).astype(dtype),
        (rng.random(n) < 0.3).astype(dtype),
    )


def mlp(
    weights: dict[str, np.ndarray], x: np.ndarray, prefix: str = "q", act=lambda z: np.maximum(z, 0.0)
) -> np.ndarray:
    """The Q-network in numpy, float64, from canonical (out, in) kernels."""
    h = x.astype(np.float64)
    i = 0
    while f"{prefix}.fc{i}.weight" in weights:
        h = act(h @ weights[f"{prefix}.fc{i}.weight"].T.astype(np.float64) + weights[f"{prefix}.fc{i}.bias"])
        i += 1
    return h @ weights[f"{prefix}.out.weight"].T.astype(np.float64) + weights[f"{prefix}.out.bias"]


def test_canonical_names_shapes_and_a_target_copy(backend):
    agent = make(backend)
    w = agent.get_weights()
    online = qnet_shapes(QNET.hidden, OBS, ACTIONS)
    assert list(w) == list(online) + list(qnet_shapes(QNET.hidden, OBS, ACTIONS, prefix="target"))
    assert all(w[k].shape == s and w[k].dtype == np.float32 for k, s in online.items())
    for k, v in target_names({k: w[k] for k in online}).items():  # set from the online weights alone: target = copy
        np.testing.assert_array_equal(w[k], v)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_act_values_match_a_numpy_mlp(backend, activation):
    qnet = QNetSpec(hidden=(16, 8), activation=activation)
    agent = make(backend, qnet, dtype="float64")
    x = batch(dtype="float64").obs
    act = (lambda z: np.maximum(z, 0.0)) if activation == "relu" else np.tanh
    q = agent.act_values(x)
    assert q.shape == (32, ACTIONS) and q.dtype == np.float64
    np.testing.assert_allclose(q, mlp(agent.get_weights(), x, act=act), rtol=1e-12, atol=1e-12)
    assert agent.act_values(x[:1]).shape == (1, ACTIONS)  # any batch size, one env or many


@pytest.mark.parametrize("loss", ["huber", "mse"])
@pytest.mark.parametrize("double", [False, True])
def test_loss_matches_core_reference_and_changes_nothing(backend, loss, double):
    agent = make(
        backend,
        loss=loss,
        double=double,
        dtype="float64",
        weights={
            **init_qnet(QNET.hidden, OBS, ACTIONS, 0, "float64"),
            **target_names(init_qnet(QNET.hidden, OBS, ACTIONS, 1, "float64")),  # a target that differs
        },
    )
    b = batch(dtype="float64")
    w = agent.get_weights()
    got, grads = agent.loss_and_grads(b)
    want = ref_losses.td_loss(
        mlp(w, b.obs),
        b.actions,
        b.rewards,
        b.terminated,
        mlp(w, b.next_obs, "target"),
        mlp(w, b.next_obs) if double else None,
        gamma=0.9,
        kind=loss,
    )
    assert got == pytest.approx(want, rel=1e-12)
    assert set(grads) == set(qnet_shapes(QNET.hidden, OBS, ACTIONS))  # online weights only
    after = agent.get_weights()
    for k in w:
        np.testing.assert_array_equal(after[k], w[k])
    np.testing.assert_array_equal(agent.get_optimizer_state()["step"], 0.0)


def test_gradients_match_finite_differences(backend):
    agent = make(backend, dtype="float64", loss="mse")
    b = batch(dtype="float64")
    _, grads = agent.loss_and_grads(b)
    w = agent.get_weights()
    rng = np.random.default_rng(0)
    for name in ("q.fc0.weight", "q.fc1.bias", "q.out.weight"):
        idx = tuple(rng.integers(0, s) for s in w[name].shape)
        vals = []
        for sign in (1, -1):
            w2 = {k: v.copy() for k, v in w.items()}
            w2[name][idx] += sign * 1e-6
            agent.set_weights(w2)
            vals.append(agent.loss_and_grads(b)[0])
        agent.set_weights(w)
        assert grads[name][idx] == pytest.approx((vals[0] - vals[1]) / 2e-6, rel=1e-5, abs=1e-9), name


def test_terminated_rows_do_not_bootstrap(backend):
    agent = make(backend, dtype="float64")
    b = batch(dtype="float64")
    done = Batch(b.obs, b.actions, b.rewards, b.next_obs, np.ones_like(b.terminated))
    far = Batch(b.obs, b.actions, b.rewards, b.next_obs * 100.0, np.ones_like(b.terminated))
    assert agent.loss_and_grads(done)[0] == agent.loss_and_grads(far)[0]  # next_obs is ignored when terminated


def test_update_steps_online_only_as_the_reference_optimizer(backend):
    optim = OptimSpec(name="adam", lr=1e-2, clip_norm=0.5)
    agent = make(backend, optim=optim, dtype="float64")
    b = batch(dtype="float64")
    w0 = agent.get_weights()
    loss_before, grads = agent.loss_and_grads(b)
    assert agent.update(b, 0.01) == pytest.approx(loss_before, rel=1e-12)
    online0 = {k: v for k, v in w0.items() if k.startswith("q.")}
    ref, ref_state = optim_ref.step(optim, online0, grads, optim_ref.init_state(optim, online0), 0.01)
    w1 = agent.get_weights()
    for k in ref:
        np.testing.assert_allclose(w1[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for k in w0:
        if k.startswith("target."):
            np.testing.assert_array_equal(w1[k], w0[k])  # the target is its own tensors
    state = agent.get_optimizer_state()
    assert sorted(state) == sorted(ref_state)
    np.testing.assert_allclose(state["exp_avg.q.out.weight"], ref_state["exp_avg.q.out.weight"], rtol=1e-10)


def test_hard_and_soft_target_sync(backend):
    agent = make(backend, dtype="float64")
    agent.update(batch(dtype="float64"), 0.05)
    w = agent.get_weights()
    agent.sync_target(0.25)
    soft = agent.get_weights()
    for k in qnet_shapes(QNET.hidden, OBS, ACTIONS):
        t = "target." + k[2:]
        np.testing.assert_allclose(soft[t], 0.25 * w[k] + 0.75 * w[t], rtol=1e-14, atol=1e-15)
        np.testing.assert_array_equal(soft[k], w[k])
    agent.sync_target(1.0)
    hard = agent.get_weights()
    for k in qnet_shapes(QNET.hidden, OBS, ACTIONS):
        np.testing.assert_array_equal(hard["target." + k[2:]], hard[k])
    agent.update(batch(seed=1, dtype="float64"), 0.05)  # and they separate again: a copy, not a shared tensor
    after = agent.get_weights()
    assert not np.array_equal(after["q.out.weight"], after["target.out.weight"])


def test_weights_and_optimizer_state_round_trip(backend):
    a = make(backend)
    for s in range(3):
        a.update(batch(seed=s), 0.01)
    b = make(backend, seed=5)
    b.set_weights(a.get_weights())
    b.set_optimizer_state(a.get_optimizer_state())
    nb = batch(seed=9)
    assert a.update(nb, 0.01) == b.update(nb, 0.01)
    for k, v in a.get_weights().items():
        np.testing.assert_array_equal(b.get_weights()[k], v)


def test_unknown_tensor_is_refused(backend):
    with pytest.raises(KeyError, match="not a tensor of this Q-network"):
        make(backend).set_weights({"q.fc9.weight": np.zeros((1, 1))})


def test_native_artifact(backend, tmp_path):
    path = tmp_path / f"qnet{NATIVE[backend.NAME]}"
    make(backend).save_native(str(path))
    assert path.is_file() and path.stat().st_size > 0
