"""The neutral classification driver: core's batches -> a backend's steps; logs, evaluation, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, distributed, registry
from dualkit.core.batches import Normalizer, eval_batches
from dualkit.core.datasets import Dataset, load_dataset
from dualkit.core.errors import DataError, SpecError, TrainingError
from dualkit.core.metrics import classification_metrics
from dualkit.core.runs import (
    MODEL_FILE,
    SPEC_FILE,
    one_writer,
    prepare_run_dir,
)
from dualkit.core.runstate import RunState
from dualkit.core.specs import save_json, to_dict
from dualkit.core.weights import classifier_shapes, init_classifier
from dualkit.tasks.base import NATIVE_SUFFIX
from dualkit.tasks.classify_spec import ClassifyRunSpec
from dualkit.tasks.loop import (
    EpochTask,
    LoadedRun,
    RunLog,
    check_shards,
    data_fingerprint,
    load_image_run,
    new_state,
    open_epoch_resume,
    run_epochs,
    writer_dir,
)


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


def check_fits_data(spec: ClassifyRunSpec, data: Dataset) -> None:
    """Refuse, before anything is written, a model that cannot train on these images: labels beyond
    ``model.num_classes``, or more pooling blocks than the images have pixels to halve."""
    top = max((int(y.max()) for y in (data.y_train, data.y_val, data.y_test) if len(y)), default=-1)
    if top >= spec.model.num_classes:
        raise SpecError(
            f"model.num_classes={spec.model.num_classes}, but the labels of {spec.data.name!r} go up to {top}; "
            f"set model.num_classes={top + 1} (or more)"
        )
    h, w = data.image_shape[:2]
    blocks = len(spec.model.channels)
    fits = max(int(np.floor(np.log2(min(h, w)))), 0)
    if blocks > fits:
        raise SpecError(
            f"model.channels has {blocks} blocks, each halving the image with a 2x2 max-pool, but {h}x{w} images "
            f"can be halved only {fits} times; use at most {fits} entries in model.channels"
        )


def prepare_data(spec: ClassifyRunSpec) -> tuple[Dataset, Normalizer]:
    data = load_dataset(spec.data)
    check_fits_data(spec, data)
    channels = data.image_shape[2]
    normalizer = Normalizer.fit(data.x_train) if spec.data.normalize else Normalizer.identity(channels)
    return data, normalizer


def build_classifier(
    backend: ModuleType,
    spec: ClassifyRunSpec,
    image_shape: tuple[int, int, int],
    weights: dict[str, np.ndarray],
    device: str,
):
    return backend.Classifier(
        spec.model, image_shape, weights, spec.optim, spec.train.label_smoothing, spec.dtype, device
    )


def predict_logits(clf, x_uint8: np.ndarray, normalizer: Normalizer, spec: ClassifyRunSpec) -> np.ndarray:
    """Eval-mode logits for a whole split, in order, batch by batch."""
    dummy = np.zeros(len(x_uint8), dtype=np.int64)
    parts = [
        clf.predict(xb) for xb, _ in eval_batches(x_uint8, dummy, spec.train.eval_batch_size, normalizer, spec.dtype)
    ]
    if not parts:
        return np.zeros((0, spec.model.num_classes))
    return np.concatenate(parts)


def evaluate_split(
    clf, x_uint8: np.ndarray, y: np.ndarray, normalizer: Normalizer, spec: ClassifyRunSpec
) -> dict[str, float]:
    if len(y) == 0:
        return {}
    logits = predict_logits(clf, x_uint8, normalizer, spec)
    return classification_metrics(logits, y, spec.model.num_classes, spec.train.label_smoothing)


def checkpoint_meta(
    spec: ClassifyRunSpec, backend: ModuleType, normalizer: Normalizer, data: Dataset, **extra: Any
) -> dict[str, Any]:
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
    spec: ClassifyRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    init_weights: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``spec`` on one backend. With ``run_dir`` it writes spec.json, metrics.jsonl, checkpoints, TensorBoard
    events and result.json (on several workers: rank 0 does; the others write nothing)."""
    return _train(
        spec,
        backend_name,
        run_dir=writer_dir(run_dir),
        device=device,
        progress=progress,
        overwrite=overwrite,
        init_weights=init_weights,
    )


