"""The classifier as a task (tasks/base.py): training, resume, evaluation, port, parity and benchmark."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.batches import make_rng
from dualkit.core.datasets import load_dataset
from dualkit.core.report import markdown_table
from dualkit.core.weights import init_classifier
from dualkit.tasks import classify, classify_golden, dist_parity, export, parity
from dualkit.tasks.base import EvalOptions, ExportReport, PortReport, Task, run_summary, timed_rate
from dualkit.tasks.classify_spec import ClassifyRunSpec
from dualkit.tasks.parity import Check

EXPORT_TRAIN_IMAGES = 512  # the export level's short run: export does not depend on how well the model learned
# Step throughput (Task.step_throughput) runs on synthetic images of the dataset's shape: no data files needed.
SYNTHETIC_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "idx": (28, 28, 1)}
LARGE_BATCH = 1024  # besides the preset's own batch size: what a GPU does with a batch that fills it better


def throughput_batches(spec, device: str) -> list[int]:
    """The preset's batch size, and on a GPU also LARGE_BATCH (on a CPU a large batch only takes longer)."""
    return sorted({spec.train.batch_size, LARGE_BATCH if device != "cpu" else spec.train.batch_size})


def synthetic_images(spec, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random normalised images of the preset's data shape, and labels."""
    rng = make_rng(spec.seed, "throughput")
    x = rng.normal(size=(batch, *SYNTHETIC_SHAPES[spec.data.name])).astype(spec.dtype)
    return x, rng.integers(0, spec.model.num_classes, batch).astype(np.int64)


def show_history(history: list[dict[str, Any]]) -> None:
    rows = [
        [
            h["epoch"],
            h["train_loss"],
            h.get("val_loss", float("nan")),
            h.get("val_accuracy", float("nan")),
            h["images_per_s"],
        ]
        for h in history
    ]
    print(markdown_table(["epoch", "train loss", "val loss", "val acc", "images/s"], rows))


class ClassifyTask(Task):
    name = "classify"
    title = "Classifier"
    spec_class = ClassifyRunSpec
    metric = "test_accuracy"
    metric_label = "test accuracy"
    data_parallel = True
    levels = Task.levels + ("dist",)

    def train(self, spec, backend, *, run_dir, device, progress, overwrite, init_from=None):
        init = None
        if init_from is not None:
            from dualkit.tasks.probe import encoder_for_classifier

            init = encoder_for_classifier(Path(init_from), spec)
        return classify.train(
            spec, backend, run_dir=run_dir, device=device, progress=progress, overwrite=overwrite, init_weights=init
        )

    def parity_run(self, spec, backend, device):
        result = classify.train(spec, backend, device=device, progress=False)
        return result.step_losses, result.weights

    def resume(self, run_dir, backend, *, overrides, device, progress):
        return classify.resume(run_dir, backend, overrides=overrides, device=device, progress=progress)

    def show(self, result) -> None:
        show_history(result.history)
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))

    def evaluate(self, run_dir, backend, device, options: EvalOptions) -> None:
        res = classify.evaluate_run(Path(run_dir), backend, device, options.split)
        print(
            markdown_table(
                ["run", "trained in", "evaluated in", "split", "loss", "accuracy", "top5", "macro F1"],
                [
                    [
                        str(run_dir),
                        res["trained_in"],
                        res["backend"],
                        res["split"],
                        res["loss"],
                        res["accuracy"],
                        res["top5"],
                        res["macro_f1"],
                    ]
                ],
            )
        )

    def port(self, run_dir, to, out, device) -> PortReport:
        rep = classify.port_run(Path(run_dir), to, out, device)
        row = {
            "from": rep["from"],
            "to": rep["to"],
            "test images": rep["test_images"],
            "identical classes": rep["identical_classes"],
            "max |logit diff|": rep["max_abs_logit_diff"],
            "acc (from)": rep["accuracy_from"],
            "acc (to)": rep["accuracy_to"],
        }
        return PortReport(row, Path(rep["artifact"]), rep["identical_classes"])

    def export_source(self, run_dir: Path, device: str) -> export.ExportSource:
        """The classifier's logits on NHWC images, normalised as in training; probed on the first test images."""
        run = classify.load_run(Path(run_dir))
        x = export.probe_images(load_dataset(run.spec.data))

        def reference(backend: str) -> np.ndarray:
            clf = classify.load_classifier(run, backend, device)
            return clf.predict(run.normalizer.apply(x, run.spec.dtype))

        return export.ExportSource(
            task=self.name,
            trained_in=run.meta["backend"],
            ops=export.cnn_ops(run.spec.model, run.image_shape, head=True),
            weights=run.weights,
            input_shape=run.image_shape,
            input_name="images",
            output_name="logits",
            probe=run.normalizer.apply(x, "float32"),
            reference=reference,
            predicted="classes",
            metadata=export.image_metadata(run.normalizer, run.meta.get("classes")),
        )

    def export(self, run_dir, fmt, backend, out, device, overwrite=False) -> ExportReport:
        return export.export_run(self.export_source(run_dir, device), run_dir, fmt, backend, out, device, overwrite)

    def export_parity(self, spec, device) -> list[Check]:
        """The export level: a short run of the preset (one epoch on at most EXPORT_TRAIN_IMAGES images), exported
        in every format from both backends."""
        short = replace(
            spec,
            data=replace(spec.data, limit_train=EXPORT_TRAIN_IMAGES),
            train=replace(spec.train, epochs=1),
        )
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            classify.train(short, "torch", run_dir=run_dir, device=device, progress=False)
            return export.export_checks(self.export_source(run_dir, device), device)

    def check_inputs(self, spec) -> None:
        load_dataset(spec.data)

    def parity(self, spec, levels, dtypes, device, seeds, l4_steps=None) -> list[Check]:
        checks: list[Check] = []
        for dtype in dtypes:
            if "L0" in levels:
                checks += parity.level0(dtype, device)
            if "L1" in levels:
                checks += parity.level1_all(spec, dtype, device)
            if "L2" in levels:
                checks += parity.level2_all(spec, dtype, device)
            if "L3" in levels:
                checks += parity.level3(dtype, device)
            if "L4" in levels:
                checks += parity.level4(spec, dtype, device, min_steps=l4_steps or parity.L4_MIN_STEPS, full=True)
        if "L5" in levels and seeds > 0:
            floor = parity.L5_MIN_ACCURACY if spec.data.name == "digits" else None
            checks += parity.level5(spec, device, tuple(range(seeds)), min_accuracy=floor)[0]
        if "port" in levels:
            checks += parity.port_checks(spec, device)
        if "export" in levels:
            checks += self.export_parity(spec, device)
        if "dist" in levels:
            checks += dist_parity.level_dist(self, spec, dtypes, device)
        return checks

    golden_levels = classify_golden.GOLDEN_LEVELS

    def golden_cases(self, spec, levels, dtype, l4_steps=None):
        return classify_golden.golden_cases(spec, levels, dtype, l4_steps)

    def step_throughput(self, spec, backend, device, seconds) -> list[dict[str, Any]]:
        """Train steps of the preset's classifier on synthetic images of its data's shape: images/s at the preset's
        batch size (and on a GPU at LARGE_BATCH)."""
        shape = SYNTHETIC_SHAPES.get(spec.data.name)
        if shape is None:
            return []
        module = registry.get_backend(backend, device)
        rows = []
        for batch in throughput_batches(spec, device):
            weights = init_classifier(spec.model, shape, spec.seed, spec.dtype)
            clf = classify.build_classifier(module, spec, shape, weights, device)
            x, y = synthetic_images(spec, batch)
            r = timed_rate(partial(clf.train_step, x, y, spec.optim.lr), batch, seconds)
            rows.append(
                {
                    "what": f"train step, batch {batch}",
                    "value": r["rate"],
                    "unit": "images/s",
                    "detail": f"{r['steps']} steps, {r['ms_per_step']:.2f} ms each; synthetic "
                    f"{'x'.join(map(str, shape))} images, {spec.dtype}",
                }
            )
        return rows

    def bench_parity(self, spec, device) -> list[Check]:
        checks: list[Check] = []
        for dtype in ("float32", "float64"):
            checks += parity.level1_all(spec, dtype, device) + parity.level2_all(spec, dtype, device)
            checks += parity.level3(dtype, device) + parity.level4(spec, dtype, device, full=True)
        return checks + parity.port_checks(spec, device) + self.export_parity(spec, device)

    def bench_l5(self, spec, runs) -> list[Check]:
        acc = {b: [r["value"] for r in runs if r["backend"] == b] for b in parity.BACKENDS}
        floor = parity.L5_MIN_ACCURACY if spec.data.name == "digits" else -np.inf
        out = [
            Check(
                "L5",
                f"{b} mean test accuracy",
                float(np.mean(v)),
                float(floor),
                bool(np.mean(v) >= floor),
                f"{len(v)} seeds (bound is a floor)",
            )
            for b, v in acc.items()
        ]
        gap = abs(np.mean(acc["torch"]) - np.mean(acc["tf"])) * 100
        out.append(
            Check(
                "L5",
                "mean accuracy gap (points)",
                float(gap),
                parity.L5_MAX_GAP_POINTS,
                bool(gap <= parity.L5_MAX_GAP_POINTS),
            )
        )
        return out

    def bench_run(self, spec, backend, device) -> dict[str, Any]:
        result = classify.train(spec, backend, device=device, progress=False)
        return run_summary(
            self,
            result.test["accuracy"],
            [h["epoch"] for h in result.history],
            [h.get("val_accuracy", float("nan")) for h in result.history],
            "validation accuracy per epoch",
            "epoch",
            result.images_per_s,
            result.wall_s,
        )


TASK = ClassifyTask()
