"""core.optim_ref: hand-computed steps, purity, and 5-step float64 cross-checks against torch.optim."""

import numpy as np
import pytest

from dualkit.core import optim_ref
from dualkit.core.errors import SpecError
from dualkit.core.specs import OptimSpec


def _one(x):
    return {"w": np.array([x], dtype=np.float64)}


def test_state_names_and_init():
    assert optim_ref.state_names(OptimSpec(name="sgd"), ["a", "b"]) == ["step"]
    assert optim_ref.state_names(OptimSpec(name="sgd", momentum=0.9), ["a", "b"]) == [
        "step",
        "momentum.a",
        "momentum.b",
    ]
    assert optim_ref.state_names(OptimSpec(name="adamw"), ["a", "b"]) == [
        "step",
        "exp_avg.a",
        "exp_avg_sq.a",
        "exp_avg.b",
        "exp_avg_sq.b",
    ]
    params = {"a": np.ones((2, 3), np.float32), "b": np.ones(4)}
    state = optim_ref.init_state(OptimSpec(name="adam"), params)
    assert list(state) == optim_ref.state_names(OptimSpec(name="adam"), ["a", "b"])
    assert state["step"].shape == () and state["step"].dtype == np.float64 and state["step"] == 0
    assert state["exp_avg.a"].shape == (2, 3) and state["exp_avg.a"].dtype == np.float32
    assert not state["exp_avg_sq.b"].any()
    with pytest.raises(SpecError):
        optim_ref.state_names(OptimSpec(name="lion"), ["a"])


def test_clip_by_global_norm_hand_values():
    grads = {"a": np.array([3.0]), "b": np.array([[4.0]])}
    clipped, total = optim_ref.clip_by_global_norm(grads, 1.0)
    assert total == 5.0
    coef = 1.0 / (5.0 + 1e-6)
    assert clipped["a"][0] == pytest.approx(3 * coef, rel=1e-15) and clipped["b"][0, 0] == pytest.approx(
        4 * coef, rel=1e-15
    )
    same, _ = optim_ref.clip_by_global_norm(grads, 10.0)  # below the threshold: unchanged
    assert same["a"][0] == 3.0 and same["b"][0, 0] == 4.0
    assert grads["a"][0] == 3.0  # input untouched


