"""The distribution parity level (tasks/dist_parity.py): 2 workers x batch B against one worker x 2B, through the
real launch (here TensorFlow's: TF_CONFIG and MultiWorkerMirroredStrategy; torch's torchrun runs in
tests/tasks/test_launch.py).

To keep to one worker start-up, the test runs one variant (float32, AdamW, per-replica BatchNorm: the ghost-batch
reference, and the check that it differs from the full batch); tests/backends/test_distributed.py checks every
BatchNorm mode of both models in both backends in one process. ``dualkit parity PRESET --levels dist`` runs every
optimizer, BatchNorm mode and dtype in both backends, and compares the backends' 2-worker runs.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.cli import main  # noqa: E402
from dualkit.tasks import dist_parity, presets  # noqa: E402
from dualkit.tasks import registry as task_registry  # noqa: E402
from dualkit.tasks.parity import Check  # noqa: E402

pytestmark = pytest.mark.parity


@pytest.mark.dist
def test_two_tf_workers_equal_the_ghost_batch_reference():
    spec = presets.load("cnn-digits")
    task = task_registry.for_spec(spec)
    checks = dist_parity.level_dist(
        task, spec, ["float32"], backends=("tf",), optimizers=("adamw",), bn_modes=("replica",)
    )
    failed = [f"{c.dtype} {c.name}: {c.value:.3g} vs {c.bound:.3g} ({c.detail})" for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
    assert [c.name for c in checks] == [
        "tf 2 workers vs the ghost-batch reference (adamw, BN replica)",
        "tf per-replica BN differs from the full batch (adamw)",
    ]
    assert checks[0].bound == dist_parity.BOUNDS["float32"] and f"{dist_parity.STEPS} steps" in checks[0].detail
    assert checks[1].value > dist_parity.SEMANTICS_GAP


def test_dualkit_parity_runs_the_dist_level(monkeypatch, tmp_path, capsys):
    seen = {}

    def level(task, spec, dtypes, device="cpu", **kwargs):
        seen.update(task=task.name, dtypes=dtypes, device=device)
        return [Check("dist", "stub", 0.0, 1e-5, True, "", dtypes[0])]

    monkeypatch.setattr(dist_parity, "level_dist", level)
    out = tmp_path / "parity.json"
    assert main(["parity", "cnn-digits", "--levels", "dist", "--dtype", "float64", "--json", str(out)]) == 0
    assert seen == {"task": "classify", "dtypes": ["float64"], "device": "cpu"}
    assert json.loads(out.read_text())["checks"][0]["level"] == "dist"
    assert "1 passed, 0 failed" in capsys.readouterr().out
    assert main(["parity", "dqn-cartpole", "--levels", "dist"]) == 2  # DQN has no such level
    assert "unknown parity level 'dist'" in capsys.readouterr().err
