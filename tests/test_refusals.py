"""The catalogue of bad inputs and faults (issue 15): every mistake a user can make, and every fault the file system
or the operating system can throw at a run, gets the exit code it should (2 for a user's error, 128 + the signal
for SIGINT/SIGTERM), a message with the key words that name the problem and the fix, no traceback, one line where
one line is promised, and leaves every file the user had exactly as it was (each file under the case's folder is
hashed before and after; a refused run leaves no new file either, except where a case says which).

The table runs the command line in this process (``dualkit.cli.main``), which is fast; the few cases where a
process boundary matters (signals, two writers, a lock held by another process, environment variables read when a
framework is first imported) run ``python -m dualkit`` or a helper process, with timeouts, killed in ``finally``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import dualkit.core.datasets
import dualkit.core.runs
from dualkit.cli import main
from dualkit.core import registry

REPO = Path(__file__).resolve().parents[1]
HAS_TORCH = registry.is_installed("torch")
LINUX = sys.platform.startswith("linux")

# A tiny training: 64 digits, one epoch (2 steps). Cases that must be refused before training never get that far.
TRAIN = ("train", "cnn-digits", "--backend", "torch", "--quiet", "--set", "train.epochs=1")
TINY = ("--set", "data.limit_train=64")
OUT = ("--out", "{ws}/out")
DQN_TINY = (
    "dqn.total_steps=200",
    "dqn.learning_starts=50",
    "dqn.eval_every=100",
    "dqn.eval_episodes=1",
    "dqn.test_episodes=1",
    "env.num_envs=2",
)


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


# --------------------------------------------------------------------------- shared trained runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Three finished runs, trained once for the module and copied into each case that needs one: a classifier
    (1 epoch, 64 images: checkpoints at steps 0 and 2), the same with no validation split, and a tiny DQN agent."""
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed")
    root = tmp_path_factory.mktemp("trained")
    runs = {
        "run": [*TRAIN, *TINY],
        "nval": [*TRAIN, *TINY, "--set", "data.val_fraction=0"],
        "dqn": ["train", "dqn-cartpole", "--backend", "torch", "--quiet", *(a for s in DQN_TINY for a in ("--set", s))],
    }
    for name, argv in runs.items():
        assert main([*argv, "--out", str(root / name)]) == 0, name
    return {name: root / name for name in runs}


# --------------------------------------------------------------------------- what a case checks


def hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its sha256, and every folder (as ``name/``): equal means nothing changed."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir():
            out[rel + "/"] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_untouched(before: dict[str, str], after: dict[str, str], new: tuple[str, ...] = ()) -> None:
    """Every pre-existing file is there with the same bytes; a new path is allowed only where ``new`` says."""
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"changed or removed: {changed}"
    added = [p for p in after if p not in before and not any(fnmatch.fnmatch(p.rstrip("/"), g) for g in new)]
    assert not added, f"new files: {added}"


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a bad option value itself: usage, one error line, exit 2
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_message(err: str, needles: tuple[str, ...], one_line: bool = True, argparse: bool = False) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no message on stderr"
    if argparse:  # "usage: ..." lines, then "dualkit CMD: error: argument ...: ..."
        assert lines[0].startswith("usage: dualkit") and ": error: argument " in lines[-1], err
        assert not any("error" in line for line in lines[:-1]), err
    else:
        assert err.startswith("dualkit: error: "), err
        if one_line:
            assert len(lines) == 1, f"not one line:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"


# --------------------------------------------------------------------------- things a case plants


def planted_pickle(marker: Path, how: str = "system") -> bytes:
    """A CIFAR-10-shaped pickle whose data carries a ``__reduce__`` that creates ``marker`` when unpickled."""

    class Plant:
        def __reduce__(self):
            if how == "system":
                return (os.system, (f"touch {marker}",))
            return (eval, (f"open({str(marker)!r}, 'w').close()",))

    # protocol 2 as the official files (Python 2's); 4 as a file pickled again by Python 3 (names builtins.eval)
    return pickle.dumps({b"data": Plant(), b"labels": [0]}, protocol=2 if how == "system" else 4)