@one_writer
def _train(
    spec: ClassifyRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    init_weights: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    data, normalizer = prepare_data(spec)
    check_shards(spec, len(data.y_train), distributed.current())
    weights = init_classifier(spec.model, data.image_shape, spec.seed, spec.dtype)
    if init_weights:
        weights.update({k: v.astype(spec.dtype) for k, v in init_weights.items()})
    clf = build_classifier(backend, spec, data.image_shape, weights, device)

    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
    return _fit(spec, backend, device, clf, data, normalizer, new_state(spec.task, spec.seed), run_dir, progress)


# Fields a resumed run may change: the number of epochs (more, or fewer down to those already trained;
# the learning-rate schedule then follows the new total), checkpointing, and where the data lives
# (the training data itself is checked by content). Any other change is refused, naming the field.
RESUMABLE_FIELDS = (
    "train.epochs",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "data.root",
)


def _fit(
    spec: ClassifyRunSpec,
    backend: ModuleType,
    device: str,
    clf: Any,
    data: Dataset,
    normalizer: Normalizer,
    state: RunState,
    run_dir: Path | None,
    progress: bool,
) -> TrainResult:
    """Train from ``state`` on (fresh, or restored from a run checkpoint) through the run loop
    (tasks/loop.py), then evaluate on the test split and write result.json."""
    log = RunLog(run_dir)
    meta = checkpoint_meta(spec, backend, normalizer, data, data_fingerprint=data_fingerprint(data)) if run_dir else {}

    def record(rec: dict[str, Any]) -> None:
        rec.update({f"val_{k}": v for k, v in evaluate_split(clf, data.x_val, data.y_val, normalizer, spec).items()})

    def save_model(epoch: int, step: int) -> None:
        checkpoint.save(
            run_dir / MODEL_FILE,
            clf.get_weights(),
            checkpoint_meta(spec, backend, normalizer, data, epoch=epoch, step=step),
        )

    task = EpochTask(model=clf, step=clf.train_step, record=record, save_model=save_model, desc="epoch")
    try:
        out = run_epochs(spec, backend.NAME, device, task, data, normalizer, state, log, meta, progress)
        # the test metrics: the workers that write nothing need none
        test = evaluate_split(clf, data.x_test, data.y_test, normalizer, spec) if distributed.current().writer else {}
        result = TrainResult(
            step_losses=list(state.step_losses),
            history=state.history,
            test=test,
            weights=clf.get_weights(),
            images_per_s=out.images_per_s,
            wall_s=out.wall_s,
            run_dir=run_dir,
            extra={"segments": out.segments},
        )
        log.result(
            spec,
            backend,
            device,
            out.segments,
            steps=state.step,
            epochs=spec.train.epochs,
            wall_s=result.wall_s,
            images_per_s=result.images_per_s,
            test=test,
            history=state.history,
        )
    finally:
        log.close()
    return result


def resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Continue a classify run from its newest run checkpoint, in place: in the backend that wrote it, or in
    the other one (hand-over), on any number of workers. What may change and what is checked first:
    tasks/loop.open_epoch_resume. On several workers rank 0 holds the run folder; the others only read it."""
    go = _resume_locked if distributed.current().writer else _resume
    return go(run_dir, backend_name, overrides=overrides, device=device, progress=progress)


def _resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> TrainResult:
    r = open_epoch_resume(
        run_dir,
        "classify",
        "classifier",
        "classify",
        overrides,
        RESUMABLE_FIELDS,
        backend_name,
        device,
        lambda spec, shape: classifier_shapes(spec.model, shape),
    )
    clf = build_classifier(r.backend, r.spec, r.data.image_shape, r.req.ckpt.weights, r.device)
    r.restore(clf)
    resumed = r.begin(progress)  # every check passed: from here on the run folder is written
    result = _fit(r.spec, r.backend, r.device, clf, r.data, r.normalizer, r.state, writer_dir(r.req.run_dir), progress)
    result.extra.update(resumed)
    return result


_resume_locked = one_writer(create=False)(_resume)


def load_run(run_dir: Path) -> LoadedRun:
    """A run folder's spec and canonical checkpoint, checked to fit the spec's model."""
    return load_image_run(run_dir, lambda spec, shape: classifier_shapes(spec.model, shape), "classifier")


def load_classifier(run: LoadedRun, backend_name: str, device: str = "cpu"):
    backend = registry.get_backend(backend_name, device)
    return build_classifier(backend, run.spec, run.image_shape, run.weights, registry.resolve_device(backend, device))


def evaluate_run(
    run_dir: Path, backend_name: str | None = None, device: str = "cpu", split: str = "test"
) -> dict[str, Any]:
    """Evaluate a run's checkpoint in any backend (not only the one that trained it)."""
    run = load_run(run_dir)
    clf = load_classifier(run, registry.resolve_name(backend_name), device)
    data = load_dataset(run.spec.data)
    x, y = {"test": (data.x_test, data.y_test), "val": (data.x_val, data.y_val), "train": (data.x_train, data.y_train)}[
        split
    ]
    if len(y) == 0:
        raise DataError(
            f"the {split} split of this run's data is empty (data.val_fraction={run.spec.data.val_fraction}); "
            "evaluate --split test or --split train"
        )
    metrics = evaluate_split(clf, x, y, run.normalizer, run.spec)
    return {
        "split": split,
        "backend": registry.resolve_name(backend_name),
        "trained_in": run.meta["backend"],
        **metrics,
    }


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
