"""Classification metrics (numpy only): used for real evaluation and as the parity oracle.

Token tasks: token_accuracy, and classification reports over tag sequences: entity_report (entity-level, the
conlleval / seqeval default-mode rules) and label_report (plain labels such as POS tags, per token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dualkit.core.losses import softmax_cross_entropy
from dualkit.core.transformer import IGNORE_INDEX


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels).astype(np.int64)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if n == 0:
        raise ValueError("empty batch")
    return y


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction correct; accepts (N, K) logits (argmax, first index on ties) or (N,) predictions."""
    x = np.asarray(logits_or_preds)
    preds = np.argmax(x, axis=1) if x.ndim == 2 else x
    if preds.ndim != 1:
        raise ValueError(f"expected (N, K) logits or (N,) predictions, got shape {x.shape}")
    y = _labels(labels, preds.shape[0])
    return float(np.mean(preds.astype(np.int64) == y))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction whose true class is among the k highest scores (k clipped to K).

    A sample counts when fewer than k classes score strictly higher than the true class, so classes
    tied at the boundary all count as in the top k (the tf.math.in_top_k rule; deterministic, unlike topk).
    """
    x = np.asarray(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = _labels(labels, x.shape[0])
    k = min(k, x.shape[1])
    true_score = x[np.arange(x.shape[0]), y][:, None]
    higher = np.sum(x > true_score, axis=1)
    return float(np.mean(higher < k))


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows are true classes, columns predicted ones."""
    p = np.asarray(preds).astype(np.int64)
    if p.ndim != 1:
        raise ValueError(f"preds must be (N,), got shape {p.shape}")
    y = _labels(labels, p.shape[0])
    for name, arr in (("preds", p), ("labels", y)):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def macro_f1(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 = 2TP / (2TP + FP + FN), over classes seen in labels or preds."""
    cm = confusion_matrix(preds, labels, num_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    # A class absent from both labels and preds has no defined F1; leaving it out matches sklearn's default.
    seen = denom > 0
    return float(np.mean(2 * tp[seen] / denom[seen]))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0
) -> dict[str, float]:
    """{"loss", "accuracy", "top5", "macro_f1"} for one set of (N, K) logits."""
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[1] != num_classes:
        raise ValueError(f"logits must be (N, {num_classes}), got shape {x.shape}")
    preds = np.argmax(x, axis=1)
    return {
        "loss": softmax_cross_entropy(x, labels, label_smoothing),
        "accuracy": accuracy(preds, labels),
        "top5": top_k_accuracy(x, labels, min(5, num_classes)),
        "macro_f1": macro_f1(preds, labels, num_classes),
    }


# -- token tasks ---------------------------------------------------------------------------------------------------


def token_accuracy(preds: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of labelled positions (label != ignore_index) predicted right. ``preds`` has labels' shape,
    or is logits with one more (last) axis, argmaxed. With no labelled position it is 0.0 (nothing scored)."""
    p = np.asarray(preds)
    y = np.asarray(labels).astype(np.int64)
    if p.shape == y.shape + p.shape[-1:] and p.ndim == y.ndim + 1:
        p = np.argmax(p, axis=-1)
    if p.shape != y.shape:
        raise ValueError(f"preds must have labels' shape {y.shape} (or be logits with one more axis), got {p.shape}")
    keep = y != ignore_index
    if not keep.any():
        return 0.0
    return float(np.mean(p[keep].astype(np.int64) == y[keep]))


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'); a bare 'B' -> ('B', '_') (seqeval's parsing)."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):  # an I- (or E-) after O or after a finished chunk
        return True
    return tag not in ("O", ".") and prev_type != type_  # ... or after another type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity chunks of one tag sequence as (type, start, end), ``end`` inclusive, in order.

    conlleval's chunk rules, as seqeval's default (non-strict) mode: a chunk starts at B- (or S-), at an I-
    (or E-) after O or after a chunk of another type, and ends before O, B-, S-, a type change, or after E-/S-.
    So ill-formed sequences still yield entities (["I-PER", "I-PER"] is one PER)."""
    chunks: list[tuple[str, int, int]] = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        t, type_ = _split_tag(tag)
        if _end_of_chunk(prev_tag, t, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, t, prev_type, type_):
            begin = i
        prev_tag, prev_type = t, type_
    return chunks


def _check_sequences(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true sequences but {len(pred)} predicted")
    for i, (t, p) in enumerate(zip(true, pred)):
        if len(t) != len(p):
            raise ValueError(f"sequence {i}: {len(t)} true tags but {len(p)} predicted")


def _report(names: list[str], tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-name rows, then "micro avg", "macro avg", "weighted avg", each {precision, recall, f1, support},
    with seqeval's / sklearn's zero_division=0 convention (an undefined ratio is 0)."""

    def prf(tp_, pred_, true_):
        precision = np.where(pred_ > 0, tp_ / np.maximum(pred_, 1), 0.0)
        recall = np.where(true_ > 0, tp_ / np.maximum(true_, 1), 0.0)
        denom = precision + recall
        return precision, recall, np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)

    def row(p, r, f, support):
        return {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(support)}

    p, r, f = prf(tp.astype(np.float64), pred.astype(np.float64), true.astype(np.float64))
    out = {name: row(p[i], r[i], f[i], true[i]) for i, name in enumerate(names)}
    mp, mr, mf = prf(np.float64(tp.sum()), np.float64(pred.sum()), np.float64(true.sum()))
    out["micro avg"] = row(mp, mr, mf, true.sum())
    # seqeval's macro mean over no names at all is NaN; here it is 0.0 like every other undefined figure
    out["macro avg"] = row(*(float(np.mean(a)) if len(names) else 0.0 for a in (p, r, f)), true.sum())
    if true.sum() > 0:
        out["weighted avg"] = row(*(float(np.average(a, weights=true)) for a in (p, r, f)), true.sum())
    else:  # no true instance: seqeval's zero_division value
        out["weighted avg"] = row(0.0, 0.0, 0.0, 0)
    return out


