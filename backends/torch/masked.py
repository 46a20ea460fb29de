"""Masked image pretraining in PyTorch: the classifier's encoder run on masked images, a light decoder.

The encoder is the classifier's (cnn.build_encoder: same modules, so the same canonical names); the masked
forward walks its blocks and, after every conv stage, re-zeroes masked positions, so nothing crosses the mask.
BatchNorm takes its batch statistics (and running statistics) from visible positions only. Unmasked,
eval-mode forward is the classifier's encoder unchanged: that is what probing and fine-tuning use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualkit.backends.torch import distributed
from dualkit.backends.torch.cnn import build_encoder
from dualkit.backends.torch.losses import masked_mse
from dualkit.backends.torch.model import ModelState
from dualkit.backends.torch.optim import Optimizer
from dualkit.backends.torch.runtime import DTYPES, framework_device, to_numpy, to_tensor
from dualkit.core.masking import patch_size_for, visible
from dualkit.core.specs import DecoderSpec, ModelSpec, OptimSpec
from dualkit.core.weights import decoder_channels, decoder_skips


def masked_batchnorm(bn: nn.BatchNorm2d, x: torch.Tensor, vis: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm whose batch and running statistics come from visible positions only (``vis`` is
    (N, 1, H, W), 1 = visible); running variance unbiased over the visible count, as torch's own. A synchronised
    BatchNorm (``model.bn_sync``) takes them from every worker's visible positions inside a distributed step."""
    if not training:
        return bn(x)
    if getattr(bn, "sync", False) and distributed.in_step():  # the global batch's visible positions
        mean, var, n = distributed.sync_moments(x, vis, shift=bn.running_mean)
    else:
        n = vis.sum()
        mean = (x * vis).sum(dim=(0, 2, 3)) / n
        var = (((x - mean[None, :, None, None]) * vis) ** 2).sum(dim=(0, 2, 3)) / n
    with torch.no_grad():
        m = bn.momentum
        distributed.assign_running(bn.running_mean, (1 - m) * bn.running_mean + m * mean)
        distributed.assign_running(bn.running_var, (1 - m) * bn.running_var + m * var * n / (n - 1))
        bn.num_batches_tracked += 1
    scale = torch.rsqrt(var + bn.eps) * bn.weight
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + bn.bias[None, :, None, None]


