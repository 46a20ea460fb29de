"""What pretraining is worth: a linear probe and label-fraction fine-tuning, pretrained vs random init.

Both protocols run the same way on the pretrained encoder and on the same encoder at its random
initialisation (the pretraining's starting point, ``core.weights.init_masked``):
- linear probe: the frozen encoder (eval mode, whole images) gives global-average-pooled features in the
  chosen backend; a multinomial logistic regression is fitted on them in numpy/scikit-learn
  (standardised features, L-BFGS in float64; the inverse L2 strength is chosen from ``probe.c_grid`` on the
  validation split) and scored on the test split;
- fine-tuning: tasks.classify.train on the first ``fraction`` of the training images, starting from the
  encoder with a fresh head, scored on the test split.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import checkpoint, registry
from dualkit.core.batches import Normalizer, eval_batches
from dualkit.core.datasets import Dataset
from dualkit.core.errors import CheckpointError
from dualkit.core.runs import MODEL_FILE
from dualkit.core.weights import encoder_shapes, init_weights
from dualkit.tasks.classify_spec import ClassifyRunSpec
from dualkit.tasks.masked_spec import MaskedRunSpec

ENCODER_FILE = "encoder.safetensors"


# -- encoders -----------------------------------------------------------------------------------------
def random_encoder(spec: MaskedRunSpec, in_channels: int) -> dict[str, np.ndarray]:
    """The encoder at its random initialisation for the spec's seed (as init_masked and init_classifier draw it)."""
    return init_weights(encoder_shapes(spec.model, in_channels), spec.seed, spec.dtype)


def load_encoder(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``encoder.*`` tensors of a run folder (its encoder.safetensors, else its model.safetensors)
    or of a safetensors file, with the file's metadata."""
    path = Path(path)
    if path.is_dir():
        for name in (ENCODER_FILE, MODEL_FILE):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path} holds neither {ENCODER_FILE} nor {MODEL_FILE}; pass a run folder written by "
                "`dualkit pretrain` (or `dualkit train`) or a .safetensors file"
            )
    tensors, meta = checkpoint.load(path)
    encoder = {k: v for k, v in tensors.items() if k.startswith("encoder.")}
    if not encoder:
        raise CheckpointError(f"{path} has no encoder.* tensors (it holds: {', '.join(list(tensors)[:6])}...)")
    return encoder, meta


def encoder_for_classifier(path: Path, spec: ClassifyRunSpec) -> dict[str, np.ndarray]:
    """``--init-from``: the encoder of ``path`` (a run folder or .safetensors), checked to fit the
    encoder of ``spec``'s classifier on its data, naming every missing, unexpected and mis-shaped tensor."""
    from dualkit.core.datasets import load_dataset

    encoder, meta = load_encoder(path)
    in_channels = load_dataset(spec.data).image_shape[2]
    m = spec.model
    what = (
        f"the classifier's encoder (model.channels={list(m.channels)}, convs_per_block={m.convs_per_block}, "
        f"batchnorm={str(m.batchnorm).lower()}, {in_channels} input channels); --init-from needs a run pretrained "
        "with the same model.* settings on images with as many channels"
    )
    checkpoint.check_fits(encoder, encoder_shapes(m, in_channels), what)
    return encoder


# -- linear probe ---------------------------------------------------------------------------------------
def feature_extractor(
    backend_name: str,
    spec: MaskedRunSpec,
    encoder: dict[str, np.ndarray],
    normalizer: Normalizer,
    image_shape: tuple[int, int, int],
    device: str = "cpu",
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 images -> eval-mode GAP features (N, C) of the frozen encoder in the given backend. One model
    serves every call (TF traces its feature step once, not once per split)."""
    backend = registry.get_backend(backend_name, device)
    mae = backend.MaskedAutoencoder(
        spec.model,
        spec.decoder,
        image_shape,
        encoder,
        spec.optim,
        spec.mask.norm_pix,
        spec.dtype,
        registry.resolve_device(backend, device),
    )

    def features(x_uint8: np.ndarray) -> np.ndarray:
        dummy = np.zeros(len(x_uint8), dtype=np.int64)
        batches = eval_batches(x_uint8, dummy, spec.train.eval_batch_size, normalizer, spec.dtype)
        parts = [mae.features(xb) for xb, _ in batches]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, spec.model.channels[-1]))

    return features


def extract_features(
    backend_name: str,
    spec: MaskedRunSpec,
    encoder: dict[str, np.ndarray],
    x_uint8: np.ndarray,
    normalizer: Normalizer,
    image_shape: tuple[int, int, int],
    device: str = "cpu",
) -> np.ndarray:
    """Eval-mode GAP features (N, C) of whole images from the frozen encoder, in the given backend."""
    return feature_extractor(backend_name, spec, encoder, normalizer, image_shape, device)(x_uint8)


def fit_logistic(
    f: np.ndarray, y: np.ndarray, num_classes: int, c: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by L-BFGS in float64: minimises mean cross-entropy
    + ||W||^2 / (2 C n) (scikit-learn's objective divided by n; the bias is not penalised). Deterministic."""
    from scipy.optimize import minimize

    n, d = f.shape
    onehot = np.eye(num_classes)[y]
    lam = 1.0 / (c * n)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes :]
        logits = f @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        z = p.sum(axis=1, keepdims=True)
        p /= z
        loss = float(np.mean(np.log(z[:, 0]) - logits[np.arange(n), y])) + 0.5 * lam * float(np.sum(w * w))
        g = (p - onehot) / n
        return loss, np.concatenate([(f.T @ g + lam * w).ravel(), g.sum(axis=0)])

    res = minimize(
        loss_and_grad,
        np.zeros(d * num_classes + num_classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-6},
    )
    return res.x[: d * num_classes].reshape(d, num_classes), res.x[d * num_classes :]


