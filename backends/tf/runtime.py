"""TensorFlow runtime: threads, determinism, devices, seeds, numpy <-> tensor conversion, native saving,
and the layout conversions between canonical (PyTorch) weight arrays and Keras's.

Mirrors backends/torch/runtime.py name for name (see tests/backends/test_mirror.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dualkit.core.errors import BackendError

NAME = "tf"
DTYPES = {"float32": tf.float32, "float64": tf.float64}

Convert = Callable[[np.ndarray], np.ndarray]
# (canonical -> Keras, Keras -> canonical) conversions of a weight's array, defined once for every model:
# canonical conv (out, in, kh, kw) <-> Keras (kh, kw, in, out); canonical dense (out, in) <-> Keras (in, out);
# everything else (biases, BatchNorm vectors, the mask token) has the same layout in both.
Layout = tuple[Convert, Convert]
IDENTITY_LAYOUT: Layout = (lambda a: a, lambda a: a)
CONV_LAYOUT: Layout = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
DENSE_LAYOUT: Layout = (lambda a: a.T, lambda a: a.T)


def setup(deterministic: bool = True, threads: int = 2) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime was already initialised by an earlier import; keep its setting
        pass
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    # TF turns TF32 on by default on Ampere+ GPUs; the parity bounds assume full fp32.
    tf.config.experimental.enable_tensor_float_32_execution(False)


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def check_device(device: str) -> None:
    if device == "gpu" and not gpu_available():
        raise BackendError("--device gpu was asked for, but TensorFlow sees no GPU; use --device cpu or auto")


def framework_device(device: str) -> str:
    """The TensorFlow device for a dualkit device name ("cpu", "gpu" or "auto")."""
    return "/GPU:0" if device == "gpu" or (device == "auto" and gpu_available()) else "/CPU:0"


def seed(n: int) -> None:
    """Seed the framework RNG (used only by dropout; every other random draw comes from core)."""
    keras.utils.set_random_seed(n)


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def devices() -> list[str]:
    return ["cpu"] + [f"gpu:{i} {d.name}" for i, d in enumerate(tf.config.list_physical_devices("GPU"))]


def to_tensor(x: np.ndarray, dtype: tf.DType | None = None, device: str | None = None) -> tf.Tensor:
    """A tensor of ``x``, cast to ``dtype`` (None: x's own), placed on ``device`` (None: the enclosing
    ``tf.device`` scope, where the models' callers convert)."""
    if device is None:
        return tf.convert_to_tensor(np.ascontiguousarray(x), dtype=dtype)
    with tf.device(device):
        return tf.convert_to_tensor(np.ascontiguousarray(x), dtype=dtype)


def to_numpy(t) -> np.ndarray:
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _dropouts(models: list[keras.Model]) -> list[keras.layers.Dropout]:
    return [layer for model in models for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


def get_rng_state(models: list[keras.Model]) -> dict[str, np.ndarray]:
    """The framework RNG that the dropout of ``models`` draws from, for a run checkpoint: each Dropout
    layer's seed-generator state, by position (Keras numbers unnamed layers per process, so their names
    are not stable)."""
    return {f"tf.dropout{i}": to_numpy(layer.seed_generator.state).copy() for i, layer in enumerate(_dropouts(models))}


def set_rng_state(state: dict[str, np.ndarray], models: list[keras.Model]) -> None:
    """Put back a :func:`get_rng_state` state (entries of another framework are left alone)."""
    for i, layer in enumerate(_dropouts(models)):
        if f"tf.dropout{i}" in state:
            layer.seed_generator.state.assign(np.asarray(state[f"tf.dropout{i}"]))


def save_native(model: keras.Model, path: str | Path) -> None:
    """A Keras ``.keras`` archive of ``model``, written to a temp name beside ``path``, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
