"""core.losses: hand-computed cases and a float64 cross-check against torch's cross_entropy."""

import math

import numpy as np
import pytest

from dualkit.core.losses import log_softmax, masked_cross_entropy, softmax_cross_entropy


def test_log_softmax_hand_values():
    out = log_softmax(np.array([[1.0, 2.0, 3.0]]))
    lse = math.log(math.e + math.e**2 + math.e**3)
    np.testing.assert_allclose(out, [[1 - lse, 2 - lse, 3 - lse]], rtol=1e-14)


def test_log_softmax_is_stable_for_huge_logits():
    out = log_softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[0.0, -1000.0], [-math.log(2), -math.log(2)]], atol=1e-12)


def test_log_softmax_dtypes():
    assert log_softmax(np.zeros((2, 3), np.float32)).dtype == np.float32
    assert log_softmax(np.zeros((2, 3), np.int64)).dtype == np.float64


def test_cross_entropy_hand_values():
    assert softmax_cross_entropy(np.zeros((1, 2)), np.array([0])) == pytest.approx(math.log(2), rel=1e-14)
    lse = math.log(math.e + math.e**2 + math.e**3)
    logits = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    # Mean over the batch of -logp[y]: labels 2 and 0.
    expected = ((lse - 3) + (lse - 1)) / 2
    assert softmax_cross_entropy(logits, np.array([2, 0])) == pytest.approx(expected, rel=1e-14)
    # Smoothing mixes in the mean of -logp over all classes (true class included), as torch does.
    ls = 0.3
    smoothed = ((1 - ls) * (lse - 3) + ls * (lse - 2)) / 1
    assert softmax_cross_entropy(logits[:1], np.array([2]), ls) == pytest.approx(smoothed, rel=1e-14)


def test_uniform_logits_give_log_k_for_any_smoothing():
    for ls in (0.0, 0.1, 0.9):
        assert softmax_cross_entropy(np.full((4, 5), 3.0), np.arange(4), ls) == pytest.approx(math.log(5), rel=1e-14)


def test_cross_entropy_rejects_bad_input():
    with pytest.raises(ValueError):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError):
        softmax_cross_entropy(np.zeros(3), np.array([0]))


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.37])
def test_cross_entropy_matches_torch(ls):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(17, 7))
    labels = rng.integers(0, 7, size=17)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), label_smoothing=ls
    ).item()
    assert softmax_cross_entropy(logits, labels, ls) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(
        log_softmax(logits), torch.log_softmax(torch.from_numpy(logits), dim=1).numpy(), rtol=1e-12
    )


def test_masked_cross_entropy_averages_over_labelled_positions_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 5))
    labels = np.array([[4, -100, 0], [-100, -100, 2]])
    keep = labels != -100
    expect = np.mean([-log_softmax(logits[i, j])[labels[i, j]] for i, j in zip(*np.nonzero(keep))])
    assert masked_cross_entropy(logits, labels) == pytest.approx(expect, rel=1e-14)
    assert masked_cross_entropy(logits, np.full((2, 3), -100)) == 0.0  # nothing labelled: 0, not NaN
    assert masked_cross_entropy(logits, np.where(keep, labels, 7), ignore_index=7) == pytest.approx(expect, rel=1e-14)
    with pytest.raises(ValueError):
        masked_cross_entropy(logits, np.array([[5, 0, 0], [0, 0, 0]]))  # 5 is out of range for 5 classes
    with pytest.raises(ValueError):
        masked_cross_entropy(logits, labels[:, :2])


def test_masked_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(4, 9, 11))
    labels = np.where(rng.random((4, 9)) < 0.3, rng.integers(0, 11, (4, 9)), -100)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).reshape(-1, 11), torch.from_numpy(labels).reshape(-1), ignore_index=-100
    ).item()
    assert masked_cross_entropy(logits, labels) == pytest.approx(ref, rel=1e-12)
