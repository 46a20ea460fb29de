"""Batches both backends see identically: seeded shuffling, augmentation and normalisation in numpy.

Everything random is drawn here, from numpy generators, so a torch run and a tensorflow run with the
same seed are fed bit-identical float arrays; the backends only convert them to tensors.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualkit.core.errors import DataError

_STD_FLOOR = 1e-8  # a constant channel (e.g. a blank border) must not divide by zero


def _as_vector(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    arr.flags.writeable = False  # the dataclass is frozen; keep its arrays frozen too
    if not np.all(np.isfinite(arr)):
        raise DataError(f"normalizer {name} must be finite, got {arr.tolist()}")
    return arr


@dataclass(frozen=True, eq=False)
class Normalizer:
    """Per-channel ``((x / 255) - mean) / std``; mean and std are on the [0, 1] scale."""

    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64

    def __post_init__(self) -> None:
        mean = _as_vector(self.mean, "mean")
        std = _as_vector(self.std, "std")
        if mean.shape != std.shape:
            raise DataError(f"normalizer mean has {mean.size} channels but std has {std.size}")
        if np.any(std <= 0):
            raise DataError(f"normalizer std must be > 0, got {std.tolist()}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return int(self.mean.size)

    @classmethod
    def fit(cls, x_uint8: np.ndarray) -> Normalizer:
        """Mean and (population) std per channel over N, H, W of ``x / 255``.

        Computed exactly from a 256-bin histogram per channel: no float64 copy of the whole
        training set (1.2 GB for CIFAR-10), and the result does not depend on summation order.
        """
        _check_images(x_uint8)
        if len(x_uint8) == 0:
            raise DataError("cannot fit a normalizer on an empty training set")
        levels = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for c in range(x_uint8.shape[-1]):
            counts = np.bincount(x_uint8[..., c].ravel(), minlength=256).astype(np.float64)
            total = counts.sum()
            mean = float(counts @ levels) / total
            var = float(counts @ (levels - mean) ** 2) / total
            means.append(mean)
            stds.append(max(np.sqrt(var), _STD_FLOOR))
        return cls(np.array(means), np.array(stds))

    @classmethod
    def identity(cls, channels: int) -> Normalizer:
        """Mean 0, std 1: only the scaling to [0, 1]."""
        return cls(np.zeros(channels), np.ones(channels))

    def apply(self, x_uint8: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """``((x / 255) - mean) / std``, computed in float64 then cast, so both dtypes round once."""
        _check_images(x_uint8)
        if x_uint8.shape[-1] != self.channels:
            raise DataError(f"normalizer has {self.channels} channels, images have {x_uint8.shape[-1]}")
        out = (x_uint8.astype(np.float64) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(out, dtype=np.dtype(dtype))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        if not isinstance(d, dict) or set(d) != {"mean", "std"}:
            raise DataError(f"a normalizer is saved as {{'mean': [...], 'std': [...]}}, got {d!r}")
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]))


def _check_images(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"expected NHWC uint8 images, got {got}")


def stable_int(name: str) -> int:
    """A name's fixed integer (CRC-32): unlike ``hash()``, it is the same in every process."""
    return zlib.crc32(name.encode("utf-8"))


def make_rng(seed: int, stream: str) -> np.random.Generator:
    """An independent, reproducible generator per purpose (``"shuffle"``, ``"split/val"``, ...)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), stable_int(stream)])


def augment(x_uint8: np.ndarray, rng: np.random.Generator, crop_padding: int, flip: bool) -> np.ndarray:
    """Random crop after zero padding, then random horizontal flip, each chosen per image.

    Draw order (fixed, part of the reproducibility contract): ``n`` row offsets, ``n`` column
    offsets (both ``rng.integers(0, 2p + 1, n)``, only when ``crop_padding > 0``), then ``n`` flips
    (``rng.random(n) < 0.5``, only when ``flip``). With neither, the input itself is returned and
    nothing is drawn. Otherwise a new array is returned and the input is not modified.
    Output pixel ``(i, j)`` is ``padded[oy + i, ox + j]`` (before the flip).
    """
    _check_images(x_uint8)
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if crop_padding == 0 and not flip:
        return x_uint8
    n, h, w, _ = x_uint8.shape
    p = crop_padding
    rows = np.broadcast_to(np.arange(h), (n, h))
    cols = np.broadcast_to(np.arange(w), (n, w))
    if p > 0:
        oy = rng.integers(0, 2 * p + 1, size=n)
        ox = rng.integers(0, 2 * p + 1, size=n)
        rows = oy[:, None] + rows
        cols = ox[:, None] + cols
        source = np.pad(x_uint8, ((0, 0), (p, p), (p, p), (0, 0)))
    else:
        source = x_uint8
    if flip:
        flipped = rng.random(n) < 0.5
        cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    # One gather does crop and flip for the whole batch: out[k, i, j] = source[k, rows[k, i], cols[k, j]].
    return source[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """How many batches ``epoch_batches`` yields for ``n`` examples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_pair(x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
    _check_images(x)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def epoch_batches(
    x_uint8: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    normalizer: Normalizer,
    *,
    shuffle: bool = True,
    crop_padding: int = 0,
    flip: bool = False,
    drop_last: bool = False,
    dtype: str = "float32",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(x, y)`` training batches: x float NHWC C-contiguous, y int64.

    Draws: the permutation first (if ``shuffle``), then each batch's augmentation in batch order,
    all from ``rng``. Draws are lazy, so stopping early leaves ``rng`` at a different state.
    """
    _check_pair(x_uint8, y, batch_size)
    n = len(x_uint8)
    order = rng.permutation(n) if shuffle else np.arange(n)
    for b in range(num_batches(n, batch_size, drop_last)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        xb = augment(x_uint8[idx], rng, crop_padding, flip)
        yield normalizer.apply(xb, dtype), np.asarray(y[idx], dtype=np.int64)


def eval_batches(
    x_uint8: np.ndarray, y: np.ndarray, batch_size: int, normalizer: Normalizer, dtype: str = "float32"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All examples in order, without augmentation; the last batch may be short."""
    _check_pair(x_uint8, y, batch_size)
    for start in range(0, len(x_uint8), batch_size):
        sl = slice(start, start + batch_size)
        yield normalizer.apply(x_uint8[sl], dtype), np.asarray(y[sl], dtype=np.int64)
