"""Benchmark reports: results JSON, a Markdown report with aligned tables, PNG plots, and comparisons."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite import SCHEMA_VERSION
from core.report import markdown_table
from core.runs import atomic_write_text, write_json

REQUIRED_KEYS = ("schema_version", "created", "config", "environment", "runs", "parity", "overhead", "wall_s")
RUN_KEYS = ("preset", "backend", "seed", "device", "metric", "value", "curve_x", "curve_y", "throughput",
            "throughput_unit", "wall_s", "peak_rss_mb")
# Targets from the benchmark issue: toolkit step vs bare loops, and CNN FLOP/s vs the matmul rate.
TARGETS = {"torch toolkit / bare loop": 1.0, "tf toolkit / bare tf.function loop": 1.0, "tf toolkit / keras fit": 1.5}
MATMUL_FRACTION_TARGET = 0.5


def validate(results: dict[str, Any]) -> dict[str, Any]:
    """Check a results dict against the schema this code writes; a clear error names what is wrong."""
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ValueError(f"not a dualkit benchmark results file: missing {', '.join(missing)}")
    if results["schema_version"] > SCHEMA_VERSION:
        raise ValueError(f"results schema {results['schema_version']} is newer than this dualkit reads ({SCHEMA_VERSION})")
    for i, run in enumerate(results["runs"]):
        absent = [k for k in RUN_KEYS if k not in run]
        if absent:
            raise ValueError(f"run {i} lacks {', '.join(absent)}")
    return results


def load_results(path: Path) -> dict[str, Any]:
    try:
        return validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise ValueError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None


def _groups(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[(r["preset"], r["backend"], r["device"])].append(r)
    return out


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for (preset, backend, device), runs in _groups(results["runs"]).items():
        rows.append([
            preset, backend, device, len(runs), runs[0]["metric"], mean_std([r["value"] for r in runs]),
            float(np.mean([r["wall_s"] for r in runs])),
            f"{np.mean([r['throughput'] for r in runs]):.0f} {runs[0]['throughput_unit']}",
            float(max(r["peak_rss_mb"] for r in runs)),
        ])
    return rows


def markdown_report(results: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    env = results["environment"]
    lines = [
        "# dualkit benchmark report",
        "",
        f"Created {results['created']} in {results['wall_s']:.0f} s. Python {env['python']} on {env['machine']}, "
        f"{env['cpu_count']} CPUs, {env['threads']} threads; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
        "## Runs (mean ± std over seeds)",
        "",
        markdown_table(["preset", "backend", "device", "seeds", "metric", "value", "wall s", "throughput", "peak RSS MB"],
                       summary_rows(results)),
    ]
    if results["parity"]:
        rows = [[c["preset"], c["device"], c["level"], c["dtype"], c["name"], c["value"], c["bound"],
                 "PASS" if c["passed"] else "FAIL"] for c in results["parity"]]
        failed = sum(not c["passed"] for c in results["parity"])
        lines += ["", f"## Parity ({len(rows) - failed} passed, {failed} failed)", "",
                  markdown_table(["preset", "device", "level", "dtype", "check", "measured", "bound", "verdict"], rows)]
    ov = results.get("overhead")
    if ov:
        rate = ov["matmul"]["flops_per_s"]
        rows = [[name, r["s_per_step"] * 1e3, r["images_per_s"], r["flops_per_s"] / 1e9, r["fraction_of_matmul"]]
                for name, r in ov["loops"].items()]
        lines += ["", f"## Overhead: {ov['preset']} architecture, batch {ov['batch_size']}, synthetic "
                  f"{'x'.join(map(str, ov['image_shape']))} images, {ov['steps']} timed steps", "",
                  f"Measured fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({ov['matmul']['n']}x{ov['matmul']['n']}).", "",
                  markdown_table(["loop", "ms/step", "images/s", "GFLOP/s", "fraction of matmul"], rows), "",
                  markdown_table(["speed-up (toolkit vs loop)", "measured", "target", "met"],
                                 [[k, v, TARGETS[k], v >= TARGETS[k]] for k, v in ov["speedup"].items()])]
        best = max((r["fraction_of_matmul"] for n, r in ov["loops"].items() if n.startswith("toolkit")), default=0.0)
        lines += ["", f"Best toolkit backend reaches {best:.0%} of the matmul rate "
                  f"(target {MATMUL_FRACTION_TARGET:.0%}: {'met' if best >= MATMUL_FRACTION_TARGET else 'not met'})."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Learning curves of both backends overlaid, one panel per preset and device (each seed a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["preset"], r["device"]) for r in results["runs"]})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.6), squeeze=False)
    colors = {"torch": "tab:red", "tf": "tab:blue"}
    for ax, (preset, device) in zip(axes[0], panels):
        for r in results["runs"]:
            if (r["preset"], r["device"]) != (preset, device):
                continue
            ax.plot(r["curve_x"], r["curve_y"], color=colors.get(r["backend"], "gray"), alpha=0.7,
                    label=r["backend"] if r["seed"] == min(x["seed"] for x in results["runs"]) else None)
        ax.set_title(f"{preset} ({device})")
        ax.set_xlabel("epoch")
        label = next(r.get("curve_label", "") for r in results["runs"] if r["preset"] == preset)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    """Throughput bars per preset, backend and device (runs), plus the overhead loops if measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{p}\n{b} {d}", float(np.mean([r["throughput"] for r in rs])), rs[0]["throughput_unit"])
            for (p, b, d), rs in _groups(results["runs"]).items()]
    ov = results.get("overhead")
    if ov:
        rows += [(f"overhead\n{name}", r["images_per_s"], "images/s") for name, r in ov["loops"].items()]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 3.8))
    ax.bar(range(len(rows)), [r[1] for r in rows], color=["tab:red" if "torch" in r[0] else "tab:blue" for r in rows])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_ylabel("throughput (" + ", ".join(sorted({r[2] for r in rows})) + ")")
    for i, r in enumerate(rows):
        ax.text(i, r[1], f"{r[1]:.0f}", ha="center", va="bottom", fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, curves.png, throughput.png and report.md into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", validate(results))
    curves = plot_curves(results, out_dir / "curves.png")
    bars = plot_throughput(results, out_dir / "throughput.png")
    report = markdown_report(results, {"learning curves": curves.name, "throughput": bars.name})
    atomic_write_text(out_dir / "report.md", report)
    return {"results": out_dir / "results.json", "report": out_dir / "report.md", "curves": curves, "throughput": bars}


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A Markdown account of what changed between two results files: metrics, throughput, parity verdicts."""
    rows = []
    g_old, g_new = _groups(old["runs"]), _groups(new["runs"])
    for key in sorted(set(g_old) | set(g_new)):
        a, b = g_old.get(key), g_new.get(key)
        if a is None or b is None:
            rows.append([*key, "only in " + ("new" if a is None else "old"), "", "", "", ""])
            continue
        va, vb = np.mean([r["value"] for r in a]), np.mean([r["value"] for r in b])
        ta, tb = np.mean([r["throughput"] for r in a]), np.mean([r["throughput"] for r in b])
        rows.append([*key, float(va), float(vb), float(vb - va), float(ta), f"{float(tb):.1f} ({(tb / ta - 1) * 100:+.1f}%)"])
    parts = ["# Benchmark comparison", "", f"old: {old['created']}  new: {new['created']}", "",
             markdown_table(["preset", "backend", "device", "metric old", "metric new", "change", "throughput old",
                             "throughput new"], rows)]
    verdict_old = {(c["preset"], c["device"], c["level"], c["dtype"], c["name"]): c for c in old["parity"]}
    changes = []
    for c in new["parity"]:
        key = (c["preset"], c["device"], c["level"], c["dtype"], c["name"])
        o = verdict_old.get(key)
        if o is None or o["passed"] != c["passed"]:
            was = "absent" if o is None else ("PASS" if o["passed"] else "FAIL")
            changes.append([*key, was, "PASS" if c["passed"] else "FAIL", c["value"]])
    parts += ["", "## Parity verdicts that changed", ""]
    parts += [markdown_table(["preset", "device", "level", "dtype", "check", "old", "new", "measured"], changes)
              if changes else "none"]
    if old.get("overhead") and new.get("overhead"):
        rows = [[k, old["overhead"]["speedup"].get(k, float("nan")), v] for k, v in new["overhead"]["speedup"].items()]
        parts += ["", "## Overhead speed-ups", "", markdown_table(["ratio", "old", "new"], rows)]
    return "\n".join(parts) + "\n"

