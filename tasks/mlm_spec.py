"""The masked-language-model pretraining spec (``task = "mlm"``) and the checks every transformer task shares:
data (text), tokenizer, a BERT-style model, BERT's masking, AdamW with a linear schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

from dualkit.core.specs import (
    MlmSpec,
    OptimSpec,
    ScheduleSpec,
    TextDataSpec,
    TokenizerSpec,
    TrainSpec,
    TransformerSpec,
    check_choices,
    optim_checks,
    register_task,
    schedule_checks,
    train_checks,
)

SCHEDULES = ("constant", "step", "cosine", "linear")


def bert_optim() -> OptimSpec:
    """BERT's optimizer: AdamW, weight decay on kernels and embeddings only (not on biases and LayerNorm)."""
    return OptimSpec(name="adamw", lr=1e-3, weight_decay=0.01, eps=1e-6, decay_1d=False)


def bert_schedule() -> ScheduleSpec:
    """BERT's schedule: linear warm-up, then linear decay to zero at the last step."""
    return ScheduleSpec(name="linear", warmup_steps=100)


@dataclass(frozen=True)
class DownstreamSpec:
    # a tag preset (or a .toml path) fine-tuned after pretraining from the pretrained encoder and from random init,
    # with the same budget, vocabulary and architecture: the margin is the pretraining's outcome ("" = none)
    preset: str = "bert-tag-tiny"
    max_steps: int = 0  # 0 = the preset's own budget


@dataclass(frozen=True)
class MlmRunSpec:
    task: str = "mlm"
    seed: int = 0
    dtype: str = "float32"  # float32 | float64
    data: TextDataSpec = field(default_factory=TextDataSpec)
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    model: TransformerSpec = field(default_factory=TransformerSpec)
    mlm: MlmSpec = field(default_factory=MlmSpec)
    optim: OptimSpec = field(default_factory=bert_optim)
    schedule: ScheduleSpec = field(default_factory=bert_schedule)
    train: TrainSpec = field(default_factory=TrainSpec)
    max_steps: int = 0  # stop after this many steps (0 = train.epochs full epochs); the schedule ends there
    downstream: DownstreamSpec = field(default_factory=DownstreamSpec)


def text_checks(spec, data_names: tuple[str, ...]) -> list[tuple[bool, str]]:
    """The checks of a transformer task's spec (data, tokenizer, model, optim, schedule, train, max_steps)."""
    check_choices(
        spec,
        {
            ("data", "name"): data_names,
            ("data", "scheme"): ("auto", "bio", "iob1", "iobes", "none"),
            ("model", "norm"): ("post", "pre"),
            ("schedule", "name"): SCHEDULES,
        },
    )
    m, d, t = spec.model, spec.data, spec.tokenizer
    return (
        optim_checks(spec.optim)
        + train_checks(spec.train)
        + schedule_checks(spec.schedule)
        + [
            (
                min(m.hidden, m.layers, m.heads, m.intermediate, m.max_positions, m.type_vocab_size) >= 1,
                "model.hidden, layers, heads, intermediate, max_positions and type_vocab_size must be >= 1",
            ),
            (
                m.hidden % m.heads == 0,
                f"model.hidden={m.hidden} must divide by model.heads={m.heads} (each head gets hidden/heads); "
                f"choose heads among {[h for h in range(1, m.hidden + 1) if m.hidden % h == 0][:8]}",
            ),
            (m.layer_norm_eps > 0, f"model.layer_norm_eps must be > 0, got {m.layer_norm_eps}"),
            (
                0.0 <= m.hidden_dropout < 1.0 and 0.0 <= m.attention_dropout < 1.0,
                "model.hidden_dropout and model.attention_dropout must be in [0, 1)",
            ),
            (m.init_std > 0, f"model.init_std must be > 0, got {m.init_std}"),
            (d.max_length >= 3, f"data.max_length must be >= 3 ([CLS], a token, [SEP]), got {d.max_length}"),
            (
                d.max_length <= m.max_positions,
                f"data.max_length={d.max_length} is longer than model.max_positions={m.max_positions}; "
                f"set data.max_length <= {m.max_positions} or model.max_positions >= {d.max_length}",
            ),
            (
                0.0 <= d.val_fraction < 1.0 and 0.0 <= d.test_fraction < 1.0 and d.val_fraction + d.test_fraction < 1,
                "data.val_fraction and data.test_fraction must be in [0, 1) and leave training data",
            ),
            (d.limit_train >= 0 and d.limit_words >= 0, "data.limit_train and data.limit_words must be >= 0 (0 = all)"),
            (t.vocab_size >= 10, f"tokenizer.vocab_size must be >= 10, got {t.vocab_size}"),
            (t.min_frequency >= 1, f"tokenizer.min_frequency must be >= 1, got {t.min_frequency}"),
            (spec.max_steps >= 0, "max_steps must be >= 0 (0 = train.epochs full epochs)"),
        ]
    )


def _mlm_checks(spec: MlmRunSpec) -> list[tuple[bool, str]]:
    k = spec.mlm
    return text_checks(spec, ("stdlib", "text")) + [
        (0.0 < k.ratio < 1.0, f"mlm.ratio must be in (0, 1), got {k.ratio}"),
        (
            k.mask_fraction >= 0 and k.random_fraction >= 0 and k.mask_fraction + k.random_fraction <= 1.0,
            "mlm.mask_fraction and mlm.random_fraction must be >= 0 and sum to at most 1 (the rest keep their token)",
        ),
        (spec.downstream.max_steps >= 0, "downstream.max_steps must be >= 0 (0 = the preset's own)"),
    ]


register_task("mlm", MlmRunSpec, _mlm_checks)
