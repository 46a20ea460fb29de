"""Parity of the classifier between the torch and tf backends, level by level (bounds in tasks/parity.py).

Each level runs on CPU in float32 (what users run) and float64 (where any gap left is semantics, not
rounding), and on GPU (bounds x10) where both frameworks see one.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.tasks import parity, presets  # noqa: E402
from tests.devices import DEVICES  # noqa: E402

pytestmark = pytest.mark.parity
DTYPES = ["float32", "float64"]


def assert_all_pass(checks: list[parity.Check]) -> None:
    assert checks, "no check was run"
    failed = [
        f"{c.level} {c.dtype} {c.name}: {c.value:.3g} > {c.bound:.3g} ({c.detail})" for c in checks if not c.passed
    ]
    assert not failed, "\n".join(failed)


@pytest.fixture(scope="module")
def digits_spec():
    return presets.load("cnn-digits")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l0_loss_matches_numpy_reference(dtype, device):
    checks = parity.level0(dtype, device)
    assert {c.name for c in checks} >= {"torch cross-entropy ls=0.1", "tf cross-entropy ls=0.1"}
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_logits_agree_train_and_eval_mode(dtype, device):
    checks = parity.level1(dtype, device)
    # with and without BatchNorm, flatten and GAP heads, train and eval mode
    assert len(checks) == 2 * len(parity.MODEL_VARIANTS)
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_gradients_agree_for_every_weight(dtype, device):
    assert_all_pass(parity.level2(dtype, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l3_each_optimizer_matches_reference_over_5_steps(dtype, device):
    checks = parity.level3(dtype, device, steps=5)
    assert len(checks) == 2 * len(parity.OPTIM_VARIANTS)
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l4_training_trajectories_agree_at_every_step(digits_spec, dtype, device):
    checks = parity.level4(digits_spec, dtype, device, min_steps=300)
    assert {c.name for c in checks} == set(parity.L4_VARIANTS)
    for c in checks:
        assert int(c.detail.split()[0]) >= 300, c.detail  # the number of compared steps
    assert_all_pass(checks)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_l5_three_seeds_reach_98_percent_and_agree(digits_spec, device):
    checks, acc = parity.level5(digits_spec, device, seeds=(0, 1, 2))
    assert all(len(v) == 3 for v in acc.values())
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
def test_port_through_files_gives_identical_predictions(digits_spec, device):
    checks = parity.port_checks(digits_spec, device)
    assert {c.name for c in checks} == {"tf -> torch", "torch -> tf"}
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_l2_on_the_preset_model_and_data_and_running_statistics(digits_spec, dtype, device):
    l1, l2 = parity.level1_all(digits_spec, dtype, device), parity.level2_all(digits_spec, dtype, device)
    names = {c.name for c in l1 + l2}
    assert {"preset model on digits train", "preset model on digits eval", "preset model on digits"} <= names
    assert "preset model on digits running statistics after 3 train steps" in names
    assert_all_pass(l1 + l2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l4_full_end_state_and_rounding_envelope(digits_spec, dtype, device):
    checks = parity.level4(digits_spec, dtype, device, min_steps=120, full=True)
    per_variant = 3 if dtype == "float32" else 2  # fixed bound (tuned run), envelope (float32), end state
    assert len(checks) == per_variant * len(parity.L4_VARIANTS)
    if dtype == "float32":
        envelope = [c for c in checks if "rounding envelope" in c.name]
        assert all(c.bound == parity.ENVELOPE_FACTOR and c.series for c in envelope)
    assert_all_pass(checks)
