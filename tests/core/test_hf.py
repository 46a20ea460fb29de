"""core/hf.py against Hugging Face transformers itself: tiny random BERTs saved by save_pretrained are read into
canonical weights exactly; written back, from_pretrained loads them with no missing or unexpected weights, the
same state dict and the same logits; the tokenizer files load offline; what HF BERT cannot hold is refused."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download; set before transformers reads it
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

from safetensors.numpy import save_file  # noqa: E402

from dualkit.core import hf  # noqa: E402
from dualkit.core.errors import CheckpointError, RunError, SpecError  # noqa: E402
from dualkit.core.tokenizer import WordPiece  # noqa: E402
from dualkit.core.transformer import DECODER, bert_encoder, mlm_logits, tag_logits  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,'") + [
    "the", "##s", "##ing", "##ed", "hello", "world", "model", "bert", "token", "##izer", "is", "an", "of", "and", "to",
    "in", "it", "for", "##er", "##ly", "word", "piece", "on", "##al", "with", "as",
]  # fmt: skip
LABELS = ["O", "B-NAME", "I-NAME"]
SENTENCE = "Hello worlds, the BERT tokenizer is an old model of words."
SMALL = dict(
    vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=24, attn_implementation="eager",
)  # fmt: skip
KINDS = ("mlm-tied", "mlm-untied", "tag")


def _bert(kind: str):
    """A tiny random HF model; every tensor (biases and LayerNorms too) moved off its init so nothing is 0 or 1."""
    torch.manual_seed(KINDS.index(kind))
    if kind == "tag":
        cfg = transformers.BertConfig(
            **SMALL, id2label=dict(enumerate(LABELS)), label2id={s: i for i, s in enumerate(LABELS)}
        )
        model = transformers.BertForTokenClassification(cfg)
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**SMALL, tie_word_embeddings=kind == "mlm-tied"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> (HF model, the folder its save_pretrained wrote)."""
    out = {}
    for kind in KINDS:
        model = _bert(kind)
        folder = tmp_path_factory.mktemp(kind)
        model.save_pretrained(folder)
        out[kind] = (model, folder)
    return out


def _head(kind: str) -> str:
    return "tag" if kind == "tag" else "mlm"


def _cls(kind: str):
    return transformers.BertForTokenClassification if kind == "tag" else transformers.BertForMaskedLM


def _batch():
    ids = torch.tensor([[2, 38, 39, 5, 40, 3, 0, 0], [2, 41, 42, 43, 44, 45, 46, 3]])
    return ids, (ids != 0).long()


def _write_tokenizer(lowercase: bool = True):
    return WordPiece(VOCAB, lowercase).save


@contextlib.contextmanager
def hf_warnings():
    """Collect what transformers logs at WARNING and above (its logger does not propagate to pytest's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("kind", KINDS)
def test_read_gives_the_state_dict_in_canonical_names(saved, kind):
    model, folder = saved[kind]
    m = hf.read_hf_folder(folder)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    expected = dict(state)
    expected.pop("cls.predictions.decoder.bias", None)
    if kind == "mlm-tied":
        expected.pop(DECODER)  # the tie: stored once, as the word embeddings
        assert DECODER not in m.weights
    if kind == "mlm-untied":  # transformers >= 5 computes with decoder.bias; cls.predictions.bias goes unused
        expected["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
        assert "cls.predictions.bias" in m.dropped
    assert set(m.weights) == set(expected)
    for name, value in m.weights.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    assert m.head_present == (_head(kind),)
    assert m.labels == (LABELS if kind == "tag" else None)
    assert m.vocab_size == len(VOCAB) and m.tokenizer_path is None
    assert (m.model.hidden, m.model.layers, m.model.heads, m.model.intermediate) == (16, 2, 2, 32)
    assert (m.model.max_positions, m.model.norm, m.model.layer_norm_eps) == (24, "post", 1e-12)
    assert m.model.tie_embeddings == (kind != "mlm-untied")


@pytest.mark.parametrize("kind", KINDS)
def test_written_folder_loads_in_transformers_with_the_same_weights_and_logits(saved, tmp_path, kind):
    original, folder = saved[kind]
    m = hf.read_hf_folder(folder)
    out = hf.write_hf_folder(
        tmp_path / "export", m.weights, m.model, m.vocab_size, _head(kind), m.labels, _write_tokenizer()
    )
    with hf_warnings() as logged:
        loaded, info = _cls(kind).from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert {k: list(v) for k, v in info.items() if v} == {}  # no missing/unexpected/mismatched keys, no errors
    assert [r.getMessage() for r in logged] == []
    loaded.eval()
    want = original.state_dict()
    if kind == "mlm-untied":  # the unused cls.predictions.bias now holds the bias the logits use
        want = {**want, "cls.predictions.bias": want["cls.predictions.decoder.bias"]}
    got = loaded.state_dict()
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    if kind == "mlm-tied":
        assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).logits,
            original(input_ids=ids, attention_mask=mask).logits,
            rtol=0,
            atol=0,
        )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [hf.ARCHITECTURES[_head(kind)]]
    assert config["tie_word_embeddings"] == m.model.tie_embeddings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp sibling left


@pytest.mark.parametrize("kind", KINDS)
def test_core_reference_forward_matches_transformers_on_read_weights(saved, kind):
    """The contract end to end: core/transformer.py's numpy forward on read_hf_folder's weights is HF's forward."""
    original, folder = saved[kind]
    m = hf.read_hf_folder(folder)
    ids, mask = _batch()
    weights = {k: v.astype(np.float64) for k, v in m.weights.items()}
    hidden = bert_encoder(weights, m.model, ids.numpy(), mask.numpy())
    ours = tag_logits(weights, hidden) if kind == "tag" else mlm_logits(weights, m.model, hidden)
    with torch.no_grad():
        theirs = original(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)


