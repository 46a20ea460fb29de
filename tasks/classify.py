"""The neutral classification driver: core's batches -> a backend's steps; logs, evaluation, checkpoints."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry, runstate
from dualkit.core.batches import Normalizer, epoch_batches, eval_batches, make_rng, num_batches
from dualkit.core.datasets import Dataset, load_dataset
from dualkit.core.errors import CheckpointError, DataError, RunError, SpecError, TrainingError
from dualkit.core.interrupt import StopSignal
from dualkit.core.metrics import classification_metrics
from dualkit.core.runs import (
    METRICS_FILE, MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, prepare_run_dir,
    require_run_dir, write_json,
)
from dualkit.core.runstate import RunState
from dualkit.core.schedules import lr_table
from dualkit.core.specs import RunSpec, load_json, save_json, to_dict
from dualkit.core.weights import classifier_shapes, init_classifier, is_buffer
from dualkit.tasks.progress import progress_bar


@dataclass
class TrainResult:
    step_losses: list[float]
    history: list[dict[str, Any]]
    test: dict[str, float]
    weights: dict[str, np.ndarray]
    images_per_s: float
    wall_s: float
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_data(spec: RunSpec) -> tuple[Dataset, Normalizer]:
    data = load_dataset(spec.data)
    channels = data.image_shape[2]
    normalizer = Normalizer.fit(data.x_train) if spec.data.normalize else Normalizer.identity(channels)
    return data, normalizer


def build_classifier(
    backend: ModuleType, spec: RunSpec, image_shape: tuple[int, int, int], weights: dict[str, np.ndarray], device: str
):
    return backend.Classifier(
        spec.model, image_shape, weights, spec.optim, spec.train.label_smoothing, spec.train.dtype, device
    )


def predict_logits(clf, x_uint8: np.ndarray, normalizer: Normalizer, spec: RunSpec) -> np.ndarray:
    """Eval-mode logits for a whole split, in order, batch by batch."""
    dummy = np.zeros(len(x_uint8), dtype=np.int64)
    parts = [clf.predict(xb) for xb, _ in eval_batches(x_uint8, dummy, spec.train.eval_batch_size, normalizer, spec.train.dtype)]
    if not parts:
        return np.zeros((0, spec.model.num_classes))
    return np.concatenate(parts)


def evaluate_split(clf, x_uint8: np.ndarray, y: np.ndarray, normalizer: Normalizer, spec: RunSpec) -> dict[str, float]:
    if len(y) == 0:
        return {}
    logits = predict_logits(clf, x_uint8, normalizer, spec)
    return classification_metrics(logits, y, spec.model.num_classes, spec.train.label_smoothing)


def checkpoint_meta(spec: RunSpec, backend: ModuleType, normalizer: Normalizer, data: Dataset, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "classifier",
        "spec": to_dict(spec),
        "backend": backend.NAME,
        "versions": backend.versions(),
        "normalizer": normalizer.to_dict(),
        "image_shape": list(data.image_shape),
        "classes": list(data.classes),
        **extra,
    }


def train(
    spec: RunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    init_weights: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``spec`` on one backend. With ``run_dir`` it writes spec.json, metrics.jsonl, checkpoints and result.json."""
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.train.seed)
    data, normalizer = prepare_data(spec)
    weights = init_classifier(spec.model, data.image_shape, spec.train.seed, spec.train.dtype)
    if init_weights:
        weights.update({k: v.astype(spec.train.dtype) for k, v in init_weights.items()})
    clf = build_classifier(backend, spec, data.image_shape, weights, device)

    log = None
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
        log = MetricLog(run_dir / METRICS_FILE)
    state = RunState(task=spec.task, rngs={"batches": runstate.capture_rng(make_rng(spec.train.seed, "batches"))})
    return _fit(spec, backend, device, clf, data, normalizer, state, run_dir, log, progress)


# Fields a resumed run may change: the number of epochs (more, or fewer down to those already trained;
# the learning-rate schedule then follows the new total), checkpointing, and where the data lives
# (the training data itself is checked by content). Any other change is refused, naming the field.
RESUMABLE_FIELDS = (
    "train.epochs", "train.checkpoint_every", "train.checkpoint_every_steps", "train.checkpoint_every_minutes",
    "train.keep_checkpoints", "data.root",
)


def data_fingerprint(data: Dataset) -> str:
    return runstate.fingerprint(data.x_train, data.y_train)


