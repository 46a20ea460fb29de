"""Backend registry: which backend, installed or not, which device; core never imports a framework."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualkit.core import registry
from dualkit.core.errors import BackendError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def test_resolve_name_from_argument(no_env, monkeypatch):
    assert registry.resolve_name("torch") == "torch"
    assert registry.resolve_name("tf") == "tf"
    monkeypatch.setenv(registry.ENV_VAR, "tf")
    assert registry.resolve_name("torch") == "torch"  # the argument wins over the environment


def test_resolve_name_from_environment(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "tf")
    assert registry.resolve_name() == "tf"
    assert registry.resolve_name(None) == "tf"
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    assert registry.resolve_name() == "torch"


def test_resolve_name_default(no_env):
    assert registry.resolve_name() == registry.DEFAULT == "torch"


@pytest.mark.parametrize("alias, name", [("pytorch", "torch"), ("tensorflow", "tf"), ("keras", "tf"), ("TF", "tf"), ("Torch", "torch")])
def test_aliases(no_env, alias, name):
    assert registry.resolve_name(alias) == name


def test_unknown_backend_lists_choices(no_env):
    with pytest.raises(BackendError) as err:
        registry.resolve_name("jax")
    msg = str(err.value)
    assert "'jax'" in msg and "torch" in msg and "tf" in msg
    assert registry.ENV_VAR not in msg


def test_unknown_backend_from_environment_says_so(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "mxnet")
    with pytest.raises(BackendError, match=r"'mxnet'.*\$DUALKIT_BACKEND.*torch, tf"):
        registry.resolve_name()
    with pytest.raises(BackendError, match="mxnet"):
        registry.get_backend()


def test_unknown_device():
    with pytest.raises(BackendError, match=r"'tpu'.*cpu, gpu, auto"):
        registry.get_backend("torch", device="tpu")


def test_framework_not_installed_via_find_spec(monkeypatch):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "tensorflow" else real(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", fake_find_spec)
    monkeypatch.setattr(registry, "_loaded", {})  # as in a fresh process
    assert not registry.is_installed("tf")
    assert "tf" not in registry.available()
    with pytest.raises(BackendError) as err:
        registry.get_backend("tf")
    msg = str(err.value)
    assert "tensorflow" in msg and "not installed" in msg
    assert "pip install" in msg and "tensorflow-cpu" in msg
    assert "tf" not in registry._loaded


def test_framework_not_installed_via_fake_entry(monkeypatch):
    monkeypatch.setitem(
        registry.BACKENDS, "fakefw", ("dualkit.backends.fakefw", "dualkit_no_such_framework", "pip install dualkit-fakefw")
    )
    assert not registry.is_installed("fakefw")
    assert "fakefw" not in registry.available()
    with pytest.raises(BackendError, match=r"'fakefw' needs dualkit_no_such_framework.*install it with: pip install dualkit-fakefw"):
        registry.get_backend("fakefw")


def test_installed_backends_are_available():
    expected = [n for n in registry.BACKENDS if importlib.util.find_spec(registry.BACKENDS[n][1]) is not None]
    assert registry.available() == expected


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_gpu_without_gpu_torch():
    backend = registry.get_backend("torch")
    assert backend.NAME == "torch"
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match=r"--device gpu.*no CUDA GPU.*--device cpu"):
        registry.get_backend("torch", device="gpu")
    assert registry.resolve_device(backend, "auto") == "cpu"
    assert registry.resolve_device(backend, "cpu") == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_gpu_without_gpu_tf():
    backend = registry.get_backend("tf")
    assert backend.NAME == "tf"
    if backend.gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match=r"--device gpu.*no GPU"):
        registry.get_backend("tf", device="gpu")
    assert registry.resolve_device(backend, "auto") == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_get_backend_is_cached_and_has_the_api():
    a = registry.get_backend("torch")
    assert registry.get_backend("pytorch") is a
    for attr in ("NAME", "setup", "versions", "devices", "seed", "Classifier", "Optimizer", "check_device", "gpu_available"):
        assert hasattr(a, attr), attr


def test_core_imports_no_framework():
    listed = ["specs", "datasets", "batches", "weights", "checkpoint", "registry", "runs", "losses", "metrics",
              "optim_ref", "schedules", "report"]
    found = sorted(p.stem for p in (REPO / "core").glob("*.py") if p.stem != "__init__")
    assert set(listed) <= set(found)
    code = (
        "import importlib, sys\n"
        f"for name in {found!r}: importlib.import_module('dualkit.core.' + name)\n"
        "import dualkit.core.registry as r; r.resolve_name('tf'); r.available()\n"
        "loaded = {'torch', 'tensorflow', 'keras'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_and_presets_import_no_framework():
    code = (
        "import dualkit.cli, dualkit.tasks.presets as p, sys; p.load('cnn-digits'); "
        "loaded = {'torch', 'tensorflow', 'keras'} & set(sys.modules); assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
