"""Presets: declarative TOML run specs, loaded by name (``dualkit train cnn-digits``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualkit.core.errors import SpecError
from dualkit.core.specs import apply_overrides, load_toml

PRESET_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load(name: str, overrides: list[str] | None = None) -> Any:
    """The preset ``name`` (or a path to a TOML file) with ``--set`` overrides applied."""
    path = Path(name)
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESET_DIR / f"{name}.toml"
        if not path.is_file():
            raise SpecError(
                f"unknown task preset {name!r}; available: {', '.join(names())} (or a path to a .toml file)"
            )
    from dualkit.tasks import registry

    registry.load_all()  # every task's spec class, so that the preset's `task` is known
    return apply_overrides(load_toml(path), overrides or [])
