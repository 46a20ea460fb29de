"""Run checkpoints (core.runstate) and the stop-signal helper (core.interrupt): no framework needed."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from dualkit.core import checkpoint, runstate
from dualkit.core.batches import Normalizer, epoch_batches, make_rng
from dualkit.core.errors import CheckpointError, Interrupted, RunError, SpecError
from dualkit.core.interrupt import StopSignal
from dualkit.core.runs import prepare_run_dir
from dualkit.core.runstate import RunState
from dualkit.core.specs import apply_overrides, to_dict
from dualkit.tasks.classify_spec import ClassifyRunSpec

WEIGHTS = {"head.out.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "head.out.bias": np.ones(2, np.float32)}
OPTIM = {
    "step": np.array(3.0),
    "exp_avg.head.out.weight": np.full((2, 3), 0.5, np.float32),
    "exp_avg_sq.head.out.weight": np.full((2, 3), 0.25, np.float32),
}


def make_state(step: int = 3) -> RunState:
    rng = make_rng(0, "batches")
    rng.random(5)
    return RunState(
        task="classify",
        step=step,
        epoch=1,
        batch=step - 2,
        rngs={"batches": runstate.capture_rng(rng)},
        history=[{"epoch": 1, "train_loss": 1.25}],
        step_losses=[0.1 * (i + 1) / 3 for i in range(step)],  # not exactly representable in decimal
        counters={"images": 96, "segments": [{"backend": "torch", "from_step": 0}]},
    )


def save(run_dir, step, keep=3, **kw):
    return runstate.save(
        run_dir, make_state(step), WEIGHTS, OPTIM, meta={"kind": "classifier", "backend": "torch"}, keep=keep, **kw
    )


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- generators


def test_rng_capture_restore_continues_exactly():
    a = make_rng(7, "batches")
    a.permutation(100)
    saved = runstate.capture_rng(a)
    json.loads(json.dumps(saved))  # JSON-safe (PCG64's 128-bit ints are plain Python ints)
    expected = a.integers(0, 1000, 50)
    b = runstate.restore_rng(make_rng(0, "other"), json.loads(json.dumps(saved)))
    np.testing.assert_array_equal(b.integers(0, 1000, 50), expected)


def test_rng_restore_refuses_another_kind():
    with pytest.raises(CheckpointError, match="MT19937"):
        runstate.restore_rng(make_rng(0, "x"), np.random.Generator(np.random.MT19937(0)).bit_generator.state)


def test_replaying_an_epochs_first_batches_reproduces_the_generator():
    """The classifier's mid-epoch contract: epoch-start state + k batches drawn again = where the run was."""
    x = np.random.default_rng(0).integers(0, 255, (50, 8, 8, 1), dtype=np.uint8)
    y = np.arange(50) % 10
    norm = Normalizer.identity(1)
    rng = make_rng(0, "batches")
    start = runstate.capture_rng(rng)
    straight = list(epoch_batches(x, y, 8, rng, norm, crop_padding=1, flip=True))
    again = runstate.restore_rng(make_rng(0, "batches"), start)
    it = epoch_batches(x, y, 8, again, norm, crop_padding=1, flip=True)
    for _ in range(3):
        next(it)
    for (xa, ya), (xb, yb) in zip(straight[3:], it):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert runstate.capture_rng(again) == runstate.capture_rng(rng)


# --------------------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path):
    path = save(
        tmp_path, 3, framework_rng={"torch.cpu": np.arange(4, dtype=np.uint8)}, extra={"replay.obs": np.zeros((2, 4))}
    )
    assert path == tmp_path / "checkpoints" / "ckpt-000000003.safetensors"
    ckpt = runstate.load(path)
    st = make_state(3)
    assert ckpt.state == st  # losses exact (float64 tensor), generator state, history, counters
    assert ckpt.meta["kind"] == "run-checkpoint" and ckpt.meta["model_kind"] == "classifier"
    assert ckpt.meta["runstate_version"] == runstate.RUNSTATE_VERSION and ckpt.backend == "torch"
    assert set(ckpt.weights) == set(WEIGHTS) and set(ckpt.optim) == set(OPTIM)
    assert ckpt.optim["step"].shape == ()  # a 0-d tensor stays 0-d
    for k, v in OPTIM.items():
        np.testing.assert_array_equal(ckpt.optim[k], v)
    np.testing.assert_array_equal(ckpt.framework_rng["torch.cpu"], np.arange(4, dtype=np.uint8))
    assert ckpt.extra["replay.obs"].shape == (2, 4)
    # canonical names in the file itself: weights bare, the optimizer under optim.
    tensors, _ = checkpoint.load(path)
    assert "head.out.weight" in tensors and "optim.exp_avg.head.out.weight" in tensors


