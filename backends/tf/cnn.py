"""The CNN classifier in Keras 3. Layer names are the canonical prefixes with '.' written as '_'.

``canonical_variables`` maps every canonical tensor name to its Keras variable and the layout
conversion between the canonical (PyTorch) layout and Keras's.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dualkit.core.specs import ModelSpec


@keras.saving.register_keras_serializable(package="dualkit")
class BatchNorm(keras.layers.Layer):
    """BatchNorm with PyTorch's semantics: running = (1 - m) running + m batch, unbiased running variance.

    (Keras's own BatchNormalization keeps the biased variance and uses momentum = 1 - m.)
    """

    def __init__(self, eps: float = 1e-5, momentum: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.momentum = momentum

    def build(self, input_shape):
        c = (input_shape[-1],)
        self.weight = self.add_weight(shape=c, initializer="ones", name="weight")
        self.bias = self.add_weight(shape=c, initializer="zeros", name="bias")
        self.running_mean = self.add_weight(shape=c, initializer="zeros", name="running_mean", trainable=False)
        self.running_var = self.add_weight(shape=c, initializer="ones", name="running_var", trainable=False)

    def call(self, x, training=False):
        if training and x.dtype == tf.float32 and x.shape.rank == 4:
            # One fused kernel (and its fused gradient) instead of the moments and the arithmetic spelled out:
            # it normalises with the biased batch variance and returns the unbiased one, PyTorch's semantics.
            # float32 only (the kernel has no float64), hence the general path below for float64 parity runs.
            y, mean, unbiased_var = tf.compat.v1.nn.fused_batch_norm(
                x, self.weight, self.bias, epsilon=self.eps, data_format="NHWC", is_training=True
            )
            m = tf.constant(self.momentum, x.dtype)
            self.running_mean.assign((1 - m) * self.running_mean + m * mean)
            self.running_var.assign((1 - m) * self.running_var + m * unbiased_var)
            return y
        if training:
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
            m = tf.constant(self.momentum, x.dtype)
            self.running_mean.assign((1 - m) * self.running_mean + m * mean)
            self.running_var.assign((1 - m) * self.running_var + m * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * tf.math.rsqrt(var + tf.constant(self.eps, x.dtype)) * self.weight + self.bias

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "momentum": self.momentum}


def _layer_name(canonical_prefix: str) -> str:
    return canonical_prefix.replace(".", "_")


def build_encoder(spec: ModelSpec, x, dtype: str):
    """Apply the encoder's layers to the Keras tensor ``x`` (NHWC); returns the feature map."""
    for b, cout in enumerate(spec.channels):
        for c in range(spec.convs_per_block):
            prefix = f"encoder.block{b}"
            x = keras.layers.Conv2D(
                cout, 3, padding="same", use_bias=not spec.batchnorm, dtype=dtype, name=_layer_name(f"{prefix}.conv{c}")
            )(x)
            if spec.batchnorm:
                x = BatchNorm(spec.bn_eps, spec.bn_momentum, dtype=dtype, name=_layer_name(f"{prefix}.bn{c}"))(x)
            if c < spec.convs_per_block - 1:
                x = keras.layers.ReLU(dtype=dtype)(x)
        # max-pool then ReLU equals ReLU then max-pool (ReLU is monotone), values and gradients alike,
        # on a quarter of the elements
        x = keras.layers.ReLU(dtype=dtype)(keras.layers.MaxPooling2D(2, dtype=dtype)(x))
    return x


def build_head(spec: ModelSpec, feats, dtype: str):
    if spec.head == "flatten":
        x = keras.layers.Flatten(dtype=dtype)(feats)  # NHWC flattens in the canonical H, W, C order
    else:
        x = keras.layers.GlobalAveragePooling2D(dtype=dtype)(feats)
    for i, width in enumerate(spec.hidden):
        if spec.dropout > 0:
            x = keras.layers.Dropout(spec.dropout, dtype=dtype)(x)
        x = keras.layers.Dense(width, activation="relu", dtype=dtype, name=_layer_name(f"head.fc{i}"))(x)
    if spec.dropout > 0:
        x = keras.layers.Dropout(spec.dropout, dtype=dtype)(x)
    return keras.layers.Dense(spec.num_classes, dtype=dtype, name=_layer_name("head.out"))(x)


def build_cnn(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> keras.Model:
    inputs = keras.Input(shape=image_shape, dtype=dtype)
    return keras.Model(inputs, build_head(spec, build_encoder(spec, inputs, dtype), dtype), name="cnn")


Convert = Callable[[np.ndarray], np.ndarray]
_IDENTITY: tuple[Convert, Convert] = (lambda a: a, lambda a: a)
# canonical conv (out, in, kh, kw) <-> Keras (kh, kw, in, out); canonical dense (out, in) <-> Keras (in, out)
_CONV: tuple[Convert, Convert] = (lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))
_DENSE: tuple[Convert, Convert] = (lambda a: a.T, lambda a: a.T)


def canonical_variables(model: keras.Model) -> dict[str, tuple[keras.Variable, Convert, Convert]]:
    """canonical name -> (variable, canonical->keras, keras->canonical), in canonical order."""
    out: dict[str, tuple[keras.Variable, Convert, Convert]] = {}
    for layer in model.layers:
        prefix = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            out[f"{prefix}.weight"] = (layer.kernel, *_CONV)
            if layer.use_bias:
                out[f"{prefix}.bias"] = (layer.bias, *_IDENTITY)
        elif isinstance(layer, keras.layers.Dense):
            out[f"{prefix}.weight"] = (layer.kernel, *_DENSE)
            out[f"{prefix}.bias"] = (layer.bias, *_IDENTITY)
        elif isinstance(layer, BatchNorm):
            for part in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}.{part}"] = (getattr(layer, part), *_IDENTITY)
    return out
