"""The conv-kernel floor: a classifier step's conv kernels, each timed alone in its framework.

A training step of the CNN runs, per 3x3 conv, the forward kernel, the input-gradient kernel (not for
the first conv: nothing needs the gradient of the images) and the filter-gradient kernel. Their sum,
each kernel timed alone on the step's shapes, is the time a step spends in work every loop does; the
rest of a step (BatchNorm, ReLU, pooling, the optimizer, the loop itself) is what a loop can make
cheaper. So ``floor / step`` is the share of a step in conv kernels, and ``other loop / floor`` is what a
step that cost nothing beyond its conv kernels would gain over the other loop. (It is not a strict bound:
a step that overlaps kernels on the thread pool can come in a little under the sum.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dualkit.core.flops import ConvLayer, conv_layers
from dualkit.core.specs import ModelSpec

KERNELS = ("forward", "input_grad", "filter_grad")


def _arrays(layer: ConvLayer, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NHWC input, canonical (out, in, kh, kw) weight and NHWC output gradient, float32."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, layer.height, layer.width, layer.in_channels)).astype(np.float32)
    w = rng.normal(size=(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel)).astype(np.float32)
    gy = rng.normal(size=(batch, layer.height, layer.width, layer.out_channels)).astype(np.float32)
    return x, w, gy


Kernel = Callable[[int], np.ndarray]  # runs the kernel n times; returns the last result as numpy


def torch_kernels(x: np.ndarray, w: np.ndarray, gy: np.ndarray) -> dict[str, Kernel]:
    """The three kernels of one conv in PyTorch, in the toolkit's channels_last layout. Results come back
    as numpy views (activations NHWC, the filter gradient in the canonical layout), so a test can check them."""
    import torch

    pad = w.shape[-1] // 2
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory = NCHW channels_last
    gyt = torch.from_numpy(gy).permute(0, 3, 1, 2)
    wt = torch.from_numpy(w).contiguous(memory_format=torch.channels_last)
    conv_args = ([1, 1], [pad, pad], [1, 1], False, [0, 0], 1)

    def forward() -> Any:
        return torch.nn.functional.conv2d(xt, wt, padding=pad).permute(0, 2, 3, 1)

    def backward(which: int) -> Any:
        # the op autograd runs for a conv's backward, asked for one of its two gradients
        mask = [which == 0, which == 1, False]
        return torch.ops.aten.convolution_backward(gyt, xt, wt, None, *conv_args, mask)[which]

    def repeat(fn: Callable[[], Any]) -> Kernel:
        def run(n: int) -> np.ndarray:
            for _ in range(n - 1):
                fn()  # dropped at once, as a step frees what it no longer needs
            return fn().numpy()

        return run

    return {
        "forward": repeat(forward),
        "input_grad": repeat(lambda: backward(0).permute(0, 2, 3, 1)),
        "filter_grad": repeat(lambda: backward(1).contiguous()),
    }


def tf_kernels(x: np.ndarray, w: np.ndarray, gy: np.ndarray) -> dict[str, Kernel]:
    """The three kernels of one conv in TensorFlow (NHWC, 'SAME'), the ops a GradientTape step runs. Each
    runs n times in one graph (a sequential while loop), so a Python call per kernel is not counted; a
    step makes one call for all its kernels. The filter gradient comes back in the canonical layout."""
    import tensorflow as tf

    xt, gyt = tf.constant(x), tf.constant(gy)
    wt = tf.constant(np.ascontiguousarray(w.transpose(2, 3, 1, 0)))  # canonical -> (kh, kw, in, out)
    strides = [1, 1, 1, 1]

    def forward() -> tf.Tensor:
        return tf.nn.conv2d(xt, wt, strides, "SAME")

    def input_grad() -> tf.Tensor:
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(xt), filter=wt, out_backprop=gyt, strides=strides, padding="SAME"
        )

    def filter_grad() -> tf.Tensor:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=xt, filter_sizes=tf.shape(wt), out_backprop=gyt, strides=strides, padding="SAME"
        )

    def repeat(fn: Callable[[], tf.Tensor], convert: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> Kernel:
        @tf.function(input_signature=[tf.TensorSpec((), tf.int32)])
        def loop(n):
            # one iteration at a time: parallel iterations would overlap the kernels being timed
            return tf.while_loop(
                lambda i, _: i < n, lambda i, _: (i + 1, fn()), (tf.constant(0), fn()), parallel_iterations=1
            )[1]

        return lambda n: convert(loop(tf.constant(n - 1, tf.int32)).numpy())

    return {
        "forward": repeat(forward),
        "input_grad": repeat(input_grad),
        "filter_grad": repeat(filter_grad, lambda a: a.transpose(3, 2, 0, 1)),
    }


KERNEL_BUILDERS = {"torch": torch_kernels, "tf": tf_kernels}


def _best_time(kernel: Kernel, warmup: int, reps: int, rounds: int) -> float:
    kernel(warmup)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        kernel(reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def conv_floor(
    backend: str,
    model: ModelSpec,
    image_shape: tuple[int, int, int],
    batch: int,
    warmup: int = 3,
    reps: int = 10,
    rounds: int = 3,
) -> dict[str, Any]:
    """Seconds of each conv kernel of a training step (best of ``rounds`` x ``reps``) and their sum."""
    layers = []
    for i, layer in enumerate(conv_layers(model, image_shape)):
        kernels = KERNEL_BUILDERS[backend](*_arrays(layer, batch, seed=i))
        if i == 0:
            del kernels["input_grad"]  # the images need no gradient; no step computes it
        times = {k: _best_time(fn, warmup, reps, rounds) for k, fn in kernels.items()}
        layers.append(
            {
                "name": layer.name,
                "input": [batch, layer.height, layer.width, layer.in_channels],
                "out_channels": layer.out_channels,
                "s": times,
            }
        )
    return {"layers": layers, "s_per_step": sum(sum(layer["s"].values()) for layer in layers)}
