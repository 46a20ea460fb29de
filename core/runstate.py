"""Run checkpoints: everything a task needs to continue a run exactly, in one safetensors file.

A run checkpoint is ``RUN/checkpoints/ckpt-<step>.safetensors`` (``step`` zero-padded to 9 digits, so
names sort by step). Its tensors:

- the model's canonical weights under their canonical names (BatchNorm statistics included);
- the optimizer's canonical state (core.optim_ref names) under ``optim.``;
- the framework's own RNG state (dropout) under ``rng.``, restored only in the backend that wrote it;
- the run state's per-step losses as ``state.step_losses`` (float64, exact);
- task extras (a DQN replay buffer, ...) under ``extra.``.

Its metadata (core.checkpoint's JSON) holds ``kind = "run-checkpoint"``, ``runstate_version``, the
:class:`RunState` (step, epoch, position in the epoch, numpy generator states, metric history, task
counters), the spec, the writing backend and its versions, and whatever else the task adds.

Files are written atomically (temp file, fsync, rename: core.runs), so every ``ckpt-*.safetensors``
present is complete; the newest is the one with the highest step. After each write only the last
``keep`` are kept. A killed process can leave a ``.ckpt-*.tmp`` behind, which :func:`clean_temp`
removes when the run is resumed.

Tasks plug in with :class:`RunState`, :func:`save`, :func:`latest`, :func:`check_resumable` and
:func:`fingerprint`; the signal side is core.interrupt.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import checkpoint, optim_ref
from dualkit.core.errors import CheckpointError, RunError, SpecError
from dualkit.core.runs import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    RESULT_FILE,
    SPEC_FILE,
    atomic_write_text,
    read_json,
    require_run_dir,
)
from dualkit.core.specs import apply_overrides, from_dict, save_json, to_dict

RUNSTATE_VERSION = 1
KIND = "run-checkpoint"
OPTIM_PREFIX = "optim."
RNG_PREFIX = "rng."
STATE_PREFIX = "state."
EXTRA_PREFIX = "extra."
_PREFIXES = (OPTIM_PREFIX, RNG_PREFIX, STATE_PREFIX, EXTRA_PREFIX)
_NAME = re.compile(r"^ckpt-(\d{9,})\.safetensors$")
_TEMP = re.compile(r"^\.(ckpt-\d+\.safetensors|spec\.json|metrics\.jsonl|result\.json|model\.safetensors)\..*\.tmp$")


@dataclass
class RunState:
    """Where a run stands. JSON-serialisable except ``step_losses``, which is stored as a tensor.

    ``epoch`` counts completed epochs (a task without epochs leaves it 0); ``batch`` counts the
    batches of epoch ``epoch + 1`` already trained. ``rngs`` maps a generator's purpose to its numpy
    ``bit_generator.state``; which moment a state belongs to (e.g. the start of the current epoch) is
    the task's contract. ``counters`` is the task's own JSON (wall time, images, exploration, ...).
    """

    task: str
    step: int = 0
    epoch: int = 0
    batch: int = 0
    rngs: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["step_losses"]
        return out

    @classmethod
    def from_meta(cls, meta: dict[str, Any], step_losses: np.ndarray | None) -> RunState:
        fields = {f.name for f in dataclasses.fields(cls)} - {"step_losses"}
        missing = sorted(fields - set(meta))
        if missing:
            raise CheckpointError(f"the run state lacks {', '.join(missing)}; the checkpoint is damaged")
        losses = [] if step_losses is None else [float(v) for v in np.asarray(step_losses, np.float64).reshape(-1)]
        return cls(**{k: copy.deepcopy(meta[k]) for k in fields}, step_losses=losses)


def capture_rng(gen: np.random.Generator) -> dict[str, Any]:
    """A generator's exact position (``bit_generator.state``: plain ints and strings, JSON-safe)."""
    return copy.deepcopy(gen.bit_generator.state)


def restore_rng(gen: np.random.Generator, state: dict[str, Any]) -> np.random.Generator:
    """Put ``gen`` back at a position taken by :func:`capture_rng` (same bit generator kind)."""
    kind = type(gen.bit_generator).__name__
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        got = state.get("bit_generator") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"saved generator state is for {got!r}, this generator is {kind!r}")
    gen.bit_generator.state = copy.deepcopy(state)
    return gen


