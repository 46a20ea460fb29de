"""core.masking (image masks, mlm_mask), the masked loss reference, the masked spec's checks, the decoder's weights."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.core.batches import make_rng
from dualkit.core.errors import SpecError
from dualkit.core.losses import masked_mse
from dualkit.core.masking import (
    denormalize,
    grid_shape,
    mlm_mask,
    normalized_targets,
    num_masked,
    patch_size_for,
    patchify,
    random_masks,
    unpatchify,
    upsample_mask,
    visible,
)
from dualkit.core.specs import DecoderSpec, MlmSpec, ModelSpec, apply_overrides, validate
from dualkit.core.weights import decoder_shapes, encoder_shapes, init_classifier, init_masked, masked_shapes
from dualkit.tasks.masked_spec import MaskedRunSpec

# --------------------------------------------------------------------------- masks


def test_masks_are_seeded_and_hide_exactly_round_ratio_patches():
    a = random_masks(50, (4, 4), 0.6, make_rng(3, "masks"))
    b = random_masks(50, (4, 4), 0.6, make_rng(3, "masks"))
    c = random_masks(50, (4, 4), 0.6, make_rng(4, "masks"))
    assert a.shape == (50, 4, 4) and a.dtype == bool
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(a.reshape(50, -1).sum(1) == 10)  # round(0.6 * 16)
    assert len({m.tobytes() for m in a}) > 40  # a different mask per image


def test_masks_cover_every_patch_about_equally():
    m = random_masks(4000, (2, 3), 0.5, make_rng(0, "masks"))
    freq = m.mean(axis=0)
    np.testing.assert_allclose(freq, 0.5, atol=0.03)


@pytest.mark.parametrize("ratio, length, k", [(0.6, 16, 10), (0.6, 4, 2), (0.01, 4, 1), (0.99, 4, 3), (0.5, 2, 1)])
def test_num_masked_keeps_both_sets_non_empty(ratio, length, k):
    assert num_masked(length, ratio) == k


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_open_interval_is_refused(ratio):
    with pytest.raises(SpecError, match=r"mask.ratio must be in \(0, 1\)"):
        num_masked(16, ratio)


def test_upsample_and_visible():
    m = np.array([[[True, False], [False, True]]])
    up = upsample_mask(m, 3)
    assert up.shape == (1, 6, 6)
    assert up[0, :3, :3].all() and not up[0, :3, 3:].any() and up[0, 3:, 3:].all()
    v = visible(m, 3, "float64")
    assert v.shape == (1, 6, 6, 1) and v.dtype == np.float64
    assert np.array_equal(v[..., 0], 1.0 - up)


# --------------------------------------------------------------------------- patch size


def test_patch_size_is_the_encoders_downsampling():
    assert patch_size_for(ModelSpec(channels=(8, 16)), (8, 8, 1)) == 4
    assert patch_size_for(ModelSpec(channels=(8, 16, 32)), (32, 32, 3), requested=8) == 8
    assert grid_shape((32, 32, 3), 8) == (4, 4)


def test_patch_size_that_does_not_match_the_downsampling_is_refused():
    with pytest.raises(SpecError, match=r"mask.patch_size=4 does not match the encoder's downsampling.*2\^3 = 8"):
        patch_size_for(ModelSpec(channels=(8, 16, 32)), (32, 32, 3), requested=4)


def test_patch_size_that_does_not_divide_the_image_is_refused():
    # MNIST-sized images with three pooling blocks: 28 is not a multiple of 8
    with pytest.raises(SpecError, match=r"patch size 8 .* does not divide the 28x28 images"):
        patch_size_for(ModelSpec(channels=(8, 16, 32)), (28, 28, 1))


# --------------------------------------------------------------------------- patches and targets


def test_patchify_order_and_round_trip():
    x = np.arange(2 * 4 * 6 * 3, dtype=np.float64).reshape(2, 4, 6, 3)
    p = patchify(x, 2)
    assert p.shape == (2, 6, 12)
    # patch (row 0, col 1) of image 0: pixels (0..1, 2..3), (y, x, c) order
    np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4, :].reshape(-1))
    np.testing.assert_array_equal(p[1, 4], x[1, 2:4, 2:4, :].reshape(-1))
    np.testing.assert_array_equal(unpatchify(p, 2, (4, 6, 3)), x)


def test_normalized_targets_have_zero_mean_unit_unbiased_variance():
    x = make_rng(0, "t").normal(2.0, 3.0, size=(3, 8, 8, 2))
    t = normalized_targets(x, 4)
    np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(t.var(-1, ddof=1), 1.0, rtol=1e-5)  # eps 1e-6 against variances ~9
    np.testing.assert_allclose(denormalize(unpatchify(t, 4, x.shape[1:]), x, 4), x, atol=1e-12)


def test_constant_patch_normalises_to_zero_not_nan():
    x = np.ones((1, 4, 4, 1))
    assert np.all(normalized_targets(x, 2) == 0.0)


# --------------------------------------------------------------------------- the masked loss reference


def test_masked_mse_hand_value():
    images = np.zeros((1, 2, 4, 1))
    pred = np.zeros((1, 2, 4, 1))
    pred[0, :, :2, 0] = 2.0  # patch 0 all errors of 2, patch 1 exact
    mask = np.array([[[True, False]]])
    assert masked_mse(pred, images, mask, 2) == pytest.approx(4.0, rel=1e-15)
    mask = np.array([[[True, True]]])
    assert masked_mse(pred, images, mask, 2) == pytest.approx(2.0, rel=1e-15)


def test_masked_mse_ignores_visible_patches():
    rng = make_rng(0, "loss")
    x, pred = rng.normal(size=(4, 8, 12, 3)), rng.normal(size=(4, 8, 12, 3))
    mask = random_masks(4, (2, 3), 0.5, rng)
    changed = pred + 100.0 * visible(mask, 4, "float64")  # only visible pixels change
    for norm_pix in (False, True):
        assert masked_mse(changed, x, mask, 4, norm_pix) == pytest.approx(
            masked_mse(pred, x, mask, 4, norm_pix), rel=1e-14
        )


def test_masked_mse_norm_pix_matches_a_direct_computation():
    rng = make_rng(1, "loss")
    x, pred = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 4, 4, 2))
    mask = random_masks(3, (2, 2), 0.5, rng)
    total, count = 0.0, 0
    for n in range(3):
        for gy in range(2):
            for gx in range(2):
                if mask[n, gy, gx]:
                    t = x[n, 2 * gy : 2 * gy + 2, 2 * gx : 2 * gx + 2].reshape(-1)
                    t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
                    total += np.mean((pred[n, 2 * gy : 2 * gy + 2, 2 * gx : 2 * gx + 2].reshape(-1) - t) ** 2)
                    count += 1
    assert masked_mse(pred, x, mask, 2, norm_pix=True) == pytest.approx(total / count, rel=1e-13)


def test_masked_mse_refuses_bad_shapes_and_empty_masks():
    x = np.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="both be"):
        masked_mse(np.zeros((2, 4, 4, 2)), x, np.ones((2, 2, 2)), 2)
    with pytest.raises(ValueError, match="mask must be"):
        masked_mse(x, x, np.ones((2, 3, 3)), 2)
    with pytest.raises(ValueError, match="hides no patch"):
        masked_mse(x, x, np.zeros((2, 2, 2)), 2)


# --------------------------------------------------------------------------- spec checks


def test_masked_spec_defaults_and_overrides():
    spec = validate(MaskedRunSpec(model=ModelSpec(channels=(8, 16))))
    assert spec.mask.ratio == 0.6 and spec.mask.norm_pix
    spec = apply_overrides(spec, ["mask.ratio=0.75", "finetune.optim.lr=0.1", "finetune.fractions=[0.5]"])
    assert spec.mask.ratio == 0.75 and spec.finetune.optim.lr == 0.1 and spec.finetune.fractions == (0.5,)


@pytest.mark.parametrize(
    "override, message",
    [
        ("mask.ratio=0", r"mask.ratio must be in \(0, 1\)"),
        ("mask.ratio=1.0", r"mask.ratio must be in \(0, 1\)"),
        (
            "mask.patch_size=8",
            r"mask.patch_size=8 does not match the encoder's downsampling: 2 pooling blocks downsample by 2\^2 = 4",
        ),
        ("decoder.channels=[8]", r"decoder.channels needs one entry per encoder block \(2\)"),
        ("finetune.fractions=[0.0]", r"finetune.fractions must be in \(0, 1\]"),
        ("finetune.optim.lr=-1", r"optim.lr must be > 0"),
    ],
)
def test_masked_spec_bad_values_are_refused(override, message):
    spec = MaskedRunSpec(model=ModelSpec(channels=(8, 16)))
    with pytest.raises(SpecError, match=message):
        apply_overrides(spec, [override])


# --------------------------------------------------------------------------- decoder weights


def test_decoder_shapes_and_the_encoder_init_is_the_classifiers():
    model = ModelSpec(channels=(8, 16), batchnorm=True)
    shapes = decoder_shapes(model, DecoderSpec(), 3)
    assert shapes == {
        "decoder.mask_token": (16,),
        "decoder.up0.weight": (8, 16, 3, 3),
        "decoder.up0.bias": (8,),
        "decoder.up1.weight": (4, 8, 3, 3),
        "decoder.up1.bias": (4,),
        "decoder.out.weight": (3, 4, 1, 1),
        "decoder.out.bias": (3,),
    }
    assert "decoder.mask_token" not in decoder_shapes(model, DecoderSpec(mask_token=False, channels=(5, 6)), 3)
    # hierarchical: stage 0 (upsampled to the first block's output resolution) adds that output, projected
    skips = decoder_shapes(ModelSpec(channels=(8, 16, 32)), DecoderSpec(skips=True), 3)
    assert skips["decoder.skip0.weight"] == (32, 16, 1, 1) and skips["decoder.skip0.bias"] == (32,)
    assert skips["decoder.skip1.weight"] == (16, 8, 1, 1)
    assert "decoder.skip2.weight" not in skips  # the finest stage has no encoder output at full resolution
    w = init_masked(model, DecoderSpec(), 3, seed=7)
    assert list(w) == list(masked_shapes(model, DecoderSpec(), 3))
    clf = init_classifier(model, (8, 8, 3), seed=7)
    for name in encoder_shapes(model, 3):
        np.testing.assert_array_equal(w[name], clf[name])
    assert 0.005 < w["decoder.mask_token"].std() < 0.05
    assert np.all(w["decoder.up0.bias"] == 0)
    assert not np.array_equal(
        init_masked(model, DecoderSpec(), 3, seed=8)["decoder.up0.weight"], w["decoder.up0.weight"]
    )


# --------------------------------------------------------------------------- masked language modelling (mlm_mask)

_PAD, _CLS, _SEP, _MASK = 0, 1, 2, 3
_SPECIAL = (_PAD, _CLS, _SEP, _MASK)


def _mlm_batch(n: int, length: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] tokens [SEP] [PAD]... rows of random lengths, with their attention mask."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, length), _PAD, dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    for i, used in enumerate(rng.integers(2, length + 1, n)):
        ids[i, :used] = np.concatenate([[_CLS], rng.integers(len(_SPECIAL), vocab, used - 2), [_SEP]])
        mask[i, :used] = 1
    return ids, mask


def test_mlm_mask_follows_its_documented_draws():
    spec = MlmSpec(ratio=0.3, mask_fraction=0.6, random_fraction=0.25)
    ids, am = _mlm_batch(6, 12, 40)
    before = ids.copy()
    masked, labels = mlm_mask(ids, _SPECIAL, _MASK, 40, spec, make_rng(3, "mlm"), attention_mask=am)
    np.testing.assert_array_equal(ids, before)  # the input is not modified
    rng = make_rng(3, "mlm")
    u, v, r = rng.random(ids.shape), rng.random(ids.shape), rng.integers(0, 40 - 4, ids.shape)
    chosen = (u < 0.3) & (am == 1) & (ids > _MASK)
    expect = ids.copy()
    expect[chosen & (v < 0.6)] = _MASK
    rand = chosen & (v >= 0.6) & (v < 0.85)
    expect[rand] = np.arange(4, 40)[r[rand]]
    np.testing.assert_array_equal(masked, expect)
    np.testing.assert_array_equal(labels, np.where(chosen, ids, -100))
    assert labels.dtype == np.int64 and masked.dtype == ids.dtype
    again = mlm_mask(ids, _SPECIAL, _MASK, 40, spec, make_rng(3, "mlm"), attention_mask=am)
    np.testing.assert_array_equal(again[0], masked)


def test_mlm_mask_rates_and_what_is_never_chosen():
    vocab = 50
    ids, am = _mlm_batch(300, 64, vocab, seed=1)
    masked, labels = mlm_mask(ids, _SPECIAL, _MASK, vocab, MlmSpec(), make_rng(0, "mlm"), attention_mask=am)
    chosen = labels != -100
    eligible = (am == 1) & ~np.isin(ids, _SPECIAL)
    assert not np.any(chosen & ~eligible)  # never [CLS], [SEP] or padding
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    k = chosen.sum()
    assert abs(k / eligible.sum() - 0.15) < 0.01
    is_mask = masked[chosen] == _MASK
    changed = (masked[chosen] != ids[chosen]) & ~is_mask
    assert abs(is_mask.mean() - 0.8) < 0.02
    # a random replacement equals the original with probability 1 / 46, so slightly fewer than 10% change
    assert abs(changed.mean() - 0.1 * 45 / 46) < 0.015
    assert not np.any(np.isin(masked[chosen & (masked != _MASK)], _SPECIAL))  # replacements are ordinary ids
    # without an attention mask, padding is left alone because [PAD] is special
    masked2, labels2 = mlm_mask(ids, _SPECIAL, _MASK, vocab, MlmSpec(), make_rng(0, "mlm"))
    np.testing.assert_array_equal(labels2, labels)
    np.testing.assert_array_equal(masked2, masked)


def test_mlm_mask_draws_do_not_depend_on_the_tokens():
    ids, am = _mlm_batch(4, 16, 30, seed=2)
    other = np.where(ids > _MASK, (ids - 4 + 7) % 26 + 4, ids)  # same specials, different ordinary tokens
    a = mlm_mask(ids, _SPECIAL, _MASK, 30, MlmSpec(), make_rng(5, "mlm"), attention_mask=am)[1] != -100
    b = mlm_mask(other, _SPECIAL, _MASK, 30, MlmSpec(), make_rng(5, "mlm"), attention_mask=am)[1] != -100
    np.testing.assert_array_equal(a, b)
    none = mlm_mask(ids[:, :2], _SPECIAL, _MASK, 30, MlmSpec(), make_rng(5, "mlm"), attention_mask=am[:, :2])[1]
    assert np.all(none == -100)  # rows with nothing to choose from are allowed


@pytest.mark.parametrize(
    "ratio, mask_fraction, random_fraction",
    [(0.0, 0.8, 0.1), (1.5, 0.8, 0.1), (0.15, 0.95, 0.1), (0.15, -0.1, 0.1)],
)
def test_mlm_mask_refuses_bad_fractions(ratio, mask_fraction, random_fraction):
    ids, am = _mlm_batch(2, 8, 20)
    with pytest.raises(SpecError, match="mlm"):
        mlm_mask(
            ids,
            _SPECIAL,
            _MASK,
            20,
            MlmSpec(ratio, mask_fraction, random_fraction),
            make_rng(0, "mlm"),
            attention_mask=am,
        )
    with pytest.raises(ValueError, match="mask_id"):
        mlm_mask(ids, _SPECIAL, 20, 20, MlmSpec(), make_rng(0, "mlm"), attention_mask=am)
