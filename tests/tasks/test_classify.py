"""The training driver: run folders, cross-backend evaluation, porting, NaN stops, foreign checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from dualkit.core import checkpoint, registry  # noqa: E402
from dualkit.core.errors import CheckpointError, DataError, RunError, TrainingError  # noqa: E402
from dualkit.core.runs import read_json  # noqa: E402
from dualkit.core.specs import apply_overrides, load_json, save_json  # noqa: E402
from dualkit.core.weights import classifier_shapes  # noqa: E402
from dualkit.tasks import presets  # noqa: E402
from dualkit.tasks.classify import evaluate_run, load_run, port_run, train  # noqa: E402

HAS_TF = registry.is_installed("tf")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_run(torch_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(torch_run[0], dst)
    return dst


# --------------------------------------------------------------------------- a finished run


def test_run_folder_contents(torch_run):
    run_dir, spec, result = torch_run
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model.safetensors",
        "result.json",
        "spec.json",
        "tensorboard",
    ]
    # run checkpoints for --resume (tests/tasks/test_resume.py): at the start, then one per epoch
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"ckpt-{41 * e:09d}.safetensors" for e in (0, 1, 2)
    ]
    assert load_json(run_dir / "spec.json") == spec

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == spec.train.epochs == 2
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    steps_per_epoch = -(-len(result.step_losses) // 2)
    assert [r["step"] for r in records] == [steps_per_epoch, len(result.step_losses)]
    for r in records:
        for key in ("train_loss", "lr", "val_loss", "val_accuracy", "epoch_s", "images_per_s"):
            assert np.isfinite(r[key]), key
    assert records[1]["train_loss"] < records[0]["train_loss"]

    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["kind"] == "classifier" and meta["backend"] == "torch"
    assert meta["epoch"] == 2 and meta["step"] == len(result.step_losses)
    assert meta["image_shape"] == [8, 8, 1]
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["spec"] == json.loads((run_dir / "spec.json").read_text())
    assert {n: v.shape for n, v in weights.items()} == classifier_shapes(spec.model, (8, 8, 1))
    for name, value in result.weights.items():
        np.testing.assert_array_equal(weights[name], value)

    res = read_json(run_dir / "result.json")
    assert res["backend"] == "torch" and res["device"] == "cpu" and res["epochs"] == 2
    assert res["steps"] == len(result.step_losses)
    assert res["test"] == result.test
    assert res["test"]["accuracy"] > 0.8  # two epochs of the preset learn the digits
    assert len(res["history"]) == 2


def test_load_run(torch_run):
    run_dir, spec, result = torch_run
    run = load_run(run_dir)
    assert run.spec == spec
    assert run.image_shape == (8, 8, 1)
    assert run.meta["backend"] == "torch"
    assert set(run.weights) == set(result.weights)


def test_evaluate_run_in_the_training_backend(torch_run):
    run_dir, _, result = torch_run
    res = evaluate_run(run_dir, "torch")
    assert res["backend"] == "torch" and res["trained_in"] == "torch" and res["split"] == "test"
    assert res["accuracy"] == result.test["accuracy"]
    assert res["loss"] == pytest.approx(result.test["loss"], rel=1e-6)
    val = evaluate_run(run_dir, "torch", split="val")
    assert val["split"] == "val"
    assert val["accuracy"] == pytest.approx(result.history[-1]["val_accuracy"])


@needs_tf
def test_evaluate_run_in_the_other_backend(torch_run):
    run_dir, _, result = torch_run
    res = evaluate_run(run_dir, "tf")
    assert res["backend"] == "tf" and res["trained_in"] == "torch"
    assert res["accuracy"] == result.test["accuracy"]
    assert res["loss"] == pytest.approx(result.test["loss"], rel=1e-5)


@needs_tf
def test_port_run_to_tf(torch_run, tmp_path):
    run_dir, _, result = torch_run
    out = tmp_path / "model.keras"
    rep = port_run(run_dir, "tf", out)
    assert out.is_file() and out.stat().st_size > 0
    assert rep["from"] == "torch" and rep["to"] == "tf" and rep["artifact"] == str(out)
    assert rep["identical_classes"] is True
    assert rep["max_abs_logit_diff"] < 1e-3
    assert rep["accuracy_from"] == rep["accuracy_to"] == result.test["accuracy"]
    assert rep["test_images"] == 359
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_port_run_to_torch(torch_run, tmp_path):
    import torch

    run_dir, _, result = torch_run
    out = tmp_path / "model.pt"
    rep = port_run(run_dir, "pytorch", out)
    assert rep["to"] == "torch" and rep["identical_classes"] and rep["max_abs_logit_diff"] == 0.0
    state = torch.load(out, weights_only=True)
    for name, value in result.weights.items():
        np.testing.assert_array_equal(state[name].numpy(), value)


def test_port_run_refuses_a_wrong_suffix(torch_run, tmp_path):
    with pytest.raises(TrainingError, match=r"\.keras"):
        port_run(torch_run[0], "tf", tmp_path / "model.pt")
    with pytest.raises(TrainingError, match=r"\.pt"):
        port_run(torch_run[0], "torch", tmp_path / "model.h5")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- failures


@pytest.fixture
def nan_at(monkeypatch):
    """Make the torch Classifier's train_step return NaN from its ``n``-th call on (1-based)."""
    backend = registry.get_backend("torch")
    real = backend.Classifier.train_step
    calls = {"n": 0}

    def install(n: int):
        def train_step(self, x, y, lr):
            calls["n"] += 1
            loss = real(self, x, y, lr)
            return float("nan") if calls["n"] >= n else loss

        monkeypatch.setattr(backend.Classifier, "train_step", train_step)
        return calls

    return install


