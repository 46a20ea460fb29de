"""The ``dualkit`` command line: info, train, eval, port, export, parity, bench."""

from __future__ import annotations

import argparse
import errno
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dualkit.core import registry
from dualkit.core.errors import DualkitError
from dualkit.core.report import markdown_table
from dualkit.core.runs import default_run_dir, write_json
from dualkit.tasks import launch, presets
from dualkit.tasks import registry as task_registry
from dualkit.tasks.base import EvalOptions
from dualkit.tasks.export import FORMATS as EXPORT_FORMATS
from dualkit.tasks.parity import BACKENDS, plot_gaps

HF = "hf"  # `dualkit port --to hf`: a Hugging Face folder (transformer runs)

PLOT_FILE = "parity-gaps.png"  # `dualkit parity --plot DIR`
PARITY_LEVELS = "L0,L1,L2,L3,L4,L5,port"  # `dualkit parity`'s levels when --levels is not given


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 1")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0 (a seed or a count where 0 means none)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number >= 0")
    return value


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help=f"torch or tf (default: ${registry.ENV_VAR}, else {registry.DEFAULT})")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES, help="cpu (default), gpu or auto")


def _workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="data-parallel on N local worker processes (torch.distributed / tf.distribute); train.batch_size is "
        "the global batch, cut into N equal shards (README: Distributed training)",
    )


def _spec_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument(
        "preset", nargs="?" if optional else None, help=f"a preset name ({', '.join(presets.names())}) or a .toml file"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set optim.lr=0.01 (repeatable)",
    )


def _task_of_preset(args: argparse.Namespace):
    spec = presets.load(args.preset, args.overrides)
    return spec, task_registry.for_spec(spec)


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


