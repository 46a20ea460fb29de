"""Each backend's Classifier on its own: canonical weights, steps without side effects, optimizer state,
native artifact, determinism. Every test runs for both backends (the ``backend`` fixture, conftest.py)
unless it checks one framework's own artifact or internals."""

from __future__ import annotations

import dataclasses
from types import ModuleType

import numpy as np
import pytest

from dualkit.core.specs import ModelSpec, OptimSpec
from dualkit.core.weights import classifier_shapes, init_classifier, is_buffer

# Non-square, 3-channel images and a flatten head catch any H/W/C or in/out mix-up in the layouts.
IMAGE = (8, 6, 3)
MODEL = ModelSpec(channels=(4, 8), batchnorm=True, head="flatten", hidden=(16,), num_classes=3)
ADAM = OptimSpec(name="adam", lr=1e-2)


def batch(n: int = 24, seed: int = 0, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *IMAGE)).astype(dtype), rng.integers(0, MODEL.num_classes, size=n).astype(np.int64)


def make(
    backend: ModuleType,
    model: ModelSpec = MODEL,
    optim: OptimSpec = ADAM,
    seed: int = 0,
    dtype: str = "float32",
    weights=None,
):
    w = init_classifier(model, IMAGE, seed, dtype) if weights is None else weights
    return backend.Classifier(model, IMAGE, w, optim, 0.0, dtype, "cpu")


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def running_stats(clf) -> dict[str, np.ndarray]:
    return {n: v for n, v in clf.get_weights().items() if is_buffer(n)}


# --------------------------------------------------------------------------- canonical weights


def test_names_and_shapes_are_canonical(backend):
    clf = make(backend)
    got = clf.get_weights()
    expected = classifier_shapes(MODEL, IMAGE)
    assert list(got) == list(expected)
    assert {n: v.shape for n, v in got.items()} == expected
    assert all(v.dtype == np.float32 for v in got.values())


def test_gap_model_without_batchnorm_is_canonical(backend):
    model = ModelSpec(channels=(4,), convs_per_block=2, head="gap", num_classes=5)
    got = make(backend, model).get_weights()
    assert {n: v.shape for n, v in got.items()} == classifier_shapes(model, IMAGE)


def test_set_then_get_weights_round_trips_exactly(backend):
    w0 = init_classifier(MODEL, IMAGE, 0)
    clf = make(backend, weights=w0)
    assert_same(clf.get_weights(), w0)
    rng = np.random.default_rng(1)
    w1 = {n: rng.normal(size=v.shape).astype(np.float32) for n, v in w0.items()}
    w1 = {n: np.abs(v) if n.endswith("running_var") else v for n, v in w1.items()}
    clf.set_weights(w1)
    assert_same(clf.get_weights(), w1)
    out = clf.get_weights()
    out["head.out.bias"][:] = 123.0  # get_weights returns copies, not views of the model
    assert not np.any(clf.get_weights()["head.out.bias"] == 123.0)


def test_set_weights_changes_predictions(backend):
    x, _ = batch()
    clf = make(backend, seed=0)
    other = make(backend, seed=1)
    assert not np.allclose(clf.predict(x), other.predict(x))
    clf.set_weights(other.get_weights())
    np.testing.assert_array_equal(clf.predict(x), other.predict(x))


# --------------------------------------------------------------------------- steps


def test_train_step_reduces_loss_on_a_fixed_batch(backend):
    clf = make(backend)
    x, y = batch()
    losses = [clf.train_step(x, y, 1e-2) for _ in range(20)]
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_step_updates_running_stats_but_forward_does_not(backend):
    clf = make(backend)
    x, y = batch()
    before = clf.get_weights()
    train_out = clf.forward(x, training=True)
    eval_out = clf.forward(x, training=False)
    assert_same(clf.get_weights(), before)  # neither mode changed any tensor, BN statistics included
    assert not np.allclose(train_out, eval_out)  # but training=True really used batch statistics
    np.testing.assert_allclose(eval_out, clf.predict(x), rtol=1e-6, atol=1e-6)
    clf.train_step(x, y, 1e-3)
    after = running_stats(clf)
    assert any(not np.array_equal(after[n], before[n]) for n in after)  # a train step does move them


