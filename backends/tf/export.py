"""Export in TensorFlow / Keras 3: the inference model from standard Keras layers, written as ONNX (Keras's
exporter over tf2onnx), a SavedModel (``serve`` / ``serving_default`` signature) or a ``.keras`` archive, and
loaded back in TensorFlow.

The model is built from tasks/export.py's neutral ops over canonical weights with standard layers only (the
training model's BatchNorm, a custom layer with PyTorch's semantics, becomes ``keras.layers.BatchNormalization``
with the run's running mean and variance and eps, which computes the same at inference), so a ``.keras`` file
opens with ``keras.saving.load_model`` in any Python with Keras and TensorFlow, without dualkit. Every format
takes NHWC images (core's layout and Keras's own).
Mirrors backends/torch/export.py name for name (see tests/backends/test_mirror.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from dualkit.backends.tf.cnn import _layer_name
from dualkit.backends.tf.runtime import CONV_LAYOUT, DENSE_LAYOUT, save_native
from dualkit.core.errors import BackendError

FORMATS = ("onnx", "savedmodel", "keras")
ENDPOINT = "serve"  # the SavedModel's endpoint; also its serving_default signature


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def inference_model(
    ops: list[tuple[str, dict[str, Any]]],
    input_shape: tuple[int, ...],
    weights: dict[str, np.ndarray],
    input_name: str,
    output_name: str,
) -> keras.Model:
    """The ops (tasks/export.py) as a float32 functional Keras model of standard layers with the canonical
    weights; it takes NHWC images (``input_shape`` of 3) or vectors. Its input layer is named ``input_name``
    and its last layer (an Identity) ``output_name``."""
    dtype = "float32"
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype, name=input_name)
    x = inputs
    for op, args in ops:
        if op == "conv3x3":
            layer = keras.layers.Conv2D(
                args["cout"], 3, padding="same", use_bias=args["bias"], dtype=dtype, name=_layer_name(args["name"])
            )
            x = layer(x)
            kernel = _f32(CONV_LAYOUT[0](np.asarray(weights[f"{args['name']}.weight"])))
            layer.set_weights([kernel, _f32(weights[f"{args['name']}.bias"])] if args["bias"] else [kernel])
        elif op == "batchnorm":
            layer = keras.layers.BatchNormalization(epsilon=args["eps"], dtype=dtype, name=_layer_name(args["name"]))
            x = layer(x)
            # Keras's order: gamma, beta, moving mean, moving variance
            layer.set_weights(
                [_f32(weights[f"{args['name']}.{p}"]) for p in ("weight", "bias", "running_mean", "running_var")]
            )
        elif op == "relu":
            x = keras.layers.ReLU(dtype=dtype)(x)
        elif op == "tanh":
            x = keras.layers.Activation("tanh", dtype=dtype)(x)
        elif op == "maxpool2":
            x = keras.layers.MaxPooling2D(2, dtype=dtype)(x)
        elif op == "gap":
            x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(x)
        elif op == "flatten":
            x = keras.layers.Flatten(dtype=dtype)(x)  # NHWC flattens in the canonical H, W, C order
        elif op == "dense":
            layer = keras.layers.Dense(args["width"], dtype=dtype, name=_layer_name(args["name"]))
            x = layer(x)
            layer.set_weights(
                [
                    _f32(DENSE_LAYOUT[0](np.asarray(weights[f"{args['name']}.weight"]))),
                    _f32(weights[f"{args['name']}.bias"]),
                ]
            )
        else:
            raise ValueError(f"unknown export op {op!r}")
    outputs = keras.layers.Identity(dtype=dtype, name=output_name)(x)
    return keras.Model(inputs, outputs, name="inference")


def _signature(model: keras.Model) -> list[tf.TensorSpec]:
    spec = model.inputs[0]
    return [tf.TensorSpec((None, *spec.shape[1:]), tf.float32, name=spec.name)]


def save(model: keras.Model, fmt: str, path: Path, opset: int, metadata: dict[str, Any]) -> None:
    """Write ``model`` as ``fmt`` to ``path``: ``onnx`` (``model.export(format="onnx")``, Keras's exporter
    over tf2onnx, opset ``opset``), ``savedmodel`` (a folder: endpoint ``serve``, the ``serving_default``
    signature, its output named after the model's) or ``keras`` (a ``.keras`` archive). ``metadata`` has no
    place in these formats and is left out."""
    path = Path(path)
    name = model.output_names[0]
    if fmt == "onnx":
        try:
            import tf2onnx  # noqa: F401  (Keras's ONNX exporter for the TF backend)
        except ImportError:
            raise BackendError(
                "Keras's ONNX exporter needs tf2onnx, not installed; install with: pip install 'dualkit[onnx]'"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras's numpy-2 patch of tf2onnx touches np.object
            model.export(
                str(path), format="onnx", input_signature=_signature(model), opset_version=opset, verbose=False
            )
    elif fmt == "savedmodel":
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(ENDPOINT, lambda x: {name: model(x, training=False)}, input_signature=_signature(model))
        archive.write_out(str(path), verbose=False)
    elif fmt == "keras":
        save_native(model, path)
    else:
        raise BackendError(f"tf exports {', '.join(FORMATS)}, not {fmt!r}")


def load(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """An artifact written by :func:`save`, loaded by TensorFlow / Keras alone (no dualkit layer is needed),
    as a function of float32 inputs (images NHWC) -> outputs."""
    if fmt == "savedmodel":
        signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        (input_name,) = signature.structured_input_signature[1]
        (output_name,) = signature.structured_outputs

        def run(x: np.ndarray) -> np.ndarray:
            return signature(**{input_name: tf.constant(_f32(x))})[output_name].numpy()

        return run
    if fmt == "keras":
        model = keras.saving.load_model(str(path), compile=False)

        def run_keras(x: np.ndarray) -> np.ndarray:
            return np.asarray(model(_f32(x), training=False))

        return run_keras
    raise BackendError(f"tf loads {', '.join(f for f in FORMATS if f != 'onnx')} artifacts, not {fmt!r}")
