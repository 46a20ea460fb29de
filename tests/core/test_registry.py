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


@pytest.mark.parametrize(
    "alias, name", [("pytorch", "torch"), ("tensorflow", "tf"), ("keras", "tf"), ("TF", "tf"), ("Torch", "torch")]
)
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
        registry.BACKENDS,
        "fakefw",
        ("dualkit.backends.fakefw", "dualkit_no_such_framework", "pip install dualkit-fakefw"),
    )
    assert not registry.is_installed("fakefw")
    assert "fakefw" not in registry.available()
    with pytest.raises(
        BackendError, match=r"'fakefw' needs dualkit_no_such_framework.*install it with: pip install dualkit-fakefw"
    ):
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
    for attr in (
        "NAME",
        "setup",
        "versions",
        "devices",
        "seed",
        "Classifier",
        "Optimizer",
        "check_device",
        "gpu_available",
    ):
        assert hasattr(a, attr), attr


def test_core_imports_no_framework():
    listed = [
        "specs",
        "datasets",
        "batches",
        "weights",
        "checkpoint",
        "registry",
        "runs",
        "losses",
        "metrics",
        "optim_ref",
        "schedules",
        "report",
    ]
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


# -- quiet start-up: TensorFlow's C++ start-up lines are held back unless asked for --------------------
ABSL_LINE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN_LINE = "oneDNN custom operations are on"

FAKE_FRAMEWORK = """
import os, sys
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1796305192.433341    7351 port.cc:153] oneDNN custom operations are on. You may see\\n")
os.write(2, b"W0000 00:00:1796305192.500000    7351 loader.cc:12] a real warning from C++\\n")
print("a Python warning on sys.stderr", file=sys.stderr)
if os.environ.get("FAKEFW_FAIL") == "1":
    os.write(2, b"E0000 00:00:1796305192.600000    7351 loader.cc:40] why the import fails\\n")
    raise ImportError("fakefw cannot load its library")
NAME = "fake"
def setup(deterministic, threads):
    os.write(2, b"I0000 00:00:1796305193.000000    7351 setup.cc:2] more start-up chatter\\n")
def check_device(device):
    pass
def versions():
    return {"fakefw": "1.0"}
def devices():
    return ["cpu"]
"""

# argv[1] is a folder holding the fake framework; "cli ARGS..." runs dualkit's main, else get_backend
FAKE_DRIVER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from dualkit.core import registry
registry.BACKENDS.clear()
registry.BACKENDS["fake"] = ("fakefw", "fakefw", "pip install fakefw")
if sys.argv[2:3] == ["cli"]:
    from dualkit.cli import main
    code = main(sys.argv[3:])
else:
    try:
        registry.get_backend("fake")
        code = 0
    except ImportError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        code = 3
