"""The benchmark report builder: JSON schema, aligned Markdown tables, plot files, comparison."""

from __future__ import annotations

import copy
import json

import pytest

from dualkit.benchmarks import report
from dualkit.benchmarks.suite import SCHEMA_VERSION


def fake_results(
    accuracy_shift: float = 0.0,
    throughput: float = 1000.0,
    l4_passed: bool = True,
    tasks: tuple[str, ...] = ("classify",),
) -> dict:
    runs = [
        {
            "preset": "cnn-digits",
            "task": "classify",
            "backend": b,
            "seed": s,
            "device": "cpu",
            "metric": "test_accuracy",
            "value": 0.98 + 0.002 * s + accuracy_shift,
            "curve_x": [1, 2, 3],
            "curve_y": [0.9, 0.95, 0.97 + 0.001 * s],
            "curve_label": "validation accuracy per epoch",
            "curve_xlabel": "epoch",
            "throughput": throughput + 10 * s,
            "throughput_unit": "images/s",
            "wall_s": 4.0 + s,
            "peak_rss_mb": 500.0 + s,
        }
        for b in ("torch", "tf")
        for s in (0, 1, 2)
    ]
    if "masked" in tasks:
        runs += [fake_masked_run(b, s) for b in ("torch", "tf") for s in (0, 1, 2)]
    if "dqn" in tasks:
        runs += [fake_dqn_run(b, s) for b in ("torch", "tf") for s in (0, 1, 2)]
    parity = [
        {
            "preset": "cnn-digits",
            "device": "cpu",
            "level": "L4",
            "dtype": "float32",
            "name": "adam-cosine",
            "value": 1e-5 if l4_passed else 2e-3,
            "bound": 1e-3,
            "passed": l4_passed,
            "detail": "",
        }
    ]
    overhead = {
        "preset": "cnn-cifar10",
        "batch_size": 128,
        "image_shape": [32, 32, 3],
        "steps": 20,
        "train_flops_per_step": 3e10,
        "matmul": {"n": 2048, "flops_per_s": 7e10, "by_library": {"numpy": 7e10}},
        "loops": {
            name: {
                "s_per_step": 0.5,
                "images_per_s": 256.0,
                "flops_per_s": 6e10,
                "fraction_of_matmul": 0.85,
                "conv_floor_fraction": 0.8,
            }
            for name in ("toolkit torch", "bare torch loop", "toolkit tf", "bare tf.function loop", "keras fit")
        },
        "speedup": {
            "torch toolkit / bare loop": 1.02,
            "tf toolkit / bare tf.function loop": 1.01,
            "tf toolkit / keras fit": 1.2,
        },
        "conv_floor": {
            b: {
                "s_per_step": 0.4,
                "layers": [
                    {
                        "name": "encoder.block0.conv0.weight",
                        "input": [128, 32, 32, 3],
                        "out_channels": 32,
                        "s": {"forward": 0.01, "filter_grad": 0.02},
                    },
                    {
                        "name": "encoder.block0.conv1.weight",
                        "input": [128, 32, 32, 32],
                        "out_channels": 32,
                        "s": {"forward": 0.1, "input_grad": 0.12, "filter_grad": 0.15},
                    },
                ],
            }
            for b in ("torch", "tf")
        },
        "speedup_ceiling": {
            "torch toolkit / bare loop": 1.25,
            "tf toolkit / bare tf.function loop": 1.26,
            "tf toolkit / keras fit": 1.41,
        },
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "created": "2026-11-25T12:00:00+0000",
        "config": {},
        "environment": {
            "python": "3.11",
            "machine": "x86_64",
            "processor": "x86_64",
            "cpu_count": 2,
            "threads": 2,
            "versions": {"torch": "2.13.0"},
        },
        "runs": runs,
        "parity": parity,
        "overhead": overhead,
        "wall_s": 100.0,
        "parts": {"runs cnn-digits cpu": {"wall_s": 60.0, "cpu_s": 55.0}, "overhead": {"wall_s": 40.0, "cpu_s": 30.0}},
    }


