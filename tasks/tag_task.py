"""Token classification (NER, POS, the shipped identifier roles) as a task (tasks/base.py): training (from scratch,
an MLM run or a Hugging Face folder), resume, the classification report, port, parity and benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core.report import markdown_table, mean_std
from dualkit.tasks import tag, text_golden, text_parity
from dualkit.tasks.base import EvalOptions, PortReport, Task, run_summary
from dualkit.tasks.parity import Check
from dualkit.tasks.tag_spec import TagRunSpec
from dualkit.tasks.transformer import TOKENS_PER_S


def show_report(ev: dict[str, Any]) -> None:
    """The classification report: per entity type (or label) precision, recall, F1 and support, then the
    averages; token accuracy below."""
    if not ev:
        return
    what = "entity type" if ev.get("report_kind") == "entity" else "label"
    rows = [[name, r["precision"], r["recall"], r["f1"], r["support"]] for name, r in ev["report"].items()]
    print(markdown_table([what, "precision", "recall", "F1", "support"], rows))
    print(f"token accuracy {ev['token_accuracy']:.4f} over {ev['words']} words; loss {ev['loss']:.4f}")


class TagTask(Task):
    name = "tag"
    title = "Token classification (BERT)"
    spec_class = TagRunSpec
    metric = "test_f1"
    metric_label = "test F1 (entity-level, micro)"
    throughput_unit = TOKENS_PER_S
    data_parallel = True  # --workers N: the run loop shards each global batch (tasks/transformer.shard_scale)
    levels = ("L0", "L1", "L2", "L3", "L4", "L5", "port")
    native_suffix = {"torch": ".pt", "tf": ".keras", "hf": ""}

    def train(self, spec, backend, *, run_dir, device, progress, overwrite, init_from=None):
        return tag.train(
            spec, backend, run_dir=run_dir, device=device, progress=progress, overwrite=overwrite, init_from=init_from
        )

    def resume(self, run_dir, backend, *, overrides, device, progress):
        return tag.resume(run_dir, backend, overrides=overrides, device=device, progress=progress)

    def show(self, result) -> None:
        rows = [
            [h["epoch"], h["train_loss"], h.get("val_loss", np.nan), h.get("val_f1", np.nan), h["images_per_s"]]
            for h in result.history
        ]
        print(markdown_table(["epoch", "train loss", "val loss", "val F1", "sequences/s"], rows))
        show_report(result.test)

    def evaluate(self, run_dir, backend, device, options: EvalOptions) -> None:
        res = tag.evaluate_run(Path(run_dir), backend, device, options.split)
        print(f"trained in {res['trained_in']}, evaluated in {res['backend']} on the {res['split']} split")
        show_report(res)

    def port(self, run_dir, to, out, device) -> PortReport:
        return tag.port(Path(run_dir), to, out, device)

    def check_inputs(self, spec) -> None:
        from dualkit.core.text import load_tag_corpus

        load_tag_corpus(spec.data)

    def parity(self, spec, levels, dtypes, device, seeds, l4_steps=None) -> list[Check]:
        return text_parity.run_levels(spec, levels, dtypes, device, seeds, l4_steps)

    def bench_parity(self, spec, device) -> list[Check]:
        return text_parity.bench_levels(spec, device)

    golden_levels = text_golden.GOLDEN_LEVELS

    def golden_cases(self, spec, levels, dtype, l4_steps=None):
        return text_golden.golden_cases(spec, levels, dtype, l4_steps)

    def step_throughput(self, spec, backend, device, seconds) -> list[dict[str, Any]]:
        return text_golden.step_throughput(spec, backend, device, seconds)

    def bench_l5(self, spec, runs) -> list[Check]:
        return text_parity.l5_checks(runs, "test F1", text_parity.L5_MAX_GAP_POINTS_TAG)

    def bench_run(self, spec, backend, device) -> dict[str, Any]:
        result = tag.train(spec, backend, device=device, progress=False)
        return run_summary(
            self,
            result.test["f1"],
            [h["epoch"] for h in result.history],
            [h.get("val_f1", float("nan")) for h in result.history],
            "validation F1 per epoch",
            "epoch",
            result.tokens_per_s,
            result.wall_s,
            token_accuracy=result.test["token_accuracy"],
        )

    def report_columns(self, runs) -> list[str]:
        return ["token accuracy"]

    def report_cells(self, runs, columns) -> list[Any]:
        return [mean_std([r["token_accuracy"] for r in runs])]


TASK = TagTask()
