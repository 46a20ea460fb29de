"""The overhead benchmark's timing protocol: every loop timed in rounds of alternating order, best round kept;
ratios against the loops and against the conv-kernel floor."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.benchmarks import overhead
from dualkit.core import registry
from dualkit.tasks import presets


def test_each_loop_keeps_its_best_round_and_rounds_alternate(monkeypatch):
    if not (registry.is_installed("torch") and registry.is_installed("tf")):
        pytest.skip("needs PyTorch and TensorFlow")
    calls: list[str] = []
    # seconds per step per call: the first call of a process is slow (warm-up), later ones are not
    times = {
        "toolkit torch": [0.5, 0.3],
        "bare torch loop": [0.32, 0.31],
        "toolkit tf": [0.4, 0.41],
        "bare tf.function loop": [0.42, 0.45],
        "keras fit": [0.6, 0.5],
    }

    def fake(name):
        def timer(*args, **kwargs):
            calls.append(name)
            return times[name][calls.count(name) - 1]

        return timer

    monkeypatch.setattr(overhead, "toolkit_step_time", lambda spec, backend, *a: fake(f"toolkit {backend}")())
    monkeypatch.setattr(overhead, "bare_torch_step_time", lambda *a: fake("bare torch loop")())
    monkeypatch.setattr(overhead, "bare_tf_step_time", lambda *a: fake("bare tf.function loop")())
    monkeypatch.setattr(overhead, "keras_fit_step_time", lambda *a: fake("keras fit")())
    monkeypatch.setattr(overhead, "matmul_rate", lambda: {"n": 8, "flops_per_s": 1e9, "by_library": {}})
    # seconds per step in each framework's conv kernels, measured once per round: the best round is kept
    floors = {"torch": [0.3, 0.24], "tf": [0.32, 0.35]}
    floor_calls: list[str] = []

    def fake_floor(backend, *args, **kwargs):
        floor_calls.append(backend)
        return {"layers": [], "s_per_step": floors[backend][floor_calls.count(backend) - 1]}

    monkeypatch.setattr(overhead, "conv_floor", fake_floor)
    res = overhead.run_overhead(presets.load("cnn-digits"), (8, 8, 1), steps=2, warmup=1, rounds=2)
    order = list(times)
    assert calls == order + order[::-1] and floor_calls == ["torch", "tf"] * 2
    assert {b: f["s_per_step"] for b, f in res["conv_floor"].items()} == {"torch": 0.24, "tf": 0.32}
    assert {k: v["s_per_step"] for k, v in res["loops"].items()} == {k: min(v) for k, v in times.items()}
    assert list(res["loops"]) == order and res["rounds"] == 2
    assert res["speedup"]["torch toolkit / bare loop"] == pytest.approx(0.31 / 0.3)
    assert res["speedup"]["tf toolkit / keras fit"] == pytest.approx(0.5 / 0.4)
    # each loop against its own framework's floor; the ceiling is the other loop over the toolkit's floor
    assert res["loops"]["toolkit torch"]["conv_floor_fraction"] == pytest.approx(0.24 / 0.3)
    assert res["loops"]["keras fit"]["conv_floor_fraction"] == pytest.approx(0.32 / 0.5)
    assert res["speedup_ceiling"] == pytest.approx(
        {
            "torch toolkit / bare loop": 0.31 / 0.24,
            "tf toolkit / bare tf.function loop": 0.42 / 0.32,
            "tf toolkit / keras fit": 0.5 / 0.32,
        }
    )


def test_matmul_rate_is_the_fastest_installed_library():
    rate = overhead.matmul_rate(n=64, repeats=2)
    expected = {"numpy"} | {lib for lib in ("torch", "tf") if registry.is_installed(lib)}
    assert set(rate["by_library"]) == expected and rate["n"] == 64
    assert rate["flops_per_s"] == max(rate["by_library"].values()) > 0


# -- the transformer part ----------------------------------------------------------------------------------------

TINY_BERT = [
    "model.hidden=16",
    "model.layers=1",
    "model.heads=2",
    "model.intermediate=32",
    "model.max_positions=16",
    "data.max_length=16",
    "train.batch_size=4",
]


def _tiny_tokenizer():
    from dualkit.core.tokenizer import WordPiece

    text = "the quick brown fox jumps over the lazy dog while a tiny model reads the standard library docs"
    return WordPiece.build([text] * 3, 60, 1, True)


def test_token_batches_are_bert_blocks_with_masks_drawn_once():
    spec, tok = presets.load("bert-mlm-tiny", TINY_BERT), _tiny_tokenizer()
    ids, mask, labels = overhead.synthetic_token_batches(tok, spec, n_batches=5)
    assert ids.shape == mask.shape == labels.shape == (5, 4, 16) and mask.all()
    assert (labels[..., 0] == -100).all() and (labels[..., -1] == -100).all()  # [CLS] and [SEP] are never chosen
    chosen = labels != -100
    assert 0.08 < chosen.mean() < 0.22  # BERT's 15% of the 14 ordinary positions per row
    assert (ids[chosen] == tok.mask_id).mean() > 0.6 and not np.isin(labels[chosen], list(tok.special_ids)).any()
    assert not np.isin(ids[..., 1:-1][~chosen[..., 1:-1]], list(tok.special_ids)).any()  # unchosen: ordinary ids
    again = overhead.synthetic_token_batches(tok, spec, n_batches=5)
    assert all(np.array_equal(a, b) for a, b in zip((ids, mask, labels), again))  # seeded: every loop sees these


def test_transformer_loops_are_timed_side_by_side_with_tokens_per_s_and_ratios():
    """The real loops on a tiny BERT, 2 steps: each present, finite and positive; tokens/s and the ratios follow
    from the seconds per step."""
    if not (registry.is_installed("torch") and registry.is_installed("tf")):
        pytest.skip("needs PyTorch and TensorFlow")
    pytest.importorskip("transformers")
    spec = presets.load("bert-mlm-tiny", TINY_BERT)
    res = overhead.run_transformer_overhead(spec, steps=2, warmup=1, rounds=1, tokenizer=_tiny_tokenizer())
    assert list(res["loops"]) == list(overhead.TRANSFORMER_LOOP_FRAMEWORKS) and res["skipped"] == {}
    assert (res["batch_size"], res["length"], res["vocab_size"], res["tokens_per_step"]) == (4, 16, 60, 64.0)
    assert 0 < res["labelled_per_step"] < 64
    for row in res["loops"].values():
        assert np.isfinite(row["s_per_step"]) and row["s_per_step"] > 0
        assert row["tokens_per_s"] == pytest.approx(64.0 / row["s_per_step"])
        assert row["sequences_per_s"] == pytest.approx(4 / row["s_per_step"])
    s = {k: v["s_per_step"] for k, v in res["loops"].items()}
    assert res["speedup"] == pytest.approx(
        {
            "torch toolkit / bare loop": s["bare torch loop"] / s["toolkit torch"],
            "tf toolkit / bare tf.function loop": s["bare tf.function loop"] / s["toolkit tf"],
            "tf toolkit / keras fit": s["keras fit"] / s["toolkit tf"],
        }
    )


def test_transformer_rounds_alternate_and_a_missing_transformers_skips_its_row(monkeypatch):
    if not (registry.is_installed("torch") and registry.is_installed("tf")):
        pytest.skip("needs PyTorch and TensorFlow")
    calls: list[str] = []
    times = {"toolkit torch": [0.5, 0.2], "toolkit tf": [0.3, 0.35], "bare tf.function loop": [0.4, 0.6]}
    times["keras fit"] = [0.9, 0.45]

    def fake(name):
        calls.append(name)
        return times[name][calls.count(name) - 1]

    monkeypatch.setattr(overhead, "toolkit_mlm_step_time", lambda spec, backend, *a: fake(f"toolkit {backend}"))
    monkeypatch.setattr(overhead, "bare_tf_mlm_step_time", lambda *a: fake("bare tf.function loop"))
    monkeypatch.setattr(overhead, "keras_fit_mlm_step_time", lambda *a: fake("keras fit"))
    find_spec = overhead.importlib.util.find_spec
    monkeypatch.setattr(
        overhead.importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else find_spec(name, *a)
    )
    spec = presets.load("bert-mlm-tiny", TINY_BERT)
    res = overhead.run_transformer_overhead(spec, steps=2, warmup=1, rounds=2, tokenizer=_tiny_tokenizer())
    order = list(times)
    assert calls == order + order[::-1] and res["rounds"] == 2
    assert {k: v["s_per_step"] for k, v in res["loops"].items()} == {k: min(v) for k, v in times.items()}
    assert "transformers is not installed" in res["skipped"]["bare torch loop"]
    # no torch ratio without its loop; the tf ones from the best rounds
    assert res["speedup"] == pytest.approx(
        {"tf toolkit / bare tf.function loop": 0.4 / 0.3, "tf toolkit / keras fit": 0.45 / 0.3}
    )
