"""The benchmark suite: presets x backends x seeds x devices, the parity levels, and the overhead figures.

Four tasks: the classifier (cnn-*), masked image pretraining (masked-*), DQN (dqn-*) and masked-language-model
pretraining of a BERT (bert-mlm-*). Each run is one process (benchmarks/worker.py); parity runs L0-L4 and port
from the task's own parity module and L5 from the benchmark's runs.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualkit.core import registry
from dualkit.core.errors import SpecError
from dualkit.tasks import presets
from dualkit.tasks import registry as task_registry
from dualkit.tasks.mlm_spec import MlmRunSpec
from dualkit.tasks.parity import BACKENDS, Check
from dualkit.tasks.progress import progress_bar

# 2: runs carry their task (and the task's extras: time to solve, margin over random init, ...)
SCHEMA_VERSION = 2
FAST_PRESETS = ["cnn-digits", "masked-digits", "dqn-cartpole", "bert-mlm-tiny"]
# Per-preset overrides of the fast default, to keep it short on 2 CPU cores: the masked runs report the linear
# probe (the L5 metric) and skip the fine-tunes, which take longer than the pretraining. The MLM runs keep their
# downstream fine-tunes whole: capped at 100 steps, the taggers sat where F1 jumps from 0 to most entities (seed
# 0: torch 0.49 vs tf 0.18), a coin toss rather than a margin.
FAST_OVERRIDES = {"masked-digits": ["finetune.fractions=[]"]}


@dataclass
class BenchConfig:
    presets: list[str] = field(default_factory=lambda: list(FAST_PRESETS))
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    overrides: list[str] = field(default_factory=list)  # applied to every preset (e.g. data.root=...)
    preset_overrides: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in FAST_OVERRIDES.items()}
    )
    parity: bool = True
    overhead: bool = True
    overhead_preset: str = "cnn-cifar10"  # its architecture, on synthetic data of its image shape
    # an mlm preset: its transformer's MaskedLM step vs each framework's idiomatic loop, in tokens/s ("" = none)
    overhead_transformer_preset: str = "bert-mlm-tiny"
    overhead_steps: int = 20
    # best of 3 rounds in alternating order: with 2, a swing of one loop (thread pools of the other framework
    # still spinning, a neighbour on the cores) could decide a ratio
    overhead_rounds: int = 3


def fast_config() -> BenchConfig:
    """The default: data that ships with the install (digits, CartPole, the standard library's text): about 16
    minutes on 2 CPU cores (README, "The benchmark"), of which bert-mlm-tiny's six runs (pretraining and two whole
    downstream fine-tunes each) take about 7, its parity levels with the downstream tagger's about 2 and its
    overhead loops about 1. A cnn-cifar10 step takes 0.08-0.22 s, so the CNN's five overhead loops and the
    conv-kernel floors cost 1-2 min."""
    return BenchConfig()


def full_config(data_root: str) -> BenchConfig:
    """The fast presets plus CIFAR-10 (classifier and masked pretraining) from ``data_root``, 5 seeds, and
    the masked presets' fine-tunes too."""
    return BenchConfig(
        presets=[*FAST_PRESETS, "masked-cifar10", "cnn-cifar10"],
        seeds=[0, 1, 2, 3, 4],
        overrides=[f"data.root={json.dumps(data_root)}"],
        preset_overrides={},
    )


def available_devices() -> list[str]:
    devices = ["cpu"]
    if all(registry.is_installed(b) for b in BACKENDS):
        if all(registry.get_backend(b).gpu_available() for b in BACKENDS):
            devices.append("gpu")
    return devices


def _preset_overrides(preset: str, config: BenchConfig) -> list[str]:
    """The preset's own overrides, then the shared ones whose section the preset has (data.root means
    nothing to a DQN preset)."""
    spec = presets.load(preset)
    shared = [o for o in config.overrides if hasattr(spec, o.split("=", 1)[0].split(".", 1)[0])]
    return list(config.preset_overrides.get(preset, [])) + shared


