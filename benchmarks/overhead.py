"""Overhead benchmark: the toolkit's classifier step vs idiomatic bare loops written in each framework.

Same architecture (a preset's CNN), same batch size, same synthetic data (uint8 images of the preset's
shape, normalised once), same optimizer, timed side by side in one process. Also measures the machine's
fp32 matmul rate, so achieved FLOP/s can be put against it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from dualkit.benchmarks.conv_floor import conv_floor
from dualkit.core import registry
from dualkit.core.batches import make_rng
from dualkit.core.flops import classifier_train_flops
from dualkit.core.hf import hf_config
from dualkit.core.masking import mlm_mask
from dualkit.core.transformer import HF_DECODER_BIAS, IGNORE_INDEX, init_bert
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


def best_of_rounds(
    timers: dict[str, Callable[[], float]], rounds: int, after_round: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """Each timer's best (smallest) result over ``rounds`` rounds, the rounds in alternating order (a single pass
    favours whichever loop runs later: the first in a process pays for thread pools and allocators, and a shared
    machine drifts); ``after_round`` runs after each round. In the timers' declared order."""
    best: dict[str, float] = {}
    for r in range(max(1, rounds)):
        for name in list(timers) if r % 2 == 0 else list(reversed(timers)):
            best[name] = min(best.get(name, float("inf")), timers[name]())
        after_round()
    return {name: best[name] for name in timers}


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
    floors: dict[str, dict[str, Any]] = {}

    def measure_floors() -> None:
        # the floor in every round too, so it sees the same machine as the loops (a shared one drifts)
        for b in backends:
            floor = conv_floor(b, spec.model, image_shape, bs, rounds=1)
            if b not in floors or floor["s_per_step"] < floors[b]["s_per_step"]:
                floors[b] = floor

    loops = best_of_rounds(timers, rounds, measure_floors)
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


# -- the transformer (issue 16): the toolkit's MaskedLM step vs a Hugging Face PyTorch loop, Keras fit and a bare
# tf.function loop of the same BERT, in tokens/s ---------------------------------------------------------------------

# loop name -> its framework; the speed-up names are SPEEDUPS' (toolkit / the loop of the same framework)
TRANSFORMER_LOOP_FRAMEWORKS = {
    "toolkit torch": "torch",
    "bare torch loop": "torch",  # Hugging Face transformers' BertForMaskedLM + torch.optim.AdamW
    "toolkit tf": "tf",
    "bare tf.function loop": "tf",
    "keras fit": "tf",
}