def _fit(
    spec: RunSpec,
    backend: ModuleType,
    device: str,
    clf: Any,
    data: Dataset,
    normalizer: Normalizer,
    state: RunState,
    run_dir: Path | None,
    log: MetricLog | None,
    progress: bool,
) -> TrainResult:
    """The training loop from ``state`` on: a fresh state, or one restored from a run checkpoint.

    Run checkpoints (core.runstate) are written every ``train.checkpoint_every`` epochs, every
    ``checkpoint_every_steps`` steps, every ``checkpoint_every_minutes`` minutes, at the end, and on
    SIGINT/SIGTERM (after the current step; then training stops with core.errors.Interrupted).
    Batch order: ``state.rngs["batches"]`` is the batch generator at the start of epoch ``state.epoch + 1``;
    the ``state.batch`` batches of that epoch trained before are drawn again and skipped, which leaves
    the generator exactly where the uninterrupted run had it.
    """
    tr = spec.train
    steps_per_epoch = num_batches(len(data.y_train), tr.batch_size, drop_last=False)
    total_steps = steps_per_epoch * tr.epochs
    lrs = lr_table(spec.schedule, spec.optim.lr, total_steps)
    rng = runstate.restore_rng(make_rng(tr.seed, "batches"), state.rngs["batches"])
    c = state.counters
    for key in ("train_s", "epoch_s", "wall_s"):
        c.setdefault(key, 0.0)
    c.setdefault("images", 0)
    c.setdefault("segments", []).append({"backend": backend.NAME, "device": device, "from_step": state.step})
    meta = checkpoint_meta(spec, backend, normalizer, data, data_fingerprint=data_fingerprint(data)) if run_dir else {}
    last_good = run_dir / MODEL_FILE if run_dir is not None and (run_dir / MODEL_FILE).is_file() else None
    t_start = last_save = time.perf_counter()
    wall_before = c["wall_s"]

    def save_run(epoch_start: dict[str, Any]) -> Path:
        nonlocal last_save
        c["wall_s"] = wall_before + time.perf_counter() - t_start
        state.rngs["batches"] = epoch_start
        path = runstate.save(
            run_dir, state, clf.get_weights(), clf.get_optimizer_state(), meta=meta,
            framework_rng=clf.get_rng_state(), keep=tr.keep_checkpoints,
        )
        last_save = time.perf_counter()
        return path

    def due() -> bool:
        by_steps = tr.checkpoint_every_steps > 0 and state.step % tr.checkpoint_every_steps == 0
        by_time = tr.checkpoint_every_minutes > 0 and time.perf_counter() - last_save >= 60.0 * tr.checkpoint_every_minutes
        return by_steps or by_time

    def stopped(path: Path, epoch: int) -> Exception:
        other = "tf" if backend.NAME == "torch" else "torch"
        return stop.interrupted(
            f"checkpoint {path} (step {state.step}, epoch {epoch}, batch {state.batch}/{steps_per_epoch}). "
            f"Continue with: dualkit train --resume {run_dir}  (add --backend {other} to continue in the other framework)"
        )

    with StopSignal(enabled=run_dir is not None) as stop:
        if run_dir is not None and not runstate.list_checkpoints(run_dir):
            save_run(runstate.capture_rng(rng))  # step 0: from the first moment on, the run folder is resumable
        for epoch in range(state.epoch + 1, tr.epochs + 1):
            epoch_start = runstate.capture_rng(rng)
            batches = epoch_batches(
                data.x_train, data.y_train, tr.batch_size, rng, normalizer,
                crop_padding=spec.data.crop_padding, flip=spec.data.flip, dtype=tr.dtype,
            )
            done = state.batch
            for _ in itertools.islice(batches, done):
                pass  # the batches trained before a resume: drawn again (same permutation and augmentation), skipped
            epoch_losses = state.step_losses[len(state.step_losses) - done:]
            bar = progress_bar(total=steps_per_epoch, desc=f"{backend.NAME} epoch {epoch}/{tr.epochs}", enabled=progress)
            bar.update(done)
            t0 = time.perf_counter() - c["epoch_s"]
            for xb, yb in batches:
                loss = clf.train_step(xb, yb, float(lrs[state.step]))
                if not math.isfinite(loss):
                    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                    raise TrainingError(
                        f"loss became {loss} at step {state.step + 1} (epoch {epoch}); training stopped and {where}. "
                        "Lower optim.lr or set optim.clip_norm."
                    )
                state.step_losses.append(loss)
                epoch_losses.append(loss)
                state.step += 1
                state.batch += 1
                c["images"] += len(yb)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                # Mid-epoch checkpoints; the one at the epoch's end waits for its validation record.
                if run_dir is not None and state.batch < steps_per_epoch and (stop.requested or due()):
                    c["epoch_s"] = time.perf_counter() - t0
                    path = save_run(epoch_start)
                    if stop.requested:
                        bar.close()
                        raise stopped(path, epoch)
            bar.close()
            epoch_time = time.perf_counter() - t0
            c["train_s"] += epoch_time
            c["epoch_s"] = 0.0
            record: dict[str, Any] = {
                "epoch": epoch,
                "step": state.step,
                "lr": float(lrs[state.step - 1]),
                "train_loss": float(np.mean(epoch_losses)),
                "epoch_s": epoch_time,
                "images_per_s": len(data.y_train) / epoch_time,
            }
            record.update({f"val_{k}": v for k, v in evaluate_split(clf, data.x_val, data.y_val, normalizer, spec).items()})
            state.history.append(record)
            state.epoch, state.batch = epoch, 0
            if log is not None:
                log.append(record)
                if epoch % tr.checkpoint_every == 0 or epoch == tr.epochs:
                    last_good = run_dir / MODEL_FILE
                    model_meta = checkpoint_meta(spec, backend, normalizer, data, epoch=epoch, step=state.step)
                    checkpoint.save(last_good, clf.get_weights(), model_meta)
                    path = save_run(runstate.capture_rng(rng))
                elif stop.requested or due():
                    path = save_run(runstate.capture_rng(rng))
                if stop.requested and epoch < tr.epochs:  # after the last epoch only the test evaluation is left: finish
                    raise stopped(path, epoch)
    c["wall_s"] = wall_before + time.perf_counter() - t_start
    test = evaluate_split(clf, data.x_test, data.y_test, normalizer, spec)
    result = TrainResult(
        step_losses=list(state.step_losses),
        history=state.history,
        test=test,
        weights=clf.get_weights(),
        images_per_s=c["images"] / c["train_s"] if c["train_s"] else 0.0,
        wall_s=c["wall_s"],
        run_dir=run_dir,
        extra={"segments": c["segments"]},
    )
    if run_dir is not None:
        write_json(run_dir / RESULT_FILE, {
            "task": spec.task,
            "backend": backend.NAME,
            "device": device,
            "versions": backend.versions(),
            "steps": state.step,
            "epochs": tr.epochs,
            "wall_s": result.wall_s,
            "images_per_s": result.images_per_s,
            "test": test,
            "history": state.history,
            "segments": c["segments"],  # one per session: a resumed run has several, a hand-over changes backend
        })
    return result


def resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Continue a classify run from its newest run checkpoint, in place.

    ``backend_name`` defaults to the backend that wrote the checkpoint; the other one continues the run
    (hand-over) from the canonical weights and optimizer state. The spec is the run's spec.json with
    ``overrides`` applied; only :data:`RESUMABLE_FIELDS` may differ from the checkpointed spec. Every check
    runs before anything in the run folder is written, so a refused resume leaves the folder as it was.
    """
    req = runstate.open_for_resume(run_dir, "classify", "classifier", "classify", overrides, RESUMABLE_FIELDS)
    run_dir, spec, ckpt, st = req.run_dir, req.spec, req.ckpt, req.ckpt.state
    if "normalizer" not in ckpt.meta:
        raise CheckpointError(f"{ckpt.path} has no normalizer in its metadata; the file is damaged")
    needed = st.epoch + (1 if st.batch else 0)
    if spec.train.epochs < needed:
        raise SpecError(
            f"cannot resume: train.epochs={spec.train.epochs} but the run's checkpoint is at step {st.step} of "
            f"epoch {needed}; train.epochs must be at least {max(needed, 1)}"
        )
    if st.epoch == spec.train.epochs and (run_dir / RESULT_FILE).is_file():
        raise RunError(
            f"{run_dir} is already complete ({st.epoch} of {spec.train.epochs} epochs); to train it longer, "
            f"resume with --set train.epochs=N (N > {st.epoch})"
        )

    backend = registry.get_backend(backend_name or ckpt.backend, device)
    device = registry.resolve_device(backend, device)
    data = load_dataset(spec.data)
    if data_fingerprint(data) != ckpt.meta.get("data_fingerprint"):
        raise DataError(
            f"the training data loaded for {spec.data.name!r} (data.root={spec.data.root!r}) differ from those the "
            "run was trained on; point data.root at the same files"
        )
    image_shape = data.image_shape
    checkpoint.check_fits(ckpt.weights, classifier_shapes(spec.model, image_shape), "the run's classifier")
    runstate.check_optimizer_state(ckpt, spec.optim, [n for n in classifier_shapes(spec.model, image_shape) if not is_buffer(n)])
    steps_per_epoch = num_batches(len(data.y_train), spec.train.batch_size, drop_last=False)
    if st.batch > steps_per_epoch or st.step != st.epoch * steps_per_epoch + st.batch or len(st.history) != st.epoch:
        raise CheckpointError(f"{ckpt.path}: run state (step {st.step}, epoch {st.epoch}, batch {st.batch}) is inconsistent")
    normalizer = Normalizer.from_dict(ckpt.meta["normalizer"])
    backend.seed(spec.train.seed)
    clf = build_classifier(backend, spec, image_shape, ckpt.weights, device)
    clf.set_optimizer_state(ckpt.optim)
    if ckpt.backend == backend.NAME and ckpt.framework_rng:
        clf.set_rng_state(ckpt.framework_rng)  # dropout continues its stream; another framework starts its own

    # Every check passed: from here on the run folder is written.
    runstate.reopen_run_dir(req, st.history)
    if progress:
        where = f"step {st.step} (epoch {st.epoch + 1}, batch {st.batch}/{steps_per_epoch})" if st.batch else f"the end of epoch {st.epoch}"
        runstate.report_resume(req, backend.NAME, where)
    resumed = {"resumed_from": str(ckpt.path), "resumed_step": st.step, "skipped": ckpt.skipped}
    result = _fit(spec, backend, device, clf, data, normalizer, st, run_dir, MetricLog(run_dir / METRICS_FILE), progress)
    result.extra.update(resumed)
    return result


@dataclass
class LoadedRun:
    spec: RunSpec
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    normalizer: Normalizer
    image_shape: tuple[int, int, int]


def load_run(run_dir: Path) -> LoadedRun:
    """A run folder's spec and canonical checkpoint, checked to fit the spec's model."""
    run_dir = require_run_dir(run_dir)
    spec = load_json(run_dir / SPEC_FILE)
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    image_shape = tuple(meta["image_shape"])
    checkpoint.check_fits(weights, classifier_shapes(spec.model, image_shape), "the run's classifier")
    return LoadedRun(spec, weights, meta, Normalizer.from_dict(meta["normalizer"]), image_shape)


def load_classifier(run: LoadedRun, backend_name: str, device: str = "cpu"):
    backend = registry.get_backend(backend_name, device)
    return build_classifier(backend, run.spec, run.image_shape, run.weights, registry.resolve_device(backend, device))


def evaluate_run(run_dir: Path, backend_name: str | None = None, device: str = "cpu", split: str = "test") -> dict[str, Any]:
    """Evaluate a run's checkpoint in any backend (not only the one that trained it)."""
    run = load_run(run_dir)
    clf = load_classifier(run, registry.resolve_name(backend_name), device)
    data = load_dataset(run.spec.data)
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val), "train": (data.x_train, data.y_train)}[split]
    metrics = evaluate_split(clf, x, y, run.normalizer, run.spec)
    return {"split": split, "backend": registry.resolve_name(backend_name), "trained_in": run.meta["backend"], **metrics}


