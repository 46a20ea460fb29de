"""The neutral token-classification driver: core's tagged sentences and tokenizer -> a backend's TokenTagger.

The first subword of each word carries the word's tag; every other position is ignored in the loss and the
metrics (core/text.py). Evaluation maps the predictions back to words and reports entity-level precision, recall
and F1 with conlleval/seqeval semantics (core.metrics.entity_report) for BIO tags, per-label figures otherwise
(plain labels such as POS tags), and token accuracy. A run folder: tasks/transformer.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, distributed, registry
from dualkit.core.errors import DataError, SpecError
from dualkit.core.losses import masked_cross_entropy
from dualkit.core.metrics import entity_report, label_report, token_accuracy
from dualkit.core.runs import MODEL_FILE, SPEC_FILE, one_writer, prepare_run_dir, write_json
from dualkit.core.runstate import RunState
from dualkit.core.specs import save_json
from dualkit.core.text import TokenData, encode_tagged, eval_text_batches, label_list, load_tag_corpus, text_batches
from dualkit.core.transformer import init_bert
from dualkit.tasks.base import PortReport
from dualkit.tasks.loop import EpochTask, RunLog, check_shards, data_fingerprint, new_state, run_epochs, writer_dir
from dualkit.tasks.tag_spec import TagRunSpec
from dualkit.tasks.transformer import (
    TOKENIZER_DIR,
    InitSource,
    TextData,
    adopt_encoder,
    build_model,
    build_tokenizer,
    checkpoint_meta,
    init_source,
    load_text_run,
    model_for,
    open_text_resume,
    port_probe,
    port_run,
    real_tokens,
    shard_scale,
)


@dataclass
class TagResult:
    step_losses: list[float]
    history: list[dict[str, Any]]
    test: dict[str, Any]
    weights: dict[str, np.ndarray]
    sequences_per_s: float
    tokens_per_s: float
    wall_s: float
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_data(spec: TagRunSpec, tokenizer: Any = None, labels: list[str] | None = None) -> TextData:
    """The tagged corpus's splits, the tokenizer (``tokenizer``, the spec's, or built from the training words)
    and the label list (``labels``: a run's own; else the training split's), every split encoded."""
    corpus = load_tag_corpus(spec.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(spec.tokenizer, [" ".join(words) for words, _ in corpus.train])
    labels = labels or label_list(corpus.train)
    known = set(labels)
    for split, sentences in (("validation", corpus.val), ("test", corpus.test)):
        unseen = sorted({t for _, tags in sentences for t in tags} - known)
        if unseen:
            raise DataError(
                f"the {split} split has tag(s) the training split lacks: {', '.join(unseen[:5])}; a model cannot "
                "predict a tag it never saw - add sentences with them to the training file"
            )
    enc = [encode_tagged(s, tokenizer, labels, spec.data.max_length) for s in (corpus.train, corpus.val, corpus.test)]
    train = enc[0]
    if spec.data.limit_train:
        train = train.subset(np.arange(min(spec.data.limit_train, len(train))))
    return TextData(train, enc[1], enc[2], tokenizer, list(labels))


def word_tags(
    logits_or_ids: np.ndarray, labels: np.ndarray, names: list[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag sequences per sequence, one tag per word (its first subword's position)."""
    pred = logits_or_ids.argmax(-1) if logits_or_ids.ndim == 3 else logits_or_ids
    gold_seqs, pred_seqs = [], []
    for p, g in zip(pred, labels, strict=True):
        keep = g != -100
        gold_seqs.append([names[i] for i in g[keep]])
        pred_seqs.append([names[i] for i in p[keep]])
    return gold_seqs, pred_seqs


def is_entity_scheme(names: list[str]) -> bool:
    """Entity tags (O, B-X, I-X): entity-level metrics apply; anything else is a plain label set."""
    return all(n == "O" or n[:2] in ("B-", "I-") for n in names) and any(n != "O" for n in names)


