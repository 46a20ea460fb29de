"""Test helpers for run folders shared by the resume tests of every task: a byte snapshot of a folder,
and a real SIGINT delivered after the n-th call of a backend method (the training step)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def sigint_after(monkeypatch, cls: type, method: str, n: int) -> Callable[[], None]:
    """Patch ``cls.method`` to send this process a real SIGINT right after its ``n``-th call; returns
    the function that puts the original back."""
    real = getattr(cls, method)
    calls = {"n": 0}

    def wrapped(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(cls, method, wrapped)
    return lambda: monkeypatch.setattr(cls, method, real)
