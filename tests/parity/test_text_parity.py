"""Parity of the transformer tasks (mlm, tag) between the torch and tf backends (levels in tasks/text_parity.py,
bounds in tasks/parity.py): L0-L2 on the small variants in both dtypes, the presets' own models (L1/L2, a short L4),
the port level; and planted differences that the levels must catch (a parity test that cannot fail is worthless)."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.core.transformer import DECODER, WORD_EMBEDDINGS  # noqa: E402
from dualkit.tasks import presets, text_parity  # noqa: E402

pytestmark = pytest.mark.parity
DTYPES = ["float32", "float64"]
# the presets' models on less of their data (a preset's data prep dominates its levels' time otherwise)
PRESETS = {"bert-mlm-tiny": ["data.limit_words=8000"], "bert-tag-tiny": ["data.limit_words=5000"]}
L4_SHORT = 20
PLANT = "bert.encoder.layer.0.attention.self.query.weight"


def failures(checks) -> list[str]:
    return [f"{c.level} {c.dtype} {c.name}: {c.value:.3g} > {c.bound:.3g} ({c.detail})" for c in checks if not c.passed]


def assert_all_pass(checks) -> None:
    assert checks, "no check was run"
    bad = failures(checks)
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def preset_data():
    """A preset's spec and prepared data, made once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            spec = presets.load(name, PRESETS[name])
            cache[name] = (spec, text_parity.prepare(spec))
        return cache[name]

    return get


# --------------------------------------------------------------------------- L0-L2 on the variants


@pytest.mark.parametrize("dtype", DTYPES)
def test_l0_masked_cross_entropy_matches_numpy(dtype):
    checks = text_parity.level0(dtype)
    assert {c.name for c in checks} == {
        f"{b} masked cross-entropy, {what}" for b in ("torch", "tf") for what in ("ignored positions", "all ignored")
    }
    assert_all_pass(checks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l1_logits_agree_with_each_other_and_with_numpy(dtype):
    checks = text_parity.level1(dtype)
    assert len(checks) == 2 * 2 * len(text_parity.VARIANTS)  # padded/unpadded x (torch vs tf, each vs numpy)
    assert_all_pass(checks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_l2_loss_and_every_gradient_agree(dtype):
    checks = text_parity.level2(dtype)
    assert len(checks) == 2 * len(text_parity.VARIANTS)
    assert_all_pass(checks)


# --------------------------------------------------------------------------- the presets' models


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_model_l1_l2_on_its_first_batch(preset, dtype, preset_data):
    spec, data = preset_data(preset)
    checks = text_parity.preset_levels(spec, data, dtype, "cpu")
    assert [c.level for c in checks] == ["L1", "L2"]
    assert f"{spec.model.layers}x{spec.model.hidden}" in checks[0].name
    assert_all_pass(checks)


# float32 (the rounding envelope: four runs) on one preset, float64 (the fixed bound: two runs) on the other
@pytest.mark.parametrize("preset, dtype", [("bert-mlm-tiny", "float32"), ("bert-tag-tiny", "float64")])
def test_preset_short_l4_training_runs_agree(preset, dtype, preset_data):
    spec, data = preset_data(preset)
    checks = text_parity.level4(spec, data, dtype, "cpu", steps=L4_SHORT)
    assert len(checks) == 2 and all(c.level == "L4" for c in checks)  # per-step losses, end-state logits
    assert f"{L4_SHORT} steps" in checks[0].name
    assert_all_pass(checks)


def test_port_level_to_the_other_framework_and_to_hugging_face(preset_data):
    pytest.importorskip("transformers")
    spec, data = preset_data("bert-tag-tiny")
    checks = text_parity.port_checks(spec, data, "cpu")
    assert {c.name for c in checks} == {"tag tf -> torch", "tag torch -> tf", "tag torch -> hf"}
    assert_all_pass(checks)


# --------------------------------------------------------------------------- the levels can fail


def plant_in_tf(monkeypatch, change) -> None:
    """Build tf's models through ``change(model, weights) -> (model, weights)``; torch's as they are."""
    real = text_parity.build_model

    def planted(backend, model, head, vocab, labels, weights, *rest):
        if backend.NAME == "tf":
            model, weights = change(model, dict(weights))
        return real(backend, model, head, vocab, labels, weights, *rest)

    monkeypatch.setattr(text_parity, "build_model", planted)


def one_variant(monkeypatch, name: str) -> None:
    monkeypatch.setattr(text_parity, "VARIANTS", {name: text_parity.VARIANTS[name]})


def test_a_weight_moved_by_1e_3_in_one_backend_fails_l1_and_l2(monkeypatch):
    """float32, whose bounds are the loose ones: one element of one tensor moved by 1e-3 in tf's model."""

    def move(model, weights):
        w = weights[PLANT].copy()
        w[0, 0] += 1e-3
        return model, {**weights, PLANT: w}

    one_variant(monkeypatch, "post-LN tag")
    plant_in_tf(monkeypatch, move)
    l1, l2 = text_parity.level1("float32"), text_parity.level2("float32")
    assert len(l1) == 4 and len(l2) == 2
    assert not any(c.passed for c in l1 + l2), failures(l1 + l2)  # every comparison sees it
    assert all(c.value > 10 * c.bound for c in l2)  # gradients see it clearly (float32 L1: by ~1.6x)


def test_an_untied_decoder_in_one_backend_fails_l2(monkeypatch):
    """tf's decoder a separate copy of the word embeddings: the same logits (L1 passes), but the embeddings' gradient
    lacks the decoder's share (L2 must fail, on that tensor)."""

    def untie(model, weights):
        return replace(model, tie_embeddings=False), {**weights, DECODER: weights[WORD_EMBEDDINGS].copy()}

    one_variant(monkeypatch, "post-LN tied MLM")
    plant_in_tf(monkeypatch, untie)
    l1 = text_parity.level1("float64")
    assert_all_pass([c for c in l1 if "torch vs tf" in c.name])  # the forward pass cannot tell (and the wrapper
    # itself changes nothing else: the control for both plants)
    l2 = text_parity.level2("float64")
    assert len(l2) == 2 and not any(c.passed for c in l2), failures(l2)
    assert all(c.detail == f"worst: {WORD_EMBEDDINGS}" for c in l2)
