"""PyTorch runtime: threads, determinism, devices, seeds and numpy <-> tensor conversion."""

from __future__ import annotations

import numpy as np
import torch

from dualkit.core.errors import BackendError

NAME = "torch"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def torch_device(device: str) -> torch.device:
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


def to_tensor(x: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous array (a channels_last tensor's own view would keep its strides)."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def get_rng_state(device: torch.device) -> dict[str, np.ndarray]:
    """The framework RNG that dropout draws from: torch's generator on ``device``, for a run checkpoint."""
    if device.type == "cuda":
        return {"torch.cuda": to_numpy(torch.cuda.get_rng_state(device)).copy()}
    return {"torch.cpu": to_numpy(torch.get_rng_state()).copy()}


def set_rng_state(state: dict[str, np.ndarray], device: torch.device) -> None:
    """Put back a :func:`get_rng_state` state (a state of another device or framework is left alone)."""
    if device.type == "cuda" and "torch.cuda" in state:
        torch.cuda.set_rng_state(torch.from_numpy(np.array(state["torch.cuda"], dtype=np.uint8)), device)
    elif "torch.cpu" in state:
        torch.set_rng_state(torch.from_numpy(np.array(state["torch.cpu"], dtype=np.uint8)))
