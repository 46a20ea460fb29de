"""Shared test settings and fixtures."""

import os

import pytest

# One framework thread per process: on a small, shared machine two spinning OpenMP threads make a
# PyTorch step of the tiny test CNNs ~100x slower. Set before any backend is imported (core.registry).
os.environ.setdefault("DUALKIT_THREADS", "1")


@pytest.fixture(scope="session")
def torch_run(tmp_path_factory):
    """A finished 2-epoch cnn-digits run in PyTorch, shared read-only: copy it before changing it.

    Returns (run folder, spec, TrainResult).
    """
    pytest.importorskip("torch")
    from dualkit.tasks import presets
    from dualkit.tasks.classify import train

    spec = presets.load("cnn-digits", ["train.epochs=2"])
    run_dir = tmp_path_factory.mktemp("shared") / "torch-run"
    result = train(spec, "torch", run_dir=run_dir, progress=False)
    return run_dir, spec, result
