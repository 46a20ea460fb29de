"""``dualkit parity`` never gives an empty verdict: an unknown level is an error naming the task's levels, a run
that executes no check exits non-zero, and ``--json`` writes every level's checks (numpy numbers included)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualkit.cli import main
from dualkit.tasks import registry as task_registry
from dualkit.tasks.parity import Check

pytestmark = pytest.mark.parity


def test_unknown_level_is_one_line_naming_the_task_levels(capsys):
    assert main(["parity", "cnn-digits", "--levels", "L9", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'L9'" in err
    assert all(lvl in err for lvl in task_registry.get("classify").levels)


def test_a_run_that_executes_no_check_fails(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    assert main(["parity", "cnn-digits", "--levels", "L5", "--seeds", "0"]) == 2
    out = capsys.readouterr()
    assert "no parity check ran" in out.err and "--seeds" in out.err
    assert "0 passed, 0 failed" not in out.out


def numpy_checks() -> list[Check]:
    """Checks as the levels build them, numbers straight from numpy (np.bool_ verdicts, np.float64 values)."""
    solved = sum(np.array([500.0, 480.0, 100.0]) >= 475.0)  # np.int64, so the verdict is an np.bool_
    gap = abs(np.mean([0.98, 0.99]) - np.mean([0.985])) * 100
    return [
        Check("L5", "seeds solved", solved, 2.0, solved >= 2, "bound is a floor"),
        Check("L5", "gap", gap, 0.5, gap <= 0.5),
        Check("L1", "max abs", np.float32(3e-7), 1e-5, np.float32(3e-7) <= 1e-5, "", "float32"),
    ]


def test_check_to_dict_is_json_for_numpy_numbers():
    for c in numpy_checks():
        d = json.loads(json.dumps(c.to_dict()))
        assert isinstance(d["passed"], bool) and isinstance(d["value"], float) and isinstance(d["bound"], float)


@pytest.mark.parametrize("task_name", ["classify", "masked", "dqn"])
def test_json_written_for_every_level(task_name, tmp_path, monkeypatch):
    """Every level the task knows, through the CLI's writer (the levels' own numbers replaced by numpy ones,
    so no training runs here)."""
    preset = {"classify": "cnn-digits", "masked": "masked-digits", "dqn": "dqn-cartpole"}[task_name]
    task = task_registry.get(task_name)
    from dualkit.core import registry

    monkeypatch.setattr(registry, "get_backend", lambda *a, **k: None)
    monkeypatch.setattr(
        type(task), "parity", lambda self, spec, levels, *a, **k: [c for lvl in levels for c in numpy_checks()]
    )
    out = tmp_path / "parity.json"
    rc = main(["parity", preset, "--levels", ",".join(task.levels), "--json", str(out)])
    assert rc == 0
    written = json.loads(out.read_text())
    assert len(written["checks"]) == 3 * len(task.levels)


def test_plot_writes_the_envelope_gaps(tmp_path, monkeypatch, capsys):
    """``--plot DIR`` draws the per-step gaps of the checks that have them (float32 L4's envelope verdicts)."""
    from dualkit.core import registry
    from dualkit.tasks.parity import ENVELOPE_SERIES

    series = {"torch vs tf": [1e-7, 3e-7], "tf vs tf (1-ulp init)": [2e-7, 4e-7], ENVELOPE_SERIES: [1e-6, 1e-6]}
    check = Check("L4", "v within the rounding envelope", 0.3, 10.0, True, "", "float32", series)
    monkeypatch.setattr(registry, "get_backend", lambda *a, **k: None)
    monkeypatch.setattr(type(task_registry.get("classify")), "parity", lambda self, *a, **k: [check])
    assert main(["parity", "cnn-digits", "--levels", "L4", "--plot", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "parity-gaps.png").read_bytes().startswith(b"\x89PNG")
    assert "parity-gaps.png" in capsys.readouterr().out
