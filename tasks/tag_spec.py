"""The token-classification spec (``task = "tag"``: named entities, POS tags, the shipped identifier roles): a
BERT-style encoder (from scratch, an MLM run or a Hugging Face folder: ``--init-from``) and a linear tag head."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualkit.core.specs import (
    OptimSpec,
    ScheduleSpec,
    TextDataSpec,
    TokenizerSpec,
    TrainSpec,
    TransformerSpec,
    register_task,
)
from dualkit.tasks.mlm_spec import bert_optim, bert_schedule, text_checks


def _tag_data() -> TextDataSpec:
    return TextDataSpec(name="pyroles")


@dataclass(frozen=True)
class TagRunSpec:
    task: str = "tag"
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
    data: TextDataSpec = field(default_factory=_tag_data)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)  # --init-from brings its own vocabulary
    model: TransformerSpec = field(default_factory=TransformerSpec)
    optim: OptimSpec = field(default_factory=bert_optim)
    schedule: ScheduleSpec = field(default_factory=bert_schedule)
    train: TrainSpec = field(default_factory=TrainSpec)
    max_steps: int = 0  # stop after this many steps (0 = train.epochs full epochs); the schedule ends there


def _tag_checks(spec: TagRunSpec) -> list[tuple[bool, str]]:
    return text_checks(spec, ("pyroles", "conll", "conllu"))


register_task("tag", TagRunSpec, _tag_checks)
