"""Golden files of the transformer tasks (tasks/text_golden.py): bert-mlm-tiny and bert-tag-tiny recorded on CPU in
both backends (small corpora, a 6-step L4, float64: no rounding envelope to run), checked in torch: exact against
its own recording, the tf recording within the levels' bounds; a planted difference fails its level alone; the
recorded L4 inputs are the drivers' own runs (replayed, mlm.pretrain's / tag.train's step losses); every level's
case builds and runs from its arrays alone. TensorFlow's L1/L2 sweeps cost seconds: tests/parity/test_text_parity.py
has them; here they run in torch only."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dualkit.core import checkpoint
from dualkit.tasks import golden_files, presets, text_golden
from dualkit.tasks import registry as task_registry

pytestmark = pytest.mark.parity
pytest.importorskip("torch")
pytest.importorskip("tensorflow")

TINY = {"bert-mlm-tiny": ["data.limit_words=3000"], "bert-tag-tiny": ["data.limit_words=2000"]}
LEVELS = {"bert-mlm-tiny": ["L0", "L4"], "bert-tag-tiny": ["L4"]}
L4_STEPS = 6
DTYPE = "float64"


@pytest.fixture(scope="module", params=sorted(TINY))
def recorded(request, tmp_path_factory):
    """(preset, spec, task, folder, Recording) of one preset recorded small."""
    preset = request.param
    spec = presets.load(preset, TINY[preset])
    task = task_registry.for_spec(spec)
    out = tmp_path_factory.mktemp("golden") / preset
    rec = golden_files.record(task, spec, preset, LEVELS[preset], [DTYPE], out, L4_STEPS)
    return preset, spec, task, out, rec


def test_torch_reproduces_its_recording_exactly_and_tf_s_within_bounds(recorded):
    preset, spec, task, out, rec = recorded
    assert rec.checks and all(c.passed for c in rec.checks), [c for c in rec.checks if not c.passed]
    golden = golden_files.load(out)
    assert golden.manifest["task"] == task.name and golden.levels == LEVELS[preset]
    (l4,) = [c for c in golden.manifest["cases"] if c["level"] == "L4"]
    assert {"batch.table", "batch.index", "batch.sizes", "lr", "held.ids", "held.mask"} <= set(l4["inputs"])
    checks = golden_files.check(task, spec, golden, "torch", "cpu")
    own = [c for c in checks if c.name.endswith("vs torch cpu, recorded")]
    cross = [c for c in checks if c.name.endswith("vs tf cpu, recorded")]
    assert own and len(own) == len(cross) and len(own) + len(cross) == len(checks)
    assert all(c.value == 0.0 and c.bound == 0.0 and c.passed for c in own), [c for c in own if c.value]
    assert all(c.passed and c.bound > 0 for c in cross), [c for c in cross if not c.passed]
    assert {c.level for c in checks} == set(LEVELS[preset])


def test_a_planted_difference_in_the_tf_recording_fails_that_level_only(recorded, tmp_path):
    preset, spec, task, out, _ = recorded
    planted = tmp_path / "planted"
    shutil.copytree(out, planted)
    entry = next(c for c in golden_files.load(planted).manifest["cases"] if c["level"] == "L4")
    path = planted / golden_files.outputs_file("tf")
    tensors, meta = checkpoint.load(path)
    name = f"{entry['id']}/end/eval logits"
    tensors[name] = tensors[name] * 1.001  # 1e-3 relative: far beyond float64's L4 bound
    checkpoint.save(path, tensors, meta)
    failed = [c for c in golden_files.check(task, spec, golden_files.load(planted), "torch", "cpu") if not c.passed]
    assert [(c.level, c.name) for c in failed] == [
        ("L4", f"{spec.task} preset training run end: torch cpu vs tf cpu, recorded")
    ]
    assert failed[0].value == pytest.approx(1e-3, rel=0.05)


def test_the_recorded_l4_run_is_the_driver_s_run(recorded):
    """Replayed from the recorded arrays (torch, what the recording holds), the per-step losses are those of the
    task's own driver training text_parity.level4's spec."""
    from dualkit.tasks import mlm, tag, text_parity

    preset, spec, task, out, _ = recorded
    golden = golden_files.load(out)
    (entry,) = [c for c in golden.manifest["cases"] if c["level"] == "L4"]
    l4 = text_golden.l4_spec(spec, DTYPE, L4_STEPS)
    data = text_parity.prepare(l4)
    if text_parity.head_of(l4) == "mlm":
        driver = mlm.pretrain(l4, "torch", progress=False, evaluate=False, data=data)
    else:
        driver = tag.train(l4, "torch", progress=False, data=data)
    assert len(driver.step_losses) == L4_STEPS
    assert golden.case_outputs(entry, "torch")["losses"].tolist() == driver.step_losses


@pytest.mark.parametrize("preset", sorted(TINY))
def test_every_level_s_case_runs_from_its_arrays_in_torch(preset):
    spec = presets.load(preset, TINY[preset])
    cases = text_golden.golden_cases(spec, list(text_golden.GOLDEN_LEVELS), "float32", 3)
    assert {c.level for c in cases} == set(text_golden.GOLDEN_LEVELS)
    assert len({c.key for c in cases}) == len(cases)
    for case in cases:
        inputs = case.inputs()
        out = case.run("torch", "cpu", inputs)
        assert {k.split("/", 1)[0] for k in out} == set(case.compare), case.key
        again = case.run("torch", "cpu", inputs)
        assert all(np.array_equal(out[k], again[k]) for k in out), case.key
        if case.level in ("L1", "L2") and "logits" in case.compare:
            assert all(v.ndim == 2 and len(v) <= text_golden.LOGIT_ROWS for v in out.values())
        if case.level == "L2":  # the key bias on the model's gradient scale, apart from the other gradients
            assert any(k.startswith("key bias/") for k in out) and not any(
                k.endswith("key.bias") for k in out if k.startswith("grads/")
            )


def test_step_throughput_measures_tokens_per_second_on_synthetic_sequences():
    for preset in sorted(TINY):
        spec = presets.load(preset)
        (row,) = task_registry.for_spec(spec).step_throughput(spec, "torch", "cpu", 0.05)
        assert row["unit"] == "tokens/s" and row["value"] > 0 and f"batch {spec.train.batch_size}" in row["what"]
        assert f"{spec.data.max_length} tokens" in row["detail"]
