"""The neutral classification driver: core's batches -> a backend's steps; logs, evaluation, checkpoints."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from core import checkpoint, registry
from core.batches import Normalizer, epoch_batches, eval_batches, make_rng, num_batches
from core.datasets import Dataset, load_dataset
from core.errors import TrainingError
from core.metrics import classification_metrics
from core.runs import MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, prepare_run_dir, require_run_dir, write_json
from core.schedules import lr_table
from core.specs import RunSpec, load_json, save_json, to_dict
from core.weights import classifier_shapes, init_classifier
from tasks.progress import progress_bar


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
        log = MetricLog(run_dir / "metrics.jsonl")

    tr = spec.train
    steps_per_epoch = num_batches(len(data.y_train), tr.batch_size, drop_last=False)
    total_steps = steps_per_epoch * tr.epochs
    lrs = lr_table(spec.schedule, spec.optim.lr, total_steps)
    rng = make_rng(tr.seed, "batches")
    step_losses: list[float] = []
    history: list[dict[str, Any]] = []
    step, train_time, images = 0, 0.0, 0
    t_start = time.perf_counter()
    last_good: Path | None = None
    for epoch in range(1, tr.epochs + 1):
        batches = epoch_batches(
            data.x_train, data.y_train, tr.batch_size, rng, normalizer,
            crop_padding=spec.data.crop_padding, flip=spec.data.flip, dtype=tr.dtype,
        )
        bar = progress_bar(total=steps_per_epoch, desc=f"{backend.NAME} epoch {epoch}/{tr.epochs}", enabled=progress)
        epoch_losses = []
        t0 = time.perf_counter()
        for xb, yb in batches:
            loss = clf.train_step(xb, yb, float(lrs[step]))
            if not math.isfinite(loss):
                where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                raise TrainingError(
                    f"loss became {loss} at step {step + 1} (epoch {epoch}); training stopped and {where}. "
                    "Lower optim.lr or set optim.clip_norm."
                )
            step_losses.append(loss)
            epoch_losses.append(loss)
            step += 1
            images += len(yb)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.close()
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "lr": float(lrs[step - 1]),
            "train_loss": float(np.mean(epoch_losses)),
            "epoch_s": epoch_time,
            "images_per_s": len(data.y_train) / epoch_time,
        }
        record.update({f"val_{k}": v for k, v in evaluate_split(clf, data.x_val, data.y_val, normalizer, spec).items()})
        history.append(record)
        if log is not None:
            log.append(record)
            if epoch % tr.checkpoint_every == 0 or epoch == tr.epochs:
                last_good = run_dir / MODEL_FILE
                meta = checkpoint_meta(spec, backend, normalizer, data, epoch=epoch, step=step)
                checkpoint.save(last_good, clf.get_weights(), meta)
    wall = time.perf_counter() - t_start
    test = evaluate_split(clf, data.x_test, data.y_test, normalizer, spec)
    result = TrainResult(
        step_losses=step_losses,
        history=history,
        test=test,
        weights=clf.get_weights(),
        images_per_s=images / train_time if train_time else 0.0,
        wall_s=wall,
        run_dir=run_dir,
    )
    if run_dir is not None:
        write_json(run_dir / RESULT_FILE, {
            "task": spec.task,
            "backend": backend.NAME,
            "device": device,
            "versions": backend.versions(),
            "steps": step,
            "epochs": tr.epochs,
            "wall_s": wall,
            "images_per_s": result.images_per_s,
            "test": test,
            "history": history,
        })
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
