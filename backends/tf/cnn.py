"""The CNN classifier in Keras 3. Layer names are the canonical prefixes with '.' written as '_'.

``canonical_variables`` maps every canonical tensor name to its Keras variable and the layout
conversion between the canonical (PyTorch) layout and Keras's (runtime.CONV_LAYOUT, ...).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from dualkit.backends.tf import distributed
from dualkit.backends.tf.runtime import CONV_LAYOUT, DENSE_LAYOUT, IDENTITY_LAYOUT, Convert
from dualkit.core.specs import ModelSpec
from dualkit.core.weights import feature_grid


# Private: torch's BatchNorm2d already has these semantics, so the layer has no twin there. Registered
# under its former public name, so that .keras archives saved before the rename still load.
@keras.saving.register_keras_serializable(package="dualkit", name="BatchNorm")
class _BatchNorm(keras.layers.Layer):
    """BatchNorm with PyTorch's semantics: running = (1 - m) running + m batch, unbiased running variance.

    (Keras's own BatchNormalization keeps the biased variance and uses momentum = 1 - m.)
    """

    def __init__(self, eps: float = 1e-5, momentum: float = 0.1, sync: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps
        self.momentum = momentum
        # Inside a distributed training step: True normalises with the whole global batch's statistics (all-reduced
        # over the replicas); False with the replica's own shard, the running statistics being the mean of the
        # replicas' updates (distributed.assign_running). Anywhere else the two are the same layer.
        self.sync = sync

    def build(self, input_shape):
        c = (input_shape[-1],)
        self.weight = self.add_weight(shape=c, initializer="ones", name="weight")
        self.bias = self.add_weight(shape=c, initializer="zeros", name="bias")
        self.running_mean = self.add_weight(shape=c, initializer="zeros", name="running_mean", trainable=False)
        self.running_var = self.add_weight(shape=c, initializer="ones", name="running_var", trainable=False)

    def call(self, x, training=False):
        m = tf.constant(self.momentum, x.dtype)
        if training and self.sync and distributed.in_step():
            mean, var, n = distributed.sync_moments(x, shift=self.running_mean)
            distributed.assign_running(self.running_mean, (1 - m) * self.running_mean + m * tf.stop_gradient(mean))
            unbiased = tf.stop_gradient(var) * n / (n - 1)
            distributed.assign_running(self.running_var, (1 - m) * self.running_var + m * unbiased)
            return (x - mean) * tf.math.rsqrt(var + tf.constant(self.eps, x.dtype)) * self.weight + self.bias
        if training and x.dtype == tf.float32 and x.shape.rank == 4:
            # One fused kernel (and its fused gradient) instead of the moments and the arithmetic spelled out:
            # it normalises with the biased batch variance and returns the unbiased one, PyTorch's semantics.
            # float32 only (the kernel has no float64), hence the general path below for float64 parity runs.
            y, mean, unbiased_var = tf.compat.v1.nn.fused_batch_norm(
                x, self.weight, self.bias, epsilon=self.eps, data_format="NHWC", is_training=True
            )
            distributed.assign_running(self.running_mean, (1 - m) * self.running_mean + m * mean)
            distributed.assign_running(self.running_var, (1 - m) * self.running_var + m * unbiased_var)
            return y
        if training:
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), x.dtype)
            distributed.assign_running(self.running_mean, (1 - m) * self.running_mean + m * mean)
            distributed.assign_running(self.running_var, (1 - m) * self.running_var + m * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * tf.math.rsqrt(var + tf.constant(self.eps, x.dtype)) * self.weight + self.bias

    def get_config(self):
        return {**super().get_config(), "eps": self.eps, "momentum": self.momentum, "sync": self.sync}


def _layer_name(canonical_prefix: str) -> str:
    return canonical_prefix.replace(".", "_")


def _encoder_layers(spec: ModelSpec, x: keras.KerasTensor, dtype: str) -> keras.KerasTensor:
    """Apply the encoder's layers to the Keras tensor ``x`` (NHWC); returns the feature map."""
    for b, cout in enumerate(spec.channels):
        for c in range(spec.convs_per_block):
            prefix = f"encoder.block{b}"
            x = keras.layers.Conv2D(
                cout, 3, padding="same", use_bias=not spec.batchnorm, dtype=dtype, name=_layer_name(f"{prefix}.conv{c}")
            )(x)
            if spec.batchnorm:
                name = _layer_name(f"{prefix}.bn{c}")
                x = _BatchNorm(spec.bn_eps, spec.bn_momentum, spec.bn_sync, dtype=dtype, name=name)(x)
            if c < spec.convs_per_block - 1:
                x = keras.layers.ReLU(dtype=dtype)(x)
        # max-pool then ReLU equals ReLU then max-pool (ReLU is monotone), values and gradients alike,
        # on a quarter of the elements
        x = keras.layers.ReLU(dtype=dtype)(keras.layers.MaxPooling2D(2, dtype=dtype)(x))
    return x


def _head_layers(spec: ModelSpec, feats: keras.KerasTensor, dtype: str) -> keras.KerasTensor:
    """Apply the head's layers to the Keras feature map ``feats``; returns the logits."""
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


# The public builders make models; the ones that make the classifier itself apply the layers above to one
# graph, so the classifier's layers stay flat (no nested models in its .keras archive or canonical_variables).
def build_encoder(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> keras.Model:
    """The encoder alone: NHWC images -> NHWC feature map on the coarsest grid."""
    inputs = keras.Input(shape=image_shape, dtype=dtype)
    return keras.Model(inputs, _encoder_layers(spec, inputs, dtype), name="encoder")


def build_head(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> keras.Model:
    """The head alone: the encoder's NHWC feature map -> logits."""
    h, w = feature_grid(spec, image_shape)
    feats = keras.Input(shape=(h, w, spec.channels[-1]), dtype=dtype)
    return keras.Model(feats, _head_layers(spec, feats, dtype), name="head")


def build_cnn(spec: ModelSpec, image_shape: tuple[int, int, int], dtype: str = "float32") -> keras.Model:
    """The classifier: NHWC images -> logits; its layers are named after the canonical names."""
    inputs = keras.Input(shape=image_shape, dtype=dtype)
    return keras.Model(inputs, _head_layers(spec, _encoder_layers(spec, inputs, dtype), dtype), name="cnn")


def canonical_variables(model: keras.Model) -> dict[str, tuple[keras.Variable, Convert, Convert]]:
    """canonical name -> (variable, canonical->keras, keras->canonical), in canonical order."""
    out: dict[str, tuple[keras.Variable, Convert, Convert]] = {}
    for layer in model.layers:
        prefix = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            out[f"{prefix}.weight"] = (layer.kernel, *CONV_LAYOUT)
            if layer.use_bias:
                out[f"{prefix}.bias"] = (layer.bias, *IDENTITY_LAYOUT)
        elif isinstance(layer, keras.layers.Dense):
            out[f"{prefix}.weight"] = (layer.kernel, *DENSE_LAYOUT)
            out[f"{prefix}.bias"] = (layer.bias, *IDENTITY_LAYOUT)
        elif isinstance(layer, _BatchNorm):
            for part in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}.{part}"] = (getattr(layer, part), *IDENTITY_LAYOUT)
    return out