def fake_masked_run(backend: str, seed: int) -> dict:
    return {
        "preset": "masked-digits",
        "task": "masked",
        "backend": backend,
        "seed": seed,
        "device": "cpu",
        "metric": "probe_accuracy",
        "value": 0.96 + 0.001 * seed,
        "random_accuracy": 0.94,
        "margin_points": 2.0 + 0.1 * seed,
        "finetune": {"0.1": {"accuracy": 0.9, "random_accuracy": 0.85, "margin_points": 5.0}},
        "curve_x": [1, 2, 3],
        "curve_y": [0.8, 0.5, 0.4 - 0.01 * seed],
        "curve_label": "masked loss (train) per epoch",
        "curve_xlabel": "epoch",
        "throughput": 1500.0 + seed,
        "throughput_unit": "images/s",
        "wall_s": 12.0,
        "pretrain_s": 9.0,
        "final_loss": 0.4 - 0.01 * seed,
        "peak_rss_mb": 400.0,
    }


def fake_dqn_run(backend: str, seed: int) -> dict:
    solved = seed < 2  # the third seed runs out of budget
    return {
        "preset": "dqn-cartpole",
        "task": "dqn",
        "backend": backend,
        "seed": seed,
        "device": "cpu",
        "metric": "test_return",
        "value": 500.0 if solved else 350.0,
        "test_return_min": 500.0 if solved else 200.0,
        "curve_x": [2500, 5000, 7500],
        "curve_y": [20.0, 180.0, 500.0 if solved else 300.0],
        "curve_label": "greedy evaluation return",
        "curve_xlabel": "environment steps",
        "throughput": 2500.0 + seed,
        "throughput_unit": "env steps/s",
        "wall_s": 20.0,
        "eval_s": 3.0,
        "env_steps": 7500 if solved else 100000,
        "updates": 700,
        "solved_at": 7500 if solved else None,
        "time_to_solve_s": 18.0 if solved else None,
        "peak_rss_mb": 450.0,
    }


