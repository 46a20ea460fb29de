"""core.metrics: hand-computed cases and cross-checks against sklearn on random data."""

import numpy as np
import pytest

from dualkit.core.losses import softmax_cross_entropy
from dualkit.core.metrics import accuracy, classification_metrics, confusion_matrix, macro_f1, top_k_accuracy


def test_accuracy_accepts_logits_and_predictions():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 1])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(np.array([1, 0, 1, 0]), labels) == 0.5
    assert accuracy(np.array([1, 0, 0, 1]), labels) == 1.0


def test_top_k_hand_values_and_clipping():
    logits = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = np.array([2, 2])  # rank 3 in row 0, rank 2 in row 1
    assert top_k_accuracy(logits, labels, 1) == 0.0
    assert top_k_accuracy(logits, labels, 2) == 0.5
    assert top_k_accuracy(logits, labels, 3) == 1.0
    assert top_k_accuracy(logits, labels, 50) == 1.0  # k clipped to K
    with pytest.raises(ValueError):
        top_k_accuracy(logits, labels, 0)


def test_top_k_counts_ties_at_the_boundary():
    # Classes tied with the true class are not "strictly higher", so the sample counts (tf.math.in_top_k rule).
    assert top_k_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([1]), 1) == 1.0
    assert top_k_accuracy(np.array([[2.0, 1.0, 1.0]]), np.array([2]), 1) == 0.0


def test_confusion_matrix_hand_values():
    cm = confusion_matrix(np.array([0, 1, 1, 2, 2]), np.array([0, 1, 2, 2, 0]), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 1, 0], [0, 1, 1]])  # rows true, cols predicted
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_macro_f1_hand_values_leave_out_unseen_classes():
    preds = np.array([0, 0, 1, 1])
    labels = np.array([0, 1, 1, 1])
    # class 0: TP1 FP1 FN0 -> 2/3; class 1: TP2 FP0 FN1 -> 4/5; classes 2, 3 never seen -> left out.
    assert macro_f1(preds, labels, 4) == pytest.approx((2 / 3 + 4 / 5) / 2, rel=1e-15)
    # A class that is only predicted (never true) still counts, with F1 = 0.
    assert macro_f1(np.array([0, 2]), np.array([0, 0]), 3) == pytest.approx((2 / 3 + 0.0) / 2, rel=1e-15)


def test_classification_metrics_consistent():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    labels = rng.integers(0, 3, size=40)
    out = classification_metrics(logits, labels, 3, label_smoothing=0.1)
    assert set(out) == {"loss", "accuracy", "top5", "macro_f1"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["loss"] == softmax_cross_entropy(logits, labels, 0.1)
    assert out["accuracy"] == accuracy(logits, labels)
    assert out["top5"] == 1.0  # k = min(5, K) = 3 covers every class
    assert out["macro_f1"] == macro_f1(logits.argmax(1), labels, 3)
    with pytest.raises(ValueError):
        classification_metrics(logits, labels, 4)


@pytest.mark.parametrize("n,k_classes", [(200, 7), (8, 10)])
def test_metrics_match_sklearn(n, k_classes):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(n)
    logits = rng.normal(size=(n, k_classes))
    labels = rng.integers(0, k_classes, size=n)
    preds = logits.argmax(1)
    assert accuracy(logits, labels) == pytest.approx(skm.accuracy_score(labels, preds), rel=1e-15)
    # sklearn's default label set is the union of labels and preds: the same classes macro_f1 keeps.
    assert macro_f1(preds, labels, k_classes) == pytest.approx(skm.f1_score(labels, preds, average="macro"), rel=1e-12)
    np.testing.assert_array_equal(
        confusion_matrix(preds, labels, k_classes),
        skm.confusion_matrix(labels, preds, labels=np.arange(k_classes)),
    )
    for k in (1, 3, 5):
        ref = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(k_classes))
        assert top_k_accuracy(logits, labels, k) == pytest.approx(ref, rel=1e-15)
