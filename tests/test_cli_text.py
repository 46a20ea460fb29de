"""The command line of the transformer tasks, in process (``main([...])``): pretrain an MLM, train a tagger from it,
evaluate, port to a Hugging Face folder, and the parity levels. Their bad inputs are in tests/test_refusals.py."""

from __future__ import annotations

import pytest

from dualkit.cli import main
from dualkit.core import registry
from dualkit.core.runs import read_json
from tests.textruns import MLM, TAG

needs_torch = pytest.mark.skipif(not registry.is_installed("torch"), reason="PyTorch is not installed")
needs_tf = pytest.mark.skipif(not registry.is_installed("tf"), reason="TensorFlow is not installed")


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


@needs_torch
def test_pretrain_train_from_it_eval_and_port_to_hugging_face(tmp_path, capsys, monkeypatch):
    mlm_dir, tag_dir = tmp_path / "mlm", tmp_path / "tag"
    assert main(["pretrain", "bert-mlm-tiny", "--quiet", "--out", str(mlm_dir), *sets(MLM)]) == 0
    out = capsys.readouterr().out
    assert "| epoch | MLM loss" in out and "MLM accuracy" in out and f"run folder: {mlm_dir}" in out
    assert read_json(mlm_dir / "result.json")["steps"] == 8

    argv = ["train", "bert-tag-tiny", "--init-from", str(mlm_dir), "--quiet", "--out", str(tag_dir), *sets(TAG)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "val F1" in out and "entity type" in out and f"run folder: {tag_dir}" in out
    assert read_json(tag_dir / "spec.json")["model"] == read_json(mlm_dir / "spec.json")["model"]

    assert main(["eval", str(tag_dir), "--split", "val"]) == 0
    assert "evaluated in torch on the val split" in capsys.readouterr().out
    assert read_json(tag_dir / "eval-torch-val.json")["split"] == "val"
    assert main(["eval", str(mlm_dir)]) == 0
    assert "MLM accuracy" in capsys.readouterr().out and (mlm_dir / "eval-torch.json").is_file()

    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["port", str(mlm_dir), "--to", "hf"]) == 0
    out = capsys.readouterr().out
    assert "identical predictions" in out and f"wrote {mlm_dir / 'hf'}" in out
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in (mlm_dir / "hf").iterdir()}


@needs_torch
@needs_tf
def test_parity_l0_l1_float64_on_the_tag_preset(capsys):
    argv = ["parity", "bert-tag-tiny", "--levels", "L0,L1", "--dtype", "float64", "--set", "data.limit_words=5000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| L")]
    assert {r.split("|")[1].strip() for r in rows} == {"L0", "L1"} and all("| float64 |" in r for r in rows)
    assert "torch masked cross-entropy, ignored positions" in out
    assert "post-LN tag padded: torch vs tf" in out and "preset model (2x64" in out
    assert " 0 failed" in out and "FAIL" not in out
