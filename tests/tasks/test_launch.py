"""tasks/launch.py: ``dualkit train --workers N`` starts N workers on the framework's engine and watches over them.

The refusals run in this process. The rest start real workers (torch: torchrun with gloo), each command in a
session of its own with a hard timeout, its process group killed in ``finally`` (and the workers, which torchrun
puts in sessions of their own, die with their parent: PR_SET_PDEATHSIG):

- SIGINT to the launcher reaches every worker once; rank 0 writes a checkpoint and says how to continue; that
  checkpoint resumes on one worker, and (synchronised BatchNorm, float64) the run ends where an uninterrupted
  single-worker run of the same spec ends;
- a worker killed with SIGKILL takes the run down, within a bounded time, with a message naming it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualkit.cli import main
from dualkit.core import checkpoint, registry, runstate
from dualkit.tasks import presets
from dualkit.tasks.classify import resume, train

REPO = Path(__file__).resolve().parents[2]
needs_torch = pytest.mark.skipif(not registry.is_installed("torch"), reason="PyTorch is not installed")
START_TIMEOUT_S = 180  # the launcher, torchrun and two workers importing torch, on a busy 2-core machine
DOWN_WITHIN_S = 30  # a dead worker takes the run down within this (the launcher: a few seconds)
# float64, synchronised BatchNorm: 2 workers equal one worker with the global batch to rounding
# (8 steps an epoch; a constant learning rate, so that a resume with fewer epochs keeps every step's rate)
SPEC = [
    "dtype=float64",
    "model.bn_sync=true",
    "data.limit_train=256",
    "train.batch_size=32",
    "schedule.name=constant",
    "schedule.warmup_steps=0",
]


def test_dqn_refuses_workers_in_one_line(capsys):
    assert main(["train", "dqn-cartpole", "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--workers 2" in err and "one process" in err and "drop --workers" in err


def test_a_batch_that_does_not_cut_into_equal_shards_is_refused_before_any_worker_starts(tmp_path, capsys):
    code = main(["train", "cnn-digits", "--workers", "3", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "train.batch_size=32" in err and "3 equal shards" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "DUALKIT_THREADS": "2", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "dualkit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for(what, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while not what():
        assert proc.poll() is None, f"the launcher ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.2)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _worker_pid(root: int, rank: int) -> int | None:
    """The pid of worker ``rank`` among the launcher's descendants (torchrun's workers carry RANK)."""
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"torch.distributed.run" not in cmd:
            return pid
    return None


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its parent counts as ended)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


def _checkpoints(run_dir: Path) -> list:
    return runstate.list_checkpoints(run_dir) if (run_dir / "checkpoints").is_dir() else []


@pytest.mark.dist
@needs_torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_sigint_checkpoints_every_worker_and_the_run_resumes_on_one(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "cnn-digits", "--backend", "torch", "--workers", "2", "--out", str(run_dir), "--quiet"]
    args += [x for item in SPEC + ["train.epochs=40", "train.checkpoint_every_steps=4"] for x in ("--set", item)]
    proc = _start(args, tmp_path)
    try:
        _wait_for(lambda: any(step >= 8 for step, _ in _checkpoints(run_dir)), START_TIMEOUT_S, proc)
        workers = [_worker_pid(proc.pid, r) for r in (0, 1)]
        assert all(workers), workers
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        _kill(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "training stopped by SIGINT" in err and f"--resume {run_dir} --workers 2" in err, err[-2000:]
    assert "Traceback" not in err
    assert all(_gone(pid) for pid in workers)  # every worker is gone
    step, path = _checkpoints(run_dir)[-1]
    assert f"step {step} of" in err
    state = runstate.load(path).state
    assert state.counters["segments"] == [{"backend": "torch", "device": "cpu", "from_step": 0, "workers": 2}]
    # the checkpoint resumes on one worker (here, in this process) and ends where one worker ends
    epochs = f"train.epochs={step // 8 + 1}"
    resumed = resume(run_dir, overrides=[epochs], progress=False)
    alone = train(presets.load("cnn-digits", SPEC + [epochs]), "torch", progress=False)
    np.testing.assert_allclose(resumed.step_losses, alone.step_losses, rtol=1e-10)
    for name, value in alone.weights.items():
        np.testing.assert_allclose(resumed.weights[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    result = json.loads((run_dir / "result.json").read_text())
    assert [seg.get("workers", 1) for seg in result["segments"]] == [2, 1]
    assert checkpoint.load(run_dir / "model.safetensors")[1]["spec"]["model"]["bn_sync"] is True


@pytest.mark.dist
@needs_torch
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_a_killed_worker_takes_the_run_down_with_a_message(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "cnn-digits", "--backend", "torch", "--workers", "2", "--out", str(run_dir), "--quiet"]
    args += [x for item in ["train.epochs=200", "train.checkpoint_every_steps=10"] for x in ("--set", item)]
    proc = _start(args, tmp_path)
    try:
        _wait_for(lambda: any(step >= 10 for step, _ in _checkpoints(run_dir)), START_TIMEOUT_S, proc)
        victim = _worker_pid(proc.pid, 1)
        survivor = _worker_pid(proc.pid, 0)
        assert victim and survivor
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=DOWN_WITHIN_S)
        took = time.monotonic() - t0
    finally:
        _kill(proc)
    assert proc.returncode == 1
    assert took < DOWN_WITHIN_S
    last = err.strip().splitlines()[-1]
    assert last.startswith("dualkit: error: worker 1 of 2") and "died" in last and f"(pid {victim})" in last, err
    assert f"--resume {run_dir} --workers 2" in last and "Traceback" not in err
    assert _gone(survivor)


@pytest.mark.gpu
@pytest.mark.dist
def test_two_workers_on_two_gpus_train_over_nccl(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs: NCCL runs one worker per GPU")
    run_dir = tmp_path / "run"
    args = ["train", "cnn-digits", "--backend", "torch", "--device", "gpu", "--workers", "2", "--out", str(run_dir)]
    proc = _start([*args, "--quiet", "--set", "train.epochs=1"], tmp_path)
    try:
        _, err = proc.communicate(timeout=START_TIMEOUT_S)
    finally:
        _kill(proc)
    assert proc.returncode == 0, err[-2000:]
    segments = json.loads((run_dir / "result.json").read_text())["segments"]
    assert segments == [{"backend": "torch", "device": "gpu", "from_step": 0, "workers": 2}]
