"""Each backend's MaskedAutoencoder on its own: canonical weights, no information across the mask, masked
BatchNorm statistics, steps without side effects, probe features. Every test runs for both backends (the
``backend`` fixture, conftest.py)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from dualkit.core.batches import make_rng
from dualkit.core.losses import masked_mse
from dualkit.core.masking import random_masks, upsample_mask
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec
from dualkit.core.weights import init_masked, is_buffer, masked_shapes

# Non-square, 3-channel images catch any H/W/C mix-up in patches and masks.
IMAGE = (8, 12, 3)
GRID = (2, 3)
MODEL = ModelSpec(channels=(4, 8), convs_per_block=2, batchnorm=True)
DECODER = DecoderSpec(channels=(6, 5))
SKIPS = DecoderSpec(channels=(6, 5), skips=True)  # the hierarchical decoder
ADAM = OptimSpec(name="adam", lr=1e-2)


def batch(n: int = 12, seed: int = 0, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    rng = make_rng(seed, "test-masked")
    return rng.normal(size=(n, *IMAGE)).astype(dtype), random_masks(n, GRID, 0.5, rng)


def make(
    backend: ModuleType,
    model: ModelSpec = MODEL,
    decoder: DecoderSpec = DECODER,
    norm_pix: bool = True,
    dtype: str = "float32",
):
    return backend.MaskedAutoencoder(
        model, decoder, IMAGE, init_masked(model, decoder, IMAGE[2], 0, dtype), ADAM, norm_pix, dtype
    )


def scramble_masked(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` with every masked pixel replaced by large noise."""
    hidden = upsample_mask(mask, 4)[..., None]
    return np.where(hidden, 50.0 * make_rng(9, "noise").normal(size=x.shape), x).astype(x.dtype)


def running_stats(mae) -> dict[str, np.ndarray]:
    return {n: v for n, v in mae.get_weights().items() if is_buffer(n)}


@pytest.mark.parametrize("decoder", [DECODER, SKIPS], ids=["plain", "skips"])
def test_names_and_shapes_are_canonical(backend, decoder):
    got = make(backend, decoder=decoder).get_weights()
    expected = masked_shapes(MODEL, decoder, IMAGE[2])
    assert list(got) == list(expected)
    assert {n: v.shape for n, v in got.items()} == expected
    assert "decoder.mask_token" in got


def test_weights_round_trip(backend):
    w = init_masked(MODEL, DECODER, IMAGE[2], 5)
    got = make(backend).__class__(MODEL, DECODER, IMAGE, w, ADAM).get_weights()
    for name in w:
        np.testing.assert_array_equal(got[name], w[name], err_msg=name)


@pytest.mark.parametrize("decoder", [DECODER, SKIPS], ids=["plain", "skips"])
@pytest.mark.parametrize("training", [True, False])
def test_masked_pixels_never_reach_the_reconstruction(backend, training, decoder):
    x, mask = batch()
    mae = make(backend, decoder=decoder)
    a = mae.forward(x, mask, training)
    b = mae.forward(scramble_masked(x, mask), mask, training)
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, b)


def test_masked_batchnorm_statistics_come_from_visible_pixels_only(backend):
    x, mask = batch()
    mae = make(backend)
    start = mae.get_weights()
    mae.train_step(x, mask, 0.0)
    a = running_stats(mae)
    mae.set_weights(start)
    mae.train_step(scramble_masked(x, mask), mask, 0.0)
    for name, value in running_stats(mae).items():
        np.testing.assert_array_equal(value, a[name], err_msg=name)
    assert not np.allclose(a["encoder.block0.bn0.running_var"], 1.0)  # they did move


