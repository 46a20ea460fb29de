"""The parity levels for masked image pretraining: each returns measured Checks (bounds: tasks/parity.py's).

L0 the masked loss vs core's numpy reference (normalised targets on and off); L1 reconstructions (train
and eval mode) and probe features from the same canonical weights and masks; L2 the loss and its
gradient w.r.t. every encoder and decoder weight; L4 a real pretraining run on digits in both backends,
step by step (same init, batches and masks); L5 linear-probe accuracy after pretraining over seeds;
port an encoder pretrained in one backend, probed in the other, through its run folder.
Used by ``dualkit parity masked-...`` and tests/parity/test_masked_parity.py.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from dualkit.core import losses as ref_losses
from dualkit.core import registry
from dualkit.core.batches import make_rng, num_batches
from dualkit.core.datasets import load_dataset
from dualkit.core.masking import grid_shape, patch_size_for, random_masks
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec, ScheduleSpec
from dualkit.core.weights import init_masked
from dualkit.tasks.classify import prepare_data
from dualkit.tasks.masked_spec import MaskedRunSpec
from dualkit.tasks.parity import (
    BACKENDS,
    PRESET_GRAD_BATCHES,
    STATS_OPTIM,
    STATS_STEPS,
    Check,
    check,
    end_state_check,
    l4_envelope_check,
    level3,
    max_rel_diff,
    off_identity,
    perturb_ulp,
    preset_gradient_check,
    preset_name,
    rel_diff,
    stats_checks,
)
from dualkit.tasks.pretrain import build_autoencoder, pretrain
from dualkit.tasks.probe import extract_features, linear_probe, load_encoder

L5_MAX_GAP_POINTS = 1.0
PROBE_SHAPE = (8, 12, 3)  # non-square, 3 channels: any H/W/C mix-up in patches or masks shows
PATCH = 4  # two pooling blocks
GRID = (PROBE_SHAPE[0] // PATCH, PROBE_SHAPE[1] // PATCH)
RATIO = 0.5

# (model, decoder, norm_pix): with and without BatchNorm (masked statistics), with and without the mask token,
# with and without the hierarchical decoder's skips
VARIANTS: dict[str, tuple[ModelSpec, DecoderSpec, bool]] = {
    "plain-token-normpix": (ModelSpec(channels=(8, 16)), DecoderSpec(), True),
    "bn2-token-normpix": (
        ModelSpec(channels=(8, 16), convs_per_block=2, batchnorm=True),
        DecoderSpec(channels=(12, 6)),
        True,
    ),
    "bn-notoken-raw": (ModelSpec(channels=(8, 16), batchnorm=True), DecoderSpec(mask_token=False), False),
    "bn-token-skips-normpix": (ModelSpec(channels=(8, 16), batchnorm=True), DecoderSpec(skips=True), True),
}


def probe_inputs(seed: int, n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "parity-masked")
    return rng.normal(size=(n, *PROBE_SHAPE)).astype(dtype), random_masks(n, GRID, RATIO, rng)


def variant_weights(variant: str, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """A variant's canonical weights, BatchNorm running statistics away from their identity init (so that eval mode
    is really tested)."""
    model, decoder, _ = VARIANTS[variant]
    weights = init_masked(model, decoder, PROBE_SHAPE[2], seed, dtype)
    for name in weights:
        if name.endswith(("running_mean", "running_var")):
            r = make_rng(seed, "parity-masked/" + name).uniform(0.5, 1.5, weights[name].shape)
            weights[name] = (r if name.endswith("var") else r - 1.0).astype(dtype)
    return weights


def _pair(variant: str, dtype: str, device: str, seed: int):
    model, decoder, norm_pix = VARIANTS[variant]
    weights = variant_weights(variant, dtype, seed)
    return [
        registry.get_backend(name, device).MaskedAutoencoder(
            model, decoder, PROBE_SHAPE, weights, OptimSpec(name="sgd"), norm_pix, dtype, device
        )
        for name in BACKENDS
    ]


def loss_probe(seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L0's inputs: random predictions, images and masks."""
    rng = make_rng(seed, "parity-masked-loss")
    pred = rng.normal(size=(16, *PROBE_SHAPE)).astype(dtype)
    images = rng.normal(size=(16, *PROBE_SHAPE)).astype(dtype)
    return pred, images, random_masks(16, GRID, 0.6, rng)


