"""Masks for masked image pretraining and masked language modelling (mlm_mask), drawn here in numpy so both
backends see the same ones.

A mask lives on the encoder's coarsest grid: one entry per patch of ``patch_size`` x ``patch_size``
pixels, where the patch size is the encoder's total downsampling (2 ** blocks), as SparK does for CNNs.
``True`` means masked (hidden from the encoder, predicted by the decoder). Patches are flattened in
(row, column) order and patch vectors in (y, x, channel) order, NHWC like core's images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualkit.core.errors import SpecError
from dualkit.core.specs import MlmSpec, ModelSpec
from dualkit.core.transformer import IGNORE_INDEX


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


# -- masked language modelling (BERT) ------------------------------------------------------------------------------


def _check_mlm_spec(spec: MlmSpec) -> None:
    if not 0.0 < spec.ratio <= 1.0:
        raise SpecError(f"mlm.ratio must be in (0, 1], got {spec.ratio}")
    if spec.mask_fraction < 0 or spec.random_fraction < 0 or spec.mask_fraction + spec.random_fraction > 1.0:
        raise SpecError(
            f"mlm.mask_fraction={spec.mask_fraction} and mlm.random_fraction={spec.random_fraction} must be >= 0 "
            f"and sum to at most 1 (the rest of the chosen tokens are kept unchanged)"
        )


def mlm_mask(
    input_ids: np.ndarray,
    special_ids: Sequence[int],
    mask_id: int,
    vocab_size: int,
    spec: MlmSpec,
    rng: np.random.Generator,
    attention_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking, as Hugging Face's DataCollatorForLanguageModeling: returns (masked_ids, labels).

    A position is eligible when it is attended (``attention_mask`` 1; None = all) and its id is not in
    ``special_ids`` (which should hold [PAD], [CLS], [SEP], [MASK], ...). Each eligible position is chosen
    with probability ``spec.ratio``; of the chosen, ``mask_fraction`` become ``mask_id``, ``random_fraction``
    a random token, the rest keep their id. ``labels`` is the original id at chosen positions and
    IGNORE_INDEX (-100) elsewhere; a row with nothing chosen is allowed (it adds nothing to the loss).

    Random tokens are drawn uniformly from the NON-special ids (Hugging Face draws from the whole vocabulary,
    so it may insert [CLS] or [PAD]; here a replacement is always an ordinary token).

    Draw order (fixed, part of the reproducibility contract), each over the whole (N, L) batch regardless of
    eligibility, so the stream does not depend on the content: ``u = rng.random((N, L))`` (chosen where
    ``u < ratio`` and eligible), ``v = rng.random((N, L))`` (chosen and ``v < mask_fraction`` -> mask_id;
    chosen and ``mask_fraction <= v < mask_fraction + random_fraction`` -> random), then
    ``r = rng.integers(0, len(ordinary), (N, L))``, the random token being ``ordinary[r]`` with
    ``ordinary`` the sorted non-special ids. ``input_ids`` is not modified."""
    _check_mlm_spec(spec)
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an (N, L) integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size})")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is not in [0, {vocab_size})")
    special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
    ordinary = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), special)
    if ordinary.size == 0:
        raise ValueError(f"every one of the {vocab_size} ids is special: no token to draw a replacement from")
    eligible = ~np.isin(ids, special)
    if attention_mask is not None:
        am = np.asarray(attention_mask)
        if am.shape != ids.shape:
            raise ValueError(f"attention_mask must have input_ids' shape {ids.shape}, got {am.shape}")
        eligible &= am.astype(bool)
    u = rng.random(ids.shape)
    v = rng.random(ids.shape)
    r = rng.integers(0, ordinary.size, ids.shape)
    chosen = eligible & (u < spec.ratio)
    to_mask = chosen & (v < spec.mask_fraction)
    to_random = chosen & (v >= spec.mask_fraction) & (v < spec.mask_fraction + spec.random_fraction)
    masked = ids.copy()
    masked[to_mask] = mask_id
    masked[to_random] = ordinary[r[to_random]]
    labels = np.where(chosen, ids, IGNORE_INDEX).astype(np.int64)
    return masked, labels
