"""Parity of masked image pretraining between the torch and tf backends (levels in tasks/masked_parity.py,
bounds in tasks/parity.py): CPU in float32 and float64, GPU (bounds x10) where both frameworks see one."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.tasks import masked_parity, presets  # noqa: E402
from tests.devices import DEVICES  # noqa: E402

pytestmark = pytest.mark.parity
DTYPES = ["float32", "float64"]


def assert_all_pass(checks) -> None:
    assert checks, "no check was run"
    failed = [
        f"{c.level} {c.dtype} {c.name}: {c.value:.3g} > {c.bound:.3g} ({c.detail})" for c in checks if not c.passed
    ]
    assert not failed, "\n".join(failed)


@pytest.fixture(scope="module")
def digits_spec():
    return presets.load("masked-digits")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l0_masked_loss_matches_numpy_reference(dtype, device):
    checks = masked_parity.level0(dtype, device)
    assert {c.name for c in checks} == {
        f"{b} masked MSE norm_pix={n}" for b in ("torch", "tf") for n in ("true", "false")
    }
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_reconstructions_and_features_agree(dtype, device):
    checks = masked_parity.level1(dtype, device)
    assert len(checks) == 3 * len(masked_parity.VARIANTS)  # train, eval, probe features
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_gradients_agree_for_every_weight(dtype, device):
    assert_all_pass(masked_parity.level2(dtype, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l4_pretraining_trajectories_agree_at_every_step(digits_spec, dtype, device):
    (c,) = masked_parity.level4(digits_spec, dtype, device, min_steps=200)
    assert int(c.detail.split()[0]) >= 200, c.detail  # the number of compared steps
    assert_all_pass([c])


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_l5_three_seeds_probe_means_within_one_point(digits_spec, device):
    checks, res = masked_parity.level5(digits_spec, device, seeds=(0, 1, 2))
    assert all(len(v) == 3 for v in res["accuracy"].values())
    assert all(min(v) > 0.9 for v in res["accuracy"].values())  # the probe works at all
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
def test_port_encoder_pretrained_in_one_backend_probed_in_the_other(digits_spec, device):
    checks = masked_parity.port_checks(digits_spec, device, epochs=1)
    assert {c.name for c in checks} == {"tf -> torch", "torch -> tf"}
    assert_all_pass(checks)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_l2_on_the_preset_model_data_masks_and_running_statistics(digits_spec, dtype, device):
    l1, l2 = masked_parity.level1_all(digits_spec, dtype, device), masked_parity.level2_all(digits_spec, dtype, device)
    names = {c.name for c in l1 + l2}
    assert {"preset model on digits reconstruction eval", "preset model on digits probe features"} <= names
    assert "preset model on digits running statistics after 3 train steps" in names
    assert "preset model on digits" in {c.name for c in l2}
    assert_all_pass(l1 + l2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_l4_full_end_state_and_rounding_envelope(digits_spec, dtype, device):
    checks = masked_parity.level4(digits_spec, dtype, device, min_steps=100, full=True)
    assert len(checks) == (3 if dtype == "float32" else 2)
    assert_all_pass(checks)
