"""Typed, frozen run specifications: loaded from presets, overridden with ``a.b=value``, saved as JSON."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    name: str = "constant"  # constant | step | cosine
    warmup_steps: int = 0  # linear warm-up from 0 to the base lr
    step_size: int = 1000  # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    label_smoothing: float = 0.0
    dtype: str = "float32"  # float32 | float64
    eval_batch_size: int = 512
    checkpoint_every: int = 1  # epochs
    # Run checkpoints (RUN/checkpoints/, for `dualkit train --resume`) are also written every this many
    # optimizer steps (0 = off) and every this many minutes of training (0 = off); the last k are kept.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 5.0
    keep_checkpoints: int = 3


@dataclass(frozen=True)
class RunSpec:
    task: str = "classify"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)


# task name -> its spec class; every spec class has a ``task`` field and is validated by ``validate``.
TASK_SPECS: dict[str, type] = {"classify": RunSpec}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "name"): ("digits", "cifar10", "idx"),
    ("model", "head"): ("gap", "flatten"),
    ("schedule", "name"): ("constant", "step", "cosine"),
    ("train", "dtype"): ("float32", "float64"),
}


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
    for ok, message in validator(spec):
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
        (0.0 <= optim.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (not optim.nesterov or optim.momentum > 0, "optim.nesterov needs optim.momentum > 0"),
        (0.0 <= optim.beta1 < 1.0 and 0.0 <= optim.beta2 < 1.0, "optim.beta1/beta2 must be in [0, 1)"),
        (optim.weight_decay >= 0 and optim.clip_norm >= 0, "optim.weight_decay and clip_norm must be >= 0"),
    ]


def _classify_checks(spec: RunSpec) -> list[tuple[bool, str]]:
    check_choices(spec, _CHOICES)
    checks = optim_checks(spec.optim) + [
        (0.0 <= spec.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (0.0 < spec.data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)"),
        (spec.data.crop_padding >= 0, "data.crop_padding must be >= 0"),
        (len(spec.model.channels) >= 1, "model.channels needs at least one block"),
        (all(c > 0 for c in spec.model.channels + spec.model.hidden), "model sizes must be > 0"),
        (spec.model.convs_per_block >= 1, "model.convs_per_block must be >= 1"),
        (0.0 <= spec.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (spec.model.num_classes >= 2, "model.num_classes must be >= 2"),
        (spec.train.epochs >= 1 and spec.train.batch_size >= 1, "train.epochs and train.batch_size must be >= 1"),
        (0.0 <= spec.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (spec.train.checkpoint_every >= 1, "train.checkpoint_every must be >= 1 (epochs)"),
        (spec.train.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be >= 0 (0 = off)"),
        (spec.train.checkpoint_every_minutes >= 0, "train.checkpoint_every_minutes must be >= 0 (0 = off)"),
        (spec.train.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (spec.schedule.step_size >= 1, "schedule.step_size must be >= 1"),
    ]
    return checks


# spec class -> function returning (ok, message) pairs; a task registers its own beside TASK_SPECS
_VALIDATORS: dict[type, Any] = {RunSpec: _classify_checks}


def register_task(name: str, cls: type, checks: Any) -> None:
    """Make ``task = name`` load as ``cls``, validated by ``checks(spec) -> [(ok, message), ...]``."""
    TASK_SPECS[name] = cls
    _VALIDATORS[cls] = checks


# -- DQN ------------------------------------------------------------------------------------------
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
class DQNSpec:
    total_steps: int = 100_000  # environment steps (real transitions, summed over the envs)
    gamma: float = 0.99
    buffer_size: int = 50_000
    batch_size: int = 64
    learning_starts: int = 1_000  # environment steps before the first update
    train_freq: int = 4  # environment steps between two rounds of updates
    gradient_steps: int = 1  # updates per round
    target_update: int = 250  # gradient updates between two target syncs
    tau: float = 1.0  # at each sync: target = tau * online + (1 - tau) * target (1 = hard copy)
    double: bool = False  # double DQN: the online net picks the next action, the target net values it
    loss: str = "huber"  # huber (delta 1) | mse
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_fraction: float = 0.1  # linear decay over this fraction of total_steps
    eval_every: int = 5_000  # environment steps between greedy evaluations (0 = only at the end)
    eval_episodes: int = 10
    test_episodes: int = 20  # the final greedy evaluation on held-out seeds (env.test_seed + i)
    stop_return: float = 0.0  # stop once a greedy evaluation's mean return reaches this (0 = never)
    keep_best: bool = True  # checkpoint the best-evaluated weights rather than the last ones
    # Run checkpoints (RUN/checkpoints/, for `dualkit train --resume`): every this many env steps (0 = off),
    # every this many minutes (0 = off), at the end and on SIGINT/SIGTERM; the newest keep_checkpoints kept.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 5.0
    keep_checkpoints: int = 3
    # The replay buffer goes into each run checkpoint (buffer_size x (2 obs_dim + 3) floats: 2.2 MB for
    # CartPole's 50k); without it a resumed run refills learning_starts transitions before updating again.
    checkpoint_buffer: bool = True


@dataclass(frozen=True)
class DQNRunSpec:
    task: str = "dqn"
    env: EnvSpec = field(default_factory=EnvSpec)
    qnet: QNetSpec = field(default_factory=QNetSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    dqn: DQNSpec = field(default_factory=DQNSpec)
    seed: int = 0
    dtype: str = "float32"  # float32 | float64


_DQN_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("qnet", "activation"): ("relu", "tanh"),
    ("dqn", "loss"): ("huber", "mse"),
    ("schedule", "name"): ("constant", "step", "cosine"),
    ("", "dtype"): ("float32", "float64"),
}


def _dqn_checks(spec: DQNRunSpec) -> list[tuple[bool, str]]:
    check_choices(spec, _DQN_CHOICES)
    d, e = spec.dqn, spec.env
    return optim_checks(spec.optim) + [
        (bool(e.id.strip()), "env.id must name a Gymnasium environment, e.g. CartPole-v1"),
        (e.num_envs >= 1, "env.num_envs must be >= 1"),
        (e.max_episode_steps >= 0, "env.max_episode_steps must be >= 0 (0 = the env's own limit)"),
        (e.eval_seed >= 0 and e.test_seed >= 0, "env.eval_seed and env.test_seed must be >= 0"),
        (len(spec.qnet.hidden) >= 1 and all(h > 0 for h in spec.qnet.hidden), "qnet.hidden needs one or more sizes > 0"),
        (0.0 <= d.gamma <= 1.0, f"dqn.gamma must be in [0, 1], got {d.gamma}"),
        (d.batch_size >= 1, "dqn.batch_size must be >= 1"),
        (d.buffer_size >= d.batch_size,
         f"dqn.buffer_size ({d.buffer_size}) must be >= dqn.batch_size ({d.batch_size}): the buffer cannot hold one batch"),
        (d.total_steps >= 1, "dqn.total_steps must be >= 1"),
        (d.learning_starts >= 0, "dqn.learning_starts must be >= 0"),
        (d.train_freq >= 1 and d.gradient_steps >= 1, "dqn.train_freq and dqn.gradient_steps must be >= 1"),
        (d.target_update >= 1, "dqn.target_update must be >= 1 (gradient updates between target syncs)"),
        (0.0 < d.tau <= 1.0, "dqn.tau must be in (0, 1]"),
        (0.0 <= d.epsilon_end <= 1.0 and 0.0 <= d.epsilon_start <= 1.0, "dqn.epsilon_start/epsilon_end must be in [0, 1]"),
        (0.0 < d.epsilon_fraction <= 1.0, "dqn.epsilon_fraction must be in (0, 1]"),
        (d.eval_every >= 0, "dqn.eval_every must be >= 0 (0 = evaluate only at the end)"),
        (d.eval_episodes >= 1 and d.test_episodes >= 1, "dqn.eval_episodes and dqn.test_episodes must be >= 1"),
        (d.checkpoint_every_steps >= 0, "dqn.checkpoint_every_steps must be >= 0 (0 = off)"),
        (d.checkpoint_every_minutes >= 0, "dqn.checkpoint_every_minutes must be >= 0 (0 = off)"),
        (d.keep_checkpoints >= 1, "dqn.keep_checkpoints must be >= 1"),
        (spec.seed >= 0, "seed must be >= 0"),
        (spec.schedule.step_size >= 1, "schedule.step_size must be >= 1"),
    ]


register_task("dqn", DQNRunSpec, _dqn_checks)


# -- masked image pretraining -----------------------------------------------------------------------
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
class ProbeSpec:
    enabled: bool = True  # linear probe after pretraining (frozen encoder, GAP features, logistic head)
    limit_train: int = 0  # fit the probe on the first N training images only (0 = all)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)  # inverse L2 strengths tried; the best on the val split is kept
    max_iter: int = 1000  # L-BFGS iterations


@dataclass(frozen=True)
class FinetuneSpec:
    fractions: tuple[float, ...] = (0.1, 1.0)  # label fractions fine-tuned after pretraining (() = none)
    epochs: int = 5
    batch_size: int = 64
    label_smoothing: float = 0.0
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)


@dataclass(frozen=True)
class MaskedRunSpec:
    task: str = "masked"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)  # the classifier's: its encoder is pretrained
    decoder: DecoderSpec = field(default_factory=DecoderSpec)
    mask: MaskSpec = field(default_factory=MaskSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    max_steps: int = 0  # stop pretraining after this many steps (0 = train.epochs full epochs); the schedule ends there


_MASKED_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "name"): ("digits", "cifar10", "idx"),
    ("model", "head"): ("gap", "flatten"),
    ("schedule", "name"): ("constant", "step", "cosine"),
    ("train", "dtype"): ("float32", "float64"),
}


def _masked_checks(spec: MaskedRunSpec) -> list[tuple[bool, str]]:
    check_choices(spec, _MASKED_CHOICES)
    check_choices(spec.finetune, {("schedule", "name"): ("constant", "step", "cosine")})
    m, d, ft = spec.mask, spec.decoder, spec.finetune
    blocks = len(spec.model.channels)
    downsampling = 2**blocks
    return _classify_checks(RunSpec(data=spec.data, model=spec.model, optim=spec.optim, schedule=spec.schedule,
                                    train=spec.train)) + optim_checks(ft.optim) + [
        (0.0 < m.ratio < 1.0, f"mask.ratio must be in (0, 1) (exclusive), got {m.ratio}"),
        (m.patch_size in (0, downsampling),
         f"mask.patch_size={m.patch_size} does not match the encoder's downsampling: {blocks} pooling blocks "
         f"downsample by 2^{blocks} = {downsampling}; set mask.patch_size={downsampling} (or 0 for automatic)"),
        (len(d.channels) in (0, blocks),
         f"decoder.channels needs one entry per encoder block ({blocks}), got {len(d.channels)}; () = automatic"),
        (all(c > 0 for c in d.channels), "decoder.channels must be > 0"),
        (spec.probe.limit_train >= 0 and spec.probe.max_iter >= 1, "probe.limit_train must be >= 0 and probe.max_iter >= 1"),
        (len(spec.probe.c_grid) >= 1 and all(c > 0 for c in spec.probe.c_grid), "probe.c_grid needs one or more values > 0"),
        (all(0.0 < f <= 1.0 for f in ft.fractions), f"finetune.fractions must be in (0, 1], got {list(ft.fractions)}"),
        (ft.epochs >= 1 and ft.batch_size >= 1, "finetune.epochs and finetune.batch_size must be >= 1"),
        (0.0 <= ft.label_smoothing < 1.0, "finetune.label_smoothing must be in [0, 1)"),
        (ft.schedule.step_size >= 1, "finetune.schedule.step_size must be >= 1"),
        (spec.max_steps >= 0, "max_steps must be >= 0 (0 = train.epochs full epochs)"),
    ]


register_task("masked", MaskedRunSpec, _masked_checks)


def spec_class(raw: dict[str, Any]) -> type:
    task = raw.get("task", "classify")
    if task not in TASK_SPECS:
        raise SpecError(f"task={task!r} is not one of: {', '.join(TASK_SPECS)}")
    return TASK_SPECS[task]


def from_dict(raw: dict[str, Any]) -> Any:
    return validate(_build(spec_class(raw), raw, ""))


def to_dict(spec: Any) -> dict[str, Any]:
    out = dataclasses.asdict(spec)
    return json.loads(json.dumps(out))  # tuples become lists, as in the JSON file


def load_toml(path: Path) -> Any:
    with open(path, "rb") as fh:
        return from_dict(tomllib.load(fh))


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
                    raise SpecError(f"{'.'.join(path)} is a section; set one of its fields, e.g. {'.'.join(path)}.<key>=...")
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
    return from_dict(json.loads(Path(path).read_text()))