def _resume(args: argparse.Namespace) -> int:
    """``dualkit train [PRESET] --resume RUN [--backend B] [--set train.epochs=N]``."""
    if args.out or args.overwrite or getattr(args, "init_from", None):
        raise DualkitError(
            "--resume continues a run in its own folder from its own checkpoint; "
            "drop --out, --overwrite and --init-from"
        )
    run_dir = Path(args.resume)
    task = task_registry.for_run(run_dir)
    if args.preset:
        preset_task = presets.load(args.preset).task
        if preset_task != task.name:
            raise DualkitError(
                f"{args.resume} is a {task.name!r} run, but preset {args.preset!r} is a "
                f"{preset_task!r} task; drop the preset (--resume takes the spec from the run) or "
                "name the run's own"
            )
    backend = args.backend
    if args.workers > 1 or launch.is_worker(None):  # the launch needs the framework: the run's, unless named
        backend = launch.resume_backend(run_dir, args.backend)
        if not launch.is_worker(backend):
            task.check_workers(args.workers)
            return launch.cli_launch(args, backend, run_dir)
    with launch.cli_session(backend, args.device, args.workers) as world:
        progress = not args.quiet and world.writer
        result = task.resume(run_dir, args.backend, overrides=args.overrides, device=args.device, progress=progress)
    if not world.writer:
        return 0
    task.show(result)
    backends = " -> ".join(seg["backend"] for seg in result.extra.get("segments", []))
    print(
        f"run folder: {run_dir}  (resumed from step {result.extra.get('resumed_step')}; backends: {backends}; "
        f"{result.wall_s:.1f} s in all)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if getattr(args, "resume", None):
        return _resume(args)
    if args.preset is None:
        raise DualkitError("name a preset to train (e.g. dualkit train cnn-digits), or --resume RUN to continue a run")
    spec, task = _task_of_preset(args)
    if args.command == "pretrain" and not task.pretraining:
        raise DualkitError(
            f"`dualkit pretrain` runs pretraining presets; {args.preset} is a {task.name!r} task: "
            f"use `dualkit train {args.preset}`"
        )
    backend = registry.resolve_name(args.backend)
    run_dir = Path(args.out) if args.out else default_run_dir(Path(args.preset).stem, backend)
    init_from = getattr(args, "init_from", None)
    if args.workers > 1 and not launch.is_worker(backend):
        task.check_workers(args.workers, spec)
        return launch.cli_launch(args, backend, run_dir)
    with launch.cli_session(backend, args.device, args.workers) as world:
        result = task.train(
            spec,
            backend,
            run_dir=run_dir,
            device=args.device,
            progress=not args.quiet and world.writer,
            overwrite=args.overwrite,
            init_from=Path(init_from) if init_from else None,
        )
    if not world.writer:
        return 0
    task.show(result)
    print(f"run folder: {run_dir}  ({result.wall_s:.1f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    options = EvalOptions(
        split=args.split, episodes=args.episodes, seed=args.seed, finetune=not args.no_finetune, progress=not args.quiet
    )
    task_registry.for_run(Path(args.run)).evaluate(Path(args.run), args.backend, args.device, options)
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    task = task_registry.for_run(Path(args.run))
    to = args.to if args.to == HF else registry.resolve_name(args.to)
    if to not in task.native_suffix:
        raise DualkitError(
            f"{args.run} is a {task.name!r} run; --to {to} is for the transformer tasks' runs; use --to torch or tf"
        )
    suffix = task.native_suffix[to]
    out = Path(args.out) if args.out else Path(args.run) / (HF if to == HF else f"model{suffix}")
    if out.exists() and not args.overwrite:
        raise DualkitError(f"{out} already exists; choose another --out or pass --overwrite")
    rep = task.port(Path(args.run), to, out, args.device)
    print(markdown_table(list(rep.row), [list(rep.row.values())]))
    print(f"wrote {rep.artifact}")
    return 0 if rep.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    rep = task_registry.for_run(run_dir).export(
        run_dir, args.format, args.backend, Path(args.out) if args.out else None, args.device, args.overwrite
    )
    print(markdown_table(rep.headers, rep.rows))
    for note in rep.notes:
        print(note)
    print(f"wrote {rep.artifact} (verification: {rep.record})")
    return 0 if rep.ok else 1


def _golden_levels(args: argparse.Namespace, task, levels: list[str], available: list[str], where: str) -> list[str]:
    """The levels of a --record or --against run: all of ``available`` unless --levels names some of them."""
    if args.levels is None:
        return list(available)
    missing = [lvl for lvl in levels if lvl not in available]
    if missing:
        raise DualkitError(
            f"parity level {missing[0]} has no golden files {where} (golden levels: {', '.join(available)}); "
            "drop it from --levels"
        )
    return levels


def _golden_parity(args: argparse.Namespace, spec, task, levels: list[str]) -> tuple[list, str]:
    """``--record DIR`` (both backends on CPU; the checks compare the recorded backends) or ``--against DIR`` (one
    backend on --device against the recording): the checks and a closing line."""
    from dualkit.tasks import golden_files

    if args.record:
        if args.device != "cpu" or args.backend:
            raise DualkitError(
                "golden files are recorded on CPU by both backends; drop --device and --backend from --record"
            )
        if not task.golden_levels:
            raise DualkitError(f"{task.name!r} tasks have no golden-file parity; drop --record")
        for name in BACKENDS:
            registry.get_backend(name, "cpu")  # fail early, with the install hint, if one is missing
        levels = _golden_levels(args, task, levels, list(task.golden_levels), f"for {task.name!r} tasks")
        dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
        rec = golden_files.record(task, spec, args.preset, levels, dtypes, Path(args.record), args.l4_steps)
        note = f"wrote {rec.path}: {rec.cases} cases, {rec.nbytes / 2**20:.1f} MiB, recorded in {rec.seconds:.0f} s"
        return rec.checks, note
    if args.l4_steps:
        raise DualkitError("--against replays the recording's own L4 run; drop --l4-steps (it is set by --record)")
    golden = golden_files.load(Path(args.against))
    levels = _golden_levels(args, task, levels, golden.levels, f"in {args.against}")
    dtypes = golden.dtypes if args.dtype == "both" else [args.dtype]
    if not set(dtypes) <= set(golden.dtypes):
        raise DualkitError(f"{args.against} holds {', '.join(golden.dtypes)} only; choose --dtype from those")
    backend = registry.resolve_name(args.backend or "torch")
    checks = golden_files.check(task, spec, golden, backend, args.device, levels, dtypes)
    return checks, f"checked {backend} on {args.device} against {args.against} ({golden.preset}, recorded on CPU)"


def cmd_parity(args: argparse.Namespace) -> int:
    spec, task = _task_of_preset(args)
    levels = [lvl.strip() for lvl in (args.levels or PARITY_LEVELS).split(",")]
    unknown = [lvl for lvl in levels if lvl not in task.levels]
    if unknown:  # an unknown level would run nothing and report "0 failed"
        raise DualkitError(f"unknown parity level {unknown[0]!r}; {task.name!r} has: {', '.join(task.levels)}")
    if args.json and Path(args.json).is_dir():  # refused before the checks run, not after
        raise DualkitError(f"--json {args.json} is a folder; name a file, e.g. {Path(args.json) / 'parity.json'}")
    golden = args.record or args.against
    if args.backend and not args.against:
        raise DualkitError("--backend names the one backend checked against golden files; use it with --against DIR")
    t0 = time.perf_counter()
    note = ""
    if golden:
        checks, note = _golden_parity(args, spec, task, levels)
    else:
        for name in BACKENDS:
            registry.get_backend(name, args.device)  # fail early, with the install hint, if one is missing
        dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
        extra = {"l4_steps": args.l4_steps} if args.l4_steps else {}
        checks = task.parity(spec, levels, dtypes, args.device, args.seeds, **extra)
    if not checks:  # "0 passed, 0 failed" would read as a pass
        raise DualkitError(
            f"no parity check ran for --levels {','.join(levels)}"
            + (" (L5 trains --seeds runs per backend: 0 runs none)" if "L5" in levels and args.seeds == 0 else "")
            + "; name a level that runs, e.g. --levels L1 (or --seeds 3 for L5)"
        )
    rows = [[c.level, c.dtype, c.name, c.value, c.bound, "PASS" if c.passed else "FAIL", c.detail] for c in checks]
    print(markdown_table(["level", "dtype", "check", "measured", "bound", "verdict", "detail"], rows))
    failed = [c for c in checks if not c.passed]
    print(
        f"\n{len(checks) - len(failed)} passed, {len(failed)} failed "
        f"({time.perf_counter() - t0:.0f} s on {'cpu' if args.record else args.device})"
    )
    if note:
        print(note)
    if args.json:
        record = {"preset": args.preset, "device": args.device, "checks": [c.to_dict() for c in checks]}
        if golden:
            record.update(golden=str(golden), mode="record" if args.record else "against", backend=args.backend)
        write_json(Path(args.json), record)
    if args.plot:
        Path(args.plot).mkdir(parents=True, exist_ok=True)
        drawn = plot_gaps([{**c.to_dict(), "preset": args.preset} for c in checks], Path(args.plot) / PLOT_FILE)
        print(f"wrote {drawn}" if drawn else "--plot: no check of these levels has per-step gaps (float32 L4 has)")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dualkit.benchmarks import report, suite

    if args.compare:
        old, new = (report.load_results(Path(p)) for p in args.compare)
        print(report.compare(old, new))
        return 0
    if args.full and not args.data_root:
        raise DualkitError(
            "--full trains on CIFAR-10: name its folder with --data-root PATH "
            "(the folder holding cifar-10-batches-bin or cifar-10-batches-py)"
        )
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
    parser = argparse.ArgumentParser(
        prog="dualkit", description="One core, two backends (PyTorch, TensorFlow/Keras 3)."
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show the frameworks' start-up lines on stderr (or set ${registry.VERBOSE_ENV_VAR}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices and usable backends")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("train", help="train a preset on one backend into a run folder")
    _spec_args(p, optional=True)
    _backend_args(p)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<backend>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--init-from",
        metavar="RUN",
        help="start the encoder from a pretraining run (classifier: a masked run's encoder.safetensors; tagger: an mlm "
        "run or a Hugging Face BERT folder, with its vocabulary); the head starts fresh",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its newest checkpoint (the spec is the run's own; "
        "--set may change train.epochs and checkpointing; --backend may name the other framework)",
    )
    _workers_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser(
        "pretrain",
        help="pretraining: masked image modelling of the CNN encoder, or BERT's masked language model (then "
        "evaluated downstream)",
    )
    _spec_args(p)
    _backend_args(p)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<backend>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _workers_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run folder's model in either backend")
    p.add_argument("run", help="a run folder written by `dualkit train`")
    _backend_args(p)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument(
        "--episodes", type=positive_int, help="DQN: greedy episodes to play (default: the spec's dqn.test_episodes)"
    )
    p.add_argument(
        "--seed", type=non_negative_int, help="DQN: seed of the first episode (default: the spec's env.test_seed)"
    )
    p.add_argument("--no-finetune", action="store_true", help="masked pretraining: the linear probe only")
    p.add_argument("--quiet", action="store_true", help="masked pretraining: no progress bars")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("port", help="write a run's model as the other framework's native artifact, with a parity check")
    p.add_argument("run", help="a run folder written by `dualkit train`")
    p.add_argument(
        "--to",
        required=True,
        help="target backend: torch (.pt) or tf (.keras); hf: a Hugging Face folder (transformer runs)",
    )
    p.add_argument("--out", help="artifact path (default: RUN/model.pt, RUN/model.keras or RUN/hf)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES)
    p.set_defaults(fn=cmd_port)

    p = sub.add_parser(
        "export", help="write a run's inference model for deployment, verified in its runtime against both backends"
    )
    p.add_argument("run", help="a run folder written by `dualkit train` or `dualkit pretrain`")
    p.add_argument("--format", required=True, choices=tuple(EXPORT_FORMATS), help="onnx, savedmodel, pt2, keras or pt")
    p.add_argument(
        "--backend", help="the framework that writes it (onnx: torch or tf; default: the run's own where it can)"
    )
    p.add_argument("--out", help="artifact path (default: RUN/exports/model-<backend>.<format>, or a folder)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("parity", help="run the parity levels on both backends and print a verdict table")
    _spec_args(p)
    p.add_argument("--device", default="cpu", choices=registry.DEVICES)
    p.add_argument("--dtype", default="both", choices=("float32", "float64", "both"))
    p.add_argument(
        "--levels",
        help=f"comma-separated subset of L0..L5,port,export,dist (default {PARITY_LEVELS}; with --record/--against: "
        "the golden levels L0..L4, resp. those recorded)",
    )
    p.add_argument("--seeds", type=non_negative_int, default=3, help="seeds per backend for L5 (0 skips it)")
    p.add_argument("--json", help="also write the checks to this JSON file")
    p.add_argument(
        "--l4-steps",
        type=positive_int,
        help="L4: compare at least this many training steps (DQN: updates) instead of the task's own short run",
    )
    p.add_argument(
        "--plot", metavar="DIR", help=f"also draw float32 L4's per-step gaps and rounding envelope in DIR/{PLOT_FILE}"
    )
    golden = p.add_mutually_exclusive_group()
    golden.add_argument(
        "--record",
        metavar="DIR",
        help="record golden files in DIR: every golden level's inputs and outputs from both backends on CPU",
    )
    golden.add_argument(
        "--against",
        metavar="DIR",
        help="check one backend (--backend, default torch) on --device against golden files recorded in DIR",
    )
    p.add_argument("--backend", help="with --against: the backend to check, torch (default) or tf")
    p.set_defaults(fn=cmd_parity)

    p = sub.add_parser("bench", help="the benchmark suite: runs, parity levels, overhead; JSON, Markdown and plots")
    p.add_argument("--full", action="store_true", help="CIFAR-10 too (needs --data-root), 5 seeds, masked fine-tunes")
    p.add_argument("--data-root", help="folder holding cifar-10-batches-bin or cifar-10-batches-py")
    p.add_argument(
        "--presets",
        help="comma-separated presets (default: cnn-digits, masked-digits, dqn-cartpole; "
        "--full adds masked-cifar10, cnn-cifar10)",
    )
    p.add_argument("--seeds", type=non_negative_int, default=0, help="seeds per backend (default 3; 5 with --full)")
    p.add_argument("--device", default="auto", choices=registry.DEVICES, help="auto = cpu, plus gpu where present")
    p.add_argument("--no-overhead", action="store_true", help="skip the bare-loop overhead benchmark")
    p.add_argument("--no-parity", action="store_true", help="skip the parity levels")
    p.add_argument("--out", help="output folder (default: bench-results/<time>)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two results.json files and stop")
    p.set_defaults(fn=cmd_bench)
    return parser


def os_error(exc: OSError) -> str:
    """One line for an OSError a user can fix: what failed, on which file, and what to do."""
    where = f": {exc.filename}" if exc.filename else ""  # a full disk's write names no file
    fixes = {
        errno.ENOSPC: "free some space or write elsewhere (--out)",
        errno.EDQUOT: "free some space or write elsewhere (--out)",
        errno.EROFS: "the file system is read-only: write elsewhere (--out)",
        errno.EACCES: "you may not write there: write elsewhere (--out) or change its permissions",
        errno.EPERM: "you may not write there: write elsewhere (--out) or change its permissions",
        errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
        errno.EEXIST: "a file stands where a folder is needed: choose another path",  # mkdir over a file
        errno.EISDIR: "a folder stands where a file is needed: choose a file name",
        errno.ENOENT: "check the path",
    }
    fix = fixes.get(exc.errno, "check the path and try again")
    return f"{exc.strerror or exc}{where}; {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    registry.set_verbose(args.verbose)
    try:
        return args.fn(args)
    except DualkitError as exc:
        print(f"dualkit: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # Interrupted: 128 + the signal number
    except OSError as exc:  # the file system said no: a full disk, a read-only folder, a file where a folder goes
        print(f"dualkit: error: {os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dualkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