def level0(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Each backend's masked loss vs core's numpy reference, on random predictions, images and masks."""
    out = []
    pred, images, mask = loss_probe(seed, dtype)
    for name in BACKENDS:
        backend = registry.get_backend(name, device)
        for norm_pix in (False, True):
            got = backend.numpy_loss(
                "masked_mse", pred, images, mask, patch_size=PATCH, norm_pix=norm_pix, device=device
            )
            want = ref_losses.masked_mse(pred, images, mask, PATCH, norm_pix)
            out.append(
                check("L0", f"{name} masked MSE norm_pix={str(norm_pix).lower()}", rel_diff(got, want), dtype, device)
            )
    return out


def level1(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Reconstructions of torch vs tf from the same canonical weights and masks (train and eval mode),
    and the probe's GAP features (max abs diff)."""
    out = []
    x, mask = probe_inputs(seed, 16, dtype)
    for variant in VARIANTS:
        a, b = _pair(variant, dtype, device, seed)
        for training in (True, False):
            diff = float(np.abs(a.forward(x, mask, training) - b.forward(x, mask, training)).max())
            out.append(
                check(
                    "L1",
                    f"{variant} reconstruction {'train' if training else 'eval'}",
                    diff,
                    dtype,
                    device,
                    "max abs diff",
                )
            )
        diff = float(np.abs(a.features(x) - b.features(x)).max())
        out.append(check("L1", f"{variant} probe features", diff, dtype, device, "max abs diff, eval mode, no mask"))
    return out


def level2(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """The masked loss and its gradient w.r.t. every weight (encoder, mask token, decoder), torch vs tf."""
    out = []
    x, mask = probe_inputs(seed, 16, dtype)
    for variant in VARIANTS:
        a, b = _pair(variant, dtype, device, seed)
        (la, ga), (lb, gb) = a.loss_and_grads(x, mask), b.loss_and_grads(x, mask)
        worst, name = max_rel_diff(gb, ga)
        out.append(
            check("L2", variant, max(worst, rel_diff(lb, la)), dtype, device, f"{len(ga)} tensors, worst: {name}")
        )
    return out


def level1_running_stats(
    dtype: str = "float32", device: str = "cpu", seed: int = 0, spec: MaskedRunSpec | None = None
) -> list[Check]:
    """After STATS_STEPS masked train steps from the same weights, batches and masks (learning rate 0: tasks/parity.py),
    the encoder's BatchNorm running mean and variance (taken over visible positions only), the eval-mode
    reconstruction and the probe features, torch vs tf, for each BatchNorm variant; with ``spec``, also the preset's
    own model on its own data and masks."""
    out = []
    x_eval, mask_eval = probe_inputs(seed, 16, dtype)
    batches = [probe_inputs(seed + 1 + i, 16, dtype) for i in range(STATS_STEPS)]
    for variant, (model, _, _) in VARIANTS.items():
        if model.batchnorm:
            out += stats_checks(
                variant,
                _pair(variant, dtype, device, seed),
                lambda m, i: m.train_step(*batches[i], STATS_OPTIM.lr),
                lambda m: [m.forward(x_eval, mask_eval, False), m.features(x_eval)],
                dtype,
                device,
            )
    if spec is not None and spec.model.batchnorm:
        _, data = preset_inputs(spec, dtype, STATS_STEPS + 1)
        (x0, m0), rest = data[0], data[1:]
        out += stats_checks(
            preset_name(spec),
            preset_pair(spec, data_shape(spec), dtype, device),
            lambda m, i: m.train_step(*rest[i], STATS_OPTIM.lr),
            lambda m: [m.forward(x0, m0, False), m.features(x0)],
            dtype,
            device,
        )
    return out


# -- L1/L2 on the preset's own model, data and masks ------------------------------------------------------------
def data_shape(spec: MaskedRunSpec) -> tuple[int, int, int]:
    return prepare_data(spec)[0].image_shape


def preset_inputs(
    spec: MaskedRunSpec, dtype: str, n_batches: int = 1
) -> tuple[tuple[int, int, int], list[tuple[np.ndarray, np.ndarray]]]:
    """The preset's image shape and its first ``n_batches`` training batches (normalised as in pretraining, in
    ``dtype``) with masks drawn as pretraining draws them (the spec's ratio and patch size, a parity stream)."""
    data, normalizer = prepare_data(spec)
    patch = patch_size_for(spec.model, data.image_shape, spec.mask.patch_size)
    rng = make_rng(spec.seed, "parity-preset-masks")
    bs, n = spec.train.batch_size, len(data.y_train)
    out = []
    for i in range(n_batches):
        idx = np.arange(i * bs, (i + 1) * bs) % n
        masks = random_masks(bs, grid_shape(data.image_shape, patch), spec.mask.ratio, rng)
        out.append((normalizer.apply(data.x_train[idx], dtype), masks))
    return data.image_shape, out


def preset_pair(spec: MaskedRunSpec, shape: tuple[int, int, int], dtype: str, device: str) -> list:
    model = replace(spec.model, dropout=0.0)
    weights = off_identity(init_masked(model, spec.decoder, shape[2], spec.seed, dtype), spec.seed, "parity-preset")
    return [
        registry.get_backend(name, device).MaskedAutoencoder(
            model, spec.decoder, shape, weights, OptimSpec(name="sgd"), spec.mask.norm_pix, dtype, device
        )
        for name in BACKENDS
    ]


def level1_preset(spec: MaskedRunSpec, dtype: str = "float32", device: str = "cpu") -> list[Check]:
    """The preset's own autoencoder on a batch of its own data and masks: reconstructions (train and eval mode) and
    the probe features, torch vs tf (max abs diff)."""
    shape, ((x, mask),) = preset_inputs(spec, dtype)
    a, b = preset_pair(spec, shape, dtype, device)
    detail = f"max abs diff, {len(x)} images {'x'.join(map(str, shape))}"
    out = [
        check(
            "L1",
            f"{preset_name(spec)} reconstruction {mode}",
            float(np.abs(a.forward(x, mask, t) - b.forward(x, mask, t)).max()),
            dtype,
            device,
            detail,
        )
        for mode, t in (("train", True), ("eval", False))
    ]
    diff = float(np.abs(a.features(x) - b.features(x)).max())
    return out + [
        check("L1", f"{preset_name(spec)} probe features", diff, dtype, device, detail + ", eval mode, no mask")
    ]


def level2_preset(spec: MaskedRunSpec, dtype: str = "float32", device: str = "cpu") -> list[Check]:
    """The masked loss and its gradient w.r.t. every weight of the preset's own autoencoder, on batches of its own
    data and masks (float32 against the rounding envelope: tasks/parity.py's preset_gradient_check)."""
    shape, batches = preset_inputs(spec, dtype, PRESET_GRAD_BATCHES)
    pair = preset_pair(spec, shape, dtype, device)
    perturbed = []
    if dtype == "float32":
        perturbed = preset_pair(spec, shape, dtype, device)
        for m in perturbed:
            m.set_weights(perturb_ulp(m.get_weights(), spec.seed))
    return [preset_gradient_check(preset_name(spec), pair, perturbed, batches, dtype, device)]


# Settings that pretrain well on digits and keep float32 within the L4 bound: with a small Adam eps, steps on
# near-zero gradients amplify float32 rounding (README, "Why the parity settings"); a larger eps learns as well.
L4_OPTIM = OptimSpec(name="adamw", lr=1e-3, eps=1e-4, weight_decay=0.01)
L4_SCHEDULE = ScheduleSpec(name="cosine", warmup_steps=20)


def l4_spec(base: MaskedRunSpec, dtype: str, min_steps: int) -> MaskedRunSpec:
    n_train = len(load_dataset(base.data).y_train)
    epochs = -(-min_steps // num_batches(n_train, base.train.batch_size, drop_last=False))
    return replace(
        base, optim=L4_OPTIM, schedule=L4_SCHEDULE, max_steps=0, dtype=dtype, train=replace(base.train, epochs=epochs)
    )


L4_MIN_STEPS = 200  # masked L4's length by default (`dualkit parity --l4-steps` asks for more)
L4_EVAL_IMAGES = 256  # held-out images whose eval-mode probe features L4's end state compares


def level4(
    base: MaskedRunSpec, dtype: str = "float32", device: str = "cpu", min_steps: int = L4_MIN_STEPS, full: bool = False
) -> list[Check]:
    """A real pretraining run in both backends (same init, batches and masks): worst per-step relative loss gap.
    ``full`` adds the end state (encoder running statistics, eval-mode probe features of held-out images) and, in
    float32, the rounding-envelope verdict, as the classifier's level4 (tasks/parity.py) does."""
    from dualkit.tasks.parity import tight_l4_applies

    spec = l4_spec(base, dtype, min_steps)
    runs = {name: pretrain(spec, name, device=device, progress=False, evaluate=False) for name in BACKENDS}
    a, b = np.array(runs["tf"].step_losses), np.array(runs["torch"].step_losses)
    per_step = np.abs(a - b) / np.abs(b)
    detail = (
        f"{len(b)} steps, worst at step {int(per_step.argmax()) + 1}, "
        f"loss {b[0]:.4f} -> torch {b[-1]:.4f} / tf {a[-1]:.4f}"
    )
    out = []
    if not full or dtype == "float64" or tight_l4_applies(base.data.name, len(b)):
        out.append(check("L4", "pretraining trajectory", float(per_step.max()), dtype, device, detail))
    if not full:
        return out
    data, normalizer = prepare_data(spec)
    own = {}
    if dtype == "float32":
        w0 = perturb_ulp(init_masked(spec.model, spec.decoder, data.image_shape[2], spec.seed, dtype), spec.seed)
        own = {
            name: pretrain(spec, name, device=device, progress=False, evaluate=False, init_weights=w0)
            for name in BACKENDS
        }
        c = l4_envelope_check(
            "pretraining trajectory within the rounding envelope", a, b, own, runs, base.data.name, dtype, device
        )
        out.append(c)
    held_out = normalizer.apply((data.x_test if len(data.x_test) else data.x_val)[:L4_EVAL_IMAGES], dtype)

    def outputs(backend: str, weights: dict[str, np.ndarray]) -> np.ndarray:
        mae = build_autoencoder(registry.get_backend(backend, device), spec, data.image_shape, weights, device)
        return mae.features(held_out)

    out.append(
        end_state_check(
            "pretraining",
            {n: r.weights for n, r in runs.items()},
            {n: r.weights for n, r in own.items()},
            outputs,
            dtype,
            device,
        )
    )
    return out


def _probe_only(base: MaskedRunSpec, seed: int) -> MaskedRunSpec:
    return replace(
        base, seed=seed, probe=replace(base.probe, enabled=True), finetune=replace(base.finetune, fractions=())
    )


def level5(base: MaskedRunSpec, device: str = "cpu", seeds: tuple[int, ...] = (0, 1, 2)) -> tuple[list[Check], dict]:
    """Each backend pretrained end to end per seed, then linear-probed: the gap between the mean probe
    accuracies (points), and the mean margin over the random-init encoder per backend (reported)."""
    acc: dict[str, list[float]] = {name: [] for name in BACKENDS}
    margin: dict[str, list[float]] = {name: [] for name in BACKENDS}
    for name in BACKENDS:
        for seed in seeds:
            ev = pretrain(_probe_only(base, seed), name, device=device, progress=False).evaluation["probe"]
            acc[name].append(ev["pretrained"]["accuracy"])
            margin[name].append(ev["margin_points"])
    out = []
    for name in BACKENDS:
        out.append(
            Check(
                "L5",
                f"{name} mean probe accuracy",
                float(np.mean(acc[name])),
                float("-inf"),
                True,
                "per seed: "
                + ", ".join(f"{a:.4f}" for a in acc[name])
                + f"; margin over random init {np.mean(margin[name]):+.2f} points (reported, no bound)",
            )
        )
    gap = abs(np.mean(acc["torch"]) - np.mean(acc["tf"])) * 100
    out.append(Check("L5", "mean probe accuracy gap (points)", float(gap), L5_MAX_GAP_POINTS, gap <= L5_MAX_GAP_POINTS))
    return out, {"accuracy": acc, "margin_points": margin}


def port_checks(base: MaskedRunSpec, device: str = "cpu", epochs: int = 2) -> list[Check]:
    """Pretrain in A and write the run; load its encoder from the folder and probe it in A and in B:
    identical probe accuracy (and predictions), features within the port bound."""
    out = []
    spec = replace(_probe_only(base, base.seed), train=replace(base.train, epochs=epochs), max_steps=0)
    data, normalizer = prepare_data(spec)
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("tf", "torch"), ("torch", "tf")):
            run_dir = Path(tmp) / f"run-{src}"
            pretrain(spec, src, run_dir=run_dir, device=device, progress=False, evaluate=False)
            encoder, meta = load_encoder(run_dir)
            a = linear_probe(src, spec, encoder, data, normalizer, device)
            b = linear_probe(dst, spec, encoder, data, normalizer, device)
            fa, fb = (
                extract_features(n, spec, encoder, data.x_test, normalizer, data.image_shape, device)
                for n in (src, dst)
            )
            same = bool(np.array_equal(a["predictions"], b["predictions"]))
            c = check(
                "port",
                f"{src} -> {dst}",
                rel_diff(fb, fa),
                spec.dtype,
                device,
                f"probe accuracy {a['accuracy']:.4f} in {src}, {b['accuracy']:.4f} in {dst}; "
                f"identical probe predictions: {same}; value = relative feature diff",
            )
            c.passed = c.passed and same and a["accuracy"] == b["accuracy"]
            out.append(c)
    return out


def level1_all(spec: MaskedRunSpec, dtype: str = "float32", device: str = "cpu") -> list[Check]:
    """What ``dualkit parity`` runs for L1: the variant sweep, the preset's own model, data and masks, and the running
    statistics and eval mode after train steps (variants and preset)."""
    return level1(dtype, device) + level1_preset(spec, dtype, device) + level1_running_stats(dtype, device, spec=spec)


def level2_all(spec: MaskedRunSpec, dtype: str = "float32", device: str = "cpu") -> list[Check]:
    """What ``dualkit parity`` runs for L2: the variant sweep and the preset's own model, data and masks."""
    return level2(dtype, device) + level2_preset(spec, dtype, device)


def run_levels(
    base: MaskedRunSpec,
    levels: list[str],
    dtypes: list[str],
    device: str = "cpu",
    seeds: int = 3,
    l4_steps: int | None = None,
) -> list[Check]:
    """The requested levels (L0..L5, port) for ``dualkit parity <masked preset>``; L0-L4 in each dtype.
    L3 (one optimizer update vs core's reference) is the classifier's: pretraining uses the same Optimizer."""
    checks: list[Check] = []
    for dtype in dtypes:
        if "L0" in levels:
            checks += level0(dtype, device)
        if "L1" in levels:
            checks += level1_all(base, dtype, device)
        if "L2" in levels:
            checks += level2_all(base, dtype, device)
        if "L3" in levels:
            checks += level3(dtype, device)
        if "L4" in levels:
            checks += level4(base, dtype, device, min_steps=l4_steps or L4_MIN_STEPS, full=True)
    if "L5" in levels and seeds > 0:
        checks += level5(base, device, tuple(range(seeds)))[0]
    if "port" in levels:
        checks += port_checks(base, device)
    return checks
