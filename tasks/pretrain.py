"""The neutral masked-pretraining driver: core's batches and masks -> a backend's MaskedAutoencoder.

A run folder holds spec.json, metrics.jsonl, model.safetensors (encoder + decoder), encoder.safetensors
(the encoder only, in canonical names: what ``dualkit train <classifier> --init-from RUN`` starts
from), reconstructions.png (originals, masked inputs, reconstructions) and result.json (pretraining
numbers plus the linear probe and fine-tune results, pretrained vs random init; see tasks/probe.py),
and checkpoints/ with the run checkpoints (core.runstate) that :func:`resume` continues from, in the same
backend (bit-identical on CPU) or in the other one (hand-over), as tasks.classify does for classifiers.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry, runstate
from dualkit.core.batches import Normalizer, epoch_batches, make_rng, num_batches
from dualkit.core.datasets import Dataset, load_dataset
from dualkit.core.errors import CheckpointError, DataError, RunError, SpecError, TrainingError
from dualkit.core.interrupt import StopSignal
from dualkit.core.losses import masked_mse
from dualkit.core.masking import denormalize, grid_shape, patch_size_for, random_masks, upsample_mask
from dualkit.core.runs import (
    METRICS_FILE, MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, atomic_write_bytes, prepare_run_dir,
    require_run_dir, write_json,
)
from dualkit.core.runstate import RunState
from dualkit.core.schedules import lr_table
from dualkit.core.specs import MaskedRunSpec, load_json, save_json, to_dict
from dualkit.core.weights import init_masked, is_buffer, masked_shapes
from dualkit.tasks import classify
from dualkit.tasks.classify import prepare_data
from dualkit.tasks.probe import ENCODER_FILE, evaluate_encoder
from dualkit.tasks.progress import progress_bar

GRID_FILE = "reconstructions.png"
GRID_IMAGES = 8
VAL_LOSS_IMAGES = 1024  # the per-epoch validation loss uses the first N validation images, fixed masks
VAL_MASK_SEED = 0  # validation and picture masks do not move with the training seed


@dataclass
class PretrainResult:
    step_losses: list[float]
    history: list[dict[str, Any]]
    weights: dict[str, np.ndarray]
    images_per_s: float
    wall_s: float
    run_dir: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    grid: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # segments (one per session), resumed_step, ...


def build_autoencoder(backend: ModuleType, spec: MaskedRunSpec, image_shape: tuple[int, int, int],
                      weights: dict[str, np.ndarray], device: str):
    return backend.MaskedAutoencoder(spec.model, spec.decoder, image_shape, weights, spec.optim,
                                     spec.mask.norm_pix, spec.train.dtype, device)


def val_loss(mae, spec: MaskedRunSpec, data: Dataset, normalizer: Normalizer, patch: int) -> float:
    """Eval-mode masked loss on the first VAL_LOSS_IMAGES validation images with fixed masks (numpy reference loss)."""
    x = data.x_val[:VAL_LOSS_IMAGES]
    if len(x) == 0:
        return float("nan")
    masks = random_masks(len(x), grid_shape(data.image_shape, patch), spec.mask.ratio, make_rng(VAL_MASK_SEED, "masks/val"))
    total, bs = 0.0, spec.train.eval_batch_size
    for i in range(0, len(x), bs):
        xb = normalizer.apply(x[i:i + bs], spec.train.dtype)
        total += masked_mse(mae.reconstruct(xb, masks[i:i + bs]), xb, masks[i:i + bs], patch, spec.mask.norm_pix) * len(xb)
    return total / len(x)


def checkpoint_meta(spec: MaskedRunSpec, backend: ModuleType, normalizer: Normalizer, data: Dataset, patch: int,
                    kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind,  # "masked" (encoder + decoder) or "encoder"
        "spec": to_dict(spec),
        "backend": backend.NAME,
        "versions": backend.versions(),
        "normalizer": normalizer.to_dict(),
        "image_shape": list(data.image_shape),
        "patch_size": patch,
        **extra,
    }


def save_checkpoints(run_dir: Path, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    checkpoint.save(run_dir / MODEL_FILE, weights, meta)
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    checkpoint.save(run_dir / ENCODER_FILE, encoder, {**meta, "kind": "encoder"})


def write_grid(path: Path, mae, spec: MaskedRunSpec, data: Dataset, normalizer: Normalizer, patch: int) -> Path:
    """A PNG of the first GRID_IMAGES test images: originals, masked inputs, reconstructions, and the
    reconstructions with the visible patches pasted back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    x_u8 = data.x_test[:GRID_IMAGES]
    n = len(x_u8)
    masks = random_masks(n, grid_shape(data.image_shape, patch), spec.mask.ratio, make_rng(VAL_MASK_SEED, "masks/grid"))
    x = normalizer.apply(x_u8, spec.train.dtype)
    pred = mae.reconstruct(x, masks).astype(np.float64)
    if spec.mask.norm_pix:  # predicted in normalised-patch space: shown with each true patch's mean and variance
        pred = denormalize(pred, x, patch)
    hidden = upsample_mask(masks, patch)[..., None]

    def to_image(a: np.ndarray) -> np.ndarray:
        img = np.clip(a * normalizer.std + normalizer.mean, 0.0, 1.0)
        return img[..., 0] if img.shape[-1] == 1 else img

    rows = {
        "original": x,
        "masked input": np.where(hidden, np.nan, x),
        "reconstruction": pred,
        "recon. + visible": np.where(hidden, pred, x),
    }
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for r, (title, arr) in enumerate(rows.items()):
        for i in range(n):
            ax = axes[r][i]
            img = np.nan_to_num(to_image(arr[i]), nan=0.5)  # masked patches shown grey
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.suptitle(f"{spec.data.name}: mask ratio {spec.mask.ratio}, patch {patch}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def pretrain(
    spec: MaskedRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    evaluate: bool = True,
) -> PretrainResult:
    """Pretrain ``spec``'s encoder on one backend, then (``evaluate``) probe and fine-tune it.

    With ``run_dir`` it writes the run folder described in the module docstring, and run checkpoints
    (core.runstate) that ``resume`` continues from.
    """
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.train.seed)
    data, normalizer = prepare_data(spec)
    patch = patch_size_for(spec.model, data.image_shape, spec.mask.patch_size)
    tr = spec.train
    weights = init_masked(spec.model, spec.decoder, data.image_shape[2], tr.seed, tr.dtype)
    mae = build_autoencoder(backend, spec, data.image_shape, weights, device)

    log = None
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        for name in (ENCODER_FILE, GRID_FILE):  # files of an older run that prepare_run_dir does not know
            (run_dir / name).unlink(missing_ok=True)
        save_json(spec, run_dir / SPEC_FILE)
        log = MetricLog(run_dir / METRICS_FILE)
    state = RunState(task=spec.task, rngs={
        "batches": runstate.capture_rng(make_rng(tr.seed, "batches")),
        "masks": runstate.capture_rng(make_rng(tr.seed, "masks")),
    })
    return _fit(spec, backend, device, mae, data, normalizer, patch, state, run_dir, log, progress, evaluate)


