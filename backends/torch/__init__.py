"""PyTorch backend. Imported only when chosen (core.registry); mirrors backends/tf module by module."""

from dualkit.backends.torch import export
from dualkit.backends.torch.bert import MaskedLM, TokenTagger
from dualkit.backends.torch.classifier import Classifier
from dualkit.backends.torch.dqn import DQNAgent
from dualkit.backends.torch.losses import numpy_loss
from dualkit.backends.torch.masked import MaskedAutoencoder
from dualkit.backends.torch.optim import Optimizer, apply_updates
from dualkit.backends.torch.runtime import NAME, check_device, devices, gpu_available, seed, setup, versions

__all__ = [
    "NAME",
    "Classifier",
    "DQNAgent",
    "MaskedAutoencoder",
    "MaskedLM",
    "TokenTagger",
    "Optimizer",
    "apply_updates",
    "export",
    "numpy_loss",
    "check_device",
    "devices",
    "gpu_available",
    "seed",
    "setup",
    "versions",
]
