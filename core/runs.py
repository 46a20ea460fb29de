"""Run folders, atomic writes and metric logs."""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dualkit.core.errors import RunError

SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
MODEL_FILE = "model.safetensors"
_UMASK = os.umask(0)
os.umask(_UMASK)
RUN_FILES = (SPEC_FILE, METRICS_FILE, RESULT_FILE, MODEL_FILE)
CHECKPOINT_DIR = "checkpoints"  # run checkpoints for resuming (core.runstate)
TB_DIR = "tensorboard"  # TensorBoard event files (core.tensorboard)
LOCK_FILE = ".dualkit.lock"  # held by the one process writing the run folder (RunLock)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error naming the file the user asked for: a write on a full disk names no file, and the temp
    file (``.NAME.xxxx.tmp``) that mkstemp or the rename names is gone and means nothing to the user."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))  # OSError(errno, ...) is the errno's subclass again


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def is_run_dir(path: Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def default_run_dir(preset: str, backend: str, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{preset}-{backend}-{stamp}"
    n = 1
    while path.exists():  # two runs started in the same second
        n += 1
        path = root / f"{preset}-{backend}-{stamp}-{n}"
    return path


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create a run folder; refuse one that already holds a run unless ``overwrite`` is given.

    With ``overwrite`` only the files a run writes are removed; anything else the user keeps there stays.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"{path} exists and is not a folder; choose another --out")
    if path.is_dir():
        present = [name for name in RUN_FILES if (path / name).exists()]
        ckpt_dir = path / CHECKPOINT_DIR
        if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
            present.append(CHECKPOINT_DIR + "/")
        events = sorted((path / TB_DIR).glob("events.out.tfevents.*"))
        if events:
            present.append(TB_DIR + "/")
        if present and not overwrite:
            raise RunError(
                f"{path} already holds a run ({', '.join(present)}); "
                "choose another --out, pass --resume to continue it, or pass --overwrite to replace it"
            )
        for name in present:
            if name in RUN_FILES:
                (path / name).unlink()
        if ckpt_dir.is_dir():  # an old run's checkpoints must never be resumed as the new run's
            for p in ckpt_dir.iterdir():
                if p.is_file() and p.name.startswith(("ckpt-", ".ckpt-")):
                    p.unlink()
        for p in events:  # an old run's curves would be drawn beside the new run's
            p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_run_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist")
    if not is_run_dir(path):
        raise RunError(f"{path} is not a dualkit run folder (no {SPEC_FILE}); pass a folder written by `dualkit train`")
    return path


class MetricLog:
    """Append-only JSONL log: one complete line per record, flushed, so a crash loses at most one line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise _naming(exc, self.path) from None  # a full disk's write names no file

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``RUN/.dualkit.lock``, held while a run trains,
    resumes or overwrites the folder. The operating system releases it when the process ends, however it ends
    (``kill -9`` included), so a lock is never stale. The file names the holder (pid, host, start time,
    command) for the message a second writer gets."""

    def __init__(self, run_dir: Path, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.create = create
        self._fd: int | None = None
        self._made_dir = False

    def __enter__(self) -> RunLock:
        import fcntl

        path = self.run_dir
        if not self.create and not path.is_dir():
            return self  # nothing to lock: what is there is left to the caller's own checks (e.g. a resume's)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a folder; choose another --out")
        self._made_dir = not path.exists()
        while True:
            try:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if self._made_dir and path.is_dir() and not any(path.iterdir()):
                    path.rmdir()  # the folder this lock just made goes again
                raise RunError(f"cannot write the run folder {path}: {exc.strerror}; choose another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise RunError(
                    f"{path} is being written by another dualkit process ({_describe(holder)}); wait for "
                    "it to finish or stop it, or choose another --out"
                ) from None
            try:  # the file locked must still be the one at the path (a finishing writer removes its own)
                if os.stat(path / LOCK_FILE).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv)[:500],
                }
            ).encode(),
        )
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # releases the lock
        self._fd = None
        lock = self.run_dir / LOCK_FILE
        lock.unlink(missing_ok=True)
        if self._made_dir and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # a run refused before it wrote anything leaves no folder behind


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, since {info['started']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "its lock file names no holder"


F = TypeVar("F", bound=Callable[..., Any])


def one_writer(fn: F | None = None, *, create: bool = True) -> Any:
    """Decorate a function with a ``run_dir`` parameter: while it runs, it holds the run folder's :class:`RunLock`
    (nothing is locked when ``run_dir`` is None). ``create=False`` (resume) locks only a folder that exists."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            run_dir = signature.bind_partial(*args, **kwargs).arguments.get("run_dir")
            if run_dir is None:
                return fn(*args, **kwargs)
            with RunLock(Path(run_dir), create=create):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate
