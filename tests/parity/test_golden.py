"""Golden files (tasks/golden_files.py): record on CPU in both backends, check one backend against the recording.

Torch on CPU must reproduce its own recording exactly and tf's within the levels' bounds (and tf likewise); a
difference planted in one recorded tensor fails that case's level alone; the L4 inputs are the drivers' own runs.
A small preset (64 training images, 8-step L4) keeps recording to seconds; GPU tests run where torch sees one.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dualkit.core import checkpoint
from dualkit.core.errors import DualkitError
from dualkit.tasks import golden_files, presets
from dualkit.tasks import registry as task_registry
from dualkit.tasks.golden import pack_batches, unpack_batches

pytestmark = pytest.mark.parity
pytest.importorskip("torch")
pytest.importorskip("tensorflow")

SMALL = ["data.limit_train=64", "train.batch_size=16"]  # 4 steps an epoch
L4_STEPS = 8


def torch_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """cnn-digits (small) recorded at every golden level in float32: (spec, task, folder, Recording)."""
    spec = presets.load("cnn-digits", SMALL)
    task = task_registry.for_spec(spec)
    out = tmp_path_factory.mktemp("golden") / "cnn-digits"
    rec = golden_files.record(task, spec, "cnn-digits", list(task.golden_levels), ["float32"], out, L4_STEPS)
    return spec, task, out, rec


def test_a_recording_holds_inputs_both_backends_outputs_and_a_manifest(digits):
    spec, task, out, rec = digits
    manifest = golden_files.load(out).manifest
    assert {p.name for p in out.iterdir()} == {
        "manifest.json",
        "inputs.safetensors",
        "outputs-torch.safetensors",
        "outputs-tf.safetensors",
    }
    assert manifest["format"] == golden_files.FORMAT and manifest["preset"] == "cnn-digits"
    assert (
        manifest["task"] == "classify"
        and manifest["seed"] == spec.seed
        and manifest["spec"]["data"]["limit_train"] == 64
    )
    assert manifest["levels"] == ["L0", "L1", "L2", "L3", "L4"] and manifest["dtypes"] == ["float32"]
    assert set(manifest["environment"]) == {"torch", "tf"} and "torch" in manifest["environment"]["torch"]["versions"]
    assert manifest["bounds"]["gpu_factor"] == 10.0 and manifest["bounds"]["cpu"]["float32"]["L1"] == 1e-5
    levels = {c["level"] for c in manifest["cases"]}
    assert levels == {"L0", "L1", "L2", "L3", "L4"} and rec.cases == len(manifest["cases"])
    l4 = [c for c in manifest["cases"] if c["level"] == "L4" and c["dtype"] == "float32"]
    assert len(l4) == 2 and all(c["envelope"] and c["envelope_groups"] == ["end", "losses"] for c in l4)
    assert {"x.table", "x.index", "x.sizes", "lr", "held_out"} <= set(l4[0]["inputs"])
    # the recorded backends agree as the levels demand, and an array both L4 variants use is stored once
    assert rec.checks and all(c.passed for c in rec.checks), [c for c in rec.checks if not c.passed]
    assert l4[0]["inputs"]["x.table"] == l4[1]["inputs"]["x.table"]
    assert rec.nbytes == sum(p.stat().st_size for p in out.iterdir())


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_each_backend_reproduces_its_own_recording_exactly_and_the_other_within_bounds(digits, backend):
    spec, task, out, _ = digits
    checks = golden_files.check(task, spec, golden_files.load(out), backend, "cpu")
    other = "tf" if backend == "torch" else "torch"
    own = [c for c in checks if c.name.endswith(f"vs {backend} cpu, recorded")]
    cross = [c for c in checks if c.name.endswith(f"vs {other} cpu, recorded")]
    assert len(own) == len(cross) and len(own) + len(cross) == len(checks)
    assert all(c.bound == 0.0 and c.value == 0.0 and c.passed for c in own), [c for c in own if c.value]
    assert all("exact" in c.detail for c in own)
    assert all(c.passed and c.bound > 0 for c in cross), [c for c in cross if not c.passed]
    assert {c.level for c in checks} == {"L0", "L1", "L2", "L3", "L4"}


def test_a_planted_difference_in_one_recorded_tensor_fails_that_level_only(digits, tmp_path):
    spec, task, out, _ = digits
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    manifest = golden_files.load(planted).manifest
    entry = next(c for c in manifest["cases"] if c["key"] == "float32/L2/bn-gap")
    path = planted / golden_files.outputs_file("tf")
    tensors, meta = checkpoint.load(path)
    name = f"{entry['id']}/grads/encoder.block1.conv0.weight"
    tensors[name] = tensors[name] * np.float32(1.001)  # 1e-3 relative: 100x L2's float32 bound
    checkpoint.save(path, tensors, meta)

    checks = golden_files.check(task, spec, golden_files.load(planted), "torch", "cpu")
    failed = [c for c in checks if not c.passed]
    assert [(c.level, c.dtype, c.name) for c in failed] == [("L2", "float32", "bn-gap: torch cpu vs tf cpu, recorded")]
    assert "encoder.block1.conv0.weight" in failed[0].detail and failed[0].value == pytest.approx(1e-3, rel=0.05)

    # in the torch recording, one step's loss: the exact check of that L4 run fails (the tf one still passes)
    entry = next(c for c in manifest["cases"] if c["key"] == "float32/L4/adam-cosine training run")
    path = planted / golden_files.outputs_file("torch")
    tensors, meta = checkpoint.load(path)
    losses = tensors[f"{entry['id']}/losses"].copy()
    losses[3] = np.nextafter(losses[3], np.inf)  # one ulp: only exactness sees it
    tensors[f"{entry['id']}/losses"] = losses
    checkpoint.save(path, tensors, meta)
    failed = [
        c for c in golden_files.check(task, spec, golden_files.load(planted), "torch", "cpu", ["L4"]) if not c.passed
    ]
    assert [(c.level, c.name) for c in failed] == [
        ("L4", "adam-cosine training run losses: torch cpu vs torch cpu, recorded")
    ]
    assert "worst at step 4" in failed[0].detail


def test_device_parity_runs_each_case_again_on_this_cpu(digits):
    spec, task, out, _ = digits
    checks = golden_files.check(task, spec, golden_files.load(out), "torch", "cpu", ["L1", "L4"], device_parity=True)
    here = [c for c in checks if c.name.endswith("vs torch cpu here")]
    assert here and all(c.passed and c.value == 0.0 for c in here)
    assert {c.level for c in here} == {"L1", "L4"}


def test_l4_replays_the_run_the_driver_trains(digits):
    """The recorded L4 inputs are the classifier driver's own run: replayed in torch they give its per-step losses."""
    from dualkit.tasks.classify import train
    from dualkit.tasks.parity import l4_spec

    spec, task, out, _ = digits
    golden = golden_files.load(out)
    entry = next(c for c in golden.manifest["cases"] if c["key"] == "float32/L4/sgd-momentum-cosine training run")
    per_epoch = -(-64 // 16)
    driver = train(l4_spec(spec, "sgd-momentum-cosine", "float32", -(-L4_STEPS // per_epoch)), "torch", progress=False)
    assert golden.case_outputs(entry, "torch")["losses"].tolist() == driver.step_losses


def test_a_recording_of_another_spec_or_task_is_refused(digits, tmp_path):
    spec, task, out, _ = digits
    golden = golden_files.load(out)
    other = presets.load("cnn-digits", SMALL + ["seed=3"])
    with pytest.raises(DualkitError, match="recorded for another spec .seed: recorded 0, here 3"):
        golden_files.check(task, other, golden, "torch", "cpu")
    masked = presets.load("masked-digits")
    with pytest.raises(DualkitError, match="holds golden files of a 'classify' task"):
        golden_files.check(task_registry.for_spec(masked), masked, golden, "torch", "cpu")
    with pytest.raises(DualkitError, match="not a golden-file recording"):
        golden_files.load(tmp_path)
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(DualkitError, match="holds other files"):
        golden_files.record(task, spec, "cnn-digits", ["L0"], ["float32"], tmp_path)
    assert (tmp_path / "x.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "preset, levels, l4",
    [("masked-digits", ["L0", "L4"], L4_STEPS), ("dqn-cartpole", ["L2", "L3", "L4"], 30)],
)
def test_masked_and_dqn_record_and_reproduce(preset, levels, l4, tmp_path):
    overrides = SMALL if preset.startswith("masked") else []
    spec = presets.load(preset, overrides)
    task = task_registry.for_spec(spec)
    rec = golden_files.record(task, spec, preset, levels, ["float32"], tmp_path / preset, l4)
    assert all(c.passed for c in rec.checks), [c for c in rec.checks if not c.passed]
    checks = golden_files.check(task, spec, golden_files.load(tmp_path / preset), "torch", "cpu")
    assert checks and all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert {c.level for c in checks} == set(levels)
    exact = [c for c in checks if c.name.endswith("vs torch cpu, recorded")]
    assert all(c.value == 0.0 for c in exact)


def test_dqn_l4_is_recorded_from_the_driver_and_replayed_without_the_env(tmp_path):
    """DQN's recorded transitions give, replayed open loop, the driver's own TD losses (no Gymnasium needed)."""
    from dualkit.tasks.dqn import train
    from dualkit.tasks.dqn_parity import l4_spec

    spec = presets.load("dqn-cartpole")
    task = task_registry.for_spec(spec)
    (case,) = task.golden_cases(spec, ["L4"], "float64", 25)
    inputs = case.inputs()
    replay = case.run("torch", "cpu", inputs)
    driver = train(l4_spec(spec, "float64"), "torch", progress=False, record=True, max_updates=25, test=False)
    assert replay["losses"].tolist() == driver.losses
    assert len(replay["q"]) == sum(not np.isnan(q).all() for q in driver.q_values) * spec.env.num_envs


def test_batches_are_packed_as_distinct_rows_and_unpacked_in_order():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 3, 2)).astype(np.float32)
    batches = [rows[[0, 1, 0]], rows[[2, 4]], rows[[4, 4, 3, 0]]]
    packed = pack_batches("x", batches)
    assert packed["x.table"].shape == (5, 3, 2) and packed["x.index"].dtype == np.uint16
    assert [b.tolist() for b in unpack_batches("x", packed)] == [b.tolist() for b in batches]


@pytest.mark.gpu
@pytest.mark.skipif(not torch_gpu(), reason="no CUDA GPU visible to PyTorch; golden-file GPU parity runs where one is")
def test_torch_on_gpu_against_the_cpu_recording_and_this_cpu(digits):
    spec, task, out, _ = digits
    checks = golden_files.check(task, spec, golden_files.load(out), "torch", "gpu")
    assert any(c.name.endswith("vs torch cpu here") for c in checks)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
