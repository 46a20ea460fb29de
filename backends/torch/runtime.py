"""PyTorch runtime: threads, determinism, devices, seeds, numpy <-> tensor conversion, native saving.

Mirrors backends/tf/runtime.py name for name (see tests/backends/test_mirror.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dualkit.core.errors import BackendError
from dualkit.core.runs import atomic_write_bytes

NAME = "torch"
DTYPES = {"float32": torch.float32, "float64": torch.float64}

Convert = Callable[[np.ndarray], np.ndarray]
# (canonical -> torch, torch -> canonical) conversions of a weight's array, as in tf's runtime. The
# canonical layout is PyTorch's own, so this backend's weights need none; the type is here for the
# optimizer's mirrored signature.
Layout = tuple[Convert, Convert]


def setup(deterministic: bool = True, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    # TF32 off so GPU matmuls and convs keep fp32 precision, as the parity bounds assume.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def gpu_available() -> bool:
    return torch.cuda.is_available()


def check_device(device: str) -> None:
    if device == "gpu" and not gpu_available():
        raise BackendError("--device gpu was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")


def framework_device(device: str) -> torch.device:
    """The torch device for a dualkit device name ("cpu", "gpu" or "auto")."""
    return torch.device("cuda" if device == "gpu" or (device == "auto" and gpu_available()) else "cpu")


def seed(n: int) -> None:
    """Seed the framework RNG (used only by dropout; every other random draw comes from core)."""
    torch.manual_seed(n)


def versions() -> dict[str, str]:
    return {"torch": torch.__version__}


def devices() -> list[str]:
    names = ["cpu"]
    names += [f"gpu:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return names


def to_tensor(x: np.ndarray, dtype: torch.dtype | None = None, device: torch.device | None = None) -> torch.Tensor:
    """A tensor of ``x`` on ``device`` (None: the CPU), cast to ``dtype`` (None: x's own)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous array (a channels_last tensor's own view would keep its strides)."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _device_of(models: list[torch.nn.Module]) -> torch.device:
    return next(models[0].parameters()).device


def get_rng_state(models: list[torch.nn.Module]) -> dict[str, np.ndarray]:
    """The framework RNG that the dropout of ``models`` draws from, for a run checkpoint: torch's generator
    on the models' device (torch has one generator per device, not one per layer as Keras)."""
    device = _device_of(models)
    if device.type == "cuda":
        return {"torch.cuda": to_numpy(torch.cuda.get_rng_state(device)).copy()}
    return {"torch.cpu": to_numpy(torch.get_rng_state()).copy()}


def set_rng_state(state: dict[str, np.ndarray], models: list[torch.nn.Module]) -> None:
    """Put back a :func:`get_rng_state` state (a state of another device or framework is left alone)."""
    device = _device_of(models)
    if device.type == "cuda" and "torch.cuda" in state:
        torch.cuda.set_rng_state(torch.from_numpy(np.array(state["torch.cuda"], dtype=np.uint8)), device)
    elif "torch.cpu" in state:
        torch.set_rng_state(torch.from_numpy(np.array(state["torch.cpu"], dtype=np.uint8)))


def save_native(model: torch.nn.Module | dict[str, torch.Tensor], path: str | Path) -> None:
    """A plain PyTorch state dict (``.pt``) of ``model`` (a module, or its tensors by name), written to a
    temp name beside ``path``, then renamed: a reader sees the old file or the new one, never half."""
    buf = io.BytesIO()
    torch.save(model.state_dict() if isinstance(model, torch.nn.Module) else model, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
