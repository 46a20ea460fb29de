"""TensorFlow / Keras 3 backend. Imported only when chosen (core.registry); mirrors backends/torch module by module."""

from dualkit.backends.tf import export
from dualkit.backends.tf.bert import MaskedLM, TokenTagger
from dualkit.backends.tf.classifier import Classifier
from dualkit.backends.tf.dqn import DQNAgent
from dualkit.backends.tf.losses import numpy_loss
from dualkit.backends.tf.masked import MaskedAutoencoder
from dualkit.backends.tf.optim import Optimizer, apply_updates
from dualkit.backends.tf.runtime import NAME, check_device, devices, gpu_available, seed, setup, versions

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
