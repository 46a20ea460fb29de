"""The package's shape: imports point one way, one installed top-level package, no task branches outside
the task registry."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "backends", "tasks", "benchmarks", "dualkit")
# what each layer may import from dualkit (DESIGN.md: core imports neither framework nor anything above it;
# a backend imports core and its own framework; tasks reach a backend only through core's registry;
# benchmarks and the CLI sit on top)
ALLOWED = {
    "core": {"core"},
    "backends": {"core", "backends"},
    "tasks": {"core", "tasks"},
    "benchmarks": {"core", "tasks", "benchmarks", "backends"},
    "dualkit": {"core", "tasks", "benchmarks", "dualkit"},
}


def _imports(path: Path) -> set[str]:
    """The dualkit layers a module imports (top-level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in LAYERS[:-1]:
                found.add(f"bare:{parts[0]}")  # `import core` outside the dualkit package: two module identities
            elif parts[0] == "dualkit":
                found.add(parts[1] if len(parts) > 1 and parts[1] in LAYERS[:-1] else "dualkit")
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_one_way(layer):
    bad = []
    for path in sorted((REPO / layer).rglob("*.py")):
        for imported in _imports(path) - ALLOWED[layer]:
            bad.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_tests_import_the_installed_names_only():
    bad = [
        f"{p.relative_to(REPO)}"
        for p in (REPO / "tests").rglob("*.py")
        if any(i.startswith("bare:") for i in _imports(p))
    ]
    assert not bad, bad


def test_no_task_branches_outside_the_registry():
    """Nothing dispatches on a task's name: the CLI, the benchmarks and the loop ask the task registry."""
    pattern = re.compile(r"""\btask\s*(==|!=|in)\s*\(?["']|["'](classify|masked|dqn)["']\s*(==|!=)\s*\w*task""")
    bad = []
    for layer in ("core", "backends", "tasks", "benchmarks", "dualkit"):
        for path in (REPO / layer).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_every_registered_task_implements_the_protocol():
    from dualkit.tasks import registry
    from dualkit.tasks.base import Task

    for name in registry.TASKS:
        task = registry.get(name)
        assert isinstance(task, Task) and task.name == name
        assert task.spec_class().task == name  # the spec class registered under the same name
        for method in ("train", "resume", "show", "evaluate", "parity", "bench_parity", "bench_l5", "bench_run"):
            assert getattr(type(task), method) is not getattr(Task, method), f"{name} lacks {method}"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path):
    """`pip install .` puts exactly one top-level package, dualkit, in site-packages (with its presets)."""
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to setup.cfg
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "runs", "bench-results", "__pycache__", ".pytest_cache"
        ),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("dualkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dualkit"}, tops
    for needed in (
        "dualkit/cli.py",
        "dualkit/core/specs.py",
        "dualkit/backends/torch/__init__.py",
        "dualkit/tasks/registry.py",
        "dualkit/tasks/presets/cnn-digits.toml",
        "dualkit/benchmarks/suite.py",
    ):
        assert needed in names, needed
