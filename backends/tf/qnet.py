"""The DQN Q-network (an MLP) in Keras 3. Layer names are the canonical names after the network's
prefix (``q.`` online, ``target.`` target); dense kernels convert between (in, out) and (out, in)."""

from __future__ import annotations

import keras

from dualkit.backends.tf.runtime import DENSE_LAYOUT, IDENTITY_LAYOUT, Convert
from dualkit.core.specs import QNetSpec

ACTIVATIONS = {"relu": "relu", "tanh": "tanh"}


def build_qnet(
    spec: QNetSpec, obs_dim: int, num_actions: int, dtype: str = "float32", name: str = "qnet"
) -> keras.Model:
    """Observations (N, obs_dim) -> Q-values (N, num_actions): ``fc{i}`` + activation, then ``out``.

    ``name`` tells the online and the target model apart; each is built from its own layers, so the
    target is a real copy (keras.models.clone_model would not copy the weights).
    """
    inputs = keras.Input(shape=(obs_dim,), dtype=dtype)
    x = inputs
    for i, width in enumerate(spec.hidden):
        x = keras.layers.Dense(width, activation=ACTIVATIONS[spec.activation], dtype=dtype, name=f"fc{i}")(x)
    outputs = keras.layers.Dense(num_actions, dtype=dtype, name="out")(x)
    return keras.Model(inputs, outputs, name=name)


def canonical_variables(model: keras.Model, prefix: str) -> dict[str, tuple[keras.Variable, Convert, Convert]]:
    """canonical name -> (variable, canonical->keras, keras->canonical), in canonical order."""
    out: dict[str, tuple[keras.Variable, Convert, Convert]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            out[f"{prefix}.{layer.name}.weight"] = (layer.kernel, *DENSE_LAYOUT)
            out[f"{prefix}.{layer.name}.bias"] = (layer.bias, *IDENTITY_LAYOUT)
    return out
