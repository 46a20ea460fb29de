"""The neutral masked-language-model driver: core's text, tokenizer and BERT masks -> a backend's MaskedLM.

Masks are drawn by core (core.masking.mlm_mask, BERT's 15% with 80/10/10) from the run's ``masks`` stream, so
both backends train on the same masked batches. A run folder: tasks/transformer.py. The outcome is the masked-token
accuracy on held-out text (the test split, fixed masks), next to the unigram guess (always the most frequent
training token) as its baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, corpora, distributed, registry
from dualkit.core.batches import make_rng
from dualkit.core.errors import DataError, SpecError
from dualkit.core.losses import masked_cross_entropy
from dualkit.core.masking import mlm_mask
from dualkit.core.runs import MODEL_FILE, SPEC_FILE, one_writer, prepare_run_dir, write_json
from dualkit.core.runstate import RunState
from dualkit.core.specs import MlmSpec, apply_overrides, save_json
from dualkit.core.text import (
    TokenData,
    encode_documents,
    eval_text_batches,
    paragraphs,
    read_text_folder,
    split_indices,
    text_batches,
)
from dualkit.core.transformer import init_bert
from dualkit.tasks.base import PortReport
from dualkit.tasks.loop import EpochTask, RunLog, check_shards, data_fingerprint, new_state, run_epochs, writer_dir
from dualkit.tasks.mlm_spec import MlmRunSpec
from dualkit.tasks.transformer import (
    TOKENIZER_DIR,
    InitSource,
    TextData,
    adopt_encoder,
    build_model,
    build_tokenizer,
    checkpoint_meta,
    load_text_run,
    model_for,
    open_text_resume,
    port_probe,
    port_run,
    real_tokens,
    shard_scale,
)

EVAL_MASK_SEED = 0  # validation and test masks do not move with the training seed
VAL_SEQUENCES = 256  # the per-epoch validation numbers use the first N validation sequences


@dataclass
class MlmResult:
    step_losses: list[float]
    history: list[dict[str, Any]]
    weights: dict[str, np.ndarray]
    sequences_per_s: float
    tokens_per_s: float
    wall_s: float
    evaluation: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def documents(spec: MlmRunSpec) -> list[str]:
    """The corpus as documents, split at blank lines (paragraphs: the unit the held-out splits take whole)."""
    if spec.data.name == "stdlib":
        return [p for doc in corpora.stdlib_documents(spec.data.limit_words) for p in paragraphs(doc)]
    if not spec.data.root:
        raise DataError(f"data.name={spec.data.name} needs the folder of its .txt files: --set data.root=FOLDER")
    return read_text_folder(Path(spec.data.root))


def split_documents(docs: list[str], spec: MlmRunSpec) -> tuple[list[str], list[str], list[str]]:
    """Whole documents to train, validation and test (core.text.split_indices: the same split for every seed)."""
    parts = split_indices(len(docs), spec.data.val_fraction, spec.data.test_fraction, "mlm/split")
    return tuple([docs[i] for i in idx] for idx in parts)


def prepare_data(spec: MlmRunSpec, tokenizer: Any = None) -> TextData:
    """The corpus split by documents, the tokenizer (the spec's, ``tokenizer``, or built from the training
    documents) and every split encoded as [CLS] ... [SEP] blocks of data.max_length tokens."""
    train_docs, val_docs, test_docs = split_documents(documents(spec), spec)
    tok = tokenizer if tokenizer is not None else build_tokenizer(spec.tokenizer, train_docs)
    enc = [encode_documents(d, tok, spec.data.max_length) for d in (train_docs, val_docs, test_docs)]
    train = enc[0]
    if spec.data.limit_train:
        train = train.subset(np.arange(min(spec.data.limit_train, len(train))))
    return TextData(train, enc[1], enc[2], tok)


def masks_for(
    ids: np.ndarray, data: TextData, spec: MlmSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masked inputs and labels (-100 where nothing is predicted) for a batch of ids."""
    tok = data.tokenizer
    return mlm_mask(ids, tok.special_ids, tok.mask_id, len(tok), spec, rng)