def check_transformer_preset(preset: str) -> None:
    """The transformer overhead times an mlm preset's MaskedLM: refuse any other task before the bench starts."""
    spec = presets.load(preset)
    if not isinstance(spec, MlmRunSpec):  # its BERT, masking and tokenizer are what the loops are built from
        raise SpecError(
            f"overhead_transformer_preset={preset!r} is a {spec.task!r} preset; the transformer overhead times an mlm "
            "preset's MaskedLM step: name one such as bert-mlm-tiny"
        )


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Run one (preset, backend, seed, device) in a fresh process (clean peak-memory figure)."""
    with tempfile.TemporaryDirectory() as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "DUALKIT_SINGLE_BACKEND": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "dualkit.benchmarks.worker", str(job_path), str(out_path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"benchmark run {job} failed:\n{tail}")
        return json.loads(out_path.read_text())


def parity_for(preset: str, overrides: list[str], device: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The preset's task's levels below L5 and its port (both dtypes, sized for the bench); L5 from the
    benchmark's own runs of that preset on that device."""
    spec = presets.load(preset, overrides)
    checks = level_checks(spec, device) + l5_from_runs(spec, runs)
    return [{**c.to_dict(), "preset": preset, "device": device} for c in checks]


def level_checks(spec: Any, device: str) -> list[Check]:
    """The task's levels below L5 and the port, both dtypes (what ``dualkit parity`` runs, sized for the bench)."""
    return task_registry.for_spec(spec).bench_parity(spec, device)


def l5_from_runs(spec: Any, runs: list[dict[str, Any]]) -> list[Check]:
    """L5 of the task from the benchmark's runs (one per backend and seed): no extra training."""
    if not all(any(r["backend"] == b for r in runs) for b in BACKENDS):
        return []
    return task_registry.for_spec(spec).bench_l5(spec, runs)


def environment() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for b in registry.available():
        versions.update(registry.get_backend(b).versions())
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": registry.thread_count(),
        "versions": versions,
    }


class PartTimer:
    """Wall and CPU seconds of each part of the bench (runs and parity per preset, overhead), summed over
    the times a part is entered. CPU time counts this process and the finished run processes: on a
    shared machine it is what the part would take alone (with one framework thread, CPU ~ wall)."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = {}

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            part = self.totals.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            part["wall_s"] += time.perf_counter() - wall
            part["cpu_s"] += self._cpu() - cpu


def run_bench(config: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Everything the report needs, as one JSON-serialisable dict (schema ``SCHEMA_VERSION``)."""
    t0 = time.perf_counter()
    for preset in config.presets:  # fail before any work if a dataset or environment is missing
        spec = presets.load(preset, _preset_overrides(preset, config))
        task_registry.for_spec(spec).check_inputs(spec)
    if config.overhead and config.overhead_transformer_preset:
        check_transformer_preset(config.overhead_transformer_preset)
    jobs = [
        {"preset": p, "overrides": _preset_overrides(p, config), "backend": b, "seed": s, "device": d}
        for p in config.presets
        for d in config.devices
        for b in config.backends
        for s in config.seeds
    ]
    bar = progress_bar(len(jobs), "bench runs", enabled=progress)
    runs = []
    parts = PartTimer()
    for job in jobs:
        bar.set_postfix_str(f"{job['preset']} {job['backend']} seed {job['seed']} {job['device']}")
        with parts(f"runs {job['preset']} {job['device']}"):
            runs.append(run_one(job))  # a fresh process: its start-up (framework import) is part of the cost
        bar.update(1)
    bar.close()
    checks: list[dict[str, Any]] = []
    if config.parity and set(BACKENDS) <= set(config.backends):
        for preset in config.presets:
            for device in config.devices:
                with parts(f"parity {preset} {device}"):
                    mine = [r for r in runs if r["preset"] == preset and r["device"] == device]
                    checks += parity_for(preset, _preset_overrides(preset, config), device, mine)
    overhead = None
    if config.overhead:
        from dualkit.benchmarks.overhead import run_overhead, run_transformer_overhead

        with parts("overhead"):
            spec = presets.load(config.overhead_preset)
            shape = {"cifar10": (32, 32, 3), "idx": (28, 28, 1), "digits": (8, 8, 1)}[spec.data.name]
            overhead = {
                "preset": config.overhead_preset,
                **run_overhead(spec, shape, steps=config.overhead_steps, rounds=config.overhead_rounds),
            }
        if config.overhead_transformer_preset:
            with parts("overhead transformer"):
                tr_spec = presets.load(config.overhead_transformer_preset)
                overhead["transformer"] = {
                    "preset": config.overhead_transformer_preset,
                    **run_transformer_overhead(tr_spec, steps=config.overhead_steps, rounds=config.overhead_rounds),
                }
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.__dict__,
        "environment": environment(),
        "runs": runs,
        "parity": checks,
        "overhead": overhead,
        "parts": parts.totals,
        "wall_s": time.perf_counter() - t0,
    }