def test_validate_accepts_written_schema_and_names_what_is_missing():
    report.validate(fake_results())
    broken = fake_results()
    del broken["runs"][0]["throughput"]
    with pytest.raises(ValueError, match="run 0 lacks throughput"):
        report.validate(broken)
    with pytest.raises(ValueError, match="missing runs"):
        report.validate({k: v for k, v in fake_results().items() if k != "runs"})
    old = fake_results()
    old["schema_version"] = 1  # before runs carried their task: all were the classifier's
    for run in old["runs"]:
        del run["task"]
    assert {r["task"] for r in report.validate(old)["runs"]} == {"classify"}
    newer = fake_results()
    newer["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        report.validate(newer)


def test_markdown_report_tables_line_up_and_state_mean_std():
    text = report.markdown_report(fake_results())
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert len(tables) >= 6  # parts, runs, parity verdicts and checks, overhead loops, speed-ups
    for table in tables:
        widths = {len(line) for line in table.splitlines()}
        assert len(widths) == 1, table
    assert "0.9820 ± 0.0016" in text  # mean ± std of 0.980, 0.982, 0.984
    assert "## Classifier runs" in text and "throughput (images/s)" in text
    assert "| total               |  100.0 | 85.00 |" in text  # time by part, summed (4 significant digits)
    assert "| tf toolkit / keras fit" in text and "| no " in text  # 1.2 < 1.5 target: not met


def test_overhead_section_shows_the_conv_floor_and_the_ceilings_it_sets(tmp_path):
    text = report.markdown_report(fake_results())
    assert "| tf toolkit / keras fit             |    1.200 |   1.410 |" in text  # measured, then ceiling
    assert "Measured fp32 matmul rate: 70.0 GFLOP/s (2048x2048; the fastest of numpy 70.0)." in text
    assert "| toolkit tf            |   500.0 |    256.0 |   60.00 |             0.8500 |          0.8000 |" in text
    # a row per framework and conv; the first conv has no input gradient
    assert "| tf      | encoder.block0.conv0 | 128x32x32x3  |           32 |       10.0 |             - |" in text
    assert "| torch   | encoder.block0.conv1 | 128x32x32x32 |           32 |      100.0 |         120.0 |" in text
    assert "Conv-kernel floor per step: torch 400.0 ms, tf 400.0 ms." in text
    for table in (block for block in text.split("\n\n") if block.startswith("|")):
        assert len({len(line) for line in table.splitlines()}) == 1, table
    older = fake_results()  # written before the floor was measured: the tables go without its columns
    for key in ("conv_floor", "speedup_ceiling"):
        del older["overhead"][key]
    for row in older["overhead"]["loops"].values():
        del row["conv_floor_fraction"]
    text = report.markdown_report(older)
    assert "| tf toolkit / keras fit" in text and "ceiling" not in text and "in conv kernels" not in text
    # the throughput plot marks each loop's floor where there is one, and goes without where there is none
    with_floor = report.plot_throughput(fake_results(), tmp_path / "with.png").read_bytes()
    without = report.plot_throughput(older, tmp_path / "without.png").read_bytes()
    assert with_floor.startswith(b"\x89PNG") and without.startswith(b"\x89PNG") and with_floor != without


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


def test_compare_counts_every_figure_that_is_not_a_time():
    old = fake_results()
    same, differ = report.exact_figures(old, copy.deepcopy(old))
    assert same > 0 and differ == []
    faster = copy.deepcopy(old)
    for r in faster["runs"]:
        r["wall_s"] *= 0.5
        r["throughput"] *= 2
    assert report.exact_figures(old, faster) == (same, [])  # times and rates are not compared
    changed = copy.deepcopy(old)
    changed["runs"][1]["curve_y"][0] += 1e-12  # one value of one curve, a trillionth off
    changed["parity"][0]["value"] *= 1.5
    _, differ = report.exact_figures(old, changed)
    assert len(differ) == 2
    assert any("curve_y[0]" in row[0] for row in differ) and any(row[0].endswith(" value") for row in differ)
    assert "2 differ" in report.compare(old, changed)


def test_load_results_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        report.load_results(tmp_path / "nope.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        report.load_results(tmp_path / "junk.json")


def test_markdown_report_has_a_table_per_task_with_its_metric_and_unit():
    text = report.markdown_report(fake_results(tasks=("classify", "masked", "dqn")))
    sections = {block.split("\n\n")[0]: block for block in text.split("\n## ")[1:]}
    masked = sections["Masked pretraining runs (mean ± std over seeds)"]
    assert (
        "linear-probe accuracy" in masked and "throughput (images/s)" in masked and "fine-tune 0.1 of labels" in masked
    )
    assert "0.9610 ± 0.0008" in masked and "+2.10" in masked  # probe mean ± std; mean margin over random init
    dqn = sections["DQN runs (mean ± std over seeds)"]
    assert "greedy test return" in dqn and "throughput (env steps/s)" in dqn and "images/s" not in dqn
    assert "450.0 ± 70.7" in dqn and "| 2/3 " in dqn  # mean ± std of 500, 500, 350; seeds reaching 475
    assert "7500" in dqn and "18.00" in dqn  # solved at and time to solve, over the seeds that solved
    for table in (block for block in text.split("\n\n") if block.startswith("|")):
        assert len({len(line) for line in table.splitlines()}) == 1, table


def test_every_number_column_prints_at_one_precision():
    """No column mixes 9873.8956 with 1.03e+04 or prints ms as 141.6746; tiny parity values are scientific."""
    import re

    results = fake_results(tasks=("classify", "masked", "dqn"))
    results["overhead"]["loops"]["toolkit tf"]["s_per_step"] = 0.1416746
    results["parity"] += [
        {
            "preset": "cnn-digits",
            "device": "cpu",
            "level": level,
            "dtype": "float64",
            "name": name,
            "value": value,
            "bound": bound,
            "passed": True,
            "detail": "",
        }
        for level, name, value, bound in [("L0", "ce", 0.0, 1e-6), ("L4", "sgd", 3.1e-13, 1e-10)]
    ]
    text = report.markdown_report(results) + report.compare(fake_results(), fake_results(throughput=9873.8956))
    assert "141.7" in text and "141.6746" not in text
    assert "| adam-cosine | 1.00e-05 | 1.00e-03 |" in text and "| sgd         | 3.10e-13 | 1.00e-10 |" in text
    checked = 0
    for table in (block for block in text.split("\n\n") if block.startswith("|")):
        header, rule, *rows = table.splitlines()
        right = [part.endswith(":") for part in rule.strip("|").split("|")]
        for i, is_number in enumerate(right):
            col = [r[2:-2].split(" | ")[i].strip() for r in rows]
            col = [c for c in col if c not in ("-", "0", "nan")]
            if not is_number or not col:
                continue
            if any("e" in c for c in col):
                assert all(re.fullmatch(r"-?\d\.\d\de[-+]\d\d", c) for c in col), (header, col)
            else:
                assert len({len(c.partition(".")[2]) for c in col}) == 1, (header, col)
                assert all(len(c.partition(".")[2]) <= 4 for c in col), (header, col)
            checked += 1
    assert checked > 30


def test_parity_verdict_table_per_preset_and_level():
    results = fake_results(l4_passed=False)
    results["parity"].append(
        {
            "preset": "dqn-cartpole",
            "device": "cpu",
            "level": "L5",
            "dtype": "float32",
            "name": "torch seeds with greedy return >= 475",
            "value": 2.0,
            "bound": 2.0,
            "passed": True,
            "detail": "",
        }
    )
    text = report.markdown_report(results)
    assert "| cnn-digits   | cpu    | L4    |      1 |      0 | FAIL    |" in text
    assert "| dqn-cartpole | cpu    | L5    |      1 |      1 | PASS    |" in text


def test_plots_of_all_tasks_are_non_empty(tmp_path):
    results = fake_results(tasks=("classify", "masked", "dqn"))
    paths = report.write_report(results, tmp_path / "out")
    for key in ("curves", "throughput"):
        data = paths[key].read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20000
    reloaded = report.load_results(paths["results"])
    assert {r["task"] for r in reloaded["runs"]} == {"classify", "masked", "dqn"}
    assert [r["solved_at"] for r in reloaded["runs"] if r["task"] == "dqn"][2] is None  # JSON null survives


def test_parity_gaps_plot_of_envelope_checks(tmp_path):
    results = fake_results()
    env = [1e-6, 1e-6, 2e-6, 5e-6]  # the running max of the own gaps, floored
    results["parity"].append(
        {
            **results["parity"][0],
            "name": "adam-cosine per-step loss within the rounding envelope",
            "value": 1.2,
            "bound": 10.0,
            "passed": True,
            "series": {
                "torch vs tf": [1e-7, 1e-6, 2e-6, 4e-6],
                "torch vs torch (1-ulp init)": [0.0, 1e-7, 2e-6, 5e-6],
                "rounding envelope": env,
            },
        }
    )
    paths = report.write_report(results, tmp_path / "out")
    assert paths["parity gaps"].read_bytes().startswith(b"\x89PNG")
    assert "(parity-gaps.png)" in paths["report"].read_text()
    assert "parity gaps" not in report.write_report(fake_results(), tmp_path / "plain")  # no series, no plot


def fake_mlm_run(backend: str, seed: int) -> dict:
    return {
        "preset": "bert-mlm-tiny",
        "task": "mlm",
        "backend": backend,
        "seed": seed,
        "device": "cpu",
        "metric": "mlm_accuracy",
        "value": 0.31 + 0.01 * seed,
        "unigram_accuracy": 0.06,
        "curve_x": [1, 2, 3, 4],
        "curve_y": [0.12, 0.2, 0.26, 0.3 + 0.01 * seed],
        "curve_label": "validation MLM accuracy per epoch",
        "curve_xlabel": "epoch",
        "throughput": 9000.0 + 100 * seed,
        "throughput_unit": "tokens/s",
        "wall_s": 70.0,
        "pretrain_s": 40.0,
        "final_loss": 4.5 - 0.1 * seed,
        "pretrained_f1": 0.62 + 0.01 * seed,
        "random_f1": 0.55,
        "margin_points": 7.0 + seed,
        "peak_rss_mb": 900.0,
    }


def fake_transformer_overhead() -> dict:
    names = ("toolkit torch", "bare torch loop", "toolkit tf", "bare tf.function loop", "keras fit")
    seconds = dict(zip(names, (0.3, 0.75, 0.06, 0.12, 0.1)))
    return {
        "preset": "bert-mlm-tiny",
        "batch_size": 32,
        "length": 64,
        "vocab_size": 2000,
        "vocab_from": "the preset's tokenizer, built from its corpus",
        "tokens_per_step": 2048.0,
        "labelled_per_step": 301.375,
        "steps": 20,
        "rounds": 3,
        "loops": {
            n: {"s_per_step": s, "tokens_per_s": 2048 / s, "sequences_per_s": 32 / s} for n, s in seconds.items()
        },
        "speedup": {
            "torch toolkit / bare loop": 2.5,
            "tf toolkit / bare tf.function loop": 2.0,
            "tf toolkit / keras fit": 0.9,
        },
        "skipped": {},
    }


def test_mlm_runs_and_the_transformer_overhead_in_tokens_per_s(tmp_path):
    results = fake_results()
    results["runs"] += [fake_mlm_run(b, s) for b in ("torch", "tf") for s in (0, 1, 2)]
    results["overhead"]["transformer"] = fake_transformer_overhead()
    text = report.markdown_report(results)
    sections = {block.split("\n\n")[0]: block for block in text.split("\n## ")[1:]}
    mlm = sections["Masked language model (BERT) runs (mean ± std over seeds)"]
    assert "held-out MLM accuracy" in mlm and "throughput (tokens/s)" in mlm and "images/s" not in mlm
    assert "tag F1 pretrained" in mlm and "0.3200 ± 0.0082" in mlm and "+8.00" in mlm  # accuracy; mean margin
    assert "9100 ± 82" in mlm  # tokens/s, mean ± std over seeds
    title = "Overhead: bert-mlm-tiny transformer, batch 32 x 64 tokens, vocabulary 2000, 20 timed steps per round"
    tr = sections[title + ", best of 3 rounds"]
    assert "(301 of 2048 tokens per batch labelled)" in tr
    assert "| bare torch loop       |   750.0 |     2731 |        42.7 |" in tr  # ms/step, tokens/s, sequences/s
    assert "| torch toolkit / bare loop          |    2.500 |  1.000 | yes |" in tr
    assert "| tf toolkit / keras fit             |    0.900 |  1.000 | no  |" in tr  # the target: 1.0x
    assert "Not timed" not in tr
    for table in (block for block in text.split("\n\n") if block.startswith("|")):
        assert len({len(line) for line in table.splitlines()}) == 1, table
    skipped = copy.deepcopy(results)
    del skipped["overhead"]["transformer"]["loops"]["bare torch loop"]
    del skipped["overhead"]["transformer"]["speedup"]["torch toolkit / bare loop"]
    skipped["overhead"]["transformer"]["skipped"] = {"bare torch loop": "transformers is not installed"}
    assert "Not timed: bare torch loop (transformers is not installed)." in report.markdown_report(skipped)
    # a panel more in the throughput plot; both curves' panels; compare names the transformer's ratios
    plain = report.plot_throughput(fake_results(), tmp_path / "plain.png").read_bytes()
    paths = report.write_report(results, tmp_path / "out")
    assert paths["throughput"].read_bytes() != plain and paths["curves"].read_bytes().startswith(b"\x89PNG")
    older = fake_results()  # written before the transformer was timed
    assert "| bert-mlm-tiny: tf toolkit / keras fit             |   nan | 0.900 |" in report.compare(older, results)