def evaluate_tags(model: Any, data: TokenData, names: list[str], batch_size: int) -> dict[str, Any]:
    """Loss, token accuracy and the classification report (entity-level for BIO tags, per label otherwise) of
    eval-mode predictions over a split."""
    if len(data) == 0:
        return {}
    preds, losses, counts = [], [], []
    for idx in eval_text_batches(len(data), batch_size):
        logits = model.logits(data.input_ids[idx], data.attention_mask[idx])
        n = int((data.labels[idx] != -100).sum())
        if n:
            losses.append(masked_cross_entropy(logits, data.labels[idx]) * n)
            counts.append(n)
        preds.append(logits.argmax(-1))
    pred = np.concatenate(preds)
    gold_seqs, pred_seqs = word_tags(pred, data.labels, names)
    out: dict[str, Any] = {
        "loss": float(sum(losses) / max(sum(counts), 1)),
        "token_accuracy": token_accuracy(pred, data.labels),
        "words": int(sum(counts)),
    }
    if is_entity_scheme(names):
        report = entity_report(gold_seqs, pred_seqs)
        out.update(f1=report["micro avg"]["f1"], report=report, report_kind="entity")
    else:
        report = label_report(gold_seqs, pred_seqs, names)
        out.update(f1=report["macro avg"]["f1"], report=report, report_kind="label")
    return out


def train(spec: Any, backend_name: str | None = None, *, run_dir: Path | None = None, **kwargs: Any) -> TagResult:
    """See :func:`_train`; on several workers rank 0 alone writes (and locks) the run folder."""
    return _train(spec, backend_name, run_dir=writer_dir(run_dir), **kwargs)


@one_writer
def _train(
    spec: TagRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    init_from: Path | InitSource | None = None,
    init_weights: dict[str, np.ndarray] | None = None,
    data: TextData | None = None,
) -> TagResult:
    """Train a tagger on one backend: from scratch, or with the encoder (and vocabulary) of ``init_from`` (an
    MLM run or a Hugging Face BERT folder, or one already read; the tag head starts fresh). ``init_weights``
    replace initial tensors by name; ``data`` reuses prepared data (parity and benchmarks)."""
    src = init_source(init_from) if isinstance(init_from, (str, Path)) else init_from
    if src is not None:
        spec = replace(spec, model=adopt_encoder(spec.model, src))
        if spec.data.max_length > spec.model.max_positions:  # checked on the spec's own model before adopting
            raise SpecError(
                f"--init-from {src.path}: its encoder takes at most {spec.model.max_positions} positions, but "
                f"data.max_length={spec.data.max_length}; set --set data.max_length={spec.model.max_positions}"
            )
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    data = data or prepare_data(spec, src.tokenizer if src else None)
    check_shards(spec, len(data.train), distributed.current())
    weights = init_bert(spec.model, data.vocab_size, "tag", len(data.labels), spec.seed, spec.dtype)
    if src is not None:
        weights.update({k: v.astype(spec.dtype) for k, v in src.encoder.items() if k in weights})
    if init_weights:
        weights.update({k: np.asarray(v).astype(spec.dtype) for k, v in init_weights.items()})
    model = build_model(
        backend, spec.model, "tag", data.vocab_size, len(data.labels), weights, spec.optim, spec.dtype, device
    )
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
        data.tokenizer.save(run_dir / TOKENIZER_DIR)
    state = new_state(spec.task, spec.seed)
    result = fit(spec, backend, device, model, data, state, run_dir, progress)
    if src is not None:
        result.extra["init_from"] = str(src.path)
    return result


