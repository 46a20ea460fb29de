"""The ``dualkit`` command line: info, train, eval, port, parity, bench."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

from dualkit.core import registry
from dualkit.core.errors import DualkitError
from dualkit.core.report import markdown_table
from dualkit.core.runs import default_run_dir, write_json
from dualkit.tasks import presets


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help=f"torch or tf (default: ${registry.ENV_VAR}, else {registry.DEFAULT})")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES, help="cpu (default), gpu or auto")


def _spec_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("preset", nargs="?" if optional else None,
                   help=f"a preset name ({', '.join(presets.names())}) or a .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set optim.lr=0.01 (repeatable)")


# -- DQN: the same commands, dispatched on the spec's task -----------------------------------------
def _run_task(run: str) -> str:
    """The task of a run folder, from its spec.json (a folder without one is left to the classifier's checks)."""
    from dualkit.core.runs import SPEC_FILE
    from dualkit.core.specs import load_json

    path = Path(run) / SPEC_FILE
    return load_json(path).task if path.is_file() else "classify"


def _train_dqn(args: argparse.Namespace, spec, backend: str, run_dir: Path) -> int:
    from dualkit.tasks.dqn import train

    result = train(spec, backend, run_dir=run_dir, device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    _print_dqn(result)
    print(f"run folder: {run_dir}  ({result.wall_s:.1f} s, {result.steps_per_s:.0f} env steps/s)")
    return 0


def _print_dqn(result) -> None:
    rows = [[e["env_steps"], e["updates"], e["epsilon"], e["loss"], e["train_return"], e["eval_return"], e["steps_per_s"]]
            for e in result.evals]
    print(markdown_table(["env steps", "updates", "epsilon", "loss", "train return", "eval return", "steps/s"], rows))
    t = result.test
    print(f"test: greedy return {t['return_mean']:.1f} +- {t['return_std']:.1f} (min {t['return_min']:.0f}) over "
          f"{len(t['returns'])} held-out episodes" + (f"; solved at {result.solved_at} env steps" if result.solved_at else ""))


def _eval_dqn(args: argparse.Namespace) -> int:
    from dualkit.tasks.dqn import evaluate_run

    res = evaluate_run(Path(args.run), args.backend, args.device, args.episodes, args.seed)
    print(markdown_table(["run", "trained in", "evaluated in", "env", "episodes", "first seed", "mean return", "std", "min"],
                         [[args.run, res["trained_in"], res["backend"], res["env_id"], res["episodes"], res["seed"],
                           res["return_mean"], res["return_std"], res["return_min"]]]))
    return 0


def _port_dqn(args: argparse.Namespace) -> int:
    from dualkit.tasks.dqn import NATIVE_SUFFIX, port_run

    to = registry.resolve_name(args.to)
    out = Path(args.out) if args.out else Path(args.run) / f"model{NATIVE_SUFFIX[to]}"
    if out.exists() and not args.overwrite:
        raise DualkitError(f"{out} already exists; choose another --out or pass --overwrite")
    rep = port_run(Path(args.run), to, out, args.device)
    print(markdown_table(
        ["from", "to", "episodes", "identical returns", "max rel |Q diff|", "return (from)", "return (to)"],
        [[rep["from"], rep["to"], rep["episodes"], rep["identical_returns"], rep["max_rel_q_diff"], rep["return_from"], rep["return_to"]]],
    ))
    print(f"wrote {rep['artifact']}")
    return 0 if rep["identical_returns"] else 1


# -- masked pretraining: `pretrain`, and `train` / `eval` / `parity` dispatched on the spec's task ----
def _train_masked(args: argparse.Namespace, spec, backend: str, run_dir: Path) -> int:
    from dualkit.tasks.pretrain import pretrain

    result = pretrain(spec, backend, run_dir=run_dir, device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    rows = [[h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h["images_per_s"]] for h in result.history]
    print(markdown_table(["epoch", "masked loss", "val masked loss", "images/s"], rows))
    _print_masked_eval(result.evaluation)
    print(f"reconstructions: {result.grid}")
    print(f"run folder: {run_dir}  ({result.wall_s:.1f} s of pretraining, {result.images_per_s:.0f} images/s)")
    return 0


def _print_masked_eval(ev: dict) -> None:
    rows = []
    if "probe" in ev:
        p = ev["probe"]
        rows.append(["linear probe", p["pretrained"]["train_images"], p["pretrained"]["accuracy"], p["random"]["accuracy"], p["margin_points"]])
    for frac, f in ev.get("finetune", {}).items():
        rows.append([f"fine-tune {frac} of labels", f["pretrained"]["train_images"], f["pretrained"]["accuracy"], f["random"]["accuracy"], f["margin_points"]])
    if rows:
        print(markdown_table(["protocol", "train images", "pretrained acc", "random-init acc", "margin (points)"], rows))


def _eval_masked(args: argparse.Namespace) -> int:
    from dualkit.tasks.pretrain import evaluate_run

    res = evaluate_run(Path(args.run), args.backend, args.device, progress=not args.quiet, finetune=not args.no_finetune)
    print(f"encoder pretrained in {res['trained_in']}, evaluated in {res['backend']}")
    _print_masked_eval(res)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    spec = presets.load(args.preset, args.overrides)
    if spec.task != "masked":
        raise DualkitError(f"`dualkit pretrain` runs masked-pretraining presets (task = \"masked\"); {args.preset} is a "
                           f"{spec.task!r} task: use `dualkit train {args.preset}`")
    return cmd_train(args)


def _init_from(args: argparse.Namespace, spec):
    """--init-from RUN: the encoder of a pretraining (or classifier) run, checked to fit this classifier."""
    if spec.task != "classify":
        raise DualkitError(f"--init-from starts a classifier from a pretrained encoder; {args.preset} is a {spec.task!r} task")
    from dualkit.tasks.probe import encoder_for_classifier

    return encoder_for_classifier(Path(args.init_from), spec)


def cmd_info(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.BACKENDS:
        if not registry.is_installed(name):
            rows.append([name, "not installed", "-", registry.BACKENDS[name][2]])
            continue
        backend = registry.get_backend(name)
        versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
        rows.append([name, "usable", versions, "; ".join(backend.devices())])
    print(f"dualkit on Python {platform.python_version()} ({platform.machine()})")
    print(markdown_table(["backend", "status", "versions", "devices / how to install"], rows))
    print(f"presets: {', '.join(presets.names())}")
    return 0


# -- resume: `dualkit train [PRESET] --resume RUN [--backend B] [--set train.epochs=N]` ----------------
RESUMERS = {"classify": "dualkit.tasks.classify", "masked": "dualkit.tasks.pretrain", "dqn": "dualkit.tasks.dqn"}  # task -> module with resume(run_dir, backend, overrides=, device=, progress=)


def _resume(args: argparse.Namespace) -> int:
    import importlib

    if args.out or args.overwrite or getattr(args, "init_from", None):
        raise DualkitError("--resume continues a run in its own folder from its own checkpoint; drop --out, --overwrite and --init-from")
    try:
        task = json.loads((Path(args.resume) / "spec.json").read_text()).get("task", "classify")
    except (OSError, ValueError, AttributeError):
        task = "classify"  # not a run folder, or a damaged one: the task's resume says which
    if args.preset:
        preset_task = presets.load(args.preset).task
        if preset_task != task:
            raise DualkitError(f"{args.resume} is a {task!r} run, but preset {args.preset!r} is a {preset_task!r} task; "
                               "drop the preset (--resume takes the spec from the run) or name the run's own")
    if task not in RESUMERS:
        raise DualkitError(f"resuming a {task!r} run is not supported yet (supported: {', '.join(RESUMERS)})")
    resume = importlib.import_module(RESUMERS[task]).resume
    run_dir = Path(args.resume)
    result = resume(run_dir, args.backend, overrides=args.overrides, device=args.device, progress=not args.quiet)
    if task == "classify":
        rows = [[h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h.get("val_accuracy", float("nan")), h["images_per_s"]]
                for h in result.history]
        print(markdown_table(["epoch", "train loss", "val loss", "val acc", "images/s"], rows))
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))
    elif task == "dqn":
        _print_dqn(result)
    elif task == "masked":
        rows = [[h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h["images_per_s"]] for h in result.history]
        print(markdown_table(["epoch", "masked loss", "val masked loss", "images/s"], rows))
        _print_masked_eval(result.evaluation)
        print(f"reconstructions: {result.grid}")
    backends = " -> ".join(seg["backend"] for seg in result.extra.get("segments", []))
    print(f"run folder: {run_dir}  (resumed from step {result.extra.get('resumed_step')}; backends: {backends}; {result.wall_s:.1f} s in all)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dualkit.tasks.classify import train

    if getattr(args, "resume", None):
        return _resume(args)
    if args.preset is None:
        raise DualkitError("name a preset to train (e.g. dualkit train cnn-digits), or --resume RUN to continue a run")
    spec = presets.load(args.preset, args.overrides)
    backend = registry.resolve_name(args.backend)
    run_dir = Path(args.out) if args.out else default_run_dir(Path(args.preset).stem, backend)
    init = _init_from(args, spec) if getattr(args, "init_from", None) else None
    if spec.task == "dqn":
        return _train_dqn(args, spec, backend, run_dir)
    if spec.task == "masked":
        return _train_masked(args, spec, backend, run_dir)
    result = train(spec, backend, run_dir=run_dir, device=args.device, progress=not args.quiet, overwrite=args.overwrite,
                   init_weights=init)
    rows = [[h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h.get("val_accuracy", float("nan")), h["images_per_s"]]
            for h in result.history]
    print(markdown_table(["epoch", "train loss", "val loss", "val acc", "images/s"], rows))
    print(f"test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))
    print(f"run folder: {run_dir}  ({result.wall_s:.1f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from dualkit.tasks.classify import evaluate_run

    if _run_task(args.run) == "dqn":
        return _eval_dqn(args)
    if _run_task(args.run) == "masked":
        return _eval_masked(args)
    res = evaluate_run(Path(args.run), args.backend, args.device, args.split)
    print(markdown_table(["run", "trained in", "evaluated in", "split", "loss", "accuracy", "top5", "macro F1"],
                         [[args.run, res["trained_in"], res["backend"], res["split"], res["loss"], res["accuracy"], res["top5"], res["macro_f1"]]]))
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    from dualkit.tasks.classify import NATIVE_SUFFIX, port_run

    task = _run_task(args.run)
    if task == "dqn":
        return _port_dqn(args)
    if task == "masked":
        raise DualkitError(
            f"{args.run} is a masked-pretraining run: its product is the encoder ({args.run}/encoder.safetensors), "
            f"which either backend loads directly; probe it with `dualkit eval {args.run} --backend torch|tf` or "
            f"start a classifier from it with `dualkit train cnn-cifar10 --init-from {args.run}`"
        )
    to = registry.resolve_name(args.to)
    out = Path(args.out) if args.out else Path(args.run) / f"model{NATIVE_SUFFIX[to]}"
    if out.exists() and not args.overwrite:
        raise DualkitError(f"{out} already exists; choose another --out or pass --overwrite")
    rep = port_run(Path(args.run), to, out, args.device)
    print(markdown_table(
        ["from", "to", "test images", "identical classes", "max |logit diff|", "acc (from)", "acc (to)"],
        [[rep["from"], rep["to"], rep["test_images"], rep["identical_classes"], rep["max_abs_logit_diff"], rep["accuracy_from"], rep["accuracy_to"]]],
    ))
    print(f"wrote {rep['artifact']}")
    return 0 if rep["identical_classes"] else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from dualkit.tasks import parity

    spec = presets.load(args.preset, args.overrides)
    for name in parity.BACKENDS:
        registry.get_backend(name, args.device)  # fail early, with the install hint, if one is missing
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    levels = [lvl.strip() for lvl in args.levels.split(",")]
    checks, t0 = [], time.perf_counter()
    if spec.task == "dqn":  # DQN has its own levels; the classifier's below then find nothing to do
        from dualkit.tasks import dqn_parity

        checks, levels = dqn_parity.run_levels(spec, levels, dtypes, args.device, args.seeds), []
    if spec.task == "masked":  # masked pretraining has its own levels too
        from dualkit.tasks import masked_parity

        checks, levels = masked_parity.run_levels(spec, levels, dtypes, args.device, args.seeds), []
    for dtype in dtypes:
        for level, fn in (("L0", parity.level0), ("L1", parity.level1), ("L2", parity.level2), ("L3", parity.level3)):
            if level in levels:
                checks += fn(dtype, args.device)
        if "L4" in levels:
            checks += parity.level4(spec, dtype, args.device)
    if "L5" in levels and args.seeds > 0:
        floor = parity.L5_MIN_ACCURACY if spec.data.name == "digits" else None
        checks += parity.level5(spec, args.device, tuple(range(args.seeds)), min_accuracy=floor)[0]
    if "port" in levels:
        checks += parity.port_checks(spec, args.device)
    rows = [[c.level, c.dtype, c.name, c.value, c.bound, "PASS" if c.passed else "FAIL", c.detail] for c in checks]
    print(markdown_table(["level", "dtype", "check", "measured", "bound", "verdict", "detail"], rows))
    failed = [c for c in checks if not c.passed]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed ({time.perf_counter() - t0:.0f} s on {args.device})")
    if args.json:
        write_json(Path(args.json), {"preset": args.preset, "device": args.device, "checks": [c.to_dict() for c in checks]})
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dualkit.benchmarks import report, suite

    if args.compare:
        old, new = (report.load_results(Path(p)) for p in args.compare)
        print(report.compare(old, new))
        return 0
    if args.full and not args.data_root:
        raise DualkitError("--full trains on CIFAR-10: name its folder with --data-root PATH "
                           "(the folder holding cifar-10-batches-bin or cifar-10-batches-py)")
    config = suite.full_config(args.data_root) if args.full else suite.fast_config()
    if args.presets:
        config.presets = [p.strip() for p in args.presets.split(",")]
    if args.seeds:
        config.seeds = list(range(args.seeds))
    if args.data_root and not args.full:
        config.overrides.append(f"data.root={json.dumps(args.data_root)}")
    config.devices = suite.available_devices() if args.device == "auto" else [args.device]
    if args.no_overhead:
        config.overhead = False
    if args.no_parity:
        config.parity = False
    out = Path(args.out) if args.out else Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    if (out / "results.json").exists() and not args.overwrite:
        raise DualkitError(f"{out} already holds benchmark results; choose another --out or pass --overwrite")
    results = suite.run_bench(config, progress=not args.quiet)
    paths = report.write_report(results, out)
    print(paths["report"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    failed = [c for c in results["parity"] if not c["passed"]]
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualkit", description="One core, two backends (PyTorch, TensorFlow/Keras 3).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices and usable backends")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("train", help="train a preset on one backend into a run folder")
    _spec_args(p, optional=True)
    _backend_args(p)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<backend>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--init-from", metavar="RUN", help="start the classifier's encoder from a pretraining run "
                   "(its encoder.safetensors; the head starts fresh)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest checkpoint (the spec is the run's own; "
                   "--set may change train.epochs and checkpointing; --backend may name the other framework)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("pretrain", help="masked image pretraining of the CNN encoder (then linear probe and fine-tune)")
    _spec_args(p)
    _backend_args(p)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<backend>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a run folder's model in either backend")
    p.add_argument("run", help="a run folder written by `dualkit train`")
    _backend_args(p)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--episodes", type=int, help="DQN: greedy episodes to play (default: the spec's dqn.test_episodes)")
    p.add_argument("--seed", type=int, help="DQN: seed of the first episode (default: the spec's env.test_seed)")
    p.add_argument("--no-finetune", action="store_true", help="masked pretraining: the linear probe only")
    p.add_argument("--quiet", action="store_true", help="masked pretraining: no progress bars")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("port", help="write a run's model as the other framework's native artifact, with a parity check")
    p.add_argument("run", help="a run folder written by `dualkit train`")
    p.add_argument("--to", required=True, help="target backend: torch (.pt) or tf (.keras)")
    p.add_argument("--out", help="artifact path (default: RUN/model.pt or RUN/model.keras)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES)
    p.set_defaults(fn=cmd_port)

    p = sub.add_parser("parity", help="run the parity levels on both backends and print a verdict table")
    _spec_args(p)
    p.add_argument("--device", default="cpu", choices=registry.DEVICES)
    p.add_argument("--dtype", default="both", choices=("float32", "float64", "both"))
    p.add_argument("--levels", default="L0,L1,L2,L3,L4,L5,port", help="comma-separated subset of L0..L5,port")
    p.add_argument("--seeds", type=int, default=3, help="seeds per backend for L5 (0 skips it)")
    p.add_argument("--json", help="also write the checks to this JSON file")
    p.set_defaults(fn=cmd_parity)

    p = sub.add_parser("bench", help="the benchmark suite: runs, parity levels, overhead; JSON, Markdown and plots")
    p.add_argument("--full", action="store_true", help="CIFAR-10 too (needs --data-root), 5 seeds, masked fine-tunes")
    p.add_argument("--data-root", help="folder holding cifar-10-batches-bin or cifar-10-batches-py")
    p.add_argument("--presets", help="comma-separated presets (default: cnn-digits, masked-digits, dqn-cartpole; "
                   "--full adds masked-cifar10, cnn-cifar10)")
    p.add_argument("--seeds", type=int, default=0, help="seeds per backend (default 3; 5 with --full)")
    p.add_argument("--device", default="auto", choices=registry.DEVICES, help="auto = cpu, plus gpu where present")
    p.add_argument("--no-overhead", action="store_true", help="skip the bare-loop overhead benchmark")
    p.add_argument("--no-parity", action="store_true", help="skip the parity levels")
    p.add_argument("--out", help="output folder (default: bench-results/<time>)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two results.json files and stop")
    p.set_defaults(fn=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DualkitError as exc:
        print(f"dualkit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # Interrupted: 128 + the signal number
    except KeyboardInterrupt:
        print("dualkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
