"""The parity levels for the classifier: each returns measured Checks against stated bounds.

Used by ``dualkit parity``, the benchmarks and tests/parity (which assert ``check.passed``).
Relative differences are max|a - b| / max|b| per tensor (b = the reference), the worst tensor taken.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import losses as ref_losses
from dualkit.core import optim_ref, registry
from dualkit.core.batches import make_rng, num_batches
from dualkit.core.datasets import load_dataset
from dualkit.core.specs import ModelSpec, OptimSpec, ScheduleSpec
from dualkit.core.weights import init_classifier
from dualkit.tasks.classify import port_run, train
from dualkit.tasks.classify_spec import ClassifyRunSpec

BACKENDS = ("torch", "tf")
# CPU bounds (DESIGN.md); float64 bounds show that any float32 gap is rounding, not semantics.
BOUNDS = {
    "float32": {"L0": 1e-6, "L1": 1e-5, "L2": 1e-5, "L3": 1e-6, "L4": 1e-3, "port": 1e-5},
    "float64": {"L0": 1e-12, "L1": 1e-10, "L2": 1e-10, "L3": 1e-10, "L4": 1e-10, "port": 1e-10},
}
GPU_FACTOR = 10.0  # GPU runs (TF32 off, determinism on) get bounds ten times looser
L5_MIN_ACCURACY = 0.98
L5_MAX_GAP_POINTS = 0.5


@dataclass
class Check:
    level: str
    name: str
    value: float
    bound: float
    passed: bool
    detail: str = ""
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: numbers that a level computed with numpy (np.float64, np.bool_) become Python's."""
        d = asdict(self)
        d.update(value=float(self.value), bound=float(self.bound), passed=bool(self.passed), detail=str(self.detail))
        return d


def bound(level: str, dtype: str = "float32", device: str = "cpu") -> float:
    return BOUNDS[dtype][level] * (GPU_FACTOR if device == "gpu" else 1.0)


def check(level: str, name: str, value: float, dtype: str, device: str, detail: str = "") -> Check:
    b = bound(level, dtype, device)
    return Check(level, name, float(value), b, bool(np.isfinite(value) and value <= b), detail, dtype)


def rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30)) if a.size else 0.0


