"""What every TensorFlow model object of dualkit shares: its canonical weights, optimizer state and RNG state.

``Classifier`` and ``MaskedAutoencoder`` hold ``self.variables`` (canonical name -> (variable, to TF layout,
from TF layout)) and their optimizer as ``self.optimizer``; the run loop, checkpoints and hand-over reach their
state through these accessors only.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from dualkit.backends.tf import distributed
from dualkit.backends.tf.runtime import get_rng_state, set_rng_state, to_numpy
from dualkit.core.weights import is_buffer


class ModelState:
    """Canonical state accessors for a model object with ``variables``, ``optimizer`` and ``net``."""

    net: keras.Model
    optimizer: object
    variables: dict[str, tuple[tf.Variable, object, object]]

    def get_weights(self) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(from_tf(to_numpy(v))) for n, (v, _, from_tf) in self.variables.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for name, value in weights.items():
            var, to_tf, _ = self.variables[name]
            # a Keras variable names its dtype as a string, a tf.Variable as a tf.DType
            dtype = getattr(var.dtype, "as_numpy_dtype", var.dtype)
            var.assign(np.ascontiguousarray(to_tf(np.asarray(value))).astype(dtype))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """Canonical optimizer state (core.optim_ref names; slots in the canonical layout, like their weights)."""
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    def get_rng_state(self) -> dict[str, np.ndarray]:
        """The framework RNG that dropout draws from: each Dropout layer's seed-generator state, by position
        (Keras numbers unnamed layers per process, so their names are not stable); empty for a model without
        dropout, so that the run loop treats every model alike."""
        return get_rng_state(self.rng_models())

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        set_rng_state(state, self.rng_models())

    def rng_models(self) -> list[keras.Model]:
        """The models whose Dropout layers draw from the saved RNG."""
        return [self.net]

    def train_step(self, x: np.ndarray, target: np.ndarray, lr: float) -> float:
        """One optimizer update on a batch (``target``: the labels, or the masked task's masks); returns the batch
        loss before the update. On several replicas (distributed.train_step) ``x`` and ``target`` are this worker's
        part of the global batch, the gradients are averaged over the replicas and the loss returned is the global
        batch's."""
        return self._step((x, target), lr)

    def _step(self, arrays: tuple[np.ndarray, ...], lr: float) -> float:
        """The update behind ``train_step`` for a model whose ``_tensors(*arrays)`` makes ``_loss``'s inputs and whose
        ``_train_fn(*tensors, lr)`` is its compiled single-replica step: a model with other inputs calls it from its
        own train_step, and trains on several replicas the same way."""
        with tf.device(self.device):
            if distributed.replicas() > 1:
                return distributed.train_step(self, arrays, lr)
            loss = self._train_fn(*self._tensors(*arrays), tf.constant(lr, tf.float64))
        return float(loss.numpy())

    def apply_gradients(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update from given gradients (canonical names and layout, every trainable weight): the
        distribution parity level's ghost-batch reference averages shards' gradients and applies them here."""
        with tf.device(self.device):
            tensors = [tf.constant(self.variables[n][1](np.asarray(grads[n]))) for n in self.params]
            self.optimizer.apply(tensors, tf.constant(lr, tf.float64))

    def loss_and_grads(self, x: np.ndarray, target: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Train-mode loss and its gradient w.r.t. every trainable weight (``target``: the labels, or the masked
        task's masks); no state is changed, BatchNorm statistics included."""
        saved = self._buffers()
        trainable = list(self.params.values())
        with tf.device(self.device), tf.GradientTape() as tape:
            loss = self._loss(*self._tensors(x, target))
        grads = tape.gradient(loss, trainable)
        self.set_weights(saved)
        return float(loss.numpy()), {n: self.variables[n][2](to_numpy(g)).copy() for n, g in zip(self.params, grads)}

    def _buffers(self) -> dict[str, np.ndarray]:
        return {n: a for n, a in self.get_weights().items() if is_buffer(n)}
