"""The masked image pretraining spec (``task = "masked"``): the classifier's sections plus the decoder, the
mask, and the linear probe and fine-tunes that evaluate the pretrained encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualkit.core.specs import (
    DataSpec,
    DecoderSpec,
    MaskSpec,
    ModelSpec,
    OptimSpec,
    ScheduleSpec,
    TrainSpec,
    check_choices,
    optim_checks,
    register_task,
    schedule_checks,
)
from dualkit.tasks.classify_spec import image_checks


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
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
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


def _masked_checks(spec: MaskedRunSpec) -> list[tuple[bool, str]]:
    check_choices(spec.finetune, {("schedule", "name"): ("constant", "step", "cosine")})
    m, d, ft = spec.mask, spec.decoder, spec.finetune
    blocks = len(spec.model.channels)
    downsampling = 2**blocks
    return (
        image_checks(spec)
        + optim_checks(ft.optim)
        + schedule_checks(ft.schedule, "finetune.schedule")
        + [
            (0.0 < m.ratio < 1.0, f"mask.ratio must be in (0, 1) (exclusive), got {m.ratio}"),
            (
                m.patch_size in (0, downsampling),
                f"mask.patch_size={m.patch_size} does not match the encoder's downsampling: {blocks} pooling blocks "
                f"downsample by 2^{blocks} = {downsampling}; set mask.patch_size={downsampling} (or 0 for automatic)",
            ),
            (
                len(d.channels) in (0, blocks),
                f"decoder.channels needs one entry per encoder block ({blocks}), got {len(d.channels)}; () = automatic",
            ),
            (all(c > 0 for c in d.channels), "decoder.channels must be > 0"),
            (
                spec.probe.limit_train >= 0 and spec.probe.max_iter >= 1,
                "probe.limit_train must be >= 0 and probe.max_iter >= 1",
            ),
            (
                len(spec.probe.c_grid) >= 1 and all(c > 0 for c in spec.probe.c_grid),
                "probe.c_grid needs one or more values > 0",
            ),
            (
                all(0.0 < f <= 1.0 for f in ft.fractions),
                f"finetune.fractions must be in (0, 1], got {list(ft.fractions)}",
            ),
            (ft.epochs >= 1 and ft.batch_size >= 1, "finetune.epochs and finetune.batch_size must be >= 1"),
            (0.0 <= ft.label_smoothing < 1.0, "finetune.label_smoothing must be in [0, 1)"),
            (spec.max_steps >= 0, "max_steps must be >= 0 (0 = train.epochs full epochs)"),
        ]
    )


register_task("masked", MaskedRunSpec, _masked_checks)