def entity_report(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Entity-level precision, recall, F1 and support per entity type (sorted), plus "micro avg", "macro avg"
    and "weighted avg" rows: seqeval's ``classification_report(true, pred, output_dict=True)`` in its default
    mode, with the key "f1" for its "f1-score". An entity counts as right when type, start and end all match."""
    _check_sequences(true, pred)
    gold: dict[str, set] = {}
    found: dict[str, set] = {}
    for s, (t, p) in enumerate(zip(true, pred)):
        for seqs, into in ((t, gold), (p, found)):
            for type_, start, end in get_entities(seqs):
                into.setdefault(type_, set()).add((s, start, end))
    names = sorted(set(gold) | set(found))
    tp = np.array([len(gold.get(n, set()) & found.get(n, set())) for n in names], dtype=np.int64)
    npred = np.array([len(found.get(n, ())) for n in names], dtype=np.int64)
    ntrue = np.array([len(gold.get(n, ())) for n in names], dtype=np.int64)
    return _report(names, tp, npred, ntrue)


def label_report(
    true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], labels: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Per-label precision, recall, F1 and support over tokens (plain labels, e.g. POS tags), plus "micro avg"
    (= token accuracy when ``labels`` covers every label), "macro avg" and "weighted avg" rows, as
    sklearn's precision_recall_fscore_support(zero_division=0). ``labels``: the rows, in order (default: every
    label seen in either, sorted); a listed label never seen gets zeros and counts in the macro mean."""
    _check_sequences(true, pred)
    g = [t for s in true for t in s]
    p = [t for s in pred for t in s]
    names = sorted(set(g) | set(p)) if labels is None else list(labels)
    index = {name: i for i, name in enumerate(names)}
    other = len(names)  # labels outside ``names`` are counted as one extra class, then dropped
    cm = (
        confusion_matrix(
            np.array([index.get(t, other) for t in p], dtype=np.int64),
            np.array([index.get(t, other) for t in g], dtype=np.int64),
            other + 1,
        )
        if g
        else np.zeros((other + 1, other + 1), dtype=np.int64)
    )
    tp = np.diag(cm)[:other]
    return _report(names, tp, cm.sum(axis=0)[:other], cm.sum(axis=1)[:other])
