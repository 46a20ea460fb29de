"""Canonical weights: names and shapes of every variant, seeded initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.core.specs import ModelSpec
from dualkit.core.weights import classifier_shapes, feature_grid, init_classifier, init_weights, is_buffer


def test_gap_shapes():
    model = ModelSpec(channels=(8, 16), head="gap", num_classes=10)
    shapes = classifier_shapes(model, (32, 32, 3))
    assert shapes == {
        "encoder.block0.conv0.weight": (8, 3, 3, 3),
        "encoder.block0.conv0.bias": (8,),
        "encoder.block1.conv0.weight": (16, 8, 3, 3),
        "encoder.block1.conv0.bias": (16,),
        "head.out.weight": (10, 16),
        "head.out.bias": (10,),
    }
    assert list(shapes)[0] == "encoder.block0.conv0.weight"  # encoder first, then the head
    assert list(shapes)[-1] == "head.out.bias"


@pytest.mark.parametrize(
    "image_shape, channels, grid",
    [
        ((8, 8, 1), (32, 64), (2, 2)),
        ((32, 32, 3), (8, 16, 32), (4, 4)),
        ((9, 7, 1), (4,), (4, 3)),
        ((28, 28, 1), (4, 4), (7, 7)),
    ],
)
def test_flatten_fan_in_is_h_w_c_after_pooling(image_shape, channels, grid):
    model = ModelSpec(channels=channels, head="flatten", num_classes=10)
    assert feature_grid(model, image_shape) == grid
    shapes = classifier_shapes(model, image_shape)
    assert shapes["head.out.weight"] == (10, grid[0] * grid[1] * channels[-1])


def test_hidden_layers_chain():
    model = ModelSpec(channels=(32, 64), head="flatten", hidden=(128, 20), num_classes=10)
    shapes = classifier_shapes(model, (8, 8, 1))
    assert shapes["head.fc0.weight"] == (128, 2 * 2 * 64)
    assert shapes["head.fc0.bias"] == (128,)
    assert shapes["head.fc1.weight"] == (20, 128)
    assert shapes["head.fc1.bias"] == (20,)
    assert shapes["head.out.weight"] == (10, 20)
    assert list(shapes)[-6:] == [
        "head.fc0.weight",
        "head.fc0.bias",
        "head.fc1.weight",
        "head.fc1.bias",
        "head.out.weight",
        "head.out.bias",
    ]


def test_batchnorm_and_convs_per_block():
    model = ModelSpec(channels=(4, 6), convs_per_block=2, batchnorm=True, num_classes=3)
    shapes = classifier_shapes(model, (8, 8, 3))
    assert shapes["encoder.block0.conv0.weight"] == (4, 3, 3, 3)
    assert shapes["encoder.block0.conv1.weight"] == (4, 4, 3, 3)
    assert shapes["encoder.block1.conv0.weight"] == (6, 4, 3, 3)
    assert shapes["encoder.block1.conv1.weight"] == (6, 6, 3, 3)
    for b, c, width in [(0, 0, 4), (0, 1, 4), (1, 0, 6), (1, 1, 6)]:
        for part in ("weight", "bias", "running_mean", "running_var"):
            assert shapes[f"encoder.block{b}.bn{c}.{part}"] == (width,)
        # a conv bias before BatchNorm is redundant: it is not there
        assert f"encoder.block{b}.conv{c}.bias" not in shapes
    assert not any(n.endswith("conv0.bias") or n.endswith("conv1.bias") for n in shapes)
    assert shapes["head.out.weight"] == (3, 6)
    assert sorted(n for n in shapes if is_buffer(n)) == sorted(
        f"encoder.block{b}.bn{c}.{p}" for b in range(2) for c in range(2) for p in ("running_mean", "running_var")
    )


def test_same_seed_same_weights_different_seed_different():
    model = ModelSpec(channels=(8, 16), batchnorm=True, head="flatten", hidden=(12,))
    a = init_classifier(model, (8, 8, 1), seed=3)
    b = init_classifier(model, (8, 8, 1), seed=3)
    c = init_classifier(model, (8, 8, 1), seed=4)
    assert list(a) == list(classifier_shapes(model, (8, 8, 1)))
    for name in a:
        assert a[name].dtype == np.float32
        assert a[name].shape == classifier_shapes(model, (8, 8, 1))[name]
        np.testing.assert_array_equal(a[name], b[name])
    kernels = [n for n in a if n.endswith(".weight") and ".bn" not in n]
    for name in kernels:
        assert not np.array_equal(a[name], c[name]), name


def test_init_dtype_and_statistics():
    model = ModelSpec(channels=(64,), head="gap", hidden=(256,), num_classes=10)
    w = init_classifier(model, (16, 16, 3), seed=0, dtype="float64")
    assert all(v.dtype == np.float64 for v in w.values())
    conv = w["encoder.block0.conv0.weight"]
    assert conv.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 3)), rel=0.1)  # He normal
    assert w["head.out.weight"].std() == pytest.approx(np.sqrt(1.0 / 256), rel=0.1)  # LeCun normal for logits
    assert not w["head.fc0.bias"].any() and not w["encoder.block0.conv0.bias"].any()


def test_batchnorm_init_is_identity():
    model = ModelSpec(channels=(5, 7), convs_per_block=2, batchnorm=True)
    w = init_classifier(model, (8, 8, 3), seed=0)
    for name, value in w.items():
        if ".bn" not in name:
            continue
        if name.endswith((".weight", ".running_var")):
            np.testing.assert_array_equal(value, np.ones_like(value))
        else:
            np.testing.assert_array_equal(value, np.zeros_like(value))


def test_init_weights_stream_is_separate():
    shapes = {"a.weight": (4, 3)}
    assert np.array_equal(init_weights(shapes, 0)["a.weight"], init_weights(shapes, 0, stream="init")["a.weight"])
    assert not np.array_equal(init_weights(shapes, 0)["a.weight"], init_weights(shapes, 0, stream="other")["a.weight"])


@pytest.mark.parametrize("image_shape, channels", [((8, 8, 1), (4, 4, 4, 4)), ((32, 1, 3), (4,)), ((3, 3, 1), (4, 4))])
def test_feature_grid_too_small_image(image_shape, channels):
    model = ModelSpec(channels=channels)
    with pytest.raises(ValueError, match="too small"):
        feature_grid(model, image_shape)
    with pytest.raises(ValueError, match="model.channels"):
        classifier_shapes(model, image_shape)


def test_feature_grid_floors_odd_sizes():
    assert feature_grid(ModelSpec(channels=(4, 4, 4)), (8, 8, 1)) == (1, 1)
    assert feature_grid(ModelSpec(channels=(4, 4)), (15, 9, 3)) == (3, 2)