def test_first_running_mean_is_the_mean_over_visible_positions(backend):
    model = ModelSpec(channels=(4, 8), batchnorm=True)
    w = init_masked(model, DecoderSpec(), IMAGE[2], 0, "float64")
    mae = backend.MaskedAutoencoder(model, DecoderSpec(), IMAGE, w, ADAM, True, "float64")
    x, mask = batch(dtype="float64")
    mae.train_step(x, mask, 0.0)
    vis = ~upsample_mask(mask, 4)
    xp = np.pad(x * vis[..., None], ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = w["encoder.block0.conv0.weight"]  # (out, in, 3, 3)
    conv = np.zeros((*x.shape[:3], 4))
    for dy in range(3):
        for dx in range(3):
            conv += np.einsum("nhwc,oc->nhwo", xp[:, dy : dy + IMAGE[0], dx : dx + IMAGE[1]], kernel[:, :, dy, dx])
    mean = conv[vis].mean(axis=0)
    np.testing.assert_allclose(mae.get_weights()["encoder.block0.bn0.running_mean"], 0.1 * mean, rtol=1e-10)


@pytest.mark.parametrize("decoder", [DECODER, SKIPS], ids=["plain", "skips"])
def test_loss_is_the_reference_masked_loss_and_grads_change_nothing(backend, decoder):
    x, mask = batch()
    mae = make(backend, decoder=decoder)
    before = mae.get_weights()
    loss, grads = mae.loss_and_grads(x, mask)
    ref = masked_mse(mae.forward(x, mask, True), x, mask, 4, norm_pix=True)
    assert loss == pytest.approx(ref, rel=1e-5)
    assert set(grads) == {n for n in before if not is_buffer(n)}
    assert all(np.abs(g).sum() > 0 for g in grads.values())
    for name, value in mae.get_weights().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_training_lowers_the_loss_on_a_fixed_batch(backend):
    x, mask = batch()
    mae = make(backend, norm_pix=False)
    losses = [mae.train_step(x, mask, 1e-2) for _ in range(20)]
    assert losses[-1] < 0.9 * losses[0]


def test_features_are_the_unmasked_eval_mode_encoder_and_ignore_the_decoder(backend):
    x, _ = batch()
    a = make(backend)
    feats = a.features(x)
    assert feats.shape == (len(x), MODEL.channels[-1])
    w = a.get_weights()
    w2 = {**w, "decoder.up0.weight": w["decoder.up0.weight"] + 1.0}
    b = backend.MaskedAutoencoder(MODEL, DECODER, IMAGE, w2, ADAM)
    np.testing.assert_array_equal(b.features(x), feats)
    # the classifier with the same encoder and a GAP head sees the same pooled features: its logits are a
    # linear map of them (identity head: weight = I, bias = 0 for a head with as many classes as channels)
    model = ModelSpec(channels=MODEL.channels, convs_per_block=2, batchnorm=True, head="gap", num_classes=8)
    enc = {k: v for k, v in w.items() if k.startswith("encoder.")}
    clf = backend.Classifier(
        model,
        IMAGE,
        {**enc, "head.out.weight": np.eye(8, dtype="float32"), "head.out.bias": np.zeros(8, "float32")},
        ADAM,
    )
    np.testing.assert_allclose(clf.predict(x), feats, rtol=1e-5, atol=1e-6)


def test_model_without_batchnorm_or_mask_token_and_float64(backend):
    model = ModelSpec(channels=(4, 8))
    decoder = DecoderSpec(mask_token=False)
    mae = make(backend, model, decoder, norm_pix=False, dtype="float64")
    x, mask = batch(dtype="float64")
    assert mae.forward(x, mask, True).dtype == np.float64
    np.testing.assert_array_equal(mae.forward(x, mask, True), mae.forward(scramble_masked(x, mask), mask, True))
    assert np.isfinite(mae.train_step(x, mask, 1e-3))


def test_numpy_loss_matches_the_reference(backend):
    x, mask = batch()
    pred = make_rng(1, "pred").normal(size=x.shape).astype("float32")
    for norm_pix in (False, True):
        got = backend.numpy_loss("masked_mse", pred, x, mask, patch_size=4, norm_pix=norm_pix)
        assert got == pytest.approx(masked_mse(pred, x, mask, 4, norm_pix), rel=1e-6)


def test_optimizer_state_round_trip(backend):
    x, mask = batch()
    mae = make(backend)
    mae.train_step(x, mask, 1e-2)
    weights, state = mae.get_weights(), mae.get_optimizer_state()
    la = mae.train_step(x, mask, 1e-2)
    after = mae.get_weights()
    mae.train_step(x, mask, 1e-2)
    mae.set_weights(weights)
    mae.set_optimizer_state(state)
    assert mae.train_step(x, mask, 1e-2) == la
    for name, value in mae.get_weights().items():
        np.testing.assert_array_equal(value, after[name], err_msg=name)