@pytest.mark.parametrize("lowercase", [True, False])
def test_tokenizer_files_load_offline_and_encode_as_the_original(saved, tmp_path, lowercase):
    _, folder = saved["mlm-tied"]
    m = hf.read_hf_folder(folder)
    out = hf.write_hf_folder(tmp_path / "x", m.weights, m.model, m.vocab_size, "mlm", None, _write_tokenizer(lowercase))
    ours = WordPiece(VOCAB, lowercase)
    reference = tokenizers.BertWordPieceTokenizer({t: i for i, t in enumerate(VOCAB)}, lowercase=lowercase)
    want = [ours.cls_id, *ours.encode(SENTENCE), ours.sep_id]
    assert reference.encode(SENTENCE).ids == want
    for cls in (transformers.AutoTokenizer, transformers.BertTokenizerFast):
        with hf_warnings() as logged:
            tok = cls.from_pretrained(out)
        assert [r.getMessage() for r in logged] == []
        assert tok(SENTENCE)["input_ids"] == want
        assert tok.model_max_length == m.model.max_positions
        assert (tok.pad_token_id, tok.mask_token_id, tok.cls_token_id) == (ours.pad_id, ours.mask_id, ours.cls_id)
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is lowercase
    back = hf.read_hf_folder(out)
    assert back.tokenizer_path == out
    assert WordPiece.load(back.tokenizer_path).fingerprint() == ours.fingerprint()


def test_bare_bert_model_gets_the_prefix_and_loses_the_pooler(tmp_path):
    torch.manual_seed(3)
    model = transformers.BertModel(transformers.BertConfig(**SMALL))  # with the pooler
    model.save_pretrained(tmp_path)
    m = hf.read_hf_folder(tmp_path)
    assert m.head_present == () and m.labels is None
    assert set(m.dropped) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    state = model.state_dict()
    assert set(m.weights) == {"bert." + k for k in state if not k.startswith("pooler.")}
    for name, value in m.weights.items():
        np.testing.assert_array_equal(value, state[name.removeprefix("bert.")].numpy())


