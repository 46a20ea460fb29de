"""One benchmark run in its own process, so that peak memory belongs to that run alone.

Usage: python -m benchmarks.worker JOB.json OUT.json, where JOB holds preset, overrides, backend, seed
and device. Writes the run's summary (metric, curve, wall time, throughput, peak RSS) to OUT.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def summarize_classify(result) -> dict[str, Any]:
    return {
        "metric": "test_accuracy",
        "value": result.test["accuracy"],
        "curve_x": [h["epoch"] for h in result.history],
        "curve_y": [h.get("val_accuracy", float("nan")) for h in result.history],
        "curve_label": "validation accuracy per epoch",
        "throughput": result.images_per_s,
        "throughput_unit": "images/s",
        "wall_s": result.wall_s,
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from core import registry
    from tasks import presets

    spec = presets.load(job["preset"], job.get("overrides", []) + [f"train.seed={job['seed']}"])
    backend = registry.get_backend(job["backend"], job["device"])
    if spec.task == "classify":
        from tasks.classify import train

        summary = summarize_classify(train(spec, job["backend"], device=job["device"], progress=False))
    else:
        raise ValueError(f"the benchmark has no driver for task {spec.task!r}")
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["versions"] = backend.versions()
    return {**job, **summary}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    os.environ["DUALKIT_SINGLE_BACKEND"] = "1"
    Path(sys.argv[2]).write_text(json.dumps(run_job(job)))


if __name__ == "__main__":
    main()
