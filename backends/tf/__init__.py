"""TensorFlow / Keras 3 backend. Imported only when chosen (core.registry); mirrors backends/torch module by module."""

from backends.tf.classifier import Classifier
from backends.tf.dqn import DQNAgent
from backends.tf.losses import numpy_loss
from backends.tf.masked import MaskedAutoencoder
from backends.tf.optim import Optimizer, apply_updates
from backends.tf.runtime import NAME, check_device, devices, gpu_available, seed, setup, versions

__all__ = ["NAME", "Classifier", "DQNAgent", "MaskedAutoencoder", "Optimizer", "apply_updates", "numpy_loss", "check_device", "devices", "gpu_available", "seed", "setup", "versions"]