def fixed_masks(data: TokenData, text: TextData, spec: MlmSpec, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks of a whole evaluation split, the same for every seed and backend."""
    return masks_for(data.input_ids, text, spec, make_rng(EVAL_MASK_SEED, stream))


def evaluate_mlm(model: Any, data: TokenData, text: TextData, spec: MlmRunSpec, stream: str) -> dict[str, float]:
    """Masked-token loss and accuracy of eval-mode logits over a split with fixed masks, and the unigram guess's
    accuracy on the same positions."""
    if len(data) == 0:
        return {}
    ids, labels = fixed_masks(data, text, spec.mlm, stream)
    loss_sum, correct, count = 0.0, 0, 0
    for idx in eval_text_batches(len(data), spec.train.eval_batch_size):
        logits = model.logits(ids[idx], data.attention_mask[idx])
        n = int((labels[idx] != -100).sum())
        if n:
            loss_sum += masked_cross_entropy(logits, labels[idx]) * n
            keep = labels[idx] != -100
            correct += int((logits.argmax(-1)[keep] == labels[idx][keep]).sum())
            count += n
    unigram = most_frequent_token(text)
    keep = labels != -100
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "unigram_accuracy": float((labels[keep] == unigram).mean()) if count else float("nan"),
        "masked_tokens": count,
    }


def most_frequent_token(text: TextData) -> int:
    """The most frequent non-special token of the training split: the unigram guess."""
    ids = text.train.input_ids[text.train.attention_mask.astype(bool)]
    counts = np.bincount(ids, minlength=text.vocab_size)
    counts[list(text.tokenizer.special_ids)] = 0
    return int(counts.argmax())


def pretrain(spec: Any, backend_name: str | None = None, *, run_dir: Path | None = None, **kwargs: Any) -> MlmResult:
    """See :func:`_pretrain`; on several workers rank 0 alone writes (and locks) the run folder."""
    return _pretrain(spec, backend_name, run_dir=writer_dir(run_dir), **kwargs)


@one_writer
def _pretrain(
    spec: MlmRunSpec,
    backend_name: str | None = None,
    *,
    run_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = False,
    evaluate: bool = True,
    init_weights: dict[str, np.ndarray] | None = None,
    data: TextData | None = None,
) -> MlmResult:
    """MLM-pretrain ``spec``'s model on one backend, then (``evaluate``) measure it on the held-out test text.
    ``init_weights`` replace initial tensors by name (parity's rounding envelope); ``data`` reuses prepared data
    (parity and benchmarks: the same tokenizer and blocks for both backends)."""
    if evaluate:
        downstream_spec(spec)  # refused now, not after the pretraining
    backend = registry.get_backend(backend_name, device)
    device = registry.resolve_device(backend, device)
    backend.seed(spec.seed)
    data = data or prepare_data(spec)
    check_shards(spec, len(data.train), distributed.current())
    weights = init_bert(spec.model, data.vocab_size, "mlm", 0, spec.seed, spec.dtype)
    if init_weights:
        weights.update({k: np.asarray(v).astype(spec.dtype) for k, v in init_weights.items()})
    model = build_model(backend, spec.model, "mlm", data.vocab_size, 0, weights, spec.optim, spec.dtype, device)
    if run_dir is not None:
        run_dir = prepare_run_dir(Path(run_dir), overwrite)
        save_json(spec, run_dir / SPEC_FILE)
        data.tokenizer.save(run_dir / TOKENIZER_DIR)
    state = new_state(spec.task, spec.seed, ("batches", "masks"))
    return fit(spec, backend, device, model, data, state, run_dir, progress, evaluate)


def fit(
    spec: MlmRunSpec,
    backend: ModuleType,
    device: str,
    model: Any,
    data: TextData,
    state: RunState,
    run_dir: Path | None,
    progress: bool,
    evaluate: bool,
) -> MlmResult:
    """Pretrain from ``state`` on through the run loop, then evaluate and write result.json."""
    mask_rng = make_rng(spec.seed, "masks")
    log = RunLog(run_dir)
    meta = checkpoint_meta(spec, backend, data, "mlm", data_fingerprint=data_fingerprint(data)) if run_dir else {}
    val = data.val.subset(np.arange(min(VAL_SEQUENCES, len(data.val))))

    def prepare(xb: np.ndarray, _: np.ndarray) -> tuple[Any, ...]:
        # masks for the whole global batch (every worker draws alike, then trains on its shard)
        ids, labels = masks_for(xb, data, spec.mlm, mask_rng)
        return ids, (xb != data.tokenizer.pad_id).astype(np.int64), labels, shard_scale(labels, spec.dtype)

    def record(rec: dict[str, Any]) -> None:
        rec.update({f"val_{k}": v for k, v in evaluate_mlm(model, val, data, spec, "mlm/val").items()})

    def save_model(epoch: int, step: int) -> None:
        checkpoint.save(
            run_dir / MODEL_FILE,
            model.get_weights(),
            checkpoint_meta(spec, backend, data, "mlm", epoch=epoch, step=step),
        )

    task = EpochTask(
        model=model,
        step=lambda ids, mask, labels, scale, lr: model.train_step(ids, mask, labels, lr, scale),
        prepare=prepare,
        record=record,
        save_model=save_model,
        streams={"masks": mask_rng},
        loss_name="MLM loss",
        verb="pretraining",
        desc="pretrain",
        batches=lambda rng: text_batches(data.train, spec.train.batch_size, rng),
    )
    try:
        out = run_epochs(spec, backend.NAME, device, task, data, None, state, log, meta, progress, spec.max_steps)
        t_after = time.perf_counter()
        result = MlmResult(
            step_losses=list(state.step_losses),
            history=state.history,
            weights=model.get_weights(),
            sequences_per_s=out.images_per_s,
            tokens_per_s=out.images_per_s * real_tokens(data.train),
            wall_s=out.wall_s,
            run_dir=run_dir,
            extra={"segments": out.segments},
        )
        if evaluate:
            result.evaluation = evaluate_mlm(model, data.test, data, spec, "mlm/test")
            result.evaluation["downstream"] = downstream(
                spec, backend.NAME, device, result.weights, data.tokenizer, progress
            )
        log.result(
            spec,
            backend,
            device,
            out.segments,
            steps=state.step,
            epochs=len(state.history),
            pretrain_wall_s=out.wall_s,
            wall_s=out.wall_s + time.perf_counter() - t_after,
            tokens_per_s=result.tokens_per_s,
            vocab_size=data.vocab_size,
            train_sequences=len(data.train),
            test=result.evaluation,
            history=state.history,
        )
    finally:
        log.close()
    return result


def downstream_spec(spec: MlmRunSpec) -> Any:
    """spec.downstream's tag spec (None when downstream.preset is ""), with the pretraining's seed and dtype.
    Pretraining checks it before it starts: a preset that is not a tag task would otherwise fail after it."""
    if not spec.downstream.preset:
        return None
    from dualkit.tasks import presets
    from dualkit.tasks.tag_spec import TagRunSpec

    tag_spec = presets.load(spec.downstream.preset)
    if not isinstance(tag_spec, TagRunSpec):
        raise SpecError(
            f"downstream.preset={spec.downstream.preset!r} is a {tag_spec.task!r} preset; name a tag preset "
            "(e.g. bert-tag-tiny), or set downstream.preset='' for no downstream evaluation"
        )
    overrides = [f"seed={spec.seed}", f"dtype={spec.dtype}"]
    if spec.downstream.max_steps:
        overrides.append(f"max_steps={spec.downstream.max_steps}")
    tag_spec = apply_overrides(tag_spec, overrides)
    if tag_spec.data.max_length > spec.model.max_positions:  # the pretrained encoder's length is the limit
        tag_spec = replace(tag_spec, data=replace(tag_spec.data, max_length=spec.model.max_positions))
    return tag_spec


def downstream(
    spec: MlmRunSpec, backend: str, device: str, weights: dict[str, np.ndarray], tokenizer: Any, progress: bool
) -> dict[str, Any]:
    """The pretraining's outcome on a labelled task: spec.downstream's tag preset fine-tuned from the pretrained
    encoder and from random init, same budget, vocabulary and architecture: test F1 of each and the margin in
    points. Empty when spec.downstream.preset is ""."""
    tag_spec = downstream_spec(spec)
    if tag_spec is None:
        return {}
    from dualkit.tasks import tag

    encoder = {k: v for k, v in weights.items() if k.startswith("bert.")}
    src = InitSource(Path(f"<{spec.task} pretraining>"), encoder, tokenizer, spec.model, "mlm run")
    data = tag.prepare_data(tag_spec, tokenizer)
    pretrained = tag.train(tag_spec, backend, device=device, progress=progress, init_from=src, data=data)
    # random init: the same architecture and vocabulary, the encoder from the tag spec's own seeded init
    random_spec = replace(tag_spec, model=adopt_encoder(tag_spec.model, src))
    random = tag.train(random_spec, backend, device=device, progress=progress, data=data)
    return {
        "preset": spec.downstream.preset,
        "steps": len(pretrained.step_losses),
        "pretrained_f1": pretrained.test["f1"],
        "random_f1": random.test["f1"],
        "margin_points": 100.0 * (pretrained.test["f1"] - random.test["f1"]),
        "pretrained_token_accuracy": pretrained.test["token_accuracy"],
        "random_token_accuracy": random.test["token_accuracy"],
    }


def evaluate_run(
    run_dir: Path, backend_name: str | None = None, device: str = "cpu", split: str = "test"
) -> dict[str, Any]:
    """Masked-token accuracy of an MLM run's model in any backend on ``split`` (fixed masks); writes
    eval-<backend>.json (the test split) or eval-<backend>-<split>.json."""
    run = load_text_run(run_dir, "mlm")
    data = prepare_data(run.spec, run.tokenizer)
    parts = {"test": data.test, "val": data.val, "train": data.train}
    part = parts[split]
    if len(part) == 0:  # data.test_fraction or data.val_fraction 0
        others = " or ".join(f"--split {k}" for k, v in parts.items() if k != split and len(v))
        raise DataError(f"the {split} split of this run's data is empty; evaluate {others}")
    model, name = model_for(run, backend_name, device, "mlm")
    res = {
        "backend": name,
        "trained_in": run.meta["backend"],
        "split": split,
        **evaluate_mlm(model, part, data, run.spec, f"mlm/{split}"),
    }
    write_json(Path(run_dir) / (f"eval-{name}.json" if split == "test" else f"eval-{name}-{split}.json"), res)
    return res


def resume(run_dir: Path, backend_name: str | None = None, **kwargs: Any) -> MlmResult:
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
) -> MlmResult:
    """Continue an MLM run from its newest run checkpoint, in place, then evaluate it: in the backend that wrote
    it, or in the other one (hand-over; masks and batches continue from the saved streams)."""
    r, model = open_text_resume(
        run_dir, "mlm", overrides, backend_name, device, lambda s, tok, _: prepare_data(s, tok), ("batches", "masks")
    )
    downstream_spec(r.spec)  # the spec.json may name a preset that has gone since
    resumed = r.begin(progress)  # every check passed: from here on the run folder is written
    result = fit(
        r.spec, r.backend, r.device, model, r.data, r.state, writer_dir(r.req.run_dir), progress, evaluate=True
    )
    result.extra.update(resumed)
    return result


_resume_locked = one_writer(create=False)(_resume)


def port(run_dir: Path, to: str, out: Path, device: str = "cpu") -> PortReport:
    """``dualkit port`` of an MLM run (tasks/transformer.port_run), checked on held-out text."""
    run = load_text_run(run_dir, "mlm")
    return port_run(run, port_probe(prepare_data(run.spec, run.tokenizer)), "mlm", to, out, device)
