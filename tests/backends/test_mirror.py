"""The two backend packages mirror each other (docs DESIGN.md): twin modules ``backends/torch/x.py`` and
``backends/tf/x.py`` define the same public functions and classes, and the classes the same public methods,
in the same order, with the same parameters (names, kinds, defaults; annotations may name each framework's
own types). The packages export the same ``__all__``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from types import ModuleType

import pytest

from dualkit.core import registry

PACKAGES = {name: f"dualkit.backends.{name}" for name in ("torch", "tf")}


def module_names(package: str) -> list[str]:
    """The package's module files (``__init__`` included), found without importing any framework."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return ["__init__", *sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations))]


ALL_MODULES = sorted(set(module_names(PACKAGES["torch"])) | set(module_names(PACKAGES["tf"])))


def load_backends() -> dict[str, ModuleType]:
    """Both backend packages, through the registry (torch is imported before TensorFlow)."""
    missing = [registry.BACKENDS[name][1] for name in PACKAGES if not registry.is_installed(name)]
    if missing:
        pytest.skip(f"the mirror check needs both frameworks; not installed: {', '.join(missing)}")
    return {name: registry.get_backend(name) for name in PACKAGES}


def import_twin(backend: str, module: str) -> ModuleType:
    package = PACKAGES[backend]
    return importlib.import_module(package if module == "__init__" else f"{package}.{module}")


def parameters(obj: object) -> list[tuple[str, str, object]]:
    """(name, kind, default) of every parameter; a class's are its constructor's, without ``self``."""
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(obj).parameters.values()]


def public_surface(module: ModuleType) -> list[tuple[str, list[tuple[str, str, object]]]]:
    """Each public function and class defined in ``module`` (not imported into it), in definition order,
    then each public method of each class, as ("name" or "Class.method", parameters)."""
    out = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if obj.__module__ != module.__name__:
            continue
        out.append((name, parameters(obj)))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                if isinstance(fn, property):
                    out.append((f"{name}.{attr}", []))
                elif callable(fn):
                    out.append((f"{name}.{attr}", parameters(fn)))
    return out


def test_every_module_has_its_twin():
    torch_modules, tf_modules = module_names(PACKAGES["torch"]), module_names(PACKAGES["tf"])
    assert torch_modules == tf_modules, (
        f"only in backends/torch: {sorted(set(torch_modules) - set(tf_modules))}; "
        f"only in backends/tf: {sorted(set(tf_modules) - set(torch_modules))}"
    )


@pytest.mark.parametrize("module", ALL_MODULES)
def test_twin_modules_have_the_same_public_names_and_signatures(module):
    load_backends()
    surfaces = {backend: public_surface(import_twin(backend, module)) for backend in PACKAGES}
    names = {backend: [name for name, _ in surface] for backend, surface in surfaces.items()}
    assert names["torch"] == names["tf"], f"{module}: public names differ (torch vs tf, in order)"
    for (name, torch_params), (_, tf_params) in zip(surfaces["torch"], surfaces["tf"]):
        assert torch_params == tf_params, f"{module}.{name}: parameters differ (torch vs tf)"


def test_packages_export_the_same_api():
    backends = load_backends()
    assert backends["torch"].__all__ == backends["tf"].__all__
    for name in backends["torch"].__all__:
        for backend in backends.values():
            assert hasattr(backend, name), f"{backend.__name__} exports {name!r} but has no such attribute"
