"""Canonical checkpoints: safetensors tensors plus JSON metadata (spec, provenance). Never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from dualkit.core.errors import CheckpointError
from dualkit.core.runs import atomic_write_bytes

FORMAT_VERSION = 1
_META_KEY = "dualkit"


def save(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` with ``meta`` (JSON-serialisable) as safetensors metadata."""
    header = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, **meta})}
    data = st_save({k: np.asarray(v, order="C") for k, v in tensors.items()}, metadata=header)  # keeps 0-d arrays 0-d
    atomic_write_bytes(Path(path), data)


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint; a missing file, a non-safetensors file or a foreign one is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a safetensors file ({exc}); dualkit reads only the canonical safetensors "
            "checkpoints it writes (model.safetensors in a run folder)"
        ) from None
    meta_text = (header.get("__metadata__") or {}).get(_META_KEY)
    if meta_text is None:
        raise CheckpointError(f"{path} is safetensors but was not written by dualkit (no '{_META_KEY}' metadata)")
    try:
        meta = json.loads(meta_text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has unreadable '{_META_KEY}' metadata (not a JSON object); the file is damaged")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta['format_version']}, newer than this dualkit reads "
            f"({FORMAT_VERSION}); upgrade dualkit"
        )
    return tensors, meta


def check_fits(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str = "the model") -> None:
    """Raise naming every missing, unexpected and mis-shaped tensor."""
    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    misshaped = [
        f"{n}: checkpoint {tuple(tensors[n].shape)}, model {tuple(expected[n])}"
        for n in expected
        if n in tensors and tuple(tensors[n].shape) != tuple(expected[n])
    ]
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    if misshaped:
        problems.append("wrong shape: " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(
            f"checkpoint does not fit {what}:\n  "
            + "\n  ".join(problems)
            + "\nit was written for a different model spec; evaluate it with the run's own spec.json"
        )
