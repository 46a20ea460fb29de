"""core.exploration: the epsilon schedule, the seeded draws both backends share, greedy ties, margins."""

import numpy as np
import pytest

from dualkit.core.exploration import EpsilonGreedy, epsilon_at, greedy, q_margin


def test_epsilon_linear_then_flat():
    assert epsilon_at(1.0, 0.05, 0.5, 1000, 0) == 1.0
    assert epsilon_at(1.0, 0.05, 0.5, 1000, 250) == pytest.approx(0.525)
    assert epsilon_at(1.0, 0.05, 0.5, 1000, 500) == pytest.approx(0.05)
    assert epsilon_at(1.0, 0.05, 0.5, 1000, 10**6) == pytest.approx(0.05)


def test_draws_are_reproducible_and_fixed_in_order():
    a, b = EpsilonGreedy(3, 4), EpsilonGreedy(3, 4)
    for eps in (1.0, 0.3, 0.0):
        ea, ra = a.draw(8, eps)
        eb, rb = b.draw(8, eps)
        np.testing.assert_array_equal(ea, eb)
        np.testing.assert_array_equal(ra, rb)
    # epsilon does not change how many numbers are drawn: the streams stay aligned whatever it is
    c, d = EpsilonGreedy(3, 4), EpsilonGreedy(3, 4)
    c.draw(8, 1.0)
    d.draw(8, 0.0)
    np.testing.assert_array_equal(c.draw(8, 0.5)[1], d.draw(8, 0.5)[1])


def test_explore_rate_and_action_range():
    ex = EpsilonGreedy(0, 3)
    explore, actions = ex.draw(20_000, 0.25)
    assert abs(explore.mean() - 0.25) < 0.02
    assert set(np.unique(actions)) == {0, 1, 2}
    assert ex.draw(100, 0.0)[0].sum() == 0 and ex.draw(100, 1.0)[0].all()


def test_select_mixes_random_and_greedy():
    q = np.array([[0.0, 1.0], [2.0, 1.0], [5.0, 5.0]])
    explore = np.array([True, False, False])
    out = EpsilonGreedy.select(q, explore, np.array([0, 1, 1]))
    np.testing.assert_array_equal(out, [0, 0, 0])  # random, greedy, tie -> lowest index
    np.testing.assert_array_equal(EpsilonGreedy.select(None, np.array([True, True]), np.array([1, 0])), [1, 0])
    with pytest.raises(ValueError, match="Q-values"):
        EpsilonGreedy.select(None, np.array([True, False]), np.array([1, 0]))


def test_greedy_and_margin():
    q = np.array([[1.0, 3.0, 2.5], [4.0, 4.0, 0.0]])
    np.testing.assert_array_equal(greedy(q), [1, 0])
    np.testing.assert_allclose(q_margin(q), [0.5, 0.0])
    assert np.isinf(q_margin(np.ones((2, 1)))).all()
