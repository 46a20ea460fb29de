"""Token classification (tasks/tag.py) on tiny runs: the run folder, determinism, interrupt-safe resume and hand-over,
--init-from an MLM run or a Hugging Face folder (and what it refuses), evaluation in either backend, and port to the
other framework and to a Hugging Face folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from dualkit.cli import main  # noqa: E402
from dualkit.core import checkpoint, registry, runstate  # noqa: E402
from dualkit.core.errors import DataError, Interrupted, SpecError  # noqa: E402
from dualkit.core.runs import read_json  # noqa: E402
from dualkit.core.text import load_tag_corpus  # noqa: E402
from dualkit.core.tokenizer import WordPiece  # noqa: E402
from dualkit.core.transformer import WORD_EMBEDDINGS, bert_shapes  # noqa: E402
from dualkit.tasks import tag  # noqa: E402
from dualkit.tasks.transformer import load_text_run, model_for  # noqa: E402
from tests.runfolders import sigint_after  # noqa: E402
from tests.textruns import NO_DROPOUT, assert_same_weights, strip, tag_spec, tensorboard_events, with_overrides  # noqa: E402

HAS_TF = registry.is_installed("tf")
needs_tf = pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
BACKENDS = ["torch", pytest.param("tf", marks=needs_tf)]


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture
def initial_weights(monkeypatch):
    """The weights each tagger tag.train builds starts from, in call order."""
    starts = []
    real = tag.build_model

    def spy(backend, model, head, vocab_size, num_labels, weights, *rest):
        starts.append(dict(weights))
        return real(backend, model, head, vocab_size, num_labels, weights, *rest)

    monkeypatch.setattr(tag, "build_model", spy)
    return starts


# --------------------------------------------------------------------------- the run folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_folder_holds_spec_tokenizer_model_logs_and_evaluation(backend, tag_runs):
    run_dir, spec, result = tag_runs(backend)
    names = {p.name for p in run_dir.iterdir()}
    assert {"spec.json", "tokenizer", "model.safetensors", "metrics.jsonl", "tensorboard", "result.json"} <= names
    assert {"vocab.txt", "tokenizer.json"} <= {p.name for p in (run_dir / "tokenizer").iterdir()}
    tok = WordPiece.load(run_dir / "tokenizer")

    weights, meta = checkpoint.load(run_dir / "model.safetensors")
    labels = meta["labels"]
    assert meta["kind"] == "tag" and meta["backend"] == backend and meta["tokenizer"] == tok.fingerprint()
    assert labels[0] == "O" and all(t.startswith("B-") for t in labels[1:])  # the identifier roles, BIO
    assert set(weights) == set(bert_shapes(spec.model, len(tok), "tag", len(labels)))  # Hugging Face's names
    assert weights["classifier.weight"].shape == (len(labels), spec.model.hidden)
    assert_same_weights(weights, result.weights)

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == 8 and all(0.0 <= r["val_f1"] <= 1.0 for r in lines)
    assert tensorboard_events(run_dir), "no TensorBoard events"
    res = read_json(run_dir / "result.json")
    assert res["task"] == "tag" and res["backend"] == backend and res["steps"] == 8 and res["labels"] == labels
    test = res["test"]
    assert test["report_kind"] == "entity" and test["f1"] == result.test["f1"] and test["words"] > 0
    assert test["f1"] == test["report"]["micro avg"]["f1"] and 0.0 <= test["token_accuracy"] <= 1.0


# --------------------------------------------------------------------------- determinism and resume


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_backend_gives_identical_losses_and_weights(backend, tag_runs):
    _, spec, ref = tag_runs(backend)
    again = tag.train(spec, backend, progress=False)
    assert again.step_losses == ref.step_losses and len(ref.step_losses) == 8
    assert_same_weights(again.weights, ref.weights)
    assert again.test == ref.test


@pytest.mark.parametrize("backend", BACKENDS)
def test_interrupted_and_resumed_equals_the_straight_run(backend, tag_runs, monkeypatch, tmp_path):
    """SIGINT after step 3 (dropout on: the framework's RNG must come back too), then resume in the same backend."""
    _, spec, ref = tag_runs(backend)
    run_dir = tmp_path / "run"
    restore = sigint_after(monkeypatch, registry.get_backend(backend).TokenTagger, "train_step", 3)
    with pytest.raises(Interrupted):
        tag.train(spec, backend, run_dir=run_dir, progress=False)
    restore()
    assert runstate.latest(run_dir).state.step == 3 and not (run_dir / "result.json").exists()

    got = tag.resume(run_dir, progress=False)
    assert got.step_losses == ref.step_losses
    assert strip(got.history) == strip(ref.history)
    assert_same_weights(got.weights, ref.weights)
    assert got.test == ref.test
    assert [s["backend"] for s in got.extra["segments"]] == [backend, backend] and got.extra["resumed_step"] == 3


@needs_tf
@pytest.mark.parametrize("src, dst", [("torch", "tf")])  # tf -> torch: tests/tasks/test_mlm.py (the same resume code)
def test_hand_over_to_the_other_framework_continues_the_run(src, dst, tmp_path):
    """Dropout off (the frameworks draw it differently): stop at max_steps=4, resume to 8 in the other backend."""
    spec = tag_spec(*NO_DROPOUT)
    straight = tag.train(spec, src, progress=False)
    run_dir = tmp_path / "run"
    tag.train(with_overrides(spec, "max_steps=4"), src, run_dir=run_dir, progress=False)
    got = tag.resume(run_dir, dst, overrides=["max_steps=8"], progress=False)
    assert got.step_losses[:4] == straight.step_losses[:4]
    np.testing.assert_allclose(got.step_losses[4:], straight.step_losses[4:], rtol=1e-5)
    for name, value in straight.weights.items():
        np.testing.assert_allclose(got.weights[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert [s["backend"] for s in got.extra["segments"]] == [src, dst]
    assert read_json(run_dir / "result.json")["labels"] == checkpoint.load(run_dir / "model.safetensors")[1]["labels"]


# --------------------------------------------------------------------------- --init-from


def test_init_from_an_mlm_run_starts_from_its_encoder_and_vocabulary(mlm_runs, initial_weights, tmp_path):
    mlm_dir, mlm_spec, _ = mlm_runs("torch")
    run_dir = tmp_path / "tagger"
    # the tag spec's own model (the preset's 2x64) and vocabulary size are replaced by the run's
    spec = tag_spec("model.hidden=64", "model.heads=4", "model.intermediate=128", "tokenizer.vocab_size=500")
    result = tag.train(spec, "torch", run_dir=run_dir, progress=False, init_from=mlm_dir)
    assert result.extra["init_from"] == str(mlm_dir)

    encoder = {k: v for k, v in checkpoint.load(mlm_dir / "model.safetensors")[0].items() if k.startswith("bert.")}
    (start,) = initial_weights
    assert {k for k in start if k.startswith("bert.")} == set(encoder)
    for name, value in encoder.items():
        np.testing.assert_array_equal(start[name], value, err_msg=name)
    assert start["classifier.weight"].shape[1] == mlm_spec.model.hidden  # a fresh head on the run's width

    assert (run_dir / "tokenizer" / "vocab.txt").read_bytes() == (mlm_dir / "tokenizer" / "vocab.txt").read_bytes()
    assert read_json(run_dir / "spec.json")["model"] == read_json(mlm_dir / "spec.json")["model"]


def hf_folder(folder: Path, extra_rows: int = 0) -> tuple[Path, dict[str, np.ndarray], WordPiece]:
    """A Hugging Face BertForMaskedLM folder written offline: a tiny config (2 layers, 24 wide, 40 positions; the
    vocabulary padded by ``extra_rows`` unused rows) and a vocab.txt built from the tag corpus's training words."""
    transformers = pytest.importorskip("transformers")
    import torch

    corpus = load_tag_corpus(tag_spec().data)
    tok = WordPiece.build([" ".join(words) for words, _ in corpus.train], 200, 2, True)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tok) + extra_rows,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=40,
    )
    model = transformers.BertForMaskedLM(config)
    model.save_pretrained(folder)
    tok.save(folder)
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return folder, tensors, tok


@pytest.mark.parametrize("extra_rows", [0, 3], ids=["exact-vocab", "padded-vocab"])
def test_init_from_a_hugging_face_folder_adopts_its_architecture_and_weights(
    extra_rows, initial_weights, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, tensors, tok = hf_folder(tmp_path / "hf", extra_rows)
    run_dir = tmp_path / "tagger"
    tag.train(tag_spec("max_steps=2"), "torch", run_dir=run_dir, progress=False, init_from=folder)

    model = read_json(run_dir / "spec.json")["model"]
    assert (model["hidden"], model["layers"], model["heads"], model["intermediate"], model["max_positions"]) == (
        24,
        2,
        2,
        48,
        40,
    )
    assert model["hidden_dropout"] == tag_spec().model.hidden_dropout  # dropout stays the spec's
    assert WordPiece.load(run_dir / "tokenizer").fingerprint() == tok.fingerprint()
    (start,) = initial_weights
    encoder = [k for k in start if k.startswith("bert.")]
    assert encoder and all(k in tensors for k in encoder)
    for name in encoder:
        want = tensors[name][: len(tok)] if name == WORD_EMBEDDINGS else tensors[name]
        np.testing.assert_array_equal(start[name], want, err_msg=name)


def test_init_from_refuses_what_holds_no_encoder(torch_run, tmp_path):
    spec = tag_spec()
    with pytest.raises(SpecError, match="a 'classifier' run holds no transformer encoder"):
        tag.train(spec, "torch", run_dir=tmp_path / "a", progress=False, init_from=torch_run[0])
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("not a model")
    with pytest.raises(DataError, match="neither a dualkit run folder .* nor a Hugging Face folder"):
        tag.train(spec, "torch", run_dir=tmp_path / "b", progress=False, init_from=tmp_path / "neither")
    with pytest.raises(DataError, match="no such folder"):
        tag.train(spec, "torch", run_dir=tmp_path / "c", progress=False, init_from=tmp_path / "missing")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_init_from_refuses_an_encoder_shorter_than_the_sequences(mlm_runs, tmp_path):
    """The run's encoder has 32 positions; the tag spec's sequences are 64 long: one line, not a traceback."""
    with pytest.raises(SpecError, match="takes at most 32 positions, but data.max_length=64; set --set data.max_l"):
        tag.train(tag_spec("data.max_length=64", "model.max_positions=64"), "torch", init_from=mlm_runs("torch")[0])


def test_init_from_refuses_a_tokenizer_longer_than_the_embeddings(tmp_path):
    folder, _, tok = hf_folder(tmp_path / "hf")
    WordPiece([*tok.vocab, "zzextra"], tok.lowercase).save(folder)
    with pytest.raises(DataError, match="tokenizer has .* tokens but config.json's vocab_size is"):
        tag.train(tag_spec(), "torch", init_from=folder)


# --------------------------------------------------------------------------- eval and port


def test_eval_in_both_backends_prints_the_report_and_writes_eval_json(tag_runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tag_runs("torch")[0], run_dir)
    got = {}
    for backend in ["torch", "tf"] if HAS_TF else ["torch"]:
        assert main(["eval", str(run_dir), "--backend", backend]) == 0
        out = capsys.readouterr().out
        assert f"trained in torch, evaluated in {backend} on the test split" in out
        assert "| entity type " in out and "micro avg" in out and "token accuracy" in out
        got[backend] = read_json(run_dir / f"eval-{backend}-test.json")
    want = read_json(run_dir / "result.json")["test"]
    for res in got.values():
        assert res["f1"] == want["f1"] and res["token_accuracy"] == want["token_accuracy"]
        assert res["report"] == want["report"] and res["loss"] == pytest.approx(want["loss"], rel=1e-5)


@needs_tf
@pytest.mark.parametrize("src, to", [("torch", "tf"), ("tf", "torch")])
def test_port_to_the_other_framework_predicts_the_same(src, to, tag_runs, tmp_path):
    rep = tag.port(tag_runs(src)[0], to, tmp_path / f"model{'.keras' if to == 'tf' else '.pt'}")
    assert rep.ok and rep.row["identical predictions"] is True and rep.row["relative logit diff"] < 1e-5
    assert Path(rep.artifact).is_file()


def test_port_to_hugging_face_loads_with_transformers(tag_runs, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = tag_runs("torch")[0]
    out = tmp_path / "hf"
    rep = tag.port(run_dir, "hf", out)
    assert rep.ok and rep.row["identical predictions"] is True and rep.row["relative logit diff"] < 1e-5

    run = load_text_run(run_dir, "tag")
    model = transformers.BertForTokenClassification.from_pretrained(str(out)).eval()
    assert [model.config.id2label[i] for i in range(len(run.labels))] == run.labels
    test = tag.prepare_data(run.spec, run.tokenizer, run.labels).test
    ids, mask = test.input_ids, test.attention_mask
    ours = model_for(run, None, "cpu", "tag")[0].logits(ids, mask)
    with torch.no_grad():
        theirs = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.array_equal(ours.argmax(-1)[real], theirs.argmax(-1)[real])
    assert np.abs(ours - theirs)[real].max() / np.abs(ours[real]).max() < 1e-5


def test_a_run_without_test_split_evaluates_other_splits_and_ports(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tag.train(tag_spec("data.test_fraction=0"), "torch", run_dir=run_dir, progress=False)
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == "dualkit: error: the test split of this run's data is empty; evaluate --split val or --split train\n"
    assert main(["eval", str(run_dir), "--split", "val"]) == 0
    assert read_json(run_dir / "eval-torch-val.json")["words"] > 0
    rep = tag.port(run_dir, "torch", tmp_path / "model.pt")
    assert rep.ok and rep.row["test sequences"] > 0 and rep.row["identical predictions"] is True
