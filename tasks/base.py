"""The task protocol: what every task (classifier, masked pretraining, DQN, ...) implements.

The command line (dualkit/cli.py), the benchmark suite, its worker and its report reach a task only through
this interface, found by the spec's ``task`` in tasks/registry.py; none of them branches on a task's name.
A task subclasses :class:`Task`, sets the class attributes, implements the methods it supports (the
defaults refuse with a clear error), and is registered with one line in tasks/registry.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualkit.core import distributed
from dualkit.core.errors import DualkitError


@dataclass(frozen=True)
class EvalOptions:
    """What ``dualkit eval`` may ask of a task; each task reads the options that apply to it."""

    split: str = "test"  # classifier: which split
    episodes: int | None = None  # DQN: greedy episodes (None = the spec's)
    seed: int | None = None  # DQN: seed of the first episode (None = the spec's)
    finetune: bool = True  # masked pretraining: fine-tunes after the linear probe
    progress: bool = True


@dataclass
class PortReport:
    """What ``dualkit port`` prints: one table row (column -> value), the artifact written, and whether the
    port reproduced the source's predictions (the exit code)."""

    row: dict[str, Any]
    artifact: Path
    ok: bool


@dataclass
class ExportReport:
    """What ``dualkit export`` prints: the verification table (one row per compared pair of outputs), notes
    (the artifact's input and output, export times, comparisons left out), the artifact and its verification
    record (JSON in the run folder), and whether every row passed (the exit code)."""

    headers: list[str]
    rows: list[list[Any]]
    artifact: Path
    record: Path
    notes: list[str]
    ok: bool


# ``dualkit port`` artifacts: each framework's native file
NATIVE_SUFFIX: dict[str, str] = {"torch": ".pt", "tf": ".keras"}


