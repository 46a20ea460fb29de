"""The one run loop: epochs and steps, checkpoint cadence, signals, the NaN guard, resume, logs, result files.

Every epoch-based task (the classifier, masked pretraining) trains through :func:`run_epochs`; DQN, whose loop
is driven by environment steps, uses the same pieces: :class:`RunLog` (metric log, TensorBoard events,
result.json), :class:`Cadence` (checkpoints every N steps / minutes), :func:`check_finite` (the NaN guard)
and :func:`interrupted` (the message after Ctrl-C / SIGTERM).

A backend's model object (``Classifier``, ``MaskedAutoencoder``, ...) only needs ``get_weights()``,
``get_optimizer_state()`` and ``get_rng_state()`` here; the task hands the loop one ``step(xb, yb, lr) -> loss``
callable that does the backend's training step.

Data parallelism (``--workers N``) lives here too, once for every epoch-based task: on several workers
(core.distributed.current()) each global batch is cut into equal contiguous shards (core/distributed.py's rules)
and each worker's step trains on its own (the backend's model object averages the gradients through the
framework's engine: backends/*/distributed.py); rank 0 alone writes the run folder, logs and checkpoints; a
SIGINT/SIGTERM reaching any worker stops all of them after the same step.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import itertools
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, distributed, registry, runstate
from dualkit.core.batches import Normalizer, epoch_batches, make_rng, num_batches
from dualkit.core.datasets import Dataset, load_dataset
from dualkit.core.errors import CheckpointError, DataError, Interrupted, RunError, SpecError, TrainingError
from dualkit.core.interrupt import StopSignal
from dualkit.core.runs import METRICS_FILE, MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, require_run_dir, write_json
from dualkit.core.runstate import RunState
from dualkit.core.schedules import lr_table
from dualkit.core.specs import load_json
from dualkit.core.tensorboard import EventLog
from dualkit.core.weights import is_buffer
from dualkit.tasks.progress import progress_bar


class RunLog:
    """What a run writes as it goes: ``metrics.jsonl`` (one record per epoch or evaluation), TensorBoard
    event files beside it (per-step and per-record scalars) and, at the end, ``result.json``.

    ``run_dir=None`` (benchmark and parity runs) writes nothing."""

    def __init__(self, run_dir: Path | None) -> None:
        self.run_dir = run_dir
        self.metrics = MetricLog(run_dir / METRICS_FILE) if run_dir is not None else None
        self.events = EventLog(run_dir) if run_dir is not None else None

    @property
    def enabled(self) -> bool:
        return self.run_dir is not None

    def step(self, step: int, values: dict[str, float]) -> None:
        """Per-step scalars (loss, learning rate) under ``step/``."""
        if self.events is not None:
            self.events.scalars(step, values, prefix="step/")

    def record(self, record: dict[str, Any], step: int, prefix: str = "epoch/") -> None:
        """One metric record: a line of metrics.jsonl, and its numbers as TensorBoard scalars at ``step``
        (tagged ``prefix`` + name: ``epoch/`` for epoch records, ``eval/`` for DQN's evaluations)."""
        if self.metrics is not None:
            self.metrics.append(record)
        if self.events is not None:  # the record's own position is the event's step, not a curve
            self.events.scalars(step, {k: v for k, v in record.items() if k not in ("epoch", "step")}, prefix=prefix)
            self.events.flush()

    def result(self, spec: Any, backend: Any, device: str, segments: list[dict[str, Any]], **fields: Any) -> None:
        """result.json: what every run records (task, backend, device, seed, versions), the task's own
        ``fields``, and the segments (one per session: a resumed run has several, a hand-over changes backend)."""
        if self.run_dir is not None:
            common = {
                "task": spec.task,
                "backend": backend.NAME,
                "device": device,
                "seed": spec.seed,
                "versions": backend.versions(),
            }
            write_json(self.run_dir / RESULT_FILE, {**common, **fields, "segments": segments})

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


class Cadence:
    """When a run checkpoint is due: each time the step counter passes a multiple of ``every_steps`` (0 = off),
    and when ``every_minutes`` (0 = off) have gone by since the last save."""

    def __init__(self, every_steps: int, every_minutes: float, step: int) -> None:
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.next_step = (step // every_steps + 1) * every_steps if every_steps else None
        self.last_save = time.perf_counter()

    def due(self, step: int) -> bool:
        if self.next_step is not None and step >= self.next_step:
            self.next_step += self.every_steps
            return True
        return self.every_minutes > 0 and time.perf_counter() - self.last_save >= 60.0 * self.every_minutes

    def saved(self, step: int) -> None:
        """A checkpoint was written at ``step``: the next one by steps is at the next multiple past it."""
        self.last_save = time.perf_counter()
        if self.every_steps:
            self.next_step = (step // self.every_steps + 1) * self.every_steps


def check_finite(loss: float, what: str, where: str, hint: str) -> None:
    """The NaN guard: stop the run with a message that says where the loss went bad and what to change."""
    if not math.isfinite(loss):
        raise TrainingError(f"{what} became {loss} at {where}; {hint}")


def interrupted(stop: StopSignal, path: Path, where: str, run_dir: Path, backend: str, workers: int = 1) -> Interrupted:
    """The error a run stops with after Ctrl-C / SIGTERM, once its checkpoint ``path`` is written (``workers``: a
    distributed run's, where the signal may have reached another worker only)."""
    other = "tf" if backend == "torch" else "torch"
    again = f" --workers {workers}" if workers > 1 else ""
    message = (
        f"checkpoint {path} ({where}). Continue with: dualkit train --resume {run_dir}{again}  "
        f"(add --backend {other} to continue in the other framework)"
    )
    if stop.signum is None:  # the workers agreed to stop: the signal reached another one
        return Interrupted(f"training stopped by a signal to another worker: {message}", 128 + signal.SIGTERM)
    return stop.interrupted(message)


# -- the ghost-batch reference: N replicas with per-replica BatchNorm, one after the other in one process -------
_GHOST: contextvars.ContextVar[int] = contextvars.ContextVar("dualkit_ghost_replicas", default=0)


@contextlib.contextmanager
def ghost_replicas(n: int) -> Iterator[None]:
    """Inside: every run of :func:`run_epochs` in this process trains each global batch as ``n`` replicas with
    per-replica BatchNorm would, one shard after the other (:func:`ghost_step`): the reference of the distribution
    parity level (tasks/dist_parity.py), built from each model's public methods only, not from the distributed
    code it checks."""
    token = _GHOST.set(n)
    try:
        yield
    finally:
        _GHOST.reset(token)


def ghost_step(model: Any, arrays: tuple[np.ndarray, ...], lr: float, n: int) -> float:
    """One update of ``model`` on a global batch ``arrays`` (what ``model.train_step`` takes) cut into ``n`` equal
    contiguous shards, each normalised by its own batch statistics (a "ghost batch"): the gradient is the mean of
    the shards' gradients, the loss the mean of their losses, each running statistic the mean of the shards'
    updates of it."""
    weights, optim = model.get_weights(), model.get_optimizer_state()
    losses, grads, stats = [], [], []
    for part in distributed.replica_slices(len(arrays[0]), n):
        shard = tuple(a[part] for a in arrays)
        model.set_weights(weights)
        loss, g = model.loss_and_grads(*shard)  # changes nothing
        model.train_step(*shard, 0.0)  # at lr 0 only the running statistics move (and the optimizer state: put back)
        losses.append(loss)
        grads.append(g)
        stats.append({k: v for k, v in model.get_weights().items() if is_buffer(k)})
    model.set_weights({**weights, **{k: np.mean([s[k] for s in stats], axis=0) for k in stats[0]}})
    model.set_optimizer_state(optim)
    model.apply_gradients({k: np.mean([g[k] for g in grads], axis=0) for k in grads[0]}, lr)
    return float(np.mean(losses))


def writer_dir(run_dir: Path | None) -> Path | None:
    """``run_dir`` on the process that writes the run (rank 0, or the only one); None on the other workers of a
    distributed run, which write nothing (and lock nothing)."""
    return run_dir if distributed.current().writer else None


def engine_of(backend: str) -> ModuleType:
    """The backend's distributed engine (backends/<name>/distributed.py), through core's registry."""
    return importlib.import_module(f"{registry.get_backend(backend).__name__}.distributed")


def check_shards(spec: Any, examples: int, world: distributed.World) -> None:
    """Refuse, before training, a run whose batches do not cut into ``world``'s equal shards (core/distributed.py)."""
    distributed.check_batch_size(spec.train.batch_size, world.replicas)
    distributed.check_last_batch(examples, spec.train.batch_size, world.replicas)


def data_fingerprint(data: Dataset) -> str:
    """The training data's content hash, kept in run checkpoints so that a resume can tell changed data."""
    return runstate.fingerprint(data.x_train, data.y_train)


def new_state(task: str, seed: int, streams: tuple[str, ...] = ("batches",)) -> RunState:
    """A fresh run state whose numpy generators (``make_rng(seed, stream)``) stand at their start."""
    return RunState(task=task, rngs={s: runstate.capture_rng(make_rng(seed, s)) for s in streams})


@dataclass
class EpochTask:
    """What one epoch-based task hands :func:`run_epochs`.

    ``step(xb, yb, lr)`` trains one batch and returns its loss; ``streams`` are the task's extra numpy
    generators (beyond the batch order), restored from and saved into the run state; ``record(rec)`` adds the
    task's own per-epoch values (validation metrics) to an epoch record; ``save_model(epoch, step)`` writes the
    run's canonical model file(s) at checkpoint epochs. ``loss_name``/``verb`` word the NaN message,
    ``desc`` labels the progress bar. ``batches(rng)`` yields one epoch's ``(x, y)`` training batches drawn
    from the batch generator ``rng`` (None: the image batches of core.batches.epoch_batches, normalised and
    augmented as the spec's data section says).

    ``prepare(x, y)`` turns a global batch into the arrays ``step`` takes (None: ``(x, y)``), drawing what is drawn
    per example (masks) for the whole global batch, so that every worker draws alike and N workers see what one
    would; on several workers each array is then cut along its first axis and ``step(*shard, lr)`` trains on this
    worker's shard (returning the global batch's loss)."""

    model: Any
    step: Callable[[np.ndarray, np.ndarray, float], float]
    record: Callable[[dict[str, Any]], None]
    save_model: Callable[[int, int], None]
    streams: dict[str, np.random.Generator] = field(default_factory=dict)
    loss_name: str = "loss"
    verb: str = "training"
    desc: str = "epoch"
    batches: Callable[[np.random.Generator], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None
    prepare: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, ...]] | None = None


@dataclass
class EpochOutcome:
    images_per_s: float
    wall_s: float
    segments: list[dict[str, Any]]


def total_steps_of(epochs: int, steps_per_epoch: int, max_steps: int = 0) -> int:
    """Optimizer steps of a whole run: ``epochs`` full epochs, cut at ``max_steps`` if set."""
    total = steps_per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def run_epochs(
    spec: Any,
    backend: str,
    device: str,
    task: EpochTask,
    data: Dataset,
    normalizer: Normalizer | None,
    state: RunState,
    log: RunLog,
    meta: dict[str, Any],
    progress: bool,
    max_steps: int = 0,
) -> EpochOutcome:
    """Train ``task`` from ``state`` on (a fresh state, or one restored from a run checkpoint).

    Run checkpoints (core.runstate) are written every ``train.checkpoint_every`` epochs, every
    ``checkpoint_every_steps`` steps, every ``checkpoint_every_minutes`` minutes, at the end, and on
    SIGINT/SIGTERM (after the current step; then the run stops with core.errors.Interrupted).

    Random streams: ``state.rngs["batches"]`` is the batch generator at the start of epoch
    ``state.epoch + 1``; the ``state.batch`` batches of that epoch trained before are drawn again and skipped,
    which leaves the generator exactly where the uninterrupted run had it. The task's own streams are saved
    as they stand right after step ``state.step``.

    ``state.epoch`` counts full epochs. When ``max_steps`` ends the run inside an epoch, that epoch still gets
    its history record while ``state.batch`` keeps its trained batches: ``len(state.history)`` is then
    ``state.epoch + 1``, and a resume with more steps drops that record and finishes the epoch.
    """
    tr = spec.train
    run_dir = log.run_dir
    world = distributed.current()
    engine = engine_of(backend) if world.distributed else None
    ghost = _GHOST.get()
    step = task.step if not ghost else (lambda *args: ghost_step(task.model, args[:-1], args[-1], ghost))
    if world.distributed:
        check_shards(spec, len(data.y_train), world)
    steps_per_epoch = num_batches(len(data.y_train), tr.batch_size, drop_last=False)
    total_steps = total_steps_of(tr.epochs, steps_per_epoch, max_steps)
    epochs = -(-total_steps // steps_per_epoch)
    lrs = lr_table(spec.schedule, spec.optim.lr, total_steps)
    rng = runstate.restore_rng(make_rng(spec.seed, "batches"), state.rngs["batches"])
    for name, gen in task.streams.items():
        runstate.restore_rng(gen, state.rngs[name])
    c = state.counters
    for key in ("train_s", "epoch_s", "wall_s"):
        c.setdefault(key, 0.0)
    c.setdefault("images", 0)
    c.setdefault("epoch_images", 0)
    segment = {"backend": backend, "device": device, "from_step": state.step}
    if world.distributed:
        segment["workers"] = world.replicas
    c.setdefault("segments", []).append(segment)
    last_good = run_dir / MODEL_FILE if run_dir is not None and (run_dir / MODEL_FILE).is_file() else None
    cadence = Cadence(tr.checkpoint_every_steps, tr.checkpoint_every_minutes, state.step)
    t_start = time.perf_counter()
    wall_before = c["wall_s"]

    def save_run(epoch_start: dict[str, Any]) -> Path:
        c["wall_s"] = wall_before + time.perf_counter() - t_start
        state.rngs["batches"] = epoch_start
        state.rngs.update({name: runstate.capture_rng(gen) for name, gen in task.streams.items()})
        path = runstate.save(
            run_dir,
            state,
            task.model.get_weights(),
            task.model.get_optimizer_state(),
            meta=meta,
            framework_rng=task.model.get_rng_state(),
            keep=tr.keep_checkpoints,
        )
        cadence.saved(state.step)
        return path

    def stopped(path: Path | None, epoch: int, todo: int) -> Interrupted:
        where = f"step {state.step} of {total_steps}, epoch {epoch}, batch {state.batch}/{todo}"
        if engine is not None:
            engine.barrier()  # the checkpoint is written before any worker leaves (a launcher stops the rest then)
        if path is None:  # a worker that writes nothing: rank 0 reports the checkpoint
            return Interrupted(
                f"training stopped at {where} with the other workers (worker {world.rank} of {world.size})",
                exit_code=128 + int(stop.signum or signal.SIGTERM),
            )
        return interrupted(stop, path, where, run_dir, backend, world.replicas)

    # A distributed run listens on every worker: a signal reaching any of them stops all after the same step.
    with StopSignal(enabled=run_dir is not None or world.distributed) as stop:
        if run_dir is not None and not runstate.list_checkpoints(run_dir):
            save_run(runstate.capture_rng(rng))  # step 0: from the first moment on, the run folder is resumable
        # A history record past state.epoch is an epoch that max_steps cut and that is already done.
        first_epoch = len(state.history) + 1
        for epoch in range(first_epoch, epochs + 1):
            todo = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)  # max_steps may cut the last
            epoch_start = runstate.capture_rng(rng)
            batches = (
                task.batches(rng)
                if task.batches is not None
                else epoch_batches(
                    data.x_train,
                    data.y_train,
                    tr.batch_size,
                    rng,
                    normalizer,
                    crop_padding=spec.data.crop_padding,
                    flip=spec.data.flip,
                    dtype=spec.dtype,
                )
            )
            done = state.batch
            for _ in itertools.islice(batches, done):
                pass  # the batches trained before a resume: drawn again (same permutation and augmentation), skipped
            epoch_losses = state.step_losses[len(state.step_losses) - done :]
            bar = progress_bar(total=todo, desc=f"{backend} {task.desc} {epoch}/{epochs}", enabled=progress)
            bar.update(done)
            t0 = time.perf_counter() - c["epoch_s"]
            for xb, yb in itertools.islice(batches, todo - done):
                lr = float(lrs[state.step])
                arrays = task.prepare(xb, yb) if task.prepare is not None else (xb, yb)
                if engine is not None:
                    arrays = distributed.shard(arrays, world)
                    engine.request_stop(stop.requested)
                loss = step(*arrays, lr)
                if not math.isfinite(loss):
                    good = (
                        f"the last good model is {last_good}"
                        if last_good
                        else f"no model was saved yet (it is written every {tr.checkpoint_every} epoch(s))"
                    )
                    check_finite(
                        loss,
                        task.loss_name,
                        f"step {state.step + 1} (epoch {epoch})",
                        f"{task.verb} stopped and {good}. Lower optim.lr or set optim.clip_norm.",
                    )
                state.step_losses.append(loss)
                epoch_losses.append(loss)
                state.step += 1
                state.batch += 1
                trained = distributed.usable(len(xb), world.replicas)
                c["images"] += trained
                c["epoch_images"] += trained
                log.step(state.step, {"loss": loss, "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                # Mid-epoch checkpoints; the one at the epoch's end waits for its record. Several workers stop on
                # what they agreed in the step (a signal that came later travels with the next step).
                stopping = stop.requested if engine is None else engine.stop_requested()
                if state.batch < todo and (stopping or (run_dir is not None and cadence.due(state.step))):
                    path = None
                    if run_dir is not None:
                        c["epoch_s"] = time.perf_counter() - t0
                        path = save_run(epoch_start)
                    if stopping:
                        bar.close()
                        raise stopped(path, epoch, todo)
            bar.close()
            epoch_time = time.perf_counter() - t0
            c["train_s"] += epoch_time
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": state.step,
                "lr": float(lrs[state.step - 1]),
                "train_loss": float(np.mean(epoch_losses)),
                "epoch_s": epoch_time,
                "images_per_s": c["epoch_images"] / epoch_time,
            }
            c["epoch_s"], c["epoch_images"] = 0.0, 0
            if todo == steps_per_epoch:
                state.epoch, state.batch = epoch, 0
                resume_from = runstate.capture_rng(rng)  # the next epoch's start
            else:
                resume_from = epoch_start  # cut by max_steps: a longer resume finishes this epoch
            if world.writer:  # the validation metrics: the workers that write nothing need none
                task.record(record)
            state.history.append(record)
            log.record(record, state.step)
            path = None
            stopping = stop.requested if engine is None else engine.stop_requested()
            if run_dir is not None:
                if epoch % tr.checkpoint_every == 0 or epoch == epochs:
                    last_good = run_dir / MODEL_FILE
                    task.save_model(epoch, state.step)
                    path = save_run(resume_from)
                elif stopping or cadence.due(state.step):
                    path = save_run(resume_from)
            if stopping and epoch < epochs:  # after the last epoch only the evaluation is left: finish
                raise stopped(path, epoch, todo)
    c["wall_s"] = wall_before + time.perf_counter() - t_start
    if run_dir is not None and len(state.history) < first_epoch:
        # Nothing left to train (a resume after the last checkpoint, e.g. one that stopped in the evaluation):
        # the model file may predate the checkpoint, so it is written from it.
        task.save_model(len(state.history), state.step)
    return EpochOutcome(
        images_per_s=c["images"] / c["train_s"] if c["train_s"] else 0.0,
        wall_s=c["wall_s"],
        segments=c["segments"],
    )


# -- resume: the checks and first writes every epoch-based task shares ---------------------------------------
@dataclass
class EpochResume:
    """An epoch-based run opened for resuming: every check passed, nothing in the run folder written yet."""

    req: runstate.ResumeRequest
    backend: ModuleType
    device: str
    data: Any  # a core.datasets.Dataset, or a task's own training data
    normalizer: Normalizer | None  # image tasks
    steps_per_epoch: int
    total_steps: int

    @property
    def spec(self) -> Any:
        return self.req.spec

    @property
    def state(self) -> RunState:
        return self.req.ckpt.state

    def restore(self, model: Any) -> None:
        """The checkpoint's optimizer state into ``model``; the framework's dropout stream continues only in the
        backend that wrote it (another framework starts its own)."""
        ckpt = self.req.ckpt
        model.set_optimizer_state(ckpt.optim)
        if ckpt.backend == self.backend.NAME and ckpt.framework_rng:
            model.set_rng_state(ckpt.framework_rng)

    def begin(self, progress: bool) -> dict[str, Any]:
        """The first writes of the resume (core.runstate.reopen_run_dir) and what it tells the user; returns
        what the result's ``extra`` records about it."""
        st, ckpt = self.state, self.req.ckpt
        if st.batch and len(st.history) == st.epoch + 1 and self.total_steps > st.step:
            st.history.pop()  # an epoch that max_steps cut goes on: its record is written again once it is finished
        if distributed.current().writer:  # the other workers of a distributed run only read the folder
            runstate.reopen_run_dir(self.req, st.history)
            where = (
                f"step {st.step} (epoch {st.epoch + 1}, batch {st.batch}/{self.steps_per_epoch})"
                if st.batch
                else f"the end of epoch {st.epoch}"
            )
            notes = workers_notes(self.spec, st, distributed.current().replicas)
            runstate.report_resume(self.req, self.backend.NAME, where, notes, quiet=not progress)
        return {"resumed_from": str(ckpt.path), "resumed_step": st.step, "skipped": ckpt.skipped}


def workers_notes(spec: Any, state: RunState, replicas: int) -> list[str]:
    """What a resume on another number of workers changes: nothing in the update, except per-replica BatchNorm,
    whose statistics come from shards of another size (core/distributed.py)."""
    segments = state.counters.get("segments") or [{}]
    before = int(segments[-1].get("workers", 1))
    if before == replicas:
        return []
    note = f"the run was trained on {before} worker(s) so far and goes on on {replicas}"
    model = getattr(spec, "model", None)
    if getattr(model, "batchnorm", False) and not getattr(model, "bn_sync", False):
        bs = spec.train.batch_size
        note += (
            f"; its per-replica BatchNorm now normalises shards of {bs // replicas} examples (were {bs // before}): "
            "model.bn_sync=true would make the statistics the global batch's on any number of workers"
        )
    return [note]


def open_epoch_resume(
    run_dir: Path,
    task: str,
    model_kind: str,
    what: str,
    overrides: list[str] | tuple[str, ...],
    resumable: tuple[str, ...],
    backend_name: str | None,
    device: str,
    shapes: Callable[[Any, Any], dict[str, tuple[int, ...]]],
    streams: tuple[str, ...] = ("batches",),
    load_data: Callable[[Any, Path, dict[str, Any]], tuple[Any, Any]] | None = None,
) -> EpochResume:
    """Open ``run_dir`` (a ``task`` run; its model a ``model_kind``, ``what`` in messages) for resuming in
    ``backend_name`` (default: the checkpoint's) with ``overrides`` of the ``resumable`` spec fields.

    Checks, before anything is written: the checkpoint's metadata, the training data (by content), that the
    spec's length (train.epochs, and max_steps where the task has it) still covers the checkpoint and that the
    run is not complete, that the weights fit ``shapes(spec, key)`` and the optimizer state the spec's
    optimizer, and that the run state is consistent with the data.

    ``load_data(spec, run_dir, meta) -> (data, key)`` loads a task's own training data (x_train, y_train) and the
    key its shapes depend on; None: the spec's image dataset (key: the image shape) and the checkpoint's
    normalizer."""
    req = runstate.open_for_resume(run_dir, task, model_kind, what, overrides, resumable)
    run_dir, spec, ckpt, st = req.run_dir, req.spec, req.ckpt, req.ckpt.state
    normalizer = None
    if load_data is None:
        if "normalizer" not in ckpt.meta:
            raise CheckpointError(f"{ckpt.path} has no normalizer in its metadata; the file is damaged")
        normalizer = Normalizer.from_dict(ckpt.meta["normalizer"])
    backend = registry.get_backend(backend_name or ckpt.backend, device)
    device = registry.resolve_device(backend, device)
    if load_data is None:
        data = load_dataset(spec.data)
        key = data.image_shape
    else:
        data, key = load_data(spec, run_dir, ckpt.meta)
    if data_fingerprint(data) != ckpt.meta.get("data_fingerprint"):
        raise DataError(
            f"the training data loaded for {spec.data.name!r} (data.root={spec.data.root!r}) differ from those the "
            "run was trained on; point data.root at the same files"
        )
    max_steps = getattr(spec, "max_steps", 0)
    limits = f"train.epochs={spec.train.epochs}" + (f" and max_steps={max_steps}" if hasattr(spec, "max_steps") else "")
    steps_per_epoch = num_batches(len(data.y_train), spec.train.batch_size, drop_last=False)
    total_steps = total_steps_of(spec.train.epochs, steps_per_epoch, max_steps)
    needed = st.epoch + (1 if st.batch else 0)
    if total_steps < st.step:
        raise SpecError(
            f"cannot resume: {limits} give {total_steps} steps, but the run's checkpoint is at step {st.step} "
            f"(epoch {needed}); they must allow at least {st.step} steps: train.epochs must be at least {needed}"
        )
    if total_steps == st.step and (run_dir / RESULT_FILE).is_file():
        more = "--set train.epochs=N" + (" and/or --set max_steps=N" if max_steps else "")
        raise RunError(
            f"{run_dir} is already complete ({st.step} of {total_steps} steps, {len(st.history)} of "
            f"{-(-total_steps // steps_per_epoch)} epochs); to train it longer, resume with {more} "
            f"(more than {st.step} steps)"
        )
    check_shards(spec, len(data.y_train), distributed.current())
    expected = shapes(spec, key)
    checkpoint.check_fits(ckpt.weights, expected, f"the {what} run's model")
    runstate.check_optimizer_state(ckpt, spec.optim, [n for n in expected if not is_buffer(n)])
    if (
        st.batch > steps_per_epoch
        or st.step != st.epoch * steps_per_epoch + st.batch
        or len(st.history) - st.epoch not in ((0, 1) if st.batch else (0,))
        or set(st.rngs) != set(streams)
    ):
        raise CheckpointError(
            f"{ckpt.path}: run state (step {st.step}, epoch {st.epoch}, batch {st.batch}) is inconsistent"
        )
    backend.seed(spec.seed)
    return EpochResume(req, backend, device, data, normalizer, steps_per_epoch, total_steps)


@dataclass
class LoadedRun:
    """A finished (or checkpointed) image run's spec, canonical model weights and what its data need."""

    spec: Any
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    normalizer: Normalizer
    image_shape: tuple[int, int, int]


def load_image_run(
    run_dir: Path, shapes: Callable[[Any, tuple[int, int, int]], dict[str, tuple[int, ...]]], what: str
) -> LoadedRun:
    """A run folder's spec and canonical model.safetensors, checked to fit ``shapes(spec, image_shape)`` (the
    run's ``what``, e.g. "classifier", in messages)."""
    run_dir = require_run_dir(run_dir)
    spec = load_json(run_dir / SPEC_FILE)
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    if "image_shape" not in meta:  # a spec.json copied from another run, e.g. a DQN agent's: no image model
        raise CheckpointError(
            f"{run_dir / MODEL_FILE} holds a {meta.get('kind')!r} model, not the run's {what}; {SPEC_FILE} and the "
            "model come from different runs (restore the run's own spec.json)"
        )
    image_shape = tuple(meta["image_shape"])
    checkpoint.check_fits(weights, shapes(spec, image_shape), f"the run's {what}")
    return LoadedRun(spec, weights, meta, Normalizer.from_dict(meta["normalizer"]), image_shape)
