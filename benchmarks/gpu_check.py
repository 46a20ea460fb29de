"""The prepared GPU check (issue 19): golden-file parity, device parity and training-step throughput of every task
on a machine that has PyTorch and no TensorFlow, Keras or Gymnasium, written as one JSON + Markdown report.

Two steps, the first where both frameworks are installed (CPU), the second on the GPU machine:

    python -m dualkit.benchmarks.gpu_check --record                    # golden files into bench-results/golden
    bash benchmarks/gpu_check.sh bench-results/golden OUT              # there: the check, report in OUT

The check needs only PyTorch (>= MIN_TORCH, any version: exactness is asked only of the recording's own CPU
environment), numpy, safetensors and tqdm, and the recorded folder, which travels with the tree (a few MiB). For
every recorded preset it checks torch on the GPU (TF32 off, determinism on: core.registry) against both backends'
CPU recordings and against torch on the same machine's CPU (tasks/golden_files.py), then times each preset's
training steps (Task.step_throughput). It stops starting new parts once ``--budget-s`` is spent, so that one run
stays within its share of a lease; what it skipped is in the report.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dualkit.core.errors import DualkitError
from dualkit.core.report import markdown_table
from dualkit.core.runs import atomic_write_text, write_json

SCHEMA = "dualkit-gpu-check/1"
DEFAULT_GOLDEN = Path("bench-results/golden")
# recorded by --record (data that ships: digits, CartPole, the standard library's text and source)
GOLDEN_PRESETS = ("cnn-digits", "masked-digits", "dqn-cartpole", "bert-mlm-tiny", "bert-tag-tiny")
MIN_TORCH = (2, 2)  # setup.cfg's torch extra
NEEDED = ("numpy", "safetensors", "tqdm", "torch")  # what the check imports; nothing else is needed there
DEFAULT_BUDGET_S = 360.0  # no new part after 6 minutes: with the part under way a run stays near 8 minutes at most
THROUGHPUT_SECONDS = 2.0  # per figure, after a warm-up
REPORT_JSON, REPORT_MD = "gpu-check.json", "gpu-check.md"
NOT_VERIFIED = (
    "TensorFlow on GPU: the GPU machine has no TensorFlow; the tf side is its CPU recording.",
    "L5 (outcomes over seeds), port and export levels: no golden form (they train end to end or write artifacts).",
    "DQN's time-limit check (dqn_parity.level4_truncation): a property of the shared Gymnasium driver, CPU only.",
)


def torch_version() -> str:
    """PyTorch's version, read without importing it (core.registry sets the environment first), refused in one line
    where torch is missing or older than MIN_TORCH."""
    if importlib.util.find_spec("torch") is None:
        raise DualkitError("PyTorch is not installed; the GPU check runs torch (pip install 'dualkit[torch]')")
    try:
        text = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # a torch on the path without its metadata
        import torch

        text = torch.__version__
    try:
        major_minor = tuple(int(p) for p in text.split("+")[0].split(".")[:2])
    except ValueError:
        raise DualkitError(f"cannot read PyTorch's version {text!r}; the GPU check needs torch >= 2.2") from None
    if major_minor < MIN_TORCH:
        raise DualkitError(
            f"PyTorch {text} is older than the GPU check supports (>= {'.'.join(map(str, MIN_TORCH))}); "
            "use a newer torch"
        )
    return text


def preflight(device: str) -> dict[str, Any]:
    """What the check runs on; refuses a missing package, an old torch or (``gpu``) a torch without CUDA."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise DualkitError(f"the GPU check needs {', '.join(missing)}, which this Python lacks; install them")
    version = torch_version()
    from dualkit.core import registry

    module = registry.get_backend("torch", "cpu")  # threads, determinism, TF32 off (core.registry)
    import numpy
    import safetensors
    import torch

    if device == "gpu" and not torch.cuda.is_available():
        raise DualkitError(
            f"PyTorch {version} sees no CUDA GPU; run on the GPU machine, or --device cpu to try the check"
        )
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "devices": module.devices(),
        "threads": registry.thread_count(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "gymnasium": importlib.util.find_spec("gymnasium") is not None,
        "tensorflow": importlib.util.find_spec("tensorflow") is not None,
    }
    return env


# -- recording (CPU, both backends) ---------------------------------------------------------------------------------
def record_all(
    golden: Path,
    presets: Sequence[str] = GOLDEN_PRESETS,
    levels: list[str] | None = None,
    dtypes: Sequence[str] = ("float32", "float64"),
    l4_steps: int | None = None,
) -> list[Any]:
    """Record each preset's golden levels (``levels``: those of them; default all) into ``golden/<preset>``."""
    from dualkit.tasks import golden_files
    from dualkit.tasks import presets as preset_files
    from dualkit.tasks import registry as tasks

    out = []
    for name in presets:
        spec = preset_files.load(name)
        task = tasks.for_spec(spec)
        mine = [lvl for lvl in task.golden_levels if levels is None or lvl in levels]
        out.append(golden_files.record(task, spec, name, mine, list(dtypes), golden / name, l4_steps))
    return out


