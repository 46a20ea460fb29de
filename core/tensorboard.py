"""TensorBoard scalar event files for a run folder, written without importing either framework.

A run's events go to ``<run_dir>/tensorboard/`` (:data:`TB_DIR`), one ``events.out.tfevents.*`` file per
:class:`EventLog` (a resumed run adds a file beside the first; TensorBoard reads them as one run). Point
TensorBoard at the folder of runs and each run shows under its folder name::

    tensorboard --logdir runs/

Each :meth:`EventLog.scalars` call is one event at ``step`` holding every number of the mapping, tagged
``prefix + name`` (``prefix="epoch/"`` puts ``epoch/loss`` in TensorBoard's ``epoch`` group). TensorBoard
stores scalars as float32, so a value reads back rounded to float32.

The files are written by ``tensorboardX`` (a dependency of dualkit), whose synchronous ``EventsWriter`` is
used: an event is in the file's buffer when ``scalars`` returns, on disk after :meth:`EventLog.flush`,
:meth:`EventLog.close`, or at the first ``scalars`` call ``flush_secs`` after the last flush.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from dualkit.core.runs import TB_DIR

_import_lock = threading.Lock()
_file_numbers = itertools.count()  # makes event file names unique within a process (see EventLog.__init__)


def event_dir(run_dir: Path | str) -> Path:
    """The folder that holds a run's TensorBoard event files."""
    return Path(run_dir) / TB_DIR


def _tensorboardx() -> tuple[ModuleType, ModuleType, ModuleType]:
    """tensorboardX's event writer and protobuf modules, imported without importing torch.

    ``tensorboardX/__init__`` imports its ``SummaryWriter`` module, which runs ``import torch`` when torch is
    installed, only to widen a type hint. Core imports no framework (and loading torch costs seconds), so
    while tensorboardX is first imported, ``sys.modules["torch"] = None`` makes that import fail as if torch
    were absent; the entry is removed again right after, so a later ``import torch`` works as usual. Nothing
    tensorboardX does for scalars needs torch.
    """
    with _import_lock:
        blocked = "tensorboardX" not in sys.modules and "torch" not in sys.modules
        if blocked:
            sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            from tensorboardX import event_file_writer
            from tensorboardX.proto import event_pb2, summary_pb2
        finally:
            if blocked and sys.modules.get("torch", 0) is None:
                del sys.modules["torch"]
    return event_file_writer, event_pb2, summary_pb2


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (Python or numpy); else None.

    A bool is not a metric (numpy's bool is not a ``numbers.Real``; Python's is, hence the explicit test)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class EventLog:
    """Writes TensorBoard scalar events into ``<run_dir>/tensorboard/``.

    ``enabled=False`` writes nothing and imports nothing (every method is then a no-op), so a caller needs no
    branches. Use it as a context manager, or call :meth:`close` at the end. Writing after ``close`` is an
    error. One EventLog per run folder at a time (as with the run folder's other files).
    """

    def __init__(self, run_dir: Path | str, enabled: bool = True, *, flush_secs: float = 10.0) -> None:
        self.enabled = enabled
        self.path = event_dir(run_dir)
        self.flush_secs = flush_secs
        self._writer: Any = None
        self._closed = False
        if not enabled:
            return
        event_file_writer, self._event_pb2, self._summary_pb2 = _tensorboardx()
        self.path.mkdir(parents=True, exist_ok=True)
        # tensorboardX names a file by the second and host only; a resumed run (or a second writer in the
        # same second) would overwrite the first file, so the process id and a counter go into the name.
        suffix = f".{os.getpid()}.{next(_file_numbers)}"
        self._writer = event_file_writer.EventsWriter(str(self.path / "events"), filename_suffix=suffix)
        self._last_flush = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> int:
        """Write the finite numbers of ``values`` as scalars at ``step``, tagged ``prefix + name``.

        Values that are not real numbers (strings, lists, None, bools, tensors) or not finite (NaN, inf) are
        skipped. Returns how many scalars were written.
        """
        if self._closed:
            raise ValueError(f"EventLog {self.path} is closed")
        if not self.enabled:
            return 0
        summary = self._summary_pb2.Summary()
        for name, value in values.items():
            number = _number(value)
            if number is not None:
                summary.value.add(tag=f"{prefix}{name}", simple_value=number)
        if not summary.value:
            return 0
        event = self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._writer.write_event(event)
        if time.monotonic() - self._last_flush >= self.flush_secs:
            self.flush()  # so a TensorBoard that watches a long run sees it progress
        return len(summary.value)

    def flush(self) -> None:
        """Put every event written so far on disk."""
        if self._writer is not None and not self._closed:
            self._writer.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the event file; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
