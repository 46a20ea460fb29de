"""Backend registry: the one place a framework is chosen, imported, seeded and made deterministic.

A backend package (``backends.torch``, ``backends.tf``) is imported only when it is asked for, so a
user with one framework installed can use that one. Each exposes the same module-level API:
``NAME``, ``setup(device, deterministic, threads)``, ``versions()``, ``devices()``, ``seed(n)``,
``Classifier``, ``DQNAgent`` and ``Optimizer`` (see backends/torch/__init__.py).

Quiet start-up. While TensorFlow loads, its C++ code prints on stderr before its own log level
(``TF_CPP_MIN_LOG_LEVEL``) applies: ``WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR`` and an ``I0000 ... port.cc:153] oneDNN custom operations are on ...`` line, once per
native library that carries its own copy of that code (``import tensorflow`` loads two: the core runtime and
``tensorflow.python.profiler.internal._pywrap_profiler_plugin``, so the pair appears twice). Hence
:func:`get_backend` sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) and, while it imports and sets
up a framework, holds back what is written to file descriptor 2; afterwards, also when the import fails, it
passes every held-back line on to stderr except that start-up chatter (the absl line and C++ INFO records),
so warnings and errors still reach the user.

``DUALKIT_VERBOSE=1`` in the environment, or :func:`set_verbose` ``(True)`` (the CLI's ``--verbose``), turns
the holding back off: the start-up lines print as TensorFlow prints them. ``TF_CPP_MIN_LOG_LEVEL`` still
defaults to 2 then (TF's runtime INFO records are many); set it to 0 for those as well.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from dualkit.core.errors import BackendError

ENV_VAR = "DUALKIT_BACKEND"
VERBOSE_ENV_VAR = "DUALKIT_VERBOSE"  # "1": let the frameworks print their start-up lines (module docstring)
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
_verbose = False  # set_verbose(); the environment variable counts as well
_verbose_env_set = False  # set_verbose(True) put DUALKIT_VERBOSE into the environment (for child processes)

# The start-up chatter held back while a framework loads: absl's notice, C++ INFO records in the absl/glog
# layout ("I0000 00:00:1796305192.433341    7351 port.cc:153] ..."), and the second line of TF's CPU-feature
# notice (INFO as well, shown where TF_CPP_MIN_LOG_LEVEL is set below 1).
_STARTUP_NOISE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [\d:.]+ +\d+ [\w.\-]+:\d+\] .*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
)


def set_verbose(flag: bool) -> None:
    """Ask for the frameworks' own start-up lines (the CLI's ``--verbose``). DUALKIT_VERBOSE=1 in the
    environment asks as well, whatever the flag; True is passed on to child processes (benchmark workers)
    through that variable, and False takes back only what True put there."""
    global _verbose, _verbose_env_set
    _verbose = bool(flag)
    if _verbose and VERBOSE_ENV_VAR not in os.environ:
        os.environ[VERBOSE_ENV_VAR] = "1"
        _verbose_env_set = True
    elif not _verbose and _verbose_env_set:
        os.environ.pop(VERBOSE_ENV_VAR, None)
        _verbose_env_set = False


def is_verbose() -> bool:
    """Whether the frameworks' start-up lines are to be shown (set_verbose(True) or DUALKIT_VERBOSE=1)."""
    return _verbose or os.environ.get(VERBOSE_ENV_VAR, "").strip().lower() in ("1", "true", "yes")


@contextmanager
def _startup_quiet() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 inside the block (C++ writes there directly, so
    redirecting ``sys.stderr`` would not do), then restore it, also on error, and pass on every held-back
    line but the start-up chatter. Does nothing when verbose, or where fd 2 cannot be duplicated."""
    if is_verbose():
        yield
        return
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()  # Python's own buffered writes belong to the held-back part
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = b"".join(
                line
                for line in held.read().splitlines(keepends=True)
                if not _STARTUP_NOISE.fullmatch(line.rstrip(b"\r\n"))
            )
            while kept:
                kept = kept[os.write(2, kept) :]


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


def thread_count() -> int:
    """The framework thread count: $DUALKIT_THREADS (a positive integer), else DEFAULT_THREADS."""
    raw = os.environ.get("DUALKIT_THREADS", str(DEFAULT_THREADS))
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise BackendError(f"DUALKIT_THREADS={raw!r} is not a positive whole number; set it to e.g. 2, or unset it")
    return threads


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
        threads = threads or thread_count()
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        single = os.environ.get("DUALKIT_SINGLE_BACKEND") == "1"  # a process that will never load torch
        with _startup_quiet():
            if (
                key == "tf"
                and not single
                and "torch" not in sys.modules
                and importlib.util.find_spec("torch") is not None
            ):
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
