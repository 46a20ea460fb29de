"""Masked-language-model pretraining as a task (tasks/base.py): pretraining, resume, evaluation, port (to the
other framework or a Hugging Face folder), parity and benchmark."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core.errors import DualkitError
from dualkit.core.report import markdown_table, mean_or_absent, mean_std
from dualkit.tasks import mlm, text_golden, text_parity
from dualkit.tasks.base import EvalOptions, PortReport, Task, run_summary
from dualkit.tasks.mlm_spec import MlmRunSpec
from dualkit.tasks.parity import Check
from dualkit.tasks.transformer import TOKENS_PER_S


def show_evaluation(ev: dict[str, Any]) -> None:
    if "masked_tokens" in ev:  # absent when the run has no test split (data.test_fraction=0)
        split = f"{ev.get('split', 'test')} split"  # a training run's evaluation is the test split's
        print(
            markdown_table(
                ["held-out text", "masked tokens", "MLM loss", "MLM accuracy", "unigram guess"],
                [[split, ev["masked_tokens"], ev["loss"], ev["accuracy"], ev["unigram_accuracy"]]],
            )
        )
    d = ev.get("downstream") or {}
    if d:
        print(
            markdown_table(
                ["downstream", "steps", "pretrained F1", "random-init F1", "margin (points)"],
                [[d["preset"], d["steps"], d["pretrained_f1"], d["random_f1"], d["margin_points"]]],
            )
        )


class MlmTask(Task):
    name = "mlm"
    title = "Masked language model (BERT)"
    spec_class = MlmRunSpec
    pretraining = True
    metric = "mlm_accuracy"
    metric_label = "held-out MLM accuracy"
    throughput_unit = TOKENS_PER_S
    data_parallel = True  # --workers N: the run loop shards each global batch (tasks/transformer.shard_scale)
    levels = ("L0", "L1", "L2", "L3", "L4", "L5", "port")
    native_suffix = {"torch": ".pt", "tf": ".keras", "hf": ""}

    def train(self, spec, backend, *, run_dir, device, progress, overwrite, init_from=None):
        if init_from is not None:
            raise DualkitError(
                "--init-from starts a tagger (`dualkit train bert-tag-tiny --init-from RUN`); MLM pretraining starts "
                "from its own seeded init"
            )
        return mlm.pretrain(spec, backend, run_dir=run_dir, device=device, progress=progress, overwrite=overwrite)

    def resume(self, run_dir, backend, *, overrides, device, progress):
        return mlm.resume(run_dir, backend, overrides=overrides, device=device, progress=progress)

    def show(self, result) -> None:
        rows = [
            [h["epoch"], h["train_loss"], h.get("val_loss", np.nan), h.get("val_accuracy", np.nan), h["images_per_s"]]
            for h in result.history
        ]
        print(markdown_table(["epoch", "MLM loss", "val MLM loss", "val MLM acc", "sequences/s"], rows))
        show_evaluation(result.evaluation)

    def evaluate(self, run_dir, backend, device, options: EvalOptions) -> None:
        res = mlm.evaluate_run(Path(run_dir), backend, device, options.split)
        print(f"trained in {res['trained_in']}, evaluated in {res['backend']} on the {res['split']} split")
        show_evaluation(res)

    def port(self, run_dir, to, out, device) -> PortReport:
        return mlm.port(Path(run_dir), to, out, device)

    def check_inputs(self, spec) -> None:
        mlm.documents(spec)

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
        checks = text_parity.l5_checks(runs, "MLM accuracy", text_parity.L5_MAX_GAP_POINTS_MLM)
        if all(np.isfinite(r.get("pretrained_f1", np.nan)) for r in runs):  # the downstream tagger's F1
            f1 = [{"backend": r["backend"], "value": r["pretrained_f1"]} for r in runs]
            checks += text_parity.l5_checks(f1, "downstream F1", text_parity.L5_MAX_GAP_POINTS_TAG)
        return checks

    def bench_run(self, spec, backend, device) -> dict[str, Any]:
        """Held-out MLM accuracy (and the unigram guess); the downstream tagger's F1 from the pretrained encoder and
        from random init. ``wall_s`` covers pretraining and the downstream fine-tunes, ``pretrain_s`` the first."""
        t0 = time.perf_counter()
        result = mlm.pretrain(spec, backend, device=device, progress=False, evaluate=True)
        ev = result.evaluation
        d = ev.get("downstream") or {}
        return run_summary(
            self,
            ev["accuracy"],
            [h["epoch"] for h in result.history],
            [h.get("val_accuracy", float("nan")) for h in result.history],
            "validation MLM accuracy per epoch",
            "epoch",
            result.tokens_per_s,
            time.perf_counter() - t0,
            unigram_accuracy=ev["unigram_accuracy"],
            pretrain_s=result.wall_s,
            final_loss=result.history[-1]["train_loss"] if result.history else float("nan"),
            pretrained_f1=d.get("pretrained_f1", float("nan")),
            random_f1=d.get("random_f1", float("nan")),
            margin_points=d.get("margin_points", float("nan")),
        )

    def report_columns(self, runs) -> list[str]:
        return ["unigram guess", "final MLM loss", "tag F1 pretrained", "tag F1 random init", "margin (points)"]

    def report_cells(self, runs, columns) -> list[Any]:
        return [
            mean_std([r["unigram_accuracy"] for r in runs]),
            mean_or_absent([r.get("final_loss") for r in runs]),
            mean_std([r["pretrained_f1"] for r in runs]),
            mean_std([r["random_f1"] for r in runs]),
            f"{np.mean([r['margin_points'] for r in runs]):+.2f}",
        ]


TASK = MlmTask()