def max_rel_diff(a: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> tuple[float, str]:
    """Worst relative difference over the tensors of two dicts with the same keys, and its name."""
    if set(a) != set(ref):
        raise ValueError(f"tensor names differ: {sorted(set(a) ^ set(ref))}")
    worst = max(((rel_diff(a[k], ref[k]), k) for k in ref), default=(0.0, ""))
    return worst


# -- model variants the forward and gradient levels sweep --------------------------------------------
MODEL_VARIANTS = {
    "plain-gap": ModelSpec(channels=(8, 16), batchnorm=False, head="gap"),
    "plain-flatten": ModelSpec(channels=(8, 16), batchnorm=False, head="flatten", hidden=(32,)),
    "bn-gap": ModelSpec(channels=(8, 16), convs_per_block=2, batchnorm=True, head="gap"),
    "bn-flatten": ModelSpec(channels=(8, 16), batchnorm=True, head="flatten", hidden=(32,)),
}
OPTIM_VARIANTS = {
    "sgd": OptimSpec(name="sgd"),
    "sgd-momentum": OptimSpec(name="sgd", momentum=0.9),
    "sgd-nesterov-wd": OptimSpec(name="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4),
    "sgd-momentum-clip": OptimSpec(name="sgd", momentum=0.9, clip_norm=0.5),
    "adam": OptimSpec(name="adam"),
    "adam-wd-clip": OptimSpec(name="adam", weight_decay=1e-2, clip_norm=0.5),
    "adamw": OptimSpec(name="adamw", weight_decay=0.05),
    "adamw-clip": OptimSpec(name="adamw", weight_decay=0.05, clip_norm=0.5),
    # weight decay on the kernel only, not on the 1-D bias (torch: two param groups)
    "sgd-nesterov-wd-kernels": OptimSpec(name="sgd", momentum=0.9, nesterov=True, weight_decay=5e-2, decay_1d=False),
    "adamw-kernels": OptimSpec(name="adamw", weight_decay=0.05, decay_1d=False),
}
PROBE_SHAPE = (8, 8, 1)


def _probe(seed: int, n: int, dtype: str, shape=PROBE_SHAPE, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "parity-probe")
    return rng.normal(size=(n, *shape)).astype(dtype), rng.integers(0, classes, n).astype(np.int64)


def _pair(model: ModelSpec, optim: OptimSpec, dtype: str, device: str, seed: int, label_smoothing: float = 0.0):
    weights = init_classifier(model, PROBE_SHAPE, seed, dtype)
    return [
        registry.get_backend(name, device).Classifier(
            model, PROBE_SHAPE, weights, optim, label_smoothing, dtype, device
        )
        for name in BACKENDS
    ]


def level0(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Each backend's differentiable loss vs core's numpy reference, on random logits."""
    out = []
    logits, labels = _probe(seed, 64, dtype, shape=(10,))
    for name in BACKENDS:
        backend = registry.get_backend(name, device)
        for ls in (0.0, 0.1):
            got = backend.numpy_loss("softmax_cross_entropy", logits, labels, label_smoothing=ls, device=device)
            want = ref_losses.softmax_cross_entropy(logits, labels, ls)
            out.append(check("L0", f"{name} cross-entropy ls={ls}", rel_diff(got, want), dtype, device))
    return out


def level1(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Logits of torch vs tf from the same canonical weights, train and eval mode (max abs diff)."""
    out = []
    x, _ = _probe(seed, 32, dtype)
    for variant, model in MODEL_VARIANTS.items():
        a, b = _pair(model, OPTIM_VARIANTS["sgd"], dtype, device, seed)
        for training in (True, False):
            mode = "train" if training else "eval"
            diff = float(np.abs(a.forward(x, training) - b.forward(x, training)).max())
            out.append(check("L1", f"{variant} {mode}", diff, dtype, device, "max abs logit diff"))
    return out


def level2(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Gradients of the loss w.r.t. every weight, torch vs tf (worst tensor, relative)."""
    out = []
    x, y = _probe(seed, 32, dtype)
    for variant, model in MODEL_VARIANTS.items():
        a, b = _pair(model, OPTIM_VARIANTS["sgd"], dtype, device, seed, label_smoothing=0.1)
        (la, ga), (lb, gb) = a.loss_and_grads(x, y), b.loss_and_grads(x, y)
        worst, name = max_rel_diff(gb, ga)
        out.append(check("L2", variant, max(worst, rel_diff(lb, la)), dtype, device, f"worst: {name}"))
    return out


def level3(dtype: str = "float32", device: str = "cpu", seed: int = 0, steps: int = 5) -> list[Check]:
    """Each optimizer over several steps (changing lr) in each backend vs core's numpy reference."""
    out = []
    rng = make_rng(seed, "parity-optim")
    params = {"w": rng.normal(size=(6, 5)).astype(dtype), "b": rng.normal(size=(5,)).astype(dtype)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(dtype) for k, v in params.items()} for _ in range(steps)]
    lrs = [0.1 * (0.7**i) for i in range(steps)]
    for variant, spec in OPTIM_VARIANTS.items():
        ref = {k: v.astype(np.float64) for k, v in params.items()}
        state = optim_ref.init_state(spec, ref)
        for grads, lr in zip(grads_seq, lrs):
            ref, state = optim_ref.step(spec, ref, {k: g.astype(np.float64) for k, g in grads.items()}, state, lr)
        for name in BACKENDS:
            got, _ = registry.get_backend(name, device).apply_updates(spec, params, grads_seq, lrs, device=device)
            worst, tensor = max_rel_diff(got, ref)
            out.append(check("L3", f"{name} {variant}", worst, dtype, device, f"{steps} steps, worst: {tensor}"))
    return out


# float32 trajectories are chaotic: rounding gaps grow with the learning rate, and they jump where rounding flips
# a discrete choice (a max-pool window whose two largest values tie, an activation that close to zero). The
# rates below are low enough that the short L4 run of the presets stays inside the fixed float32 bound while both
# variants still train; the measurements behind them are in the README ("Why the parity settings").
L4_VARIANTS = {
    "sgd-momentum-cosine": (OptimSpec(name="sgd", lr=0.005, momentum=0.9), ScheduleSpec(name="cosine")),
    "adam-cosine": (OptimSpec(name="adam", lr=5e-4, eps=1e-6), ScheduleSpec(name="cosine")),
}


def l4_spec(base: ClassifyRunSpec, variant: str, dtype: str, epochs: int) -> ClassifyRunSpec:
    """The base spec with dropout off, BatchNorm on, the variant's optimizer and schedule."""
    optim, schedule = L4_VARIANTS[variant]
    return replace(
        base,
        model=replace(base.model, dropout=0.0, batchnorm=True),
        optim=optim,
        schedule=schedule,
        dtype=dtype,
        train=replace(base.train, epochs=epochs),
    )


def level4(base: ClassifyRunSpec, dtype: str = "float32", device: str = "cpu", min_steps: int = 300) -> list[Check]:
    """A real training run in both backends, same init and batches: worst per-step relative loss gap."""
    out = []
    n_train = len(load_dataset(base.data).y_train)
    per_epoch = num_batches(n_train, base.train.batch_size, drop_last=False)
    epochs = -(-min_steps // per_epoch)
    for variant in L4_VARIANTS:
        spec = l4_spec(base, variant, dtype, epochs)
        runs = {name: train(spec, name, device=device, progress=False) for name in BACKENDS}
        a, b = np.array(runs["tf"].step_losses), np.array(runs["torch"].step_losses)
        per_step = np.abs(a - b) / np.abs(b)
        detail = (
            f"{len(b)} steps, worst at step {int(per_step.argmax()) + 1}, final loss torch {b[-1]:.4f} tf {a[-1]:.4f}"
        )
        out.append(check("L4", variant, float(per_step.max()), dtype, device, detail))
    return out


def level5(
    base: ClassifyRunSpec,
    device: str = "cpu",
    seeds: tuple[int, ...] = (0, 1, 2),
    min_accuracy: float | None = L5_MIN_ACCURACY,
) -> tuple[list[Check], dict[str, list[float]]]:
    """Each backend trained end to end per seed: mean test accuracy floor (if given), and the gap between means."""
    acc: dict[str, list[float]] = {name: [] for name in BACKENDS}
    for name in BACKENDS:
        for seed in seeds:
            spec = replace(base, seed=seed)
            acc[name].append(train(spec, name, device=device, progress=False).test["accuracy"])
    out = []
    for name in BACKENDS:
        mean = float(np.mean(acc[name]))
        floor = -np.inf if min_accuracy is None else min_accuracy
        out.append(
            Check(
                "L5",
                f"{name} mean test accuracy",
                mean,
                float(floor),
                bool(mean >= floor),
                "per seed: " + ", ".join(f"{a:.4f}" for a in acc[name]) + " (bound is a floor)",
            )
        )
    gap = abs(np.mean(acc["torch"]) - np.mean(acc["tf"])) * 100
    out.append(Check("L5", "mean accuracy gap (points)", float(gap), L5_MAX_GAP_POINTS, gap <= L5_MAX_GAP_POINTS))
    return out, acc


def port_checks(base: ClassifyRunSpec, device: str = "cpu", epochs: int = 2) -> list[Check]:
    """Train in A, write the run, evaluate in B through files (and the native artifact), both ways."""
    out = []
    spec = replace(base, train=replace(base.train, epochs=epochs))
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("tf", "torch"), ("torch", "tf")):
            run_dir = Path(tmp) / f"run-{src}"
            train(spec, src, run_dir=run_dir, device=device, progress=False)
            suffix = ".pt" if dst == "torch" else ".keras"
            rep = port_run(run_dir, dst, Path(tmp) / f"model{suffix}", device=device)
            c = check(
                "port",
                f"{src} -> {dst}",
                rep["max_abs_logit_diff"],
                base.dtype,
                device,
                f"{rep['test_images']} test images, identical classes: {rep['identical_classes']}",
            )
            c.passed = c.passed and rep["identical_classes"]
            out.append(c)
    return out
