"""The classifier's compiled steps in TensorFlow: train step, eval step, gradients, canonical weights."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualkit.backends.tf.cnn import build_cnn, canonical_variables
from dualkit.backends.tf.losses import softmax_cross_entropy
from dualkit.backends.tf.model import ModelState
from dualkit.backends.tf.optim import Optimizer
from dualkit.backends.tf.runtime import (
    DTYPES,
    framework_device,
    save_native,
    to_numpy,
    to_tensor,
)
from dualkit.core.specs import ModelSpec, OptimSpec
from dualkit.core.weights import is_buffer


class Classifier(ModelState):
    """A CNN, its optimizer and steps. Inputs are NHWC numpy batches from core; outputs are numpy."""

    def __init__(
        self,
        model: ModelSpec,
        image_shape: tuple[int, int, int],
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        label_smoothing: float = 0.0,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.device = framework_device(device)
        self.dtype = DTYPES[dtype]
        self.label_smoothing = label_smoothing
        with tf.device(self.device):
            self.net = build_cnn(model, image_shape, dtype)
            self.variables = canonical_variables(self.net)
            self.set_weights(weights)
            self.params = {n: v for n, (v, _, _) in self.variables.items() if not is_buffer(n)}
            self.optimizer = Optimizer(optim, self.params, {n: (to, fr) for n, (_, to, fr) in self.variables.items()})
        x_spec = tf.TensorSpec((None, *image_shape), self.dtype)
        y_spec = tf.TensorSpec((None,), tf.int64)
        # One trace for every batch size (the last batch of an epoch is smaller).
        self._train_fn = tf.function(self._train, input_signature=[x_spec, y_spec, tf.TensorSpec((), tf.float64)])
        self._predict_fn = tf.function(self._predict, input_signature=[x_spec])

    # -- steps ---------------------------------------------------------------------------------
    def _tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
        return to_tensor(x, self.dtype), to_tensor(y, tf.int64)

    def _loss(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return softmax_cross_entropy(self.net(x, training=True), y, self.label_smoothing)

    def _train(self, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        trainable = list(self.params.values())
        with tf.GradientTape() as tape:
            loss = self._loss(x, y)
        self.optimizer.apply(tape.gradient(loss, trainable), lr)
        return loss

    def _predict(self, x: tf.Tensor) -> tf.Tensor:
        return self.net(x, training=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits (BatchNorm uses running statistics, dropout is off)."""
        with tf.device(self.device):
            return to_numpy(self._predict_fn(to_tensor(x, self.dtype)))

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Logits in train or eval mode without changing any state (BatchNorm statistics are restored)."""
        saved = self._buffers()
        with tf.device(self.device):
            out = to_numpy(self.net(to_tensor(x, self.dtype), training=training))
        self.set_weights(saved)
        return out

    # -- native artifact ----------------------------------------------------------------------------
    def save_native(self, path: str) -> None:
        """A Keras ``.keras`` archive (weights in Keras layout); written to a temp name, then renamed."""
        save_native(self.net, path)
