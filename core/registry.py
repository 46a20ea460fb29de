"""Backend registry: the one place a framework is chosen, imported, seeded and made deterministic.

A backend package (``backends.torch``, ``backends.tf``) is imported only when it is asked for, so a
user with one framework installed can use that one. Each exposes the same module-level API:
``NAME``, ``setup(device, deterministic, threads)``, ``versions()``, ``devices()``, ``seed(n)``,
``Classifier``, ``DQNAgent`` and ``Optimizer`` (see backends/torch/__init__.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from dualkit.core.errors import BackendError

ENV_VAR = "DUALKIT_BACKEND"
DEFAULT = "torch"
DEVICES = ("cpu", "gpu", "auto")
DEFAULT_THREADS = 2

# name -> (backend package, framework module, how to install it)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "torch": ("dualkit.backends.torch", "torch", "pip install 'dualkit[torch]'  (CPU: pip install torch==2.13.0)"),
    "tf": ("dualkit.backends.tf", "tensorflow", "pip install 'dualkit[tf]'  (CPU: pip install tensorflow-cpu==2.21.0)"),
}
ALIASES = {"pytorch": "torch", "tensorflow": "tf", "keras": "tf"}

_loaded: dict[str, ModuleType] = {}


def resolve_name(name: str | None = None) -> str:
    """The backend to use: the argument, else $DUALKIT_BACKEND, else torch."""
    raw = name or os.environ.get(ENV_VAR) or DEFAULT
    key = ALIASES.get(raw.lower(), raw.lower())
    if key not in BACKENDS:
        source = "" if name else f" (from ${ENV_VAR})"
        raise BackendError(f"unknown backend {raw!r}{source}; choose one of: {', '.join(BACKENDS)}")
    return key


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(BACKENDS[resolve_name(name)][1]) is not None


def available() -> list[str]:
    return [name for name in BACKENDS if is_installed(name)]


def get_backend(
    name: str | None = None, device: str = "cpu", deterministic: bool = True, threads: int | None = None
) -> ModuleType:
    """Import, configure and return a backend package. Thread counts and determinism are set here only."""
    key = resolve_name(name)
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    package, framework, install = BACKENDS[key]
    if importlib.util.find_spec(framework) is None:
        raise BackendError(f"backend {key!r} needs {framework}, which is not installed; install it with: {install}")
    if key not in _loaded:
        threads = threads or int(os.environ.get("DUALKIT_THREADS", DEFAULT_THREADS))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        single = os.environ.get("DUALKIT_SINGLE_BACKEND") == "1"  # a process that will never load torch
        if key == "tf" and not single and "torch" not in sys.modules and importlib.util.find_spec("torch") is not None:
            # Both frameworks in one process only work reliably when torch is loaded first.
            importlib.import_module("torch")
        module = importlib.import_module(package)
        module.setup(deterministic=deterministic, threads=threads)
        _loaded[key] = module
    module = _loaded[key]
    module.check_device(device)
    return module


def resolve_device(backend: ModuleType, device: str) -> str:
    """'auto' -> 'gpu' when the backend sees one, else 'cpu'."""
    if device == "auto":
        return "gpu" if backend.gpu_available() else "cpu"
    return device
