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


def _lazy_text_runs(tmp_path_factory, name: str):
    """A finished tiny ``name`` run (tests/textruns.py) per backend, trained on first use and shared read-only:
    ``get(backend) -> (run folder, spec, result)``; copy the folder before changing it."""
    from tests import textruns

    cache = {}

    def get(backend: str):
        if backend not in cache:
            pytest.importorskip("torch" if backend == "torch" else "tensorflow")
            if name == "mlm":
                from dualkit.tasks.mlm import pretrain as run

                spec = textruns.mlm_spec()
            else:
                from dualkit.tasks.tag import train as run

                spec = textruns.tag_spec()
            run_dir = tmp_path_factory.mktemp(f"{name}-{backend}") / "run"
            cache[backend] = (run_dir, spec, run(spec, backend, run_dir=run_dir, progress=False))
        return cache[backend]

    return get


@pytest.fixture(scope="session")
def mlm_runs(tmp_path_factory):
    """Tiny bert-mlm-tiny runs (8 steps, dropout on, no downstream tagger) by backend: see _lazy_text_runs."""
    return _lazy_text_runs(tmp_path_factory, "mlm")


@pytest.fixture(scope="session")
def tag_runs(tmp_path_factory):
    """Tiny bert-tag-tiny runs from scratch (8 steps, dropout on) by backend: see _lazy_text_runs."""
    return _lazy_text_runs(tmp_path_factory, "tag")