def cifar_py(ws: Path, *, plant: str = "", records: int = 10) -> Path:
    """A ``cifar-10-batches-py`` folder under ``ws/cifar``: tiny valid batches of ``records`` images (the test
    shrinks CIFAR_RECORDS_PER_FILE to match) with ``plant`` ("data", "meta" or "list") replaced by a bad pickle."""
    folder = ws / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"data": np.zeros((records, 3072), np.uint8), b"labels": [i % 10 for i in range(records)]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    if plant == "data":
        (folder / "data_batch_1").write_bytes(planted_pickle(ws / "PWNED"))
    elif plant == "meta":
        (folder / "batches.meta").write_bytes(planted_pickle(ws / "PWNED", how="eval"))
    elif plant == "list":
        (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    return folder


def cifar_bin_truncated(ws: Path) -> None:
    folder = ws / "cifar" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(b"\0" * 100)
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")


def idx_files(ws: Path, *, size: int = 8, top_label: int = 9, truncate: bool = False, drop: str = "") -> None:
    """MNIST-layout IDX files under ``ws/idx``: 40 training and 20 test images of ``size`` x ``size``, labels
    cycling 0..top_label; ``truncate`` cuts the training images short, ``drop`` leaves one file out."""
    folder = ws / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def write(name: str, n: int) -> None:
        images = struct.pack(">IIII", 2051, n, size, size) + rng.integers(0, 256, n * size * size, np.uint8).tobytes()
        labels = struct.pack(">II", 2049, n) + bytes(i % (top_label + 1) for i in range(n))
        (folder / f"{name}-images-idx3-ubyte").write_bytes(images[:-5] if truncate else images)
        (folder / f"{name}-labels-idx1-ubyte").write_bytes(labels)

    write("train", 40)
    write("t10k", 20)
    if drop:
        (folder / drop).unlink()


IDX = ("--set", "data.name=idx", "--set", "data.root={ws}/idx")
CIFAR = ("--set", "data.name=cifar10", "--set", "data.root={ws}/cifar")


def damage_spec(run: str, text: str) -> Callable[[Path], None]:
    return lambda ws: (ws / run / "spec.json").write_text(text)


def copy_spec(src: str, dst: str) -> Callable[[Path], None]:
    return lambda ws: shutil.copy(ws / src / "spec.json", ws / dst / "spec.json")


def junk(*paths: str) -> Callable[[Path], None]:
    def plant(ws: Path) -> None:
        for rel in paths:
            for p in ws.glob(rel):
                p.write_bytes(b"junk: not safetensors")

    return plant


def write_file(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def plant(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            (ws / rel).write_bytes(data)
        else:
            (ws / rel).write_text(data)

    return plant


def make_dir(rel: str) -> Callable[[Path], None]:
    return lambda ws: (ws / rel).mkdir(parents=True)


# --------------------------------------------------------------------------- faults the file system throws


class _Module:
    """A module as dualkit.core.runs sees it, with some functions replaced (every other name is the real one)."""

    def __init__(self, module, **replaced: Callable) -> None:
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def full_disk(where: str = "") -> Callable[[pytest.MonkeyPatch, Path], None]:
    """Every write under the case's folder whose path contains ``where`` fails as a full disk fails: fsync
    (where delayed allocation reports it) raises ENOSPC and names no file."""

    def patch(monkeypatch: pytest.MonkeyPatch, ws: Path) -> None:
        def fsync(fd: int) -> None:
            path = _fd_path(fd)
            if path.startswith(str(ws)) and where in path:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)

        monkeypatch.setattr(dualkit.core.runs, "os", _Module(os, fsync=fsync))

    return patch


def refuse_writes(code: int, under: str) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """The folder ``ws/under`` refuses new files with ``code`` (EROFS: a read-only file system; EACCES: not
    allowed). The tests run as root, which chmod does not stop, so the refusal is the file system's answer."""

    def patch(monkeypatch: pytest.MonkeyPatch, ws: Path) -> None:
        root = str(ws / under)

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            if str(path).startswith(root) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
                raise OSError(code, os.strerror(code), str(path))
            return os.open(path, flags, mode, dir_fd=dir_fd)

        def mkstemp(suffix=None, prefix=None, dir=None, text=False):
            if str(dir).startswith(root):
                raise OSError(code, os.strerror(code), f"{dir}/{prefix}XXXXXX{suffix}")
            return tempfile.mkstemp(suffix, prefix, dir, text)

        monkeypatch.setattr(dualkit.core.runs, "os", _Module(os, open=open_))
        monkeypatch.setattr(dualkit.core.runs, "tempfile", _Module(tempfile, mkstemp=mkstemp))

    return patch


def nan_at_step(n: int) -> Callable[[pytest.MonkeyPatch, Path], None]:
    """The PyTorch classifier's ``n``-th training step returns a nan loss (the model's update diverged)."""

    def patch(monkeypatch: pytest.MonkeyPatch, ws: Path) -> None:
        cls = registry.get_backend("torch").Classifier
        real, calls = cls.train_step, {"n": 0}

        def train_step(self, *args, **kwargs):
            loss = real(self, *args, **kwargs)
            calls["n"] += 1
            return float("nan") if calls["n"] == n else loss

        monkeypatch.setattr(cls, "train_step", train_step)

    return patch


def small_cifar(monkeypatch: pytest.MonkeyPatch, ws: Path) -> None:
    monkeypatch.setattr(dualkit.core.datasets, "CIFAR_RECORDS_PER_FILE", 10)


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{ws}" is the case's folder; trained runs are copied to {ws}/run, {ws}/nval, {ws}/dqn
    needles: tuple[str, ...]  # key words of the message
    code: int = 2
    runs: tuple[str, ...] = ()  # trained runs to copy into the folder
    setup: Callable[[Path], None] | None = None  # plants the user's files (hashed after it)
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None  # the fault, applied after the hashing
    new: tuple[str, ...] = ()  # globs (relative to the folder) of paths a refused run may leave
    one_line: bool = True
    argparse: bool = False  # refused by argparse: usage lines, then the error line
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (what a planted file would create)
    backend: bool = False  # needs PyTorch (the trained fixture needs it anyway)


C = Case
CASES: list[Case] = [
    # -- code in data files: nothing a user's pickle asks for runs
    C(
        "planted-pickle-data-batch",
        (*TRAIN, *CIFAR, *OUT),
        ("data_batch_1", "asks to run posix.system", "refused without running it"),
        setup=lambda ws: cifar_py(ws, plant="data"),
        absent=("PWNED",),
        backend=True,
    ),
    C(
        "planted-pickle-meta",
        (*TRAIN, *CIFAR, *OUT),
        ("batches.meta", "asks to run builtins.eval", "refused without running it"),
        setup=lambda ws: cifar_py(ws, plant="meta"),
        patch=small_cifar,
        absent=("PWNED",),
        backend=True,
    ),
    C(
        "cifar-pickle-not-a-dict",
        (*TRAIN, *CIFAR, *OUT),
        ("data_batch_1", "not a CIFAR-10 pickle", "list"),
        setup=lambda ws: cifar_py(ws, plant="list"),
        backend=True,
    ),
    C(
        "cifar-bin-truncated",
        (*TRAIN, *CIFAR, *OUT),
        ("data_batch_1.bin", "has 100 bytes", "truncated", "re-extract"),
        setup=cifar_bin_truncated,
        backend=True,
    ),
    C(
        "cifar-missing",
        (*TRAIN, *CIFAR, *OUT),
        ("CIFAR-10 not found", "cifar-10-batches-bin", "data.root"),
        one_line=False,  # lists every place it looked, one per line
        backend=True,
    ),
    # -- broken IDX files
    C(
        "idx-labels-beyond-num-classes",
        (*TRAIN, *IDX, *OUT),
        ("model.num_classes=10", "go up to 11", "set model.num_classes=12"),
        setup=lambda ws: idx_files(ws, top_label=11),
        backend=True,
    ),
    C(
        "idx-too-many-pooling-blocks",
        (*TRAIN, *IDX, "--set", "model.channels=[8,8,8]", *OUT),
        ("model.channels has 3 blocks", "4x4 images", "at most 2"),
        setup=lambda ws: idx_files(ws, size=4),
        backend=True,
    ),
    C(
        "idx-truncated",
        (*TRAIN, *IDX, *OUT),
        ("train-images-idx3-ubyte", "truncated or corrupt"),
        setup=lambda ws: idx_files(ws, truncate=True),
        backend=True,
    ),
    C(
        "idx-file-missing",
        (*TRAIN, *IDX, *OUT),
        ("is missing t10k-labels-idx1-ubyte",),
        setup=lambda ws: idx_files(ws, drop="t10k-labels-idx1-ubyte"),
        backend=True,
    ),
    C("idx-without-root", (*TRAIN, "--set", "data.name=idx", *OUT), ("data.name=idx needs", "data.root=PATH")),
    # -- specs that validate but could not train: refused before any file is written
    C(
        "digits-num-classes-5",
        (*TRAIN, "--set", "model.num_classes=5", *OUT),
        ("model.num_classes=5", "go up to 9", "model.num_classes=10"),
        backend=True,
    ),
    C(
        "digits-too-many-pooling-blocks",
        (*TRAIN, "--set", "model.channels=[8,8,8,8]", *OUT),
        ("4 blocks", "8x8 images", "at most 3 entries in model.channels"),
        backend=True,
    ),
    C("optim-eps-zero", (*TRAIN, "--set", "optim.eps=0", *OUT), ("optim.eps must be > 0", "got 0.0")),
    C("optim-eps-negative", (*TRAIN, "--set", "optim.eps=-1e-8", *OUT), ("optim.eps must be > 0",)),
    C("optim-eps-inf", (*TRAIN, "--set", "optim.eps=inf", *OUT), ("optim.eps=inf", "not a finite number")),
    C("optim-lr-inf", (*TRAIN, "--set", "optim.lr=inf", *OUT), ("optim.lr=inf", "not a finite number")),
    C("optim-lr-nan", (*TRAIN, "--set", "optim.lr=nan", *OUT), ("optim.lr=nan", "not a finite number")),
    C("optim-lr-zero", (*TRAIN, "--set", "optim.lr=0", *OUT), ("optim.lr must be > 0",)),
    C(
        "eval-batch-size-zero",
        (*TRAIN, "--set", "train.eval_batch_size=0", *OUT),
        ("train.eval_batch_size must be >= 1", "got 0"),
    ),
    C(
        "warmup-negative",
        (*TRAIN, "--set", "schedule.warmup_steps=-1", *OUT),
        ("schedule.warmup_steps must be >= 0", "got -1"),
    ),
    C("limit-train-negative", (*TRAIN, "--set", "data.limit_train=-1", *OUT), ("data.limit_train must be >= 0",)),
    C("epochs-zero", (*TRAIN, "--set", "train.epochs=0", *OUT), ("train.epochs", ">= 1")),
    C("batch-size-zero", (*TRAIN, "--set", "train.batch_size=0", *OUT), ("train.batch_size must be >= 1",)),
    C("num-classes-one", (*TRAIN, "--set", "model.num_classes=1", *OUT), ("model.num_classes must be >= 2",)),
    C("val-fraction-one", (*TRAIN, "--set", "data.val_fraction=1.0", *OUT), ("data.val_fraction must be in [0, 1)",)),
    C("dropout-out-of-range", (*TRAIN, "--set", "model.dropout=1.5", *OUT), ("model.dropout",)),
    C("seed-negative", (*TRAIN, "--set", "seed=-1", *OUT), ("seed must be >= 0",)),
    C("dtype-float16", (*TRAIN, "--set", 'dtype="float16"', *OUT), ("dtype='float16'", "float32, float64")),
    C("dataset-unknown", (*TRAIN, "--set", "data.name=foo", *OUT), ("data.name='foo'", "digits, cifar10, idx")),
    C("optimizer-unknown", (*TRAIN, "--set", "optim.name=rmsprop", *OUT), ("optim.name='rmsprop'", "adamw")),
    C(
        "nan-guard",
        (*TRAIN, *TINY, "--set", "optim.lr=1e30", *OUT),
        ("loss became nan", "no model was saved yet", "Lower optim.lr"),
        new=("out", "out/*"),  # the stopped run's folder (spec, step-0 checkpoint, events) is kept, as a record
        backend=True,
    ),
    C(
        "nan-guard-after-a-saved-model",
        (*TRAIN[:-1], "train.epochs=2", *TINY, *OUT),  # 2 steps an epoch: model.safetensors is saved after step 2
        ("loss became nan at step 3 (epoch 2)", "the last good model is {ws}/out/model.safetensors"),
        patch=nan_at_step(3),
        new=("out", "out/*"),
        backend=True,
    ),
    # -- unknown names and bad --set values
    C("preset-unknown", ("train", "nope", *OUT), ("unknown task preset 'nope'", "cnn-digits")),
    C("backend-unknown", (*TRAIN[:2], "--backend", "jax", *OUT), ("unknown backend 'jax'", "torch, tf")),
    C("device-unknown", (*TRAIN, "--device", "tpu", *OUT), ("--device", "'tpu'"), argparse=True),
    C("key-unknown", (*TRAIN, "--set", "optim.lrr=0.1", *OUT), ("unknown key optim.lrr", "optim.lr")),
    C("section-unknown", (*TRAIN, "--set", "optimizer.lr=0.1", *OUT), ("unknown key optimizer.lr", "valid keys")),
    C("value-not-a-number", (*TRAIN, "--set", "optim.lr=abc", *OUT), ("optim.lr", "expected a number")),
    C("value-not-an-integer", (*TRAIN, "--set", "train.epochs=1.5", *OUT), ("train.epochs", "expected an integer")),
    C("value-not-a-list", (*TRAIN, "--set", "model.channels=abc", *OUT), ("model.channels", "expected an integer")),
    C("value-not-a-bool", (*TRAIN, "--set", "model.batchnorm=yes", *OUT), ("model.batchnorm", "true or false")),
    C("set-without-equals", (*TRAIN, "--set", "optim", *OUT), ("bad override 'optim'", "section.key=value")),
    C("set-empty-key", (*TRAIN, "--set", "=3", *OUT), ("bad override '=3'", "the key is empty")),
    C("set-a-section", (*TRAIN, "--set", "optim=1", *OUT), ("optim is a section", "optim.<key>")),
    C("set-under-a-value", (*TRAIN, "--set", "optim.lr.x=1", *OUT), ("optim.lr is a value, not a section",)),
    C("train-without-preset", ("train", "--quiet", *OUT), ("name a preset to train", "--resume RUN")),
    C("pretrain-a-classifier", ("pretrain", "cnn-digits", *OUT), ("runs pretraining presets", "dualkit train")),
    C("init-from-missing", (*TRAIN, "--init-from", "{ws}/nothere", *OUT), ("{ws}/nothere", "does not exist")),
    # -- preset files
    C(
        "toml-syntax-error",
        ("train", "{ws}/bad.toml", *OUT),
        ("bad.toml is not valid TOML", "line 2", "fix the file"),
        setup=write_file("bad.toml", 'task = "classify"\n[optim\nlr = 0.1\n'),
    ),
    C(
        "toml-not-utf8",
        ("train", "{ws}/bin.toml", *OUT),
        ("bin.toml is not valid TOML", "not UTF-8", "save it as UTF-8"),
        setup=write_file("bin.toml", b"\xff\xfe\x00task"),
    ),
    C(
        "toml-unknown-task",
        ("train", "{ws}/t.toml", *OUT),
        ("task='nope'", "classify, dqn, masked, mlm, tag"),
        setup=write_file("t.toml", 'task = "nope"\n'),
    ),
    C(
        "toml-wrong-type",
        ("train", "{ws}/t.toml", *OUT),
        ("optim.lr", "expected a number", "'fast'"),
        setup=write_file("t.toml", '[optim]\nlr = "fast"\n'),
    ),
    C(
        "toml-a-folder",
        ("train", "{ws}/dir.toml", *OUT),
        ("unknown task preset", "dir.toml", "a path to a .toml file"),
        setup=make_dir("dir.toml"),
    ),
    # -- the file system says no (on output)
    C(
        "out-under-a-file",
        (*TRAIN, "--out", "{ws}/notes.txt/run"),
        ("cannot write the run folder", "notes.txt/run", "Not a directory", "choose another --out"),
    ),
    C("out-is-a-file", (*TRAIN, "--out", "{ws}/notes.txt"), ("notes.txt exists and is not a folder", "--out")),
    C(
        "port-out-under-a-file",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/notes.txt/model.pt"),
        ("notes.txt", "a file stands where a folder is needed"),
        runs=("run",),
    ),
    C(
        "port-out-onto-a-folder",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/model.pt", "--overwrite"),
        ("Is a directory: {ws}/model.pt", "a folder stands where a file is needed"),
        runs=("run",),
        setup=make_dir("model.pt"),
    ),
    C(
        "parity-json-onto-a-folder",
        ("parity", "cnn-digits", "--levels", "L0", "--dtype", "float32", "--seeds", "0", "--json", "{ws}"),
        ("--json {ws} is a folder", "name a file"),
    ),
    C(
        "full-disk-first-write",
        (*TRAIN, *TINY, *OUT),
        ("No space left on device: {ws}/out/spec.json", "free some space", "--out"),
        patch=full_disk(),
        backend=True,
    ),
    C(
        "full-disk-at-a-checkpoint",
        (*TRAIN, *TINY, *OUT),
        ("No space left on device: {ws}/out/checkpoints/ckpt-", "free some space"),
        patch=full_disk("/checkpoints/"),
        new=("out", "out/*"),  # what was written before the disk filled (spec.json); no temp file
        backend=True,
    ),
    C(
        "full-disk-port-keeps-the-old-artifact",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/model.pt", "--overwrite"),
        ("No space left on device: {ws}/model.pt", "free some space"),
        runs=("run",),
        setup=write_file("model.pt", b"the user's previous artifact"),
        patch=full_disk("model.pt"),
    ),
    C(
        "read-only-out-folder",
        (*TRAIN, *TINY, "--out", "{ws}/ro"),
        ("cannot write the run folder {ws}/ro", "Read-only file system", "choose another --out"),
        setup=write_file("ro/notes.txt", "mine"),
        patch=refuse_writes(errno.EROFS, "ro"),
        backend=True,
    ),
    C(
        "forbidden-out-folder",
        (*TRAIN, *TINY, "--out", "{ws}/ro"),
        ("cannot write the run folder {ws}/ro", "Permission denied", "choose another --out"),
        setup=write_file("ro/notes.txt", "mine"),
        patch=refuse_writes(errno.EACCES, "ro"),
        backend=True,
    ),
    C(
        "read-only-port-out",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/ro/model.pt"),
        ("Read-only file system: {ws}/ro/model.pt", "the file system is read-only"),
        runs=("run",),
        setup=make_dir("ro"),
        patch=refuse_writes(errno.EROFS, "ro"),
    ),
    # -- hand-damaged run folders
    *[
        C(
            f"spec-{kind}-{cmd}",
            argv,
            ("{ws}/run/spec.json", needle, "damaged"),
            runs=("run",),
            setup=damage_spec("run", text),
        )
        for kind, text, needle in (
            ("invalid-json", "{not json", "is not valid JSON"),
            ("a-list", "[1, 2]", "holds a list"),
            ("null", "null", "holds a NoneType"),
        )
        for cmd, argv in (
            ("eval", ("eval", "{ws}/run")),
            ("port", ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/m.pt")),
            ("resume", ("train", "--resume", "{ws}/run", "--set", "train.epochs=2")),
        )
    ],
    C(
        "spec-unknown-task-eval",
        ("eval", "{ws}/run"),
        ("{ws}/run/spec.json names task='nope'", "classify, masked, dqn, mlm, tag", "damaged"),
        runs=("run",),
        setup=damage_spec("run", '{"task": "nope"}'),
    ),
    C(
        "spec-task-a-list-resume",
        ("train", "--resume", "{ws}/run"),
        ("names task=[1]", "damaged"),
        runs=("run",),
        setup=damage_spec("run", '{"task": [1]}'),
    ),
    C(
        "spec-of-a-dqn-run-over-a-classifier",
        ("eval", "{ws}/run"),
        ("{ws}/run/model.safetensors holds a 'classifier' model", "says a DQN run", "different runs"),
        runs=("run", "dqn"),
        setup=copy_spec("dqn", "run"),
    ),
    C(
        "spec-of-a-classifier-over-a-dqn-run",
        ("port", "{ws}/dqn", "--to", "torch", "--out", "{ws}/m.pt"),
        ("{ws}/dqn/model.safetensors holds a 'dqn' model", "not the run's classifier", "different runs"),
        runs=("run", "dqn"),
        setup=copy_spec("run", "dqn"),
    ),
    C(
        "model-junk",
        ("eval", "{ws}/run"),
        ("model.safetensors is not a safetensors file",),
        runs=("run",),
        setup=junk("run/model.safetensors"),
    ),
    C(
        "model-missing",
        ("eval", "{ws}/run"),
        ("checkpoint {ws}/run/model.safetensors does not exist",),
        runs=("run",),
        setup=lambda ws: (ws / "run" / "model.safetensors").unlink(),
    ),
    C(
        "resume-every-checkpoint-junk",
        ("train", "--resume", "{ws}/run", "--set", "train.epochs=2"),
        ("no readable run checkpoint", "ckpt-000000002.safetensors", "ckpt-000000000.safetensors"),
        runs=("run",),
        setup=junk("run/checkpoints/ckpt-*"),
        one_line=False,  # one line per unreadable checkpoint, each naming why
    ),
    C(
        "resume-no-checkpoint",
        ("train", "--resume", "{ws}/run", "--set", "train.epochs=2"),
        ("holds no run checkpoint", "start it again"),
        runs=("run",),
        setup=lambda ws: shutil.rmtree(ws / "run" / "checkpoints"),
    ),
    # -- eval
    C(
        "eval-val-split-empty",
        ("eval", "{ws}/nval", "--split", "val"),
        ("val split", "is empty", "data.val_fraction=0.0", "--split test"),
        runs=("nval",),
    ),
    C("eval-episodes-negative", ("eval", "{ws}/dqn", "--episodes", "-3"), ("-3", ">= 1"), runs=("dqn",), argparse=True),
    C(
        "eval-episodes-zero",
        ("eval", "{ws}/dqn", "--episodes", "0"),
        ("0 is not", ">= 1"),
        runs=("dqn",),
        argparse=True,
    ),
    C("eval-seed-negative", ("eval", "{ws}/dqn", "--seed", "-5"), ("-5", ">= 0"), runs=("dqn",), argparse=True),
    C("eval-missing-folder", ("eval", "{ws}/nothere"), ("run folder {ws}/nothere does not exist",)),
    C("eval-not-a-run", ("eval", "{ws}"), ("is not a dualkit run folder", "spec.json")),
    C("eval-backend-unknown", ("eval", "{ws}/run", "--backend", "jax"), ("unknown backend 'jax'",), runs=("run",)),
    # -- port
    C(
        "port-out-exists",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/notes.pt"),
        ("notes.pt already exists", "--overwrite"),
        runs=("run",),
        setup=write_file("notes.pt", b"mine"),
    ),
    C(
        "port-wrong-suffix",
        ("port", "{ws}/run", "--to", "torch", "--out", "{ws}/m.keras"),
        ("must end in .pt", "m.keras"),
        runs=("run",),
    ),
    C("port-backend-unknown", ("port", "{ws}/run", "--to", "jax"), ("unknown backend 'jax'",), runs=("run",)),
    # -- bench and parity
    C("bench-compare-missing", ("bench", "--compare", "{ws}/a.json", "{ws}/b.json"), ("{ws}/a.json does not exist",)),
    C(
        "bench-compare-not-results",
        ("bench", "--compare", "{ws}/run/spec.json", "{ws}/run/result.json"),
        ("{ws}/run/spec.json: not a dualkit benchmark results file", "schema_version"),
        runs=("run",),
    ),
    C(
        "bench-compare-a-json-number",
        ("bench", "--compare", "{ws}/five.json", "{ws}/five.json"),
        ("five.json holds a JSON int", "not benchmark results"),
        setup=write_file("five.json", "5\n"),
    ),
    C("bench-compare-not-json", ("bench", "--compare", "{ws}/notes.txt", "{ws}/notes.txt"), ("notes.txt is not JSON",)),
    C("bench-compare-a-folder", ("bench", "--compare", "{ws}", "{ws}"), ("Is a directory", "choose a file name")),
    C("bench-full-without-data", ("bench", "--full", "--out", "{ws}/b"), ("--full trains on CIFAR-10", "--data-root")),
    C("bench-seeds-negative", ("bench", "--seeds", "-1", "--out", "{ws}/b"), ("-1", ">= 0"), argparse=True),
    C("parity-level-unknown", ("parity", "cnn-digits", "--levels", "L0,L9"), ("unknown parity level 'L9'", "L0, L1")),
    C("parity-seeds-negative", ("parity", "cnn-digits", "--seeds", "-1"), ("-1", ">= 0"), argparse=True),
    # -- resume refusals
    C("resume-missing", ("train", "--resume", "{ws}/nothere"), ("run folder {ws}/nothere does not exist",)),
    C("resume-not-a-run", ("train", "--resume", "{ws}"), ("is not a dualkit run folder", "spec.json")),
    C(
        "resume-another-tasks-run",
        ("train", "dqn-cartpole", "--resume", "{ws}/run"),
        ("is a 'classify' run", "preset 'dqn-cartpole' is a 'dqn' task"),
        runs=("run",),
    ),
    C(
        "resume-a-dqn-run-with-a-classifier-preset",
        ("train", "cnn-digits", "--resume", "{ws}/dqn"),
        ("is a 'dqn' run", "'classify' task"),
        runs=("dqn",),
    ),
    C(
        "resume-changed-lr",
        ("train", "--resume", "{ws}/run", "--set", "train.epochs=2", "--set", "optim.lr=0.1"),
        ("cannot resume: optim.lr was 0.003", "now 0.1", "Start a new run"),
        runs=("run",),
    ),
    C(
        "resume-changed-model",
        ("train", "--resume", "{ws}/run", "--set", "train.epochs=2", "--set", "model.channels=[4]"),
        ("cannot resume: model.channels", "Start a new run"),
        runs=("run",),
    ),
    C(
        "resume-dqn-changed-lr",
        ("train", "--resume", "{ws}/dqn", "--set", "dqn.total_steps=400", "--set", "optim.lr=0.1"),
        ("cannot resume: optim.lr", "dqn.total_steps"),
        runs=("dqn",),
    ),
    C(
        "resume-complete-run",
        ("train", "--resume", "{ws}/run", "--quiet"),
        ("is already complete", "--set train.epochs=N"),
        runs=("run",),
    ),
    C(
        "resume-with-out",
        ("train", "--resume", "{ws}/run", "--out", "{ws}/other"),
        ("--resume continues a run in its own folder", "drop --out"),
        runs=("run",),
    ),
    C(
        "resume-with-overwrite",
        ("train", "--resume", "{ws}/run", "--overwrite"),
        ("drop --out, --overwrite",),
        runs=("run",),
    ),
    C(
        "resume-backend-unknown",
        ("train", "--resume", "{ws}/run", "--backend", "jax"),
        ("unknown backend 'jax'",),
        runs=("run",),
    ),
    # -- one writer per run folder (the concurrent cases are below the table)
    C(
        "train-into-a-finished-run",
        (*TRAIN, *TINY, "--out", "{ws}/run"),
        ("already holds a run", "--resume", "--overwrite"),
        runs=("run",),
    ),
    # -- the transformer tasks (issue 16)
    C(
        "bert-heads-do-not-divide-hidden",
        ("pretrain", "bert-mlm-tiny", "--set", "model.heads=3", *OUT),
        ("model.hidden=64 must divide by model.heads=3", "choose heads among"),
    ),
    C(
        "bert-max-length-past-positions",
        ("train", "bert-tag-tiny", "--set", "data.max_length=999", *OUT),
        ("data.max_length=999 is longer than model.max_positions=64", "set data.max_length <= 64"),
    ),
    C(
        "conll-without-root",
        ("train", "bert-tag-tiny", "--set", "data.name=conll", *OUT),
        ("data.name=conll needs the folder of its files: --set data.root=FOLDER",),
    ),
    C(
        "text-without-root",
        ("pretrain", "bert-mlm-small", *OUT),
        ("data.name=text needs the folder of its .txt files: --set data.root=FOLDER",),
    ),
    C(
        "bert-init-from-missing",
        ("train", "bert-tag-tiny", "--init-from", "{ws}/nothere", *OUT),
        ("--init-from {ws}/nothere: no such folder", "Hugging Face BERT folder"),
        backend=True,
    ),
    C(
        "bert-init-from-a-classify-run",
        ("train", "bert-tag-tiny", "--init-from", "{ws}/run", *OUT),
        ("a 'classifier' run holds no transformer encoder", "mlm run folder or a Hugging Face BERT folder"),
        runs=("run",),
    ),
    C(
        "bert-init-from-for-mlm",
        ("train", "bert-mlm-tiny", "--init-from", "{ws}/run", *OUT),
        ("--init-from starts a tagger", "MLM pretraining starts from its own seeded init"),
        runs=("run",),
    ),
    C(
        "port-to-hf-of-a-classify-run",
        ("port", "{ws}/run", "--to", "hf"),
        ("'classify' run", "--to hf is for the transformer tasks' runs", "use --to torch or tf"),
        runs=("run",),
    ),
    C(
        "mlm-downstream-not-a-tag-preset",
        ("pretrain", "bert-mlm-tiny", "--set", "downstream.preset=cnn-digits", *OUT),
        ("downstream.preset='cnn-digits' is a 'classify' preset", "name a tag preset", "downstream.preset=''"),
        backend=True,
    ),
    C(
        "mlm-downstream-unknown-preset",
        ("pretrain", "bert-mlm-tiny", "--set", "downstream.preset=nothere", *OUT),
        ("unknown task preset 'nothere'", "bert-tag-tiny"),
        backend=True,
    ),
    C(
        "pretrain-a-tag-preset",
        ("pretrain", "bert-tag-tiny", *OUT),
        ("`dualkit pretrain` runs pretraining presets", "use `dualkit train bert-tag-tiny`"),
    ),
]


def _ids(cases: list[Case]) -> list[str]:
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return ids


@contextlib.contextmanager
def workspace(tmp_path: Path, runs: tuple[str, ...], request) -> Iterator[Path]:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("the user's own notes\n")
    if runs:
        trained = request.getfixturevalue("trained")
        for name in runs:
            shutil.copytree(trained[name], ws / name)
    yield ws


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_refused(case: Case, tmp_path, capsys, monkeypatch, request):
    if (case.backend or case.runs) and not HAS_TORCH:
        pytest.skip("PyTorch is not installed")
    if case.patch is not None and not LINUX:
        pytest.skip("the fault is simulated through /proc (Linux)")
    with workspace(tmp_path, case.runs, request) as ws:
        if case.setup is not None:
            case.setup(ws)
        before = hashes(ws)
        if case.patch is not None:
            case.patch(monkeypatch, ws)
        code, _, err = run_cli(capsys, [a.format(ws=ws) for a in case.argv])
        monkeypatch.undo()
        assert code == case.code, err
        assert_message(err, tuple(n.format(ws=ws) for n in case.needles), case.one_line, case.argparse)
        assert_untouched(before, hashes(ws), case.new)
        for rel in case.absent:
            assert not (ws / rel).exists(), f"{rel} was created: the planted file ran"
        assert not list(ws.rglob("*.tmp")), "a temp file was left behind"


def test_the_planted_pickle_is_live(tmp_path):
    """The plant would run if anything unpickled it plainly: the refusal above is the reader's, not a dud's."""
    marker = tmp_path / "ran"
    pickle.loads(planted_pickle(marker))
    assert marker.exists()


def test_the_catalogue_has_at_least_60_cases():
    # + signals (3), two writers, the --quiet warning, the DQN resume report, a real full and read-only file system
    assert len(CASES) + len(PROCESS_CASES) + len(HELD) + 8 >= 60


# --------------------------------------------------------------------------- a lock held by another process

HELD = [
    ("train-into-a-folder-being-written", (*TRAIN, *TINY, "--out", "{ws}/run")),
    ("overwrite-a-folder-being-written", (*TRAIN, *TINY, "--out", "{ws}/run", "--overwrite")),
    ("resume-a-folder-being-written", ("train", "--resume", "{ws}/run", "--quiet", "--set", "train.epochs=2")),
]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("argv", [a for _, a in HELD], ids=[i for i, _ in HELD])
def test_refused_while_another_process_writes(argv, tmp_path, capsys, request):
    from tests.core.test_runs import _holder

    with workspace(tmp_path, ("run",), request) as ws:
        before = hashes(ws)
        proc = _holder(ws / "run")
        try:
            code, _, err = run_cli(capsys, [a.format(ws=ws) for a in argv])
            after = hashes(ws)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert code == 2, err
        assert_message(err, ("is being written by another dualkit process", f"pid {proc.pid}", "--out"))
        assert_untouched(before, after, new=("run/.dualkit.lock",))  # the holder's own lock file


# --------------------------------------------------------------------------- process boundaries


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop(registry.ENV_VAR, None)
    return env


def _dualkit(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dualkit", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# DUALKIT_THREADS is read when a framework is first imported, so only a fresh process sees it.
PROCESS_CASES = [
    ("threads-abc-train", {"DUALKIT_THREADS": "abc"}, (*TRAIN, *TINY, *OUT), ("DUALKIT_THREADS='abc'",)),
    ("threads-zero-train", {"DUALKIT_THREADS": "0"}, (*TRAIN, *TINY, *OUT), ("DUALKIT_THREADS='0'",)),
    ("threads-negative-eval", {"DUALKIT_THREADS": "-2"}, ("eval", "{ws}/run"), ("DUALKIT_THREADS='-2'",)),
]


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("env, argv, needles", [c[1:] for c in PROCESS_CASES], ids=[c[0] for c in PROCESS_CASES])
def test_refused_in_a_fresh_process(env, argv, needles, tmp_path, request):
    with workspace(tmp_path, ("run",), request) as ws:
        before = hashes(ws)
        proc = _dualkit([a.format(ws=ws) for a in argv], ws, _env(**env))
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert_message(err, (*needles, "not a positive whole number", "unset it"))
        assert_untouched(before, hashes(ws))


@pytest.mark.skipif(not (HAS_TORCH and LINUX), reason="needs PyTorch and POSIX signals")
@pytest.mark.parametrize(
    "sig, code",
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
    ids=["SIGINT", "SIGTERM", "kill-9"],
)
def test_a_signal_stops_training_at_a_checkpoint(sig, code, tmp_path, capsys, request):
    """A signal mid-run: exit 128 + the signal number, one error line that says how to continue, the user's
    files untouched, and the run folder resumable. ``kill -9`` gets no say, but leaves no stale lock: the run
    resumes from its last checkpoint."""
    with workspace(tmp_path, (), request) as ws:
        before = hashes(ws)
        run_dir = ws / "run"
        proc = _dualkit([*TRAIN, "--set", "train.epochs=200", "--out", str(run_dir)], ws, _env())
        try:
            first = run_dir / "checkpoints" / "ckpt-000000000.safetensors"
            deadline = time.monotonic() + 120
            while not first.exists():  # written inside the signal handler's scope, before the first step
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=30)
                time.sleep(0.05)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == code, err
        assert "Traceback" not in err
        if sig != signal.SIGKILL:
            lines = err.strip().splitlines()
            assert lines[0].startswith(f"dualkit: {sig.name} received"), err
            assert lines[-1].startswith(f"dualkit: error: training stopped by {sig.name}: checkpoint "), err
            assert f"dualkit train --resume {run_dir}" in lines[-1], err
        assert_untouched(before, hashes(ws), new=("run", "run/*"))
        assert main(["train", "--resume", str(run_dir), "--quiet", "--set", "train.epochs=3"]) == 0
        capsys.readouterr()


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_two_writers_started_together(tmp_path, request):
    """One trains; the other is refused with one line (never two writers interleaving one folder)."""
    with workspace(tmp_path, (), request) as ws:
        before = hashes(ws)
        argv = [*TRAIN, "--set", "train.epochs=2", "--set", "data.limit_train=256", "--out", str(ws / "run")]
        procs = [_dualkit(argv, ws, _env()) for _ in range(2)]
        try:
            results = [p.communicate(timeout=180) for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert sorted(p.returncode for p in procs) == [0, 2], results
        err = next(e for (_, e), p in zip(results, procs) if p.returncode == 2)
        assert_message(err, ())
        assert "being written by another dualkit process" in err or "already holds a run" in err, err
        lines = (ws / "run" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        assert_untouched(before, hashes(ws), new=("run", "run/*"))


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_quiet_resume_still_warns_of_a_skipped_checkpoint(tmp_path, capsys, request):
    """Misleading messages: --quiet keeps the warning that resume passed over an unreadable checkpoint."""
    with workspace(tmp_path, ("run",), request) as ws:
        (ws / "run" / "checkpoints" / "ckpt-000000002.safetensors").write_bytes(b"junk")
        code, _, err = run_cli(capsys, ["train", "--resume", str(ws / "run"), "--quiet", "--set", "train.epochs=2"])
        assert code == 0, err
        assert "Traceback" not in err
        assert err.startswith("dualkit: warning: skipped unreadable checkpoint ckpt-000000002.safetensors"), err
        assert len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------- a real small file system, where allowed


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "64k") -> Iterator[None]:
    """A tiny tmpfs mounted on ``folder`` (root on Linux only; skipped cleanly wherever mounting is refused)."""
    if not LINUX or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_a_real_small_file_system(kind, tmp_path, capsys, request):
    """The same faults as the table's simulated ones, from a real 64 KiB tmpfs: full once a checkpoint is written,
    or remounted read-only."""
    with workspace(tmp_path, (), request) as ws, tmpfs(ws / "disk"):
        (ws / "disk" / "notes.txt").write_text("mine\n")
        if kind == "read-only":
            done = subprocess.run(["mount", "-o", "remount,ro", str(ws / "disk")], capture_output=True, timeout=30)
            if done.returncode != 0:
                pytest.skip("cannot remount the tmpfs read-only here")
        before = hashes(ws)
        code, _, err = run_cli(capsys, [*TRAIN, *TINY, "--out", str(ws / "disk" / "run")])
        assert code == 2, err
        if kind == "full":
            assert_message(err, (f"No space left on device: {ws}/disk/run/", "free some space"))
            assert_untouched(before, hashes(ws), new=("disk/run", "disk/run/*"))  # what fitted before it filled
        else:
            assert_message(err, (f"cannot write the run folder {ws}/disk/run", "Read-only file system", "--out"))
            assert_untouched(before, hashes(ws))
        assert not list(ws.rglob("*.tmp"))


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed")
def test_dqn_resume_reports_the_checkpoints_own_step(tmp_path, capsys, request):
    """Misleading messages: a DQN resume says the env step and update of the checkpoint it continues from."""
    from dualkit.core import runstate

    with workspace(tmp_path, ("dqn",), request) as ws:
        run_dir = ws / "dqn"
        step, newest = runstate.list_checkpoints(run_dir)[-1]
        state = runstate.load(newest).state
        code, _, err = run_cli(capsys, ["train", "--resume", str(run_dir), "--set", "dqn.total_steps=300"])
        assert code == 0, err
        assert state.step == step
        env_steps = state.counters["env_steps"]
        assert err.splitlines()[0] == (
            f"dualkit: resuming {run_dir} from {newest.name} at env step {env_steps:,} (update {step:,}) in torch"
        ), err
