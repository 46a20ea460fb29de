"""The CNN classifier in PyTorch. Module names are chosen so that state_dict keys are the canonical names.

The public surface is builder functions, as in backends/tf/cnn.py; the nn.Module classes behind them are
private (Keras's functional models have no such classes to mirror them).
"""

from __future__ import annotations

import torch
from torch import nn

from dualkit.backends.torch import distributed
from dualkit.core.specs import ModelSpec
from dualkit.core.weights import feature_grid


class _SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics, inside a distributed training step, are the whole global batch's
    (all-reduced over the workers: distributed.sync_moments), as on one worker with the global batch; the running
    variance is unbiased over the global count. Anywhere else it is nn.BatchNorm2d (same state_dict).
    ``nn.SyncBatchNorm`` refuses CPU modules, hence this one."""

    sync = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.in_step()):
            return super().forward(x)
        mean, var, n = distributed.sync_moments(x, shift=self.running_mean)
        m = self.momentum
        distributed.assign_running(self.running_mean, (1 - m) * self.running_mean + m * mean.detach())
        distributed.assign_running(self.running_var, (1 - m) * self.running_var + m * var.detach() * n / (n - 1))
        self.num_batches_tracked += 1
        scale = torch.rsqrt(var + self.eps) * self.weight
        return (x - mean[None, :, None, None]) * scale[None, :, None, None] + self.bias[None, :, None, None]


class _ConvBlock(nn.Module):
    """``convs_per_block`` x (3x3 conv, optional BatchNorm, ReLU), then a 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, spec: ModelSpec):
        super().__init__()
        self.n = spec.convs_per_block
        for c in range(self.n):
            self.add_module(f"conv{c}", nn.Conv2d(cin if c == 0 else cout, cout, 3, padding=1, bias=not spec.batchnorm))
            if spec.batchnorm:
                norm = _SyncBatchNorm if spec.bn_sync else nn.BatchNorm2d
                bn = norm(cout, eps=spec.bn_eps, momentum=spec.bn_momentum)
                self.add_module(f"bn{c}", bn)
        self.batchnorm = spec.batchnorm
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in range(self.n):
            x = getattr(self, f"conv{c}")(x)
            if self.batchnorm:
                x = getattr(self, f"bn{c}")(x)
            if c < self.n - 1:
                x = torch.relu(x)
        # max-pool then ReLU equals ReLU then max-pool (ReLU is monotone), values and gradients alike,
        # on a quarter of the elements
        return torch.relu(self.pool(x))


class _Encoder(nn.Module):
    """NCHW images -> NCHW feature map on the coarsest grid."""

    def __init__(self, spec: ModelSpec, in_channels: int):
        super().__init__()
        cins = (in_channels,) + tuple(spec.channels[:-1])
        for b, (cin, cout) in enumerate(zip(cins, spec.channels)):
            self.add_module(f"block{b}", _ConvBlock(cin, cout, spec))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class _Head(nn.Module):
    """Pooled (GAP) or flattened (H, W, C order) features -> dense layers -> logits."""

    def __init__(self, spec: ModelSpec, image_shape: tuple[int, int, int]):
        super().__init__()
        h, w = feature_grid(spec, image_shape)
        self.flatten = spec.head == "flatten"
        fan_in = spec.channels[-1] * (h * w if self.flatten else 1)
        for i, width in enumerate(spec.hidden):
            self.add_module(f"fc{i}", nn.Linear(fan_in, width))
            fan_in = width
        self.out = nn.Linear(fan_in, spec.num_classes)
        self.n_hidden = len(spec.hidden)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = feats.permute(0, 2, 3, 1).flatten(1)  # canonical H, W, C order
        else:
            x = feats.mean(dim=(2, 3))
        for i in range(self.n_hidden):
            x = torch.relu(getattr(self, f"fc{i}")(self.dropout(x)))
        return self.out(self.dropout(x))


class _CNN(nn.Module):
    """Takes NHWC input (core's layout); NCHW in torch.channels_last memory format inside."""

    def __init__(self, spec: ModelSpec, image_shape: tuple[int, int, int]):
        super().__init__()
        self.encoder = _Encoder(spec, image_shape[2])
        self.head = _Head(spec, image_shape)
        # NHWC data are already NCHW in channels_last memory; with the conv weights in channels_last too,
        # oneDNN runs every conv without a layout conversion: a cnn-cifar10 step took 0.172 s against
        # 0.204 s for contiguous NCHW on 2 CPU threads (a channels_last input with contiguous weights was
        # ~2.5x slower). `.to(device, dtype)` and load_state_dict keep the format.
        self.to(memory_format=torch.channels_last)

    def forward(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x_nhwc.permute(0, 3, 1, 2)))


def build_encoder(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> nn.Module:
    """The encoder alone: NCHW images -> NCHW feature map on the coarsest grid (``encoder.`` names dropped)."""
    return _Encoder(spec, image_shape[2]).to(dtype=getattr(torch, dtype))


def build_head(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> nn.Module:
    """The head alone: the encoder's NCHW feature map -> logits (``head.`` names dropped)."""
    return _Head(spec, image_shape).to(dtype=getattr(torch, dtype))


def build_cnn(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> nn.Module:
    """The classifier: NHWC images -> logits; its state_dict keys are the canonical names."""
    return _CNN(spec, image_shape).to(dtype=getattr(torch, dtype))


def canonical_variables(model: nn.Module) -> dict[str, torch.Tensor]:
    """canonical name -> the model's tensor, in canonical order (no layout change: torch's layout is the
    canonical one). BatchNorm's num_batches_tracked counters are torch's own, not canonical tensors."""
    return {n: t for n, t in model.state_dict().items() if not n.endswith("num_batches_tracked")}