def test_forward_training_matches_repeated_call(backend):
    clf = make(backend)
    x, _ = batch()
    np.testing.assert_array_equal(clf.forward(x, training=True), clf.forward(x, training=True))


def test_loss_and_grads_changes_nothing(backend):
    x, y = batch()
    a, b = make(backend), make(backend)
    before = a.get_weights()
    loss, grads = a.loss_and_grads(x, y)
    assert np.isfinite(loss)
    assert_same(a.get_weights(), before)
    trainable = [n for n in classifier_shapes(MODEL, IMAGE) if not is_buffer(n)]
    assert list(grads) == trainable
    for n in trainable:
        assert grads[n].shape == before[n].shape
    assert all(np.any(g != 0) for n, g in grads.items() if n.startswith("head.out"))
    # nothing leaks into the next step (no accumulated gradient, no optimizer step taken)
    assert a.train_step(x, y, 1e-2) == b.train_step(x, y, 1e-2)
    assert_same(a.get_weights(), b.get_weights())
    assert_same(a.get_optimizer_state(), b.get_optimizer_state())


def test_grads_are_in_canonical_layout(backend):
    """One plain SGD step moves every weight by exactly -lr * grad (float64)."""
    x, y = batch(dtype="float64")
    clf = make(backend, optim=OptimSpec(name="sgd", lr=0.1), dtype="float64")
    w0 = clf.get_weights()
    loss, grads = clf.loss_and_grads(x, y)
    assert clf.train_step(x, y, 0.1) == pytest.approx(loss, rel=1e-12)
    w1 = clf.get_weights()
    for n, g in grads.items():
        np.testing.assert_allclose(w1[n] - w0[n], -0.1 * g, rtol=1e-9, atol=1e-12, err_msg=n)


# --------------------------------------------------------------------------- optimizer state