def masked_encode(
    encoder: nn.Module, x: torch.Tensor, vis: torch.Tensor, training: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """NCHW images with masked pixels already zero -> every block's pooled output and its visibility
    (N, 1, h, w), fine to coarse (the last is the coarsest)."""
    outs = []
    for block in encoder.children():
        for c in range(block.n):
            x = getattr(block, f"conv{c}")(x)
            if block.batchnorm:
                x = masked_batchnorm(getattr(block, f"bn{c}"), x, vis, training)
            if c < block.n - 1:  # the block's last ReLU comes after the pool, as in cnn.build_encoder's blocks
                x = torch.relu(x) * vis  # re-zero: convs spread values into masked positions
        # Patches are aligned with every pooling window, so a window is all visible or all masked: the
        # pool never mixes the two, and the re-zeroing on the coarser grid clears the masked ones.
        x = block.pool(x)
        vis = vis[:, :, ::2, ::2]
        x = torch.relu(x) * vis
        outs.append((x, vis))
    return outs


class _Decoder(nn.Module):  # private: the public surface is build_decoder, as in backends/tf/masked.py
    """Coarsest features (masked positions filled with the mask token) -> one stage per encoder block
    (2x nearest upsampling, [+ 1x1-conv projection of the encoder's output at that resolution,]
    3x3 conv, ReLU) -> 1x1 conv to pixels."""

    def __init__(self, model: ModelSpec, decoder: DecoderSpec, in_channels: int):
        super().__init__()
        cin = model.channels[-1]
        self.has_token = decoder.mask_token
        if self.has_token:
            self.mask_token = nn.Parameter(torch.zeros(cin))
        self.skips = decoder_skips(model, decoder)
        widths = decoder_channels(model, decoder)
        for i, cout in enumerate(widths):
            if i in self.skips:
                self.add_module(f"skip{i}", nn.Conv2d(model.channels[self.skips[i]], cin, 1))
            self.add_module(f"up{i}", nn.Conv2d(cin, cout, 3, padding=1))
            cin = cout
        self.n = len(widths)
        self.out = nn.Conv2d(cin, in_channels, 1)

    def forward(self, encoded: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        feats, vis = encoded[-1]
        if self.has_token:
            feats = feats * vis + self.mask_token[None, :, None, None] * (1 - vis)
        for i in range(self.n):
            feats = F.interpolate(feats, scale_factor=2, mode="nearest")
            if i in self.skips:
                feats = feats + getattr(self, f"skip{i}")(encoded[self.skips[i]][0])
            feats = torch.relu(getattr(self, f"up{i}")(feats))
        return self.out(feats)


def build_decoder(
    model: ModelSpec, decoder: DecoderSpec, image_shape: tuple[int, int, int], dtype: str = "float32"
) -> nn.Module:
    """The decoder alone: ``masked_encode``'s outputs -> NCHW pixels (``decoder.`` names dropped)."""
    return _Decoder(model, decoder, image_shape[2]).to(dtype=getattr(torch, dtype))


class _MaskedNet(nn.Module):
    """NHWC images and visibility (N, H, W, 1) in, NHWC reconstruction out; NCHW in channels_last memory inside."""

    def __init__(self, model: ModelSpec, decoder: DecoderSpec, image_shape: tuple[int, int, int]):
        super().__init__()
        self.encoder = build_encoder(model, image_shape)
        self.decoder = build_decoder(model, decoder, image_shape)
        self.to(memory_format=torch.channels_last)  # as cnn.build_cnn: NHWC batches are channels_last already

    def forward(self, x_nhwc: torch.Tensor, vis_nhwc: torch.Tensor) -> torch.Tensor:
        vis = vis_nhwc.permute(0, 3, 1, 2)
        x = x_nhwc.permute(0, 3, 1, 2) * vis
        return self.decoder(masked_encode(self.encoder, x, vis, self.training)).permute(0, 2, 3, 1)

    def features(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """The encoder on whole images (no mask), global-average-pooled: (N, C)."""
        return self.encoder(x_nhwc.permute(0, 3, 1, 2)).mean(dim=(2, 3))


class MaskedAutoencoder(ModelState):
    """The masked autoencoder, its optimizer and steps. Inputs are NHWC numpy batches and (N, h, w) bool
    masks from core (true = masked); outputs are numpy."""

    def __init__(
        self,
        model: ModelSpec,
        decoder: DecoderSpec,
        image_shape: tuple[int, int, int],
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        norm_pix: bool = True,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.device = framework_device(device)
        self.dtype = DTYPES[dtype]
        self.dtype_name = dtype
        self.norm_pix = norm_pix
        self.patch = patch_size_for(model, image_shape)
        self.net = _MaskedNet(model, decoder, image_shape).to(device=self.device, dtype=self.dtype)
        self.set_weights(weights)
        self.params = {n: p for n, p in self.net.named_parameters()}
        self.optimizer = Optimizer(optim, self.params)

    # -- steps ---------------------------------------------------------------------------------
    def _tensors(self, x: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vis = visible(mask, self.patch, self.dtype_name)
        return (
            to_tensor(x, self.dtype, self.device),
            to_tensor(vis, self.dtype, self.device),
            to_tensor(np.asarray(mask, bool), device=self.device),
        )

    def _loss(self, x: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        self.net.train()
        xt, vis, mt = self._tensors(x, mask)
        return masked_mse(self.net(xt, vis), xt, mt, self.patch, self.norm_pix)

    def forward(self, x: np.ndarray, mask: np.ndarray, training: bool) -> np.ndarray:
        """The reconstruction (N, H, W, C) in train or eval mode, without changing any state."""
        saved = self._buffers()
        with torch.no_grad():
            self.net.train(training)
            xt, vis, _ = self._tensors(x, mask)
            out = to_numpy(self.net(xt, vis))
        self._restore_buffers(saved)
        return out

    def reconstruct(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Eval-mode reconstruction (N, H, W, C); in normalised-patch space when norm_pix is on."""
        return self.forward(x, mask, training=False)

    @torch.no_grad()
    def features(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode encoder features of whole images, global-average-pooled: (N, C_last)."""
        self.net.eval()
        return to_numpy(self.net.features(to_tensor(x, self.dtype, self.device)))

    # -- canonical state: ModelState's accessors ------------------------------------------------------
    def rng_models(self) -> list[torch.nn.Module]:
        """The autoencoder has no dropout today (masks come from core): its RNG state is saved all the same."""
        return [self.net]
