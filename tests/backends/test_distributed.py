"""backends/*/distributed.py: one data-parallel step on two replicas equals one worker's step on the global batch
(synchronised BatchNorm, plain and masked) or the ghost-batch reference (per-replica BatchNorm), and a stop asked
by one worker reaches all after the same step.

Two replicas need a fresh process: torch, two processes on gloo (the rendezvous torchrun would give them); tf,
one process with MirroredStrategy over two logical CPU devices (set before TensorFlow starts). This file is also
the script they run (``python test_distributed.py BACKEND``): it prints what it measured as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dualkit.tasks.launch import free_ports

pytestmark = pytest.mark.dist
TIMEOUT_S = 240
BACKENDS = ("torch", "tf")


def run_group(commands: list[tuple[list[str], dict[str, str]]], timeout: float) -> list[tuple[int, str, str]]:
    """Run processes together, each in a session of its own; all are killed (process groups) on the timeout."""
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        for argv, env in commands
    ]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        outs = None
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert outs is not None, f"the replicas did not finish within {timeout} s (killed)"
    return [(p.returncode, out.decode(), err.decode()) for p, (out, err) in zip(procs, outs)]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_two_replicas_equal_the_global_batch(backend_name):
    pytest.importorskip({"torch": "torch", "tf": "tensorflow"}[backend_name])
    env = {**os.environ, "DUALKIT_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if backend_name == "torch":
        port = str(free_ports(1)[0])
        commands = [
            (
                [sys.executable, __file__, "torch"],
                {
                    **env,
                    "RANK": str(r),
                    "WORLD_SIZE": "2",
                    "LOCAL_RANK": str(r),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": port,
                },
            )
            for r in range(2)
        ]
    else:
        commands = [([sys.executable, __file__, "tf"], env)]
    results = run_group(commands, TIMEOUT_S)
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    measured = json.loads(results[0][1].strip().splitlines()[-1])
    for name in (
        "classifier sync BN vs full batch",
        "classifier per-replica BN vs ghost batch",
        "masked sync BN vs full batch",
        "masked per-replica BN vs ghost batch",
        "no BN vs full batch",
    ):
        assert measured[name] < 1e-12, (name, measured)
    assert measured["per-replica BN vs full batch"] > 1e-3  # the two BatchNorm modes really differ
    assert measured["stop"] == [True, False]  # asked by one worker, seen by all; not carried over


# -- the replicas' script ------------------------------------------------------------------------------------
def _gap(a: tuple[list[float], dict], b: tuple[list[float], dict]) -> float:
    (la, wa), (lb, wb) = a, b
    worst = max(float(np.abs(wa[k] - wb[k]).max() / max(np.abs(wb[k]).max(), 1e-30)) for k in wb)
    return max(worst, float(np.max(np.abs(np.subtract(la, lb)) / np.abs(lb))))


def _replicas(backend_name: str) -> None:
    from dualkit.core import distributed, registry
    from dualkit.core.masking import grid_shape, patch_size_for, random_masks
    from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec
    from dualkit.core.weights import init_classifier, init_masked
    from dualkit.tasks.loop import engine_of, ghost_step

    backend = registry.get_backend(backend_name)
    engine = engine_of(backend_name)
    world = distributed.world_from_env(backend_name)
    if backend_name == "tf":
        world = distributed.World(local_replicas=2)
    shape, n, dtype = (8, 8, 1), 8, "float64"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape))
    y = rng.integers(0, 10, n)
    optim = OptimSpec(name="sgd", lr=0.1, momentum=0.9)
    spec = ModelSpec(channels=(4, 8), batchnorm=True, head="gap")
    decoder = DecoderSpec(channels=(8, 4))
    masks = random_masks(n, grid_shape(shape, patch_size_for(spec, shape)), 0.5, np.random.default_rng(1))

    def classifier(model: ModelSpec):
        return backend.Classifier(model, shape, init_classifier(model, shape, 0, dtype), optim, 0.0, dtype)

    def masked(model: ModelSpec):
        weights = init_masked(model, decoder, shape[2], 0, dtype)
        return backend.MaskedAutoencoder(model, decoder, shape, weights, optim, False, dtype)

    def train(model, target, steps=2, ghost=False):
        losses = []
        for _ in range(steps):
            if ghost:
                losses.append(ghost_step(model, (x, target), optim.lr, 2))
            else:
                part = distributed.shard((x, target), world) if engine.replicas() > 1 else (x, target)
                losses.append(model.train_step(*part, optim.lr))
        return losses, model.get_weights()

    # name -> (model object, model spec, target, the references it is compared with: full batch, ghost batch)
    cases = {
        "classifier sync": (classifier, replace(spec, bn_sync=True), y, (True, False)),
        "classifier replica": (classifier, spec, y, (True, True)),
        "masked sync": (masked, replace(spec, bn_sync=True), masks, (True, False)),
        "masked replica": (masked, spec, masks, (False, True)),
        "no BN": (classifier, replace(spec, batchnorm=False), y, (True, False)),
    }

    def references() -> dict:
        return {
            name: tuple(train(make(m), t, ghost=ghost) if need else None for ghost, need in zip((False, True), needs))
            for name, (make, m, t, needs) in cases.items()
        }

    if backend_name == "torch":  # the references first: once the process group is up, every step is distributed
        ref = references()
        engine.start(world, "cpu")
        dist = {name: train(make(m), t) for name, (make, m, t, _) in cases.items()}
    else:  # logical devices are set before TensorFlow starts; the references run with the strategy put away
        engine.start(world, "cpu")
        dist = {name: train(make(m), t) for name, (make, m, t, _) in cases.items()}
        engine.stop()
        ref = references()
        engine.start(world, "cpu")
    distributed.activate(world)
    model = classifier(spec)
    part = distributed.shard((x, y), world)
    engine.request_stop(world.rank == world.size - 1)  # the last worker (tf: the only one) asks
    model.train_step(*part, 0.01)
    seen = [engine.stop_requested()]
    engine.request_stop(False)
    model.train_step(*part, 0.01)
    seen.append(engine.stop_requested())
    measured = {
        "classifier sync BN vs full batch": _gap(dist["classifier sync"], ref["classifier sync"][0]),
        "classifier per-replica BN vs ghost batch": _gap(dist["classifier replica"], ref["classifier replica"][1]),
        "masked sync BN vs full batch": _gap(dist["masked sync"], ref["masked sync"][0]),
        "masked per-replica BN vs ghost batch": _gap(dist["masked replica"], ref["masked replica"][1]),
        "no BN vs full batch": _gap(dist["no BN"], ref["no BN"][0]),
        "per-replica BN vs full batch": _gap(dist["classifier replica"], ref["classifier replica"][0]),
        "stop": seen,
    }
    engine.stop()
    if world.writer:
        print(json.dumps(measured))


if __name__ == "__main__":
    _replicas(sys.argv[1])
