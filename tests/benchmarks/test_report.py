"""The benchmark report builder: JSON schema, aligned Markdown tables, plot files, comparison."""

from __future__ import annotations

import copy
import json

import pytest

from benchmarks import report
from benchmarks.suite import SCHEMA_VERSION


def fake_results(accuracy_shift: float = 0.0, throughput: float = 1000.0, l4_passed: bool = True) -> dict:
    runs = [
        {"preset": "cnn-digits", "backend": b, "seed": s, "device": "cpu", "metric": "test_accuracy",
         "value": 0.98 + 0.002 * s + accuracy_shift, "curve_x": [1, 2, 3], "curve_y": [0.9, 0.95, 0.97 + 0.001 * s],
         "curve_label": "validation accuracy per epoch", "throughput": throughput + 10 * s,
         "throughput_unit": "images/s", "wall_s": 4.0 + s, "peak_rss_mb": 500.0 + s}
        for b in ("torch", "tf") for s in (0, 1, 2)
    ]
    parity = [{"preset": "cnn-digits", "device": "cpu", "level": "L4", "dtype": "float32", "name": "adam-cosine",
               "value": 1e-5 if l4_passed else 2e-3, "bound": 1e-3, "passed": l4_passed, "detail": ""}]
    overhead = {"preset": "cnn-cifar10", "batch_size": 128, "image_shape": [32, 32, 3], "steps": 20,
                "train_flops_per_step": 3e10, "matmul": {"n": 2048, "flops_per_s": 7e10, "by_library": {"numpy": 7e10}},
                "loops": {name: {"s_per_step": 0.5, "images_per_s": 256.0, "flops_per_s": 6e10, "fraction_of_matmul": 0.85}
                          for name in ("toolkit torch", "bare torch loop", "toolkit tf", "bare tf.function loop", "keras fit")},
                "speedup": {"torch toolkit / bare loop": 1.02, "tf toolkit / bare tf.function loop": 1.01,
                            "tf toolkit / keras fit": 1.2}}
    return {"schema_version": SCHEMA_VERSION, "created": "2026-11-25T12:00:00+0000", "config": {},
            "environment": {"python": "3.11", "machine": "x86_64", "processor": "x86_64", "cpu_count": 2, "threads": 2,
                            "versions": {"torch": "2.13.0"}},
            "runs": runs, "parity": parity, "overhead": overhead, "wall_s": 100.0}


def test_validate_accepts_written_schema_and_names_what_is_missing():
    report.validate(fake_results())
    broken = fake_results()
    del broken["runs"][0]["throughput"]
    with pytest.raises(ValueError, match="run 0 lacks throughput"):
        report.validate(broken)
    with pytest.raises(ValueError, match="missing runs"):
        report.validate({k: v for k, v in fake_results().items() if k != "runs"})
    newer = fake_results()
    newer["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        report.validate(newer)


def test_markdown_report_tables_line_up_and_state_mean_std():
    text = report.markdown_report(fake_results())
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 4  # runs, parity, overhead loops, speed-ups
    for table in tables:
        widths = {len(line) for line in table.splitlines()}
        assert len(widths) == 1, table
    assert "0.9820 ± 0.0016" in text  # mean ± std of 0.980, 0.982, 0.984
    assert "| tf toolkit / keras fit" in text and "| no " in text  # 1.2 < 1.5 target: not met


def test_write_report_creates_json_markdown_and_non_empty_plots(tmp_path):
    paths = report.write_report(fake_results(), tmp_path / "out")
    assert json.loads(paths["results"].read_text())["schema_version"] == SCHEMA_VERSION
    for key in ("curves", "throughput"):
        data = paths[key].read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    assert "![learning curves](curves.png)" in paths["report"].read_text()


def test_compare_reports_metric_throughput_and_verdict_changes(tmp_path):
    old, new = fake_results(), fake_results(accuracy_shift=0.01, throughput=1100.0, l4_passed=False)
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    text = report.compare(report.load_results(tmp_path / "a.json"), report.load_results(tmp_path / "b.json"))
    assert "0.0100" in text  # accuracy change
    assert "1110.0 (+9.9%)" in text  # mean throughput 1010 -> 1110
    assert "| L4    | float32 | adam-cosine | PASS | FAIL" in text
    same = report.compare(old, copy.deepcopy(old))
    assert "## Parity verdicts that changed\n\nnone" in same


def test_load_results_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.load_results(tmp_path / "nope.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        report.load_results(tmp_path / "junk.json")
