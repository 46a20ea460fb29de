"""Run folders: refuse to clobber a run, overwrite only run files, metric logs, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

import dualkit.core.runs
from dualkit.core.errors import RunError
from dualkit.core.runs import (
    METRICS_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RUN_FILES,
    SPEC_FILE,
    MetricLog,
    atomic_write_bytes,
    atomic_write_text,
    default_run_dir,
    is_run_dir,
    prepare_run_dir,
    read_json,
    require_run_dir,
    write_json,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (folder / name).write_text(f"old {name}\n")


def test_prepare_creates_missing_folders(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    assert prepare_run_dir(run) == run
    assert run.is_dir() and not any(run.iterdir())


def test_prepare_accepts_an_empty_or_unrelated_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("present", [RUN_FILES, (SPEC_FILE,), (MODEL_FILE,), (METRICS_FILE, RESULT_FILE)])
def test_prepare_refuses_a_run_and_leaves_it_untouched(tmp_path, present):
    run = tmp_path / "run"
    run.mkdir()
    for name in present:
        (run / name).write_text(f"old {name}")
    (run / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(RunError) as err:
        prepare_run_dir(run)
    msg = str(err.value)
    assert "--overwrite" in msg and str(run) in msg
    for name in present:
        assert name in msg
    assert snapshot(tmp_path) == before


def test_overwrite_removes_only_run_files(tmp_path):
    run = tmp_path / "run"
    fake_run(run)
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "loss.png").write_bytes(b"\x89PNG")
    (run / "model.pt").write_bytes(b"native artifact")
    prepare_run_dir(run, overwrite=True)
    assert snapshot(run) == {"notes.txt": b"mine", "plots/loss.png": b"\x89PNG", "model.pt": b"native artifact"}


def test_prepare_refuses_a_file(tmp_path):
    path = tmp_path / "run"
    path.write_text("a file")
    for overwrite in (False, True):
        with pytest.raises(RunError, match="not a folder"):
            prepare_run_dir(path, overwrite=overwrite)
    assert path.read_text() == "a file"


def test_require_run_dir(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        require_run_dir(tmp_path / "missing")
    with pytest.raises(RunError, match=r"not a dualkit run folder.*spec\.json"):
        require_run_dir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="does not exist"):
        require_run_dir(tmp_path / "file")
    assert not is_run_dir(tmp_path)
    (tmp_path / SPEC_FILE).write_text("{}")
    assert is_run_dir(tmp_path)
    assert require_run_dir(tmp_path) == tmp_path


def test_metric_log(tmp_path):
    log = MetricLog(tmp_path / METRICS_FILE)
    assert log.read() == []
    records = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "lr": 1e-3}]
    for r in records:
        log.append(r)
    assert log.read() == records
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2  # one complete JSON line per record
    assert MetricLog(tmp_path / METRICS_FILE).read() == records  # a new reader sees the same
    log.append({"epoch": 3})
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]


def test_metric_log_skips_blank_lines(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n')
    assert MetricLog(path).read() == [{"epoch": 1}, {"epoch": 2}]


def test_atomic_write_text(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def broken_replace(src, dst):
        raise OSError("boom")

    monkeypatch.setattr(dualkit.core.runs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="boom"):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_and_read_json(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    write_json(tmp_path / "x.json", obj)
    assert read_json(tmp_path / "x.json") == obj


def test_default_run_dir_is_unique(tmp_path):
    first = default_run_dir("cnn-digits", "torch", tmp_path)
    assert first.parent == tmp_path and first.name.startswith("cnn-digits-torch-")
    first.mkdir()
    second = default_run_dir("cnn-digits", "torch", tmp_path)
    assert second != first and not second.exists()


# --------------------------------------------------------------------------- one writer per run folder
HOLD = """
import sys, time
from pathlib import Path
from dualkit.core.runs import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(run_dir):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    from dualkit.core.runs import LOCK_FILE, RunLock

    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        with pytest.raises(RunError, match=rf"being written by another dualkit process \(pid {proc.pid} on "):
            with RunLock(run_dir):
                pass
        assert (run_dir / LOCK_FILE).exists()  # the holder's lock is left alone
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with RunLock(run_dir):  # a killed holder's lock is released by the OS: never stale
        pass
    assert not any(run_dir.iterdir())  # and the lock file goes with the lock
    fresh = tmp_path / "fresh"
    with RunLock(fresh):
        pass
    assert not fresh.exists()  # nothing was written: the folder the lock made is gone again


def test_one_writer_decorator_holds_the_lock_for_the_call(tmp_path):
    from dualkit.core.runs import LOCK_FILE, one_writer

    seen = []

    @one_writer
    def work(spec, *, run_dir=None):
        seen.append((run_dir / LOCK_FILE).exists() if run_dir else None)
        if run_dir:
            (run_dir / "spec.json").write_text("{}")

    work(None)
    work(None, run_dir=tmp_path / "run")
    assert seen == [None, True]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["spec.json"]  # the lock file is removed after


def test_lock_on_a_file_path_is_refused(tmp_path):
    from dualkit.core.runs import RunLock

    (tmp_path / "f").write_text("user data")
    with pytest.raises(RunError, match="not a folder"):
        with RunLock(tmp_path / "f"):
            pass
    assert (tmp_path / "f").read_text() == "user data"
