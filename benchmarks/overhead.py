"""Overhead benchmark: the toolkit's classifier step vs idiomatic bare loops written in each framework.

Same architecture (a preset's CNN), same batch size, same synthetic data (uint8 images of the preset's
shape, normalised once), same optimizer, timed side by side in one process. Also measures the machine's
fp32 matmul rate, so achieved FLOP/s can be put against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dualkit.benchmarks.conv_floor import conv_floor
from dualkit.core import registry
from dualkit.core.flops import classifier_train_flops
from dualkit.core.weights import init_classifier
from dualkit.tasks.classify_spec import ClassifyRunSpec

LOOP_FRAMEWORKS = {
    "toolkit torch": "torch",
    "bare torch loop": "torch",
    "toolkit tf": "tf",
    "bare tf.function loop": "tf",
    "keras fit": "tf",
}
# speed-up name -> (toolkit loop, the loop of the same framework it is measured against)
SPEEDUPS = {
    "torch toolkit / bare loop": ("toolkit torch", "bare torch loop"),
    "tf toolkit / bare tf.function loop": ("toolkit tf", "bare tf.function loop"),
    "tf toolkit / keras fit": ("toolkit tf", "keras fit"),
}


def _time_steps(step: Callable[[int], Any], warmup: int, steps: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per step, after ``warmup`` untimed steps (tracing, allocator warm-up)."""
    for i in range(warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return (time.perf_counter() - t0) / steps


def matmul_rate(n: int = 2048, repeats: int = 10) -> dict[str, Any]:
    """Best fp32 matmul FLOP/s of numpy, torch and TensorFlow: the machine's rate is that of the fastest
    library on it (on this project's AMD machine TF's oneDNN matmul is ~2x torch's MKL and numpy's BLAS)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)).astype(np.float32), rng.normal(size=(n, n)).astype(np.float32)
    timers: dict[str, Callable[[], Any]] = {"numpy": lambda: a @ b}
    if registry.is_installed("torch"):
        registry.get_backend("torch")  # its thread count
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        timers["torch"] = lambda: torch.mm(ta, tb)
    if registry.is_installed("tf"):
        registry.get_backend("tf")
        import tensorflow as tf

        fa, fb = tf.constant(a), tf.constant(b)
        tf_matmul = tf.function(lambda: tf.linalg.matmul(fa, fb))
        timers["tf"] = lambda: tf_matmul().numpy()
    rates = {}
    for name, fn in timers.items():
        fn()  # first call: thread pools, tracing
        rates[name] = 2 * n**3 / min(_time_once(fn) for _ in range(repeats))
    return {"n": n, "flops_per_s": max(rates.values()), "by_library": rates}


def _time_once(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def synthetic_batches(spec: ClassifyRunSpec, image_shape: tuple[int, int, int], n_batches: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    bs = spec.train.batch_size
    x = (rng.integers(0, 256, size=(n_batches, bs, *image_shape)).astype(np.float32) / 255.0 - 0.5) / 0.25
    y = rng.integers(0, spec.model.num_classes, size=(n_batches, bs)).astype(np.int64)
    return x, y


def toolkit_step_time(spec: ClassifyRunSpec, backend: str, image_shape, x, y, warmup: int, steps: int) -> float:
    b = registry.get_backend(backend)
    weights = init_classifier(spec.model, image_shape, 0)
    clf = b.Classifier(spec.model, image_shape, weights, spec.optim, spec.train.label_smoothing, "float32", "cpu")
    return _time_steps(lambda i: clf.train_step(x[i % len(x)], y[i % len(y)], spec.optim.lr), warmup, steps)


def bare_torch_step_time(spec: ClassifyRunSpec, image_shape, x, y, warmup: int, steps: int) -> float:
    """A plain PyTorch loop as its tutorials write it: nn.Sequential, NCHW tensors, torch.optim."""
    import torch
    from torch import nn

    m = spec.model
    layers: list[nn.Module] = []
    cin = image_shape[2]
    for cout in m.channels:
        for _ in range(m.convs_per_block):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=not m.batchnorm)]
            layers += [nn.BatchNorm2d(cout)] if m.batchnorm else []
            layers += [nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if m.head == "gap" else [nn.Flatten()]
    fan_in = cin if m.head == "gap" else None
    for width in m.hidden:
        layers += [nn.LazyLinear(width) if fan_in is None else nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.LazyLinear(m.num_classes) if fan_in is None else nn.Linear(fan_in, m.num_classes))
    net = nn.Sequential(*layers)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3)))  # data loaders hand out NCHW
    yt = torch.from_numpy(y)
    net(xt[0])  # materialise lazy layers
    o = spec.optim
    if o.name == "sgd":
        opt = torch.optim.SGD(
            net.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    else:
        opt = torch.optim.Adam(net.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.train.label_smoothing)
    net.train()

    def step(i: int) -> None:
        opt.zero_grad()
        loss = loss_fn(net(xt[i % len(xt)]), yt[i % len(yt)])
        loss.backward()
        opt.step()
        loss.item()

    return _time_steps(step, warmup, steps)


def _keras_model(spec: ClassifyRunSpec, image_shape):
    import keras

    m = spec.model
    layers: list[Any] = [keras.Input(shape=image_shape)]
    for cout in m.channels:
        for _ in range(m.convs_per_block):
            layers.append(keras.layers.Conv2D(cout, 3, padding="same", use_bias=not m.batchnorm))
            if m.batchnorm:
                layers.append(keras.layers.BatchNormalization())
            layers.append(keras.layers.ReLU())
        layers.append(keras.layers.MaxPooling2D(2))
    layers.append(keras.layers.GlobalAveragePooling2D() if m.head == "gap" else keras.layers.Flatten())
    layers += [keras.layers.Dense(w, activation="relu") for w in m.hidden]
    layers.append(keras.layers.Dense(m.num_classes))
    return keras.Sequential(layers)


def _keras_optimizer(spec: ClassifyRunSpec):
    import keras

    o = spec.optim
    if o.name == "sgd":
        return keras.optimizers.SGD(o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return keras.optimizers.Adam(o.lr)


def keras_fit_step_time(spec: ClassifyRunSpec, image_shape, x, y, warmup: int, steps: int) -> float:
    """Keras ``model.fit`` on the same data, as its guides write it (compiled, default settings)."""
    import keras

    model = _keras_model(spec, image_shape)
    model.compile(optimizer=_keras_optimizer(spec), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bs = spec.train.batch_size
    xs, ys = x.reshape(-1, *image_shape), y.reshape(-1)
    model.fit(xs[: bs * warmup], ys[: bs * warmup], batch_size=bs, epochs=1, verbose=0, shuffle=False)
    reps = -(-steps // len(x))
    xs, ys = np.concatenate([xs] * reps)[: bs * steps], np.concatenate([ys] * reps)[: bs * steps]
    t0 = time.perf_counter()
    model.fit(xs, ys, batch_size=bs, epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - t0) / steps


def bare_tf_step_time(spec: ClassifyRunSpec, image_shape, x, y, warmup: int, steps: int) -> float:
    """A custom TensorFlow loop as the TF guides write it: tf.function, GradientTape, a Keras optimizer."""
    import keras
    import tensorflow as tf

    model = _keras_model(spec, image_shape)
    opt = _keras_optimizer(spec)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    xt = [tf.constant(b) for b in x]
    yt = [tf.constant(b) for b in y]
    return _time_steps(lambda i: float(train_step(xt[i % len(xt)], yt[i % len(yt)])), warmup, steps)


def run_overhead(
    spec: ClassifyRunSpec, image_shape: tuple[int, int, int], steps: int = 30, warmup: int = 5, rounds: int = 2
) -> dict[str, Any]:
    """Time every loop on the same spec; returns per-loop seconds/step, images/s, ratios and FLOP/s, and
    each framework's conv-kernel floor (benchmarks.conv_floor) with the speed-up ceilings it sets.

    Each loop is timed ``rounds`` times, the rounds in alternating order, and its best round counts: a
    single pass favoured whichever loop ran later (the first loop in a process paid for warming up the
    thread pool and allocator, and a shared machine drifts). The floor is measured once per round, its
    best round kept."""
    x, y = synthetic_batches(spec, image_shape, n_batches=8)
    timers: dict[str, Any] = {}
    backends = [b for b in ("torch", "tf") if registry.is_installed(b)]
    if "torch" in backends:
        timers["toolkit torch"] = lambda: toolkit_step_time(spec, "torch", image_shape, x, y, warmup, steps)
        timers["bare torch loop"] = lambda: bare_torch_step_time(spec, image_shape, x, y, warmup, steps)
    if "tf" in backends:
        timers["toolkit tf"] = lambda: toolkit_step_time(spec, "tf", image_shape, x, y, warmup, steps)
        timers["bare tf.function loop"] = lambda: bare_tf_step_time(spec, image_shape, x, y, warmup, steps)
        timers["keras fit"] = lambda: keras_fit_step_time(spec, image_shape, x, y, warmup, steps)
    bs = spec.train.batch_size
    loops: dict[str, float] = {}
    floors: dict[str, dict[str, Any]] = {}
    for r in range(max(1, rounds)):
        for name in list(timers) if r % 2 == 0 else list(reversed(timers)):
            loops[name] = min(loops.get(name, float("inf")), timers[name]())
        # the floor in every round too, so it sees the same machine as the loops (a shared one drifts)
        for b in backends:
            floor = conv_floor(b, spec.model, image_shape, bs, rounds=1)
            if b not in floors or floor["s_per_step"] < floors[b]["s_per_step"]:
                floors[b] = floor
    loops = {name: loops[name] for name in timers}  # report in the declared order
    flops_per_step = classifier_train_flops(spec.model, image_shape) * bs
    rate = matmul_rate()
    rows = {
        name: {
            "s_per_step": s,
            "images_per_s": bs / s,
            "flops_per_s": flops_per_step / s,
            "fraction_of_matmul": flops_per_step / s / rate["flops_per_s"],
            # the share of the step its framework's conv kernels need (1 = no cost beyond them)
            "conv_floor_fraction": floors[LOOP_FRAMEWORKS[name]]["s_per_step"] / s,
        }
        for name, s in loops.items()
    }
    ratios, ceilings = {}, {}
    for name, (toolkit, loop) in SPEEDUPS.items():
        if toolkit in loops:
            ratios[name] = loops[loop] / loops[toolkit]
            ceilings[name] = loops[loop] / floors[LOOP_FRAMEWORKS[toolkit]]["s_per_step"]
    return {
        "batch_size": bs,
        "image_shape": list(image_shape),
        "steps": steps,
        "rounds": max(1, rounds),
        "train_flops_per_step": flops_per_step,
        "matmul": rate,
        "loops": rows,
        "speedup": ratios,  # > 1 means the toolkit is faster
        "conv_floor": floors,
        # the loop's time over its framework's conv-kernel floor: the speed-up a step with no cost beyond
        # its conv kernels would reach (benchmarks.conv_floor)
        "speedup_ceiling": ceilings,
    }
