"""What the two transformer tasks (``mlm`` pretraining, ``tag`` token classification) share: the tokenizer a run
uses, the run folder's tokenizer and model files, the backend model objects, and starting from another run or a
Hugging Face folder (``--init-from``).

A transformer run folder holds spec.json, ``tokenizer/`` (vocab.txt and tokenizer.json: the vocabulary the ids
mean), model.safetensors (canonical weights, Hugging Face BERT's names: core/transformer.py), metrics.jsonl,
TensorBoard events, result.json and checkpoints/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import checkpoint, distributed, registry
from dualkit.core.errors import CheckpointError, DataError, SpecError
from dualkit.core.runs import MODEL_FILE, SPEC_FILE, require_run_dir
from dualkit.core.specs import TokenizerSpec, TransformerSpec, load_json, to_dict
from dualkit.core.text import TokenData
from dualkit.core.tokenizer import WordPiece
from dualkit.core.transformer import IGNORE_INDEX, WORD_EMBEDDINGS, bert_shapes
from dualkit.tasks.base import PortReport
from dualkit.tasks.loop import EpochResume, open_epoch_resume

TOKENIZER_DIR = "tokenizer"
TOKENS_PER_S = "tokens/s"


@dataclass
class TextData:
    """A transformer run's encoded splits and the tokenizer that made them; ``labels``: the tag names (tag
    task), whose index is the label id. ``x_train``/``y_train`` are what the run loop counts and fingerprints."""

    train: TokenData
    val: TokenData
    test: TokenData
    tokenizer: WordPiece
    labels: list[str] | None = None

    @property
    def x_train(self) -> np.ndarray:
        return self.train.input_ids

    @property
    def y_train(self) -> np.ndarray:
        return self.train.labels

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


def build_tokenizer(spec: TokenizerSpec, texts: list[str]) -> WordPiece:
    """The spec's vocabulary (a file or folder), or one built from ``texts`` (the training split only)."""
    if spec.vocab:
        return WordPiece.load(Path(spec.vocab), lowercase=spec.lowercase)
    return WordPiece.build(texts, spec.vocab_size, spec.min_frequency, spec.lowercase)


def real_tokens(data: TokenData) -> float:
    """Mean non-padding tokens per sequence (tokens/s = sequences/s times this)."""
    return float(data.attention_mask.sum() / max(1, len(data.attention_mask)))


def shard_scale(labels: np.ndarray, dtype: str) -> np.ndarray | None:
    """On several workers, the scale of a shard's summed loss (one value per sequence of the global batch:
    replicas / the global batch's labelled count), so that the workers' mean loss and gradient are the global
    batch's mean over its labelled tokens, as on one worker; shards hold unequal numbers of labelled tokens, so
    the mean of the shards' own means would not be. None on one worker (the model takes its plain mean)."""
    world = distributed.current()
    if not world.distributed:
        return None
    count = int((labels != IGNORE_INDEX).sum())
    return np.full(len(labels), world.replicas / max(count, 1), dtype=dtype)


def build_model(
    backend: ModuleType,
    model: TransformerSpec,
    head: str,
    vocab_size: int,
    num_labels: int,
    weights: dict[str, np.ndarray],
    optim: Any,
    dtype: str,
    device: str,
) -> Any:
    """The backend's MLM model (``head="mlm"``) or token tagger (``head="tag"``) from canonical weights."""
    if head == "mlm":
        return backend.MaskedLM(model, vocab_size, weights, optim, dtype, device)
    return backend.TokenTagger(model, vocab_size, num_labels, weights, optim, dtype, device)


def checkpoint_meta(spec: Any, backend: ModuleType, data: TextData, head: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": head,  # "mlm" or "tag"
        "spec": to_dict(spec),
        "backend": backend.NAME,
        "versions": backend.versions(),
        "vocab_size": data.vocab_size,
        "tokenizer": data.tokenizer.fingerprint(),
        "labels": list(data.labels or []),
        **extra,
    }


@dataclass
class LoadedTextRun:
    """A transformer run folder's spec, canonical weights, checkpoint metadata and tokenizer."""

    run_dir: Path
    spec: Any
    weights: dict[str, np.ndarray]
    meta: dict[str, Any]
    tokenizer: WordPiece

    @property
    def labels(self) -> list[str]:
        return list(self.meta.get("labels") or [])


