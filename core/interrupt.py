"""SIGINT/SIGTERM as a request to stop at the next safe point, so a driver can checkpoint first.

    with StopSignal() as stop:
        for batch in batches:
            train_step(batch)
            if stop.requested:
                path = write_checkpoint()
                raise stop.interrupted(f"checkpoint {path}; continue with: dualkit train --resume RUN")

The first signal only sets ``requested`` (and says so on stderr); a second one gives up waiting and
raises KeyboardInterrupt at once. Handlers are installed only in the main thread (Python allows no
other) and the previous ones are put back on exit.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from dualkit.core.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    def __init__(self, enabled: bool = True, what: str = "finishing the current step and writing a checkpoint"):
        self.enabled = enabled
        self.what = what
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # a second signal: stop waiting for the safe point
        self.signum = signum
        print(
            f"\ndualkit: {self.name} received; {self.what} (send it again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def interrupted(self, message: str) -> Interrupted:
        """The error to raise once the checkpoint is written; its exit code is 128 + the signal number."""
        return Interrupted(f"training stopped by {self.name}: {message}", exit_code=128 + int(self.signum or 0))
