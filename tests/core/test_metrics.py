"""core.metrics: hand-computed cases and cross-checks against sklearn on random data."""

import numpy as np
import pytest

from dualkit.core.losses import softmax_cross_entropy
from dualkit.core.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    entity_report,
    get_entities,
    label_report,
    macro_f1,
    token_accuracy,
    top_k_accuracy,
)


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


# -- token tasks ---------------------------------------------------------------------------------------------------


def test_token_accuracy_skips_ignored_positions():
    labels = np.array([[1, -100, 2], [0, 0, -100]])
    preds = np.array([[1, 5, 0], [0, 1, 9]])
    assert token_accuracy(preds, labels) == 2 / 4
    logits = np.eye(10)[preds]  # (2, 3, 10) one-hot logits argmax to preds
    assert token_accuracy(logits, labels) == 2 / 4
    assert token_accuracy(preds, np.full((2, 3), -100)) == 0.0
    assert token_accuracy(preds, np.where(labels == -100, 7, labels), ignore_index=7) == 2 / 4
    with pytest.raises(ValueError):
        token_accuracy(preds[:, :2], labels)


def test_get_entities_follows_conllevals_chunk_rules():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["O", "I-PER", "I-PER", "O"]) == [("PER", 1, 2)]  # an I- after O starts a chunk
    assert get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]  # ... so does a type change
    assert get_entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert get_entities(["S-A", "B-A", "E-A", "I-A"]) == [("A", 0, 0), ("A", 1, 2), ("A", 3, 3)]  # IOBES too
    assert get_entities(["O", "O"]) == [] and get_entities([]) == []


def test_entity_report_hand_values():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-PER"]]
    r = entity_report(true, pred)
    assert list(r) == ["LOC", "PER", "micro avg", "macro avg", "weighted avg"]
    assert r["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert r["PER"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    assert r["micro avg"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3), "support": 3}
    assert r["macro avg"]["precision"] == 0.75 and r["weighted avg"]["recall"] == pytest.approx(2 / 3)
    empty = entity_report([["O"]], [["O"]])
    assert list(empty) == ["micro avg", "macro avg", "weighted avg"]
    assert all(row == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for row in empty.values())
    with pytest.raises(ValueError):
        entity_report([["O", "O"]], [["O"]])


def _random_tags(rng: np.random.Generator, n: int, tags: list[str]) -> list[list[str]]:
    return [[tags[i] for i in rng.integers(0, len(tags), rng.integers(0, 12))] for _ in range(n)]


def test_entity_report_equals_seqevals_on_random_ill_formed_sequences():
    import warnings

    seqeval = pytest.importorskip("seqeval.metrics")
    from seqeval.metrics.sequence_labeling import get_entities as seqeval_entities

    rng = np.random.default_rng(0)
    bio = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-MISC"]
    iobes = bio + ["E-PER", "S-LOC", "E-ORG", "S-MISC"]
    for trial in range(150):
        tags = bio if trial % 3 else iobes
        n = int(rng.integers(1, 6))
        true = _random_tags(rng, n, tags)
        pred = [[tags[i] for i in rng.integers(0, len(tags), len(s))] for s in true]
        # half the time predictions copy most true tags, so there are true positives to count
        if trial % 2:
            pred = [[t if rng.random() < 0.8 else p for t, p in zip(ts, ps)] for ts, ps in zip(true, pred)]
        for s in true + pred:
            assert get_entities(s) == seqeval_entities(s)
        if not any(get_entities(s) for s in true + pred):
            continue  # seqeval's macro mean over no types is NaN (0.0 here; tested above)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = seqeval.classification_report(true, pred, output_dict=True)
        got = entity_report(true, pred)
        assert list(got) == list(ref)
        for name, row in ref.items():
            for key, mine in (("precision", "precision"), ("recall", "recall"), ("f1-score", "f1")):
                assert got[name][mine] == pytest.approx(float(row[key]), rel=1e-12, abs=1e-15), (trial, name, key)
            assert got[name]["support"] == int(row["support"])


def test_label_report_equals_sklearns():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    pos = ["NOUN", "VERB", "ADJ", "DET", "PUNCT"]
    for _ in range(20):
        true = _random_tags(rng, 5, pos)
        pred = [[pos[i] if rng.random() < 0.5 else t for t, i in zip(s, rng.integers(0, 5, len(s)))] for s in true]
        if not any(true):
            continue
        g, p = [t for s in true for t in s], [t for s in pred for t in s]
        labels = sorted(set(g) | set(p))
        got = label_report(true, pred)
        assert list(got)[: len(labels)] == labels
        for avg in (None, "micro", "macro", "weighted"):
            ref = precision_recall_fscore_support(g, p, labels=labels, average=avg, zero_division=0)
            rows = labels if avg is None else [f"{avg} avg"]
            for k, key in enumerate(("precision", "recall", "f1")):
                np.testing.assert_allclose([got[r][key] for r in rows], ref[k], rtol=1e-12, atol=1e-15)
        assert got["micro avg"]["recall"] == pytest.approx(np.mean(np.array(g) == np.array(p)), rel=1e-12)
    named = label_report([["A", "B"]], [["A", "A"]], labels=["B", "A", "C"])
    assert list(named)[:3] == ["B", "A", "C"] and named["C"]["support"] == 0 and named["B"]["recall"] == 0.0
    assert named["A"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
