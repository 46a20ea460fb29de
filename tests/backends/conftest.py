"""The ``backend`` fixture: each backend test runs once per framework, on the same assertions.

A test that checks one framework's own artifact or internals says so with
``@pytest.mark.backend_only("torch", reason=...)``; it is skipped, with that reason, for the other one.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from dualkit.core import registry

BACKENDS = ("torch", "tf")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backend_only(name, reason): a backend test that applies to that framework only")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    """The backend package, through the registry (which imports torch before TensorFlow in one process)."""
    name = request.param
    only = request.node.get_closest_marker("backend_only")
    if only is not None and only.args[0] != name:
        pytest.skip(f"{only.args[0]} only: {only.kwargs['reason']}")
    if not registry.is_installed(name):
        pytest.skip(f"{registry.BACKENDS[name][1]} is not installed")
    return registry.get_backend(name)
