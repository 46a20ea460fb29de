"""Golden parity cases: each parity level's computation for ONE backend, on inputs recorded once.

A task's parity module turns its levels into :class:`GoldenCase` objects (``Task.golden_cases``): ``inputs()``
builds what the level feeds both backends (canonical weights, probe batches, a real run's batches, masks,
minibatches and learning rates; it may need the data, an environment or core's init, so it runs only where the
golden files are recorded), and ``run(backend, device, inputs)`` computes the level's outputs in one backend
from those arrays alone (a backend and numpy: no data files, no environment). tasks/golden_files.py records the
inputs and both backends' CPU outputs as safetensors and later checks one backend on any device against them.

Input names: ``w.<canonical name>`` are weights (a float32 case with an envelope is also recorded from them moved
by one ulp, tasks/parity.perturb_ulp); a batch sequence recorded with :func:`pack_batches` is three arrays,
``<name>.table``/``.index``/``.sizes``. Output names: ``<group>`` or ``<group>/<tensor>``; each group is compared
as its :class:`Compare` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
WEIGHT_PREFIX = "w."
COMPARE_KINDS = ("abs", "rel", "steps", "argmax")


@dataclass(frozen=True)
class Compare:
    """How one output group is compared with its reference.

    ``abs``: max |a - b| over the group's tensors; ``rel``: the worst tensor's max |a - b| / max |b|; ``steps``: a
    1-D series (per-step losses), per-step relative gaps (float32 with an envelope: the rounding-envelope verdict of
    tasks/parity.envelope_check); ``argmax``: rows of Q-values, the number of rows whose greedy action differs before
    the first near-tie of either side. With the case's envelope (float32), ``abs``/``rel`` are bounded by
    max(floor_factor x bound(floor_level), ENVELOPE_FACTOR x the gap that rounding alone makes in one backend)."""

    kind: str = "abs"
    floor_level: str = ""
    floor_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in COMPARE_KINDS:
            raise ValueError(f"Compare kind {self.kind!r} is not one of {COMPARE_KINDS}")


@dataclass
class GoldenCase:
    """One level's computation (see the module docstring). ``key`` names it in a recording."""

    level: str
    name: str
    dtype: str
    inputs: Callable[[], Arrays]
    run: Callable[[str, str, Arrays], Arrays]
    compare: dict[str, Compare] = field(default_factory=lambda: {"out": Compare()})
    envelope: bool = False  # float32: also record each backend's outputs from 1-ulp-moved weights

    @property
    def key(self) -> str:
        return f"{self.dtype}/{self.level}/{self.name}"


def group_of(output_name: str) -> str:
    return output_name.split("/", 1)[0]


# -- weights ------------------------------------------------------------------------------------------------
def weights_in(weights: Arrays) -> Arrays:
    """Canonical weights as case inputs (``w.<name>``)."""
    return {WEIGHT_PREFIX + k: np.asarray(v) for k, v in weights.items()}


def weights_of(inputs: Arrays) -> Arrays:
    """The canonical weights among a case's inputs."""
    return {k[len(WEIGHT_PREFIX) :]: v for k, v in inputs.items() if k.startswith(WEIGHT_PREFIX)}


def prefixed(prefix: str, arrays: Arrays) -> Arrays:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in arrays.items()}


# -- batch sequences ------------------------------------------------------------------------------------------
def pack_batches(name: str, batches: list[np.ndarray]) -> Arrays:
    """A sequence of batches (equal row shapes, any batch sizes) as its distinct rows and, per row of every
    batch, an index into them: a real run's 300 batches of 1,300 distinct images take the images once."""
    if not batches:
        raise ValueError(f"no {name} batches to record")
    flat = np.concatenate([np.asarray(b) for b in batches])
    rows = np.ascontiguousarray(flat.reshape(len(flat), -1))
    # distinct rows by their bytes: exact (no float comparison), and -0.0 stays apart from 0.0
    view = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    table = flat[first]
    index_dtype = np.uint16 if len(first) <= np.iinfo(np.uint16).max else np.uint32
    return {
        f"{name}.table": np.ascontiguousarray(table),
        f"{name}.index": inverse.reshape(-1).astype(index_dtype),
        f"{name}.sizes": np.array([len(b) for b in batches], np.int64),
    }


def unpack_batches(name: str, inputs: Arrays) -> list[np.ndarray]:
    """The batches :func:`pack_batches` recorded, in order."""
    table, index = inputs[f"{name}.table"], inputs[f"{name}.index"].astype(np.int64)
    bounds = np.cumsum(inputs[f"{name}.sizes"])[:-1]
    return [np.ascontiguousarray(table[i]) for i in np.split(index, bounds)]


# -- recording a real run ------------------------------------------------------------------------------------
class Recorder:
    """A backend model object (Classifier, MaskedAutoencoder, DQNAgent) that passes every call on and keeps, in
    order, the arguments of the named methods: handed to a task's own driver in place of the model, it records
    exactly what the run fed the backend. ``limit``: stop recording after that many calls of ``limit_method``."""

    def __init__(self, model: Any, methods: tuple[str, ...], limit_method: str = "", limit: int | None = None):
        self._model = model
        self._methods = methods
        self._limit_method, self._limit = limit_method, limit
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def args(self, method: str) -> list[tuple[Any, ...]]:
        return [a for m, a in self.calls if m == method]

    def _full(self) -> bool:
        return self._limit is not None and len(self.args(self._limit_method)) >= self._limit

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name not in self._methods:
            return attr

        def recorded(*args: Any) -> Any:
            if not self._full():
                self.calls.append(
                    (name, tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args))
                )
            return attr(*args)

        return recorded
