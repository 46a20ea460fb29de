"""Masked image pretraining as a task (tasks/base.py): pretraining, resume, probe/fine-tune evaluation,
parity and benchmark. Its product is the encoder, which either backend loads directly: no port."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.batches import make_rng
from dualkit.core.datasets import load_dataset
from dualkit.core.errors import DualkitError
from dualkit.core.masking import grid_shape, patch_size_for, random_masks
from dualkit.core.report import ABSENT, markdown_table, mean_or_absent, mean_std
from dualkit.core.weights import init_masked
from dualkit.tasks import dist_parity, export, masked_golden, masked_parity, parity, pretrain
from dualkit.tasks.base import EvalOptions, ExportReport, Task, run_summary, timed_rate
from dualkit.tasks.classify_task import SYNTHETIC_SHAPES, synthetic_images, throughput_batches
from dualkit.tasks.masked_spec import MaskedRunSpec
from dualkit.tasks.parity import Check

BENCH_L4_STEPS = 200  # as tests/parity/test_masked_parity.py
EXPORT_STEPS = 20  # the export level's short pretraining: export does not depend on how well the encoder learned


def show_evaluation(ev: dict[str, Any]) -> None:
    rows = []
    if "probe" in ev:
        p = ev["probe"]
        rows.append(
            [
                "linear probe",
                p["pretrained"]["train_images"],
                p["pretrained"]["accuracy"],
                p["random"]["accuracy"],
                p["margin_points"],
            ]
        )
    for frac, f in ev.get("finetune", {}).items():
        rows.append(
            [
                f"fine-tune {frac} of labels",
                f["pretrained"]["train_images"],
                f["pretrained"]["accuracy"],
                f["random"]["accuracy"],
                f["margin_points"],
            ]
        )
    if rows:
        print(
            markdown_table(["protocol", "train images", "pretrained acc", "random-init acc", "margin (points)"], rows)
        )


class MaskedTask(Task):
    name = "masked"
    title = "Masked pretraining"
    spec_class = MaskedRunSpec
    pretraining = True
    metric = "probe_accuracy"
    metric_label = "linear-probe accuracy"
    data_parallel = True
    levels = Task.levels + ("dist",)

    def train(self, spec, backend, *, run_dir, device, progress, overwrite, init_from=None):
        if init_from is not None:
            raise DualkitError(
                f"--init-from starts a classifier from a pretrained encoder; this is a {self.name!r} task"
            )
        return pretrain.pretrain(spec, backend, run_dir=run_dir, device=device, progress=progress, overwrite=overwrite)

    def parity_run(self, spec, backend, device):
        result = pretrain.pretrain(spec, backend, device=device, progress=False, evaluate=False)
        return result.step_losses, result.weights

    def resume(self, run_dir, backend, *, overrides, device, progress):
        return pretrain.resume(run_dir, backend, overrides=overrides, device=device, progress=progress)

    def show(self, result) -> None:
        rows = [
            [h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h["images_per_s"]] for h in result.history
        ]
        print(markdown_table(["epoch", "masked loss", "val masked loss", "images/s"], rows))
        show_evaluation(result.evaluation)
        print(f"reconstructions: {result.grid}")

    def evaluate(self, run_dir, backend, device, options: EvalOptions) -> None:
        res = pretrain.evaluate_run(
            Path(run_dir), backend, device, progress=options.progress, finetune=options.finetune
        )
        print(f"encoder pretrained in {res['trained_in']}, evaluated in {res['backend']}")
        show_evaluation(res)

    def port(self, run_dir, to, out, device):
        raise DualkitError(
            f"{run_dir} is a masked-pretraining run: its product is the encoder ({run_dir}/encoder.safetensors), "
            f"which either backend loads directly; probe it with `dualkit eval {run_dir} --backend torch|tf` or "
            f"start a classifier from it with `dualkit train cnn-cifar10 --init-from {run_dir}`"
        )

    def export_source(self, run_dir: Path, device: str) -> export.ExportSource:
        """The encoder's features of whole images (eval mode, global-average-pooled: what ``features()`` gives
        the linear probe) on NHWC images, normalised as in pretraining; probed on the first test images."""
        from dualkit.tasks.probe import feature_extractor

        run = pretrain.load_run(Path(run_dir))
        x = export.probe_images(load_dataset(run.spec.data))
        encoder = {k: v for k, v in run.weights.items() if k.startswith("encoder.")}

        def reference(backend: str) -> np.ndarray:
            return feature_extractor(backend, run.spec, encoder, run.normalizer, run.image_shape, device)(x)

        return export.ExportSource(
            task=self.name,
            trained_in=run.meta["backend"],
            ops=export.cnn_ops(run.spec.model, run.image_shape, head=False),
            weights=encoder,
            input_shape=run.image_shape,
            input_name="images",
            output_name="features",
            probe=run.normalizer.apply(x, "float32"),
            reference=reference,
            predicted=None,
            metadata=export.image_metadata(run.normalizer, None),
        )

    def export(self, run_dir, fmt, backend, out, device, overwrite=False) -> ExportReport:
        return export.export_run(self.export_source(run_dir, device), run_dir, fmt, backend, out, device, overwrite)

    def export_parity(self, spec, device) -> list[Check]:
        """The export level: EXPORT_STEPS steps of pretraining on the preset, the encoder exported in every format
        from both backends."""
        short = replace(spec, max_steps=EXPORT_STEPS, train=replace(spec.train, epochs=1))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            pretrain.pretrain(short, "torch", run_dir=run_dir, device=device, progress=False, evaluate=False)
            return export.export_checks(self.export_source(run_dir, device), device)

    def check_inputs(self, spec) -> None:
        load_dataset(spec.data)

    def parity(self, spec, levels, dtypes, device, seeds, l4_steps=None) -> list[Check]:
        return (
            masked_parity.run_levels(spec, levels, dtypes, device, seeds, l4_steps)
            + (self.export_parity(spec, device) if "export" in levels else [])
            + (dist_parity.level_dist(self, spec, dtypes, device) if "dist" in levels else [])
        )

    golden_levels = masked_golden.GOLDEN_LEVELS

    def golden_cases(self, spec, levels, dtype, l4_steps=None):
        return masked_golden.golden_cases(spec, levels, dtype, l4_steps)

    def step_throughput(self, spec, backend, device, seconds) -> list[dict[str, Any]]:
        """Pretraining steps of the preset's autoencoder on synthetic images of its data's shape and the preset's
        masks: images/s at the preset's batch size (and on a GPU at a large one)."""
        shape = SYNTHETIC_SHAPES.get(spec.data.name)
        if shape is None:
            return []
        module = registry.get_backend(backend, device)
        grid = grid_shape(shape, patch_size_for(spec.model, shape, spec.mask.patch_size))
        rows = []
        for batch in throughput_batches(spec, device):
            weights = init_masked(spec.model, spec.decoder, shape[2], spec.seed, spec.dtype)
            mae = pretrain.build_autoencoder(module, spec, shape, weights, device)
            x, _ = synthetic_images(spec, batch)
            masks = random_masks(batch, grid, spec.mask.ratio, make_rng(spec.seed, "throughput-masks"))
            r = timed_rate(partial(mae.train_step, x, masks, spec.optim.lr), batch, seconds)
            rows.append(
                {
                    "what": f"pretraining step, batch {batch}",
                    "value": r["rate"],
                    "unit": "images/s",
                    "detail": f"{r['steps']} steps, {r['ms_per_step']:.2f} ms each; synthetic "
                    f"{'x'.join(map(str, shape))} images, mask ratio {spec.mask.ratio}, {spec.dtype}",
                }
            )
        return rows

    def bench_parity(self, spec, device) -> list[Check]:
        checks: list[Check] = []
        for dtype in ("float32", "float64"):
            checks += masked_parity.level0(dtype, device) + masked_parity.level1_all(spec, dtype, device)
            checks += masked_parity.level2_all(spec, dtype, device)
            checks += parity.level3(dtype, device)  # pretraining steps with the classifier's Optimizer
            checks += masked_parity.level4(spec, dtype, device, min_steps=BENCH_L4_STEPS, full=True)
        return checks + masked_parity.port_checks(spec, device, epochs=1) + self.export_parity(spec, device)

    def bench_l5(self, spec, runs) -> list[Check]:
        """As masked_parity.level5: the mean probe accuracies within L5_MAX_GAP_POINTS; each backend's mean and
        its margin over the random-init encoder are reported without a bound."""
        acc = {b: [r["value"] for r in runs if r["backend"] == b] for b in parity.BACKENDS}
        out = []
        for b, v in acc.items():
            margin = np.mean([r.get("margin_points", np.nan) for r in runs if r["backend"] == b])
            out.append(
                Check(
                    "L5",
                    f"{b} mean probe accuracy",
                    float(np.mean(v)),
                    float("-inf"),
                    True,
                    "per seed: "
                    + ", ".join(f"{a:.4f}" for a in v)
                    + f"; margin over random init {margin:+.2f} points (reported, no bound)",
                )
            )
        gap = abs(np.mean(acc["torch"]) - np.mean(acc["tf"])) * 100
        out.append(
            Check(
                "L5",
                "mean probe accuracy gap (points)",
                float(gap),
                masked_parity.L5_MAX_GAP_POINTS,
                bool(gap <= masked_parity.L5_MAX_GAP_POINTS),
            )
        )
        return out

    def bench_run(self, spec, backend, device) -> dict[str, Any]:
        """Linear-probe accuracy of the pretrained encoder (and its margin over the same encoder at random
        init); the curve is the masked training loss per epoch. ``wall_s`` covers pretraining and the
        evaluation (probe, fine-tunes), ``pretrain_s`` the pretraining alone."""
        t0 = time.perf_counter()
        result = pretrain.pretrain(spec, backend, device=device, progress=False, evaluate=True)
        total_s = time.perf_counter() - t0
        ev = result.evaluation
        probe = ev.get("probe", {})
        finetune = {
            fraction: {
                "accuracy": r["pretrained"]["accuracy"],
                "random_accuracy": r["random"]["accuracy"],
                "margin_points": r["margin_points"],
            }
            for fraction, r in ev.get("finetune", {}).items()
        }
        return run_summary(
            self,
            probe["pretrained"]["accuracy"] if probe else float("nan"),
            [h["epoch"] for h in result.history],
            [h["train_loss"] for h in result.history],
            "masked loss (train) per epoch",
            "epoch",
            result.images_per_s,
            total_s,
            random_accuracy=probe["random"]["accuracy"] if probe else float("nan"),
            margin_points=probe["margin_points"] if probe else float("nan"),
            finetune=finetune,
            pretrain_s=result.wall_s,
            final_loss=result.history[-1]["train_loss"] if result.history else float("nan"),
        )

    def report_columns(self, runs) -> list[str]:
        fractions = sorted({f for r in runs for f in r.get("finetune", {})}, key=float)
        return ["random-init probe", "margin (points)", "final masked loss"] + [
            f"fine-tune {f} of labels" for f in fractions
        ]

    def report_cells(self, runs, columns) -> list[Any]:
        cells: list[Any] = [
            mean_std([r["random_accuracy"] for r in runs]),
            f"{np.mean([r['margin_points'] for r in runs]):+.2f}",
            mean_or_absent([r.get("final_loss") for r in runs]),
        ]
        for col in columns[3:]:
            f = col.removeprefix("fine-tune ").removesuffix(" of labels")
            accs = [r["finetune"][f]["accuracy"] for r in runs if f in r.get("finetune", {})]
            cells.append(mean_std(accs) if accs else ABSENT)
        return cells


TASK = MaskedTask()
