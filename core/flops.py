"""Analytic FLOP counts (multiply and add counted separately), for achieved-FLOP/s figures."""

from __future__ import annotations

from core.specs import ModelSpec
from core.weights import classifier_shapes, feature_grid

# A training step costs the forward pass plus about twice that for the backward pass
# (gradients w.r.t. activations and w.r.t. weights).
TRAIN_FACTOR = 3


def classifier_forward_flops(model: ModelSpec, image_shape: tuple[int, int, int]) -> int:
    """Forward FLOPs per image of the CNN: 3x3 convs and dense layers (pooling/BN/ReLU are negligible)."""
    h, w, _ = image_shape
    flops = 0
    for name, shape in classifier_shapes(model, image_shape).items():
        if ".conv" in name and name.endswith(".weight"):
            cout, cin, kh, kw = shape
            block = int(name.split(".block")[1].split(".")[0])
            flops += 2 * (h >> block) * (w >> block) * cout * cin * kh * kw
        elif name.startswith("head.") and name.endswith(".weight"):
            flops += 2 * shape[0] * shape[1]
    feature_grid(model, image_shape)  # raises for images too small for the encoder
    return flops


def classifier_train_flops(model: ModelSpec, image_shape: tuple[int, int, int]) -> int:
    return TRAIN_FACTOR * classifier_forward_flops(model, image_shape)