# Fields a resumed run may change: the length of pretraining (train.epochs and max_steps, more, or fewer
# down to the steps already trained; the learning-rate schedule then follows the new total),
# checkpointing, and where the data live (the training data themselves are checked by content).
RESUMABLE_FIELDS = classify.RESUMABLE_FIELDS + ("max_steps",)


def total_steps_of(spec: MaskedRunSpec, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole pretraining: train.epochs full epochs, cut at max_steps if set."""
    total = steps_per_epoch * spec.train.epochs
    return min(total, spec.max_steps) if spec.max_steps else total


def _fit(
    spec: MaskedRunSpec,
    backend: ModuleType,
    device: str,
    mae: Any,
    data: Dataset,
    normalizer: Normalizer,
    patch: int,
    state: RunState,
    run_dir: Path | None,
    log: MetricLog | None,
    progress: bool,
    evaluate: bool,
) -> PretrainResult:
    """The pretraining loop from ``state`` on (fresh, or restored from a run checkpoint), then the grid,
    the evaluation and result.json.

    Run checkpoints are written as tasks.classify writes them: every ``train.checkpoint_every`` epochs,
    every ``checkpoint_every_steps`` steps, every ``checkpoint_every_minutes`` minutes, at the end, and on
    SIGINT/SIGTERM (after the current step; then pretraining stops with core.errors.Interrupted).
    Random streams: ``state.rngs["batches"]`` is the batch generator at the start of epoch
    ``state.epoch + 1`` (the ``state.batch`` batches already trained are drawn again and skipped);
    ``state.rngs["masks"]`` is the mask generator right after step ``state.step`` (masks are drawn once
    per step, so it is simply where the generator stands).
    ``state.epoch`` counts full epochs. When ``max_steps`` ends pretraining inside an epoch, that epoch
    still gets its history record while ``state.batch`` keeps its trained batches: ``len(state.history)``
    is then ``state.epoch + 1``, and a resume with more steps drops that record and finishes the epoch.
    """
    tr = spec.train
    grid = grid_shape(data.image_shape, patch)
    steps_per_epoch = num_batches(len(data.y_train), tr.batch_size, drop_last=False)
    total_steps = total_steps_of(spec, steps_per_epoch)
    epochs = -(-total_steps // steps_per_epoch)
    lrs = lr_table(spec.schedule, spec.optim.lr, total_steps)
    rng = runstate.restore_rng(make_rng(tr.seed, "batches"), state.rngs["batches"])
    mask_rng = runstate.restore_rng(make_rng(tr.seed, "masks"), state.rngs["masks"])
    c = state.counters
    for key in ("train_s", "epoch_s", "wall_s"):
        c.setdefault(key, 0.0)
    c.setdefault("images", 0)
    c.setdefault("epoch_images", 0)
    c.setdefault("segments", []).append({"backend": backend.NAME, "device": device, "from_step": state.step})
    meta = checkpoint_meta(spec, backend, normalizer, data, patch, "masked",
                           data_fingerprint=classify.data_fingerprint(data)) if run_dir else {}
    last_good = run_dir / MODEL_FILE if run_dir is not None and (run_dir / MODEL_FILE).is_file() else None
    t_start = last_save = time.perf_counter()
    wall_before = c["wall_s"]

    def save_run(epoch_start: dict[str, Any]) -> Path:
        nonlocal last_save
        c["wall_s"] = wall_before + time.perf_counter() - t_start
        state.rngs["batches"] = epoch_start
        state.rngs["masks"] = runstate.capture_rng(mask_rng)
        path = runstate.save(
            run_dir, state, mae.get_weights(), mae.get_optimizer_state(), meta=meta,
            framework_rng=mae.get_rng_state(), keep=tr.keep_checkpoints,
        )
        last_save = time.perf_counter()
        return path

    def due() -> bool:
        by_steps = tr.checkpoint_every_steps > 0 and state.step % tr.checkpoint_every_steps == 0
        by_time = tr.checkpoint_every_minutes > 0 and time.perf_counter() - last_save >= 60.0 * tr.checkpoint_every_minutes
        return by_steps or by_time

    def stopped(path: Path, epoch: int, todo: int) -> Exception:
        other = "tf" if backend.NAME == "torch" else "torch"
        return stop.interrupted(
            f"checkpoint {path} (step {state.step} of {total_steps}, epoch {epoch}, batch {state.batch}/{todo}). "
            f"Continue with: dualkit train --resume {run_dir}  (add --backend {other} to continue in the other framework)"
        )

    with StopSignal(enabled=run_dir is not None) as stop:
        if run_dir is not None and not runstate.list_checkpoints(run_dir):
            save_run(runstate.capture_rng(rng))  # step 0: from the first moment on, the run folder is resumable
        # A history record past state.epoch is an epoch that max_steps cut and that is already done.
        first_epoch = len(state.history) + 1
        for epoch in range(first_epoch, epochs + 1):
            todo = min(steps_per_epoch, total_steps - (epoch - 1) * steps_per_epoch)  # max_steps may cut the last epoch
            epoch_start = runstate.capture_rng(rng)
            batches = epoch_batches(
                data.x_train, data.y_train, tr.batch_size, rng, normalizer,
                crop_padding=spec.data.crop_padding, flip=spec.data.flip, dtype=tr.dtype,
            )
            done = state.batch
            for _ in itertools.islice(batches, done):
                pass  # the batches trained before a resume: drawn again (same permutation and augmentation), skipped
            epoch_losses = state.step_losses[len(state.step_losses) - done:]
            bar = progress_bar(total=todo, desc=f"{backend.NAME} pretrain {epoch}/{epochs}", enabled=progress)
            bar.update(done)
            t0 = time.perf_counter() - c["epoch_s"]
            for xb, _ in itertools.islice(batches, todo - done):
                masks = random_masks(len(xb), grid, spec.mask.ratio, mask_rng)
                loss = mae.train_step(xb, masks, float(lrs[state.step]))
                if not math.isfinite(loss):
                    where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                    raise TrainingError(
                        f"masked loss became {loss} at step {state.step + 1} (epoch {epoch}); pretraining stopped and "
                        f"{where}. Lower optim.lr or set optim.clip_norm."
                    )
                state.step_losses.append(loss)
                epoch_losses.append(loss)
                state.step += 1
                state.batch += 1
                c["images"] += len(xb)
                c["epoch_images"] += len(xb)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                # Mid-epoch checkpoints; the one at the epoch's end waits for its record.
                if run_dir is not None and state.batch < todo and (stop.requested or due()):
                    c["epoch_s"] = time.perf_counter() - t0
                    path = save_run(epoch_start)
                    if stop.requested:
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
            if log is not None:
                record["val_loss"] = val_loss(mae, spec, data, normalizer, patch)
                log.append(record)
            state.history.append(record)
            if run_dir is not None:
                if epoch % tr.checkpoint_every == 0 or epoch == epochs:
                    last_good = run_dir / MODEL_FILE
                    save_checkpoints(run_dir, mae.get_weights(), checkpoint_meta(
                        spec, backend, normalizer, data, patch, "masked", epoch=epoch, step=state.step))
                    path = save_run(resume_from)
                elif stop.requested or due():
                    path = save_run(resume_from)
                if stop.requested and epoch < epochs:  # after the last epoch only the grid and evaluation are left: finish
                    raise stopped(path, epoch, todo)
    c["wall_s"] = pretrain_wall = wall_before + time.perf_counter() - t_start
    t_after = time.perf_counter()
    final = mae.get_weights()
    if run_dir is not None and len(state.history) < first_epoch:
        # Nothing left to train (a resume after the last checkpoint, e.g. one that stopped in the evaluation, or
        # one told to stop earlier): model.safetensors may predate the checkpoint, so it is written from it.
        save_checkpoints(run_dir, final, checkpoint_meta(spec, backend, normalizer, data, patch, "masked",
                                                         epoch=len(state.history), step=state.step))
    result = PretrainResult(
        step_losses=list(state.step_losses),
        history=state.history,
        weights=final,
        images_per_s=c["images"] / c["train_s"] if c["train_s"] else 0.0,
        wall_s=pretrain_wall,
        run_dir=run_dir,
        extra={"segments": c["segments"]},
    )
    if run_dir is not None:
        result.grid = write_grid(run_dir / GRID_FILE, mae, spec, data, normalizer, patch)
    if evaluate:
        encoder = {k: v for k, v in final.items() if k.startswith("encoder.")}
        result.evaluation = evaluate_encoder(backend.NAME, spec, encoder, data, normalizer, device, progress)
    if run_dir is not None:
        history = state.history
        write_json(run_dir / RESULT_FILE, {
            "task": spec.task,
            "backend": backend.NAME,
            "device": device,
            "seed": tr.seed,
            "versions": backend.versions(),
            "steps": state.step,
            "epochs": epochs,
            "pretrain_wall_s": pretrain_wall,
            "wall_s": pretrain_wall + time.perf_counter() - t_after,
            "images_per_s": result.images_per_s,
            "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
            "final_val_loss": history[-1].get("val_loss", float("nan")) if history else float("nan"),
            "patch_size": patch,
            "grid": GRID_FILE,
            "evaluation": result.evaluation,
            "history": history,
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
) -> PretrainResult:
    """Continue a masked-pretraining run from its newest run checkpoint, in place, then evaluate it.

    ``backend_name`` defaults to the backend that wrote the checkpoint; the other one continues the run
    (hand-over) from the canonical weights and optimizer state. The spec is the run's spec.json with
    ``overrides`` applied; only :data:`RESUMABLE_FIELDS` may differ from the checkpointed spec. Every check
    runs before anything in the run folder is written, so a refused resume leaves the folder as it was.
    """
    req = runstate.open_for_resume(run_dir, "masked", "masked", "masked-pretraining", overrides, RESUMABLE_FIELDS)
    run_dir, spec, ckpt, st = req.run_dir, req.spec, req.ckpt, req.ckpt.state
    if "normalizer" not in ckpt.meta:
        raise CheckpointError(f"{ckpt.path} has no normalizer in its metadata; the file is damaged")

    backend = registry.get_backend(backend_name or ckpt.backend, device)
    device = registry.resolve_device(backend, device)
    data = load_dataset(spec.data)
    if classify.data_fingerprint(data) != ckpt.meta.get("data_fingerprint"):
        raise DataError(
            f"the training data loaded for {spec.data.name!r} (data.root={spec.data.root!r}) differ from those the "
            "run was trained on; point data.root at the same files"
        )
    steps_per_epoch = num_batches(len(data.y_train), spec.train.batch_size, drop_last=False)
    total_steps = total_steps_of(spec, steps_per_epoch)
    if total_steps < st.step:
        raise SpecError(
            f"cannot resume: train.epochs={spec.train.epochs} and max_steps={spec.max_steps} give {total_steps} steps, "
            f"but the run's checkpoint is at step {st.step}; they must allow at least {st.step} steps"
        )
    if total_steps == st.step and (run_dir / RESULT_FILE).is_file():
        raise RunError(
            f"{run_dir} is already complete ({st.step} of {total_steps} steps); to pretrain it longer, resume with "
            f"--set train.epochs=N" + (" and/or --set max_steps=N" if spec.max_steps else "") + f" (more than {st.step} steps)"
        )
    cut = st.batch > 0 and len(st.history) == st.epoch + 1  # the last epoch was cut by max_steps and recorded
    if (st.batch > steps_per_epoch or st.step != st.epoch * steps_per_epoch + st.batch
            or len(st.history) - st.epoch not in ((0, 1) if st.batch else (0,))
            or set(st.rngs) != {"batches", "masks"}):
        raise CheckpointError(f"{ckpt.path}: run state (step {st.step}, epoch {st.epoch}, batch {st.batch}) is inconsistent")
    image_shape = data.image_shape
    shapes = masked_shapes(spec.model, spec.decoder, image_shape[2])
    checkpoint.check_fits(ckpt.weights, shapes, "the run's masked autoencoder")
    runstate.check_optimizer_state(ckpt, spec.optim, [n for n in shapes if not is_buffer(n)])
    patch = patch_size_for(spec.model, image_shape, spec.mask.patch_size)
    normalizer = Normalizer.from_dict(ckpt.meta["normalizer"])
    backend.seed(spec.train.seed)
    mae = build_autoencoder(backend, spec, image_shape, ckpt.weights, device)
    mae.set_optimizer_state(ckpt.optim)
    if ckpt.backend == backend.NAME and ckpt.framework_rng:
        mae.set_rng_state(ckpt.framework_rng)  # the framework's stream continues; another framework starts its own

    # Every check passed: from here on the run folder is written.
    if cut and total_steps > st.step:
        st.history.pop()  # the cut epoch goes on: its record is written again once it is finished
    runstate.reopen_run_dir(req, st.history)
    if progress:
        where = (f"step {st.step} (epoch {st.epoch + 1}, batch {st.batch}/{steps_per_epoch})" if st.batch
                 else f"the end of epoch {st.epoch}")
        runstate.report_resume(req, backend.NAME, where)
    resumed = {"resumed_from": str(ckpt.path), "resumed_step": st.step, "skipped": ckpt.skipped}
    result = _fit(spec, backend, device, mae, data, normalizer, patch, st, run_dir, MetricLog(run_dir / METRICS_FILE),
                  progress, evaluate=True)
    result.extra.update(resumed)
    return result


@dataclass
class LoadedPretrainRun:
    spec: MaskedRunSpec
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    normalizer: Normalizer
    image_shape: tuple[int, int, int]


def load_run(run_dir: Path) -> LoadedPretrainRun:
    """A masked run folder's spec and canonical checkpoint, checked to fit the spec's autoencoder."""
    run_dir = require_run_dir(run_dir)
    spec = load_json(run_dir / SPEC_FILE)
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    image_shape = tuple(meta["image_shape"])
    checkpoint.check_fits(weights, masked_shapes(spec.model, spec.decoder, image_shape[2]), "the run's masked autoencoder")
    return LoadedPretrainRun(spec, weights, meta, Normalizer.from_dict(meta["normalizer"]), image_shape)


def evaluate_run(run_dir: Path, backend_name: str | None = None, device: str = "cpu", progress: bool = False,
                 finetune: bool = True) -> dict[str, Any]:
    """Probe (and fine-tune) a masked run's encoder in any backend; writes eval-<backend>.json in the run."""
    run = load_run(run_dir)
    name = registry.resolve_name(backend_name)
    data = load_dataset(run.spec.data)
    encoder = {k: v for k, v in run.weights.items() if k.startswith("encoder.")}
    res = evaluate_encoder(name, run.spec, encoder, data, run.normalizer, device, progress, None if finetune else ())
    res["trained_in"] = run.meta["backend"]
    write_json(Path(run_dir) / f"eval-{name}.json", res)
    return res