def test_keeps_the_last_k_and_latest_is_the_highest_step(tmp_path):
    for step in (3, 5, 12, 9, 20):
        save(tmp_path, step, keep=2)
    assert [s for s, _ in runstate.list_checkpoints(tmp_path)] == [12, 20]  # oldest deleted only after a newer one
    assert runstate.latest(tmp_path).state.step == 20


def test_latest_skips_a_damaged_file(tmp_path):
    save(tmp_path, 3)
    bad = save(tmp_path, 4)
    bad.write_bytes(bad.read_bytes()[:1000])  # e.g. a disk error; atomic writes never leave this
    ckpt = runstate.latest(tmp_path)
    assert ckpt.state.step == 3 and len(ckpt.skipped) == 1 and "ckpt-000000004" in ckpt.skipped[0]
    runstate.checkpoint_path(tmp_path, 3).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable run checkpoint"):
        runstate.latest(tmp_path)


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="holds no run checkpoint"):
        runstate.latest(tmp_path)


@pytest.mark.parametrize("key", ["runstate_version", "format_version"])
def test_a_newer_format_is_refused_not_skipped(tmp_path, key):
    save(tmp_path, 3)
    path = save(tmp_path, 5)
    tensors, meta = checkpoint.load(path)
    checkpoint.save(path, tensors, {**meta, key: 99})
    with pytest.raises(CheckpointError, match="newer than this dualkit") as err:
        runstate.latest(tmp_path)
    assert "99" in str(err.value) and "upgrade dualkit" in str(err.value)


def test_a_model_checkpoint_is_not_a_run_checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, WEIGHTS, {"kind": "classifier"})
    with pytest.raises(CheckpointError, match="not a run checkpoint"):
        runstate.load(path)


def test_temp_files_are_not_checkpoints_and_are_cleaned(tmp_path):
    save(tmp_path, 3)
    leftovers = [tmp_path / "checkpoints" / ".ckpt-000000006.safetensors.abc123.tmp", tmp_path / ".spec.json.x1.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("mine")
    assert [s for s, _ in runstate.list_checkpoints(tmp_path)] == [3]
    assert runstate.temp_files(tmp_path) == sorted(leftovers)
    runstate.clean_temp(tmp_path)
    assert not any(p.exists() for p in leftovers) and (tmp_path / "notes.tmp").exists()


def test_overwrite_removes_an_old_runs_checkpoints(tmp_path):
    save(tmp_path, 3)
    (tmp_path / "checkpoints" / "mine.txt").write_text("kept")
    with pytest.raises(RunError, match="checkpoints/.*--resume"):
        prepare_run_dir(tmp_path)
    prepare_run_dir(tmp_path, overwrite=True)
    assert runstate.list_checkpoints(tmp_path) == [] and (tmp_path / "checkpoints" / "mine.txt").exists()


def test_fingerprint_sees_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint8)
    assert runstate.fingerprint(a) == runstate.fingerprint(a.copy())
    b = a.copy()
    b[5] = 0
    assert runstate.fingerprint(b) != runstate.fingerprint(a)
    assert runstate.fingerprint(a.reshape(3, 4)) != runstate.fingerprint(a)
    assert runstate.fingerprint(a.astype(np.int8)) != runstate.fingerprint(a)


# --------------------------------------------------------------------------- spec compatibility

ALLOWED = ("train.epochs", "train.keep_checkpoints")


def test_allowed_changes_are_returned():
    old = ClassifyRunSpec()
    new = apply_overrides(old, ["train.epochs=30", "train.keep_checkpoints=5"])
    assert runstate.check_resumable(to_dict(old), to_dict(new), ALLOWED) == [
        ("train.epochs", 10, 30),
        ("train.keep_checkpoints", 3, 5),
    ]


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.batch_size=16", "train.batch_size"),
        ("optim.lr=0.5", "optim.lr"),
        ("model.channels=[8]", "model.channels"),
        ("schedule.name='step'", "schedule.name"),
    ],
)
def test_other_changes_name_the_field(override, field):
    old = ClassifyRunSpec()
    new = apply_overrides(old, ["train.epochs=30", override])
    with pytest.raises(SpecError, match=rf"cannot resume: {field} was .* now") as err:
        runstate.check_resumable(to_dict(old), to_dict(new), ALLOWED)
    assert "train.epochs" in str(err.value)  # and says what may change


# --------------------------------------------------------------------------- signals


def test_stop_signal_turns_a_signal_into_a_request(capsys):
    before = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait
            os.kill(os.getpid(), signal.SIGINT)
        err = stop.interrupted("checkpoint X; continue with: dualkit train --resume RUN")
    assert isinstance(err, Interrupted) and err.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM" in str(err) and "--resume RUN" in str(err)
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    assert "SIGTERM received" in capsys.readouterr().err


def test_disabled_stop_signal_leaves_the_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    with StopSignal(enabled=False) as stop:
        assert signal.getsignal(signal.SIGINT) is before
        assert not stop.requested
