"""The command line: exit codes, messages on stderr, and user folders left alone when it refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dualkit.cli import main
from dualkit.core import registry
from dualkit.core.runs import read_json

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = registry.is_installed("torch")
HAS_TF = registry.is_installed("tf")
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(folder)) + "/": (b"", 0) for p in folder.rglob("*") if p.is_dir()}


def copy_run(torch_run, dst: Path) -> Path:
    shutil.copytree(torch_run[0], dst)
    return dst


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run ``argv``; it must exit 2 with one clean error message on stderr naming ``needles``."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.startswith("dualkit: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------- info


def test_info_lists_both_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in ("torch", "tf"):
        row = [line for line in lines if line.startswith(f"| {name} ")]
        assert len(row) == 1, out
        installed = registry.is_installed(name)
        assert ("usable" if installed else "not installed") in row[0]
    assert "cnn-digits" in out and "cnn-cifar10" in out


def test_info_shows_how_to_install_a_missing_framework(capsys, monkeypatch):
    monkeypatch.setitem(
        registry.BACKENDS,
        "fakefw",
        ("dualkit.backends.fakefw", "dualkit_no_such_framework", "pip install dualkit-fakefw"),
    )
    assert main(["info"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fakefw ")]
    assert len(row) == 1 and "not installed" in row[0] and "pip install dualkit-fakefw" in row[0]


# --------------------------------------------------------------------------- train


@needs_torch
def test_train_prints_the_table_and_writes_the_run(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = [
        "train",
        "cnn-digits",
        "--set",
        "train.epochs=1",
        "--set",
        "data.limit_train=256",
        "--out",
        str(out_dir),
        "--quiet",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("| epoch | train loss") and "val acc" in lines[0]
    assert lines[1].startswith("|---") and lines[2].startswith("| ")
    assert len({len(line) for line in lines[:3]}) == 1  # an aligned table, one row per epoch
    assert lines[3].startswith("test: loss ") and "accuracy" in lines[3]
    assert f"run folder: {out_dir}" in out
    assert "epoch 1/1" not in err  # --quiet: no progress bar
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model.safetensors",
        "result.json",
        "spec.json",
        "tensorboard",
    ]
    assert read_json(out_dir / "result.json")["backend"] == "torch"
    assert read_json(out_dir / "spec.json")["data"]["limit_train"] == 256


@needs_torch
def test_second_train_into_the_same_out_is_refused(torch_run, tmp_path, capsys):
    run_dir = copy_run(torch_run, tmp_path / "run")
    before = snapshot(tmp_path)
    refused(
        capsys,
        ["train", "cnn-digits", "--set", "train.epochs=1", "--out", str(run_dir), "--quiet"],
        str(run_dir),
        "already holds a run",
        "--overwrite",
    )
    assert snapshot(tmp_path) == before


@needs_torch
def test_train_overwrite_replaces_the_run_and_keeps_user_files(torch_run, tmp_path, capsys):
    run_dir = copy_run(torch_run, tmp_path / "run")
    (run_dir / "notes.txt").write_text("mine")
    old_model = (run_dir / "model.safetensors").read_bytes()
    argv = [
        "train",
        "cnn-digits",
        "--set",
        "train.epochs=1",
        "--set",
        "data.limit_train=128",
        "--out",
        str(run_dir),
        "--quiet",
        "--overwrite",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # a new log, not appended to the old
    assert read_json(run_dir / "result.json")["epochs"] == 1
    assert (run_dir / "model.safetensors").read_bytes() != old_model


SPEC_ERRORS = [
    (["train", "nope"], ["unknown task preset 'nope'", "cnn-digits"]),
    (["train", "cnn-digits", "--backend", "jax"], ["unknown backend 'jax'", "torch, tf"]),
    (["train", "cnn-digits", "--set", "optim.lrr=0.1"], ["optim.lrr", "optim.lr"]),
    (["train", "cnn-digits", "--set", "optim.lr=abc"], ["optim.lr", "number"]),
    (["train", "cnn-digits", "--set", "train.epochs=1.5"], ["train.epochs", "integer"]),
    (["train", "cnn-digits", "--set", "optim"], ["section.key=value"]),
    (["train", "cnn-digits", "--set", "model.dropout=1.5"], ["model.dropout"]),
]


@pytest.mark.parametrize(
    "argv, needles", SPEC_ERRORS, ids=["preset", "backend", "key", "type", "int", "no-equals", "range"]
)
def test_bad_arguments_exit_2_and_change_nothing(tmp_path, capsys, argv, needles):
    (tmp_path / "notes.txt").write_text("mine")
    out_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    refused(capsys, [*argv, "--out", str(out_dir), "--quiet"], *needles)
    assert snapshot(tmp_path) == before
    assert not out_dir.exists()


@needs_torch
def test_missing_dataset_exits_2_and_changes_nothing(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    out_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    missing = tmp_path / "no-cifar"
    refused(
        capsys,
        [
            "train",
            "cnn-digits",
            "--set",
            'data.name="cifar10"',
            "--set",
            f"data.root={missing}",
            "--out",
            str(out_dir),
            "--quiet",
        ],
        "CIFAR-10 not found",
        str(missing / "cifar-10-batches-bin"),
        "data.root",
    )
    assert snapshot(tmp_path) == before


def test_bad_device_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "cnn-digits", "--device", "tpu"])
    assert exc.value.code == 2
    assert "tpu" in capsys.readouterr().err


# --------------------------------------------------------------------------- eval


@needs_tf
def test_eval_a_torch_run_in_tf(torch_run, capsys):
    run_dir, _, result = torch_run
    before = snapshot(run_dir)
    assert main(["eval", str(run_dir), "--backend", "tf"]) == 0
    out = capsys.readouterr().out
    header, rule, row = out.splitlines()
    assert "trained in" in header and "evaluated in" in header
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["torch", "tf", "test"]
    assert cells[5] == f"{result.test['accuracy']:.4f}"
    assert snapshot(run_dir) == before


@needs_torch
def test_eval_junk_checkpoint_exits_2_and_changes_nothing(torch_run, tmp_path, capsys):
    run_dir = copy_run(torch_run, tmp_path / "run")
    (run_dir / "model.safetensors").write_bytes(os.urandom(512))
    before = snapshot(tmp_path)
    refused(capsys, ["eval", str(run_dir)], "not a safetensors file", "model.safetensors")
    refused(
        capsys, ["port", str(run_dir), "--to", "tf", "--out", str(run_dir / "model.keras")], "not a safetensors file"
    )
    assert snapshot(tmp_path) == before


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(capsys, ["eval", str(tmp_path / "missing")], "does not exist")
    refused(capsys, ["eval", str(tmp_path)], "not a dualkit run folder")
    refused(
        capsys, ["port", str(tmp_path), "--to", "torch", "--out", str(tmp_path / "m.pt")], "not a dualkit run folder"
    )
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------- port


@needs_tf
def test_port_to_tf_and_refuse_to_overwrite(torch_run, tmp_path, capsys):
    run_dir = torch_run[0]
    run_before = snapshot(run_dir)
    out = tmp_path / "x.keras"
    assert main(["port", str(run_dir), "--to", "tf", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert out.is_file()
    assert f"wrote {out}" in stdout
    row = stdout.splitlines()[2]
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["torch", "tf", "359", "yes"]
    assert snapshot(run_dir) == run_before

    before = snapshot(tmp_path)
    refused(capsys, ["port", str(run_dir), "--to", "tf", "--out", str(out)], str(out), "already exists", "--overwrite")
    assert snapshot(tmp_path) == before

    inode = out.stat().st_ino
    assert main(["port", str(run_dir), "--to", "keras", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert out.stat().st_ino != inode  # written anew (temp file, then renamed over the old one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.keras"]  # no temp files left


@needs_torch
def test_port_with_a_wrong_suffix(torch_run, tmp_path, capsys):
    refused(capsys, ["port", str(torch_run[0]), "--to", "tf", "--out", str(tmp_path / "x.pt")], ".keras")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- console entry point


def test_module_entry_point_reports_errors_on_stderr():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(registry.ENV_VAR, None)
    proc = subprocess.run(
        [sys.executable, "-m", "dualkit", "train", "nope"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown task preset 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_console_script_target_is_main():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "dualkit = dualkit.cli:main" in scripts


# --------------------------------------------------------------------------- one writer per run folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_torch
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_train_into_a_folder_another_process_writes_is_refused(torch_run, tmp_path, capsys, extra):
    from tests.core.test_runs import _holder

    run_dir = tmp_path / "run"
    shutil.copytree(torch_run[0], run_dir)
    proc = _holder(run_dir)
    try:
        before = _snapshot(run_dir)
        err = refused(
            capsys,
            ["train", "cnn-digits", "--out", str(run_dir), "--quiet", *extra],
            "is being written by another dualkit process",
            f"pid {proc.pid}",
        )
        assert "--out" in err
        assert _snapshot(run_dir) == before  # nothing deleted or written
        refused(capsys, ["train", "--resume", str(run_dir), "--quiet"], "is being written by another dualkit process")
        assert _snapshot(run_dir) == before
    finally:
        proc.kill()
        proc.wait(timeout=30)


@needs_torch
@pytest.mark.slow
def test_two_trainings_started_together_into_one_folder(tmp_path):
    """One of them trains; the other is refused at once with a clear message (never two writers)."""
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "dualkit",
        "train",
        "cnn-digits",
        "--backend",
        "torch",
        "--set",
        "train.epochs=3",
        "--set",
        "data.limit_train=512",
        "--out",
        str(run_dir),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    err = next(e for (_, e), p in zip(results, procs) if p.returncode == 2)
    assert "Traceback" not in err
    assert "being written by another dualkit process" in err or "already holds a run" in err, err
    epochs = [r["epoch"] for r in map(__import__("json").loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [1, 2, 3]


# --------------------------------------------------------------------------- the file system says no


@pytest.mark.parametrize(
    "code, fix",
    [("ENOSPC", "free some space"), ("EROFS", "read-only"), ("ENOTDIR", "a file stands where a folder is needed")],
)
def test_an_os_error_is_one_line_that_says_what_to_do(tmp_path, capsys, monkeypatch, code, fix):
    import errno

    from dualkit import cli

    def broken(args):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "x.json"))

    monkeypatch.setattr(cli, "cmd_info", broken)  # build_parser binds the command when main() runs
    assert cli.main(["info"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("dualkit: error: ") and str(tmp_path / "x.json") in err and fix in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bench_compare_on_a_missing_file(tmp_path, capsys):
    refused(capsys, ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")], "does not exist")


# --------------------------------------------------------------------------- parity --record / --against


@needs_torch
@needs_tf
def test_parity_records_golden_files_and_checks_one_backend_against_them(tmp_path, capsys):
    golden, report = tmp_path / "golden", tmp_path / "against.json"
    base = ["parity", "cnn-digits", "--levels", "L0,L3", "--dtype", "float32"]
    assert main([*base, "--record", str(golden)]) == 0
    out = capsys.readouterr().out
    assert "L3    | float32 | adamw: tf vs torch, recorded" in out and f"wrote {golden}: 13 cases" in out
    assert (golden / "manifest.json").is_file() and (golden / "outputs-tf.safetensors").is_file()
    assert main(["parity", "cnn-digits", "--against", str(golden), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "adamw: torch cpu vs torch cpu, recorded" in out and "26 passed, 0 failed" in out
    assert f"checked torch on cpu against {golden}" in out
    record = read_json(report)
    assert record["mode"] == "against" and record["golden"] == str(golden) and len(record["checks"]) == 26
    assert main(["parity", "cnn-digits", "--against", str(golden), "--backend", "tf", "--levels", "L0"]) == 0
    assert "cross-entropy: tf cpu vs tf cpu, recorded" in capsys.readouterr().out
    refused(capsys, ["parity", "cnn-digits", "--against", str(golden), "--levels", "L2"], "L2 has no golden files")
    refused(capsys, ["parity", "cnn-digits", "--against", str(golden), "--dtype", "float64"], "float32 only")
    refused(capsys, ["parity", "cnn-digits", "--against", str(golden), "--set", "seed=2"], "another spec (seed")
    refused(capsys, ["parity", "dqn-cartpole", "--against", str(golden)], "of a 'classify' task")
    refused(capsys, ["parity", "cnn-digits", "--against", str(golden), "--l4-steps", "9"], "drop --l4-steps")
    refused(capsys, ["parity", "cnn-digits", "--against", str(tmp_path)], "not a golden-file recording")
    refused(capsys, ["parity", "cnn-digits", "--record", str(golden), "--device", "gpu"], "recorded on CPU")
    refused(capsys, ["parity", "cnn-digits", "--record", str(golden), "--levels", "L5"], "L5 has no golden files")
    refused(capsys, ["parity", "cnn-digits", "--backend", "tf", "--levels", "L0"], "use it with --against")
    with pytest.raises(SystemExit):  # --record and --against exclude each other
        main(["parity", "cnn-digits", "--record", str(golden), "--against", str(golden)])
    capsys.readouterr()
