"""Tiny transformer runs for the tests of the mlm and tag tasks: the presets shrunk by --set overrides (a 1-layer,
32-wide BERT on a few thousand words, a handful of steps), and the helpers their tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core.specs import apply_overrides
from dualkit.tasks import presets

# The model and data of every tiny run. Warm-up (the presets' 50 and 20 steps) outlasts every run here, so a run cut
# by max_steps and resumed with a larger max_steps sees the same learning rates as one straight run.
MODEL = [
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.intermediate=64",
    "model.max_positions=32",
    "data.max_length=32",
    "tokenizer.vocab_size=300",
    "train.batch_size=8",
]
MLM = [*MODEL, "data.limit_words=4000", "downstream.preset=''", "max_steps=8"]
TAG = [*MODEL, "data.limit_words=3000", "max_steps=8"]
NO_DROPOUT = ["model.hidden_dropout=0", "model.attention_dropout=0"]
TIMING = ("epoch_s", "images_per_s")  # wall-clock fields of a history record: the only ones allowed to differ


def mlm_spec(*extra: str) -> Any:
    return presets.load("bert-mlm-tiny", [*MLM, *extra])


def tag_spec(*extra: str) -> Any:
    return presets.load("bert-tag-tiny", [*TAG, *extra])


def with_overrides(spec: Any, *overrides: str) -> Any:
    return apply_overrides(spec, list(overrides))


def strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_weights(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def tensorboard_events(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*"))