def test_legacy_names_buffers_and_pretraining_heads_are_read(saved, tmp_path):
    """Old TF-converted files (LayerNorm gamma/beta), a position_ids buffer, a stored tied decoder, the NSP head."""
    _, folder = saved["mlm-tied"]
    m = hf.read_hf_folder(folder)
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in m.weights.items()}  # fmt: skip
    legacy["bert.embeddings.position_ids"] = np.arange(24, dtype=np.int64)[None]
    legacy[DECODER] = m.weights["bert.embeddings.word_embeddings.weight"]
    legacy["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in legacy.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    old = hf.read_hf_folder(tmp_path)
    assert set(old.weights) == set(m.weights)
    for name in m.weights:
        np.testing.assert_array_equal(old.weights[name], m.weights[name])
    assert {"bert.embeddings.position_ids", DECODER, "cls.seq_relationship.weight"} <= set(old.dropped)


def test_sharded_checkpoint_is_read(saved, tmp_path):
    model, folder = saved["tag"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / hf.INDEX_FILE).is_file() and not (tmp_path / hf.WEIGHTS_FILE).exists()
    sharded, single = hf.read_hf_folder(tmp_path), hf.read_hf_folder(folder)
    assert set(sharded.weights) == set(single.weights)
    for name in single.weights:
        np.testing.assert_array_equal(sharded.weights[name], single.weights[name])


def test_bfloat16_checkpoint_is_widened_exactly(saved, tmp_path):
    model, _ = saved["tag"]
    half = _bert("tag").to(torch.bfloat16)
    half.load_state_dict(model.state_dict())  # rounds to bfloat16
    half.save_pretrained(tmp_path)
    m = hf.read_hf_folder(tmp_path)
    for name, value in half.state_dict().items():
        np.testing.assert_array_equal(m.weights[name], value.float().numpy(), err_msg=name)


def test_damaged_safetensors_is_refused_in_one_line(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved["tag"][1] / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError) as exc:
        hf.read_hf_folder(tmp_path)
    assert "model.safetensors" in _one_line(exc)


# -- refusals ------------------------------------------------------------------------------------------------------


def test_pytorch_bin_alone_is_refused_without_unpickling(saved, tmp_path):
    _, folder = saved["mlm-tied"]
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle anyone may open")
    with pytest.raises(CheckpointError) as exc:
        hf.read_hf_folder(tmp_path)
    message = _one_line(exc)
    assert "pytorch_model.bin" in message and "safe_serialization=True" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("model_type", "roberta"), ("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key")],
)
def test_configs_dualkit_cannot_compute_are_refused(saved, tmp_path, key, value):
    _, folder = saved["mlm-tied"]
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as exc:
        hf.read_hf_folder(tmp_path)
    message = _one_line(exc)
    assert key in message and repr(value) in message and "config.json" in message


def test_pre_ln_spec_is_refused(saved, tmp_path):
    m = hf.read_hf_folder(saved["mlm-tied"][1])
    with pytest.raises(SpecError) as exc:
        hf.hf_config(dataclasses.replace(m.model, norm="pre"), m.vocab_size, "mlm", None)
    assert "model.norm" in _one_line(exc)
    with pytest.raises(SpecError):
        hf.write_hf_folder(tmp_path / "o", m.weights, dataclasses.replace(m.model, norm="pre"), m.vocab_size, "mlm")
    assert not (tmp_path / "o").exists()


def test_non_empty_folder_is_refused_without_overwrite_and_kept_with_it(saved, tmp_path):
    m = hf.read_hf_folder(saved["tag"][1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    (out / "vocab.txt").write_text("[PAD]\n")  # an older export's tokenizer
    with pytest.raises(RunError) as exc:
        hf.write_hf_folder(out, m.weights, m.model, m.vocab_size, "tag", m.labels)
    assert "--overwrite" in _one_line(exc)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt", "vocab.txt"]
    assert (out / "config.json").read_text() == "{}"
    hf.write_hf_folder(out, m.weights, m.model, m.vocab_size, "tag", m.labels, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # the user's own file stays
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "notes.txt",
    ]  # stale vocab gone
    assert hf.read_hf_folder(out).labels == LABELS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_write_leaves_nothing(saved, tmp_path):
    m = hf.read_hf_folder(saved["mlm-tied"][1])

    def broken(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        hf.write_hf_folder(tmp_path / "o", m.weights, m.model, m.vocab_size, "mlm", None, broken)
    assert list(tmp_path.iterdir()) == []


def test_check_fits_names_the_first_differing_field(saved):
    m = hf.read_hf_folder(saved["mlm-tied"][1])
    hf.check_fits(m, m.model, len(VOCAB))  # its own spec fits
    hf.check_fits(m, dataclasses.replace(m.model, hidden_dropout=0.0, init_std=0.5))  # not architecture
    with pytest.raises(CheckpointError) as exc:
        hf.check_fits(m, dataclasses.replace(m.model, hidden=64, intermediate=8))
    assert _one_line(exc) == (
        f"hidden_size 16 in {m.path / 'config.json'}, but the spec's model.hidden is 64; "
        "set --set model.hidden=16 or choose a matching checkpoint"
    )
    with pytest.raises(CheckpointError) as exc:
        hf.check_fits(m, dataclasses.replace(m.model, norm="pre"))
    assert "model.norm" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        hf.check_fits(m, m.model, vocab_size=2000)
    assert "tokenizer" in _one_line(exc)