OPTIMIZERS = [
    ADAM,
    OptimSpec(name="adamw", lr=1e-2, weight_decay=0.1),
    OptimSpec(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
]


@pytest.mark.parametrize("optim", OPTIMIZERS, ids=lambda o: o.name)
def test_resume_from_optimizer_state_equals_uninterrupted(backend, optim):
    batches = [batch(seed=s) for s in range(6)]
    lrs = [optim.lr * (1 - 0.1 * i) for i in range(6)]
    a = make(backend, optim=optim)
    for (x, y), lr in zip(batches[:3], lrs[:3]):
        a.train_step(x, y, lr)
    weights, state = a.get_weights(), a.get_optimizer_state()
    frozen = {k: v.copy() for k, v in state.items()}
    assert float(state["step"]) == 3.0
    assert all(np.any(v) for v in state.values())
    for (x, y), lr in zip(batches[3:], lrs[3:]):
        a.train_step(x, y, lr)
    assert_same(state, frozen)  # a state taken earlier is a snapshot: later steps do not write into it

    b = make(backend, optim=optim, weights=weights)
    b.set_optimizer_state(state)
    assert_same(b.get_optimizer_state(), state)  # get after set round-trips
    for (x, y), lr in zip(batches[3:], lrs[3:]):
        b.train_step(x, y, lr)
    assert_same(b.get_weights(), a.get_weights())  # bit-identical on CPU
    assert_same(b.get_optimizer_state(), a.get_optimizer_state())


def test_optimizer_state_names(backend):
    clf = make(backend)
    state = clf.get_optimizer_state()
    trainable = [n for n in classifier_shapes(MODEL, IMAGE) if not is_buffer(n)]
    assert set(state) == {"step"} | {f"{k}.{n}" for k in ("exp_avg", "exp_avg_sq") for n in trainable}
    assert float(state["step"]) == 0.0 and not any(np.any(v) for v in state.values())
    sgd = make(backend, optim=OptimSpec(name="sgd", lr=0.1, momentum=0.9)).get_optimizer_state()
    assert set(sgd) == {"step"} | {f"momentum.{n}" for n in trainable}


@pytest.mark.parametrize("optim", OPTIMIZERS, ids=lambda o: o.name)
def test_optimizer_state_is_in_the_canonical_layout(backend, optim):
    """Slots are shaped like their canonical weights (conv (out, in, kh, kw), dense (out, in)), not Keras's,
    so the state hands over to the other backend; set converts back (a non-square model catches a transposed
    slot)."""
    clf = make(backend, optim=optim)
    for s in range(2):
        clf.train_step(*batch(seed=s), optim.lr)
    state = clf.get_optimizer_state()
    shapes = classifier_shapes(MODEL, IMAGE)
    for key, value in state.items():
        assert value.shape == (() if key == "step" else shapes[key.split(".", 1)[1]]), key
    other = make(backend, optim=optim)
    other.set_optimizer_state(state)
    assert_same(other.get_optimizer_state(), state)
    # inside the framework, the slot set from the state is in its weight's own layout
    slot, weight = "momentum" if optim.name == "sgd" else "exp_avg", "encoder.block0.conv0.weight"
    if backend.NAME == "tf":
        kernel = other.variables[weight][0]  # (kh, kw, in, out) inside Keras
        np.testing.assert_array_equal(
            other.optimizer.slots[f"{slot}.{weight}"].numpy(), state[f"{slot}.{weight}"].transpose(2, 3, 1, 0)
        )
        assert tuple(kernel.shape) == (3, 3, 3, 4)
    else:  # torch's layout is the canonical one
        buffers = other.optimizer.opt.state[other.params[weight]]
        np.testing.assert_array_equal(
            buffers["momentum_buffer" if slot == "momentum" else slot].numpy(), state[f"{slot}.{weight}"]
        )


# --------------------------------------------------------------------------- native artifact


NATIVE = {"torch": ".pt", "tf": ".keras"}


def load_native(backend: ModuleType, path) -> object:
    if backend.NAME == "torch":
        import torch

        return torch.load(path, weights_only=True)
    import keras

    return keras.saving.load_model(str(path))


@pytest.mark.backend_only("torch", reason="a PyTorch state dict (.pt), read with torch.load and load_state_dict")
def test_save_native_is_a_loadable_state_dict(backend, tmp_path):
    import torch

    from dualkit.backends.torch.cnn import build_cnn

    clf = make(backend)
    x, y = batch()
    for _ in range(3):
        clf.train_step(x, y, 1e-2)
    path = tmp_path / "model.pt"
    clf.save_native(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    state = torch.load(path, weights_only=True)
    canonical = clf.get_weights()
    # the canonical tensors, plus BatchNorm's step counters, which a native state dict carries
    assert [k for k in state if not k.endswith("num_batches_tracked")] == list(canonical)
    for name, value in canonical.items():
        np.testing.assert_array_equal(state[name].numpy(), value, err_msg=name)
    net = build_cnn(MODEL, IMAGE)
    net.load_state_dict(state)  # strict
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(out, clf.predict(x))


@pytest.mark.backend_only("tf", reason="a Keras archive (.keras), read with keras.saving.load_model")
def test_save_native_is_a_loadable_keras_model(backend, tmp_path):
    clf = make(backend)
    x, y = batch()
    for _ in range(3):
        clf.train_step(x, y, 1e-2)
    path = tmp_path / "model.keras"
    clf.save_native(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temp file left
    loaded = load_native(backend, path)
    expected = clf.predict(x)
    for out in (np.asarray(loaded(x, training=False)), np.asarray(loaded.predict(x, verbose=0))):
        # eager / Keras-compiled vs the Classifier's tf.function: same weights, float32 rounding apart
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out.argmax(1), expected.argmax(1))
    # the archive holds the same weights, layer by layer (Keras layout)
    for layer, original in zip(loaded.layers, clf.net.layers):
        assert layer.name == original.name
        for a, b in zip(layer.weights, original.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=layer.name)


def test_save_native_overwrites_atomically(backend, tmp_path):
    path = tmp_path / f"model{NATIVE[backend.NAME]}"
    path.write_bytes(b"old")
    make(backend).save_native(str(path))
    assert path.stat().st_size > 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    load_native(backend, path)


# --------------------------------------------------------------------------- determinism


def run_twice(
    backend: ModuleType, seed: int, model: ModelSpec
) -> tuple[list[float], dict[str, np.ndarray], np.ndarray]:
    backend.seed(seed)
    clf = make(backend, model)
    losses = [clf.train_step(x, y, 1e-2) for x, y in (batch(seed=s) for s in range(5))]
    return losses, clf.get_weights(), clf.predict(batch(seed=9)[0])


def test_same_seed_same_numbers(backend):
    model = dataclasses.replace(MODEL, dropout=0.5)  # dropout draws from the framework's seeded RNG
    l1, w1, p1 = run_twice(backend, 0, model)
    l2, w2, p2 = run_twice(backend, 0, model)
    assert l1 == l2
    assert_same(w1, w2)
    np.testing.assert_array_equal(p1, p2)
    l3, _, _ = run_twice(backend, 1, model)
    assert l3 != l1  # another framework seed gives other dropout masks


@pytest.mark.backend_only("torch", reason="runs the block's layers one by one in PyTorch's own API")
def test_block_pools_before_its_last_relu_with_the_same_values_and_gradients_torch(backend):
    # Each encoder block runs its last ReLU after the max-pool; the textbook order (ReLU, then pool) is the
    # reference.
    import torch

    from dualkit.backends.torch.cnn import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec(channels=(5,), convs_per_block=2, batchnorm=True), (8, 6, 3), "float64")
    block = encoder.block0
    x = torch.randn(4, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 4, 3, dtype=torch.float64)

    def relu_then_pool(h):
        for c in range(2):
            h = torch.relu(getattr(block, f"bn{c}")(getattr(block, f"conv{c}")(h)))
        return block.pool(h)

    outs, grads = [], []
    for fn in (encoder, relu_then_pool):
        out = fn(x)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad.clone())
        x.grad = None
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert (outs[0] == 0).any() and (outs[0] > 0).any()  # the ReLU did clip something