def fingerprint(*arrays: np.ndarray) -> str:
    """A cheap content hash (CRC-32 over shapes, dtypes and bytes) to tell whether data changed."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(f"{a.dtype.str}{a.shape}".encode(), crc)
        crc = zlib.crc32(memoryview(a).cast("B"), crc)
    return f"crc32:{crc:08x}"


# -- files ------------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"ckpt-{int(step):09d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint files as (step, path), oldest first (temp files are not listed)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := _NAME.match(p.name))]
    return sorted(found)


def temp_files(run_dir: Path) -> list[Path]:
    """Leftovers of writes a killed process did not finish (never read: they are not run files)."""
    out = []
    for folder in (Path(run_dir), checkpoint_dir(run_dir)):
        if folder.is_dir():
            out += [p for p in folder.iterdir() if p.is_file() and _TEMP.match(p.name)]
    return sorted(out)


def clean_temp(run_dir: Path) -> list[Path]:
    removed = temp_files(run_dir)
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def save(
    run_dir: Path,
    state: RunState,
    weights: dict[str, np.ndarray],
    optim: dict[str, np.ndarray],
    *,
    meta: dict[str, Any],
    framework_rng: dict[str, np.ndarray] | None = None,
    extra: dict[str, np.ndarray] | None = None,
    keep: int = 3,
) -> Path:
    """Write ``ckpt-<state.step>.safetensors`` atomically, then keep only the newest ``keep`` files."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    clash = [n for n in weights if n.startswith(_PREFIXES)]
    if clash:
        raise ValueError(f"weight names may not start with {_PREFIXES}: {clash}")
    tensors: dict[str, np.ndarray] = dict(weights)
    tensors.update({OPTIM_PREFIX + k: np.asarray(v) for k, v in optim.items()})
    tensors.update({RNG_PREFIX + k: np.asarray(v) for k, v in (framework_rng or {}).items()})
    tensors.update({EXTRA_PREFIX + k: np.asarray(v) for k, v in (extra or {}).items()})
    tensors[STATE_PREFIX + "step_losses"] = np.asarray(state.step_losses, dtype=np.float64).reshape(-1)
    # the task's own "kind" (what the weights are, e.g. "classifier") is kept as "model_kind"
    header = {
        **meta,
        "model_kind": meta.get("kind"),
        "kind": KIND,
        "runstate_version": RUNSTATE_VERSION,
        "state": state.to_meta(),
    }
    path = checkpoint_path(run_dir, state.step)
    checkpoint.save(path, tensors, header)
    prune(run_dir, keep)
    return path


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (only after a newer one is safely on disk)."""
    old = [p for _, p in list_checkpoints(run_dir)[:-keep]] if keep >= 1 else []
    for p in old:
        p.unlink(missing_ok=True)
    return old


@dataclass
class RunCheckpoint:
    path: Path
    state: RunState
    weights: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    framework_rng: dict[str, np.ndarray]
    extra: dict[str, np.ndarray]
    meta: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # newer files that could not be read, with why

    @property
    def backend(self) -> str:
        return str(self.meta.get("backend", ""))


def load(path: Path) -> RunCheckpoint:
    """Read one run checkpoint; a foreign, damaged or too-new file is a CheckpointError naming it."""
    tensors, meta = checkpoint.load(Path(path))
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path} is a dualkit checkpoint of kind {meta.get('kind')!r}, not a run checkpoint")
    version = meta.get("runstate_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} has no run-state version; the file is damaged")
    if version > RUNSTATE_VERSION:
        raise CheckpointError(
            f"{path} was written with run-state format version {version}, newer than this dualkit "
            f"reads ({RUNSTATE_VERSION}); resume it with the dualkit that wrote it, or upgrade dualkit"
        )
    if not isinstance(meta.get("state"), dict):
        raise CheckpointError(f"{path} has no run state in its metadata; the file is damaged")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    state = RunState.from_meta(meta["state"], tensors.get(STATE_PREFIX + "step_losses"))
    if len(state.step_losses) != state.step:
        raise CheckpointError(
            f"{path}: {len(state.step_losses)} step losses for step {state.step}; the file is damaged"
        )
    weights = {k: v for k, v in tensors.items() if not k.startswith(_PREFIXES)}
    return RunCheckpoint(Path(path), state, weights, part(OPTIM_PREFIX), part(RNG_PREFIX), part(EXTRA_PREFIX), meta)


def latest(run_dir: Path) -> RunCheckpoint:
    """The newest readable run checkpoint of a run folder.

    A file from a newer dualkit stops the search (continuing from an older one would silently drop
    its progress); a damaged file is skipped for the one before it, and noted in ``skipped``.
    """
    found = list_checkpoints(run_dir)
    if not found:
        raise RunError(
            f"{run_dir} holds no run checkpoint ({CHECKPOINT_DIR}/ckpt-*.safetensors): it stopped before its "
            "first checkpoint, or was written by a dualkit without resume support; start it again"
        )
    skipped: list[str] = []
    for _, path in reversed(found):
        try:
            ckpt = load(path)
        except CheckpointError as exc:
            if "newer than this dualkit" in str(exc):
                raise
            skipped.append(f"{path.name}: {exc}")
            continue
        ckpt.skipped = skipped
        return ckpt
    raise CheckpointError(f"no readable run checkpoint in {checkpoint_dir(run_dir)}:\n  " + "\n  ".join(skipped))


# -- spec compatibility -----------------------------------------------------------------------------
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for every field that differs between two spec dicts."""
    a, b = _flatten(old), _flatten(new)
    return [(k, a.get(k), b.get(k)) for k in list(a) + [k for k in b if k not in a] if a.get(k) != b.get(k)]


