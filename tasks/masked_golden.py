"""Masked pretraining's parity levels as golden cases (tasks/golden.py): the computations of
tasks/masked_parity.py's L0-L4 for one backend on recorded inputs (L3 is the classifier's: pretraining steps with
the same optimizer). L4's run is recorded as the run loop feeds it: a torch CPU pretraining run through the driver
with its train steps recorded (every batch, its masks and learning rate).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.masking import patch_size_for
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec
from dualkit.core.weights import init_masked, is_buffer
from dualkit.tasks import pretrain
from dualkit.tasks.classify import prepare_data
from dualkit.tasks.classify_golden import END_STATE, optimizer_cases
from dualkit.tasks.golden import (
    Arrays,
    Compare,
    GoldenCase,
    Recorder,
    pack_batches,
    prefixed,
    unpack_batches,
    weights_in,
    weights_of,
)
from dualkit.tasks.loop import new_state
from dualkit.tasks.masked_parity import (
    L4_EVAL_IMAGES,
    L4_MIN_STEPS,
    L4_OPTIM,
    PATCH,
    VARIANTS,
    l4_spec,
    loss_probe,
    preset_inputs,
    probe_inputs,
    variant_weights,
)
from dualkit.tasks.masked_spec import MaskedRunSpec
from dualkit.tasks.parity import PRESET_GRAD_BATCHES, STATS_OPTIM, STATS_STEPS, buffers, off_identity, preset_name

GOLDEN_LEVELS = ("L0", "L1", "L2", "L3", "L4")
SEED = 0
SGD = OptimSpec(name="sgd")
OUTPUTS = {"recon": Compare("abs"), "features": Compare("abs")}


def autoencoder(
    backend: str,
    device: str,
    model: ModelSpec,
    decoder: DecoderSpec,
    norm_pix: bool,
    inputs: Arrays,
    optim: OptimSpec,
    dtype: str,
    shape_of: str = "x",
) -> Any:
    shape = tuple(int(n) for n in inputs[shape_of].shape[1:])
    return registry.get_backend(backend, device).MaskedAutoencoder(
        model, decoder, shape, weights_of(inputs), optim, norm_pix, dtype, device
    )


def forward(mae: Any, x: np.ndarray, mask: np.ndarray) -> Arrays:
    """Reconstructions in train and eval mode and the probe's features (eval mode, no mask)."""
    return {
        "recon/train": mae.forward(x, mask, True),
        "recon/eval": mae.forward(x, mask, False),
        "features/eval": mae.features(x),
    }


