"""A smoke run of the benchmark on the smallest task in both backends, through the CLI."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

from dualkit.benchmarks import suite  # noqa: E402
from dualkit.cli import main  # noqa: E402


def test_bench_smoke_both_backends_writes_report(tmp_path, monkeypatch, capsys):
    # the smallest task: one epoch of digits, one seed; the overhead loops on the digits CNN, 2 steps
    monkeypatch.setattr(
        suite,
        "fast_config",
        lambda: suite.BenchConfig(
            presets=["cnn-digits"],
            seeds=[0],
            overrides=["train.epochs=1"],
            parity=False,
            overhead_preset="cnn-digits",
            overhead_transformer_preset="",  # timed in tests/benchmarks/test_overhead.py
            overhead_steps=2,
            overhead_rounds=1,
        ),
    )
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {(r["backend"], r["device"]) for r in results["runs"]} == {("torch", "cpu"), ("tf", "cpu")}
    for r in results["runs"]:
        assert 0.5 < r["value"] <= 1.0 and r["throughput"] > 0 and r["peak_rss_mb"] > 50
        assert len(r["curve_y"]) == 1
    assert set(results["overhead"]["loops"]) == {
        "toolkit torch",
        "bare torch loop",
        "toolkit tf",
        "bare tf.function loop",
        "keras fit",
    }
    assert set(results["overhead"]["conv_floor"]) == {"torch", "tf"}
    assert set(results["overhead"]["speedup_ceiling"]) == set(results["overhead"]["speedup"])
    assert set(results["parts"]) == {"runs cnn-digits cpu", "overhead"}
    assert (out / "curves.png").stat().st_size > 0 and (out / "throughput.png").stat().st_size > 0
    assert "# dualkit benchmark report" in capsys.readouterr().out
    # the same folder again is refused, and the results stay as they were
    before = (out / "results.json").read_bytes()
    assert main(["bench", "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    assert (out / "results.json").read_bytes() == before


def test_l5_from_runs_applies_floor_and_gap():
    from dualkit.tasks import presets

    spec = presets.load("cnn-digits")
    runs = [{"backend": "torch", "value": v} for v in (0.99, 0.985)] + [
        {"backend": "tf", "value": v} for v in (0.97, 0.975)
    ]
    checks = {c.name: c for c in suite.l5_from_runs(spec, runs)}
    assert checks["torch mean test accuracy"].passed and not checks["tf mean test accuracy"].passed
    gap = checks["mean accuracy gap (points)"]
    assert gap.value == pytest.approx(1.5) and not gap.passed


def test_full_bench_without_data_root_is_refused(capsys):
    assert main(["bench", "--full"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_the_transformer_overhead_takes_an_mlm_preset_only():
    from dualkit.core.errors import DualkitError

    suite.check_transformer_preset("bert-mlm-tiny")
    with pytest.raises(DualkitError, match="'bert-tag-tiny' is a 'tag' preset.*bert-mlm-tiny"):
        suite.check_transformer_preset("bert-tag-tiny")
    assert "bert-mlm-tiny" in suite.fast_config().presets and suite.fast_config().overhead_transformer_preset
