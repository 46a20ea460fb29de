"""What every PyTorch model object of dualkit shares: its canonical weights, optimizer state and RNG state.

``Classifier`` and ``MaskedAutoencoder`` hold their module as ``self.net`` and their optimizer as
``self.optimizer``; the run loop, checkpoints and hand-over reach their state through these accessors only.
"""

from __future__ import annotations

import numpy as np
import torch

from dualkit.backends.torch import distributed
from dualkit.backends.torch.cnn import canonical_variables
from dualkit.backends.torch.runtime import get_rng_state, set_rng_state, to_numpy, to_tensor
from dualkit.core.weights import is_buffer


class ModelState:
    """Canonical state accessors for a model object with ``net`` (a module) and ``optimizer``."""

    net: torch.nn.Module
    optimizer: object

    def get_weights(self) -> dict[str, np.ndarray]:
        return {n: to_numpy(t).copy() for n, t in canonical_variables(self.net).items()}

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
        """The framework RNG that dropout draws from: torch's generator on the model's device (saved even for a
        model without dropout, so that the run loop treats every model alike)."""
        return get_rng_state(self.rng_models())

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        set_rng_state(state, self.rng_models())

    def rng_models(self) -> list[torch.nn.Module]:
        """The modules whose dropout draws from the saved RNG."""
        return [self.net]

    def train_step(self, x: np.ndarray, target: np.ndarray, lr: float) -> float:
        """One optimizer update on a batch (``target``: the labels, or the masked task's masks); returns the batch
        loss before the update. On several workers (distributed.train_step) ``x`` and ``target`` are this worker's
        shard, the gradients are averaged over the workers and the loss returned is the global batch's."""
        return self._step((x, target), lr)

    def _step(self, arrays: tuple[np.ndarray, ...], lr: float) -> float:
        """The update behind ``train_step`` for a model whose ``_loss`` takes ``arrays``: a model with other inputs
        calls it from its own train_step, and trains on several workers the same way."""
        if distributed.replicas() > 1:
            return distributed.train_step(self, arrays, lr)
        loss = self._loss(*arrays)
        loss.backward()
        self.optimizer.apply([p.grad for p in self.params.values()], lr)
        return float(loss.item())

    def apply_gradients(self, grads: dict[str, np.ndarray], lr: float) -> None:
        """One optimizer update from given gradients (canonical names and layout, every trainable weight): the
        distribution parity level's ghost-batch reference averages shards' gradients and applies them here."""
        # each gradient in its weight's memory format (channels_last convs), as backward leaves them
        self.optimizer.apply(
            [torch.empty_like(p).copy_(to_tensor(grads[n], p.dtype, p.device)) for n, p in self.params.items()], lr
        )

    def loss_and_grads(self, x: np.ndarray, target: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Train-mode loss and its gradient w.r.t. every trainable weight (``target``: the labels, or the masked
        task's masks); no state is changed, BatchNorm statistics included."""
        saved = self._buffers()
        loss = self._loss(x, target)
        # torch.autograd.grad, not backward: the parameters' .grad (the optimizer's input) stays untouched
        grads = dict(zip(self.params, torch.autograd.grad(loss, list(self.params.values()))))
        self._restore_buffers(saved)
        return float(loss.item()), {n: to_numpy(g) for n, g in grads.items()}

    def _buffers(self) -> dict[str, torch.Tensor]:
        return {n: b.clone() for n, b in self.net.named_buffers() if is_buffer(n) or n.endswith("num_batches_tracked")}

    def _restore_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        buffers = dict(self.net.named_buffers())
        with torch.no_grad():
            for n, b in saved.items():
                buffers[n].copy_(b)
