"""The benchmark worker on the masked-pretraining and DQN tasks: tiny jobs on both backends (one skipped
where its framework is missing), and L5 from such runs. The jobs run in this process (the suite gives each
its own; tests/benchmarks/test_suite.py covers that path) so that the frameworks are imported once."""

from __future__ import annotations

import json
import math

import pytest

from dualkit.benchmarks import report, suite, worker
from dualkit.core import registry
from dualkit.tasks import presets

BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not registry.is_installed(b), reason=f"{b} is not installed"))
    for b in ("torch", "tf")
]
# A few hundred environment steps: two evaluations, a couple of dozen updates (the return stays low)
TINY_DQN = ["dqn.total_steps=600", "dqn.learning_starts=200", "dqn.eval_every=300", "dqn.test_episodes=3"]
TINY_MASKED = ["train.epochs=1", "finetune.fractions=[]", "probe.c_grid=[1.0]"]


def run_job(job: dict) -> dict:
    """The worker's summary, through JSON as the suite reads it back."""
    return json.loads(json.dumps(worker.run_job(job)))


@pytest.mark.parametrize("preset", presets.names())
def test_every_preset_takes_the_same_seed_and_dtype_override(preset):
    """The worker seeds every task with one override: seed and dtype sit at the top of every task's spec."""
    spec = presets.load(preset, ["seed=3", "dtype=float64"])
    assert (spec.seed, spec.dtype) == (3, "float64")


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_runs_a_tiny_dqn_job(backend):
    run = run_job({"preset": "dqn-cartpole", "overrides": TINY_DQN, "backend": backend, "seed": 1, "device": "cpu"})
    assert run["task"] == "dqn" and run["metric"] == "test_return" and run["throughput_unit"] == "env steps/s"
    assert run["seed"] == 1 and run["env_steps"] >= 600 and run["updates"] > 0
    assert run["curve_x"][0] >= 300 and run["curve_x"][-1] == run["env_steps"]  # evaluations after 300 and at the end
    assert len(run["curve_x"]) == len(run["curve_y"]) >= 2 and all(y >= 1.0 for y in run["curve_y"])
    assert 1.0 <= run["value"] <= 500.0 and run["throughput"] > 0 and run["peak_rss_mb"] > 50
    assert run["solved_at"] is None and run["time_to_solve_s"] is None  # 600 steps do not solve CartPole
    report.validate(
        {
            "schema_version": suite.SCHEMA_VERSION,
            "created": "",
            "config": {},
            "environment": {},
            "runs": [run],
            "parity": [],
            "overhead": None,
            "wall_s": 0.0,
        }
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_runs_a_tiny_masked_digits_job(backend):
    run = run_job({"preset": "masked-digits", "overrides": TINY_MASKED, "backend": backend, "seed": 0, "device": "cpu"})
    assert run["task"] == "masked" and run["metric"] == "probe_accuracy" and run["throughput_unit"] == "images/s"
    assert 0.5 < run["value"] <= 1.0 and 0.5 < run["random_accuracy"] <= 1.0
    assert math.isclose(run["margin_points"], (run["value"] - run["random_accuracy"]) * 100, abs_tol=1e-6)
    assert run["curve_x"] == [1] and len(run["curve_y"]) == 1 and run["curve_y"][0] > 0
    assert run["finetune"] == {} and run["throughput"] > 0 and run["wall_s"] >= run["pretrain_s"] > 0


def test_l5_dqn_counts_solved_seeds_per_backend():
    spec = presets.load("dqn-cartpole")
    runs = [{"backend": "torch", "seed": s, "value": v, "env_steps": 1000} for s, v in enumerate((500.0, 480.0, 200.0))]
    runs += [{"backend": "tf", "seed": s, "value": v, "env_steps": 1000} for s, v in enumerate((500.0, 400.0, 300.0))]
    checks = {c.name: c for c in suite.l5_from_runs(spec, runs)}
    torch_c, tf_c = checks["torch seeds with greedy return >= 475"], checks["tf seeds with greedy return >= 475"]
    assert torch_c.passed and torch_c.value == 2 and torch_c.bound == 2
    assert not tf_c.passed and tf_c.value == 1
    one_seed = suite.l5_from_runs(spec, [r for r in runs if r["seed"] == 0])
    assert all(c.passed and c.bound == 1 for c in one_seed)  # with one seed, that seed must solve


def test_l5_masked_bounds_the_gap_of_probe_means():
    spec = presets.load("masked-digits")
    runs = [{"backend": "torch", "value": v, "margin_points": 2.0} for v in (0.960, 0.970)]
    runs += [{"backend": "tf", "value": v, "margin_points": 1.0} for v in (0.950, 0.955)]
    checks = {c.name: c for c in suite.l5_from_runs(spec, runs)}
    gap = checks["mean probe accuracy gap (points)"]
    assert gap.value == pytest.approx(1.25) and gap.bound == 1.0 and not gap.passed
    assert checks["torch mean probe accuracy"].passed and "+2.00 points" in checks["torch mean probe accuracy"].detail


def test_fast_default_covers_the_tasks_and_full_adds_cifar10():
    fast = suite.fast_config()
    # the MLM preset's runs also fine-tune its downstream tagger (the tag task)
    assert [presets.load(p).task for p in fast.presets] == ["classify", "masked", "dqn", "mlm"]
    full = suite.full_config("/data")
    assert {"masked-cifar10", "cnn-cifar10"} <= set(full.presets) and len(full.seeds) == 5
    # data.root goes to the presets that read data, not to the DQN preset
    assert suite._preset_overrides("dqn-cartpole", full) == []
    assert suite._preset_overrides("masked-cifar10", full) == ['data.root="/data"']
