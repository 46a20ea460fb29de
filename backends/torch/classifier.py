"""The classifier's compiled steps in PyTorch: train step, eval step, gradients, canonical weights."""

from __future__ import annotations

import numpy as np
import torch

from dualkit.backends.torch.cnn import build_cnn
from dualkit.backends.torch.losses import softmax_cross_entropy
from dualkit.backends.torch.model import ModelState
from dualkit.backends.torch.optim import Optimizer
from dualkit.backends.torch.runtime import (
    DTYPES,
    framework_device,
    save_native,
    to_numpy,
    to_tensor,
)
from dualkit.core.specs import ModelSpec, OptimSpec


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
        self.net = build_cnn(model, image_shape, dtype).to(device=self.device)
        self.set_weights(weights)
        self.params = {n: p for n, p in self.net.named_parameters()}
        self.optimizer = Optimizer(optim, self.params)

    # -- steps ---------------------------------------------------------------------------------
    def _loss(self, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        self.net.train()
        logits = self.net(to_tensor(x, self.dtype, self.device))
        return softmax_cross_entropy(logits, to_tensor(y, torch.long, self.device), self.label_smoothing)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits (BatchNorm uses running statistics, dropout is off)."""
        self.net.eval()
        return to_numpy(self.net(to_tensor(x, self.dtype, self.device)))

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Logits in train or eval mode without changing any state (BatchNorm statistics are restored)."""
        saved = self._buffers()
        with torch.no_grad():
            self.net.train(training)
            out = to_numpy(self.net(to_tensor(x, self.dtype, self.device)))
        self._restore_buffers(saved)
        return out

    # -- native artifact ----------------------------------------------------------------------------
    def save_native(self, path: str) -> None:
        """A plain PyTorch state dict (``.pt``): the canonical names, plus BatchNorm's num_batches_tracked
        counters so that ``cnn.build_cnn(...).load_state_dict`` (strict) accepts it; written to a temp name,
        then renamed."""
        save_native(self.net, path)