# -- the check --------------------------------------------------------------------------------------------------
def recorded_presets(golden: Path) -> list[Path]:
    folders = sorted(p for p in Path(golden).iterdir() if (p / "manifest.json").is_file()) if golden.is_dir() else []
    if not folders:
        raise DualkitError(
            f"{golden} holds no golden files (no <preset>/manifest.json); record them on CPU first: "
            f"python -m dualkit.benchmarks.gpu_check --record --golden {golden}"
        )
    return folders


def check_golden(folder: Path, device: str) -> dict[str, Any]:
    """One recorded preset: torch on ``device`` against the recording (and, on a GPU, against torch on this CPU)."""
    from dualkit.core.specs import from_dict
    from dualkit.tasks import golden_files
    from dualkit.tasks import registry as tasks

    t0 = time.perf_counter()
    golden = golden_files.load(folder)
    task = tasks.get(golden.manifest["task"])
    spec = from_dict(golden.manifest["spec"])
    checks = golden_files.check(task, spec, golden, "torch", device)
    return {
        "preset": golden.preset,
        "path": str(folder),
        "recorded_at": golden.manifest["recorded_at"],
        "recorded_with": golden.manifest["environment"],
        "cases": len(golden.manifest["cases"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "checks": [c.to_dict() for c in checks],
    }


def throughput(device: str, seconds: float, presets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The training-step figures (Task.step_throughput) of ``presets`` (default: every preset) in torch on
    ``device``; a preset that cannot be measured here gets a row saying why."""
    from dualkit.tasks import presets as preset_files
    from dualkit.tasks import registry as tasks

    rows = []
    for name in presets if presets is not None else preset_files.names():
        try:
            spec = preset_files.load(name)
            task = tasks.for_spec(spec)
            figures = task.step_throughput(spec, "torch", device, seconds)
        except DualkitError as exc:  # e.g. a preset whose data must be named: nothing to measure without it
            rows.append({"preset": name, "what": "not measured", "value": None, "unit": "", "detail": str(exc)})
            continue
        except Exception as exc:  # one preset that fails here is reported; the others still run
            rows.append({"preset": name, "what": "error", "value": None, "unit": "", "detail": _one_line(exc)})
            continue
        rows += [{"preset": name, "task": task.name, **r} for r in figures]
    return rows


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def run_check(
    golden: Path, device: str, budget_s: float, seconds: float, throughput_presets: Sequence[str] | None = None
) -> dict[str, Any]:
    """Golden-file and device parity of every recorded preset, then the throughput of ``throughput_presets``
    (default: every preset), within ``budget_s``."""
    t0 = time.perf_counter()
    env = preflight(device)
    folders = recorded_presets(golden)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "golden_dir": str(golden),
        "environment": env,
        "budget_s": budget_s,
        "golden": [],
        "throughput": [],
        "skipped": [],
        "not_verified": list(NOT_VERIFIED),
    }
    for folder in folders:
        if time.perf_counter() - t0 > budget_s:
            result["skipped"].append(f"golden {folder.name}: time budget spent")
            continue
        print(f"golden-file and device parity: {folder.name} ...", flush=True)
        try:
            result["golden"].append(check_golden(folder, device))
        except DualkitError as exc:
            result["golden"].append({"preset": folder.name, "path": str(folder), "error": str(exc), "checks": []})
    if time.perf_counter() - t0 > budget_s:
        result["skipped"].append("throughput: time budget spent")
    else:
        print("throughput ...", flush=True)
        result["throughput"] = throughput(device, seconds, throughput_presets)
    checks = [c for g in result["golden"] for c in g["checks"]]
    failed = [c for c in checks if not c["passed"]]
    errors = [g["preset"] for g in result["golden"] if g.get("error")]
    result["verdict"] = {
        "checks": len(checks),
        "failed": len(failed),
        "errors": errors,
        "ok": bool(checks) and not failed and not errors and not result["skipped"],
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


# -- the report -------------------------------------------------------------------------------------------------
def _kind(check: dict[str, Any]) -> str:
    return "device parity" if check["name"].endswith("cpu here") else "golden files"


def summary_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Per preset, level and dtype: golden-file checks and device-parity checks passed, and the worst value/bound."""
    rows = []
    for g in result["golden"]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c in g["checks"]:
            groups.setdefault((c["level"], c["dtype"]), []).append(c)
        for (level, dtype), cs in sorted(groups.items()):
            cells = []
            for kind in ("golden files", "device parity"):
                mine = [c for c in cs if _kind(c) == kind]
                cells.append(f"{sum(c['passed'] for c in mine)}/{len(mine)}" if mine else "-")
            ratios = [c["value"] / c["bound"] for c in cs if c["bound"] > 0 and c["value"] == c["value"]]
            rows.append([g["preset"], level, dtype, *cells, f"{max(ratios):.2g}" if ratios else "-"])
    return rows


def markdown(result: dict[str, Any]) -> str:
    env, v = result["environment"], result["verdict"]
    lines = [
        f"# dualkit GPU check ({result['started']})",
        "",
        f"**Verdict: {'PASS' if v['ok'] else 'FAIL'}**: {v['checks'] - v['failed']} of {v['checks']} checks passed"
        f" on {result['device']}, {result['wall_s']} s"
        + (f"; skipped: {'; '.join(result['skipped'])}" if result["skipped"] else "")
        + (f"; not checked (error): {', '.join(v['errors'])}" if v["errors"] else ""),
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}) on {', '.join(env['devices'])}; "
        f"Python {env['python']}, numpy {env['numpy']}, safetensors {env['safetensors']}; deterministic "
        f"{env['deterministic']}, TF32 matmul {env['matmul_tf32']} / cuDNN {env['cudnn_tf32']}; CPU threads "
        f"{env['threads']}; TensorFlow here: {env['tensorflow']}, Gymnasium here: {env['gymnasium']}.",
        "",
        "## Parity: golden files (torch on this device vs torch and tf recorded on CPU) and device parity (vs torch "
        "on this machine's CPU)",
        "",
        markdown_table(
            ["preset", "level", "dtype", "golden files", "device parity", "worst value/bound"], summary_rows(result)
        ),
        "",
    ]
    for g in result["golden"]:
        rec = g.get("recorded_with", {})
        with_ = "; ".join(f"{b}: {', '.join(f'{k} {x}' for k, x in e['versions'].items())}" for b, e in rec.items())
        lines.append(
            f"- {g['preset']}: {g.get('cases', 0)} cases from {g['path']}"
            + (f", recorded {g['recorded_at']} ({with_})" if rec else "")
            + (f", {g['seconds']} s" if "seconds" in g else "")
            + (f"; ERROR: {g['error']}" if g.get("error") else "")
        )
    failed = [(g["preset"], c) for g in result["golden"] for c in g["checks"] if not c["passed"]]
    if failed:
        lines += ["", "## Failed checks", ""]
        lines.append(
            markdown_table(
                ["preset", "level", "dtype", "check", "measured", "bound", "detail"],
                [[p, c["level"], c["dtype"], c["name"], c["value"], c["bound"], c["detail"]] for p, c in failed],
            )
        )
    if result["throughput"]:
        lines += ["", f"## Training-step throughput, torch on {result['device']}", ""]
        lines.append(
            markdown_table(
                ["preset", "what", "value", "unit", "detail"],
                [[r["preset"], r["what"], r["value"], r["unit"], r["detail"]] for r in result["throughput"]],
            )
        )
    lines += ["", "## Not verified here", ""] + [f"- {n}" for n in result["not_verified"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_JSON, result)
    atomic_write_text(out / REPORT_MD, markdown(result))
    return out / REPORT_JSON, out / REPORT_MD


# -- command line ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dualkit.benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--golden", default=str(DEFAULT_GOLDEN), help=f"golden-file folder (default {DEFAULT_GOLDEN})")
    p.add_argument("--record", action="store_true", help="record the golden files (CPU, both backends) and stop")
    p.add_argument("--presets", help=f"with --record: comma-separated presets (default {','.join(GOLDEN_PRESETS)})")
    p.add_argument("--levels", help="with --record: comma-separated golden levels (default all: L0..L4)")
    p.add_argument("--dtype", default="both", choices=("float32", "float64", "both"), help="with --record")
    p.add_argument("--l4-steps", type=int, help="with --record: L4's steps (DQN: updates) instead of each task's own")
    p.add_argument("--out", help="report folder (default $OUT, else bench-results/gpu-check-<time>)")
    p.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help="gpu (default); cpu tries the check")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="start no new part after this many s")
    p.add_argument("--seconds", type=float, default=THROUGHPUT_SECONDS, help="timed seconds per throughput figure")
    p.add_argument("--throughput", default="all", help="presets whose throughput is measured: all, none or a list")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        golden = Path(args.golden)
        if args.record:
            dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
            presets = args.presets.split(",") if args.presets else GOLDEN_PRESETS
            levels = args.levels.split(",") if args.levels else None
            recs = record_all(golden, presets, levels, dtypes, args.l4_steps)
            bad = [c for r in recs for c in r.checks if not c.passed]
            for r in recs:
                print(f"wrote {r.path}: {r.cases} cases, {r.nbytes / 2**20:.1f} MiB, {r.seconds:.0f} s")
            for c in bad:
                print(f"recorded backends disagree: {c.level} {c.dtype} {c.name}: {c.value:.3g} > {c.bound:.3g}")
            total = sum(r.nbytes for r in recs)
            print(f"{len(recs)} presets, {total / 2**20:.1f} MiB; torch vs tf on CPU: {len(bad)} checks failed")
            return 1 if bad else 0
        out = Path(args.out or os.environ.get("OUT") or f"bench-results/gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
        which = {"all": None, "none": []}.get(args.throughput, args.throughput.split(","))
        result = run_check(golden, args.device, args.budget_s, args.seconds, which)
        json_path, md_path = write_report(result, out)
        print(md_path.read_text())
        print(f"wrote {json_path} and {md_path}")
        return 0 if result["verdict"]["ok"] else 1
    except DualkitError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
