"""Masks for masked image pretraining, drawn here in numpy so both backends see the same ones.

A mask lives on the encoder's coarsest grid: one entry per patch of ``patch_size`` x ``patch_size``
pixels, where the patch size is the encoder's total downsampling (2 ** blocks), as SparK does for CNNs.
``True`` means masked (hidden from the encoder, predicted by the decoder). Patches are flattened in
(row, column) order and patch vectors in (y, x, channel) order, NHWC like core's images.
"""

from __future__ import annotations

import numpy as np

from dualkit.core.errors import SpecError
from dualkit.core.specs import ModelSpec


def patch_size_for(model: ModelSpec, image_shape: tuple[int, int, int], requested: int = 0) -> int:
    """The mask's patch size: the encoder's downsampling, checked to divide the image.

    ``requested`` (mask.patch_size) is 0 for automatic, else it must equal the downsampling.
    """
    blocks = len(model.channels)
    p = 2**blocks
    if requested not in (0, p):
        raise SpecError(
            f"mask.patch_size={requested} does not match the encoder's downsampling: {blocks} pooling blocks "
            f"downsample by 2^{blocks} = {p}; set mask.patch_size={p} (or 0 for automatic)"
        )
    h, w = image_shape[:2]
    if h % p or w % p:
        raise SpecError(
            f"mask patch size {p} (the encoder's downsampling, 2^{blocks} for {blocks} blocks) does not divide "
            f"the {h}x{w} images; masks must tile the image exactly: use a model with fewer blocks "
            f"(model.channels) so that 2^blocks divides {h} and {w}"
        )
    return p


def grid_shape(image_shape: tuple[int, int, int], patch: int) -> tuple[int, int]:
    h, w = image_shape[:2]
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch size {patch} does not divide the {h}x{w} image")
    return h // patch, w // patch


def num_masked(num_patches: int, ratio: float) -> int:
    """Patches masked per image: round(ratio * L), kept in [1, L - 1] so both sets are non-empty."""
    if not 0.0 < ratio < 1.0:
        raise SpecError(f"mask.ratio must be in (0, 1) (exclusive), got {ratio}")
    if num_patches < 2:
        raise SpecError(f"a mask needs at least 2 patches on the coarsest grid, got {num_patches}")
    return int(min(max(round(ratio * num_patches), 1), num_patches - 1))


def random_masks(n: int, grid: tuple[int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """(n, gh, gw) bool masks, exactly ``num_masked`` patches each, chosen uniformly per image.

    Draw order (part of the reproducibility contract): one ``rng.random((n, gh * gw))``; the
    ``num_masked`` patches with the smallest draws are masked (a stable argsort breaks ties).
    """
    gh, gw = grid
    length = gh * gw
    k = num_masked(length, ratio)
    order = np.argsort(rng.random((n, length)), axis=1, kind="stable")
    mask = np.zeros((n, length), dtype=bool)
    np.put_along_axis(mask, order[:, :k], True, axis=1)
    return mask.reshape(n, gh, gw)


def upsample_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(n, gh, gw) -> (n, gh * factor, gw * factor): every grid cell repeated over its pixels."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"masks are (n, gh, gw), got shape {mask.shape}")
    return mask.repeat(factor, axis=1).repeat(factor, axis=2)


def visible(mask: np.ndarray, patch: int, dtype: str = "float32") -> np.ndarray:
    """(n, H, W, 1) float: 1 where the pixel is visible to the encoder, 0 where it is masked."""
    return (~upsample_mask(mask, patch).astype(bool))[..., None].astype(dtype)


def patchify(x: np.ndarray, patch: int) -> np.ndarray:
    """(n, H, W, C) -> (n, L, patch * patch * C), patches in row-major order."""
    n, h, w, c = x.shape
    gh, gw = grid_shape((h, w, c), patch)
    return x.reshape(n, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, patch * patch * c)


def unpatchify(p: np.ndarray, patch: int, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of ``patchify``."""
    h, w, c = image_shape
    gh, gw = grid_shape(image_shape, patch)
    n = p.shape[0]
    return p.reshape(n, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


NORM_EPS = 1e-6  # MAE's: (x - mean) / sqrt(var + 1e-6)


def patch_stats(x: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch mean and unbiased variance (as MAE's ``target.var(-1)``), each (n, L, 1), in float64."""
    p = patchify(np.asarray(x, dtype=np.float64), patch)
    return p.mean(axis=-1, keepdims=True), p.var(axis=-1, ddof=1, keepdims=True)


def normalized_targets(x: np.ndarray, patch: int, eps: float = NORM_EPS) -> np.ndarray:
    """(n, L, D) per-patch normalised pixels: (x - mean) / sqrt(var + eps), float64."""
    mean, var = patch_stats(x, patch)
    return (patchify(np.asarray(x, dtype=np.float64), patch) - mean) / np.sqrt(var + eps)


def denormalize(pred: np.ndarray, x: np.ndarray, patch: int, eps: float = NORM_EPS) -> np.ndarray:
    """A reconstruction made in normalised-patch space, put back on the scale of the original image's
    patches (for pictures: the model cannot know a hidden patch's mean and variance)."""
    mean, var = patch_stats(x, patch)
    p = patchify(np.asarray(pred, dtype=np.float64), patch) * np.sqrt(var + eps) + mean
    return unpatchify(p, patch, x.shape[1:])
