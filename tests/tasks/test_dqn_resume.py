"""Interrupt-safe DQN training and resume (tasks/dqn.py ``resume``): bit-identical resume in each backend
(replay buffer, exploration and replay generators, envs mid-episode), a resume without the replay buffer,
hand-over to the other framework within the L4 bound, refused resumes that leave the run folder
untouched, and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualkit.cli import main
from dualkit.core import checkpoint, registry, runstate
from dualkit.core.errors import CheckpointError, Interrupted, RunError, SpecError
from dualkit.tasks import presets
from dualkit.tasks.dqn import resume, train
from dualkit.tasks.dqn_parity import l4_spec
from dualkit.tasks.parity import bound
from tests.runfolders import sigint_after, snapshot

HAS_TF = registry.is_installed("tf")
BACKENDS = ["torch", pytest.param("tf", marks=pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed"))]
WALL = ("wall_s", "steps_per_s")  # wall-clock fields of an evaluation record: the only ones allowed to differ

# ~280 updates, 6 evaluations; 4 envs with a 60-step limit, so checkpoints fall mid-episode and across
# time-limit truncations; exploration still on (epsilon_fraction 0.5) when the run stops.
SMALL = [
    "env.num_envs=4",
    "env.max_episode_steps=60",
    "qnet.hidden=[32]",
    "dqn.total_steps=3000",
    "dqn.learning_starts=400",
    "dqn.train_freq=8",
    "dqn.batch_size=32",
    "dqn.buffer_size=2000",
    "dqn.target_update=25",
    "dqn.eval_every=500",
    "dqn.eval_episodes=3",
    "dqn.test_episodes=4",
    "dqn.stop_return=0",
    "dqn.epsilon_fraction=0.5",
    "dqn.checkpoint_every_minutes=0",
]


def strip(evals):
    return [{k: v for k, v in e.items() if k not in WALL} for e in evals]


def assert_same_run(got, ref):
    """Bit-identical: every TD loss, evaluation, training episode, test return and weight."""
    assert got.losses == ref.losses
    assert strip(got.evals) == strip(ref.evals)
    assert got.episode_returns == ref.episode_returns and got.episode_steps == ref.episode_steps
    assert got.test == ref.test
    assert (got.env_steps, got.updates) == (ref.env_steps, ref.updates)
    assert set(got.weights) == set(ref.weights)
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(got.weights[name], value, err_msg=name)


@pytest.fixture
def sigint_after_update(monkeypatch):
    """Deliver a real SIGINT to this process right after the ``n``-th update of ``backend``'s agent."""
    return lambda backend, n: sigint_after(monkeypatch, registry.get_backend(backend).DQNAgent, "update", n)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    cache = {}

    def get(backend: str):
        if backend not in cache:
            spec = presets.load("dqn-cartpole", SMALL)
            cache[backend] = (
                spec,
                train(spec, backend, run_dir=tmp_path_factory.mktemp("straight") / backend, progress=False),
            )
        return cache[backend]

    return get


# --------------------------------------------------------------------------- resume equivalence


