"""core/distributed.py: the world from the launcher's environment, and the shard layout of a global batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualkit.core import distributed
from dualkit.core.distributed import World
from dualkit.core.errors import SpecError


def tf_config(index: int, workers: int, **extra) -> str:
    cluster = {"worker": [f"localhost:{2000 + i}" for i in range(workers)], **extra}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_world_from_torchrun_variables():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    world = distributed.world_from_env("torch", env)
    assert world == World(rank=1, size=2, local_rank=1)
    assert world.replicas == 2 and world.distributed and not world.writer
    assert distributed.world_from_env("torch", {}) == distributed.SINGLE


def test_world_from_tf_config():
    world = distributed.world_from_env("tf", {"TF_CONFIG": tf_config(2, 3)})
    assert (world.rank, world.size, world.replicas) == (2, 3, 3)
    assert distributed.world_from_env("tf", {"RANK": "1", "WORLD_SIZE": "2"}) == distributed.SINGLE  # torch's
    local = distributed.world_from_env("tf", {distributed.LOCAL_REPLICAS_ENV: "2"})
    assert (local.size, local.replicas, local.writer) == (1, 2, True)


@pytest.mark.parametrize(
    "backend, env, words",
    [
        ("torch", {"RANK": "2", "WORLD_SIZE": "2"}, "do not fit"),
        ("torch", {"RANK": "x", "WORLD_SIZE": "2"}, "not a whole number"),
        ("torch", {"WORLD_SIZE": "2", distributed.LOCAL_REPLICAS_ENV: "2"}, "one replica per process"),
        ("tf", {"TF_CONFIG": "{not json"}, "TF_CONFIG is not of the form"),
        ("tf", {"TF_CONFIG": tf_config(0, 2, chief=["localhost:1"])}, "only workers"),
        ("tf", {"TF_CONFIG": tf_config(5, 2)}, "not one of its 2 workers"),
    ],
)
def test_a_bad_environment_is_refused_in_one_line(backend, env, words):
    with pytest.raises(SpecError, match=words) as err:
        distributed.world_from_env(backend, env)
    assert "\n" not in str(err.value)


def test_timeout_from_the_environment():
    assert distributed.timeout_s({}) == distributed.DEFAULT_TIMEOUT_S
    assert distributed.timeout_s({distributed.TIMEOUT_ENV: "12.5"}) == 12.5
    for bad in ("0", "-3", "soon"):
        with pytest.raises(SpecError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_s({distributed.TIMEOUT_ENV: bad})


def test_shards_are_equal_contiguous_and_in_the_single_run_order():
    x = np.arange(12 * 2).reshape(12, 2)
    y = np.arange(12)
    parts = [distributed.shard((x, y), World(rank=r, size=3)) for r in range(3)]
    assert [len(p[0]) for p in parts] == [4, 4, 4]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert distributed.shard((x, y), distributed.SINGLE)[0] is x  # one worker: the batch itself


def test_a_process_holds_its_local_replicas_shards_side_by_side():
    # 2 processes x 2 local replicas: replica i is local replica i % 2 of process i // 2
    assert distributed.replica_slices(8, 4) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert distributed.process_slice(8, World(rank=1, size=2, local_replicas=2)) == slice(4, 8)


def test_a_short_last_batch_is_cut_to_a_multiple_of_the_replicas():
    assert distributed.usable(15, 2) == 14 and distributed.usable(16, 4) == 16
    x = np.arange(15)
    parts = [distributed.shard((x,), World(rank=r, size=2))[0] for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), x[:14])  # the last example of the epoch's order is left


def test_batch_rules_refuse_uneven_or_empty_shards():
    distributed.check_batch_size(64, 2)
    distributed.check_batch_size(30, 1)  # one worker: anything goes
    with pytest.raises(SpecError, match=r"train.batch_size=30 .* 4 equal shards.*multiple of 4, e.g. 28 or 32"):
        distributed.check_batch_size(30, 4)
    distributed.check_last_batch(1295, 32, 2)  # a last batch of 15: cut to 14
    with pytest.raises(SpecError, match=r"last batch of 1, fewer than the 2 workers.*data.limit_train \(e.g. to 64\)"):
        distributed.check_last_batch(65, 32, 2)
    with pytest.raises(ValueError, match="different lengths"):
        distributed.shard((np.zeros(4), np.zeros(3)), World(rank=0, size=2))


def test_the_current_world_is_single_until_a_worker_activates_one():
    assert distributed.current() == distributed.SINGLE
    distributed.activate(World(rank=1, size=2))
    try:
        assert distributed.current().rank == 1
    finally:
        distributed.activate(distributed.SINGLE)
