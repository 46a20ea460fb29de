"""DQN as a task (tasks/base.py): training, resume, greedy evaluation, port, parity and benchmark."""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core.batches import make_rng
from dualkit.core.errors import DualkitError
from dualkit.core.exploration import greedy
from dualkit.core.replay import PackedBatch
from dualkit.core.report import markdown_table, mean_or_absent
from dualkit.core.weights import QNET_PREFIX, init_qnet
from dualkit.tasks import dqn_golden, dqn_parity, export
from dualkit.tasks.base import EvalOptions, ExportReport, PortReport, Task, run_summary, timed_rate
from dualkit.tasks.dqn_spec import DQNRunSpec
from dualkit.tasks.parity import BACKENDS, Check

# The benchmark's L4 trajectory: float32 as long as the parity suite's own; float64, which shows that the float32
# gap is rounding, is shorter because its gap does not grow along the run (README, "Why the parity settings").
BENCH_L4_UPDATES = {"float32": 1000, "float64": 300}
EXPORT_STEPS = 2000  # the export level's short run: export does not depend on how well the agent learned
EXPORT_EPISODES = 2  # greedy episodes played at a time for the export's probe batch
EXPORT_MAX_EPISODES = 32
# Step throughput (Task.step_throughput) without Gymnasium: the spaces of the classic-control envs; with it, also an
# end-to-end run of THROUGHPUT_ENV_STEPS env steps.
CLASSIC_SPACES = {"CartPole-v1": (4, 2), "Acrobot-v1": (6, 3), "MountainCar-v0": (2, 3)}
THROUGHPUT_ENV_STEPS = 20_000


def driver() -> ModuleType:
    """tasks/dqn.py, imported when first used: it runs Gymnasium (core.envs), which a machine that only checks
    golden files (tasks/golden_files.py, e.g. a GPU machine with PyTorch alone) does not need or have."""
    from dualkit.tasks import dqn

    return dqn


