"""Analytic FLOP counts (multiply and add counted separately), for achieved-FLOP/s figures."""

from __future__ import annotations

from typing import NamedTuple

from dualkit.core.specs import ModelSpec
from dualkit.core.weights import classifier_shapes, feature_grid

# A training step costs the forward pass plus about twice that for the backward pass
# (gradients w.r.t. activations and w.r.t. weights).
TRAIN_FACTOR = 3


class ConvLayer(NamedTuple):
    """One 3x3 'same' conv of the encoder: its canonical weight name, input grid and channels."""

    name: str
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel: int


def conv_layers(model: ModelSpec, image_shape: tuple[int, int, int]) -> list[ConvLayer]:
    """The encoder's convs in order; block ``b`` sees the image halved ``b`` times by the 2x2 max-pools."""
    h, w, _ = image_shape
    out = []
    for name, shape in classifier_shapes(model, image_shape).items():
        if ".conv" in name and name.endswith(".weight"):
            cout, cin, kh, _ = shape
            block = int(name.split(".block")[1].split(".")[0])
            out.append(ConvLayer(name, h >> block, w >> block, cin, cout, kh))
    return out


def classifier_forward_flops(model: ModelSpec, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs per image of the CNN: 3x3 convs and dense layers (pooling/BN/ReLU are negligible)."""
    flops = sum(
        2 * c.height * c.width * c.out_channels * c.in_channels * c.kernel**2 for c in conv_layers(model, image_shape)
    )
    for name, shape in classifier_shapes(model, image_shape).items():
        if name.startswith("head.") and name.endswith(".weight"):
            flops += 2 * shape[0] * shape[1]
    feature_grid(model, image_shape)  # raises for images too small for the encoder
    return flops


def classifier_train_flops(model: ModelSpec, image_shape: tuple[int, int, int]) -> int:
    return TRAIN_FACTOR * classifier_forward_flops(model, image_shape)
