"""Typed, frozen run specifications: the machinery and the sections core's modules read.

A task's spec is a frozen dataclass of sections, registered by the task (``register_task``) with its checks;
core loads it from TOML or JSON, applies ``--set a.b=value`` overrides (type-checked, unknown keys refused
with the valid ones), validates it and saves it as JSON. Every task's spec has ``task``, ``seed`` and ``dtype``
at its top level. The sections here are the ones core's own modules take (data, model, optimizer, schedule,
training loop, environment, Q-network, masked decoder and mask); a task keeps its other sections itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from dualkit.core.errors import SpecError


@dataclass(frozen=True)
class DataSpec:
    name: str = "digits"  # digits | cifar10 | idx
    root: str = ""  # folder holding the files (cifar10, idx); unused for digits
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # only for datasets without an official test split (digits)
    normalize: bool = True  # per-channel mean/std from the training split
    crop_padding: int = 0  # random crop after zero padding by this many pixels (0 = off)
    flip: bool = False  # random horizontal flip
    limit_train: int = 0  # keep only the first N training images (0 = all); for quick runs


@dataclass(frozen=True)
class ModelSpec:
    channels: tuple[int, ...] = (16, 32)  # one conv block per entry, each ends with a 2x2 max-pool
    convs_per_block: int = 1
    batchnorm: bool = False
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # torch convention: running = (1 - m) * running + m * batch
    # On several workers (--workers N): True normalises with the statistics of the whole global batch (all-reduced,
    # as one worker with the global batch); False with each replica's own shard (a "ghost batch"), the running
    # statistics then being the mean of the replicas' updates. One worker: no difference.
    bn_sync: bool = False
    head: str = "gap"  # gap | flatten
    hidden: tuple[int, ...] = ()  # dense layers between the pooled features and the logits
    dropout: float = 0.0  # before every dense layer
    num_classes: int = 10


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # L2 added to the gradient for sgd/adam; decoupled for adamw
    # False: no weight decay on 1-D parameters (biases, BatchNorm scales and shifts, the mask token), as
    # timm's filter_bias_and_bn and the MAE recipes do; decay then shrinks only conv and dense kernels.
    decay_1d: bool = True
    clip_norm: float = 0.0  # global gradient-norm clipping (0 = off)


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "constant"  # constant | step | cosine | linear (BERT's: linear decay to min_lr)
    warmup_steps: int = 0  # linear warm-up from 0 to the base lr
    step_size: int = 1000  # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine and linear floor


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 64
    label_smoothing: float = 0.0
    eval_batch_size: int = 512
    checkpoint_every: int = 1  # epochs
    # Run checkpoints (RUN/checkpoints/, for `dualkit train --resume`) are also written every this many
    # optimizer steps (0 = off) and every this many minutes of training (0 = off); the last k are kept.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 5.0
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class EnvSpec:
    id: str = "CartPole-v1"  # any Gymnasium env with a flat Box observation and a Discrete action space
    num_envs: int = 1  # sub-environments stepped together (one batched action call per step)
    max_episode_steps: int = 0  # 0 = the env's registered time limit
    eval_seed: int = 10_000  # periodic greedy evaluation: episode i is reset with seed eval_seed + i
    test_seed: int = 20_000  # `dualkit eval`, port and L5: held-out episodes test_seed + i


@dataclass(frozen=True)
class QNetSpec:
    hidden: tuple[int, ...] = (64, 64)  # dense layers of the MLP
    activation: str = "relu"  # relu | tanh


@dataclass(frozen=True)
class DecoderSpec:
    # one stage per encoder block, coarse to fine: 2x nearest upsampling, 3x3 conv, ReLU; a 1x1 conv
    # then maps to pixels. () = the encoder's channels halved and reversed, e.g. (32, 64, 128) -> (64, 32, 16)
    channels: tuple[int, ...] = ()
    mask_token: bool = True  # masked positions of the encoder's output are filled with a learned vector
    # SparK's hierarchical decoding: each stage also adds a 1x1-conv projection of the encoder's own output
    # at that resolution (masked positions there are zero, so they get the projection's bias), so the
    # coarsest features need not carry every pixel detail by themselves
    skips: bool = False


@dataclass(frozen=True)
class MaskSpec:
    ratio: float = 0.6  # fraction of the coarsest-grid patches hidden from the encoder, in (0, 1)
    patch_size: int = 0  # 0 = the encoder's total downsampling (2 ** blocks); anything else must equal it
    norm_pix: bool = True  # targets normalised per patch (MAE's norm_pix_loss)


@dataclass(frozen=True)
class TransformerSpec:
    """A BERT-style encoder (core/transformer.py names its weights as Hugging Face's BERT does)."""

    hidden: int = 64  # width of every token's vector
    layers: int = 2
    heads: int = 2  # hidden must divide by heads
    intermediate: int = 256  # width of each block's feed-forward layer
    max_positions: int = 128  # learned position embeddings: the longest sequence the model takes
    type_vocab_size: int = 2  # segment (token type) embeddings
    layer_norm_eps: float = 1e-12  # BERT's
    norm: str = "post"  # post (BERT: LayerNorm after each residual) | pre (before; a final LayerNorm)
    tie_embeddings: bool = True  # the MLM decoder reuses the word embeddings (stored once)
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_std: float = 0.02  # normal init of kernels and embeddings, as BERT's initializer_range


@dataclass(frozen=True)
class TokenizerSpec:
    # "" = build a WordPiece vocabulary from the training text (core/tokenizer.py, deterministic); else a
    # vocab.txt, a WordPiece tokenizer.json, or a folder holding one (e.g. a Hugging Face model folder)
    vocab: str = ""
    vocab_size: int = 2000  # when building: the most tokens, special tokens and single characters included
    min_frequency: int = 2  # when building: a merge must occur at least this often
    lowercase: bool = True  # BERT "uncased": lowercase and strip accents before splitting


@dataclass(frozen=True)
class TextDataSpec:
    # mlm: stdlib (shipped: the Python standard library's documentation text) | text (the .txt files under root)
    # tag: pyroles (shipped: roles of identifiers in the standard library's source) | conll | conllu
    name: str = "stdlib"
    root: str = ""  # text: a folder of .txt files; conll/conllu: a folder with train/dev/test files
    column: int = -1  # conll: the tag column (-1 = the last); conllu: the column (3 = UPOS)
    scheme: str = "auto"  # the files' tags: auto | bio | iob1 | iobes | none (plain labels such as POS tags)
    max_length: int = 64  # tokens per sequence, [CLS] and [SEP] included
    val_fraction: float = 0.1  # for corpora without their own dev split
    test_fraction: float = 0.1  # for corpora without their own test split
    limit_train: int = 0  # keep only the first N training sequences (0 = all)
    limit_words: int = 0  # shipped corpora: use only the first N words (0 = all); for quick runs


@dataclass(frozen=True)
class MlmSpec:
    ratio: float = 0.15  # BERT's share of (non-special) tokens chosen for prediction
    mask_fraction: float = 0.8  # of those, replaced by [MASK]
    random_fraction: float = 0.1  # replaced by a random token; the rest are kept unchanged


DTYPES = ("float32", "float64")
# task name -> its spec class; filled by the tasks (register_task), which the task registry imports.
TASK_SPECS: dict[str, type] = {}
# spec class -> function returning (ok, message) pairs
_VALIDATORS: dict[type, Any] = {}


def register_task(name: str, cls: type, checks: Any) -> None:
    """Make ``task = name`` load as ``cls``, validated by ``checks(spec) -> [(ok, message), ...]``.

    ``cls`` is a frozen dataclass with ``task``, ``seed`` and ``dtype`` fields at its top level."""
    hints = _hints(cls)
    missing = [k for k in ("task", "seed", "dtype") if k not in hints]
    if missing:
        raise TypeError(f"{cls.__name__} lacks the top-level field(s) every task spec has: {', '.join(missing)}")
    TASK_SPECS[name] = cls
    _VALIDATORS[cls] = checks


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint, converting only where it is lossless."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [_parse_scalar(v.strip()) for v in value]
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(v, item, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise SpecError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise SpecError(f"{where}: expected a string, got {value!r}")
    raise SpecError(f"{where}: unsupported field type {hint}")  # pragma: no cover - spec bug


def _parse_scalar(text: str) -> Any:
    """Parse a command-line value: TOML literal syntax, or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = _hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        valid = ", ".join(f"{prefix}{k}" for k in hints)
        raise SpecError(f"unknown key {prefix}{unknown[0]}; valid keys here: {valid}")
    kwargs = {}
    for name, hint in hints.items():
        if name not in raw:
            continue
        where = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw[name], dict):
                raise SpecError(f"{where} is a section; set its fields as {where}.<key>")
            kwargs[name] = _build(hint, raw[name], where + ".")
        else:
            kwargs[name] = _coerce(raw[name], hint, where)
    return cls(**kwargs)


def validate(spec: Any) -> Any:
    """Reject values that type-check but make no sense, naming the field and the valid range."""
    validator = _VALIDATORS.get(type(spec))
    if validator is None:
        raise SpecError(f"no validator for {type(spec).__name__}")  # pragma: no cover - registration bug
    bad = _non_finite(spec)
    if bad:
        raise SpecError(f"{bad[0]} is not a finite number; give a number")
    common = [
        (spec.seed >= 0, f"seed must be >= 0, got {spec.seed}"),
        (spec.dtype in DTYPES, f"dtype={spec.dtype!r} is not one of: {', '.join(DTYPES)}"),
    ]
    for ok, message in common + list(validator(spec)):
        if not ok:
            raise SpecError(message)
    return spec


def check_choices(spec: Any, choices: dict[tuple[str, str], tuple[str, ...]]) -> None:
    """Raise for a (section, key) field whose value is not one of its choices."""
    for (section, key), allowed in choices.items():
        value = getattr(getattr(spec, section) if section else spec, key)
        if value not in allowed:
            name = f"{section}.{key}" if section else key
            raise SpecError(f"{name}={value!r} is not one of: {', '.join(allowed)}")


def optim_checks(optim: OptimSpec) -> list[tuple[bool, str]]:
    return [
        (optim.name in ("sgd", "adam", "adamw"), f"optim.name={optim.name!r} is not one of: sgd, adam, adamw"),
        (optim.lr > 0, "optim.lr must be > 0"),
        (
            optim.eps > 0,
            f"optim.eps must be > 0 (it keeps Adam's step finite where a gradient is zero), got {optim.eps}",
        ),
        (0.0 <= optim.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (not optim.nesterov or optim.momentum > 0, "optim.nesterov needs optim.momentum > 0"),
        (0.0 <= optim.beta1 < 1.0 and 0.0 <= optim.beta2 < 1.0, "optim.beta1/beta2 must be in [0, 1)"),
        (optim.weight_decay >= 0 and optim.clip_norm >= 0, "optim.weight_decay and clip_norm must be >= 0"),
    ]


def train_checks(train: TrainSpec) -> list[tuple[bool, str]]:
    return [
        (train.epochs >= 1 and train.batch_size >= 1, "train.epochs and train.batch_size must be >= 1"),
        (0.0 <= train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1 (epochs)"),
        (train.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0 (0 = off)"),
        (train.checkpoint_every_minutes >= 0, "train.checkpoint_every_minutes must be >= 0 (0 = off)"),
        (train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (train.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {train.eval_batch_size}"),
    ]


def schedule_checks(schedule: ScheduleSpec, prefix: str = "schedule") -> list[tuple[bool, str]]:
    return [
        (
            schedule.warmup_steps >= 0,
            f"{prefix}.warmup_steps must be >= 0 (0 = no warm-up), got {schedule.warmup_steps}",
        ),
        (schedule.step_size >= 1, f"{prefix}.step_size must be >= 1"),
        (schedule.gamma > 0, f"{prefix}.gamma must be > 0, got {schedule.gamma}"),
        (schedule.min_lr >= 0, f"{prefix}.min_lr must be >= 0, got {schedule.min_lr}"),
    ]


def data_checks(data: DataSpec) -> list[tuple[bool, str]]:
    return [
        (0.0 <= data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (0.0 < data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)"),
        (data.crop_padding >= 0, "data.crop_padding must be >= 0"),
        (data.limit_train >= 0, f"data.limit_train must be >= 0 (0 = all images), got {data.limit_train}"),
    ]


def _non_finite(spec: Any, prefix: str = "") -> list[str]:
    """The float fields of a spec (any depth) that are inf or nan, by dotted name."""
    bad = []
    for f in dataclasses.fields(spec):
        value, name = getattr(spec, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            bad += _non_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{name}={value}")
        elif isinstance(value, tuple) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            bad.append(f"{name}={list(value)}")
    return bad


def spec_class(raw: dict[str, Any]) -> type:
    task = raw.get("task", "classify")  # run folders from before specs named their task were classifiers
    if task not in TASK_SPECS:
        raise SpecError(f"task={task!r} is not one of: {', '.join(sorted(TASK_SPECS))}")
    return TASK_SPECS[task]


def _moved_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """A spec written before ``seed`` and ``dtype`` moved from ``train`` to the top level, in today's form."""
    train = raw.get("train")
    if not isinstance(train, dict) or not ({"seed", "dtype"} & set(train)):
        return raw
    raw, train = dict(raw), dict(train)
    for key in ("seed", "dtype"):
        if key in train:
            raw.setdefault(key, train.pop(key))
    raw["train"] = train
    return raw


def from_dict(raw: dict[str, Any]) -> Any:
    raw = _moved_fields(raw)
    return validate(_build(spec_class(raw), raw, ""))


def to_dict(spec: Any) -> dict[str, Any]:
    out = dataclasses.asdict(spec)
    return json.loads(json.dumps(out))  # tuples become lists, as in the JSON file


def load_toml(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}; fix the file") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib decodes before it parses
        raise SpecError(
            f"{path} is not valid TOML: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    return from_dict(raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"bad override {text!r}: write it as section.key=value, e.g. optim.lr=0.01")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise SpecError(f"bad override {text!r}: the key is empty")
    return path, _parse_scalar(value.strip())


def apply_overrides(spec: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` overrides; unknown keys and wrong types are refused with the valid keys."""
    raw = to_dict(spec)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        cls: Any = type(spec)
        for i, part in enumerate(path):
            hints = _hints(cls)
            if part not in hints:
                where = ".".join(path[:i])
                prefix = where + "." if where else ""
                valid = ", ".join(prefix + k for k in hints)
                raise SpecError(f"unknown key {'.'.join(path)} in --set; valid keys here: {valid}")
            if i == len(path) - 1:
                if dataclasses.is_dataclass(hints[part]):
                    raise SpecError(
                        f"{'.'.join(path)} is a section; set one of its fields, e.g. {'.'.join(path)}.<key>=..."
                    )
                node[part] = value
            else:
                if not dataclasses.is_dataclass(hints[part]):
                    raise SpecError(f"{'.'.join(path[: i + 1])} is a value, not a section")
                node = node[part]
                cls = hints[part]
    return from_dict(raw)


def save_json(spec: Any, path: Path) -> None:
    from dualkit.core.runs import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(spec), indent=2) + "\n")


def load_json(path: Path) -> Any:
    """A spec saved as JSON (a run folder's spec.json), refused with the file's name when it is damaged."""
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise SpecError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path} holds a {type(raw).__name__}, not a run spec; the run folder is damaged")
    return from_dict(raw)
