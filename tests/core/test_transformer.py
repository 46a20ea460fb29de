"""The BERT transformer's canonical names, shapes and init, and the numpy reference forward (against Hugging Face)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualkit.core.errors import SpecError
from dualkit.core.specs import TransformerSpec
from dualkit.core.transformer import (
    DECODER,
    HF_DECODER_BIAS,
    MASK_VALUE,
    WORD_EMBEDDINGS,
    attention_mask_bias,
    bert_encoder,
    bert_shapes,
    encoder_names,
    erf,
    gelu,
    init_bert,
    layer_norm,
    mlm_logits,
    softmax,
    tag_logits,
)

SMALL = TransformerSpec(hidden=16, layers=2, heads=4, intermediate=24, max_positions=12, type_vocab_size=2)
V = 30


def _batch(n: int = 3, length: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, a 0/1 attention mask with padding in rows 1 and 2, and token types with a second segment."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, (n, length))
    mask = np.ones((n, length), dtype=np.int64)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    types = np.zeros((n, length), dtype=np.int64)
    types[0, 5:] = 1
    return ids, mask, types


def test_shapes_of_one_post_ln_layer_with_tied_mlm_head_in_order():
    model = TransformerSpec(hidden=8, layers=1, heads=2, intermediate=12, max_positions=5, type_vocab_size=2)
    shapes = bert_shapes(model, 11, "mlm")
    p = "bert.encoder.layer.0."
    assert list(shapes.items()) == [
        ("bert.embeddings.word_embeddings.weight", (11, 8)),
        ("bert.embeddings.position_embeddings.weight", (5, 8)),
        ("bert.embeddings.token_type_embeddings.weight", (2, 8)),
        ("bert.embeddings.LayerNorm.weight", (8,)),
        ("bert.embeddings.LayerNorm.bias", (8,)),
        (p + "attention.self.query.weight", (8, 8)),
        (p + "attention.self.query.bias", (8,)),
        (p + "attention.self.key.weight", (8, 8)),
        (p + "attention.self.key.bias", (8,)),
        (p + "attention.self.value.weight", (8, 8)),
        (p + "attention.self.value.bias", (8,)),
        (p + "attention.output.dense.weight", (8, 8)),
        (p + "attention.output.dense.bias", (8,)),
        (p + "attention.output.LayerNorm.weight", (8,)),
        (p + "attention.output.LayerNorm.bias", (8,)),
        (p + "intermediate.dense.weight", (12, 8)),
        (p + "intermediate.dense.bias", (12,)),
        (p + "output.dense.weight", (8, 12)),
        (p + "output.dense.bias", (8,)),
        (p + "output.LayerNorm.weight", (8,)),
        (p + "output.LayerNorm.bias", (8,)),
        ("cls.predictions.transform.dense.weight", (8, 8)),
        ("cls.predictions.transform.dense.bias", (8,)),
        ("cls.predictions.transform.LayerNorm.weight", (8,)),
        ("cls.predictions.transform.LayerNorm.bias", (8,)),
        ("cls.predictions.bias", (11,)),
    ]


def test_variants_add_final_ln_untied_decoder_or_classifier():
    pre = bert_shapes(TransformerSpec(norm="pre", layers=3), V, "none")
    assert list(pre)[-2:] == ["bert.encoder.LayerNorm.weight", "bert.encoder.LayerNorm.bias"]
    assert "bert.encoder.layer.2.output.LayerNorm.bias" in pre
    untied = bert_shapes(TransformerSpec(tie_embeddings=False), V, "mlm")
    assert list(untied)[-1] == DECODER and untied[DECODER] == (V, 64)
    assert DECODER not in bert_shapes(TransformerSpec(), V, "mlm")
    tag = bert_shapes(SMALL, V, "tag", num_labels=7)
    assert list(tag.items())[-2:] == [("classifier.weight", (7, 16)), ("classifier.bias", (7,))]
    assert tuple(bert_shapes(SMALL, V, "none")) == encoder_names(SMALL)
    assert all(n.startswith("bert.") for n in encoder_names(SMALL))
    assert list(tag)[: len(encoder_names(SMALL))] == list(encoder_names(SMALL))


@pytest.mark.parametrize(
    "model, head, labels, error",
    [
        (TransformerSpec(hidden=10, heads=3), "none", 0, SpecError),
        (TransformerSpec(norm="middle"), "none", 0, SpecError),
        (TransformerSpec(), "pooler", 0, ValueError),
        (TransformerSpec(), "tag", 0, ValueError),
    ],
)
def test_bad_models_and_heads_are_refused(model, head, labels, error):
    with pytest.raises(error):
        bert_shapes(model, V, head, labels)


def test_init_is_berts_and_seeded_per_tensor():
    model = TransformerSpec(hidden=32, layers=2, heads=2, intermediate=64, init_std=0.05)
    w = init_bert(model, 500, "mlm", seed=7, dtype="float32")
    assert list(w) == list(bert_shapes(model, 500, "mlm"))
    assert all(v.dtype == np.float32 and v.shape == bert_shapes(model, 500, "mlm")[k] for k, v in w.items())
    for name, v in w.items():
        if ".LayerNorm." in name:
            assert np.all(v == (1.0 if name.endswith(".weight") else 0.0)), name
        elif name.endswith(".bias"):
            assert np.all(v == 0.0), name
        elif v.size >= 1000:  # kernels and embedding tables: N(0, init_std), not truncated
            assert abs(v.std() - 0.05) < 0.1 * 0.05 and abs(v.mean()) < 0.01, name
    assert np.abs(w[WORD_EMBEDDINGS]).max() > 2 * 0.05  # truncation at 2 std would cap this
    # one stream per name: the encoder does not depend on the head, the tie, the depth after it, or the dtype
    tag = init_bert(model, 500, "tag", num_labels=3, seed=7, dtype="float64")
    deeper = init_bert(TransformerSpec(hidden=32, layers=3, heads=2, intermediate=64, init_std=0.05), 500, "none", 0, 7)
    for name in encoder_names(model):
        np.testing.assert_array_equal(w[name], tag[name].astype(np.float32))
        np.testing.assert_array_equal(w[name], deeper[name])
    assert not np.array_equal(init_bert(model, 500, "none", seed=8)[WORD_EMBEDDINGS], w[WORD_EMBEDDINGS])
    untied = init_bert(TransformerSpec(hidden=32, layers=2, heads=2, intermediate=64, tie_embeddings=False), 500, "mlm")
    assert not np.array_equal(untied[DECODER], untied[WORD_EMBEDDINGS])


def test_gelu_erf_softmax_layer_norm_and_mask_bias():
    xs = np.array([-6.0, -1.5, -0.3, 0.0, 0.2, 1.0, 4.0])
    np.testing.assert_array_equal(erf(xs), [math.erf(x) for x in xs])
    np.testing.assert_allclose(gelu(xs), [0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in xs], rtol=0, atol=0)
    assert gelu(np.float32([1.0])).dtype == np.float32
    assert abs(gelu(np.array([1.0]))[0] - 0.8413447460685429) < 1e-15  # Phi(1)
    s = softmax(np.array([[1000.0, 1000.0, MASK_VALUE("float64")]]))
    np.testing.assert_array_equal(s, [[0.5, 0.5, 0.0]])
    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 8))
    y = layer_norm(x, np.ones(8), np.zeros(8), 1e-12)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-9)
    assert MASK_VALUE("float32") == float(np.finfo(np.float32).min)
    bias = attention_mask_bias(np.array([[1, 1, 0]]), "float32")
    assert bias.shape == (1, 1, 1, 3) and bias.dtype == np.float32
    np.testing.assert_array_equal(bias.ravel(), [0.0, 0.0, np.finfo(np.float32).min])


def test_padded_tokens_do_not_change_attended_positions():
    w = init_bert(SMALL, V, "tag", 4, seed=1, dtype="float64")
    ids, mask, _ = _batch()
    other = np.where(mask == 1, ids, (ids + 7) % V)
    a, b = bert_encoder(w, SMALL, ids, mask), bert_encoder(w, SMALL, other, mask)
    keep = mask.astype(bool)
    np.testing.assert_array_equal(a[keep], b[keep])
    assert not np.allclose(a[~keep], b[~keep])  # the padded positions themselves do change
    assert bert_encoder(init_bert(SMALL, V, "none", dtype="float32"), SMALL, ids, mask).dtype == np.float32
    with pytest.raises(ValueError, match="max_positions"):
        bert_encoder(w, SMALL, np.zeros((1, 13), dtype=np.int64), np.ones((1, 13)))


def _loop_encoder(w, model, ids, mask, types):
    """Pre-LN written independently: one example, one head, one query at a time."""
    eps, h, heads = model.layer_norm_eps, model.hidden, model.heads
    d = h // heads

    def ln(x, name):
        mu, var = x.mean(), x.var()
        return (x - mu) / math.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]

    def lin(x, name):
        return w[name + ".weight"] @ x + w[name + ".bias"]

    out = []
    for n in range(ids.shape[0]):
        xs = [
            ln(
                w[WORD_EMBEDDINGS][ids[n, t]]
                + w["bert.embeddings.position_embeddings.weight"][t]
                + w["bert.embeddings.token_type_embeddings.weight"][types[n, t]],
                "bert.embeddings.LayerNorm",
            )
            for t in range(ids.shape[1])
        ]
        keys = [t for t in range(ids.shape[1]) if mask[n, t]]
        for layer in range(model.layers):
            p = f"bert.encoder.layer.{layer}."
            a = [ln(x, p + "attention.output.LayerNorm") for x in xs]
            q = [lin(x, p + "attention.self.query") for x in a]
            k = [lin(x, p + "attention.self.key") for x in a]
            v = [lin(x, p + "attention.self.value") for x in a]
            new = []
            for t, x in enumerate(xs):
                ctx = np.zeros(h)
                for hd in range(heads):
                    sl = slice(hd * d, (hd + 1) * d)
                    s = np.array([q[t][sl] @ k[j][sl] / math.sqrt(d) for j in keys])
                    e = np.exp(s - s.max())
                    ctx[sl] = sum(pj * v[j][sl] for pj, j in zip(e / e.sum(), keys))
                x = x + lin(ctx, p + "attention.output.dense")
                f = ln(x, p + "output.LayerNorm")
                new.append(x + lin(gelu(lin(f, p + "intermediate.dense")), p + "output.dense"))
            xs = new
        out.append([ln(x, "bert.encoder.LayerNorm") for x in xs])
    return np.array(out)


def test_pre_ln_matches_an_independent_loop():
    model = TransformerSpec(hidden=8, layers=2, heads=2, intermediate=12, max_positions=12, norm="pre")
    w = init_bert(model, V, "none", seed=2, dtype="float64")
    # non-trivial LayerNorms so each one's placement matters
    rng = np.random.default_rng(5)
    w = {k: (v + rng.normal(0, 0.3, v.shape) if ".LayerNorm." in k else v) for k, v in w.items()}
    ids, mask, types = _batch(length=6)
    mask[2, 2:] = 0
    got = bert_encoder(w, model, ids, mask, types)
    np.testing.assert_allclose(got, _loop_encoder(w, model, ids, mask, types), rtol=0, atol=1e-12)


def _hf_config(model, num_labels: int = 2):
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=V,
        hidden_size=model.hidden,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        intermediate_size=model.intermediate,
        max_position_embeddings=model.max_positions,
        type_vocab_size=model.type_vocab_size,
        layer_norm_eps=model.layer_norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
        tie_word_embeddings=model.tie_embeddings,
        num_labels=num_labels,
    )


def _hf_logits(hf, weights, ids, mask, types, derived):
    """Load canonical ``weights`` into a Hugging Face model and run it; ``derived`` are its keys that are not
    canonical tensors (tied copies), which must be exactly what the model lacks after loading."""
    torch = pytest.importorskip("torch")
    hf = hf.double().eval()
    hf_keys = set(hf.state_dict())
    assert set(weights) <= hf_keys
    assert hf_keys - set(weights) == derived | ({HF_DECODER_BIAS} if HF_DECODER_BIAS in hf_keys else set())
    for name, value in weights.items():
        assert tuple(hf.state_dict()[name].shape) == value.shape, name
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    if HF_DECODER_BIAS in hf_keys:
        # Hugging Face's decoder.bias is cls.predictions.bias; transformers 5 unties it with the decoder weight
        # (tie_word_embeddings=False), so it is written as well, as an export to Hugging Face must do.
        state[HF_DECODER_BIAS] = state["cls.predictions.bias"]
    result = hf.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == derived and not result.unexpected_keys
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
        )
    return out.logits.numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("tie", [True, False])
def test_mlm_logits_equal_hugging_faces(tie):
    transformers = pytest.importorskip("transformers")
    model = TransformerSpec(**{**SMALL.__dict__, "tie_embeddings": tie})
    w = init_bert(model, V, "mlm", seed=3, dtype="float64")
    rng = np.random.default_rng(4)  # perturb the zero/one inits so every bias and LayerNorm is exercised
    w = {k: v + rng.normal(0, 0.1, v.shape) for k, v in w.items()}
    ids, mask, types = _batch()
    hf = transformers.BertForMaskedLM(_hf_config(model))
    got = _hf_logits(hf, w, ids, mask, types, {DECODER} if tie else set())
    ref = mlm_logits(w, model, bert_encoder(w, model, ids, mask, types))
    assert ref.shape == (3, 10, V)
    assert _rel(ref, got) <= 1e-12


def test_tag_logits_equal_hugging_faces():
    transformers = pytest.importorskip("transformers")
    w = init_bert(SMALL, V, "tag", num_labels=5, seed=3, dtype="float64")
    rng = np.random.default_rng(6)
    w = {k: v + rng.normal(0, 0.1, v.shape) for k, v in w.items()}
    ids, mask, types = _batch()
    got = _hf_logits(transformers.BertForTokenClassification(_hf_config(SMALL, 5)), w, ids, mask, types, set())
    ref = tag_logits(w, bert_encoder(w, SMALL, ids, mask, types))
    assert ref.shape == (3, 10, 5)
    assert _rel(ref, got) <= 1e-12