os.write(2, b"stderr works after the import\\n")
sys.exit(code)
"""


def run_fake(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "fakefw").mkdir(exist_ok=True)
    (tmp_path / "fakefw" / "__init__.py").write_text(FAKE_FRAMEWORK)
    environ = {k: v for k, v in os.environ.items() if k not in (registry.VERBOSE_ENV_VAR, "FAKEFW_FAIL")}
    return subprocess.run(
        [sys.executable, "-c", FAKE_DRIVER, str(tmp_path), *args],
        cwd=REPO,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_startup_chatter_is_held_back_and_everything_else_passed_on(tmp_path):
    proc = run_fake(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ABSL_LINE not in proc.stderr and ONEDNN_LINE not in proc.stderr and "chatter" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-3:] == [
        "W0000 00:00:1796305192.500000    7351 loader.cc:12] a real warning from C++",
        "a Python warning on sys.stderr",
        "stderr works after the import",
    ]


def test_a_failing_import_restores_stderr_and_shows_why(tmp_path):
    proc = run_fake(tmp_path, FAKEFW_FAIL="1")
    assert proc.returncode == 3, proc.stderr
    assert ABSL_LINE not in proc.stderr and ONEDNN_LINE not in proc.stderr
    assert "loader.cc:40] why the import fails" in proc.stderr
    assert "import failed: fakefw cannot load its library" in proc.stderr
    assert proc.stderr.rstrip().endswith("stderr works after the import")


@pytest.mark.parametrize("how", ["env", "flag"])
def test_verbose_lets_the_startup_lines_through(tmp_path, how):
    if how == "env":
        proc = run_fake(tmp_path, **{registry.VERBOSE_ENV_VAR: "1"})
    else:
        proc = run_fake(tmp_path, "cli", "--verbose", "info")
        assert "| fake    | usable | fakefw 1.0" in proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert ABSL_LINE in proc.stderr and ONEDNN_LINE in proc.stderr and "more start-up chatter" in proc.stderr
    quiet = run_fake(tmp_path, "cli", "info")  # the same command without the flag
    assert quiet.returncode == 0 and "| fake " in quiet.stdout and ABSL_LINE not in quiet.stderr


def test_set_verbose_and_the_environment_variable(monkeypatch):
    var = registry.VERBOSE_ENV_VAR
    monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(registry, "_verbose", False)
    monkeypatch.setattr(registry, "_verbose_env_set", False)
    assert not registry.is_verbose()
    registry.set_verbose(True)
    assert registry.is_verbose() and os.environ[var] == "1"  # child processes (bench workers) inherit it
    registry.set_verbose(False)
    assert not registry.is_verbose() and var not in os.environ
    monkeypatch.setenv(var, "1")
    registry.set_verbose(False)  # the CLI without --verbose: the user's variable still asks
    assert registry.is_verbose()
    registry.set_verbose(True)
    registry.set_verbose(False)
    assert os.environ[var] == "1"  # not ours to take back


def test_startup_noise_pattern_matches_only_the_chatter():
    noise = registry._STARTUP_NOISE
    assert noise.fullmatch(ABSL_LINE.encode())
    assert noise.fullmatch(
        b"I0000 00:00:1796305192.433341    7351 port.cc:153] oneDNN custom operations are on. "
        b"You may see slightly different numerical results due to floating-point round-off errors "
        b"from different computation orders. To turn them off, set the environment variable "
        b"`TF_ENABLE_ONEDNN_OPTS=0`."
    )
    assert noise.fullmatch(
        b"I0000 00:00:1796305207.860642    7384 cpu_feature_guard.cc:227] This TensorFlow binary "
        b"is optimized to use available CPU instructions in performance-critical operations."
    )
    for kept in (
        b"W0000 00:00:1796305207.8 7384 port.cc:153] a warning",
        b"E0000 00:00:1.0 1 x.cc:1] an error",
        b"Traceback (most recent call last):",
        b"I think this line is not a log record",
        b"UserWarning: something",
    ):
        assert not noise.fullmatch(kept), kept


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_dualkit_info_prints_no_tensorflow_startup_lines():
    environ = {k: v for k, v in os.environ.items() if k != registry.VERBOSE_ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-m", "dualkit", "info"], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "| tf " in proc.stdout and "usable" in proc.stdout
    assert ABSL_LINE not in proc.stderr and ONEDNN_LINE not in proc.stderr and "port.cc" not in proc.stderr, proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed")
def test_dualkit_info_verbose_shows_what_tensorflow_prints():
    environ = {**{k: v for k, v in os.environ.items() if k != registry.VERBOSE_ENV_VAR}, registry.VERBOSE_ENV_VAR: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dualkit", "info"], cwd=REPO, env=environ, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "| tf " in proc.stdout and "usable" in proc.stdout
    if ABSL_LINE not in proc.stderr:
        # a TensorFlow build that says nothing while it loads: then a bare import says nothing either
        bare = subprocess.run(
            [sys.executable, "-c", "import tensorflow"],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ABSL_LINE not in bare.stderr, "DUALKIT_VERBOSE=1 hid TensorFlow's start-up lines"
