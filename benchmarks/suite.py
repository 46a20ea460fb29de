"""The benchmark suite: presets x backends x seeds x devices, the parity levels, and the overhead figures."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import registry
from core.datasets import load_dataset
from tasks import parity, presets
from tasks.progress import progress_bar

SCHEMA_VERSION = 1


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: ["cnn-digits"])
    backends: list[str] = field(default_factory=lambda: list(parity.BACKENDS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    overrides: list[str] = field(default_factory=list)  # applied to every preset (e.g. data.root=...)
    parity: bool = True
    overhead: bool = True
    overhead_preset: str = "cnn-cifar10"  # its architecture, on synthetic data of its image shape
    overhead_steps: int = 20


def fast_config() -> BenchConfig:
    """The default: data that ships with the install, finishes in a few minutes on 2 CPU cores."""
    return BenchConfig()


def full_config(data_root: str) -> BenchConfig:
    return BenchConfig(
        presets=["cnn-digits", "cnn-cifar10"], seeds=[0, 1, 2, 3, 4], overrides=[f"data.root={json.dumps(data_root)}"]
    )


def available_devices() -> list[str]:
    devices = ["cpu"]
    if all(registry.is_installed(b) for b in parity.BACKENDS):
        if all(registry.get_backend(b).gpu_available() for b in parity.BACKENDS):
            devices.append("gpu")
    return devices


def _preset_overrides(preset: str, overrides: list[str]) -> list[str]:
    """Only the overrides whose section the preset has (data.root means nothing to a DQN preset)."""
    spec = presets.load(preset)
    return [o for o in overrides if hasattr(spec, o.split(".", 1)[0])]


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run one (preset, backend, seed, device) in a fresh process (clean peak-memory figure)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "DUALKIT_SINGLE_BACKEND": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", str(job_path), str(out_path)],
            capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"benchmark run {job} failed:\n{tail}")
        return json.loads(out_path.read_text())


def parity_for(preset: str, overrides: list[str], device: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """L1-L4 (float32 and float64) and port for a classifier preset; L5 from the benchmark's own runs."""
    spec = presets.load(preset, overrides)
    checks: list[parity.Check] = []
    if spec.task == "classify":
        for dtype in ("float32", "float64"):
            checks += parity.level1(dtype, device) + parity.level2(dtype, device) + parity.level3(dtype, device)
            checks += parity.level4(spec, dtype, device)
        checks += parity.port_checks(spec, device)
        checks += l5_from_runs(spec, runs)
    return [{**c.to_dict(), "preset": preset, "device": device} for c in checks]


def l5_from_runs(spec, runs: list[dict[str, Any]]) -> list[parity.Check]:
    acc = {b: [r["value"] for r in runs if r["backend"] == b] for b in parity.BACKENDS}
    if not all(acc.values()):
        return []
    floor = parity.L5_MIN_ACCURACY if spec.data.name == "digits" else -np.inf
    out = [
        parity.Check("L5", f"{b} mean test accuracy", float(np.mean(v)), float(floor), bool(np.mean(v) >= floor),
                     f"{len(v)} seeds (bound is a floor)")
        for b, v in acc.items()
    ]
    gap = abs(np.mean(acc["torch"]) - np.mean(acc["tf"])) * 100
    out.append(parity.Check("L5", "mean accuracy gap (points)", float(gap), parity.L5_MAX_GAP_POINTS,
                            bool(gap <= parity.L5_MAX_GAP_POINTS)))
    return out


def environment() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for b in registry.available():
        versions.update(registry.get_backend(b).versions())
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": int(os.environ.get("DUALKIT_THREADS", registry.DEFAULT_THREADS)),
        "versions": versions,
    }


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Everything the report needs, as one JSON-serialisable dict (schema ``SCHEMA_VERSION``)."""
    t0 = time.perf_counter()
    for preset in config.presets:  # fail before any work if a dataset is missing
        spec = presets.load(preset, _preset_overrides(preset, config.overrides))
        if spec.task == "classify":
            load_dataset(spec.data)
    jobs = [
        {"preset": p, "overrides": _preset_overrides(p, config.overrides), "backend": b, "seed": s, "device": d}
        for p in config.presets for d in config.devices for b in config.backends for s in config.seeds
    ]
    bar = progress_bar(len(jobs), "bench runs", enabled=progress)
    runs = []
    for job in jobs:
        bar.set_postfix_str(f"{job['preset']} {job['backend']} seed {job['seed']} {job['device']}")
        runs.append(run_one(job))
        bar.update(1)
    bar.close()
    checks: list[dict[str, Any]] = []
    if config.parity and set(parity.BACKENDS) <= set(config.backends):
        for preset in config.presets:
            for device in config.devices:
                mine = [r for r in runs if r["preset"] == preset and r["device"] == device]
                checks += parity_for(preset, _preset_overrides(preset, config.overrides), device, mine)
    overhead = None
    if config.overhead:
        from benchmarks.overhead import run_overhead

        spec = presets.load(config.overhead_preset)
        shape = {"cifar10": (32, 32, 3), "idx": (28, 28, 1), "digits": (8, 8, 1)}[spec.data.name]
        overhead = {"preset": config.overhead_preset, **run_overhead(spec, shape, steps=config.overhead_steps)}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.__dict__,
        "environment": environment(),
        "runs": runs,
        "parity": checks,
        "overhead": overhead,
        "wall_s": time.perf_counter() - t0,
    }
