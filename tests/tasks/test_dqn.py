"""The DQN driver end to end on a tiny budget (both backends, through the CLI), reproducibility, and bad
input: unknown env, spaces the agent cannot handle, a buffer smaller than a batch, gamma outside [0, 1]."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dualkit.cli import main
from dualkit.core import checkpoint, registry
from dualkit.core.runs import MODEL_FILE, RESULT_FILE, SPEC_FILE, MetricLog, read_json
from dualkit.tasks import presets
from dualkit.tasks.dqn import CURVE_FILE, evaluate_run, train

HAS_BOTH = registry.is_installed("torch") and registry.is_installed("tf")
needs_both = pytest.mark.skipif(not HAS_BOTH, reason="needs PyTorch and TensorFlow")
needs_torch = pytest.mark.skipif(not registry.is_installed("torch"), reason="PyTorch is not installed")

# A few hundred steps, short episodes: every part of the loop runs (updates, syncs, evaluations, checkpoint).
TINY = [
    "env.num_envs=4",
    "env.max_episode_steps=60",
    "qnet.hidden=[16]",
    "dqn.total_steps=800",
    "dqn.learning_starts=200",
    "dqn.train_freq=8",
    "dqn.batch_size=32",
    "dqn.buffer_size=1000",
    "dqn.target_update=10",
    "dqn.eval_every=400",
    "dqn.eval_episodes=3",
    "dqn.test_episodes=4",
    "dqn.stop_return=0",
]


class _ImageEnv(gym.Env):
    observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


gym.register("dualkit-test/DQNImage-v0", entry_point=_ImageEnv, max_episode_steps=5)


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def cli(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    if not registry.is_installed("torch"):
        pytest.skip("PyTorch is not installed")
    out = tmp_path_factory.mktemp("dqn") / "run-torch"
    sets = [a for s in TINY for a in ("--set", s)]
    assert cli("train", "dqn-cartpole", "--backend", "torch", "--out", str(out), "--quiet", *sets) == 0
    return out


@needs_torch
def test_train_writes_a_complete_run_folder(torch_run, capsys):
    for name in (SPEC_FILE, "metrics.jsonl", MODEL_FILE, RESULT_FILE, CURVE_FILE):
        assert (torch_run / name).is_file(), name
    assert (torch_run / CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = read_json(torch_run / RESULT_FILE)
    assert result["task"] == "dqn" and result["env_steps"] >= 800 and result["updates"] == (800 - 200) // 8 + 1
    assert len(result["test"]["returns"]) == 4 and result["steps_per_s"] > 0
    records = MetricLog(torch_run / "metrics.jsonl").read()
    assert len(records) == 2 and all(r["env_steps"] >= 400 for r in records)
    assert {"loss", "epsilon", "eval_return", "train_return", "steps_per_s"} <= set(records[0])
    tensors, meta = checkpoint.load(torch_run / MODEL_FILE)
    assert meta["kind"] == "dqn" and meta["backend"] == "torch" and meta["obs_dim"] == 4 and meta["num_actions"] == 2
    assert "q.fc0.weight" in tensors and tensors["q.fc0.weight"].shape == (16, 4) and "target.out.bias" in tensors


@needs_both
def test_eval_in_either_backend_gives_the_same_returns(torch_run, capsys):
    a = evaluate_run(torch_run, "torch", episodes=5, seed=123)
    b = evaluate_run(torch_run, "tf", episodes=5, seed=123)
    assert a["returns"] == b["returns"] and b["trained_in"] == "torch" and b["backend"] == "tf"
    assert cli("eval", str(torch_run), "--backend", "tf", "--episodes", "3") == 0
    out = capsys.readouterr().out
    assert "trained in" in out and "| tf" in out and "CartPole-v1" in out


@needs_both
def test_port_to_tf_keeps_returns(torch_run, tmp_path, capsys):
    out = tmp_path / "agent.keras"
    assert cli("port", str(torch_run), "--to", "tf", "--out", str(out)) == 0
    assert out.is_file() and "identical returns" in capsys.readouterr().out


@needs_torch
def test_same_seed_same_run_and_seed_matters():
    spec = presets.load("dqn-cartpole", TINY)
    a = train(spec, "torch", progress=False, test=False)
    b = train(spec, "torch", progress=False, test=False)
    assert a.losses == b.losses and a.episode_returns == b.episode_returns
    c = train(presets.load("dqn-cartpole", TINY + ["seed=1"]), "torch", progress=False, test=False)
    assert c.episode_returns != a.episode_returns


@pytest.mark.parametrize(
    "sets, message",
    [
        (["env.id=NoSuchEnv-v0"], "env.id='NoSuchEnv-v0': no such Gymnasium environment"),
        (["env.id=CartPole-v9"], "no such Gymnasium environment"),
        (["env.id=Pendulum-v1"], "continuous action space.*supports environments with a flat Box observation"),
        (["env.id=dualkit-test/DQNImage-v0"], r"image observations of shape \(16, 16, 3\).*MLP.*supports"),
        (["dqn.buffer_size=32", "dqn.batch_size=64"], r"dqn.buffer_size \(32\) must be >= dqn.batch_size \(64\)"),
        (["dqn.gamma=1.5"], r"dqn.gamma must be in \[0, 1\], got 1.5"),
        (["dqn.gamma=-0.1"], r"dqn.gamma must be in \[0, 1\]"),
        (["dqn.loss=l1"], "dqn.loss='l1' is not one of: huber, mse"),
    ],
)
@needs_torch
def test_bad_input_is_a_clear_error(sets, message, tmp_path, capsys):
    import re

    out = tmp_path / "run"
    args = [a for s in sets for a in ("--set", s)]
    assert cli("train", "dqn-cartpole", "--backend", "torch", "--out", str(out), "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dualkit: error:") and re.search(message, err), err
    assert "Traceback" not in err and not (out / SPEC_FILE).exists()  # refused before a run folder was written


@needs_torch
def test_eval_of_a_classifier_folder_is_not_confused_with_dqn(tmp_path, capsys):
    assert cli("eval", str(tmp_path / "missing"), "--backend", "torch") == 2
    assert "does not exist" in capsys.readouterr().err