def load_tokenizer(run_dir: Path, meta: dict[str, Any]) -> WordPiece:
    """The run's own tokenizer (RUN/tokenizer/), checked against the fingerprint its checkpoint recorded."""
    folder = Path(run_dir) / TOKENIZER_DIR
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is missing: the run's vocabulary is gone (restore the folder from a copy)")
    tok = WordPiece.load(folder)
    if meta.get("tokenizer") not in (None, tok.fingerprint()):
        raise CheckpointError(
            f"{folder} is not the vocabulary {Path(run_dir) / MODEL_FILE} was trained with (fingerprints differ); "
            "restore the run's own tokenizer folder"
        )
    return tok


def load_text_run(run_dir: Path, head: str) -> LoadedTextRun:
    """A ``head`` run's spec, canonical model and tokenizer, checked to fit one another."""
    run_dir = require_run_dir(run_dir)
    spec = load_json(run_dir / SPEC_FILE)
    weights, meta = checkpoint.load(run_dir / MODEL_FILE)
    if meta.get("kind") != head:
        raise CheckpointError(
            f"{run_dir / MODEL_FILE} holds a {meta.get('kind')!r} model, not the run's {head!r} model; "
            f"{SPEC_FILE} and the model come from different runs (restore the run's own spec.json)"
        )
    tok = load_tokenizer(run_dir, meta)
    shapes = bert_shapes(spec.model, len(tok), head, len(meta.get("labels") or []))
    checkpoint.check_fits(weights, shapes, f"the run's {head} model")
    return LoadedTextRun(run_dir, spec, weights, meta, tok)


def model_for(run: LoadedTextRun, backend_name: str | None, device: str, head: str) -> tuple[Any, str]:
    """The run's model in ``backend_name`` (None: the one that trained it), and that backend's name."""
    backend = registry.get_backend(backend_name or run.meta["backend"], device)
    model = build_model(
        backend,
        run.spec.model,
        head,
        len(run.tokenizer),
        len(run.labels),
        run.weights,
        run.spec.optim,
        run.spec.dtype,
        registry.resolve_device(backend, device),
    )
    return model, backend.NAME


@dataclass
class InitSource:
    """Where ``--init-from`` starts a tagger: the encoder's canonical weights and the vocabulary they go with."""

    path: Path
    encoder: dict[str, np.ndarray]
    tokenizer: WordPiece
    model: TransformerSpec
    kind: str  # "mlm run", "tag run" or "hugging face folder"


def init_source(path: Path) -> InitSource:
    """An MLM (or tag) run folder, or a local Hugging Face BERT folder (config.json + model.safetensors +
    vocab.txt), as the encoder to start from."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"--init-from {path}: no such folder; give a `dualkit pretrain` mlm run folder or a Hugging Face BERT "
            "folder (config.json, model.safetensors, vocab.txt)"
        )
    if (path / "config.json").is_file():
        from dualkit.core import hf

        m = hf.read_hf_folder(path)
        tok = WordPiece.load(m.tokenizer_path) if m.tokenizer_path else None
        if tok is None:
            raise DataError(f"{path} has no vocab.txt or tokenizer.json; copy the model's tokenizer files beside it")
        encoder = {k: v for k, v in m.weights.items() if k.startswith("bert.")}
        if len(tok) > m.vocab_size:
            raise DataError(
                f"--init-from {path}: its tokenizer has {len(tok)} tokens but config.json's vocab_size is "
                f"{m.vocab_size} (ids past {m.vocab_size - 1} have no embedding); copy the model's own vocab.txt "
                "beside it"
            )
        # a vocabulary padded to a round size: rows past the tokenizer's last id are never looked up
        encoder[WORD_EMBEDDINGS] = encoder[WORD_EMBEDDINGS][: len(tok)]
        return InitSource(path, encoder, tok, m.model, "hugging face folder")
    if (path / SPEC_FILE).is_file():
        raw_kind = checkpoint.load(require_run_dir(path) / MODEL_FILE)[1].get("kind")
        if raw_kind not in ("mlm", "tag"):
            raise SpecError(
                f"--init-from {path}: a {raw_kind!r} run holds no transformer encoder; give an `dualkit pretrain` "
                "mlm run folder or a Hugging Face BERT folder"
            )
        run = load_text_run(path, raw_kind)
        encoder = {k: v for k, v in run.weights.items() if k.startswith("bert.")}
        return InitSource(path, encoder, run.tokenizer, run.spec.model, f"{raw_kind} run")
    raise DataError(
        f"--init-from {path}: neither a dualkit run folder (spec.json) nor a Hugging Face folder (config.json); "
        "give a `dualkit pretrain` mlm run folder or a Hugging Face BERT folder"
    )


def adopt_encoder(model: TransformerSpec, src: InitSource) -> TransformerSpec:
    """The spec's model section with the architecture of the encoder ``--init-from`` brings (as
    ``from_pretrained`` takes its config from the checkpoint); dropout and init_std stay the spec's."""
    return replace(
        src.model,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_std=model.init_std,
    )


