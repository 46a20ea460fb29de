"""The classifier's spec (``task = "classify"``) and the checks every image task shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualkit.core.specs import (
    DataSpec,
    ModelSpec,
    OptimSpec,
    ScheduleSpec,
    TrainSpec,
    check_choices,
    data_checks,
    optim_checks,
    register_task,
    schedule_checks,
    train_checks,
)


@dataclass(frozen=True)
class ClassifyRunSpec:
    task: str = "classify"
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    train: TrainSpec = field(default_factory=TrainSpec)


IMAGE_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "name"): ("digits", "cifar10", "idx"),
    ("model", "head"): ("gap", "flatten"),
    ("schedule", "name"): ("constant", "step", "cosine"),
}


def image_checks(spec) -> list[tuple[bool, str]]:
    """The checks of a spec with data, model, optim, schedule and train sections (classifier, masked)."""
    check_choices(spec, IMAGE_CHOICES)
    return (
        optim_checks(spec.optim)
        + train_checks(spec.train)
        + data_checks(spec.data)
        + schedule_checks(spec.schedule)
        + [
            (len(spec.model.channels) >= 1, "model.channels needs at least one block"),
            (all(c > 0 for c in spec.model.channels + spec.model.hidden), "model sizes must be > 0"),
            (spec.model.convs_per_block >= 1, "model.convs_per_block must be >= 1"),
            (0.0 <= spec.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
            (spec.model.num_classes >= 2, "model.num_classes must be >= 2"),
        ]
    )


register_task("classify", ClassifyRunSpec, image_checks)
