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
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, distributed, registry
from dualkit.core.batches import Normalizer, make_rng
from dualkit.core.datasets import Dataset, load_dataset
from dualkit.core.losses import masked_mse
from dualkit.core.masking import (
    denormalize,
    grid_shape,
    patch_size_for,
    random_masks,
    upsample_mask,
)
from dualkit.core.runs import (
    MODEL_FILE,
    SPEC_FILE,
    atomic_write_bytes,
    one_writer,
    prepare_run_dir,
    write_json,
)
from dualkit.core.runstate import RunState
from dualkit.core.specs import save_json, to_dict
from dualkit.core.weights import init_masked, masked_shapes
from dualkit.tasks import classify
from dualkit.tasks.classify import prepare_data
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
from dualkit.tasks.masked_spec import MaskedRunSpec
from dualkit.tasks.probe import ENCODER_FILE, evaluate_encoder

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


def build_autoencoder(
    backend: ModuleType,
    spec: MaskedRunSpec,
    image_shape: tuple[int, int, int],
    weights: dict[str, np.ndarray],
    device: str,
):
    return backend.MaskedAutoencoder(
        spec.model, spec.decoder, image_shape, weights, spec.optim, spec.mask.norm_pix, spec.dtype, device
    )


def val_loss(mae, spec: MaskedRunSpec, data: Dataset, normalizer: Normalizer, patch: int) -> float:
    """Eval-mode masked loss on the first VAL_LOSS_IMAGES validation images with fixed masks (numpy reference loss)."""
    x = data.x_val[:VAL_LOSS_IMAGES]
    if len(x) == 0:
        return float("nan")
    masks = random_masks(
        len(x), grid_shape(data.image_shape, patch), spec.mask.ratio, make_rng(VAL_MASK_SEED, "masks/val")
    )
    total, bs = 0.0, spec.train.eval_batch_size
    for i in range(0, len(x), bs):
        xb = normalizer.apply(x[i : i + bs], spec.dtype)
        total += masked_mse(
            mae.reconstruct(xb, masks[i : i + bs]), xb, masks[i : i + bs], patch, spec.mask.norm_pix
        ) * len(xb)
    return total / len(x)


def checkpoint_meta(
    spec: MaskedRunSpec, backend: ModuleType, normalizer: Normalizer, data: Dataset, patch: int, kind: str, **extra: Any
) -> dict[str, Any]:
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
    x = normalizer.apply(x_u8, spec.dtype)
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
    init_weights: dict[str, np.ndarray] | None = None,
) -> PretrainResult:
    """Pretrain ``spec``'s encoder on one backend, then (``evaluate``) probe and fine-tune it. ``init_weights``
    replace initial tensors by name (parity's rounding envelope starts from 1-ulp-moved weights).

    With ``run_dir`` it writes the run folder described in the module docstring, and run checkpoints
    (core.runstate) that ``resume`` continues from. On several workers rank 0 writes it and evaluates; the others
    only train.
    """
    return _pretrain(
        spec,
        backend_name,
        run_dir=writer_dir(run_dir),
        device=device,
        progress=progress,
        overwrite=overwrite,
        evaluate=evaluate,
        init_weights=init_weights,
    )


@one_writer
def _pretrain(
    spec: MaskedRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    evaluate: bool = True,
    init_weights: dict[str, np.ndarray] | None = None,
) -> PretrainResult:
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    data, normalizer = prepare_data(spec)
    check_shards(spec, len(data.y_train), distributed.current())
    patch = patch_size_for(spec.model, data.image_shape, spec.mask.patch_size)
    weights = init_masked(spec.model, spec.decoder, data.image_shape[2], spec.seed, spec.dtype)
    if init_weights:
        weights.update({k: np.asarray(v).astype(spec.dtype) for k, v in init_weights.items()})
    mae = build_autoencoder(backend, spec, data.image_shape, weights, device)
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        for name in (ENCODER_FILE, GRID_FILE):  # files of an older run that prepare_run_dir does not know
            (run_dir / name).unlink(missing_ok=True)
        save_json(spec, run_dir / SPEC_FILE)
    state = new_state(spec.task, spec.seed, ("batches", "masks"))
    return _fit(spec, backend, device, mae, data, normalizer, patch, state, run_dir, progress, evaluate)


