"""The one run loop (tasks/loop.py): TensorBoard events beside the metric log, and the checkpoint cadence."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from dualkit.tasks import presets
from dualkit.tasks.classify import train
from dualkit.tasks.loop import Cadence
from dualkit.tasks.pretrain import pretrain
from tests.core.test_tensorboard import read_events

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
SMALL = ["data.limit_train=64", "train.batch_size=32", "train.epochs=3"]  # 2 steps per epoch


def _by_tag(events: list[tuple[int, dict[str, float]]], tag: str) -> list[tuple[int, float]]:
    return [(step, values[tag]) for step, values in events if tag in values]


@needs_torch
def test_classifier_run_writes_tensorboard_curves(tmp_path):
    run_dir = tmp_path / "run"
    result = train(presets.load("cnn-digits", SMALL), "torch", run_dir=run_dir, progress=False)
    events = read_events(run_dir / "tensorboard")
    losses = _by_tag(events, "step/loss")
    assert [s for s, _ in losses] == list(range(1, 7))
    np.testing.assert_array_equal([v for _, v in losses], np.float32(result.step_losses))
    assert len(_by_tag(events, "step/lr")) == 6
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_accuracy", "val_loss", "images_per_s"):
        curve = _by_tag(events, f"epoch/{key}")
        assert [s for s, _ in curve] == [r["step"] for r in records], key
        np.testing.assert_array_equal([v for _, v in curve], np.float32([r[key] for r in records]), err_msg=key)


@needs_torch
def test_pretraining_run_writes_tensorboard_curves(tmp_path):
    spec = presets.load("masked-digits", SMALL + ["finetune.fractions=[]", "probe.enabled=false"])
    result = pretrain(spec, "torch", run_dir=tmp_path / "run", progress=False)
    events = read_events(tmp_path / "run" / "tensorboard")
    np.testing.assert_array_equal([v for _, v in _by_tag(events, "step/loss")], np.float32(result.step_losses))
    assert [s for s, _ in _by_tag(events, "epoch/val_loss")] == [2, 4, 6]


def test_no_run_folder_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    train(presets.load("cnn-digits", SMALL), "torch", progress=False)
    assert not any(tmp_path.iterdir())


def test_cadence_by_steps_and_after_a_save():
    c = Cadence(every_steps=3, every_minutes=0, step=0)
    assert [s for s in range(1, 10) if c.due(s)] == [3, 6, 9]
    c = Cadence(every_steps=4, every_minutes=0, step=5)  # a resumed run: the next multiple past its step
    assert [s for s in range(6, 13) if c.due(s)] == [8, 12]
    c = Cadence(every_steps=4, every_minutes=0, step=0)
    c.saved(4)  # a save at a multiple (e.g. an epoch's end) is not repeated by the cadence
    assert [s for s in range(4, 9) if c.due(s)] == [8]
    c = Cadence(every_steps=10, every_minutes=0, step=0)
    assert c.due(16) and not c.due(17) and c.due(20)  # counters that jump (env steps) cross each multiple once


def test_cadence_by_minutes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("dualkit.tasks.loop.time.perf_counter", lambda: now[0])
    c = Cadence(every_steps=0, every_minutes=1.0, step=0)
    assert not c.due(1)
    now[0] += 61
    assert c.due(2)
    c.saved(2)
    assert not c.due(3)


# -- data parallelism in the loop (multi-process runs: tests/tasks/test_launch.py, tests/backends/test_distributed.py)
@needs_torch
def test_ghost_replicas_equal_the_full_batch_without_batchnorm_and_differ_with_it():
    """The distribution level's reference (tasks/loop.ghost_step), from the model's public methods: without
    BatchNorm N shards' mean gradient is the global batch's; with it each shard is normalised by its own statistics."""
    from dualkit.tasks.loop import ghost_replicas

    base = SMALL + ["dtype=float64", "train.epochs=1", "schedule.name=constant", "optim.name=sgd", "optim.momentum=0.9"]
    for batchnorm, close in (("false", True), ("true", False)):
        spec = presets.load("cnn-digits", base + [f"model.batchnorm={batchnorm}"])
        plain = train(spec, "torch", progress=False)
        with ghost_replicas(2):
            ghost = train(spec, "torch", progress=False)
        gap = max(float(np.abs(ghost.weights[k] - v).max() / np.abs(v).max()) for k, v in plain.weights.items())
        assert (gap < 1e-12) if close else (gap > 1e-3), (batchnorm, gap)


@needs_torch
def test_a_distributed_run_refuses_an_empty_shard_before_writing(tmp_path):
    from dualkit.core import distributed
    from dualkit.core.errors import SpecError

    distributed.activate(distributed.World(rank=0, size=2))  # no engine is started: the refusal comes first
    try:
        with pytest.raises(SpecError, match="last batch of 1, fewer than the 2 workers"):
            train(presets.load("cnn-digits", ["data.limit_train=65"]), "torch", run_dir=tmp_path / "run")
    finally:
        distributed.activate(distributed.SINGLE)
    assert not (tmp_path / "run").exists()
