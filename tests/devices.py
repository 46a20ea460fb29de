"""Device parameters for parity tests: CPU always, GPU only where both frameworks see one."""

from __future__ import annotations

import functools

import pytest


@functools.cache
def gpu_in_both() -> bool:
    """True when torch and TensorFlow both see a GPU (cross-backend GPU parity needs both)."""
    try:
        import torch  # torch before tensorflow, always

        if not torch.cuda.is_available():
            return False
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    except ImportError:
        return False


NO_GPU_REASON = "no GPU visible to both PyTorch and TensorFlow; GPU parity runs only where one is present"
GPU = pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not gpu_in_both(), reason=NO_GPU_REASON)])
DEVICES = ["cpu", GPU]
