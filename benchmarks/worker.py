"""One benchmark run in its own process, so that peak memory belongs to that run alone.

Usage: python -m dualkit.benchmarks.worker JOB.json OUT.json, where JOB holds preset, overrides, backend, seed
and device. Writes the run's summary (task, metric, curve, wall time, throughput, peak RSS, and the
task's own extras) to OUT.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One benchmark run: the preset (with the job's overrides and seed) trained by its task in one backend."""
    from dualkit.core import registry
    from dualkit.tasks import presets
    from dualkit.tasks import registry as task_registry

    spec = presets.load(job["preset"], job.get("overrides", []) + [f"seed={job['seed']}"])
    backend = registry.get_backend(job["backend"], job["device"])
    summary = task_registry.for_spec(spec).bench_run(spec, job["backend"], job["device"])
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["versions"] = backend.versions()
    return {**job, **summary}


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    os.environ["DUALKIT_SINGLE_BACKEND"] = "1"
    Path(sys.argv[2]).write_text(json.dumps(run_job(job)))


if __name__ == "__main__":
    main()
