"""MLM pretraining (tasks/mlm.py) on tiny runs: the run folder, determinism, interrupt-safe resume and hand-over to
the other framework, evaluation in either backend, port to the other framework and to a Hugging Face folder, and the
downstream evaluation (a tagger from the pretrained encoder vs from random init)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dualkit.cli import main  # noqa: E402
from dualkit.core import checkpoint, registry, runstate  # noqa: E402
from dualkit.core.errors import Interrupted  # noqa: E402
from dualkit.core.runs import read_json  # noqa: E402
from dualkit.core.tokenizer import WordPiece  # noqa: E402
from dualkit.core.transformer import DECODER, WORD_EMBEDDINGS, bert_shapes  # noqa: E402
from dualkit.tasks import mlm, tag  # noqa: E402
from dualkit.tasks.transformer import load_text_run, model_for  # noqa: E402
from tests.runfolders import sigint_after  # noqa: E402
from tests.textruns import (  # noqa: E402
    MLM,
    NO_DROPOUT,
    assert_same_weights,
    mlm_spec,
    strip,
    tensorboard_events,
    with_overrides,
)

HAS_TF = registry.is_installed("tf")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
BACKENDS = ["torch", pytest.param("tf", marks=needs_tf)]


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- the run folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_folder_holds_spec_tokenizer_model_logs_and_evaluation(backend, mlm_runs):
    run_dir, spec, result = mlm_runs(backend)
    names = {p.name for p in run_dir.iterdir()}
    assert {"spec.json", "tokenizer", "model.safetensors", "metrics.jsonl", "tensorboard", "result.json"} <= names
    assert {"vocab.txt", "tokenizer.json"} <= {p.name for p in (run_dir / "tokenizer").iterdir()}
    tok = WordPiece.load(run_dir / "tokenizer")
    assert len(tok) <= spec.tokenizer.vocab_size and tok.mask_id is not None

    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    assert meta["kind"] == "mlm" and meta["backend"] == backend and meta["tokenizer"] == tok.fingerprint()
    assert set(weights) == set(bert_shapes(spec.model, len(tok), "mlm"))  # Hugging Face's names
    assert spec.model.tie_embeddings and DECODER not in weights  # the tied decoder is the word embeddings
    assert all(k.startswith(("bert.", "cls.predictions.")) for k in weights)
    assert_same_weights(weights, result.weights)

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == 8 and all(np.isfinite(r["val_loss"]) for r in lines)
    assert tensorboard_events(run_dir), "no TensorBoard events"
    res = read_json(run_dir / "result.json")
    assert res["task"] == "mlm" and res["backend"] == backend and res["steps"] == 8
    assert res["vocab_size"] == len(tok) and res["tokens_per_s"] > 0
    test = res["test"]
    assert test["masked_tokens"] > 0 and 0.0 <= test["accuracy"] <= 1.0 and 0.0 < test["unigram_accuracy"] < 1.0
    assert test["loss"] == pytest.approx(result.evaluation["loss"]) and test["downstream"] == {}


# --------------------------------------------------------------------------- determinism and resume


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_backend_gives_identical_losses_and_weights(backend, mlm_runs):
    _, spec, ref = mlm_runs(backend)
    again = mlm.pretrain(spec, backend, progress=False, evaluate=False)
    assert again.step_losses == ref.step_losses and len(ref.step_losses) == 8
    assert_same_weights(again.weights, ref.weights)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_and_resumed_equals_the_straight_run(backend, mlm_runs, monkeypatch, tmp_path):
    """SIGINT after step 5 (dropout on: the framework's RNG must come back too), then resume in the same backend."""
    _, spec, ref = mlm_runs(backend)
    run_dir = tmp_path / "run"
    restore = sigint_after(monkeypatch, registry.get_backend(backend).MaskedLM, "train_step", 5)
    with pytest.raises(Interrupted) as err:
        mlm.pretrain(spec, backend, run_dir=run_dir, progress=False)
    restore()
    assert f"dualkit train --resume {run_dir}" in str(err.value)
    assert runstate.latest(run_dir).state.step == 5 and not (run_dir / "result.json").exists()

    got = mlm.resume(run_dir, progress=False)
    assert got.step_losses == ref.step_losses
    assert strip(got.history) == strip(ref.history)
    assert_same_weights(got.weights, ref.weights)
    assert got.evaluation == ref.evaluation
    assert [s["backend"] for s in got.extra["segments"]] == [backend, backend] and got.extra["resumed_step"] == 5
    assert read_json(run_dir / "result.json")["steps"] == 8


@needs_tf
@pytest.mark.parametrize("src, dst", [("torch", "tf"), ("tf", "torch")])
def test_hand_over_to_the_other_framework_continues_the_run(src, dst, tmp_path):
    """Dropout off (the frameworks draw it differently): stop at max_steps=4, resume to 8 in the other backend."""
    spec = mlm_spec(*NO_DROPOUT)
    straight = mlm.pretrain(spec, src, progress=False, evaluate=False)
    run_dir = tmp_path / "run"
    mlm.pretrain(with_overrides(spec, "max_steps=4"), src, run_dir=run_dir, progress=False, evaluate=False)
    got = mlm.resume(run_dir, dst, overrides=["max_steps=8"], progress=False)
    assert got.step_losses[:4] == straight.step_losses[:4]  # the part trained in src, carried over
    np.testing.assert_allclose(got.step_losses[4:], straight.step_losses[4:], rtol=1e-5)
    for name, value in straight.weights.items():
        np.testing.assert_allclose(got.weights[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert [s["backend"] for s in got.extra["segments"]] == [src, dst]
    assert checkpoint.load(run_dir / "model.safetensors")[1]["backend"] == dst


# --------------------------------------------------------------------------- eval and port


def test_eval_in_both_backends_prints_the_report_and_writes_eval_json(mlm_runs, tmp_path, capsys):
    run_dir = copy_run(mlm_runs("torch")[0], tmp_path / "run")
    got = {}
    for backend in ["torch", "tf"] if HAS_TF else ["torch"]:
        assert main(["eval", str(run_dir), "--backend", backend]) == 0
        out = capsys.readouterr().out
        assert f"trained in torch, evaluated in {backend}" in out and "MLM accuracy" in out and "unigram guess" in out
        got[backend] = read_json(run_dir / f"eval-{backend}.json")
    want = read_json(run_dir / "result.json")["test"]
    for res in got.values():
        assert res["masked_tokens"] == want["masked_tokens"] and res["accuracy"] == want["accuracy"]
        assert res["loss"] == pytest.approx(want["loss"], rel=1e-5)


@needs_tf
@pytest.mark.parametrize("src, to", [("torch", "tf"), ("tf", "torch")])
def test_port_to_the_other_framework_predicts_the_same(src, to, mlm_runs, tmp_path):
    rep = mlm.port(mlm_runs(src)[0], to, tmp_path / f"model{'.keras' if to == 'tf' else '.pt'}")
    assert rep.ok and rep.row["identical predictions"] is True and rep.row["relative logit diff"] < 1e-5
    assert Path(rep.artifact).is_file()


def test_port_to_hugging_face_loads_with_transformers(mlm_runs, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = mlm_runs("torch")[0]
    out = tmp_path / "hf"
    rep = mlm.port(run_dir, "hf", out)
    assert rep.ok and rep.row["identical predictions"] is True and rep.row["relative logit diff"] < 1e-5
    assert rep.row["checked by"].startswith("transformers")
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}

    run = load_text_run(run_dir, "mlm")
    test = mlm.prepare_data(run.spec, run.tokenizer).test
    ids, mask = test.input_ids, test.attention_mask
    ours = model_for(run, None, "cpu", "mlm")[0].logits(ids, mask)
    model = transformers.BertForMaskedLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.array_equal(ours.argmax(-1)[real], theirs.argmax(-1)[real])
    assert np.abs(ours - theirs)[real].max() / np.abs(ours[real]).max() < 1e-5


# --------------------------------------------------------------------------- downstream


TINY_TAG_TOML = """
task = "tag"
[data]
name = "pyroles"
limit_words = 3000
max_length = 32
[tokenizer]
vocab_size = 300
[train]
batch_size = 8
"""


def test_downstream_fine_tunes_from_the_pretrained_encoder_and_from_random_init(mlm_runs, tmp_path, monkeypatch):
    run_dir, spec, result = mlm_runs("torch")
    preset = tmp_path / "tiny-tag.toml"
    preset.write_text(TINY_TAG_TOML)
    spec = with_overrides(spec, f"downstream.preset={json.dumps(str(preset))}", "downstream.max_steps=3")
    starts = []  # the initial weights of each tagger downstream builds

    def spy(backend, model, head, vocab_size, num_labels, weights, *rest):
        starts.append(dict(weights))
        return real(backend, model, head, vocab_size, num_labels, weights, *rest)

    real = tag.build_model
    monkeypatch.setattr(tag, "build_model", spy)
    tok = WordPiece.load(run_dir / "tokenizer")
    d = mlm.downstream(spec, "torch", "cpu", result.weights, tok, False)

    assert d["preset"] == str(preset) and d["steps"] == 3
    for key in ("pretrained_f1", "random_f1", "pretrained_token_accuracy", "random_token_accuracy"):
        assert 0.0 <= d[key] <= 1.0, key
    assert d["margin_points"] == pytest.approx(100 * (d["pretrained_f1"] - d["random_f1"]))
    pretrained, random = starts
    np.testing.assert_array_equal(pretrained[WORD_EMBEDDINGS], result.weights[WORD_EMBEDDINGS])
    assert pretrained[WORD_EMBEDDINGS].shape == random[WORD_EMBEDDINGS].shape  # same vocabulary and architecture
    assert not np.array_equal(random[WORD_EMBEDDINGS], result.weights[WORD_EMBEDDINGS])


# --------------------------------------------------------------------------- a run without a test split


def test_a_run_without_test_split_shows_evaluates_other_splits_and_ports(tmp_path, capsys):
    """data.test_fraction=0: training shows no test table (was a KeyError), eval names the splits there are, eval
    --split val measures the validation text, and a port is checked on it."""
    run_dir = tmp_path / "run"
    sets = [a for s in [*MLM, "data.test_fraction=0"] for a in ("--set", s)]
    assert main(["pretrain", "bert-mlm-tiny", "--quiet", "--out", str(run_dir), *sets]) == 0
    assert "held-out text" not in capsys.readouterr().out
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == "dualkit: error: the test split of this run's data is empty; evaluate --split val or --split train\n"
    assert main(["eval", str(run_dir), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "evaluated in torch on the val split" in out and "| val split " in out
    res = read_json(run_dir / "eval-torch-val.json")
    assert res["split"] == "val" and res["masked_tokens"] > 0
    rep = mlm.port(run_dir, "torch", tmp_path / "model.pt")
    assert rep.ok and rep.row["test sequences"] > 0 and rep.row["identical predictions"] is True
