"""Data parallelism, the framework-free rules: who this process is, and which part of each batch it trains on.

A run on N replicas trains on the same global batches, in the same order, as the single-worker run: the spec's
``train.batch_size`` is the global batch, and each global batch is cut into N equal contiguous shards, replica
``i`` taking the ``i``-th (replica ``i`` is local replica ``i % local_replicas`` of process ``i //
local_replicas``). Averaging the replicas' gradients then equals the global batch's gradient, because the shards
are equal. The rules (checked before training):

- ``train.batch_size`` must divide by the number of replicas (:func:`check_batch_size`);
- an epoch's last, short batch is cut to the largest multiple of the replicas: the at most N-1 examples left over
  are the last of that epoch's shuffled order, so a different few each epoch (:func:`usable`); a last batch with
  fewer examples than replicas is refused (:func:`check_last_batch`): shards are never uneven, never empty.

The process's place comes from the environment its launcher sets: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
(torchrun, for torch) or ``TF_CONFIG`` (for TensorFlow's MultiWorkerMirroredStrategy), see
:func:`world_from_env`. The backends' ``distributed`` modules start the framework's engine for that world.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualkit.core.errors import SpecError

# Environment variables dualkit's launcher (tasks/launch.py) sets for its workers; a user launching workers
# by hand (torchrun on several hosts, TF_CONFIG) may set them too.
STATUS_DIR_ENV = "DUALKIT_DIST_DIR"  # where each worker records its pid and how it ended
TIMEOUT_ENV = "DUALKIT_DIST_TIMEOUT"  # seconds a collective may wait for a missing worker
LOCAL_REPLICAS_ENV = "DUALKIT_LOCAL_REPLICAS"  # TensorFlow: replicas inside one process (MirroredStrategy)
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """This process's place among the run's workers: ``rank`` of ``size`` processes, each holding
    ``local_replicas`` replicas (TensorFlow's MirroredStrategy over several devices; torch: always 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_replicas: int = 1

    @property
    def replicas(self) -> int:
        """Replicas in all: the number of shards each global batch is cut into."""
        return self.size * self.local_replicas

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder (rank 0 alone does)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.replicas > 1


SINGLE = World()
_current = SINGLE


def current() -> World:
    """The world this process trains in (:data:`SINGLE` unless a worker started with :func:`activate`)."""
    return _current


def activate(world: World) -> None:
    """Make ``world`` this process's (a worker's start, once its backend's engine is up); SINGLE to end."""
    global _current
    _current = world


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SpecError(f"{name}={raw!r} is not a whole number; the launcher sets it (unset it to run alone)") from None


def world_from_env(backend: str, environ: Mapping[str, str] | None = None) -> World:
    """The world the environment describes for ``backend`` ("torch": torchrun's RANK, WORLD_SIZE and LOCAL_RANK;
    "tf": TF_CONFIG's worker list and task index), or :data:`SINGLE` where it describes none."""
    env = os.environ if environ is None else environ
    local = _int_env(env, LOCAL_REPLICAS_ENV, 1)
    if local < 1:
        raise SpecError(f"{LOCAL_REPLICAS_ENV}={local} must be at least 1")
    if backend == "tf":
        raw = env.get("TF_CONFIG", "")
        if not raw:
            return World(local_replicas=local)
        try:
            config = json.loads(raw)
            workers = config["cluster"]["worker"]
            task = config["task"]
        except (ValueError, KeyError, TypeError):
            raise SpecError(
                'TF_CONFIG is not of the form {"cluster": {"worker": ["host:port", ...]}, "task": '
                '{"type": "worker", "index": i}}; fix it or unset it'
            ) from None
        if set(config["cluster"]) != {"worker"} or task.get("type") != "worker":
            raise SpecError(
                "TF_CONFIG may list only workers (no chief, ps or evaluator: worker 0 writes the run); "
                "fix it or unset it"
            )
        index = int(task.get("index", 0))
        if not 0 <= index < len(workers):
            raise SpecError(f"TF_CONFIG's task index {index} is not one of its {len(workers)} workers")
        return World(rank=index, size=len(workers), local_rank=_int_env(env, "LOCAL_RANK", 0), local_replicas=local)
    size = _int_env(env, "WORLD_SIZE", 1)
    rank = _int_env(env, "RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise SpecError(f"RANK={rank} and WORLD_SIZE={size} do not fit together; the launcher sets them")
    if local != 1:
        raise SpecError(f"{LOCAL_REPLICAS_ENV}: torch runs one replica per process; launch one process per device")
    return World(rank=rank, size=size, local_rank=_int_env(env, "LOCAL_RANK", 0))


def timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """How long a collective may wait for a missing worker before it fails ($DUALKIT_DIST_TIMEOUT, seconds)."""
    env = os.environ if environ is None else environ
    raw = env.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SpecError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to e.g. 300, or unset it")
    return value


# -- the shard layout -----------------------------------------------------------------------------------------
def check_batch_size(batch_size: int, replicas: int, field: str = "train.batch_size") -> None:
    """Refuse a global batch that does not cut into ``replicas`` equal shards."""
    if replicas > 1 and batch_size % replicas:
        fits = batch_size - batch_size % replicas or replicas
        raise SpecError(
            f"{field}={batch_size} (the global batch) does not cut into {replicas} equal shards, one per worker; "
            f"set {field} to a multiple of {replicas}, e.g. {fits} or {fits + replicas}"
        )


def check_last_batch(examples: int, batch_size: int, replicas: int, what: str = "training examples") -> None:
    """Refuse an epoch whose last, short batch has fewer examples than replicas (some shards would be empty)."""
    last = examples % batch_size
    if replicas > 1 and 0 < last < replicas:
        raise SpecError(
            f"{examples} {what} in batches of {batch_size} leave a last batch of {last}, fewer than the {replicas} "
            f"workers' shards; change train.batch_size, or data.limit_train (e.g. to {examples - last})"
        )


def usable(n: int, replicas: int) -> int:
    """How many of a global batch's ``n`` examples are trained: the largest multiple of ``replicas``."""
    return n - n % replicas


def replica_slices(n: int, replicas: int) -> list[slice]:
    """The ``replicas`` equal contiguous shards of a global batch of ``n`` examples (its usable part), in order."""
    per = usable(n, replicas) // replicas
    return [slice(i * per, (i + 1) * per) for i in range(replicas)]


def process_slice(n: int, world: World) -> slice:
    """This process's part of a global batch of ``n``: its local replicas' shards, which lie side by side."""
    shards = replica_slices(n, world.replicas)
    first = world.rank * world.local_replicas
    return slice(shards[first].start, shards[first + world.local_replicas - 1].stop)


def shard(arrays: tuple[Any, ...], world: World) -> tuple[Any, ...]:
    """This process's part of each array of one global batch (cut along the first axis, :func:`process_slice`);
    the arrays must have the same first dimension. Single-process: the arrays themselves."""
    if not world.distributed:
        return arrays
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"the arrays of one batch have different lengths: {sorted(lengths)}")
    part = process_slice(lengths.pop(), world)
    return tuple(np.ascontiguousarray(a[part]) for a in arrays)
