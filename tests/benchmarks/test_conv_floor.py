"""The conv-kernel floor: the kernels it times are a conv's forward and gradients, and it times each once
per conv of the step (no input gradient for the first)."""

from __future__ import annotations

import numpy as np
import pytest

from dualkit.benchmarks import conv_floor
from dualkit.core import registry
from dualkit.core.flops import ConvLayer, conv_layers
from dualkit.tasks import presets

BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not registry.is_installed(b), reason=f"{b} is not installed"))
    for b in ("torch", "tf")
]


def autograd_reference(x: np.ndarray, w: np.ndarray, gy: np.ndarray) -> dict[str, np.ndarray]:
    """Forward and the gradients of sum(conv(x, w) * gy), by PyTorch autograd in float64 (NHWC, canonical w)."""
    import torch

    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, padding=w.shape[-1] // 2)
    (y * torch.tensor(gy.transpose(0, 3, 1, 2), dtype=torch.float64)).sum().backward()
    return {
        "forward": y.detach().numpy().transpose(0, 2, 3, 1),
        "input_grad": xt.grad.numpy().transpose(0, 2, 3, 1),
        "filter_grad": wt.grad.numpy(),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_timed_kernels_compute_the_conv_and_its_gradients(backend):
    if not registry.is_installed("torch"):
        pytest.skip("the reference is PyTorch autograd")
    registry.get_backend(backend)
    x, w, gy = conv_floor._arrays(ConvLayer("c", 6, 5, 3, 4, 3), batch=2, seed=0)
    expected = autograd_reference(x, w, gy)
    kernels = conv_floor.KERNEL_BUILDERS[backend](x, w, gy)
    assert list(kernels) == list(conv_floor.KERNELS)
    for name, fn in kernels.items():
        got = fn(1)
        assert got.shape == expected[name].shape, name
        np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_floor_times_every_conv_of_the_step_and_sums_them(backend):
    registry.get_backend(backend)
    model = presets.load("cnn-digits").model
    floor = conv_floor.conv_floor(backend, model, (8, 8, 1), batch=4, warmup=1, reps=1, rounds=1)
    layers = conv_layers(model, (8, 8, 1))
    assert [layer["name"] for layer in floor["layers"]] == [c.name for c in layers]
    assert floor["layers"][0]["input"] == [4, 8, 8, 1]
    assert set(floor["layers"][0]["s"]) == {"forward", "filter_grad"}  # the images need no gradient
    assert all(set(layer["s"]) == set(conv_floor.KERNELS) for layer in floor["layers"][1:])
    assert all(t > 0 for layer in floor["layers"] for t in layer["s"].values())
    assert floor["s_per_step"] == pytest.approx(sum(sum(layer["s"].values()) for layer in floor["layers"]))