def fit_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    c_grid: tuple[float, ...],
    max_iter: int,
    num_classes: int,
) -> dict[str, Any]:
    """Logistic regression on standardised features; C picked on val (the first on ties; without a val
    split, the first C), scored on test."""
    (ftr, ytr), (fva, yva), (fte, yte) = train, val, test
    mean, std = ftr.mean(axis=0), ftr.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # dead (always-zero) channels stay zero

    def z(f: np.ndarray) -> np.ndarray:
        return (f - mean) / std

    best: dict[str, Any] | None = None
    for c in c_grid:
        w, b = fit_logistic(z(ftr), ytr, num_classes, c, max_iter)
        val_acc = float(((z(fva) @ w + b).argmax(axis=1) == yva).mean()) if len(yva) else float("nan")
        if best is None or (len(yva) and val_acc > best["val_accuracy"]):
            best = {"C": float(c), "val_accuracy": val_acc, "head": (w, b)}
        if not len(yva):
            break
    assert best is not None
    w, b = best.pop("head")
    pred = (z(fte) @ w + b).argmax(axis=1)
    return {**best, "accuracy": float((pred == yte).mean()), "train_images": int(len(ytr)), "predictions": pred}


def linear_probe(
    backend_name: str,
    spec: MaskedRunSpec,
    encoder: dict[str, np.ndarray],
    data: Dataset,
    normalizer: Normalizer,
    device: str = "cpu",
) -> dict[str, Any]:
    """Probe test accuracy of a frozen encoder (see the module docstring); ``predictions`` are the test classes."""
    t0 = time.perf_counter()
    n = spec.probe.limit_train or len(data.y_train)
    x_tr, y_tr = data.x_train[:n], data.y_train[:n]

    feats = feature_extractor(backend_name, spec, encoder, normalizer, data.image_shape, device)
    out = fit_probe(
        (feats(x_tr), y_tr),
        (feats(data.x_val), data.y_val),
        (feats(data.x_test), data.y_test),
        spec.probe.c_grid,
        spec.probe.max_iter,
        data.num_classes,
    )
    return {**out, "backend": registry.resolve_name(backend_name), "wall_s": time.perf_counter() - t0}


# -- fine-tuning ----------------------------------------------------------------------------------------
def finetune_spec(spec: MaskedRunSpec, fraction: float, n_train: int) -> ClassifyRunSpec:
    """The classifier run that fine-tunes on the first ``fraction`` of the ``n_train`` training images."""
    ft = spec.finetune
    limit = spec.data.limit_train if fraction >= 1.0 else max(1, int(round(fraction * n_train)))
    return ClassifyRunSpec(
        task="classify",
        data=replace(spec.data, limit_train=limit),
        model=spec.model,
        optim=ft.optim,
        schedule=ft.schedule,
        train=replace(spec.train, epochs=ft.epochs, batch_size=ft.batch_size, label_smoothing=ft.label_smoothing),
    )


def finetune(
    backend_name: str,
    spec: MaskedRunSpec,
    encoder: dict[str, np.ndarray],
    fraction: float,
    n_train: int,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Fine-tune the whole classifier from ``encoder`` (fresh head) on a label fraction; test accuracy."""
    from dualkit.tasks.classify import train

    cspec = finetune_spec(spec, fraction, n_train)
    res = train(cspec, backend_name, device=device, progress=progress, init_weights=encoder)
    return {
        "accuracy": res.test["accuracy"],
        "fraction": fraction,
        "train_images": cspec.data.limit_train or n_train,
        "epochs": cspec.train.epochs,
        "images_per_s": res.images_per_s,
        "wall_s": res.wall_s,
    }


# -- both protocols, pretrained vs random ------------------------------------------------------------------
def _pair(pretrained: dict[str, Any], random: dict[str, Any]) -> dict[str, Any]:
    return {
        "pretrained": pretrained,
        "random": random,
        "margin_points": 100.0 * (pretrained["accuracy"] - random["accuracy"]),
    }


def evaluate_encoder(
    backend_name: str,
    spec: MaskedRunSpec,
    encoder: dict[str, np.ndarray],
    data: Dataset,
    normalizer: Normalizer,
    device: str = "cpu",
    progress: bool = False,
    finetune_fractions: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """The linear probe (if probe.enabled) and each fine-tune fraction, for ``encoder`` and for the same
    encoder at random init; margins in accuracy points (pretrained - random)."""
    out: dict[str, Any] = {"backend": registry.resolve_name(backend_name), "seed": spec.seed}
    rand = random_encoder(spec, data.image_shape[2])
    if spec.probe.enabled:
        pairs = [linear_probe(backend_name, spec, w, data, normalizer, device) for w in (encoder, rand)]
        for p in pairs:
            p.pop("predictions")
        out["probe"] = _pair(*pairs)
    fractions = spec.finetune.fractions if finetune_fractions is None else finetune_fractions
    if fractions:
        out["finetune"] = {
            f"{f:g}": _pair(
                *(finetune(backend_name, spec, w, f, len(data.y_train), device, progress) for w in (encoder, rand))
            )
            for f in fractions
        }
    return out
