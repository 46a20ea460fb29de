"""Each blind spot of issue 14, shown closed: the faulty behaviour is put into one backend (monkeypatch) and the
level that used to pass it now fails. Each test also runs the same check on the correct backends, which pass.

The faults: BatchNorm running statistics with the wrong momentum (classifier) or over all positions instead of the
visible ones (masked encoder); Adam's epsilon placed as Keras places it; a layer of the preset's own model that no
built-in variant has; and (tests/parity/test_dqn_truncation.py) time-limit truncations treated as terminations.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.core.specs import OptimSpec, ScheduleSpec  # noqa: E402
from dualkit.tasks import masked_parity, parity, presets  # noqa: E402

pytestmark = pytest.mark.parity


def failing(checks, words: str) -> list:
    return [c for c in checks if words in c.name and not c.passed]


def patched_source(obj, replacements: list[tuple[str, str]]):
    """``obj`` (a function or method) recompiled from its source with each (old, new) applied once, in its module's
    namespace: the faulty twin of a backend's own code, failing loudly if that code changed."""
    src = textwrap.dedent(inspect.getsource(obj))
    for old, new in replacements:
        assert src.count(old) == 1, f"{old!r} not found once in {obj.__qualname__}"
        src = src.replace(old, new)
    namespace = dict(vars(inspect.getmodule(obj)))
    exec(compile(src, inspect.getsourcefile(obj), "exec"), namespace)
    return namespace[obj.__name__]


# -- BatchNorm running statistics ----------------------------------------------------------------------------
@pytest.fixture
def keras_momentum(monkeypatch):
    """tf's BatchNorm given Keras's momentum convention (0.9 = keep 90% of the running value) for torch's 0.1."""
    from dualkit.backends.tf.cnn import _BatchNorm

    init = _BatchNorm.__init__

    def faulty(self, eps=1e-5, momentum=0.1, *args, **kwargs):
        init(self, eps, 1.0 - momentum, *args, **kwargs)

    monkeypatch.setattr(_BatchNorm, "__init__", faulty)


def test_running_statistics_agree_after_train_steps():
    checks = parity.level1_running_stats("float32", spec=presets.load("cnn-digits"))
    assert len(checks) == 2 * 3  # bn-gap, bn-flatten and the preset: running statistics and eval logits
    assert all(c.passed for c in checks), [(c.name, c.value) for c in checks if not c.passed]


def test_wrong_batchnorm_momentum_fails_l1(keras_momentum):
    checks = parity.level1_running_stats("float32", spec=presets.load("cnn-digits"))
    stats, logits = failing(checks, "running statistics"), failing(checks, "eval outputs")
    assert len(stats) == 3 and len(logits) == 3
    assert min(c.value for c in stats) > 100 * stats[0].bound
    # the blind spot: the levels that passed it before still pass
    assert all(c.passed for c in parity.level1("float32") + parity.level2("float32"))


def test_wrong_batchnorm_momentum_fails_l4_end_state(keras_momentum):
    spec = presets.load("cnn-digits")
    checks = parity.level4(spec, "float64", min_steps=40, full=True)
    assert all(c.passed for c in checks if "end state" not in c.name)  # the train-mode losses are unchanged
    assert len(failing(checks, "end state")) == len(parity.L4_VARIANTS)


@pytest.fixture
def stats_over_all_positions(monkeypatch):
    """tf's masked encoder updating the running statistics over every position, masked ones included (the batch
    statistics that normalise stay the visible positions')."""
    import tensorflow as tf

    from dualkit.backends.tf import masked

    visible_only = masked.masked_batchnorm

    def faulty(bn, x, vis, training):
        if not training:
            return visible_only(bn, x, vis, training)
        before = (tf.identity(bn.running_mean), tf.identity(bn.running_var))
        y = visible_only(bn, x, vis, training)
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
        m = tf.constant(bn.momentum, x.dtype)
        bn.running_mean.assign((1 - m) * before[0] + m * mean)
        bn.running_var.assign((1 - m) * before[1] + m * var * n / (n - 1))
        return y

    monkeypatch.setattr(masked, "masked_batchnorm", faulty)


def test_masked_running_statistics_agree_after_train_steps():
    checks = masked_parity.level1_running_stats("float32", spec=presets.load("masked-digits"))
    assert len(checks) == 2 * 4  # three BatchNorm variants and the preset
    assert all(c.passed for c in checks), [(c.name, c.value) for c in checks if not c.passed]


def test_masked_statistics_over_all_positions_fail_l1(stats_over_all_positions):
    checks = masked_parity.level1_running_stats("float32", spec=presets.load("masked-digits"))
    stats = failing(checks, "running statistics")
    assert len(stats) == 4 and min(c.value for c in stats) > 100 * stats[0].bound
    assert all(c.passed for c in masked_parity.level1("float32") + masked_parity.level2("float32"))