class Task:
    """One task. Class attributes describe it; methods run it."""

    name: str = ""  # the spec's ``task``
    title: str = ""  # section title in the benchmark report
    spec_class: type = object
    pretraining: bool = False  # ``dualkit pretrain PRESET`` runs it (besides ``dualkit train``)
    metric: str = ""  # what a benchmark run reports, e.g. "test_accuracy"
    metric_label: str = ""  # how the report names it
    metric_decimals: int = 4
    throughput_unit: str = "images/s"
    levels: tuple[str, ...] = ("L0", "L1", "L2", "L3", "L4", "L5", "port", "export")  # what ``dualkit parity`` knows
    native_suffix: dict[str, str] = NATIVE_SUFFIX

    # ``--workers N``: a task trains data-parallel when its training goes through the run loop's epochs
    # (tasks/loop.run_epochs cuts each global batch into the workers' shards) and its model objects train through
    # backends' ModelState (train_step/_step averages the gradients through the framework's engine)
    data_parallel: bool = False
    single_process_reason: str = "its training does not go through the run loop's epochs of batches (tasks/loop.py)"

    # -- running ---------------------------------------------------------------------------------------
    def check_workers(self, workers: int, spec: Any = None) -> None:
        """Refuse ``--workers N`` (N > 1) for a task that trains in one process, saying why, and (given the
        ``spec``) a global batch that does not cut into N equal shards: before any worker starts."""
        if workers > 1 and not self.data_parallel:
            raise DualkitError(
                f"--workers {workers}: {self.name!r} runs train in one process ({self.single_process_reason}); "
                "drop --workers"
            )
        if spec is not None:
            distributed.check_batch_size(spec.train.batch_size, workers)

    def parity_run(self, spec: Any, backend: str, device: str) -> tuple[list[float], dict[str, Any]]:
        """One training run of ``spec`` without a run folder or evaluation, on the workers this process is one of
        (or alone): its per-step losses and final canonical weights. The distribution parity level
        (tasks/dist_parity.py) runs it on N workers, on one, and on one with ghost replicas (tasks/loop.py)."""
        raise DualkitError(f"{self.name!r} tasks have no distribution parity level")

    def train(
        self,
        spec: Any,
        backend: str,
        *,
        run_dir: Path | None,
        device: str,
        progress: bool,
        overwrite: bool,
        init_from: Path | None = None,
    ) -> Any:
        raise NotImplementedError

    def resume(self, run_dir: Path, backend: str | None, *, overrides: list[str], device: str, progress: bool) -> Any:
        raise NotImplementedError

    def show(self, result: Any) -> None:
        """Print a finished (or resumed) run's tables on stdout."""
        raise NotImplementedError

    def evaluate(self, run_dir: Path, backend: str | None, device: str, options: EvalOptions) -> None:
        """Evaluate a run folder's model in ``backend`` and print the result."""
        raise NotImplementedError

    def port(self, run_dir: Path, to: str, out: Path, device: str) -> PortReport:
        raise DualkitError(f"{run_dir} is a {self.name!r} run, which `dualkit port` does not carry")

    def export(
        self, run_dir: Path, fmt: str, backend: str | None, out: Path | None, device: str, overwrite: bool = False
    ) -> ExportReport:
        """``dualkit export``: the run's inference model as ``fmt`` (tasks/export.py's FORMATS) written by
        ``backend`` (None: the run's own where it writes the format) to ``out`` (None: in RUN/exports/),
        verified in its runtime against both backends."""
        raise DualkitError(f"{run_dir} is a {self.name!r} run, which `dualkit export` does not export")

    def check_inputs(self, spec: Any) -> None:
        """Fail fast, before any work, if the spec's data or environment is missing."""

    # -- parity ----------------------------------------------------------------------------------------
    def parity(
        self, spec: Any, levels: list[str], dtypes: list[str], device: str, seeds: int, l4_steps: int | None = None
    ) -> list[Any]:
        """``dualkit parity``: the requested levels (a subset of :attr:`levels`) as parity Checks; ``l4_steps``:
        at least this many L4 training steps (DQN: updates) instead of the task's own."""
        raise NotImplementedError

    # -- golden files (tasks/golden.py, tasks/golden_files.py) ---------------------------------------------
    golden_levels: tuple[str, ...] = ()  # levels with a golden form: ``dualkit parity --record/--against``

    def golden_cases(self, spec: Any, levels: list[str], dtype: str, l4_steps: int | None = None) -> list[Any]:
        """The parity levels of ``levels`` (a subset of :attr:`golden_levels`) in ``dtype`` as golden cases: each
        level's computation for one backend from inputs built once, recorded on CPU by both backends and checked
        later in one backend on any device. Building the list reads no data: only a case's ``inputs()`` does."""
        raise DualkitError(f"{self.name!r} tasks have no golden-file parity")

    def step_throughput(self, spec: Any, backend: str, device: str, seconds: float) -> list[dict[str, Any]]:
        """Training-step throughput of the preset's model on ``device``, on synthetic inputs of its shape (no data or
        environment needed): rows of ``{"what", "value", "unit", "detail"}``, timed for about ``seconds`` each after
        a warm-up. Empty where the task measures none."""
        return []

    def bench_parity(self, spec: Any, device: str) -> list[Any]:
        """The benchmark's parity: every level below L5 and the port, both dtypes, sized for the bench."""
        raise NotImplementedError

    def bench_l5(self, spec: Any, runs: list[dict[str, Any]]) -> list[Any]:
        """L5 from the benchmark's own runs (one per backend and seed): no extra training."""
        raise NotImplementedError

    # -- benchmark -------------------------------------------------------------------------------------
    def bench_run(self, spec: Any, backend: str, device: str) -> dict[str, Any]:
        """One benchmark run (no run folder): its summary, built with :func:`run_summary`."""
        raise NotImplementedError

    def report_columns(self, runs: list[dict[str, Any]]) -> list[str]:
        """Extra columns of this task's benchmark table (after the metric), for these runs."""
        return []

    def report_cells(self, runs: list[dict[str, Any]], columns: list[str]) -> list[Any]:
        """The cells of :meth:`report_columns` for one preset/backend/device group of runs."""
        return []


def run_summary(
    task: Task,
    value: float,
    curve_x: list[Any],
    curve_y: list[float],
    curve_label: str,
    curve_xlabel: str,
    throughput: float,
    wall_s: float,
    **extra: Any,
) -> dict[str, Any]:
    """What every benchmark run reports: the task's metric, its curve, throughput and wall time, plus the
    task's own extras."""
    return {
        "task": task.name,
        "metric": task.metric,
        "value": value,
        "curve_x": curve_x,
        "curve_y": curve_y,
        "curve_label": curve_label,
        "curve_xlabel": curve_xlabel,
        "throughput": throughput,
        "throughput_unit": task.throughput_unit,
        "wall_s": wall_s,
        **extra,
    }


def timed_rate(step: Callable[[], Any], items: int, seconds: float, warmup: int = 3, min_steps: int = 5) -> dict:
    """``step`` run ``warmup`` times untimed, then timed until ``seconds`` have passed (at least ``min_steps`` times):
    ``items`` per step per second, the steps timed and the milliseconds per step. ``step`` must wait for its result
    (a loss as a Python float does), so that a GPU's queued work is inside the time."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    elapsed = time.perf_counter() - t0
    return {"rate": items * n / elapsed, "steps": n, "ms_per_step": 1000.0 * elapsed / n}
