"""``dualkit export`` end to end: every task's inference model in every format from both backends, each export
verified three ways (the artifact in its runtime, the backend that made it, the other backend) and recorded in
the run folder; the .keras, .pt and .pt2 files load in a Python that never imports dualkit; the export parity
level; and what export refuses (a wrong suffix or backend, an existing artifact, a missing exporter)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dualkit.cli import main
from dualkit.core import registry
from dualkit.core.runs import read_json
from dualkit.tasks import export, presets
from dualkit.tasks import registry as task_registry

pytestmark = pytest.mark.skipif(
    not (registry.is_installed("torch") and registry.is_installed("tf")), reason="needs PyTorch and TensorFlow"
)
slow = pytest.mark.slow

# Tiny runs: what is exported does not depend on how well the model learned.
RUNS = {
    "classify": "train cnn-digits --backend torch --set train.epochs=1 --set data.limit_train=256".split(),
    "masked": (
        "pretrain masked-digits --backend tf --set max_steps=3 --set probe.enabled=false --set finetune.fractions=[]"
    ).split(),
    "dqn": (
        "train dqn-cartpole --backend tf --set qnet.hidden=[16] --set dqn.total_steps=600 "
        "--set dqn.learning_starts=200 --set dqn.eval_every=0 --set dqn.test_episodes=2 --set dqn.stop_return=0"
    ).split(),
}
EXPORTS = [(fmt, backend) for fmt, makers in export.FORMATS.items() for backend in makers]


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny finished run per task, through the CLI, shared: each test exports to its own paths."""
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for task, argv in RUNS.items():
        out[task] = root / task
        assert main([*argv, "--quiet", "--out", str(out[task])]) == 0
    return out


def needs_onnx(*backends: str) -> None:
    missing = sorted({p for b in backends for p in export.missing_packages("onnx", b)})
    if missing:
        pytest.skip(f"ONNX export needs {', '.join(missing)}: {export.ONNX_INSTALL}")


