"""The distribution parity level ("dist"): N workers x batch B against one worker x N*B.

For each backend, one launch of N=2 workers on the framework's engine (tasks/launch.py: torchrun/gloo,
TF_CONFIG/MultiWorkerMirroredStrategy) trains every variant of the preset's model for at least
:data:`STEPS` steps: both optimizers (SGD with momentum, AdamW), each BatchNorm mode (synchronised, per-replica,
none), each dtype. Each is compared with the same spec trained in this process:

- synchronised BatchNorm and the model without BatchNorm against one worker with the global batch;
- per-replica BatchNorm against the ghost-batch reference (one worker, each global batch cut into the same N
  shards, each normalised by its own statistics, the gradients, losses and running-statistic updates averaged:
  tasks/loop.ghost_step, from the model's public methods only);

on the trained weights, the running statistics and every step's loss (relative: max|a - b| / max|b|), within
:data:`BOUNDS`. Two more kinds of check: per-replica BatchNorm must differ from one worker's full batch by more
than :data:`SEMANTICS_GAP` (so the level proves the semantics and does not pass by luck), and the two backends'
2-worker runs must agree step by step within L4's bounds (tasks/parity.py).

``python -m dualkit.tasks.dist_parity PLAN OUT`` is the workers' side: each trains the plan's variants, rank 0
writes their losses and weights to OUT.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry
from dualkit.core.errors import DualkitError
from dualkit.core.specs import OptimSpec, ScheduleSpec, from_dict, to_dict
from dualkit.core.weights import is_buffer
from dualkit.tasks import launch, parity
from dualkit.tasks import registry as task_registry
from dualkit.tasks.loop import ghost_replicas
from dualkit.tasks.parity import Check

WORKERS = 2
STEPS = 20  # k: optimizer steps compared per variant
BOUNDS = {"float32": 1e-5, "float64": 1e-12}
GPU_FACTOR = parity.GPU_FACTOR
SEMANTICS_GAP = 1e-3  # per-replica BatchNorm must be at least this far from the full batch
# step sizes where float32 rounding stays far below the bound over STEPS steps (tasks/parity.py's L4 settings)
OPTIMIZERS = {
    "sgd": OptimSpec(name="sgd", lr=0.005, momentum=0.9),
    "adamw": OptimSpec(name="adamw", lr=5e-4, weight_decay=0.01),
}
BN_MODES = ("sync", "replica", "none")
LAUNCH_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Variant:
    name: str  # "<dtype> <optimizer> <bn mode>"
    dtype: str
    optimizer: str
    bn: str
    spec: Any


def variants(
    base: Any,
    dtypes: list[str],
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS),
    bn_modes: tuple[str, ...] = BN_MODES,
    steps: int = STEPS,
) -> list[Variant]:
    """The preset's model and data at a global batch of WORKERS x its batch size, ``steps`` steps in one epoch
    (data.limit_train = steps x the global batch: no short last batch), a constant learning rate and no dropout."""
    batch = base.train.batch_size * WORKERS
    out = []
    for dtype in dtypes:
        for opt in optimizers:
            for bn in bn_modes:
                model = replace(base.model, batchnorm=bn != "none", bn_sync=bn == "sync", dropout=0.0)
                spec = replace(
                    base,
                    dtype=dtype,
                    model=model,
                    optim=OPTIMIZERS[opt],
                    schedule=ScheduleSpec(),
                    data=replace(base.data, limit_train=steps * batch),
                    train=replace(base.train, batch_size=batch, epochs=1),
                )
                if hasattr(spec, "max_steps"):
                    spec = replace(spec, max_steps=0)
                out.append(Variant(f"{dtype} {opt} {bn}", dtype, opt, bn, spec))
    return out


# -- the workers' side -------------------------------------------------------------------------------------------
def worker_main(plan_path: Path, out: Path) -> int:
    """Train every variant of the plan on the workers this process is one of; rank 0 writes each one's per-step
    losses and weights to ``out``."""
    plan = json.loads(Path(plan_path).read_text())
    backend, task = plan["backend"], task_registry.get(plan["task"])
    world = launch.start_worker(backend, plan["device"], WORKERS)
    with launch.worker_session(backend, world):
        for i, raw in enumerate(plan["specs"]):
            losses, weights = task.parity_run(from_dict(raw), backend, plan["device"])
            if world.writer:
                checkpoint.save(out / f"{i}.safetensors", weights, {"losses": [float(v) for v in losses]})
    return 0


def run_workers(task: Any, vs: list[Variant], backend: str, device: str) -> list[tuple[list[float], dict]]:
    """The variants trained by WORKERS workers of ``backend`` (one launch): (losses, weights) each."""
    with tempfile.TemporaryDirectory(prefix="dualkit-dist-parity-") as tmp:
        plan = Path(tmp) / "plan.json"
        plan.write_text(
            json.dumps(
                {"backend": backend, "task": task.name, "device": device, "specs": [to_dict(v.spec) for v in vs]}
            )
        )
        out = launch.launch(
            backend,
            WORKERS,
            ["dualkit.tasks.dist_parity", str(plan), tmp],
            device=device,
            timeout_s=LAUNCH_TIMEOUT_S,
            echo=False,
            # the references' thread count: float32 kernels round differently with another one, and over the
            # steps a max-pool near-tie can turn that into a visible gap
            threads=registry.thread_count(),
        )
        if out.code != 0:
            detail = out.message or next((e.message for e in out.workers if e.message), f"exit code {out.code}")
            raise DualkitError(f"the distribution parity level's {backend} workers failed: {detail}")
        results = []
        for i in range(len(vs)):
            weights, meta = checkpoint.load(Path(tmp) / f"{i}.safetensors")
            results.append((list(meta["losses"]), weights))
        return results


# -- the comparisons -------------------------------------------------------------------------------------------
def gaps(a: tuple[list[float], dict], ref: tuple[list[float], dict]) -> dict[str, tuple[float, str]]:
    """Relative gaps of a run from a reference: trained weights, running statistics, per-step losses."""
    (la, wa), (lr, wr) = a, ref
    trained = {k: wa[k] for k in wr if not is_buffer(k)}
    stats = {k: wa[k] for k in wr if is_buffer(k)}
    out = {"weights": parity.max_rel_diff(trained, {k: wr[k] for k in trained})}
    out["running stats"] = parity.max_rel_diff(stats, {k: wr[k] for k in stats}) if stats else (0.0, "")
    if len(la) != len(lr):
        raise DualkitError(f"the runs trained {len(la)} and {len(lr)} steps; they must train the same steps")
    steps = np.abs(np.asarray(la, np.float64) - np.asarray(lr, np.float64)) / np.maximum(np.abs(lr), 1e-30)
    worst = int(np.argmax(steps)) if len(steps) else 0
    out["losses"] = (float(steps.max()) if len(steps) else 0.0, f"step {worst + 1}")
    return out


def _describe(g: dict[str, tuple[float, str]]) -> str:
    return "; ".join(f"{k} {v:.2g}" + (f" ({where})" if where else "") for k, (v, where) in g.items())


def level_dist(
    task: Any,
    base: Any,
    dtypes: list[str],
    device: str = "cpu",
    backends: tuple[str, ...] = parity.BACKENDS,
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS),
    bn_modes: tuple[str, ...] = BN_MODES,
    steps: int = STEPS,
) -> list[Check]:
    """The "dist" level's checks for ``task`` (a tasks.base.Task with ``parity_run``) on preset ``base``."""
    vs = variants(base, dtypes, optimizers, bn_modes, steps)
    factor = GPU_FACTOR if device == "gpu" else 1.0
    checks: list[Check] = []
    dist_runs: dict[str, list] = {}
    for backend in backends:
        runs = run_workers(task, vs, backend, device)
        dist_runs[backend] = runs
        full = {v.name: task.parity_run(v.spec, backend, device) for v in vs}
        for v, run in zip(vs, runs):
            bound = BOUNDS[v.dtype] * factor
            if v.bn == "replica":
                with ghost_replicas(WORKERS):
                    ref = task.parity_run(v.spec, backend, device)
                against = "the ghost-batch reference"
            else:
                ref, against = full[v.name], "one worker, global batch"
            g = gaps(run, ref)
            value = max(x for x, _ in g.values())
            checks.append(
                Check(
                    "dist",
                    f"{backend} {WORKERS} workers vs {against} ({v.optimizer}, BN {v.bn})",
                    value,
                    bound,
                    bool(np.isfinite(value) and value <= bound),
                    f"{len(run[0])} steps; {_describe(g)}",
                    v.dtype,
                )
            )
            if v.bn == "replica":
                g = gaps(run, full[v.name])
                value = max(x for x, _ in g.values())
                checks.append(
                    Check(
                        "dist",
                        f"{backend} per-replica BN differs from the full batch ({v.optimizer})",
                        value,
                        SEMANTICS_GAP,
                        bool(value > SEMANTICS_GAP),
                        f"bound is a floor: {_describe(g)}",
                        v.dtype,
                    )
                )
    if len(backends) == 2:
        a, b = backends
        for i, v in enumerate(vs):
            (la, _), (lb, _) = dist_runs[a][i], dist_runs[b][i]
            value = parity.rel_diff(np.asarray(la), np.asarray(lb))
            checks.append(
                parity.check(
                    "L4",
                    f"{a} vs {b}, {WORKERS} workers each, per-step loss ({v.optimizer}, BN {v.bn})",
                    value,
                    v.dtype,
                    device,
                    f"{len(la)} steps (L4's bound)",
                )
            )
            checks[-1].level = "dist"
    return checks


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1]), Path(sys.argv[2])))