class DQNTask(Task):
    name = "dqn"
    title = "DQN"
    spec_class = DQNRunSpec
    metric = "test_return"
    metric_label = "greedy test return"
    metric_decimals = 1
    throughput_unit = "env steps/s"

    def train(self, spec, backend, *, run_dir, device, progress, overwrite, init_from=None):
        if init_from is not None:
            raise DualkitError(
                f"--init-from starts a classifier from a pretrained encoder; this is a {self.name!r} task"
            )
        return driver().train(spec, backend, run_dir=run_dir, device=device, progress=progress, overwrite=overwrite)

    def resume(self, run_dir, backend, *, overrides, device, progress):
        return driver().resume(run_dir, backend, overrides=overrides, device=device, progress=progress)

    def show(self, result) -> None:
        rows = [
            [
                e["env_steps"],
                e["updates"],
                e["epsilon"],
                e["loss"],
                e["train_return"],
                e["eval_return"],
                e["steps_per_s"],
            ]
            for e in result.evals
        ]
        print(
            markdown_table(["env steps", "updates", "epsilon", "loss", "train return", "eval return", "steps/s"], rows)
        )
        t = result.test
        solved = f"; solved at {result.solved_at} env steps" if result.solved_at else ""
        print(
            f"test: greedy return {t['return_mean']:.1f} +- {t['return_std']:.1f} (min {t['return_min']:.0f}) "
            f"over {len(t['returns'])} held-out episodes{solved}"
        )

    def evaluate(self, run_dir, backend, device, options: EvalOptions) -> None:
        res = driver().evaluate_run(Path(run_dir), backend, device, options.episodes, options.seed)
        print(
            markdown_table(
                ["run", "trained in", "evaluated in", "env", "episodes", "first seed", "mean return", "std", "min"],
                [
                    [
                        str(run_dir),
                        res["trained_in"],
                        res["backend"],
                        res["env_id"],
                        res["episodes"],
                        res["seed"],
                        res["return_mean"],
                        res["return_std"],
                        res["return_min"],
                    ]
                ],
            )
        )

    def port(self, run_dir, to, out, device) -> PortReport:
        rep = driver().port_run(Path(run_dir), to, out, device)
        row = {
            "from": rep["from"],
            "to": rep["to"],
            "episodes": rep["episodes"],
            "identical returns": rep["identical_returns"],
            "max rel |Q diff|": rep["max_rel_q_diff"],
            "return (from)": rep["return_from"],
            "return (to)": rep["return_to"],
        }
        return PortReport(row, Path(rep["artifact"]), rep["identical_returns"])

    def export_source(self, run_dir: Path, device: str) -> export.ExportSource:
        """The online network's Q-values on observations; probed on observations of the run's environment, seen
        by the agent playing held-out greedy episodes (in the backend that trained it, or the other where that
        one is not installed), spread evenly over the episodes."""
        from dualkit.core.envs import Evaluator, episode_seeds

        run = driver().load_run(Path(run_dir))
        player = run.meta["backend"] if registry.is_installed(run.meta["backend"]) else registry.available()[0]
        agent = driver().load_agent(run, player, device)
        seen: list[np.ndarray] = []

        def policy(obs: np.ndarray) -> np.ndarray:
            seen.append(obs.copy())
            return greedy(agent.act_values(obs))

        # held-out episodes, EXPORT_EPISODES at a time, until the probe is full (an untrained agent's are short)
        first = run.spec.env.test_seed
        while sum(map(len, seen)) < export.PROBE_SIZE and first < run.spec.env.test_seed + EXPORT_MAX_EPISODES:
            evaluator = Evaluator(run.spec.env, episode_seeds(first, EXPORT_EPISODES), run.spec.dtype)
            try:
                evaluator.run(policy)
            finally:
                evaluator.close()
            first += EXPORT_EPISODES
        obs = export.spread(np.concatenate(seen))

        def reference(backend: str) -> np.ndarray:
            return driver().load_agent(run, backend, device).act_values(obs)

        return export.ExportSource(
            task=self.name,
            trained_in=run.meta["backend"],
            ops=export.mlp_ops(run.spec.qnet, run.info.obs_dim, run.info.num_actions, QNET_PREFIX),
            weights=run.weights,
            input_shape=(run.info.obs_dim,),
            input_name="observations",
            output_name="q_values",
            probe=obs.astype(np.float32),
            reference=reference,
            predicted="actions",
            metadata={"env": run.spec.env.id, "input": "float32 observations (N, obs_dim), as the env returns them"},
        )

    def export(self, run_dir, fmt, backend, out, device, overwrite=False) -> ExportReport:
        return export.export_run(self.export_source(run_dir, device), run_dir, fmt, backend, out, device, overwrite)

    def export_parity(self, spec, device) -> list[Check]:
        """The export level: a short run of the preset (EXPORT_STEPS env steps), its Q-network exported in every
        format from both backends."""
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            short = dqn_parity.port_spec(spec, EXPORT_STEPS)
            driver().train(short, "torch", run_dir=run_dir, device=device, progress=False, test=False)
            return export.export_checks(self.export_source(run_dir, device), device)

    def check_inputs(self, spec) -> None:
        from dualkit.core.envs import env_info

        env_info(spec.env)

    def parity(self, spec, levels, dtypes, device, seeds, l4_steps=None) -> list[Check]:
        return dqn_parity.run_levels(spec, levels, dtypes, device, seeds, l4_steps) + (
            self.export_parity(spec, device) if "export" in levels else []
        )

    golden_levels = dqn_golden.GOLDEN_LEVELS

    def golden_cases(self, spec, levels, dtype, l4_steps=None):
        return dqn_golden.golden_cases(spec, levels, dtype, l4_steps)

    def step_throughput(self, spec, backend, device, seconds) -> list[dict[str, Any]]:
        """The agent's side of the preset's loop on random observations and minibatches: Q-values for ``num_envs``
        observations and an update on a ``batch_size`` minibatch, timed apart; env steps/s as the loop spends them
        (one Q-value call and num_envs x gradient_steps / train_freq updates per vector step, the env's own time
        left out). Where Gymnasium is installed, also env steps/s of a real run (THROUGHPUT_ENV_STEPS, no
        evaluations)."""
        d, n_envs = spec.dqn, spec.env.num_envs
        if importlib.util.find_spec("gymnasium") is not None:
            from dualkit.core.envs import env_info

            info = env_info(spec.env)
            obs_dim, n_actions = info.obs_dim, info.num_actions
        elif spec.env.id in CLASSIC_SPACES:
            obs_dim, n_actions = CLASSIC_SPACES[spec.env.id]
        else:
            return []
        module = registry.get_backend(backend, device)
        weights = init_qnet(spec.qnet.hidden, obs_dim, n_actions, spec.seed, spec.dtype)
        agent = module.DQNAgent(
            spec.qnet, obs_dim, n_actions, weights, spec.optim, d.gamma, d.loss, d.double, spec.dtype, device
        )
        rng = make_rng(spec.seed, "throughput")
        obs = rng.normal(size=(n_envs, obs_dim)).astype(spec.dtype)
        rows = rng.normal(size=(d.batch_size, 2 * obs_dim + 3)).astype(spec.dtype)
        rows[:, -2] = rng.random(d.batch_size) < 0.05  # terminated
        rows[:, -1] = rng.integers(0, n_actions, d.batch_size)  # action
        act = timed_rate(partial(agent.act_values, obs), n_envs, seconds / 2)
        upd = timed_rate(partial(agent.update, PackedBatch(rows, obs_dim), spec.optim.lr), 1, seconds / 2)
        per_vector_step = n_envs * d.gradient_steps / d.train_freq
        ms = act["ms_per_step"] + per_vector_step * upd["ms_per_step"]
        out = [
            {
                "what": f"agent side of a vector step ({n_envs} envs)",
                "value": 1000.0 * n_envs / ms,
                "unit": "env steps/s",
                "detail": f"Q-values {act['ms_per_step']:.3f} ms + {per_vector_step:g} updates x "
                f"{upd['ms_per_step']:.3f} ms per {n_envs} env steps; env time not included",
            },
            {
                "what": f"update, batch {d.batch_size}",
                "value": upd["rate"],
                "unit": "updates/s",
                "detail": f"{upd['steps']} updates, {upd['ms_per_step']:.3f} ms each",
            },
        ]
        if importlib.util.find_spec("gymnasium") is not None:
            budget = replace(
                d, total_steps=THROUGHPUT_ENV_STEPS, eval_every=0, stop_return=0.0, keep_best=False, eval_episodes=1
            )
            result = driver().train(replace(spec, dqn=budget), backend, device=device, progress=False, test=False)
            out.append(
                {
                    "what": f"end to end, {result.env_steps} env steps",
                    "value": result.steps_per_s,
                    "unit": "env steps/s",
                    "detail": f"{result.updates} updates, {result.wall_s:.1f} s with Gymnasium's {spec.env.id}",
                }
            )
        return out

    def bench_parity(self, spec, device) -> list[Check]:
        checks: list[Check] = []
        for dtype in ("float32", "float64"):
            checks += dqn_parity.level0(dtype, device) + dqn_parity.level1(dtype, device)
            checks += dqn_parity.level2_3(dtype, device)
            checks += dqn_parity.level4(spec, dtype, device, min_updates=BENCH_L4_UPDATES[dtype])[0]
            checks += dqn_parity.level4_truncation(spec, dtype, device)
        return checks + dqn_parity.port_checks(spec, device) + self.export_parity(spec, device)

    def bench_l5(self, spec, runs) -> list[Check]:
        """As dqn_parity.level5: per backend, the seeds whose greedy test return reaches L5_MIN_RETURN, at least
        L5_MIN_SEEDS of them (all seeds when the bench runs fewer)."""
        out = []
        for b in BACKENDS:
            mine = [r for r in runs if r["backend"] == b]
            need = min(dqn_parity.L5_MIN_SEEDS, len(mine))
            solved = sum(r["value"] >= dqn_parity.L5_MIN_RETURN for r in mine)
            detail = "; ".join(
                f"seed {r['seed']}: {r['value']:.1f} after {r.get('env_steps', '?')} steps" for r in mine
            )
            out.append(
                Check(
                    "L5",
                    f"{b} seeds with greedy return >= {dqn_parity.L5_MIN_RETURN:g}",
                    float(solved),
                    float(need),
                    solved >= need,
                    detail + f" (bound is a floor; budget {spec.dqn.total_steps} env steps)",
                )
            )
        return out

    def bench_run(self, spec, backend, device) -> dict[str, Any]:
        """Mean greedy return on the held-out test seeds; the curve is the periodic greedy evaluation's mean
        return against environment steps. Time to solve is the wall time of the evaluation that first reached
        the preset's stop return (None when the budget ran out first)."""
        result = driver().train(spec, backend, device=device, progress=False)
        solve_s = next((e["wall_s"] for e in result.evals if e["env_steps"] == result.solved_at), None)
        return run_summary(
            self,
            result.test["return_mean"],
            [e["env_steps"] for e in result.evals],
            [e["eval_return"] for e in result.evals],
            "greedy evaluation return",
            "environment steps",
            result.steps_per_s,
            result.wall_s,
            test_return_min=result.test["return_min"],
            eval_s=result.eval_s,
            env_steps=result.env_steps,
            updates=result.updates,
            solved_at=result.solved_at,
            time_to_solve_s=solve_s,
        )

    def report_columns(self, runs) -> list[str]:
        return [f"seeds >= {dqn_parity.L5_MIN_RETURN:g}", "solved at (env steps)", "time to solve s", "env steps"]

    def report_cells(self, runs, columns) -> list[Any]:
        return [
            f"{sum(r['value'] >= dqn_parity.L5_MIN_RETURN for r in runs)}/{len(runs)}",
            mean_or_absent([r.get("solved_at") for r in runs], count=True),
            mean_or_absent([r.get("time_to_solve_s") for r in runs]),
            mean_or_absent([r.get("env_steps") for r in runs], count=True),
        ]


TASK = DQNTask()
