"""Batches: reproducible shuffling and augmentation, normalisation, batch counts."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.core.batches import Normalizer, augment, epoch_batches, eval_batches, make_rng, num_batches
from dualkit.core.errors import DataError


def images(n: int = 10, h: int = 6, w: int = 5, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def run_epoch(seed: int, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    x = images(23)
    y = np.arange(23)
    return list(epoch_batches(x, y, 5, make_rng(seed, "train"), Normalizer.identity(3), **kwargs))


# --------------------------------------------------------------------------- rng


def test_make_rng_streams():
    a = make_rng(1, "shuffle").integers(0, 1 << 30, 8)
    assert np.array_equal(a, make_rng(1, "shuffle").integers(0, 1 << 30, 8))
    assert not np.array_equal(a, make_rng(1, "augment").integers(0, 1 << 30, 8))
    assert not np.array_equal(a, make_rng(2, "shuffle").integers(0, 1 << 30, 8))
    # Pinned value: the stream id is crc32, stable across processes and Python versions.
    assert np.array_equal(
        make_rng(0, "x").integers(0, 1000, 3), np.random.default_rng([0, 2363233923]).integers(0, 1000, 3)
    )
    with pytest.raises(ValueError):
        make_rng(-1, "x")


# --------------------------------------------------------------------------- epochs


def test_same_seed_same_batches():
    kw = dict(crop_padding=2, flip=True)
    a, b = run_epoch(3, **kw), run_epoch(3, **kw)
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_different_seeds_differ():
    a, b = run_epoch(3), run_epoch(4)
    assert not all(np.array_equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))


def test_every_index_once_per_epoch():
    batches = run_epoch(5, crop_padding=1, flip=True)
    seen = np.concatenate([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(23))
    assert not np.array_equal(seen, np.arange(23))  # actually shuffled
    for xb, yb in batches:
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and xb.shape[1:] == (6, 5, 3)
        assert yb.dtype == np.int64 and len(xb) == len(yb)


def test_images_follow_labels():
    x = images(23)
    for xb, yb in run_epoch(6):  # no augmentation: each image is its label's source image / 255
        np.testing.assert_allclose(xb, x[yb] / 255.0, rtol=1e-6)


def test_drop_last_and_counts():
    assert [len(y) for _, y in run_epoch(0)] == [5, 5, 5, 5, 3]
    assert [len(y) for _, y in run_epoch(0, drop_last=True)] == [5, 5, 5, 5]
    assert num_batches(23, 5, False) == 5 and num_batches(23, 5, True) == 4
    assert num_batches(20, 5, False) == num_batches(20, 5, True) == 4
    assert num_batches(0, 5, False) == 0


def test_no_shuffle_is_in_order_and_float64():
    batches = run_epoch(0, shuffle=False, dtype="float64")
    assert np.array_equal(np.concatenate([y for _, y in batches]), np.arange(23))
    assert batches[0][0].dtype == np.float64


def test_eval_batches_in_order_no_augmentation():
    x, y = images(11), np.arange(11) % 3
    norm = Normalizer.fit(x)
    out = list(eval_batches(x, y, 4, norm, dtype="float64"))
    assert [len(b) for _, b in out] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b for _, b in out]), y)
    np.testing.assert_array_equal(np.concatenate([a for a, _ in out]), norm.apply(x, "float64"))


def test_mismatched_lengths():
    with pytest.raises(DataError, match="10 images but 9 labels"):
        next(epoch_batches(images(10), np.arange(9), 4, make_rng(0, "t"), Normalizer.identity(3)))


# --------------------------------------------------------------------------- augment


def test_augment_off_draws_nothing():
    x = images()
    rng = make_rng(0, "aug")
    state = rng.bit_generator.state
    assert augment(x, rng, 0, False) is x
    assert rng.bit_generator.state == state


def test_crop_shifts_content_by_hand():
    x = images(4, 6, 5, 2)
    before = x.copy()
    p = 2
    out = augment(x, make_rng(9, "aug"), p, False)
    np.testing.assert_array_equal(x, before)  # input untouched
    assert out.dtype == np.uint8 and out.shape == x.shape and out is not x
    ref = make_rng(9, "aug")  # documented draw order: row offsets, then column offsets
    oy, ox = ref.integers(0, 2 * p + 1, 4), ref.integers(0, 2 * p + 1, 4)
    for k in range(4):
        dy, dx = int(oy[k]) - p, int(ox[k]) - p  # content moves by (-dy, -dx)
        for i in range(6):
            for j in range(5):
                si, sj = i + dy, j + dx
                want = x[k, si, sj] if 0 <= si < 6 and 0 <= sj < 5 else np.zeros(2, np.uint8)
                np.testing.assert_array_equal(out[k, i, j], want)
    # A seed where some image is really shifted, so the test above is not vacuous.
    assert np.any((oy != p) | (ox != p))


def test_crop_one_image_explicit():
    # One 3x3 image, padding 1: an offset of (0, 2) shows the top zero border row, drops column 0 and adds the
    # right border.
    x = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)
    rng = _Scripted([np.array([0]), np.array([2])], make_rng(0, "unused"))
    out = augment(x, rng, 1, False)[0, :, :, 0]
    np.testing.assert_array_equal(out, [[0, 0, 0], [2, 3, 0], [5, 6, 0]])


class _Scripted:
    """Returns the given offset arrays in order, standing in for a generator."""

    def __init__(self, values, rng):
        self.values, self.rng = list(values), rng

    def integers(self, low, high, size):
        v = self.values.pop(0)
        assert low == 0 and v.shape == (size,) and np.all(v < high)
        return v

    def random(self, size):
        return self.rng.random(size)


def test_flip_only():
    x = images(64)
    before = x.copy()
    out = augment(x, make_rng(1, "aug"), 0, True)
    np.testing.assert_array_equal(x, before)
    flipped = make_rng(1, "aug").random(64) < 0.5  # with no crop, the flips are the only draws
    assert 10 < flipped.sum() < 54
    np.testing.assert_array_equal(out[flipped], x[flipped][:, :, ::-1])
    np.testing.assert_array_equal(out[~flipped], x[~flipped])


def test_crop_then_flip_draw_order():
    x = images(8)
    p = 1
    out = augment(x, make_rng(2, "aug"), p, True)
    ref = make_rng(2, "aug")
    oy, ox, fl = ref.integers(0, 3, 8), ref.integers(0, 3, 8), ref.random(8) < 0.5
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    for k in range(8):
        crop = padded[k, oy[k] : oy[k] + 6, ox[k] : ox[k] + 5]
        np.testing.assert_array_equal(out[k], crop[:, ::-1] if fl[k] else crop)


# --------------------------------------------------------------------------- normalizer


def test_normalizer_fit_standardizes():
    rng = np.random.default_rng(0)
    x = np.stack(
        [rng.integers(0, 100, (50, 8, 8)), rng.integers(100, 256, (50, 8, 8)), rng.integers(0, 256, (50, 8, 8))],
        axis=-1,
    ).astype(np.uint8)
    norm = Normalizer.fit(x)
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, scaled.std(axis=(0, 1, 2)), rtol=1e-12)
    z = norm.apply(x, "float64")
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-10)
    z32 = norm.apply(x)
    assert z32.dtype == np.float32
    np.testing.assert_array_equal(z32, z.astype(np.float32))  # float64 math, one rounding


def test_normalizer_constant_channel_and_identity():
    x = np.full((3, 4, 4, 1), 7, dtype=np.uint8)
    norm = Normalizer.fit(x)
    assert norm.std[0] == 1e-8 and np.isfinite(norm.apply(x)).all()
    ident = Normalizer.identity(1)
    np.testing.assert_array_equal(ident.apply(x, "float64"), x / 255.0)


def test_normalizer_dict_roundtrip():
    norm = Normalizer.fit(images())
    back = Normalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    assert isinstance(norm.to_dict()["mean"][0], float)
    with pytest.raises(DataError):
        Normalizer.from_dict({"mean": [0.5]})
    with pytest.raises(DataError, match="channels"):
        norm.apply(images(c=1))