def refused(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert err.startswith("dualkit: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------- every task, every format


@pytest.mark.parametrize("task", sorted(RUNS))
@pytest.mark.parametrize(
    "fmt,backend", [pytest.param(f, b, marks=[slow] if f == "onnx" else []) for f, b in EXPORTS]
)  # the torch ONNX exporter takes a few seconds per file
def test_every_task_exports_every_format_verified_three_ways(runs, task, fmt, backend):
    if fmt == "onnx":
        needs_onnx("torch", "tf")
    run_dir = runs[task]
    rep = task_registry.for_run(run_dir).export(run_dir, fmt, backend, None, "cpu")
    assert rep.ok, rep.rows
    assert rep.artifact == export.default_out(run_dir, fmt, backend) and rep.artifact.exists()
    assert len(rep.rows) == 3 and all(row[-1] == "PASS" for row in rep.rows)
    record = read_json(rep.record)
    assert rep.record == run_dir / export.EXPORT_DIR / f"{fmt}-{backend}.json"
    assert record["passed"] and record["format"] == fmt and record["backend"] == backend
    labels = {r["output"] for r in record["rows"]} | {r["vs"] for r in record["rows"]}
    other = "tf" if backend == "torch" else "torch"
    third = f"onnx from {other}" if fmt == "onnx" else f"{other} (dualkit)"
    assert labels == {f"{fmt} from {backend}", f"{backend} (dualkit)", third}
    assert all(r["max_abs_diff"] <= 1e-5 for r in record["rows"])
    predicted = {"classify": "classes", "masked": None, "dqn": "actions"}[task]
    assert record["output"]["predicted"] == predicted
    assert all(r["identical"] is (True if predicted else None) for r in record["rows"])
    assert record["opset"] == (export.OPSET if fmt == "onnx" else None)
    layout = "NC" if task == "dqn" else ("NCHW" if fmt == "pt" else "NHWC")
    assert record["input"]["layout"] == layout and record["input"]["shape"][0] == "batch"
    assert record["probe_size"] == export.PROBE_SIZE
    assert not [p for p in rep.artifact.parent.iterdir() if p.name.startswith(".")]  # no temp left behind


@slow
def test_onnx_files_have_names_opset_metadata_and_a_dynamic_batch(runs):
    needs_onnx("torch", "tf")
    import onnx
    import onnxruntime as ort

    run_dir = runs["classify"]
    spec = presets.load("cnn-digits")
    for backend in ("torch", "tf"):
        path = run_dir / f"check-{backend}.onnx"
        task_registry.for_run(run_dir).export(run_dir, "onnx", backend, path, "cpu")
        proto = onnx.load(str(path))
        assert {o.domain: o.version for o in proto.opset_import}[""] == export.OPSET
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["dualkit.exported_from"] == backend and json.loads(meta["dualkit.normalizer"])["mean"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, out.name) == ("images", "logits")
        assert inp.shape == ["batch", 8, 8, 1] and out.shape == ["batch", spec.model.num_classes]
        for n in (1, 5):
            assert session.run(None, {"images": np.zeros((n, 8, 8, 1), np.float32)})[0].shape == (n, 10)


# --------------------------------------------------------------------------- without dualkit

CLEAN = textwrap.dedent(
    """
    import importlib.abc, sys
    import numpy as np

    class NoDualkit(importlib.abc.MetaPathFinder):  # any import of dualkit fails, whatever is installed
        def find_spec(self, name, path=None, target=None):
            if name == "dualkit" or name.startswith("dualkit."):
                raise ModuleNotFoundError(f"no dualkit here: {name}")

    sys.meta_path.insert(0, NoDualkit())
    import torch
    import keras

    x = np.load("probe.npy")
    got = {}
    model = keras.saving.load_model("model.keras")
    got["keras"] = np.asarray(model(x))
    payload = torch.load("model.pt", weights_only=True)
    body = torch.nn.Sequential(*(getattr(torch.nn, name)(**args) for name, args in payload["layers"]))
    body.load_state_dict(payload["state_dict"])
    body.eval()
    with torch.no_grad():
        got["pt"] = body(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
        got["pt2"] = torch.export.load("model.pt2").module()(torch.from_numpy(x)).numpy()
    want = np.load("want.npy")
    for fmt, y in got.items():
        assert np.abs(y - want).max() <= 1e-5, (fmt, np.abs(y - want).max())
    assert not [m for m in sys.modules if m == "dualkit" or m.startswith("dualkit.")], "dualkit was imported"
    print("loaded without dualkit:", ", ".join(sorted(got)))
    """
)


@slow
def test_keras_pt_and_pt2_load_in_a_python_that_never_imports_dualkit(runs, tmp_path):
    run_dir = runs["classify"]
    task = task_registry.for_run(run_dir)
    for fmt, backend in (("keras", "tf"), ("pt", "torch"), ("pt2", "torch")):
        assert task.export(run_dir, fmt, backend, tmp_path / f"model.{fmt}", "cpu").ok
    source = task.export_source(run_dir, "cpu")
    np.save(tmp_path / "probe.npy", source.probe)
    np.save(tmp_path / "want.npy", source.reference("torch"))
    # -I: isolated (no PYTHONPATH, no user site, no current folder on sys.path); run outside the repository
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded without dualkit: keras, pt, pt2" in proc.stdout


# --------------------------------------------------------------------------- the CLI


def test_cli_prints_the_table_and_the_record_and_refuses_to_overwrite(runs, tmp_path, capsys):
    run_dir, out = runs["classify"], tmp_path / "clf.pt"
    assert main(["export", str(run_dir), "--format", "pt", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| output" in printed and "| compared with" in printed and "PASS" in printed and "FAIL" not in printed
    assert "input 'images' float32 NCHW (batch, 1, 8, 8) -> 'logits'" in printed
    assert f"wrote {out}" in printed and "pt-torch.json" in printed
    before = out.read_bytes()
    refused(capsys, ["export", str(run_dir), "--format", "pt", "--out", str(out)], "already exists", "--overwrite")
    assert out.read_bytes() == before
    assert main(["export", str(run_dir), "--format", "pt", "--out", str(out), "--overwrite"]) == 0


def test_backend_defaults_to_the_runs_own_where_it_writes_the_format(runs, capsys):
    assert export.resolve_backend("onnx", None, "tf") == "tf"
    assert export.resolve_backend("onnx", None, "torch") == "torch"
    assert export.resolve_backend("keras", None, "torch") == "tf"
    assert export.resolve_backend("pt2", "pytorch", "tf") == "torch"


def test_refusals(runs, tmp_path, capsys):
    run_dir = str(runs["dqn"])
    refused(capsys, ["export", run_dir, "--format", "pt", "--out", str(tmp_path / "x.keras")], "must end in .pt")
    refused(capsys, ["export", run_dir, "--format", "pt2", "--backend", "tf"], "written by torch", "not tf")
    refused(capsys, ["export", run_dir, "--format", "keras", "--backend", "jax"], "unknown backend")
    refused(capsys, ["export", str(tmp_path), "--format", "pt"], "not a dualkit run folder")
    with pytest.raises(SystemExit):
        main(["export", run_dir, "--format", "tflite"])
    capsys.readouterr()


def test_a_missing_exporter_says_what_to_install_and_writes_nothing(runs, tmp_path, capsys, monkeypatch):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(
        export.importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    out = tmp_path / "m.onnx"
    refused(
        capsys,
        ["export", str(runs["dqn"]), "--format", "onnx", "--backend", "tf", "--out", str(out)],
        "tf2onnx",
        "pip install 'dualkit[onnx]'",
    )
    assert not out.exists()


def test_export_of_a_folder_another_process_writes_is_refused(runs, tmp_path, capsys):
    from tests.core.test_runs import _holder

    run_dir = tmp_path / "run"
    shutil.copytree(runs["dqn"], run_dir)
    proc = _holder(run_dir)
    try:
        out = tmp_path / "model.pt"
        argv = ["export", str(run_dir), "--format", "pt", "--out", str(out)]
        refused(capsys, argv, "is being written by another dualkit process")
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- the export parity level


@slow
def test_export_level_of_dualkit_parity(capsys):
    """Every format from both backends plus the two ONNX files against each other, for DQN's short run."""
    needs_onnx("torch", "tf")
    assert main(["parity", "dqn-cartpole", "--levels", "export", "--dtype", "float32", "--seeds", "0"]) == 0
    printed = capsys.readouterr().out
    names = ["onnx (torch) vs torch", "onnx (tf) vs tf", "savedmodel (tf) vs tf", "pt2 (torch) vs torch"]
    names += ["keras (tf) vs tf", "pt (torch) vs torch", "onnx (torch) vs onnx (tf)"]
    for name in names:
        assert name in printed, name
    assert "7 passed, 0 failed" in printed


def test_export_level_reports_a_missing_exporter_as_a_failing_check(runs, monkeypatch):
    monkeypatch.setattr(export, "missing_packages", lambda fmt, backend: ["onnxscript"] if fmt == "onnx" else [])
    source = task_registry.for_run(runs["dqn"]).export_source(runs["dqn"], "cpu")
    checks = export.export_checks(source, "cpu")
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == ["onnx (torch) vs torch", "onnx (tf) vs tf"]
    assert all(export.ONNX_INSTALL in c.detail for c in failed)
    assert all(c.passed and c.level == "export" for c in checks if c not in failed)
    assert len(checks) == 6  # no ONNX files to compare with each other