def test_sgd_hand_steps():
    spec = OptimSpec(name="sgd")
    p, _ = optim_ref.step(spec, _one(1.0), _one(2.0), optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    assert p["w"][0] == pytest.approx(0.8)
    # Weight decay adds wd * p to the gradient: g = 2 + 0.5 * 1.
    spec = OptimSpec(name="sgd", weight_decay=0.5)
    p, _ = optim_ref.step(spec, _one(1.0), _one(2.0), optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    assert p["w"][0] == pytest.approx(1.0 - 0.1 * 2.5)
    # Momentum 0.9: buf1 = g1 = 1, buf2 = 0.9 + 1 = 1.9.
    spec = OptimSpec(name="sgd", momentum=0.9)
    s = optim_ref.init_state(spec, _one(0.0))
    p, s = optim_ref.step(spec, _one(0.0), _one(1.0), s, lr=1.0)
    p, s = optim_ref.step(spec, p, _one(1.0), s, lr=1.0)
    assert p["w"][0] == pytest.approx(-2.9) and s["momentum.w"][0] == pytest.approx(1.9) and s["step"] == 2
    # Nesterov: the update is g + mu * buf = 1 + 0.9 * 1 on the first step.
    spec = OptimSpec(name="sgd", momentum=0.9, nesterov=True)
    p, _ = optim_ref.step(spec, _one(0.0), _one(1.0), optim_ref.init_state(spec, _one(0.0)), lr=1.0)
    assert p["w"][0] == pytest.approx(-1.9)


def test_adam_and_adamw_hand_first_step():
    # First Adam step: m_hat = g, sqrt(v_hat) = |g|, so p -= lr * g / (|g| + eps).
    spec = OptimSpec(name="adam", eps=1e-8)
    p, s = optim_ref.step(spec, _one(1.0), _one(2.0), optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    assert p["w"][0] == pytest.approx(1.0 - 0.1 * 2.0 / (2.0 + 1e-8), rel=1e-15)
    assert s["exp_avg.w"][0] == pytest.approx(0.2) and s["exp_avg_sq.w"][0] == pytest.approx(0.004)
    # Adam with wd: L2 into the gradient (g = 2 + 0.5), which the normalisation then mostly cancels.
    spec = OptimSpec(name="adam", weight_decay=0.5)
    p, _ = optim_ref.step(spec, _one(1.0), _one(2.0), optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    assert p["w"][0] == pytest.approx(1.0 - 0.1 * 2.5 / (2.5 + 1e-8), rel=1e-15)
    # AdamW: p *= 1 - lr * wd before the plain Adam update.
    spec = OptimSpec(name="adamw", weight_decay=0.5)
    p, _ = optim_ref.step(spec, _one(1.0), _one(2.0), optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    assert p["w"][0] == pytest.approx(1.0 * (1 - 0.05) - 0.1 * 2.0 / (2.0 + 1e-8), rel=1e-15)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_decay_1d_false_leaves_biases_and_scales_undecayed(name):
    # With zero gradients only the weight decay moves a parameter: kernels shrink, 1-D tensors stay.
    spec = OptimSpec(name=name, weight_decay=0.5, decay_1d=False)
    params = {"kernel": np.ones((2, 3, 3, 3)), "dense": np.ones((4, 2)), "bias": np.ones(4), "gamma": np.ones(2)}
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    new, _ = optim_ref.step(spec, params, zeros, optim_ref.init_state(spec, params), lr=0.1)
    for k in ("bias", "gamma"):
        np.testing.assert_array_equal(new[k], params[k])
    for k in ("kernel", "dense"):
        assert np.all(new[k] < params[k]), k
    assert optim_ref.decays(spec, (4, 2)) and not optim_ref.decays(spec, (4,)) and not optim_ref.decays(spec, ())
    assert optim_ref.decays(OptimSpec(weight_decay=0.5), (4,)) and not optim_ref.decays(OptimSpec(), (4, 2))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_step_is_pure_and_keeps_dtypes(name):
    spec = OptimSpec(name=name, momentum=0.9 if name == "sgd" else 0.0, weight_decay=0.1, clip_norm=0.5)
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4)}
    grads = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
    # One step first, so the purity check below runs against non-zero state.
    params, state = optim_ref.step(spec, params, grads, optim_ref.init_state(spec, params), lr=0.1)
    copies = [{k: v.copy() for k, v in d.items()} for d in (params, grads, state)]
    new_p, new_s = optim_ref.step(spec, params, grads, state, lr=0.1)
    for before, after in zip(copies, (params, grads, state)):
        for k in before:
            np.testing.assert_array_equal(before[k], after[k])
    for new, old in ((new_p, params), (new_s, state)):
        for k in new:
            assert not np.shares_memory(new[k], old[k])
    assert new_p["a"].dtype == np.float32 and new_p["b"].dtype == np.float64
    assert new_s["step"] == 2 and new_s["step"].dtype == np.float64
    assert not np.array_equal(new_p["a"], params["a"])


def test_step_rejects_mismatched_inputs():
    spec = OptimSpec(name="adam")
    with pytest.raises(ValueError):
        optim_ref.step(spec, _one(1.0), {"v": np.array([1.0])}, optim_ref.init_state(spec, _one(1.0)), lr=0.1)
    with pytest.raises(ValueError):
        optim_ref.step(spec, _one(1.0), _one(1.0), {"step": np.zeros(())}, lr=0.1)


CONFIGS = {
    "sgd": dict(name="sgd"),
    "sgd_momentum": dict(name="sgd", momentum=0.9),
    "sgd_nesterov": dict(name="sgd", momentum=0.8, nesterov=True),
    "sgd_wd": dict(name="sgd", momentum=0.9, weight_decay=0.05),
    "adam": dict(name="adam", beta1=0.8, beta2=0.95, eps=1e-6),
    "adam_wd": dict(name="adam", weight_decay=0.05),
    "adamw": dict(name="adamw", weight_decay=0.1),
    "sgd_wd_kernels": dict(name="sgd", momentum=0.9, weight_decay=0.05, decay_1d=False),
    "adamw_kernels": dict(name="adamw", weight_decay=0.1, decay_1d=False),
}


def _torch_optimizer(torch, spec, tparams):
    # decay_1d=False is timm's filter_bias_and_bn: a second param group without weight decay
    groups = [{"params": tparams, "weight_decay": spec.weight_decay}]
    if not spec.decay_1d:
        groups = [
            {"params": [t for t in tparams if t.dim() >= 2], "weight_decay": spec.weight_decay},
            {"params": [t for t in tparams if t.dim() < 2], "weight_decay": 0.0},
        ]
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize("clip", [0.0, 0.7])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_over_five_steps(config, clip):
    torch = pytest.importorskip("torch")
    spec = OptimSpec(**CONFIGS[config], clip_norm=clip)
    rng = np.random.default_rng([list(CONFIGS).index(config), int(clip * 10)])  # hash() of str is salted per run
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3), "s": rng.normal(size=())}
    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = _torch_optimizer(torch, spec, list(tparams.values()))
    state = optim_ref.init_state(spec, params)
    clipped_any = False
    for lr in (0.1, 0.03, 0.2, 0.05, 0.01):
        grads = {k: rng.normal(scale=2.0, size=v.shape) for k, v in params.items()}
        for k, t in tparams.items():
            t.grad = torch.from_numpy(grads[k].copy())
        if clip > 0:
            total = torch.nn.utils.clip_grad_norm_(list(tparams.values()), clip).item()
            clipped_any |= total > clip
            assert optim_ref.clip_by_global_norm(grads, clip)[1] == pytest.approx(total, rel=1e-12)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        params, state = optim_ref.step(spec, params, grads, state, lr)
    assert clipped_any or clip == 0  # the clipped configs do exercise the clipping
    for k, t in tparams.items():
        assert _max_rel(params[k], t.detach().numpy()) <= 1e-10, k
        tstate = opt.state[t]
        assert float(state["step"]) == 5.0 and float(tstate.get("step", 5.0)) == 5.0  # torch's SGD keeps no step
        for slot, tslot in (("momentum", "momentum_buffer"), ("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")):
            if f"{slot}.{k}" in state:
                assert _max_rel(state[f"{slot}.{k}"], tstate[tslot].numpy()) <= 1e-10, (slot, k)