# -- Adam's epsilon ------------------------------------------------------------------------------------------
@pytest.fixture
def keras_adam_epsilon(monkeypatch):
    """tf's Adam with epsilon where Keras puts it: on sqrt(v) before the bias correction, which moves into the
    learning rate (so epsilon is in effect eps / sqrt(1 - beta2^t), ~30x larger at the first step)."""
    from dualkit.backends.tf.optim import Optimizer

    faulty = patched_source(
        Optimizer.apply,
        [
            ("denom = tf.sqrt(v) / c(bc2_sqrt) + c(s.eps)", "denom = tf.sqrt(v) + c(s.eps)"),
            (
                "var.assign(var - c(step_size) * (m / denom))",
                "var.assign(var - c(step_size * bc2_sqrt) * (m / denom))",
            ),
        ],
    )
    monkeypatch.setattr(Optimizer, "apply", faulty)


def test_keras_adam_epsilon_fails_l3_in_float32(keras_adam_epsilon):
    checks = parity.level3("float32")
    bad = {c.name for c in checks if not c.passed}
    # only tf's Adam and AdamW variants fail, the eps-visible ones among them
    assert bad <= {f"tf {v}" for v, o in parity.OPTIM_VARIANTS.items() if o.name in ("adam", "adamw")}
    assert {"tf adam-eps1e-3", "tf adamw-eps1e-3-clip"} <= bad
    eps_visible = [c for c in checks if c.name == "tf adam-eps1e-3"]
    assert eps_visible[0].value > 1e4 * eps_visible[0].bound


# -- the preset's own model ----------------------------------------------------------------------------------
@pytest.fixture
def second_hidden_layer_linear(monkeypatch):
    """tf's classifier head without the ReLU of its second hidden layer: no built-in variant has two."""
    from dualkit.backends.tf import cnn

    faulty = patched_source(
        cnn._head_layers,
        [
            (
                'x = keras.layers.Dense(width, activation="relu",',
                'x = keras.layers.Dense(width, activation="relu" if i == 0 else None,',
            )
        ],
    )
    monkeypatch.setattr(cnn, "_head_layers", faulty)


def test_preset_model_fault_fails_l1_and_l2(second_hidden_layer_linear):
    spec = presets.load("cnn-digits", ["model.hidden=[32, 16]"])
    assert all(c.passed for c in parity.level1("float32") + parity.level2("float32"))  # the sweep misses it
    assert failing(parity.level1_preset(spec, "float64"), "preset model")
    assert failing(parity.level2_preset(spec, "float64"), "preset model")


def test_preset_model_on_its_own_data_agrees():
    spec = presets.load("cnn-digits", ["model.hidden=[32, 16]"])
    for dtype in ("float32", "float64"):
        checks = parity.level1_preset(spec, dtype) + parity.level2_preset(spec, dtype)
        assert len(checks) == 3 and all(c.passed for c in checks), [(c.name, c.value) for c in checks]
        assert all("8x8x1" in c.detail or "inputs" in c.detail for c in checks)


# -- float32 L4: the rounding envelope -----------------------------------------------------------------------
def test_fixed_bound_false_fail_is_within_the_rounding_envelope(monkeypatch):
    """SGD with momentum at lr 0.1 parts the float32 trajectories by rounding alone within 100 steps (float64 agrees
    at 1e-14): the fixed 1e-3 bound fails, the envelope verdict passes."""
    hot = {"sgd-hot": (OptimSpec(name="sgd", lr=0.1, momentum=0.9), ScheduleSpec(name="cosine"))}
    monkeypatch.setattr(parity, "L4_VARIANTS", hot)
    spec = presets.load("cnn-digits")
    checks = {c.name: c for c in parity.level4(spec, "float32", min_steps=100, full=True)}
    assert not checks["sgd-hot"].passed  # the false FAIL
    env = checks["sgd-hot per-step loss within the rounding envelope"]
    assert env.passed, env.detail
    assert set(env.series) >= {"torch vs tf", parity.ENVELOPE_SERIES}


def test_keras_adam_epsilon_fails_the_float32_envelope(keras_adam_epsilon, monkeypatch):
    only_adam = {k: v for k, v in parity.L4_VARIANTS.items() if v[0].name == "adam"}
    monkeypatch.setattr(parity, "L4_VARIANTS", only_adam)
    spec = replace(presets.load("cnn-digits"), seed=0)
    (env,) = [c for c in parity.level4(spec, "float32", min_steps=40, full=True) if "envelope" in c.name]
    assert not env.passed and env.value > 10 * env.bound, env.detail


def test_plot_gaps_draws_the_envelope_checks(tmp_path):
    series = {"torch vs tf": [1e-7, 2e-7, 0.0], "torch vs torch (1-ulp init)": [1e-7, 1e-6, 3e-6]}
    series[parity.ENVELOPE_SERIES] = list(np.maximum.accumulate([1e-6, 1e-6, 3e-6]))
    c = parity.Check("L4", "x within the rounding envelope", 0.2, 10.0, True, "", "float32", series)
    assert parity.plot_gaps([c.to_dict()], tmp_path / "g.png").stat().st_size > 1000
    assert parity.plot_gaps([parity.Check("L1", "y", 0.0, 1.0, True).to_dict()], tmp_path / "h.png") is None
