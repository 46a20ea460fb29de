"""DQN throughput and time to solve, per backend: environment steps per second end to end (acting,
training, evaluating), for a DQN preset (default dqn-cartpole), over a few seeds.

    python -m dualkit.benchmarks.dqn_speed [--preset dqn-cartpole] [--seeds 3] [--full] [--out bench-dqn]

By default the run stops once solved (the preset's dqn.stop_return), which gives the wall time to solve;
``--full`` turns early stopping off and runs the whole budget (the steady-state throughput). Writes
dqn_speed.json and dqn_speed.md. This is a benchmark, not a timed test: the numbers depend on the machine
and on what else runs on it, so the CPU time of the process is reported beside the wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from dualkit.core import registry
from dualkit.core.report import markdown_table
from dualkit.core.runs import write_json
from dualkit.tasks import presets
from dualkit.tasks.dqn import train, with_budget

HEADERS = [
    "backend",
    "seed",
    "env steps",
    "updates",
    "wall s",
    "steps/s",
    "steps/s w/o eval",
    "steps/cpu-s",
    "solved at",
    "test return",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="dqn-cartpole")
    ap.add_argument("--backends", default="torch,tf")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="no early stop: run the preset's whole budget")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="bench-dqn")
    args = ap.parse_args(argv)

    base = presets.load(args.preset, args.overrides)
    if args.full:
        base = with_budget(base, stop_return=0.0)
    rows, records = [], []
    for name in [b.strip() for b in args.backends.split(",")]:
        registry.get_backend(name)
        for seed in range(args.seeds):
            cpu0, t0 = time.process_time(), time.perf_counter()
            r = train(base.__class__(**{**base.__dict__, "seed": seed}), name, progress=False)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            rec = {
                "backend": name,
                "seed": seed,
                "env_steps": r.env_steps,
                "updates": r.updates,
                "train_wall_s": r.wall_s,
                "steps_per_s": r.steps_per_s,
                "steps_per_cpu_s": r.env_steps / cpu,
                "solved_at": r.solved_at,
                "test_return": r.test["return_mean"],
                "total_wall_s": wall,
                "eval_s": r.eval_s,
                "steps_per_s_without_eval": r.env_steps / max(r.wall_s - r.eval_s, 1e-9),
            }
            records.append(rec)
            rows.append(
                [
                    name,
                    seed,
                    r.env_steps,
                    r.updates,
                    r.wall_s,
                    r.steps_per_s,
                    rec["steps_per_s_without_eval"],
                    rec["steps_per_cpu_s"],
                    r.solved_at or "-",
                    r.test["return_mean"],
                ]
            )
            print(markdown_table(HEADERS, rows[-1:]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(HEADERS, rows)
    info = {
        "preset": args.preset,
        "full": args.full,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "threads": registry.thread_count(),
    }
    write_json(out / "dqn_speed.json", {**info, "runs": records})
    (out / "dqn_speed.md").write_text(
        f"# DQN speed: {args.preset}\n\n{table}\n\nload average at the end: {info['load_avg']}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
