"""The prepared GPU check (benchmarks/gpu_check.py, gpu_check.sh), tried on CPU: it runs in a Python that cannot
import TensorFlow, Keras, Gymnasium, tensorboardX, matplotlib or scikit-learn (as on the GPU machine), checks every
recorded task and writes one JSON + Markdown report; it refuses an old torch, a missing GPU or no golden files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualkit.benchmarks import gpu_check
from dualkit.core.errors import DualkitError
from dualkit.tasks import golden_files, presets
from dualkit.tasks import registry as task_registry

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "cnn-digits": ["data.limit_train=64", "train.batch_size=16"],
    "masked-digits": ["data.limit_train=64"],
    "bert-mlm-tiny": ["data.limit_words=3000"],
    "bert-tag-tiny": ["data.limit_words=2000"],
}
L4_STEPS = {"cnn-digits": 8, "masked-digits": 4, "dqn-cartpole": 20, "bert-mlm-tiny": 4, "bert-tag-tiny": 4}
LEVELS = {
    "dqn-cartpole": ["L1", "L4"]
}  # the others L4 only (their L1 sweeps cost seconds in TF; tests/parity has them)
# What the GPU machine lacks: in the check's Python (a sitecustomize on PYTHONPATH, loaded at start-up) any import
# of these fails and find_spec says "not installed".
BLOCKED = ("tensorflow", "keras", "gymnasium", "tensorboardX", "matplotlib", "sklearn", "scipy", "onnx", "tf2onnx")
SITECUSTOMIZE = f"""
import importlib.util, sys
BLOCKED = {BLOCKED!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)")
sys.meta_path.insert(0, Blocker())
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else _find(name, package)
"""


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """Every golden task recorded small (L4, and DQN's L1; float32): the folder the check reads."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    root = tmp_path_factory.mktemp("golden")
    for name in gpu_check.GOLDEN_PRESETS:
        spec = presets.load(name, SMALL.get(name, []))
        task = task_registry.for_spec(spec)
        golden_files.record(task, spec, name, LEVELS.get(name, ["L4"]), ["float32"], root / name, L4_STEPS[name])
    return root


def test_the_script_runs_the_check_with_torch_alone_and_writes_one_report(golden, tmp_path):
    """benchmarks/gpu_check.sh as the GPU machine runs it, in a Python that cannot import what that machine lacks."""
    out, site = tmp_path / "report", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(site),
        "DUALKIT_THREADS": os.environ.get("DUALKIT_THREADS", "1"),  # the recording's: its own numbers are exact
        "DUALKIT_GPU_SITE": str(tmp_path / "no-site"),
    }
    extra = ["--device", "cpu", "--throughput", "cnn-digits,dqn-cartpole,bert-tag-tiny", "--seconds", "0.2"]
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(golden), str(out), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / gpu_check.REPORT_JSON).read_text())
    assert result["schema"] == gpu_check.SCHEMA and result["verdict"]["ok"] and not result["skipped"]
    assert [g["preset"] for g in result["golden"]] == sorted(gpu_check.GOLDEN_PRESETS)
    assert all(g["checks"] and not g.get("error") for g in result["golden"])
    assert result["environment"]["tensorflow"] is False and result["environment"]["gymnasium"] is False
    exact = [c for g in result["golden"] for c in g["checks"] if c["name"].endswith("vs torch cpu, recorded")]
    assert exact and all(c["value"] == 0.0 for c in exact)
    units = {(r["preset"], r["unit"]) for r in result["throughput"]}
    assert ("cnn-digits", "images/s") in units and ("dqn-cartpole", "env steps/s") in units
    assert ("bert-tag-tiny", "tokens/s") in units
    assert all(r["value"] > 0 for r in result["throughput"])
    md = (out / gpu_check.REPORT_MD).read_text()
    assert (
        "**Verdict: PASS**" in md
        and "| masked-digits | L4" in md
        and "| bert-mlm-tiny | L4" in md
        and "TensorFlow on GPU" in md
    )
    assert "images/s" in md and "env steps/s" in md


def test_a_spent_budget_skips_what_is_left_and_fails_the_verdict(golden, tmp_path):
    rc = gpu_check.main(["--golden", str(golden), "--out", str(tmp_path), "--device", "cpu", "--budget-s", "0"])
    result = json.loads((tmp_path / gpu_check.REPORT_JSON).read_text())
    assert rc == 1 and not result["verdict"]["ok"] and not result["golden"]
    assert result["skipped"] == [
        *(f"golden {name}: time budget spent" for name in sorted(gpu_check.GOLDEN_PRESETS)),
        "throughput: time budget spent",
    ]


def test_a_failed_check_is_listed_in_the_report(golden):
    md = gpu_check.markdown(
        {
            "started": "now",
            "device": "gpu",
            "wall_s": 1.0,
            "skipped": [],
            "environment": dict.fromkeys(
                ["torch", "cuda", "cudnn", "python", "numpy", "safetensors", "deterministic", "matmul_tf32"], "x"
            )
            | {"devices": ["cpu", "gpu:0 H200"], "cudnn_tf32": False, "threads": 2, "tensorflow": False}
            | {"gymnasium": False},
            "verdict": {"ok": False, "checks": 2, "failed": 1, "errors": []},
            "golden": [
                {
                    "preset": "cnn-digits",
                    "path": "g",
                    "cases": 1,
                    "checks": [
                        {"level": "L2", "dtype": "float32", "name": "bn-gap: torch gpu vs tf cpu, recorded"}
                        | {"value": 2e-4, "bound": 1e-4, "passed": False, "detail": "worst: w"},
                        {"level": "L2", "dtype": "float32", "name": "bn-gap: torch gpu vs torch cpu here"}
                        | {"value": 1e-6, "bound": 1e-4, "passed": True, "detail": ""},
                    ],
                }
            ],
            "throughput": [],
            "not_verified": ["TensorFlow on GPU"],
        }
    )
    assert "**Verdict: FAIL**: 1 of 2 checks passed on gpu" in md
    assert "| cnn-digits | L2    | float32 | 0/1          | 1/1           | 2                 |" in md
    assert "## Failed checks" in md and "bn-gap: torch gpu vs tf cpu, recorded" in md


def test_refusals(tmp_path, monkeypatch, capsys):
    assert gpu_check.main(["--golden", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cpu"]) == 2
    assert "holds no golden files" in capsys.readouterr().err
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", lambda name: "2.1.2+cu121")
    with pytest.raises(DualkitError, match=r"PyTorch 2.1.2\+cu121 is older than the GPU check supports \(>= 2.2\)"):
        gpu_check.torch_version()
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", lambda name: "2.11.0+cu130")
    assert gpu_check.torch_version() == "2.11.0+cu130"  # the GPU machine's: not the pinned 2.13, and accepted


@pytest.mark.skipif(pytest.importorskip("torch").cuda.is_available(), reason="a CUDA GPU is visible: nothing to refuse")
def test_no_gpu_is_refused_in_one_line(golden, tmp_path, capsys):
    assert gpu_check.main(["--golden", str(golden), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: error: PyTorch") and "sees no CUDA GPU" in err and err.count("\n") == 1


def test_the_shell_script_defaults_to_the_recorded_folder_and_out():
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert os.access(REPO / "benchmarks" / "gpu_check.sh", os.X_OK)
    assert "GOLDEN=${1:-bench-results/golden}" in script and "OUTDIR=${2:-${OUT:-" in script