SMALL = ["data.limit_train=64", "train.batch_size=32", "train.epochs=3", "train.checkpoint_every=1"]  # 2 steps/epoch


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, nan_at):
    calls = nan_at(4)  # step 4 = the second step of epoch 2
    spec = presets.load("cnn-digits", SMALL)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train(spec, "torch", run_dir=run_dir, progress=False)
    msg = str(err.value)
    assert "nan" in msg and "step 4" in msg and "epoch 2" in msg
    assert str(run_dir / "model.safetensors") in msg  # it names the checkpoint that is kept
    assert "optim.lr" in msg  # and how to fix it
    assert calls["n"] == 4  # it stopped at once
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoints",
        "metrics.jsonl",
        "model.safetensors",
        "spec.json",
        "tensorboard",
    ]
    assert [r["epoch"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == [1]
    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["epoch"] == 1 and meta["step"] == 2
    assert all(np.isfinite(v).all() for v in weights.values())
    assert load_run(run_dir).meta["epoch"] == 1  # the kept checkpoint is a usable run


def test_nan_loss_before_any_checkpoint(tmp_path, nan_at):
    nan_at(1)
    spec = presets.load("cnn-digits", SMALL)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"step 1 \(epoch 1\).*no model was saved yet"):
        train(spec, "torch", run_dir=run_dir, progress=False)
    assert not (run_dir / "model.safetensors").exists()
    assert not (run_dir / "result.json").exists()


def test_checkpoint_of_another_model(torch_run, tmp_path):
    run_dir = copy_run(torch_run, tmp_path)
    spec = torch_run[1]
    other = apply_overrides(spec, ["model.hidden=[64]", "model.channels=[32, 48]"])
    save_json(other, run_dir / "spec.json")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as err:
        load_run(run_dir)
    msg = str(err.value)
    assert "head.fc0.weight: checkpoint (128, 256), model (64, 192)" in msg
    assert "head.fc0.bias: checkpoint (128,), model (64,)" in msg
    assert "encoder.block1.conv0.weight: checkpoint (64, 32, 3, 3), model (48, 32, 3, 3)" in msg
    assert "head.out.weight" in msg
    assert "encoder.block0.conv0.weight" not in msg  # only the tensors that do not fit are named
    with pytest.raises(CheckpointError, match="head.fc0.weight"):
        evaluate_run(run_dir, "torch")
    assert snapshot(run_dir) == before


def test_checkpoint_missing_and_unexpected_tensors(torch_run, tmp_path):
    run_dir = copy_run(torch_run, tmp_path)
    save_json(apply_overrides(torch_run[1], ["model.hidden=[]", "model.batchnorm=false"]), run_dir / "spec.json")
    with pytest.raises(CheckpointError) as err:
        load_run(run_dir)
    msg = str(err.value)
    assert "missing: encoder.block0.conv0.bias, encoder.block1.conv0.bias" in msg
    assert "unexpected:" in msg and "head.fc0.weight" in msg and "encoder.block0.bn0.running_mean" in msg


def test_junk_checkpoint(torch_run, tmp_path):
    run_dir = copy_run(torch_run, tmp_path)
    (run_dir / "model.safetensors").write_bytes(b"\x80\x04junk" * 100)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_run(run_dir)


def test_run_folder_errors(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "missing")
    with pytest.raises(RunError, match="not a dualkit run folder"):
        evaluate_run(tmp_path, "torch")


def test_missing_dataset_names_where_it_looked(tmp_path):
    spec = presets.load("cnn-digits", ['data.name="cifar10"', "data.root=/nonexistent"])
    out = tmp_path / "run"
    with pytest.raises(DataError) as err:
        train(spec, "torch", run_dir=out, progress=False)
    msg = str(err.value)
    assert "/nonexistent/cifar-10-batches-bin" in msg and "/nonexistent/cifar-10-batches-py" in msg
    assert "data.root" in msg
    assert not out.exists()  # nothing was written


def test_existing_run_is_refused_and_kept(torch_run, tmp_path):
    run_dir = copy_run(torch_run, tmp_path)
    before = snapshot(run_dir)
    spec = presets.load("cnn-digits", SMALL)
    with pytest.raises(RunError, match="--overwrite"):
        train(spec, "torch", run_dir=run_dir, progress=False)
    assert snapshot(run_dir) == before


def test_same_seed_same_run():
    spec = presets.load("cnn-digits", ["data.limit_train=96", "train.epochs=1", "model.dropout=0.3"])
    a = train(spec, "torch", progress=False)
    b = train(spec, "torch", progress=False)
    assert a.step_losses == b.step_losses
    assert a.test == b.test
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name])
    c = train(apply_overrides(spec, ["seed=1"]), "torch", progress=False)
    assert c.step_losses != a.step_losses
