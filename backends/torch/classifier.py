"""The classifier's compiled steps in PyTorch: train step, eval step, gradients, canonical weights."""

from __future__ import annotations

import io

import numpy as np
import torch

from dualkit.backends.torch.cnn import CNN
from dualkit.backends.torch.losses import softmax_cross_entropy
from dualkit.backends.torch.optim import Optimizer
from dualkit.backends.torch.runtime import DTYPES, get_rng_state, set_rng_state, to_numpy, to_tensor, torch_device
from dualkit.core.runs import atomic_write_bytes
from dualkit.core.specs import ModelSpec, OptimSpec
from dualkit.core.weights import is_buffer


class Classifier:
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
        self.device = torch_device(device)
        self.dtype = DTYPES[dtype]
        self.label_smoothing = label_smoothing
        self.net = CNN(model, image_shape).to(device=self.device, dtype=self.dtype)
        self.set_weights(weights)
        self.params = {n: p for n, p in self.net.named_parameters()}
        self.optimizer = Optimizer(optim, self.params)

    # -- steps ---------------------------------------------------------------------------------
    def _loss(self, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
        self.net.train()
        logits = self.net(to_tensor(x, self.device, self.dtype))
        return softmax_cross_entropy(logits, to_tensor(y, self.device, torch.long), self.label_smoothing)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One optimizer update on a batch; returns the batch loss before the update."""
        loss = self._loss(x, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step(lr)
        return float(loss.item())

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits (BatchNorm uses running statistics, dropout is off)."""
        self.net.eval()
        return to_numpy(self.net(to_tensor(x, self.device, self.dtype)))

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Logits in train or eval mode without changing any state (BatchNorm statistics are restored)."""
        saved = self._buffers()
        with torch.no_grad():
            self.net.train(training)
            out = to_numpy(self.net(to_tensor(x, self.device, self.dtype)))
        self._restore_buffers(saved)
        return out

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Train-mode loss and its gradient w.r.t. every trainable weight; no state is changed."""
        saved = self._buffers()
        self.optimizer.zero_grad()
        loss = self._loss(x, y)
        loss.backward()
        grads = {n: to_numpy(p.grad) for n, p in self.params.items()}
        self.optimizer.zero_grad()
        self._restore_buffers(saved)
        return float(loss.item()), grads

    # -- canonical weights -------------------------------------------------------------------------
    def get_weights(self) -> dict[str, np.ndarray]:
        return {n: to_numpy(t).copy() for n, t in self.net.state_dict().items() if not n.endswith("num_batches_tracked")}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        state = self.net.state_dict()
        with torch.no_grad():
            for name, value in weights.items():
                state[name].copy_(torch.as_tensor(np.asarray(value)))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """Canonical optimizer state (core.optim_ref names; the canonical layout is PyTorch's own)."""
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    def get_rng_state(self) -> dict[str, np.ndarray]:
        """The framework RNG that dropout draws from: torch's generator on the model's device."""
        return get_rng_state(self.device)

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        set_rng_state(state, self.device)

    def _buffers(self) -> dict[str, torch.Tensor]:
        return {n: b.clone() for n, b in self.net.named_buffers() if is_buffer(n) or n.endswith("num_batches_tracked")}

    def _restore_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        buffers = dict(self.net.named_buffers())
        with torch.no_grad():
            for n, b in saved.items():
                buffers[n].copy_(b)

    # -- native artifact ----------------------------------------------------------------------------
    def save_native(self, path: str) -> None:
        """A plain PyTorch state dict (``.pt``): the canonical names, plus BatchNorm's num_batches_tracked
        counters so that ``CNN.load_state_dict`` (strict) accepts it."""
        buf = io.BytesIO()
        torch.save(self.net.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