@pytest.mark.parametrize("stop_update", [1, 137], ids=["first-update", "mid-run"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_and_resumed_equals_straight(backend, stop_update, straight, sigint_after_update, tmp_path):
    spec, ref = straight(backend)
    run_dir = tmp_path / "run"
    restore = sigint_after_update(backend, stop_update)
    with pytest.raises(Interrupted) as err:
        train(spec, backend, run_dir=run_dir, progress=False)
    restore()
    msg = str(err.value)
    assert err.value.exit_code == 130 and "SIGINT" in msg and f"dualkit train --resume {run_dir}" in msg
    assert "replay buffer (" in msg and "MB) included" in msg  # the message says how large the buffer is
    ckpt = runstate.latest(run_dir)
    assert ckpt.state.step == stop_update and "replay.rows" in ckpt.extra
    assert ckpt.state.counters["rollout"] is not None  # CartPole's state was captured mid-episode
    assert not (run_dir / "result.json").exists()

    got = resume(run_dir, progress=False)  # the run's own backend by default
    assert_same_run(got, ref)
    assert [s["backend"] for s in got.extra["segments"]] == [backend, backend]
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == got.evals
    res = json.loads((run_dir / "result.json").read_text())
    assert res["updates"] == ref.updates and res["test"] == ref.test and len(res["segments"]) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_from_periodic_checkpoints_after_a_crash(backend, straight, tmp_path):
    """No signal: a run that crashed after its checkpoint at 1,600 env steps continues from that file."""
    spec, ref = straight(backend)
    spec = replace(spec, dqn=replace(spec.dqn, checkpoint_every_steps=800, keep_checkpoints=10))
    full = train(spec, backend, run_dir=tmp_path / "full", progress=False)
    assert full.losses == ref.losses  # checkpointing itself changes nothing
    run_dir = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", run_dir)
    for _, path in runstate.list_checkpoints(run_dir):
        if runstate.load(path).state.counters["env_steps"] > 1700:
            path.unlink()
    (run_dir / "result.json").unlink()
    assert runstate.latest(run_dir).state.counters["env_steps"] >= 1600
    assert_same_run(resume(run_dir, progress=False), ref)


def test_resume_without_the_replay_buffer_refills_it_first(tmp_path, sigint_after_update):
    spec = presets.load("dqn-cartpole", SMALL + ["dqn.checkpoint_buffer=false"])
    run_dir = tmp_path / "run"
    restore = sigint_after_update("torch", 100)
    with pytest.raises(Interrupted, match=r"not included: dqn.checkpoint_buffer=false"):
        train(spec, "torch", run_dir=run_dir, progress=False)
    restore()
    ckpt = runstate.latest(run_dir)
    assert "replay.rows" not in ckpt.extra and ckpt.state.counters["buffer"] is None
    at = ckpt.state.counters["env_steps"]
    got = resume(run_dir, progress=False)
    # no update in the learning_starts (400) env steps after the resume: the evaluation records say so
    after = [e for e in got.evals if at < e["env_steps"] <= at + 400]
    assert after and all(e["updates"] == 100 for e in after)
    assert got.updates > 100 and got.env_steps >= 3000


# --------------------------------------------------------------------------- hand-over


@pytest.fixture(scope="module")
def l4_runs(tmp_path_factory):
    """The parity L4 setting (an update every 2 env steps) for 3,000 env steps: about 500 updates, a run
    checkpoint every 500 env steps."""
    base = presets.load(
        "dqn-cartpole",
        [
            "dqn.total_steps=3000",
            "dqn.checkpoint_every_steps=500",
            "dqn.keep_checkpoints=10",
            "dqn.checkpoint_every_minutes=0",
        ],
    )
    spec = l4_spec(base, "float32")
    folder = tmp_path_factory.mktemp("l4")
    return {
        b: train(spec, b, run_dir=folder / b, progress=False, test=False)
        for b in ("torch", "tf")
        if b == "torch" or HAS_TF
    }


@pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
@pytest.mark.parametrize("src, dst", [("torch", "tf"), ("tf", "torch")])
def test_hand_over_to_the_other_framework(src, dst, l4_runs, tmp_path, record_property):
    run_dir = tmp_path / "run"
    shutil.copytree(l4_runs[src].run_dir, run_dir)
    for _, path in runstate.list_checkpoints(run_dir):
        if runstate.load(path).state.counters["env_steps"] > 2600:
            path.unlink()  # hand over at the checkpoint after 2,500 env steps (16 envs: 2,512), about update 256 of 500
    handed = runstate.latest(run_dir).state.step
    assert 200 < handed < 300
    got = resume(run_dir, dst, progress=False)
    assert [s["backend"] for s in got.extra["segments"]] == [src, dst]
    assert got.losses[:handed] == l4_runs[src].losses[:handed]
    h = np.array(got.losses)
    for ref_name, ref in l4_runs.items():
        r = np.array(ref.losses)
        assert len(h) == len(r) > 500
        gap = float((np.abs(h - r) / np.abs(r)).max())
        figures = (
            f"DQN hand-over {src}->{dst} at update {handed} vs {ref_name} alone: max per-update rel TD-loss "
            f"gap {gap:.2e}"
        )
        record_property(f"vs {ref_name}", figures)
        print("\n" + figures)
        assert gap <= bound("L4", "float32")
    _, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["backend"] == dst


# --------------------------------------------------------------------------- refused resumes


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, straight):
    """A run with a checkpoint every 800 env steps, cut back to the one at 1,600: resumable."""
    spec, _ = straight("torch")
    spec = replace(spec, dqn=replace(spec.dqn, checkpoint_every_steps=800, keep_checkpoints=10))
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    train(spec, "torch", run_dir=run_dir, progress=False)
    for _, path in runstate.list_checkpoints(run_dir):
        if runstate.load(path).state.counters["env_steps"] > 1700:
            path.unlink()
    (run_dir / "result.json").unlink()
    return run_dir


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(stopped_run, dst)
    return dst


def refused(run_dir: Path, exc: type, match: str, **kw):
    before = snapshot(run_dir)
    with pytest.raises(exc, match=match) as err:
        resume(run_dir, progress=False, **kw)
    assert snapshot(run_dir) == before  # nothing in the run folder changed
    return str(err.value)


@pytest.mark.parametrize(
    "override, field",
    [
        ("dqn.gamma=0.9", "dqn.gamma"),
        ("dqn.batch_size=64", "dqn.batch_size"),
        ("qnet.hidden=[16]", "qnet.hidden"),
        ("env.num_envs=2", "env.num_envs"),
        ("seed=3", "seed"),
    ],
)
def test_refuses_a_spec_change_that_cannot_continue(run_copy, override, field):
    msg = refused(run_copy, SpecError, field, overrides=[override])
    assert "dqn.total_steps" in msg  # it says which fields may change


def test_refuses_fewer_env_steps_than_taken(run_copy):
    refused(run_copy, SpecError, r"dqn.total_steps must be at least", overrides=["dqn.total_steps=1000"])


def test_refuses_a_complete_run_and_says_how_to_train_on(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight("torch")[1].run_dir, run_dir)
    refused(run_dir, RunError, r"already complete .*--set dqn.total_steps=N")


def test_refuses_a_run_of_another_task(tmp_path):
    spec = presets.load("cnn-digits", ["data.limit_train=64", "train.epochs=1"])
    from dualkit.tasks.classify import train as train_classifier

    train_classifier(spec, "torch", run_dir=tmp_path / "clf", progress=False)
    refused(tmp_path / "clf", RunError, r"'classify' run, not a DQN run")


def test_refuses_a_newer_checkpoint_format(run_copy):
    path = runstate.latest(run_copy).path
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, {**meta, "runstate_version": runstate.RUNSTATE_VERSION + 1})
    refused(run_copy, CheckpointError, r"newer than this dualkit")


def test_refuses_an_env_with_other_spaces(run_copy):
    raw = json.loads((run_copy / "spec.json").read_text())
    raw["env"]["id"] = "Acrobot-v1"  # 6 observations, 3 actions
    (run_copy / "spec.json").write_text(json.dumps(raw))
    refused(run_copy, SpecError, r"env.id")


def test_cli_resume_completes_a_dqn_run(run_copy, capsys):
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "eval return" in out and "test: greedy return" in out and "backends: torch -> torch" in out
    res = json.loads((run_copy / "result.json").read_text())
    assert res["env_steps"] >= 3000 and [s["backend"] for s in res["segments"]] == ["torch", "torch"]