@pytest.mark.backend_only("tf", reason="runs the block's layers one by one in Keras's own API")
def test_block_pools_before_its_last_relu_with_the_same_values_and_gradients_tf(backend):
    # build_encoder runs each block's last ReLU after the max-pool; the textbook order is the reference.
    import keras
    import tensorflow as tf

    from dualkit.backends.tf.cnn import build_encoder

    encoder = build_encoder(ModelSpec(channels=(5,), convs_per_block=2, batchnorm=True), (8, 6, 3), "float64")
    conv0, bn0, conv1, bn1 = [layer for layer in encoder.layers if layer.name.startswith("encoder")]
    pool = next(layer for layer in encoder.layers if isinstance(layer, keras.layers.MaxPooling2D))
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8, 6, 3)))
    w = tf.constant(np.random.default_rng(1).normal(size=(4, 4, 3, 5)))

    def relu_then_pool(h):
        h = tf.nn.relu(bn0(conv0(h), training=True))
        return pool(tf.nn.relu(bn1(conv1(h), training=True)))

    outs, grads = [], []
    for fn in (lambda h: encoder(h, training=True), relu_then_pool):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = fn(x)
            loss = tf.reduce_sum(out * w)
        outs.append(out.numpy())
        grads.append(tape.gradient(loss, x).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(grads[0], grads[1])
    assert (outs[0] == 0).any() and (outs[0] > 0).any()  # the ReLU did clip something
