"""One benchmark run in its own process, so that peak memory belongs to that run alone.

Usage: python -m benchmarks.worker JOB.json OUT.json, where JOB holds preset, overrides, backend, seed
and device. Writes the run's summary (task, metric, curve, wall time, throughput, peak RSS, and the
task's own extras) to OUT.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

# What each task reports; the report builder reads these to name its tables, columns and axes.
METRICS = {"classify": "test_accuracy", "masked": "probe_accuracy", "dqn": "test_return"}
THROUGHPUT_UNITS = {"classify": "images/s", "masked": "images/s", "dqn": "env steps/s"}


def seed_override(spec: Any, seed: int) -> str:
    """The --set line that seeds a run: DQN specs carry ``seed`` at the top, the others in ``train``."""
    return f"train.seed={seed}" if hasattr(spec, "train") else f"seed={seed}"


def summarize_classify(result) -> dict[str, Any]:
    return {
        "metric": METRICS["classify"],
        "value": result.test["accuracy"],
        "curve_x": [h["epoch"] for h in result.history],
        "curve_y": [h.get("val_accuracy", float("nan")) for h in result.history],
        "curve_label": "validation accuracy per epoch",
        "curve_xlabel": "epoch",
        "throughput": result.images_per_s,
        "throughput_unit": THROUGHPUT_UNITS["classify"],
        "wall_s": result.wall_s,
    }


def summarize_masked(result, total_s: float) -> dict[str, Any]:
    """Linear-probe accuracy of the pretrained encoder (and its margin over the same encoder at random
    init); the curve is the masked training loss per epoch. ``wall_s`` covers pretraining and the
    evaluation (probe, fine-tunes), ``pretrain_s`` the pretraining alone."""
    ev = result.evaluation
    probe = ev.get("probe", {})
    finetune = {
        fraction: {"accuracy": r["pretrained"]["accuracy"], "random_accuracy": r["random"]["accuracy"],
                   "margin_points": r["margin_points"]}
        for fraction, r in ev.get("finetune", {}).items()
    }
    return {
        "metric": METRICS["masked"],
        "value": probe["pretrained"]["accuracy"] if probe else float("nan"),
        "random_accuracy": probe["random"]["accuracy"] if probe else float("nan"),
        "margin_points": probe["margin_points"] if probe else float("nan"),
        "finetune": finetune,
        "curve_x": [h["epoch"] for h in result.history],
        "curve_y": [h["train_loss"] for h in result.history],
        "curve_label": "masked loss (train) per epoch",
        "curve_xlabel": "epoch",
        "throughput": result.images_per_s,
        "throughput_unit": THROUGHPUT_UNITS["masked"],
        "wall_s": total_s,
        "pretrain_s": result.wall_s,
        "final_loss": result.history[-1]["train_loss"] if result.history else float("nan"),
    }


def summarize_dqn(result) -> dict[str, Any]:
    """Mean greedy return on the held-out test seeds; the curve is the periodic greedy evaluation's mean
    return against environment steps. Time to solve is the wall time of the evaluation that first reached
    the preset's stop return (None when the budget ran out first)."""
    solve_s = next((e["wall_s"] for e in result.evals if e["env_steps"] == result.solved_at), None)
    return {
        "metric": METRICS["dqn"],
        "value": result.test["return_mean"],
        "test_return_min": result.test["return_min"],
        "curve_x": [e["env_steps"] for e in result.evals],
        "curve_y": [e["eval_return"] for e in result.evals],
        "curve_label": "greedy evaluation return",
        "curve_xlabel": "environment steps",
        "throughput": result.steps_per_s,
        "throughput_unit": THROUGHPUT_UNITS["dqn"],
        "wall_s": result.wall_s,
        "eval_s": result.eval_s,
        "env_steps": result.env_steps,
        "updates": result.updates,
        "solved_at": result.solved_at,
        "time_to_solve_s": solve_s,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from dualkit.core import registry
    from dualkit.tasks import presets

    overrides = job.get("overrides", [])
    spec = presets.load(job["preset"], overrides + [seed_override(presets.load(job["preset"], overrides), job["seed"])])
    backend = registry.get_backend(job["backend"], job["device"])
    t0 = time.perf_counter()
    if spec.task == "classify":
        from dualkit.tasks.classify import train

        summary = summarize_classify(train(spec, job["backend"], device=job["device"], progress=False))
    elif spec.task == "masked":
        from dualkit.tasks.pretrain import pretrain

        result = pretrain(spec, job["backend"], device=job["device"], progress=False, evaluate=True)
        summary = summarize_masked(result, time.perf_counter() - t0)
    elif spec.task == "dqn":
        from dualkit.tasks.dqn import train as train_dqn

        summary = summarize_dqn(train_dqn(spec, job["backend"], device=job["device"], progress=False))
    else:
        raise ValueError(f"the benchmark has no driver for task {spec.task!r}")
    summary["task"] = spec.task
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["versions"] = backend.versions()
    return {**job, **summary}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    os.environ["DUALKIT_SINGLE_BACKEND"] = "1"
    Path(sys.argv[2]).write_text(json.dumps(run_job(job)))


if __name__ == "__main__":
    main()
