"""The neutral masked-pretraining driver: core's batches and masks -> a backend's MaskedAutoencoder.

A run folder holds spec.json, metrics.jsonl, model.safetensors (encoder + decoder), encoder.safetensors
(the encoder only, in canonical names: what ``dualkit train <classifier> --init-from RUN`` starts
from), reconstructions.png (originals, masked inputs, reconstructions) and result.json (pretraining
numbers plus the linear probe and fine-tune results, pretrained vs random init; see tasks/probe.py).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from core import checkpoint, registry
from core.batches import Normalizer, epoch_batches, make_rng, num_batches
from core.datasets import Dataset, load_dataset
from core.errors import TrainingError
from core.losses import masked_mse
from core.masking import denormalize, grid_shape, patch_size_for, random_masks, upsample_mask
from core.runs import (
    MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, atomic_write_bytes, prepare_run_dir, require_run_dir, write_json,
)
from core.schedules import lr_table
from core.specs import MaskedRunSpec, load_json, save_json, to_dict
from core.weights import init_masked, masked_shapes
from tasks.classify import prepare_data
from tasks.probe import ENCODER_FILE, evaluate_encoder
from tasks.progress import progress_bar

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

    With ``run_dir`` it writes the run folder described in the module docstring.
    """
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.train.seed)
    data, normalizer = prepare_data(spec)
    patch = patch_size_for(spec.model, data.image_shape, spec.mask.patch_size)
    grid = grid_shape(data.image_shape, patch)
    tr = spec.train
    weights = init_masked(spec.model, spec.decoder, data.image_shape[2], tr.seed, tr.dtype)
    mae = build_autoencoder(backend, spec, data.image_shape, weights, device)

    log = None
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        for name in (ENCODER_FILE, GRID_FILE):  # files of an older run that prepare_run_dir does not know
            (run_dir / name).unlink(missing_ok=True)
        save_json(spec, run_dir / SPEC_FILE)
        log = MetricLog(run_dir / "metrics.jsonl")

    steps_per_epoch = num_batches(len(data.y_train), tr.batch_size, drop_last=False)
    total_steps = steps_per_epoch * tr.epochs
    if spec.max_steps:
        total_steps = min(total_steps, spec.max_steps)
    epochs = -(-total_steps // steps_per_epoch)
    lrs = lr_table(spec.schedule, spec.optim.lr, total_steps)
    rng = make_rng(tr.seed, "batches")
    mask_rng = make_rng(tr.seed, "masks")
    step_losses: list[float] = []
    history: list[dict[str, Any]] = []
    step, train_time, images = 0, 0.0, 0
    t_start = time.perf_counter()
    last_good: Path | None = None
    for epoch in range(1, epochs + 1):
        batches = epoch_batches(
            data.x_train, data.y_train, tr.batch_size, rng, normalizer,
            crop_padding=spec.data.crop_padding, flip=spec.data.flip, dtype=tr.dtype,
        )
        todo = min(steps_per_epoch, total_steps - step)
        bar = progress_bar(total=todo, desc=f"{backend.NAME} pretrain {epoch}/{epochs}", enabled=progress)
        epoch_losses, epoch_images = [], 0
        t0 = time.perf_counter()
        for xb, _ in batches:
            if len(epoch_losses) == todo:
                break
            masks = random_masks(len(xb), grid, spec.mask.ratio, mask_rng)
            loss = mae.train_step(xb, masks, float(lrs[step]))
            if not math.isfinite(loss):
                where = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written yet"
                raise TrainingError(
                    f"masked loss became {loss} at step {step + 1} (epoch {epoch}); pretraining stopped and {where}. "
                    "Lower optim.lr or set optim.clip_norm."
                )
            step_losses.append(loss)
            epoch_losses.append(loss)
            step += 1
            images += len(xb)
            epoch_images += len(xb)
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
            "images_per_s": epoch_images / epoch_time,
        }
        if log is not None:
            record["val_loss"] = val_loss(mae, spec, data, normalizer, patch)
            log.append(record)
            if epoch % tr.checkpoint_every == 0 or epoch == epochs:
                last_good = run_dir / MODEL_FILE
                save_checkpoints(run_dir, mae.get_weights(),
                                 checkpoint_meta(spec, backend, normalizer, data, patch, "masked", epoch=epoch, step=step))
        history.append(record)
    pretrain_wall = time.perf_counter() - t_start
    final = mae.get_weights()
    result = PretrainResult(
        step_losses=step_losses,
        history=history,
        weights=final,
        images_per_s=images / train_time if train_time else 0.0,
        wall_s=pretrain_wall,
        run_dir=run_dir,
    )
    if run_dir is not None:
        result.grid = write_grid(run_dir / GRID_FILE, mae, spec, data, normalizer, patch)
    if evaluate:
        encoder = {k: v for k, v in final.items() if k.startswith("encoder.")}
        result.evaluation = evaluate_encoder(backend.NAME, spec, encoder, data, normalizer, device, progress)
    if run_dir is not None:
        write_json(run_dir / RESULT_FILE, {
            "task": spec.task,
            "backend": backend.NAME,
            "device": device,
            "seed": tr.seed,
            "versions": backend.versions(),
            "steps": step,
            "epochs": epochs,
            "pretrain_wall_s": pretrain_wall,
            "wall_s": time.perf_counter() - t_start,
            "images_per_s": result.images_per_s,
            "final_train_loss": history[-1]["train_loss"] if history else float("nan"),
            "final_val_loss": history[-1].get("val_loss", float("nan")) if history else float("nan"),
            "patch_size": patch,
            "grid": GRID_FILE,
            "evaluation": result.evaluation,
            "history": history,
        })
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
