"""The ``dualkit`` command line: info, train, eval, port, parity."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

from core import registry
from core.errors import DualkitError
from core.report import markdown_table
from core.runs import default_run_dir, write_json
from tasks import presets


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help=f"torch or tf (default: ${registry.ENV_VAR}, else {registry.DEFAULT})")
    p.add_argument("--device", default="cpu", choices=registry.DEVICES, help="cpu (default), gpu or auto")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help=f"a preset name ({', '.join(presets.names())}) or a .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set optim.lr=0.01 (repeatable)")


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


def cmd_train(args: argparse.Namespace) -> int:
    from tasks.classify import train

    spec = presets.load(args.preset, args.overrides)
    backend = registry.resolve_name(args.backend)
    run_dir = Path(args.out) if args.out else default_run_dir(Path(args.preset).stem, backend)
    result = train(spec, backend, run_dir=run_dir, device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    rows = [[h["epoch"], h["train_loss"], h.get("val_loss", float("nan")), h.get("val_accuracy", float("nan")), h["images_per_s"]]
            for h in result.history]
    print(markdown_table(["epoch", "train loss", "val loss", "val acc", "images/s"], rows))
    print(f"test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))
    print(f"run folder: {run_dir}  ({result.wall_s:.1f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tasks.classify import evaluate_run

    res = evaluate_run(Path(args.run), args.backend, args.device, args.split)
    print(markdown_table(["run", "trained in", "evaluated in", "split", "loss", "accuracy", "top5", "macro F1"],
                         [[args.run, res["trained_in"], res["backend"], res["split"], res["loss"], res["accuracy"], res["top5"], res["macro_f1"]]]))
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    from tasks.classify import NATIVE_SUFFIX, port_run

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
    from tasks import parity

    spec = presets.load(args.preset, args.overrides)
    for name in parity.BACKENDS:
        registry.get_backend(name, args.device)  # fail early, with the install hint, if one is missing
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    levels = [lvl.strip() for lvl in args.levels.split(",")]
    checks, t0 = [], time.perf_counter()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualkit", description="One core, two backends (PyTorch, TensorFlow/Keras 3).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices and usable backends")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("train", help="train a preset on one backend into a run folder")
    _spec_args(p)
    _backend_args(p)
    p.add_argument("--out", help="run folder (default: runs/<preset>-<backend>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run folder's model in either backend")
    p.add_argument("run", help="a run folder written by `dualkit train`")
    _backend_args(p)
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DualkitError as exc:
        print(f"dualkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dualkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