def fit(
    spec: TagRunSpec,
    backend: ModuleType,
    device: str,
    model: Any,
    data: TextData,
    state: RunState,
    run_dir: Path | None,
    progress: bool,
) -> TagResult:
    """Train from ``state`` on through the run loop, then evaluate on the test split and write result.json."""
    log = RunLog(run_dir)
    meta = checkpoint_meta(spec, backend, data, "tag", data_fingerprint=data_fingerprint(data)) if run_dir else {}
    pad = data.tokenizer.pad_id

    def prepare(xb: np.ndarray, yb: np.ndarray) -> tuple[Any, ...]:
        return xb, (xb != pad).astype(np.int64), yb, shard_scale(yb, spec.dtype)

    def record(rec: dict[str, Any]) -> None:
        ev = evaluate_tags(model, data.val, data.labels, spec.train.eval_batch_size)
        rec.update({f"val_{k}": ev[k] for k in ("loss", "token_accuracy", "f1") if k in ev})

    def save_model(epoch: int, step: int) -> None:
        checkpoint.save(
            run_dir / MODEL_FILE,
            model.get_weights(),
            checkpoint_meta(spec, backend, data, "tag", epoch=epoch, step=step),
        )

    task = EpochTask(
        model=model,
        step=lambda ids, mask, labels, scale, lr: model.train_step(ids, mask, labels, lr, scale),
        prepare=prepare,
        record=record,
        save_model=save_model,
        loss_name="tagging loss",
        desc="epoch",
        batches=lambda rng: text_batches(data.train, spec.train.batch_size, rng),
    )
    try:
        out = run_epochs(spec, backend.NAME, device, task, data, None, state, log, meta, progress, spec.max_steps)
        t_after = time.perf_counter()
        test = evaluate_tags(model, data.test, data.labels, spec.train.eval_batch_size)
        result = TagResult(
            step_losses=list(state.step_losses),
            history=state.history,
            test=test,
            weights=model.get_weights(),
            sequences_per_s=out.images_per_s,
            tokens_per_s=out.images_per_s * real_tokens(data.train),
            wall_s=out.wall_s,
            run_dir=run_dir,
            extra={"segments": out.segments},
        )
        log.result(
            spec,
            backend,
            device,
            out.segments,
            steps=state.step,
            epochs=len(state.history),
            wall_s=out.wall_s + time.perf_counter() - t_after,
            tokens_per_s=result.tokens_per_s,
            labels=data.labels,
            test=test,
            history=state.history,
        )
    finally:
        log.close()
    return result


def evaluate_run(run_dir: Path, backend_name: str | None, device: str, split: str = "test") -> dict[str, Any]:
    """A tag run's classification report on ``split`` in any backend; writes eval-<backend>-<split>.json."""
    run = load_text_run(run_dir, "tag")
    data = prepare_data(run.spec, run.tokenizer, run.labels)
    model, name = model_for(run, backend_name, device, "tag")
    parts = {"test": data.test, "val": data.val, "train": data.train}
    part = parts[split]
    if len(part) == 0:  # data.test_fraction or data.val_fraction 0
        others = " or ".join(f"--split {k}" for k, v in parts.items() if k != split and len(v))
        raise DataError(f"the {split} split of this run's data is empty; evaluate {others}")
    res = {
        "backend": name,
        "trained_in": run.meta["backend"],
        "split": split,
        **evaluate_tags(model, part, run.labels, run.spec.train.eval_batch_size),
    }
    write_json(Path(run_dir) / f"eval-{name}-{split}.json", res)
    return res


def resume(run_dir: Path, backend_name: str | None = None, **kwargs: Any) -> TagResult:
    """See :func:`_resume`; on several workers rank 0 holds the run folder, the others only read it."""
    go = _resume_locked if distributed.current().writer else _resume
    return go(run_dir, backend_name, **kwargs)


def _resume(
    run_dir: Path,
    backend_name: str | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> TagResult:
    """Continue a tag run from its newest run checkpoint, in place, then evaluate it: in the backend that wrote it,
    or in the other one (hand-over)."""
    r, model = open_text_resume(run_dir, "tag", overrides, backend_name, device, prepare_data, ("batches",))
    resumed = r.begin(progress)  # every check passed: from here on the run folder is written
    result = fit(r.spec, r.backend, r.device, model, r.data, r.state, writer_dir(r.req.run_dir), progress)
    result.extra.update(resumed)
    return result


_resume_locked = one_writer(create=False)(_resume)


def port(run_dir: Path, to: str, out: Path, device: str = "cpu") -> PortReport:
    """``dualkit port`` of a tag run (tasks/transformer.port_run), checked on the test sentences."""
    run = load_text_run(run_dir, "tag")
    return port_run(run, port_probe(prepare_data(run.spec, run.tokenizer, run.labels)), "tag", to, out, device)
