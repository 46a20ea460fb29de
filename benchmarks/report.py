"""Benchmark reports: results JSON, a Markdown report with aligned tables, PNG plots, and comparisons."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.benchmarks.conv_floor import KERNELS
from dualkit.benchmarks.overhead import LOOP_FRAMEWORKS
from dualkit.benchmarks.suite import SCHEMA_VERSION
from dualkit.core.errors import ResultsError
from dualkit.core.report import ABSENT, markdown_table, mean_std
from dualkit.core.runs import atomic_write_text, write_json
from dualkit.tasks import registry as task_registry
from dualkit.tasks.parity import plot_gaps

REQUIRED_KEYS = ("schema_version", "created", "config", "environment", "runs", "parity", "overhead", "wall_s")
RUN_KEYS = (
    "preset",
    "task",
    "backend",
    "seed",
    "device",
    "metric",
    "value",
    "curve_x",
    "curve_y",
    "throughput",
    "throughput_unit",
    "wall_s",
    "peak_rss_mb",
)
# Targets from the benchmark issue: toolkit step vs bare loops, and CNN FLOP/s vs the matmul rate.
TARGETS = {"torch toolkit / bare loop": 1.0, "tf toolkit / bare tf.function loop": 1.0, "tf toolkit / keras fit": 1.5}
# The transformer's (issue 16): each backend's MaskedLM step >= 1.0x its framework's idiomatic loop of that model.
TRANSFORMER_TARGETS = dict.fromkeys(TARGETS, 1.0)
MATMUL_FRACTION_TARGET = 0.5


def validate(results: dict[str, Any]) -> dict[str, Any]:
    """Check a results dict against the schema this code writes; a clear error names what is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ResultsError(f"not a dualkit benchmark results file: missing {', '.join(missing)}")
    if results["schema_version"] > SCHEMA_VERSION:
        raise ResultsError(
            f"results schema {results['schema_version']} is newer than this dualkit reads ({SCHEMA_VERSION})"
        )
    for i, run in enumerate(results["runs"]):
        if results["schema_version"] < 2:
            run.setdefault("task", "classify")  # schema 1 benchmarked only the classifier
        absent = [k for k in RUN_KEYS if k not in run]
        if absent:
            raise ResultsError(f"run {i} lacks {', '.join(absent)}")
    return results


def load_results(path: Path) -> dict[str, Any]:
    """A results.json, refused in one line that names the file (``bench --compare`` takes two)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not JSON ({exc}); pass a results.json written by `dualkit bench`") from None
    if not isinstance(raw, dict):  # validate() looks keys up in it
        raise ResultsError(f"{path} holds a JSON {type(raw).__name__}, not benchmark results; pass a results.json")
    try:
        return validate(raw)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from None


def _groups(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[(r["preset"], r["backend"], r["device"])].append(r)
    return out


def _tasks(runs: list[dict[str, Any]]) -> list[str]:
    """The tasks of the runs, in the order they first appear."""
    return list(dict.fromkeys(r["task"] for r in runs))


def task_table(results: dict[str, Any], task_name: str) -> str:
    """One aligned table for a task: a row per preset, backend and device (mean ± std over seeds), with
    the task's own metric and throughput unit and its extra columns (tasks/base.py)."""
    task = task_registry.get(task_name)
    groups = {k: v for k, v in _groups(results["runs"]).items() if v[0]["task"] == task_name}
    first = next(iter(groups.values()))[0]
    extra = task.report_columns([r for rs in groups.values() for r in rs])
    headers = [
        "preset",
        "backend",
        "device",
        "seeds",
        task.metric_label or first["metric"],
        *extra,
        "wall s",
        f"throughput ({first['throughput_unit']})",
        "peak RSS MB",
    ]
    rows = []
    for (preset, backend, device), runs in groups.items():
        rows.append(
            [
                preset,
                backend,
                device,
                len(runs),
                mean_std([r["value"] for r in runs], task.metric_decimals),
                *task.report_cells(runs, extra),
                float(np.mean([r["wall_s"] for r in runs])),
                mean_std([r["throughput"] for r in runs], 0),
                int(round(max(r["peak_rss_mb"] for r in runs))),
            ]
        )
    return markdown_table(headers, rows)