def synthetic_token_batches(
    tokenizer: Any, spec: Any, n_batches: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, attention_mask, labels), each (n_batches, batch, length) int64: blocks of ``data.max_length`` tokens
    as tasks/mlm.py trains on ([CLS], ordinary ids drawn uniformly, [SEP]; full, as group_texts makes all but a
    document's last), BERT's masks drawn once (core.masking.mlm_mask, ``spec.mlm``), so every loop sees the same."""
    bs, length = spec.train.batch_size, spec.data.max_length
    rng = make_rng(seed, "bench/transformer-tokens")
    ordinary = np.setdiff1d(np.arange(len(tokenizer)), sorted(tokenizer.special_ids))
    ids = ordinary[rng.integers(0, len(ordinary), size=(n_batches * bs, length))]
    ids[:, 0], ids[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    mask = np.ones_like(ids)
    masked, labels = mlm_mask(
        ids, tokenizer.special_ids, tokenizer.mask_id, len(tokenizer), spec.mlm, make_rng(seed, "bench/masks"), mask
    )
    shape = (n_batches, bs, length)
    return masked.reshape(shape), mask.reshape(shape), labels.reshape(shape)


def toolkit_mlm_step_time(spec: Any, backend: str, vocab_size: int, batches, warmup: int, steps: int) -> float:
    """The toolkit's MaskedLM.train_step (numpy in, the loss as a float out), as tasks/mlm.py calls it."""
    ids, mask, labels = batches
    b = registry.get_backend(backend)
    weights = init_bert(spec.model, vocab_size, "mlm", 0, spec.seed, "float32")
    model = b.MaskedLM(spec.model, vocab_size, weights, spec.optim, "float32", "cpu")
    n = len(ids)
    return _time_steps(lambda i: model.train_step(ids[i % n], mask[i % n], labels[i % n], spec.optim.lr), warmup, steps)


def hf_torch_step_time(spec: Any, vocab_size: int, batches, warmup: int, steps: int) -> float:
    """A plain PyTorch loop as Hugging Face's examples write it: ``BertForMaskedLM`` (eager attention, the preset's
    config and dropout, from the same initial weights), torch.optim.AdamW without decay on biases and LayerNorm
    (as the Trainer groups them), ``model(..., labels=...).loss.backward()``, ``step()``."""
    import torch
    import transformers

    config = transformers.BertConfig(**hf_config(spec.model, vocab_size, "mlm"), attn_implementation="eager")
    model = transformers.BertForMaskedLM(config)
    state = {n: torch.from_numpy(v) for n, v in init_bert(spec.model, vocab_size, "mlm", 0, spec.seed).items()}
    state[HF_DECODER_BIAS] = state["cls.predictions.bias"]
    model.load_state_dict(state, strict=False)  # the tied decoder is the word embeddings
    o = spec.optim
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    ids, mask, labels = (torch.from_numpy(a) for a in batches)
    model.train()

    def step(i: int) -> None:
        opt.zero_grad()
        j = i % len(ids)
        loss = model(input_ids=ids[j], attention_mask=mask[j], labels=labels[j]).loss
        loss.backward()
        opt.step()
        loss.item()

    return _time_steps(step, warmup, steps)


def _keras_bert(spec: Any, vocab_size: int):
    """The tf backend's Keras network of the preset's MaskedLM, from the same initial weights."""
    b = registry.get_backend("tf")
    weights = init_bert(spec.model, vocab_size, "mlm", 0, spec.seed, "float32")
    return b.MaskedLM(spec.model, vocab_size, weights, spec.optim, "float32", "cpu").net


def _keras_adamw(spec: Any):
    import keras

    o = spec.optim
    opt = keras.optimizers.AdamW(o.lr, weight_decay=o.weight_decay, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])  # biases and LayerNorm, as BERT's recipe
    return opt


def masked_sparse_ce(labels, logits):
    """Mean cross-entropy over the positions whose label is not -100, in keras.ops (what a Keras user writes for
    MLM: SparseCategoricalCrossentropy has no ignore index)."""
    from keras import losses, ops

    keep = ops.not_equal(labels, IGNORE_INDEX)
    ce = losses.sparse_categorical_crossentropy(ops.where(keep, labels, 0), logits, from_logits=True)
    weight = ops.cast(keep, ce.dtype)
    return ops.sum(ce * weight) / ops.maximum(ops.sum(weight), 1.0)


