"""Run folders, atomic writes and metric logs."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