# Fields a resumed run may change: its length (train.epochs, max_steps), checkpointing, where the data live (the
# data themselves are checked by content).
RESUMABLE_FIELDS = (
    "train.epochs",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.keep_checkpoints",
    "data.root",
    "max_steps",
)


def open_text_resume(
    run_dir: Path,
    head: str,
    overrides: list[str] | tuple[str, ...],
    backend_name: str | None,
    device: str,
    prepare: Callable[[Any, WordPiece, list[str]], TextData],
    streams: tuple[str, ...],
) -> tuple[EpochResume, Any]:
    """A ``head`` run opened for resuming (every check of tasks/loop.open_epoch_resume passed, nothing written)
    and its model in the resuming backend with the checkpoint's weights and optimizer state. ``prepare(spec,
    tokenizer, labels)`` encodes the run's data with its own vocabulary and labels."""

    def load_data(spec: Any, folder: Path, meta: dict[str, Any]) -> tuple[TextData, TextData]:
        data = prepare(spec, load_tokenizer(folder, meta), list(meta.get("labels") or []))
        return data, data

    r = open_epoch_resume(
        run_dir,
        head,
        head,
        f"{head} run",
        overrides,
        RESUMABLE_FIELDS,
        backend_name,
        device,
        lambda spec, data: bert_shapes(spec.model, data.vocab_size, head, len(data.labels or [])),
        streams=streams,
        load_data=load_data,
    )
    spec = r.spec
    model = build_model(
        r.backend,
        spec.model,
        head,
        r.data.vocab_size,
        len(r.data.labels or []),
        r.req.ckpt.weights,
        spec.optim,
        spec.dtype,
        r.device,
    )
    r.restore(model)
    return r, model


PORT_SEQUENCES = 256  # test sequences whose logits a port compares


def port_probe(data: TextData) -> TokenData:
    """The sequences a port is checked on: the test split's, else (data.test_fraction 0) the validation or the
    training split's: any real text shows whether two models compute the same."""
    return next((part for part in (data.test, data.val) if len(part)), data.train)


def port_run(run: LoadedTextRun, probe: TokenData, head: str, to: str, out: Path, device: str) -> PortReport:
    """Write the run's model as backend ``to``'s native file (or, ``to="hf"``, a Hugging Face folder) and check the
    port on ``probe`` (test sequences): the target's logits against the training backend's at every real
    position (max abs and relative to the largest), and whether they predict the same tokens/tags there (for "hf":
    loaded back with ``transformers``, when it is installed)."""
    source = run.meta["backend"]
    src, _ = model_for(run, source, device, head)
    ids, mask = probe.input_ids[:PORT_SEQUENCES], probe.attention_mask[:PORT_SEQUENCES]
    a = src.logits(ids, mask)
    if to == "hf":
        from dualkit.core import hf

        artifact = hf.write_hf_folder(
            Path(out), run.weights, run.spec.model, len(run.tokenizer), head, run.labels or None, run.tokenizer.save
        )
        b, verified = hf_logits(artifact, head, ids, mask)
    else:
        dst, _ = model_for(run, to, device, head)
        b, verified = dst.logits(ids, mask), True
        dst.save_native(str(out))
        artifact = Path(out)
    real = mask.astype(bool)
    same = bool(b is not None and np.array_equal(a.argmax(-1)[real], b.argmax(-1)[real]))
    diff = float(np.abs(a - b)[real].max()) if b is not None else float("nan")
    rel = diff / max(float(np.abs(a[real]).max()), 1e-30)
    row = {
        "from": source,
        "to": to,
        "test sequences": len(ids),
        "identical predictions": same if verified else "not checked",
        "max |logit diff|": diff,
        "relative logit diff": rel,
        "checked by": verified if isinstance(verified, str) else to,
    }
    return PortReport(row, artifact, same or not verified)


def hf_logits(folder: Path, head: str, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray | None, Any]:
    """Logits of the written folder loaded by Hugging Face ``transformers`` (float32, eval mode), and what checked
    them; (None, False) without ``transformers`` installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None, False
    cls = transformers.BertForMaskedLM if head == "mlm" else transformers.BertForTokenClassification
    model = cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    return out.numpy().astype(np.float64), f"transformers {transformers.__version__}"