# Fields a resumed run may change: the length of pretraining (train.epochs and max_steps, more, or fewer
# down to the steps already trained; the learning-rate schedule then follows the new total),
# checkpointing, and where the data live (the training data themselves are checked by content).
RESUMABLE_FIELDS = classify.RESUMABLE_FIELDS + ("max_steps",)


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
    progress: bool,
    evaluate: bool,
) -> PretrainResult:
    """Pretrain from ``state`` on (fresh, or restored from a run checkpoint) through the run loop
    (tasks/loop.py), then the grid, the evaluation and result.json.

    Masks are drawn once per step from ``state.rngs["masks"]``, which the run checkpoints save as it
    stands right after step ``state.step``.
    """
    grid = grid_shape(data.image_shape, patch)
    mask_rng = make_rng(spec.seed, "masks")
    log = RunLog(run_dir)
    meta = (
        checkpoint_meta(spec, backend, normalizer, data, patch, "masked", data_fingerprint=data_fingerprint(data))
        if run_dir
        else {}
    )

    def prepare(xb: np.ndarray, _: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # masks for the whole global batch (every worker draws alike, then trains on its shard of both)
        return xb, random_masks(len(xb), grid, spec.mask.ratio, mask_rng)

    def record(rec: dict[str, Any]) -> None:
        if log.enabled:  # the validation loss is logged, not needed by a benchmark run
            rec["val_loss"] = val_loss(mae, spec, data, normalizer, patch)

    def save_model(epoch: int, step: int) -> None:
        save_checkpoints(
            run_dir,
            mae.get_weights(),
            checkpoint_meta(spec, backend, normalizer, data, patch, "masked", epoch=epoch, step=step),
        )

    task = EpochTask(
        model=mae,
        step=mae.train_step,
        prepare=prepare,
        record=record,
        save_model=save_model,
        streams={"masks": mask_rng},
        loss_name="masked loss",
        verb="pretraining",
        desc="pretrain",
    )
    try:
        out = run_epochs(
            spec, backend.NAME, device, task, data, normalizer, state, log, meta, progress, max_steps=spec.max_steps
        )
        t_after = time.perf_counter()
        final = mae.get_weights()
        result = PretrainResult(
            step_losses=list(state.step_losses),
            history=state.history,
            weights=final,
            images_per_s=out.images_per_s,
            wall_s=out.wall_s,
            run_dir=run_dir,
            extra={"segments": out.segments},
        )
        if run_dir is not None:
            result.grid = write_grid(run_dir / GRID_FILE, mae, spec, data, normalizer, patch)
        if evaluate and distributed.current().writer:  # the other workers of a distributed run only train
            encoder = {k: v for k, v in final.items() if k.startswith("encoder.")}
            result.evaluation = evaluate_encoder(backend.NAME, spec, encoder, data, normalizer, device, progress)
        history = state.history
        log.result(
            spec,
            backend,
            device,
            out.segments,
            steps=state.step,
            epochs=len(history),
            pretrain_wall_s=out.wall_s,
            wall_s=out.wall_s + time.perf_counter() - t_after,
            images_per_s=result.images_per_s,
            final_train_loss=history[-1]["train_loss"] if history else float("nan"),
            final_val_loss=history[-1].get("val_loss", float("nan")) if history else float("nan"),
            patch_size=patch,
            grid=GRID_FILE,
            evaluation=result.evaluation,
            history=history,
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
) -> PretrainResult:
    """Continue a masked-pretraining run from its newest run checkpoint, in place, then evaluate it: in the
    backend that wrote it, or in the other one (hand-over), on any number of workers. What may change and what is
    checked first: tasks/loop.open_epoch_resume. On several workers rank 0 holds the run folder; the others only
    read it."""
    go = _resume_locked if distributed.current().writer else _resume
    return go(run_dir, backend_name, overrides=overrides, device=device, progress=progress)


def _resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> PretrainResult:
    r = open_epoch_resume(
        run_dir,
        "masked",
        "masked",
        "masked-pretraining",
        overrides,
        RESUMABLE_FIELDS,
        backend_name,
        device,
        lambda spec, shape: masked_shapes(spec.model, spec.decoder, shape[2]),
        streams=("batches", "masks"),
    )
    spec, image_shape = r.spec, r.data.image_shape
    patch = patch_size_for(spec.model, image_shape, spec.mask.patch_size)
    mae = build_autoencoder(r.backend, spec, image_shape, r.req.ckpt.weights, r.device)
    r.restore(mae)
    resumed = r.begin(progress)  # every check passed: from here on the run folder is written
    run_dir = writer_dir(r.req.run_dir)
    result = _fit(spec, r.backend, r.device, mae, r.data, r.normalizer, patch, r.state, run_dir, progress, True)
    result.extra.update(resumed)
    return result


_resume_locked = one_writer(create=False)(_resume)


def load_run(run_dir: Path) -> LoadedRun:
    """A masked run folder's spec and canonical checkpoint, checked to fit the spec's autoencoder."""
    return load_image_run(
        run_dir, lambda spec, shape: masked_shapes(spec.model, spec.decoder, shape[2]), "masked autoencoder"
    )


def evaluate_run(
    run_dir: Path, backend_name: str | None = None, device: str = "cpu", progress: bool = False, finetune: bool = True
) -> dict[str, Any]:
    """Probe (and fine-tune) a masked run's encoder in any backend; writes eval-<backend>.json in the run."""
    run = load_run(run_dir)
    name = registry.resolve_name(backend_name)
    data = load_dataset(run.spec.data)
    encoder = {k: v for k, v in run.weights.items() if k.startswith("encoder.")}
    res = evaluate_encoder(name, run.spec, encoder, data, run.normalizer, device, progress, None if finetune else ())
    res["trained_in"] = run.meta["backend"]
    write_json(Path(run_dir) / f"eval-{name}.json", res)
    return res