def grads(mae: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> Arrays:
    out: Arrays = {}
    for k, (x, mask) in enumerate(batches):
        loss, g = mae.loss_and_grads(x, mask)
        where = "grads" if len(batches) == 1 else f"grads/b{k}"
        out.update({f"{where}/loss": np.asarray(loss), **prefixed(where, g)})
    return out


def preset_weights(spec: MaskedRunSpec, shape: tuple[int, ...], dtype: str) -> Arrays:
    model = replace(spec.model, dropout=0.0)
    return off_identity(init_masked(model, spec.decoder, shape[2], spec.seed, dtype), spec.seed, "parity-preset")


def batch_inputs(prefix: str, batches: list[tuple[np.ndarray, np.ndarray]]) -> Arrays:
    out: Arrays = {}
    for k, (x, mask) in enumerate(batches):
        out.update({f"{prefix}{k}": x, f"{prefix}{k}.mask": mask})
    return out


def batches_of(prefix: str, inputs: Arrays, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(inputs[f"{prefix}{k}"], inputs[f"{prefix}{k}.mask"]) for k in range(n)]


def loss_case(dtype: str) -> GoldenCase:
    def inputs() -> Arrays:
        pred, images, mask = loss_probe(SEED, dtype)
        return {"pred": pred, "images": images, "mask": mask}

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        m = registry.get_backend(backend, device)
        return {
            f"loss/norm_pix={str(n).lower()}": np.asarray(
                m.numpy_loss(
                    "masked_mse", i["pred"], i["images"], i["mask"], patch_size=PATCH, norm_pix=n, device=device
                )
            )
            for n in (False, True)
        }

    return GoldenCase("L0", "masked MSE", dtype, inputs, run, {"loss": Compare("rel")})


def variant_cases(dtype: str) -> list[GoldenCase]:
    """L1 (outputs), L1 after train steps (BatchNorm variants) and L2 (gradients) of each variant."""
    cases = []
    for variant, (model, decoder, norm_pix) in VARIANTS.items():

        def inputs(variant: str = variant) -> Arrays:
            x, mask = probe_inputs(SEED, 16, dtype)
            return {**weights_in(variant_weights(variant, dtype, SEED)), "x": x, "mask": mask}

        def run_l1(backend: str, device: str, i: Arrays, v: tuple = (model, decoder, norm_pix)) -> Arrays:
            return forward(autoencoder(backend, device, *v, i, SGD, dtype), i["x"], i["mask"])

        def run_l2(backend: str, device: str, i: Arrays, v: tuple = (model, decoder, norm_pix)) -> Arrays:
            return grads(autoencoder(backend, device, *v, i, SGD, dtype), [(i["x"], i["mask"])])

        cases.append(GoldenCase("L1", f"{variant} outputs", dtype, inputs, run_l1, OUTPUTS))
        cases.append(GoldenCase("L2", variant, dtype, inputs, run_l2, {"grads": Compare("rel")}))
        if model.batchnorm:

            def stats_in(variant: str = variant) -> Arrays:
                x, mask = probe_inputs(SEED, 16, dtype)
                steps = [probe_inputs(SEED + 1 + k, 16, dtype) for k in range(STATS_STEPS)]
                return {
                    **weights_in(variant_weights(variant, dtype, SEED)),
                    "x": x,
                    "mask": mask,
                    **batch_inputs("step", steps),
                }

            v = (model, decoder, norm_pix)
            cases.append(stats_case(variant, v, dtype, stats_in))
    return cases


def stats_case(name: str, v: tuple, dtype: str, make: Any) -> GoldenCase:
    """STATS_STEPS masked train steps at lr 0, then the running statistics, the eval-mode reconstruction and the
    probe features (tasks/masked_parity.level1_running_stats)."""

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        mae = autoencoder(backend, device, *v, i, SGD, dtype)
        for x, mask in batches_of("step", i, STATS_STEPS):
            mae.train_step(x, mask, STATS_OPTIM.lr)
        return {
            **prefixed("stats", buffers(mae)),
            "eval/recon": mae.forward(i["x"], i["mask"], False),
            "eval/features": mae.features(i["x"]),
        }

    compare = {"stats": Compare("rel"), "eval": Compare("abs")}
    return GoldenCase("L1", f"{name} after {STATS_STEPS} train steps", dtype, make, run, compare)


def preset_cases(spec: MaskedRunSpec, levels: list[str], dtype: str) -> list[GoldenCase]:
    """The preset's own autoencoder on its own data and masks: outputs and running statistics (L1), gradients
    (L2, float32 over PRESET_GRAD_BATCHES batches against the rounding envelope)."""
    v = (replace(spec.model, dropout=0.0), spec.decoder, spec.mask.norm_pix)
    name = preset_name(spec)
    cases = []
    if "L1" in levels:

        def l1_in() -> Arrays:
            shape, ((x, mask),) = preset_inputs(spec, dtype)
            return {**weights_in(preset_weights(spec, shape, dtype)), "x": x, "mask": mask}

        def l1_run(backend: str, device: str, i: Arrays) -> Arrays:
            return forward(autoencoder(backend, device, *v, i, SGD, dtype), i["x"], i["mask"])

        cases.append(GoldenCase("L1", f"{name} outputs", dtype, l1_in, l1_run, OUTPUTS))
        if spec.model.batchnorm:

            def stats_in() -> Arrays:
                shape, data = preset_inputs(spec, dtype, STATS_STEPS + 1)
                (x, mask), rest = data[0], data[1:]
                return {
                    **weights_in(preset_weights(spec, shape, dtype)),
                    "x": x,
                    "mask": mask,
                    **batch_inputs("step", rest),
                }

            cases.append(stats_case(name, v, dtype, stats_in))
    if "L2" in levels:
        n = PRESET_GRAD_BATCHES if dtype == "float32" else 1

        def l2_in() -> Arrays:
            shape, batches = preset_inputs(spec, dtype, PRESET_GRAD_BATCHES)
            return {**weights_in(preset_weights(spec, shape, dtype)), **batch_inputs("x", batches[:n])}

        def l2_run(backend: str, device: str, i: Arrays) -> Arrays:
            mae = autoencoder(backend, device, *v, i, SGD, dtype, shape_of="x0")
            return grads(mae, batches_of("x", i, n))

        compare = {"grads": Compare("rel", floor_level="L2")}
        cases.append(GoldenCase("L2", name, dtype, l2_in, l2_run, compare, envelope=True))
    return cases


def recorded_run(base: MaskedRunSpec, dtype: str, min_steps: int) -> Arrays:
    """The inputs of L4's pretraining run as the run loop feeds them (a torch CPU run through the driver, its train
    steps recorded: initial weights, every batch, its masks and learning rate) and the held-out images whose probe
    features L4's end state compares."""
    spec = l4_spec(base, dtype, min_steps)
    data, normalizer = prepare_data(spec)
    backend = registry.get_backend("torch", "cpu")
    patch = patch_size_for(spec.model, data.image_shape, spec.mask.patch_size)
    weights = init_masked(spec.model, spec.decoder, data.image_shape[2], spec.seed, dtype)
    mae = Recorder(pretrain.build_autoencoder(backend, spec, data.image_shape, weights, "cpu"), ("train_step",))
    state = new_state(spec.task, spec.seed, ("batches", "masks"))
    pretrain._fit(spec, backend, "cpu", mae, data, normalizer, patch, state, None, False, False)
    xs, masks, lrs = zip(*mae.args("train_step"))
    held_out = normalizer.apply((data.x_test if len(data.x_test) else data.x_val)[:L4_EVAL_IMAGES], dtype)
    return {
        **weights_in(weights),
        **pack_batches("x", list(xs)),
        **pack_batches("mask", list(masks)),
        "lr": np.array(lrs, np.float64),
        "held_out": held_out,
    }


def run_case(base: MaskedRunSpec, dtype: str, min_steps: int) -> GoldenCase:
    def run(backend: str, device: str, i: Arrays) -> Arrays:
        mae = autoencoder(
            backend, device, base.model, base.decoder, base.mask.norm_pix, i, L4_OPTIM, dtype, shape_of="x.table"
        )
        steps = zip(unpack_batches("x", i), unpack_batches("mask", i), i["lr"])
        losses = [mae.train_step(x, mask, float(lr)) for x, mask, lr in steps]
        final = {k: v for k, v in mae.get_weights().items() if is_buffer(k)}
        return {"losses": np.array(losses), **prefixed("end", final), "end/features": mae.features(i["held_out"])}

    return GoldenCase(
        "L4",
        "pretraining run",
        dtype,
        lambda: recorded_run(base, dtype, min_steps),
        run,
        {"losses": Compare("steps"), "end": END_STATE},
        envelope=True,
    )


def golden_cases(spec: MaskedRunSpec, levels: list[str], dtype: str, l4_steps: int | None = None) -> list[GoldenCase]:
    """Masked pretraining's golden cases for ``levels`` (of GOLDEN_LEVELS) in ``dtype``."""
    cases: list[GoldenCase] = []
    if "L0" in levels:
        cases.append(loss_case(dtype))
    cases += [c for c in variant_cases(dtype) if c.level in levels]
    cases += preset_cases(spec, levels, dtype)
    if "L3" in levels:
        cases += optimizer_cases(dtype)
    if "L4" in levels:
        cases.append(run_case(spec, dtype, l4_steps or L4_MIN_STEPS))
    return cases
