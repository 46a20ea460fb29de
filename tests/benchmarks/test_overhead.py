"""The overhead benchmark's timing protocol: every loop timed in rounds of alternating order, best round kept;
ratios against the loops and against the conv-kernel floor."""

from __future__ import annotations

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
