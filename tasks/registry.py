"""The task registry: a spec's ``task`` -> its :class:`~dualkit.tasks.base.Task`.

Registering a task is one line in :data:`TASKS`: its name and the module that defines ``TASK`` (an instance of
a Task subclass) and, by importing its spec module, registers its spec class with core.specs.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from dualkit.core.errors import DualkitError
from dualkit.tasks.base import Task

TASKS: dict[str, str] = {
    "classify": "dualkit.tasks.classify_task",
    "masked": "dualkit.tasks.masked_task",
    "dqn": "dualkit.tasks.dqn_task",
    "mlm": "dualkit.tasks.mlm_task",
    "tag": "dualkit.tasks.tag_task",
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise DualkitError(f"task={name!r} is not one of: {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def load_all() -> list[Task]:
    """Every registered task (which also registers every task's spec class)."""
    return [get(name) for name in TASKS]


def for_spec(spec: object) -> Task:
    return get(spec.task)


def for_run(run_dir: Path) -> Task:
    """The task of a run folder, from its spec.json. A folder without a readable one is left to the
    classifier (the oldest run folders have no ``task``), whose checks then say what is wrong."""
    try:
        raw = json.loads((Path(run_dir) / "spec.json").read_text())
        name = raw.get("task", "classify") if isinstance(raw, dict) else "classify"
    except (OSError, ValueError):
        name = "classify"
    if not (isinstance(name, str) and name in TASKS):  # a hand-edited spec.json: no task's checks would name it
        raise DualkitError(
            f"{Path(run_dir) / 'spec.json'} names task={name!r}, which is not one of: {', '.join(TASKS)}; "
            "the run folder is damaged (restore spec.json from a copy)"
        )
    return get(name)
