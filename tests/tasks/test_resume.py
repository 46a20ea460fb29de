"""Interrupt-safe training and resume for the classifier: bit-identical resume in each backend (at an
epoch boundary and mid-epoch), hand-over to the other framework within the L4 bound, refused resumes
that leave the run folder untouched, SIGINT in a real process, and (slow) a SIGKILL torture test."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dualkit.cli import main  # noqa: E402
from dualkit.core import checkpoint, registry, runstate  # noqa: E402
from dualkit.core.errors import CheckpointError, DataError, Interrupted, RunError, SpecError  # noqa: E402
from dualkit.core.specs import apply_overrides, load_json, save_json
from dualkit.tasks import parity, presets  # noqa: E402
from dualkit.tasks.classify import resume, train  # noqa: E402
from dualkit.tasks.dqn_spec import DQNRunSpec
from tests.runfolders import sigint_after, snapshot  # noqa: E402

HAS_TF = registry.is_installed("tf")
BACKENDS = ["torch", pytest.param("tf", marks=pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed"))]
REPO = Path(__file__).resolve().parents[2]
TIMING = ("epoch_s", "images_per_s")  # wall-clock fields of a history record: the only ones allowed to differ

# 10 steps per epoch; dropout, crop and flip so that every random stream (numpy's and the framework's) is exercised.
SMALL = [
    "data.limit_train=320",
    "train.epochs=3",
    "model.dropout=0.2",
    "data.crop_padding=1",
    "data.flip=true",
    "train.checkpoint_every_minutes=0",
]
OPTIMS = {
    "adamw": ["optim.name='adamw'", "optim.weight_decay=0.01"],
    "sgd": [
        "optim.name='sgd'",
        "optim.lr=0.05",
        "optim.momentum=0.9",
        "optim.nesterov=true",
        "optim.weight_decay=1e-4",
        "optim.clip_norm=1.0",
    ],
}


def strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_run(got, ref):
    """Bit-identical: every per-step loss, every metric, every weight (BatchNorm statistics included)."""
    assert got.step_losses == ref.step_losses
    assert strip(got.history) == strip(ref.history)
    assert got.test == ref.test
    assert set(got.weights) == set(ref.weights)
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(got.weights[name], value, err_msg=name)


@pytest.fixture
def sigint_at(monkeypatch):
    """Deliver a real SIGINT to this process right after the ``n``-th train step of ``backend``."""
    return lambda backend, n: sigint_after(monkeypatch, registry.get_backend(backend).Classifier, "train_step", n)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    cache = {}

    def get(backend: str, optim: str):
        if (backend, optim) not in cache:
            spec = presets.load("cnn-digits", SMALL + OPTIMS[optim])
            run_dir = tmp_path_factory.mktemp("straight") / f"{backend}-{optim}"
            cache[backend, optim] = (spec, train(spec, backend, run_dir=run_dir, progress=False))
        return cache[backend, optim]

    return get


# --------------------------------------------------------------------------- resume equivalence


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize(
    "stop_step, where", [(20, "epoch boundary"), (13, "mid-epoch")], ids=["epoch-boundary", "mid-epoch"]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_and_resumed_equals_straight(backend, stop_step, where, optim, straight_runs, sigint_at, tmp_path):
    spec, ref = straight_runs(backend, optim)
    run_dir = tmp_path / "run"
    restore = sigint_at(backend, stop_step)
    with pytest.raises(Interrupted) as err:
        train(spec, backend, run_dir=run_dir, progress=False)
    restore()
    msg = str(err.value)
    assert err.value.exit_code == 130 and "SIGINT" in msg and f"dualkit train --resume {run_dir}" in msg
    ckpt = runstate.latest(run_dir)
    assert ckpt.state.step == stop_step and ckpt.state.batch == (0 if where == "epoch boundary" else 3)
    assert not (run_dir / "result.json").exists()

    got = resume(run_dir, progress=False)  # the run's own backend by default
    assert_same_run(got, ref)
    assert [s["backend"] for s in got.extra["segments"]] == [backend, backend]
    assert [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == got.history
    res = json.loads((run_dir / "result.json").read_text())
    assert res["steps"] == 30 and res["test"] == ref.test and len(res["segments"]) == 2
    final = runstate.latest(run_dir)
    assert final.state.step == 30 and final.state.step_losses == ref.step_losses


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_a_crash_from_an_older_checkpoint(backend, straight_runs, tmp_path):
    """A crash (no signal, no final checkpoint) after later epochs were logged: resume from an older file."""
    spec, ref = straight_runs(backend, "adamw")
    run_dir = tmp_path / "run"
    shutil.copytree(ref.run_dir, run_dir)
    for step, path in runstate.list_checkpoints(run_dir):
        if step > 10:
            path.unlink()  # as if the process died right after the first epoch's checkpoint...
    (run_dir / "checkpoints" / ".ckpt-000000011.safetensors.x.tmp").write_bytes(b"half a file")  # ...while writing
    got = resume(run_dir, progress=False)
    assert_same_run(got, ref)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3  # epochs 2-3 logged once, not twice
    assert runstate.temp_files(run_dir) == []


def test_more_epochs_continue_the_same_trajectory(tmp_path):
    """train.epochs may grow on resume; with a constant schedule 2 epochs + 2 more == 4 straight."""
    base = SMALL + ["schedule.name='constant'", "train.epochs=2"]
    two = presets.load("cnn-digits", base)
    train(two, "torch", run_dir=tmp_path / "run", progress=False)
    with pytest.raises(RunError, match=r"already complete \(\d+ of \d+ steps, 2 of 2 epochs\).*train.epochs"):
        resume(tmp_path / "run", progress=False)
    got = resume(tmp_path / "run", overrides=["train.epochs=4"], progress=False)
    ref = train(apply_overrides(two, ["train.epochs=4"]), "torch", progress=False)
    assert_same_run(got, ref)
    assert load_json(tmp_path / "run" / "spec.json").train.epochs == 4


# --------------------------------------------------------------------------- hand-over


@pytest.fixture(scope="module")
def l4_runs(tmp_path_factory):
    """tasks.parity's L4 trajectory setting (adam-cosine, float32, >= 300 steps) straight in each backend,
    with a run checkpoint every 50 steps (step 150 is in the middle of epoch 4)."""
    if not HAS_TF:
        pytest.skip("TensorFlow is not installed")
    base = presets.load(
        "cnn-digits",
        ["train.checkpoint_every_steps=50", "train.keep_checkpoints=20", "train.checkpoint_every_minutes=0"],
    )
    spec = parity.l4_spec(base, "adam-cosine", "float32", epochs=8)  # 41 steps per epoch: 328 steps
    root = tmp_path_factory.mktemp("l4")
    return {b: train(spec, b, run_dir=root / b, progress=False) for b in ("torch", "tf")}


HANDOVER_STEP = 150


@pytest.mark.parametrize("src, dst", [("torch", "tf"), ("tf", "torch")])
def test_hand_over_to_the_other_framework(src, dst, l4_runs, tmp_path, record_property):
    run_dir = tmp_path / "run"
    shutil.copytree(l4_runs[src].run_dir, run_dir)
    for step, path in runstate.list_checkpoints(run_dir):
        if step > HANDOVER_STEP:
            path.unlink()
    got = resume(run_dir, dst, progress=False)
    assert [s["backend"] for s in got.extra["segments"]] == [src, dst]
    assert got.step_losses[:HANDOVER_STEP] == l4_runs[src].step_losses[:HANDOVER_STEP]
    bound = parity.bound("L4", "float32")
    h = np.array(got.step_losses)
    for ref_name in (src, dst):  # the single-backend run in either framework
        ref = l4_runs[ref_name]
        r = np.array(ref.step_losses)
        per_step = np.abs(h - r) / np.abs(r)
        test_gap = abs(got.test["loss"] - ref.test["loss"]) / ref.test["loss"]
        val_gap = max(abs(a["val_loss"] - b["val_loss"]) / b["val_loss"] for a, b in zip(got.history, ref.history))
        figures = (
            f"hand-over {src}->{dst} at step {HANDOVER_STEP} vs {ref_name} alone: max per-step rel loss gap "
            f"{per_step.max():.2e}, test loss rel gap {test_gap:.2e}, test acc {got.test['accuracy']:.4f} vs "
            f"{ref.test['accuracy']:.4f}, worst val loss rel gap {val_gap:.2e}"
        )
        record_property(f"vs {ref_name}", figures)
        print("\n" + figures)
        assert per_step.max() <= bound, (ref_name, per_step.max())
        assert test_gap <= bound and val_gap <= bound
        assert abs(got.test["accuracy"] - ref.test["accuracy"]) <= 1 / 359 + 1e-12  # at most one test image
    # the canonical checkpoint of a handed-over run is the finishing framework's
    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["backend"] == dst
    assert json.loads((run_dir / "result.json").read_text())["segments"][1]["backend"] == dst


@pytest.mark.parametrize("variant", list(parity.L4_VARIANTS))
def test_hand_over_in_float64_is_exact_to_rounding(variant, tmp_path):
    """In float64 rounding noise stays near 1e-14, so any gap a hand-over left would be a conversion error
    (a transposed slot, a lost step count, a BatchNorm statistic): held to the float64 L4 bound, both ways."""
    if not HAS_TF:
        pytest.skip("TensorFlow is not installed")
    base = presets.load(
        "cnn-digits",
        [
            "data.limit_train=320",
            "train.checkpoint_every_steps=7",
            "train.keep_checkpoints=20",
            "train.checkpoint_every_minutes=0",
        ],
    )
    spec = parity.l4_spec(base, variant, "float64", epochs=3)
    runs = {b: train(spec, b, run_dir=tmp_path / b, progress=False) for b in ("torch", "tf")}
    for src, dst in (("torch", "tf"), ("tf", "torch")):
        run_dir = tmp_path / f"{src}-{dst}"
        shutil.copytree(tmp_path / src, run_dir)
        for step, path in runstate.list_checkpoints(run_dir):
            if step > 14:
                path.unlink()  # hand over at step 14, the middle of epoch 2
        got = resume(run_dir, dst, progress=False)
        for ref in runs.values():
            h, r = np.array(got.step_losses), np.array(ref.step_losses)
            assert (np.abs(h - r) / np.abs(r)).max() <= parity.bound("L4", "float64")
            assert abs(got.test["loss"] - ref.test["loss"]) / ref.test["loss"] <= parity.bound("L4", "float64")


# --------------------------------------------------------------------------- refused resumes

TINY = ["data.limit_train=64", "train.epochs=2", "train.checkpoint_every_minutes=0"]  # 2 steps per epoch


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    spec = presets.load("cnn-digits", TINY + ["train.checkpoint_every_steps=1", "train.keep_checkpoints=10"])
    train(spec, "torch", run_dir=run_dir, progress=False)
    (run_dir / "result.json").unlink()  # as if it stopped after its last checkpoint: resumable
    return run_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def refused(run_dir: Path, exc: type, match: str, **kw):
    before = snapshot(run_dir) if run_dir.is_dir() else None
    with pytest.raises(exc, match=match) as err:
        resume(run_dir, progress=False, **kw)
    if before is not None:
        assert snapshot(run_dir) == before  # nothing in the run folder changed
    return str(err.value)


def test_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused(tmp_path, RunError, "not a dualkit run folder")
    refused(tmp_path / "missing", RunError, "does not exist")


def test_refuses_a_run_without_checkpoints(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    refused(run_copy, RunError, r"holds no run checkpoint .*start it again")


def test_refuses_a_run_of_another_task(tiny_run, tmp_path, capsys):
    dqn = tmp_path / "dqn"
    shutil.copytree(tiny_run, dqn)
    save_json(DQNRunSpec(), dqn / "spec.json")
    refused(dqn, RunError, r"is a 'dqn' run, not a classify run")
    # on the command line: a preset of another task than the run's, and a DQN spec over a classifier's checkpoints
    cls = tmp_path / "classify"
    shutil.copytree(tiny_run, cls)
    before = snapshot(cls)
    assert main(["train", "dqn-cartpole", "--resume", str(cls), "--quiet"]) == 2
    assert "is a 'classify' run, but preset 'dqn-cartpole' is a 'dqn' task" in capsys.readouterr().err
    assert snapshot(cls) == before
    before = snapshot(dqn)
    assert main(["train", "--resume", str(dqn), "--quiet"]) == 2
    assert "is a run checkpoint of task 'classify', not of a DQN run" in capsys.readouterr().err
    assert snapshot(dqn) == before


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.batch_size=16", "train.batch_size"),
        ("optim.lr=0.01", "optim.lr"),
        ("model.hidden=[64]", "model.hidden"),
        ("seed=1", "seed"),
        ("dtype='float64'", "dtype"),
    ],
)
def test_refuses_a_spec_change_that_cannot_continue(run_copy, override, field):
    msg = refused(run_copy, SpecError, rf"cannot resume: {field} was", overrides=["train.epochs=5", override])
    assert "train.epochs" in msg  # it says which fields may change


def test_refuses_a_hand_edited_spec_json(run_copy):
    spec = load_json(run_copy / "spec.json")
    save_json(apply_overrides(spec, ["optim.beta2=0.99"]), run_copy / "spec.json")
    refused(run_copy, SpecError, r"optim.beta2 was 0.999 .* now 0.99")


def test_refuses_fewer_epochs_than_trained(run_copy):
    for _, path in runstate.list_checkpoints(run_copy)[-1:]:
        path.unlink()  # newest left: step 3, the middle of epoch 2
    refused(run_copy, SpecError, r"train.epochs=1 .* at least 2", overrides=["train.epochs=1"])


def test_refuses_a_newer_checkpoint_format(run_copy):
    _, newest = runstate.list_checkpoints(run_copy)[-1]
    tensors, meta = checkpoint.load(newest)
    checkpoint.save(newest, tensors, {**meta, "runstate_version": runstate.RUNSTATE_VERSION + 1})
    refused(run_copy, CheckpointError, r"run-state format version 2, newer than this dualkit reads \(1\)")
    checkpoint.save(newest, tensors, {**meta, "format_version": checkpoint.FORMAT_VERSION + 1})
    refused(run_copy, CheckpointError, r"format version 2, newer than this dualkit reads \(1\); upgrade dualkit")


def test_refuses_other_training_data(run_copy):
    _, newest = runstate.list_checkpoints(run_copy)[-1]
    tensors, meta = checkpoint.load(newest)
    checkpoint.save(newest, tensors, {**meta, "data_fingerprint": "crc32:00000000"})
    refused(run_copy, DataError, r"differ from those the run was trained on")


def test_refused_cli_resume_exits_2_and_names_the_field(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy), "--set", "train.batch_size=8", "--quiet"]) == 2
    assert "cannot resume: train.batch_size was 32" in capsys.readouterr().err
    assert main(["train", "cnn-digits", "--resume", str(run_copy), "--out", str(run_copy), "--quiet"]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert snapshot(run_copy) == before
    assert main(["train", "--quiet"]) == 2
    assert "--resume RUN" in capsys.readouterr().err


def test_cli_resume_completes_a_run(run_copy, capsys):
    assert main(["train", "--resume", str(run_copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 4" in out and "backends: torch -> torch" in out
    assert (run_copy / "result.json").is_file()


# --------------------------------------------------------------------------- real processes


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dualkit", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "DUALKIT_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not runstate.list_checkpoints(run_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


PROC = ["data.limit_train=320", "train.epochs=12", "train.checkpoint_every_minutes=0"]  # 120 steps of 10 per epoch


def test_sigint_writes_a_checkpoint_and_the_resume_completes(tmp_path):
    run_dir = tmp_path / "run"
    sets = [a for s in PROC for a in ("--set", s)]
    proc = subprocess.Popen(
        cli("train", "cnn-digits", "--backend", "torch", "--out", str(run_dir), "--quiet", *sets),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(run_dir, proc)  # the step-0 checkpoint is written: now it is training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received" in err and f"Continue with: dualkit train --resume {run_dir}" in err
    assert "Traceback" not in err
    ckpt = runstate.latest(run_dir)
    assert 1 <= ckpt.state.step < 120 and not (run_dir / "result.json").exists()  # the step it was in finished

    done = subprocess.run(
        cli("train", "--resume", str(run_dir), "--quiet"),
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed from step {ckpt.state.step}" in done.stdout
    # bit-identical to the same run, uninterrupted, in this process
    ref = train(presets.load("cnn-digits", PROC), "torch", progress=False)
    weights, _ = checkpoint.load(run_dir / "model.safetensors")
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)
    assert json.loads((run_dir / "result.json").read_text())["test"] == ref.test


def check_run_folder(run_dir: Path) -> int:
    """Every run file is complete and readable (temp leftovers aside); returns the newest checkpoint's step."""
    assert load_json(run_dir / "spec.json")
    for line in (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []:
        json.loads(line)
    if (run_dir / "model.safetensors").exists():
        checkpoint.load(run_dir / "model.safetensors")
    if (run_dir / "result.json").exists():
        json.loads((run_dir / "result.json").read_text())
    found = runstate.list_checkpoints(run_dir)
    assert found, "no checkpoint"
    for _, path in found:
        runstate.load(path)  # every complete-named file is whole
    ckpt = runstate.latest(run_dir)
    assert not ckpt.skipped
    return ckpt.state.step


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    """SIGKILL a training process at random moments (>= 20 times, during start-up, training and checkpoint
    writes): the folder always holds a loadable checkpoint, no run file is ever damaged, and the resumed
    run finally completes bit-identical to an uninterrupted one."""
    kills_wanted = 20
    # 1500 steps: on a quiet machine a session trains ~100 steps per second, and every kill must land before
    # the run completes
    epochs, steps_per_epoch = 150, 10
    rnd = random.Random(1234)
    run_dir = tmp_path / "run"
    sets = [
        "data.limit_train=320",
        f"train.epochs={epochs}",
        "train.checkpoint_every_steps=3",
        "train.keep_checkpoints=2",
        "train.checkpoint_every_minutes=0",
    ]
    args = [a for s in sets for a in ("--set", s)]
    t0 = time.monotonic()
    kills, steps, moments, mid_write = 0, [0], {"start-up": 0, "training": 0}, 0
    errors = tmp_path / "stderr.txt"  # the latest session's, for the message of a failed assertion
    with errors.open("w") as err:  # the child keeps its own handle
        proc = subprocess.Popen(
            cli("train", "cnn-digits", "--out", str(run_dir), "--quiet", *args),
            cwd=tmp_path,
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    wait_for_checkpoint(run_dir, proc)
    while True:
        if kills < kills_wanted:
            if rnd.random() < 0.2:  # during start-up or the resume's own checks and rewrites
                moment = "start-up"
                time.sleep(rnd.uniform(0.0, 4.0))
            else:  # once it trains again (a newer checkpoint appeared): mid-step or mid-write
                moment = "training"
                while (
                    proc.poll() is None
                    and max((s for s, _ in runstate.list_checkpoints(run_dir)), default=0) <= steps[-1]
                ):
                    time.sleep(0.02)
                time.sleep(rnd.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                moments[moment] += 1
        rc = proc.wait(timeout=600)
        if rc == -signal.SIGKILL and (run_dir / "result.json").is_file():
            rc = 0  # the kill landed after the run had completed; a resume would rightly refuse a complete run
        mid_write += bool(runstate.temp_files(run_dir))  # killed while writing: a temp file is left, never a run file
        steps.append(check_run_folder(run_dir))
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, f"exit code {rc} after {kills} kills: {errors.read_text()[-2000:]}"
        with errors.open("w") as err:
            proc = subprocess.Popen(
                cli("train", "--resume", str(run_dir), "--quiet"),
                cwd=tmp_path,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
    wall = time.monotonic() - t0
    print(
        f"\nkill test: {kills} SIGKILLs ({moments}; {mid_write} left a temp file) in {wall:.0f} s; "
        f"newest checkpoint after each session: {steps[1:]}"
    )
    assert kills >= kills_wanted
    assert steps == sorted(steps)  # progress was never lost
    ref = train(presets.load("cnn-digits", sets), "torch", progress=False)
    weights, _ = checkpoint.load(run_dir / "model.safetensors")
    for name, value in ref.weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)
    res = json.loads((run_dir / "result.json").read_text())
    assert res["test"] == ref.test and res["steps"] == epochs * steps_per_epoch
