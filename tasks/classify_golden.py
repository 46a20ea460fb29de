"""The classifier's parity levels as golden cases (tasks/golden.py): the computations of tasks/parity.py's L0-L4,
each for one backend on recorded inputs, so that a machine with one framework (a GPU machine with PyTorch only)
checks them against both backends' CPU recordings (tasks/golden_files.py).

The inputs are parity's own: its probes and variants, the preset's model on its own data, and for L4 the run
that ``dualkit parity`` trains, recorded as the run loop feeds it (a torch CPU run through the classifier's
driver with its train steps recorded: every batch, label and learning rate).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.batches import num_batches
from dualkit.core.specs import ModelSpec, OptimSpec
from dualkit.core.weights import init_classifier, is_buffer
from dualkit.tasks import classify
from dualkit.tasks.classify_spec import ClassifyRunSpec
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
from dualkit.tasks.parity import (
    ENVELOPE_FACTOR,
    L4_EVAL_IMAGES,
    L4_MIN_STEPS,
    L4_VARIANTS,
    MODEL_VARIANTS,
    OPTIM_VARIANTS,
    PRESET_GRAD_BATCHES,
    PROBE_SHAPE,
    STATS_OPTIM,
    STATS_STEPS,
    buffers,
    l4_spec,
    off_identity,
    optim_probe,
    preset_inputs,
    preset_name,
    probe,
)

GOLDEN_LEVELS = ("L0", "L1", "L2", "L3", "L4")
L3_STEPS = 5  # as tasks/parity.level3
SEED = 0  # the probes' seed, as the levels'
SGD = OPTIM_VARIANTS["sgd"]
# L4's end state: relative, within ENVELOPE_FACTOR x max(rounding alone, L1's bound) (tasks/parity.end_state_check)
END_STATE = Compare("rel", floor_level="L1", floor_factor=ENVELOPE_FACTOR)


def classifier(
    backend: str,
    device: str,
    model: ModelSpec,
    inputs: Arrays,
    optim: OptimSpec,
    dtype: str,
    label_smoothing: float = 0.0,
    shape_of: str = "x",
) -> Any:
    """The backend's Classifier from the case's weights; the image shape from the input ``shape_of``."""
    shape = tuple(int(n) for n in inputs[shape_of].shape[1:])
    return registry.get_backend(backend, device).Classifier(
        model, shape, weights_of(inputs), optim, label_smoothing, dtype, device
    )


def logits(clf: Any, x: np.ndarray) -> Arrays:
    return {f"logits/{mode}": clf.forward(x, t) for mode, t in (("train", True), ("eval", False))}


def grads(clf: Any, batches: list[tuple[np.ndarray, np.ndarray]]) -> Arrays:
    """Loss and gradients per batch (one batch: no batch prefix)."""
    out: Arrays = {}
    for k, (x, y) in enumerate(batches):
        loss, g = clf.loss_and_grads(x, y)
        where = "grads" if len(batches) == 1 else f"grads/b{k}"
        out.update({f"{where}/loss": np.asarray(loss), **prefixed(where, g)})
    return out


# -- L0 -------------------------------------------------------------------------------------------------------
def loss_case(dtype: str) -> GoldenCase:
    def inputs() -> Arrays:
        logits_, labels = probe(SEED, 64, dtype, shape=(10,))
        return {"logits": logits_, "labels": labels}

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        m = registry.get_backend(backend, device)
        return {
            f"loss/ls={ls}": np.asarray(
                m.numpy_loss("softmax_cross_entropy", i["logits"], i["labels"], label_smoothing=ls, device=device)
            )
            for ls in (0.0, 0.1)
        }

    return GoldenCase("L0", "cross-entropy", dtype, inputs, run, {"loss": Compare("rel")})


# -- L1 -------------------------------------------------------------------------------------------------------
def forward_cases(dtype: str) -> list[GoldenCase]:
    cases = []
    for variant, model in MODEL_VARIANTS.items():

        def inputs(model: ModelSpec = model) -> Arrays:
            return {**weights_in(init_classifier(model, PROBE_SHAPE, SEED, dtype)), "x": probe(SEED, 32, dtype)[0]}

        def run(backend: str, device: str, i: Arrays, model: ModelSpec = model) -> Arrays:
            return logits(classifier(backend, device, model, i, SGD, dtype), i["x"])

        cases.append(GoldenCase("L1", f"{variant} logits", dtype, inputs, run, {"logits": Compare("abs")}))
    return cases


def preset_weights(spec: ClassifyRunSpec, shape: tuple[int, ...], dtype: str) -> Arrays:
    """The preset model's weights as parity's preset checks build them (running statistics off identity)."""
    model = replace(spec.model, dropout=0.0)
    return off_identity(init_classifier(model, shape, spec.seed, dtype), spec.seed, "parity-preset")


def preset_forward_case(spec: ClassifyRunSpec, dtype: str) -> GoldenCase:
    model = replace(spec.model, dropout=0.0)

    def inputs() -> Arrays:
        _, shape, ((x, _),) = preset_inputs(spec, dtype)
        return {**weights_in(preset_weights(spec, shape, dtype)), "x": x}

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        return logits(classifier(backend, device, model, i, SGD, dtype, spec.train.label_smoothing), i["x"])

    return GoldenCase("L1", f"{preset_name(spec)} logits", dtype, inputs, run, {"logits": Compare("abs")})


def stats_case(name: str, model: ModelSpec, dtype: str, make: Any, label_smoothing: float = 0.0) -> GoldenCase:
    """STATS_STEPS train steps at lr 0 from ``make()``'s weights and batches, then the running statistics and the
    eval-mode logits (tasks/parity.level1_running_stats)."""

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        clf = classifier(backend, device, model, i, STATS_OPTIM, dtype, label_smoothing, shape_of="x_eval")
        for k in range(STATS_STEPS):
            clf.train_step(i[f"x{k}"], i[f"y{k}"], STATS_OPTIM.lr)
        return {**prefixed("stats", buffers(clf)), "eval/logits": clf.predict(i["x_eval"])}

    return GoldenCase(
        "L1",
        f"{name} after {STATS_STEPS} train steps",
        dtype,
        make,
        run,
        {"stats": Compare("rel"), "eval": Compare("abs")},
    )


def stats_cases(spec: ClassifyRunSpec, dtype: str) -> list[GoldenCase]:
    cases = []
    for variant, model in MODEL_VARIANTS.items():
        if not model.batchnorm:
            continue

        def make(model: ModelSpec = model) -> Arrays:
            steps = [probe(SEED + 1 + k, 32, dtype) for k in range(STATS_STEPS)]
            return {
                **weights_in(init_classifier(model, PROBE_SHAPE, SEED, dtype)),
                "x_eval": probe(SEED, 32, dtype)[0],
                **{f"x{k}": x for k, (x, _) in enumerate(steps)},
                **{f"y{k}": y for k, (_, y) in enumerate(steps)},
            }

        cases.append(stats_case(variant, model, dtype, make))
    if spec.model.batchnorm:

        def make_preset() -> Arrays:
            _, shape, data = preset_inputs(spec, dtype, STATS_STEPS + 1)
            return {
                **weights_in(preset_weights(spec, shape, dtype)),
                "x_eval": data[0][0],
                **{f"x{k}": x for k, (x, _) in enumerate(data[1:])},
                **{f"y{k}": y for k, (_, y) in enumerate(data[1:])},
            }

        model = replace(spec.model, dropout=0.0)
        cases.append(stats_case(preset_name(spec), model, dtype, make_preset, spec.train.label_smoothing))
    return cases


# -- L2 -------------------------------------------------------------------------------------------------------
def gradient_cases(spec: ClassifyRunSpec, dtype: str) -> list[GoldenCase]:
    cases = []
    for variant, model in MODEL_VARIANTS.items():

        def inputs(model: ModelSpec = model) -> Arrays:
            x, y = probe(SEED, 32, dtype)
            return {**weights_in(init_classifier(model, PROBE_SHAPE, SEED, dtype)), "x": x, "y": y}

        def run(backend: str, device: str, i: Arrays, model: ModelSpec = model) -> Arrays:
            clf = classifier(backend, device, model, i, SGD, dtype, label_smoothing=0.1)
            return grads(clf, [(i["x"], i["y"])])

        cases.append(GoldenCase("L2", variant, dtype, inputs, run, {"grads": Compare("rel")}))

    # the preset's own model and data: float32 over PRESET_GRAD_BATCHES batches against the rounding envelope
    # (tasks/parity.preset_gradient_check), float64 on one batch
    n = PRESET_GRAD_BATCHES if dtype == "float32" else 1
    model = replace(spec.model, dropout=0.0)

    def preset_in() -> Arrays:
        _, shape, batches = preset_inputs(spec, dtype, n)
        out = weights_in(preset_weights(spec, shape, dtype))
        for k, (x, y) in enumerate(batches):
            out.update({f"x{k}": x, f"y{k}": y})
        return out

    def preset_run(backend: str, device: str, i: Arrays) -> Arrays:
        clf = classifier(backend, device, model, i, SGD, dtype, spec.train.label_smoothing, shape_of="x0")
        return grads(clf, [(i[f"x{k}"], i[f"y{k}"]) for k in range(n)])

    cases.append(
        GoldenCase(
            "L2",
            preset_name(spec),
            dtype,
            preset_in,
            preset_run,
            {"grads": Compare("rel", floor_level="L2")},
            envelope=True,
        )
    )
    return cases


# -- L3 -------------------------------------------------------------------------------------------------------
def optimizer_cases(dtype: str) -> list[GoldenCase]:
    """Each optimizer variant over L3_STEPS steps (changing lr) from the same parameters and gradients."""

    def inputs() -> Arrays:
        params, grads_seq, lrs = optim_probe(SEED, dtype, L3_STEPS)
        out = {f"p.{k}": v for k, v in params.items()}
        for s, g in enumerate(grads_seq):
            out.update({f"g{s}.{k}": v for k, v in g.items()})
        return {**out, "lrs": np.array(lrs, np.float64)}

    cases = []
    for variant, optim in OPTIM_VARIANTS.items():

        def run(backend: str, device: str, i: Arrays, optim: OptimSpec = optim) -> Arrays:
            params = {k[2:]: v for k, v in i.items() if k.startswith("p.")}
            grads_seq = [{k: i[f"g{s}.{k}"] for k in params} for s in range(L3_STEPS)]
            lrs = [float(lr) for lr in i["lrs"]]
            got, _ = registry.get_backend(backend, device).apply_updates(optim, params, grads_seq, lrs, device=device)
            return prefixed("params", got)

        cases.append(GoldenCase("L3", variant, dtype, inputs, run, {"params": Compare("rel")}))
    return cases


# -- L4 -------------------------------------------------------------------------------------------------------
def recorded_run(base: ClassifyRunSpec, variant: str, dtype: str, min_steps: int) -> Arrays:
    """The inputs of L4's run as the run loop feeds them: a torch CPU run of tasks/parity.level4's spec through the
    classifier's driver, its train steps recorded (initial weights, every batch, its labels and learning rate), and
    the held-out images whose eval-mode logits L4's end state compares."""
    data, normalizer = classify.prepare_data(base)
    per_epoch = num_batches(len(data.y_train), base.train.batch_size, drop_last=False)
    spec = l4_spec(base, variant, dtype, -(-min_steps // per_epoch))
    backend = registry.get_backend("torch", "cpu")
    weights = init_classifier(spec.model, data.image_shape, spec.seed, dtype)
    clf = Recorder(classify.build_classifier(backend, spec, data.image_shape, weights, "cpu"), ("train_step",))
    classify._fit(spec, backend, "cpu", clf, data, normalizer, new_state(spec.task, spec.seed), None, False)
    xs, ys, lrs = zip(*clf.args("train_step"))
    held_out = normalizer.apply((data.x_test if len(data.x_test) else data.x_val)[:L4_EVAL_IMAGES], dtype)
    return {
        **weights_in(weights),
        **pack_batches("x", list(xs)),
        **pack_batches("y", list(ys)),
        "lr": np.array(lrs, np.float64),
        "held_out": held_out,
    }


def run_case(base: ClassifyRunSpec, variant: str, dtype: str, min_steps: int) -> GoldenCase:
    optim, _ = L4_VARIANTS[variant]
    model = replace(base.model, dropout=0.0)

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        clf = classifier(backend, device, model, i, optim, dtype, base.train.label_smoothing, shape_of="x.table")
        steps = zip(unpack_batches("x", i), unpack_batches("y", i), i["lr"])
        losses = [clf.train_step(x, y, float(lr)) for x, y, lr in steps]
        final = {k: v for k, v in clf.get_weights().items() if is_buffer(k)}
        return {"losses": np.array(losses), **prefixed("end", final), "end/eval logits": clf.predict(i["held_out"])}

    return GoldenCase(
        "L4",
        f"{variant} training run",
        dtype,
        lambda: recorded_run(base, variant, dtype, min_steps),
        run,
        {"losses": Compare("steps"), "end": END_STATE},
        envelope=True,
    )


def golden_cases(spec: ClassifyRunSpec, levels: list[str], dtype: str, l4_steps: int | None = None) -> list[GoldenCase]:
    """The classifier's golden cases for ``levels`` (of GOLDEN_LEVELS) in ``dtype``."""
    cases: list[GoldenCase] = []
    if "L0" in levels:
        cases.append(loss_case(dtype))
    if "L1" in levels:
        cases += forward_cases(dtype) + [preset_forward_case(spec, dtype)] + stats_cases(spec, dtype)
    if "L2" in levels:
        cases += gradient_cases(spec, dtype)
    if "L3" in levels:
        cases += optimizer_cases(dtype)
    if "L4" in levels:
        cases += [run_case(spec, variant, dtype, l4_steps or L4_MIN_STEPS) for variant in L4_VARIANTS]
    return cases