def parity_verdicts(checks: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per preset, device and level: how many checks passed, and the level's verdict."""
    levels: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for c in checks:
        levels[(c["preset"], c["device"], c["level"])].append(bool(c["passed"]))
    return [[*key, len(v), sum(v), "PASS" if all(v) else "FAIL"] for key, v in levels.items()]


def markdown_report(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    env = results["environment"]
    lines = [
        "# dualkit benchmark report",
        "",
        f"Created {results['created']} in {results['wall_s']:.0f} s. Python {env['python']} on {env['machine']}, "
        f"{env['cpu_count']} CPUs, {env['threads']} threads; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
    ]
    if results.get("parts"):
        rows = [[k, float(v["wall_s"]), float(v["cpu_s"])] for k, v in results["parts"].items()]
        rows.append(["total", float(sum(r[1] for r in rows)), float(sum(r[2] for r in rows))])
        lines += [
            "",
            "## Time by part",
            "",
            "CPU s counts the bench process and its run processes: on a shared "
            "machine it is close to what each part takes alone.",
            "",
            markdown_table(["part", "wall s", "CPU s"], rows),
        ]
    for task in _tasks(results["runs"]):
        lines += ["", f"## {task_registry.get(task).title} runs (mean ± std over seeds)", "", task_table(results, task)]
    if results["parity"]:
        rows = [
            [
                c["preset"],
                c["device"],
                c["level"],
                c["dtype"],
                c["name"],
                c["value"],
                c["bound"],
                "PASS" if c["passed"] else "FAIL",
            ]
            for c in results["parity"]
        ]
        failed = sum(not c["passed"] for c in results["parity"])
        lines += [
            "",
            f"## Parity ({len(rows) - failed} passed, {failed} failed)",
            "",
            markdown_table(
                ["preset", "device", "level", "checks", "passed", "verdict"], parity_verdicts(results["parity"])
            ),
            "",
            markdown_table(["preset", "device", "level", "dtype", "check", "measured", "bound", "verdict"], rows),
        ]
    ov = results.get("overhead")
    if ov:
        rate = ov["matmul"]["flops_per_s"]
        floors = ov.get("conv_floor", {})  # absent in results written before the floor was measured
        ceilings = ov.get("speedup_ceiling", {})
        loop_cols = ["loop", "ms/step", "images/s", "GFLOP/s", "fraction of matmul"] + (
            ["in conv kernels"] if floors else []
        )
        rows = [
            [name, r["s_per_step"] * 1e3, r["images_per_s"], r["flops_per_s"] / 1e9, r["fraction_of_matmul"]]
            + ([r["conv_floor_fraction"]] if floors else [])
            for name, r in ov["loops"].items()
        ]
        speed_cols = ["speed-up (toolkit vs loop)", "measured"] + (["ceiling"] if ceilings else []) + ["target", "met"]
        speed_rows = [
            [k, v] + ([ceilings[k]] if ceilings else []) + [TARGETS[k], v >= TARGETS[k]]
            for k, v in ov["speedup"].items()
        ]
        lines += [
            "",
            f"## Overhead: {ov['preset']} architecture, batch {ov['batch_size']}, synthetic "
            f"{'x'.join(map(str, ov['image_shape']))} images, {ov['steps']} timed steps"
            + (f" per round, best of {ov['rounds']} rounds" if ov.get("rounds", 1) > 1 else ""),
            "",
            f"Measured fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({ov['matmul']['n']}x{ov['matmul']['n']}; the "
            "fastest of " + ", ".join(f"{lib} {r / 1e9:.1f}" for lib, r in ov["matmul"]["by_library"].items()) + ").",
            "",
            markdown_table(loop_cols, rows),
            "",
            markdown_table(speed_cols, speed_rows),
        ]
        if floors:
            lines += [
                "",
                '"in conv kernels": the share of the step that its framework\'s conv kernels take when each is '
                "timed alone on the step's shapes (the conv-kernel floor below). \"ceiling\": the loop's time over "
                "that floor, the speed-up of a step that cost nothing beyond its conv kernels.",
                "",
                markdown_table(
                    ["backend", "conv", "input", "out channels", "forward ms", "input-grad ms", "filter-grad ms"],
                    conv_floor_rows(floors),
                ),
                "",
                "Conv-kernel floor per step: "
                + ", ".join(f"{b} {f['s_per_step'] * 1e3:.1f} ms" for b, f in floors.items())
                + ".",
            ]
        best = max((r["fraction_of_matmul"] for n, r in ov["loops"].items() if n.startswith("toolkit")), default=0.0)
        lines += [
            "",
            f"Best toolkit backend reaches {best:.0%} of the matmul rate "
            f"(target {MATMUL_FRACTION_TARGET:.0%}: {'met' if best >= MATMUL_FRACTION_TARGET else 'not met'}).",
        ]
        if ov.get("transformer"):
            lines += transformer_overhead_section(ov["transformer"])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def transformer_overhead_section(tr: dict[str, Any]) -> list[str]:
    """The transformer part of the overhead benchmark (benchmarks.overhead.run_transformer_overhead): tokens/s
    of each loop, the speed-ups toolkit / loop against their targets, and the loops that were skipped."""
    rows = [[name, r["s_per_step"] * 1e3, r["tokens_per_s"], r["sequences_per_s"]] for name, r in tr["loops"].items()]
    speed_rows = [[k, v, TRANSFORMER_TARGETS[k], v >= TRANSFORMER_TARGETS[k]] for k, v in tr["speedup"].items()]
    lines = [
        "",
        f"## Overhead: {tr['preset']} transformer, batch {tr['batch_size']} x {tr['length']} tokens, vocabulary "
        f"{tr['vocab_size']}, {tr['steps']} timed steps"
        + (f" per round, best of {tr['rounds']} rounds" if tr.get("rounds", 1) > 1 else ""),
        "",
        f"Synthetic token blocks with BERT's masks drawn once ({tr['labelled_per_step']:.0f} of "
        f'{tr["tokens_per_step"]:.0f} tokens per batch labelled); tokens/s counts attended tokens. "bare torch '
        'loop": Hugging Face transformers\' BertForMaskedLM (eager attention) with torch.optim.AdamW; "bare '
        'tf.function loop" and "keras fit": the tf backend\'s Keras network with keras.optimizers.AdamW and a masked '
        "cross-entropy.",
        "",
        markdown_table(["loop", "ms/step", "tokens/s", "sequences/s"], rows),
        "",
        markdown_table(["speed-up (toolkit vs loop)", "measured", "target", "met"], speed_rows),
    ]
    if tr.get("skipped"):
        lines += ["", "Not timed: " + "; ".join(f"{k} ({why})" for k, why in tr["skipped"].items()) + "."]
    return lines


def conv_floor_rows(floors: dict[str, Any]) -> list[list[Any]]:
    """A row per framework and conv: its kernels' ms ("-" for the input gradient that no step computes)."""
    rows: list[list[Any]] = []
    for backend, floor in floors.items():
        for layer in floor["layers"]:
            ms = [layer["s"][k] * 1e3 if k in layer["s"] else ABSENT for k in KERNELS]
            rows.append(
                [
                    backend,
                    layer["name"].removesuffix(".weight"),
                    "x".join(map(str, layer["input"])),
                    layer["out_channels"],
                    *ms,
                ]
            )
    return rows


def _panels(n: int, width: float = 5.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, n), figsize=(width * max(1, n), height), squeeze=False)
    return plt, fig, axes[0]


COLORS = {"torch": "tab:red", "tf": "tab:blue"}


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Learning curves of both backends overlaid, one panel per preset and device (each seed a line):
    accuracy or masked loss per epoch, greedy return per environment steps."""
    panels = list(dict.fromkeys((r["preset"], r["device"]) for r in results["runs"]))
    plt, fig, axes = _panels(len(panels))
    for ax, (preset, device) in zip(axes, panels):
        mine = [r for r in results["runs"] if (r["preset"], r["device"]) == (preset, device)]
        labelled: set[str] = set()
        marker = "." if max(len(r["curve_x"]) for r in mine) < 30 else None  # points only where they stay apart
        for r in mine:
            ax.plot(
                r["curve_x"],
                r["curve_y"],
                color=COLORS.get(r["backend"], "gray"),
                alpha=0.7,
                marker=marker,
                label=None if r["backend"] in labelled else r["backend"],
            )
            labelled.add(r["backend"])
        ax.set_title(f"{preset} ({device})")
        ax.set_xlabel(mine[0].get("curve_xlabel", "epoch"))
        ax.set_ylabel(mine[0].get("curve_label", ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    """Throughput bars per backend and device, one panel per preset (each in its own unit: images/s or
    environment steps/s), plus a panel of the overhead loops if measured."""
    presets = list(dict.fromkeys(r["preset"] for r in results["runs"]))
    ov = results.get("overhead")
    tr = (ov or {}).get("transformer")
    plt, fig, axes = _panels(len(presets) + bool(ov) + bool(tr), width=4.0, height=3.8)
    # per panel: (axes, title, [(tick label, mean, std over seeds, backend or loop name)])
    bars: list[tuple[Any, str, list[tuple[str, float, float, str]]]] = []
    for ax, preset in zip(axes, presets):
        groups = [
            (
                f"{b}\n{d}",
                float(np.mean([r["throughput"] for r in rs])),
                float(np.std([r["throughput"] for r in rs])),
                b,
            )
            for (p, b, d), rs in _groups(results["runs"]).items()
            if p == preset
        ]
        unit = next(r["throughput_unit"] for r in results["runs"] if r["preset"] == preset)
        bars.append((ax, f"{preset}\n({unit}, ± std over seeds)", groups))
    if ov:
        bars.append(
            (
                axes[len(presets)],
                f"overhead: {ov['preset']} step\n(images/s)",
                [(name.replace(" ", "\n", 1), r["images_per_s"], 0.0, name) for name, r in ov["loops"].items()],
            )
        )
    if tr:
        bars.append(
            (
                axes[len(presets) + 1],
                f"overhead: {tr['preset']} step\n(tokens/s)",
                [(name.replace(" ", "\n", 1), r["tokens_per_s"], 0.0, name) for name, r in tr["loops"].items()],
            )
        )
    for ax, title, rows in bars:
        ax.bar(
            range(len(rows)),
            [r[1] for r in rows],
            yerr=[r[2] for r in rows],
            capsize=3,
            color=[
                "tab:red" if "torch" in r[3] else "tab:blue" if "tf" in r[3] or "keras" in r[3] else "gray"
                for r in rows
            ],
        )
        ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        ax.set_title(title, fontsize=9)
        for i, r in enumerate(rows):
            ax.text(i, r[1], f"{r[1]:.0f}", ha="center", va="bottom", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    if ov and ov.get("conv_floor"):
        # over each loop's bar, the images/s its framework's conv kernels alone would allow (the floor)
        ax = axes[len(presets)]
        for i, name in enumerate(ov["loops"]):
            floor_s = ov["conv_floor"][LOOP_FRAMEWORKS[name]]["s_per_step"]
            ax.hlines(
                ov["batch_size"] / floor_s,
                i - 0.4,
                i + 0.4,
                colors="black",
                linestyles="--",
                label="conv kernels alone" if i == 0 else None,
            )
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, curves.png, throughput.png, parity-gaps.png (float32 L4's per-step gaps against the
    rounding envelope, when the parity ran) and report.md into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", validate(results))
    curves = plot_curves(results, out_dir / "curves.png")
    bars = plot_throughput(results, out_dir / "throughput.png")
    plots = {"learning curves": curves.name, "throughput": bars.name}
    paths = {"results": out_dir / "results.json", "report": out_dir / "report.md", "curves": curves, "throughput": bars}
    gaps = plot_gaps(results["parity"], out_dir / "parity-gaps.png")
    if gaps is not None:
        plots["float32 L4: torch-vs-tf gap and rounding envelope per step"] = gaps.name
        paths["parity gaps"] = gaps
    atomic_write_text(out_dir / "report.md", markdown_report(results, plots))
    return paths


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A Markdown account of what changed between two results files: metrics, throughput, parity verdicts."""
    rows = []
    g_old, g_new = _groups(old["runs"]), _groups(new["runs"])
    for key in sorted(set(g_old) | set(g_new)):
        a, b = g_old.get(key), g_new.get(key)
        if a is None or b is None:
            rows.append([*key, (a or b)[0]["metric"], "only in " + ("new" if a is None else "old"), "", "", "", "", ""])
            continue
        va, vb = np.mean([r["value"] for r in a]), np.mean([r["value"] for r in b])
        ta, tb = np.mean([r["throughput"] for r in a]), np.mean([r["throughput"] for r in b])
        rows.append(
            [
                *key,
                b[0]["metric"],
                float(va),
                float(vb),
                float(vb - va),
                float(ta),
                f"{float(tb):.1f} ({(tb / ta - 1) * 100:+.1f}%)",
                b[0]["throughput_unit"],
            ]
        )
    parts = [
        "# Benchmark comparison",
        "",
        f"old: {old['created']}  new: {new['created']}",
        "",
        markdown_table(
            [
                "preset",
                "backend",
                "device",
                "metric",
                "old",
                "new",
                "change",
                "throughput old",
                "throughput new",
                "unit",
            ],
            rows,
        ),
    ]
    verdict_old = {(c["preset"], c["device"], c["level"], c["dtype"], c["name"]): c for c in old["parity"]}
    changes = []
    for c in new["parity"]:
        key = (c["preset"], c["device"], c["level"], c["dtype"], c["name"])
        o = verdict_old.get(key)
        if o is None or o["passed"] != c["passed"]:
            was = "absent" if o is None else ("PASS" if o["passed"] else "FAIL")
            changes.append([*key, was, "PASS" if c["passed"] else "FAIL", c["value"]])
    parts += ["", "## Parity verdicts that changed", ""]
    parts += [
        markdown_table(["preset", "device", "level", "dtype", "check", "old", "new", "measured"], changes)
        if changes
        else "none"
    ]
    same, differ = exact_figures(old, new)
    parts += [
        "",
        "## Figures that are not times",
        "",
        f"{same} identical, {len(differ)} differ (every run's metric, curve and extras per seed, and every "
        "parity check's measured value, bound and verdict; a refactor must leave all of them identical).",
    ]
    if differ:
        parts += ["", markdown_table(["figure", "old", "new"], differ[:50])]
    if old.get("overhead") and new.get("overhead"):
        rows = [[k, old["overhead"]["speedup"].get(k, float("nan")), v] for k, v in new["overhead"]["speedup"].items()]
        # the transformer's ratios, named after its preset (absent from results written before it was measured)
        old_tr, new_tr = old["overhead"].get("transformer") or {}, new["overhead"].get("transformer") or {}
        rows += [
            [f"{new_tr['preset']}: {k}", old_tr.get("speedup", {}).get(k, float("nan")), v]
            for k, v in new_tr.get("speedup", {}).items()
        ]
        parts += ["", "## Overhead speed-ups", "", markdown_table(["ratio", "old", "new"], rows)]
    return "\n".join(parts) + "\n"


# What a run reports that is a time, a rate or a property of the machine rather than of the computation.
TIME_KEYS = frozenset({"wall_s", "throughput", "pretrain_s", "eval_s", "time_to_solve_s", "peak_rss_mb", "versions"})


def exact_figures(old: dict[str, Any], new: dict[str, Any]) -> tuple[int, list[list[Any]]]:
    """Every figure of two results files that is not a time, compared exactly: (how many are identical, the
    ones that differ as [name, old, new] rows). Runs pair by preset, backend, device and seed; parity checks by
    preset, device, level, dtype and name."""

    def flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flat(f"{prefix}.{k}", v, out)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                flat(f"{prefix}[{i}]", v, out)
        else:
            out[prefix] = value

    def figures(results: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in results["runs"]:
            key = f"{r['preset']} {r['backend']} {r['device']} seed {r['seed']}"
            for k, v in r.items():
                if k not in TIME_KEYS:
                    flat(f"{key} {k}", v, out)
        for c in results["parity"]:
            key = f"{c['preset']} {c['device']} {c['level']} {c['dtype']} {c['name']}"
            for k in ("value", "bound", "passed"):
                out[f"{key} {k}"] = c[k]
        return out

    a, b = figures(old), figures(new)
    same, differ = 0, []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        both_nan = isinstance(va, float) and isinstance(vb, float) and np.isnan(va) and np.isnan(vb)
        if va == vb or both_nan:
            same += 1
        else:
            differ.append([key, str(va), str(vb)])
    return same, differ
