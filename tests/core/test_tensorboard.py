"""TensorBoard scalar events: what is written reads back, what is skipped is skipped, no framework is imported."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dualkit.core.tensorboard import TB_DIR, EventLog, _tensorboardx, event_dir

REPO = Path(__file__).resolve().parents[2]


def read_events(folder: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) of every scalar event in the folder's event files, read with tensorboardX's own
    protobufs from the TFRecord framing (length, crc, data, crc), so this check needs no tensorboard package."""
    _, event_pb2, _ = _tensorboardx()
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("summary"):
                events.append((event.step, {v.tag: v.simple_value for v in event.summary.value}))
    return events


def f32(x: float) -> float:
    return float(np.float32(x))  # TensorBoard stores scalars as float32


def test_scalars_read_back(tmp_path):
    with EventLog(tmp_path) as log:
        assert log.path == tmp_path / TB_DIR == event_dir(tmp_path)
        assert log.scalars(0, {"loss": 2.5, "acc": 0.1}, prefix="epoch/") == 2
        assert log.scalars(1, {"loss": 1.25, "acc": 0.6}, prefix="epoch/") == 2
        assert log.scalars(7, {"lr": 0.001}) == 1
    assert log.closed
    assert read_events(tmp_path / TB_DIR) == [
        (0, {"epoch/loss": 2.5, "epoch/acc": f32(0.1)}),
        (1, {"epoch/loss": 1.25, "epoch/acc": f32(0.6)}),
        (7, {"lr": f32(0.001)}),
    ]


def test_skips_non_numbers_and_non_finite(tmp_path):
    values = {
        "loss": 0.5,
        "steps": 3,
        "np32": np.float32(0.25),
        "np64": np.float64(-4.0),
        "npint": np.int64(9),
        "nan": math.nan,
        "inf": math.inf,
        "neg_inf": -math.inf,
        "np_nan": np.float32("nan"),
        "flag": True,
        "np_flag": np.bool_(False),
        "name": "cnn",
        "none": None,
        "list": [1.0, 2.0],
        "nested": {"a": 1.0},
        "array": np.array([1.0]),
    }
    with EventLog(tmp_path) as log:
        assert log.scalars(3, values) == 5
        assert log.scalars(4, {"nan": math.nan, "text": "x"}) == 0  # nothing to write: no event at all
    assert read_events(tmp_path / TB_DIR) == [
        (3, {"loss": 0.5, "steps": 3.0, "np32": 0.25, "np64": -4.0, "npint": 9.0})
    ]


def test_flush_puts_events_on_disk_before_close(tmp_path):
    log = EventLog(tmp_path)
    log.scalars(1, {"loss": 1.0}, prefix="step/")
    log.flush()
    assert read_events(tmp_path / TB_DIR) == [(1, {"step/loss": 1.0})]
    log.close()
    log.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        log.scalars(2, {"loss": 1.0})


def test_disabled_writes_nothing(tmp_path):
    with EventLog(tmp_path / "run", enabled=False) as log:
        assert log.scalars(0, {"loss": 1.0}) == 0
        log.flush()
    assert not (tmp_path / "run").exists()


def test_a_second_log_in_the_same_folder_keeps_the_first(tmp_path):
    """A resumed run opens a second EventLog in the same run folder, usually within the same second."""
    with EventLog(tmp_path) as first:
        first.scalars(1, {"loss": 2.0})
    with EventLog(tmp_path) as second:
        second.scalars(2, {"loss": 1.0})
    assert len(list((tmp_path / TB_DIR).glob("events.out.tfevents.*"))) == 2
    assert sorted(read_events(tmp_path / TB_DIR)) == [(1, {"loss": 2.0}), (2, {"loss": 1.0})]


def test_tensorboard_reads_the_events(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    # tensorboard.compat.notf is TensorBoard's own switch to its TF stub: without it, reading events imports
    # tensorflow into this test process (before torch, which the two frameworks do not tolerate).
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with EventLog(tmp_path) as log:
        for step, loss in enumerate([2.0, 1.5, 1.25]):
            log.scalars(step, {"loss": loss, "lr": 0.1 / (step + 1)}, prefix="step/")
        log.scalars(2, {"accuracy": 0.875, "note": "skipped"}, prefix="epoch/")
    acc = EventAccumulator(str(tmp_path / TB_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["epoch/accuracy", "step/loss", "step/lr"]
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(0, 2.0), (1, 1.5), (2, 1.25)]
    assert [(e.step, e.value) for e in acc.Scalars("step/lr")] == [(s, f32(0.1 / (s + 1))) for s in range(3)]
    assert [(e.step, e.value) for e in acc.Scalars("epoch/accuracy")] == [(2, 0.875)]


def test_writing_events_imports_no_framework(tmp_path):
    """tensorboardX's package import tries ``import torch``; core.tensorboard keeps torch (and TF) out."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dualkit.core.tensorboard import EventLog\n"
        f"with EventLog(Path({str(tmp_path)!r})) as log:\n"
        "    assert log.scalars(1, {'loss': 0.5, 'acc': 0.75}, prefix='epoch/') == 2\n"
        "loaded = {'torch', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert 'tensorboardX' in sys.modules\n"
        "import importlib.util\n"
        "if importlib.util.find_spec('torch') is not None:\n"
        "    import torch  # the block on torch lasted only for tensorboardX's import\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert len(list((tmp_path / TB_DIR).glob("events.out.tfevents.*"))) == 1