def keras_fit_mlm_step_time(spec: Any, vocab_size: int, batches, warmup: int, steps: int) -> float:
    """Keras ``model.fit`` of the tf backend's network (wrapped to take (ids, mask)), compiled with default
    settings, keras.optimizers.AdamW and the masked loss, over the same batches in the same order. One fit of
    ``warmup + steps`` batches, timed from the start of batch ``warmup`` to the end of the last: what a step costs
    inside an epoch, without fit's per-call set-up (data adapter, callbacks), which a real epoch of hundreds of
    steps spreads thin but a few timed steps would not."""
    import keras

    net = _keras_bert(spec, vocab_size)

    class FitModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.net = net

        def call(self, inputs, training=False):
            return self.net(inputs[0], inputs[1], training=training)

    class Clock(keras.callbacks.Callback):
        start = end = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            if batch == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

    model = FitModel()
    model.compile(optimizer=_keras_adamw(spec), loss=masked_sparse_ce)
    n, bs, length = batches[0].shape
    order = [i % n for i in range(warmup)] + [i % n for i in range(steps)]  # as _time_steps visits them
    ids, mask, labels = (a[order].reshape(-1, length) for a in batches)
    clock = Clock()
    model.fit((ids, mask), labels, batch_size=bs, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    return (clock.end - clock.start) / steps


def bare_tf_mlm_step_time(spec: Any, vocab_size: int, batches, warmup: int, steps: int) -> float:
    """A custom TensorFlow loop of the tf backend's network, as the TF guides write it: tf.function, GradientTape,
    keras.optimizers.AdamW, the masked loss."""
    import tensorflow as tf

    net = _keras_bert(spec, vocab_size)
    opt = _keras_adamw(spec)

    @tf.function
    def train_step(ids, mask, labels):
        with tf.GradientTape() as tape:
            loss = masked_sparse_ce(labels, net(ids, mask, training=True))
        opt.apply(tape.gradient(loss, net.trainable_variables), net.trainable_variables)
        return loss

    ids, mask, labels = ([tf.constant(b) for b in a] for a in batches)
    n = len(ids)
    return _time_steps(lambda i: float(train_step(ids[i % n], mask[i % n], labels[i % n])), warmup, steps)


def run_transformer_overhead(
    spec: Any, steps: int = 20, warmup: int = 3, rounds: int = 3, tokenizer: Any = None
) -> dict[str, Any]:
    """Time the toolkit's MaskedLM step against each framework's idiomatic loop of the same model (an mlm spec:
    its model, batch size, sequence length, masking and optimizer) on synthetic token batches; returns per-loop
    seconds/step, tokens/s (attended tokens, not padding) and sequences/s, and the ratios toolkit/loop (SPEEDUPS'
    names; > 1 means the toolkit is faster). ``tokenizer``: the vocabulary (default: the spec's, built from its
    training documents as tasks/mlm.py does). Rounds as run_overhead's. A loop whose library is missing is left
    out and named in ``skipped`` with the reason."""
    from dualkit.tasks import mlm

    vocab_from = "given"
    if tokenizer is None:
        tokenizer, vocab_from = mlm.prepare_data(spec).tokenizer, "the preset's tokenizer, built from its corpus"
    batches = synthetic_token_batches(tokenizer, spec, n_batches=8)
    vocab_size = len(tokenizer)
    timers: dict[str, Callable[[], float]] = {}
    skipped: dict[str, str] = {}
    if registry.is_installed("torch"):
        timers["toolkit torch"] = lambda: toolkit_mlm_step_time(spec, "torch", vocab_size, batches, warmup, steps)
        if importlib.util.find_spec("transformers") is None:
            skipped["bare torch loop"] = "Hugging Face transformers is not installed (pip install transformers)"
        else:
            timers["bare torch loop"] = lambda: hf_torch_step_time(spec, vocab_size, batches, warmup, steps)
    if registry.is_installed("tf"):
        timers["toolkit tf"] = lambda: toolkit_mlm_step_time(spec, "tf", vocab_size, batches, warmup, steps)
        timers["bare tf.function loop"] = lambda: bare_tf_mlm_step_time(spec, vocab_size, batches, warmup, steps)
        timers["keras fit"] = lambda: keras_fit_mlm_step_time(spec, vocab_size, batches, warmup, steps)
    loops = best_of_rounds(timers, rounds)
    ids, mask, labels = batches
    tokens = float(mask.sum() / len(mask))  # attended tokens per batch
    rows = {
        name: {"s_per_step": s, "tokens_per_s": tokens / s, "sequences_per_s": ids.shape[1] / s}
        for name, s in loops.items()
    }
    ratios = {name: loops[loop] / loops[tk] for name, (tk, loop) in SPEEDUPS.items() if tk in loops and loop in loops}
    return {
        "model": asdict(spec.model),
        "batch_size": int(ids.shape[1]),
        "length": int(ids.shape[2]),
        "vocab_size": vocab_size,
        "vocab_from": vocab_from,
        "tokens_per_step": tokens,
        "labelled_per_step": float((labels != IGNORE_INDEX).sum() / len(labels)),
        "steps": steps,
        "rounds": max(1, rounds),
        "loops": rows,
        "speedup": ratios,  # > 1 means the toolkit is faster
        "skipped": skipped,
    }