def check_resumable(
    old: dict[str, Any], new: dict[str, Any], may_change: tuple[str, ...]
) -> list[tuple[str, Any, Any]]:
    """Refuse a spec change a run cannot continue under, naming the field; return the allowed changes."""
    changes = spec_changes(old, new)
    for name, before, after in changes:
        if name not in may_change:
            raise SpecError(
                f"cannot resume: {name} was {before!r} when the run was checkpointed and is now {after!r}; "
                f"a resumed run keeps every field except {', '.join(may_change)}. "
                "Start a new run to train with the changed spec"
            )
    return changes


# -- resume: the steps every task takes the same way -----------------------------------------------------
@dataclass
class ResumeRequest:
    """A run folder opened for resuming: its spec.json as written (``raw``), the spec to continue with
    (``raw`` + overrides), the newest checkpoint and the spec fields that changed."""

    run_dir: Path
    raw: dict[str, Any]
    spec: Any
    ckpt: RunCheckpoint
    changes: list[tuple[str, Any, Any]]


def open_for_resume(
    run_dir: Path,
    task: str,
    model_kind: str,
    what: str,
    overrides: list[str] | tuple[str, ...],
    may_change: tuple[str, ...],
) -> ResumeRequest:
    """Read a run folder for ``task`` (a ``what`` run, e.g. "DQN"), its newest checkpoint (of ``model_kind``) and
    the overridden spec; refuse, naming the problem, a folder that is not such a run or a change not in
    ``may_change``. Reads only: nothing in the folder is written."""
    run_dir = require_run_dir(Path(run_dir))
    try:
        raw = read_json(run_dir / SPEC_FILE)
    except ValueError as exc:
        raise RunError(f"{run_dir / SPEC_FILE} is not valid JSON ({exc}); the run folder is damaged") from None
    if not isinstance(raw, dict):
        raise RunError(
            f"{run_dir / SPEC_FILE} holds a {type(raw).__name__}, not a run spec; the run folder is damaged "
            "(restore spec.json from a copy, or train it again)"
        )
    found = raw.get("task", "classify")
    if found != task:
        raise RunError(f"{run_dir} is a {found!r} run, not a {what} run; resume it with a {found!r} preset")
    ckpt = latest(run_dir)
    if ckpt.state.task != task or ckpt.meta.get("model_kind") != model_kind:
        raise CheckpointError(f"{ckpt.path} is a run checkpoint of task {ckpt.state.task!r}, not of a {what} run")
    saved = from_dict(ckpt.meta["spec"])
    spec = apply_overrides(from_dict(raw), list(overrides))
    changes = check_resumable(to_dict(saved), to_dict(spec), may_change)
    return ResumeRequest(run_dir, raw, spec, ckpt, changes)


def check_optimizer_state(ckpt: RunCheckpoint, optim_spec: Any, trainable: list[str]) -> None:
    """The checkpoint's canonical optimizer state must be the one ``optim_spec`` keeps for ``trainable``."""
    expected = set(optim_ref.state_names(optim_spec, trainable))
    if set(ckpt.optim) != expected:
        raise CheckpointError(
            f"{ckpt.path}: optimizer state does not fit optim.name={optim_spec.name!r} "
            f"(differs in: {', '.join(sorted(set(ckpt.optim) ^ expected)[:5])})"
        )


def reopen_run_dir(req: ResumeRequest, history: list[dict[str, Any]]) -> None:
    """After every check passed, the first writes of a resume: temp files of a killed writer removed, the
    new spec saved, the metric log cut back to the checkpoint's ``history`` (what was logged after it is
    trained again and logged again) and result.json removed (written again when the run completes)."""
    clean_temp(req.run_dir)
    if to_dict(req.spec) != req.raw:
        save_json(req.spec, req.run_dir / SPEC_FILE)
    atomic_write_text(req.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
    (req.run_dir / RESULT_FILE).unlink(missing_ok=True)


def report_resume(req: ResumeRequest, backend: str, where: str, notes: list[str] = (), quiet: bool = False) -> None:
    """What a resume tells the user on stderr: from where, in which framework, what changed, what was skipped.
    ``quiet`` (``--quiet``) keeps only the warnings: an unreadable checkpoint passed over is always said."""
    ckpt = req.ckpt
    for note in ckpt.skipped:
        print(f"dualkit: warning: skipped unreadable checkpoint {note}", file=sys.stderr)
    if quiet:
        return
    print(
        f"dualkit: resuming {req.run_dir} from {ckpt.path.name} at {where} in {backend}"
        + (f" (trained in {ckpt.backend} so far)" if ckpt.backend != backend else ""),
        file=sys.stderr,
    )
    for note in notes:
        print(f"dualkit: {note}", file=sys.stderr)
    for name, before, after in req.changes:
        print(f"dualkit: {name} changed from {before!r} to {after!r}", file=sys.stderr)