NATIVE_SUFFIX = {"torch": ".pt", "tf": ".keras"}


def port_run(run_dir: Path, to: str, out: Path, device: str = "cpu") -> dict[str, Any]:
    """Write the run's model as the native artifact of backend ``to`` and check the port on the test set.

    The check predicts the whole test split in the training backend and in ``to`` from the same
    canonical checkpoint: classes must be identical and logits within the L1 bound.
    """
    run = load_run(run_dir)
    to = registry.resolve_name(to)
    out = Path(out)
    if out.suffix != NATIVE_SUFFIX[to]:
        raise TrainingError(f"--out for backend {to!r} must end in {NATIVE_SUFFIX[to]}, got {out.name!r}")
    source = run.meta["backend"]
    data = load_dataset(run.spec.data)
    src = load_classifier(run, source, device)
    dst = load_classifier(run, to, device)
    a = predict_logits(src, data.x_test, run.normalizer, run.spec)
    b = predict_logits(dst, data.x_test, run.normalizer, run.spec)
    dst.save_native(str(out))
    return {
        "from": source,
        "to": to,
        "artifact": str(out),
        "test_images": len(a),
        "identical_classes": bool(np.array_equal(a.argmax(1), b.argmax(1))),
        "max_abs_logit_diff": float(np.abs(a - b).max()) if len(a) else 0.0,
        "accuracy_from": float((a.argmax(1) == data.y_test).mean()) if len(a) else float("nan"),
        "accuracy_to": float((b.argmax(1) == data.y_test).mean()) if len(b) else float("nan"),
    }
