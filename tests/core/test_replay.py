"""core.replay: ring-buffer order and overwrite, seeded sampling, dtypes."""

import numpy as np
import pytest

from dualkit.core.batches import make_rng
from dualkit.core.replay import Batch, ReplayBuffer


def _rows(start: int, n: int, dim: int = 3):
    obs = np.arange(start, start + n, dtype=np.float64)[:, None] * np.ones(dim)
    return (
        obs,
        np.arange(start, start + n) % 2,
        np.arange(start, start + n) * 1.0,
        obs + 0.5,
        np.arange(start, start + n) % 3 == 0,
    )


def test_add_and_get_in_order():
    buf = ReplayBuffer(10, 3)
    buf.add(*_rows(0, 4))
    assert len(buf) == 4 and buf.pos == 4 and buf.added == 4
    b = buf.get(np.arange(4))
    np.testing.assert_array_equal(b.obs[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(b.next_obs[:, 0], [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_array_equal(b.actions, [0, 1, 0, 1])
    np.testing.assert_array_equal(b.terminated, [1, 0, 0, 1])
    assert b.obs.dtype == np.float32 and b.actions.dtype == np.int64 and b.terminated.dtype == np.float32


def test_ring_overwrites_the_oldest():
    buf = ReplayBuffer(5, 3)
    for start in range(0, 12, 3):  # 12 transitions in batches of 3 through a buffer of 5
        buf.add(*_rows(start, 3))
    assert len(buf) == 5 and buf.added == 12
    assert sorted(buf.obs[:, 0].tolist()) == [7, 8, 9, 10, 11]
    assert buf.obs[buf.pos - 1, 0] == 11  # the newest sits just before the write position


def test_batch_larger_than_capacity_keeps_the_newest():
    buf = ReplayBuffer(4, 3)
    buf.add(*_rows(0, 10))
    assert len(buf) == 4 and sorted(buf.obs[:, 0].tolist()) == [6, 7, 8, 9]


def test_sampling_is_seeded_and_uniform_over_filled_slots():
    buf = ReplayBuffer(100, 3, dtype="float64")
    buf.add(*_rows(0, 30))
    a = buf.sample(64, make_rng(7, "replay"))
    b = buf.sample(64, make_rng(7, "replay"))
    assert isinstance(a, Batch) and len(a) == 64
    np.testing.assert_array_equal(a.obs, b.obs)
    assert a.obs.dtype == np.float64
    idx = buf.sample_indices(10_000, make_rng(0, "replay"))
    assert idx.min() == 0 and idx.max() == 29  # never an unfilled slot
    assert np.bincount(idx).min() > 250  # roughly uniform (expected 333 each)


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, 2).sample(1, make_rng(0, "replay"))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 2)
    buf = ReplayBuffer(4, 2)
    with pytest.raises(ValueError, match="observations"):
        buf.add(np.zeros((2, 3)), [0, 1], [0.0, 0.0], np.zeros((2, 3)), [False, False])


def test_packed_rows_are_one_array_in_a_fixed_layout():
    buf = ReplayBuffer(10, 3)
    buf.add(*_rows(0, 6))
    b = buf.get(np.array([4, 1]))
    rows = b.packed()
    assert rows.shape == (2, 2 * 3 + 3) and rows.dtype == np.float32
    manual = Batch(b.obs.copy(), b.actions.copy(), b.rewards.copy(), b.next_obs.copy(), b.terminated.copy())
    np.testing.assert_array_equal(manual.packed(), rows)  # obs | next_obs | reward | terminated | action
    np.testing.assert_array_equal(rows[:, -1], [0, 1])


def test_state_round_trip_restores_contents_position_and_samples():
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(50, 3)
    for _ in range(13):  # wraps around: pos != size
        n = 7
        buf.add(
            rng.normal(size=(n, 3)),
            rng.integers(0, 2, n),
            rng.normal(size=n),
            rng.normal(size=(n, 3)),
            rng.random(n) < 0.1,
        )
    counters, rows = buf.state()
    assert counters == {"pos": buf.pos, "size": 50, "added": 91} and rows.shape == (50, 9)
    other = ReplayBuffer(50, 3)
    other.load_state(counters, rows)
    a, b = buf.sample(16, make_rng(1, "replay")), other.sample(16, make_rng(1, "replay"))
    np.testing.assert_array_equal(a.packed(), b.packed())
    x = rng.normal(size=(5, 3))
    for target in (buf, other):  # the next write lands in the same slots
        target.add(x, np.ones(5), np.zeros(5), x, np.zeros(5, bool))
    np.testing.assert_array_equal(buf.data, other.data)
    assert buf.nbytes == 50 * 9 * 4
    with pytest.raises(ValueError, match="do not fit"):
        ReplayBuffer(20, 3).load_state(counters, rows)
