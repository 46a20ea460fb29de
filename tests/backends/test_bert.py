"""The BERT twins (backends/*/bert.py): each backend against Hugging Face's BertForMaskedLM /
BertForTokenClassification and core's numpy reference, torch against tf (logits, loss, gradients, AdamW
steps, optimizer-state hand-over), the tied decoder, the ignore index, dropout and TF's traces.

Models are built once per configuration (``_build``) and reset to their initial weights and a fresh optimizer
state before each use (``fresh``): a TF model traces each of its steps once, about a second apiece.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from types import ModuleType

import numpy as np
import pytest

from dualkit.core import registry
from dualkit.core.batches import make_rng
from dualkit.core.errors import CheckpointError
from dualkit.core.losses import softmax_cross_entropy
from dualkit.core.optim_ref import init_state, state_names
from dualkit.core.specs import OptimSpec, TransformerSpec
from dualkit.core.transformer import (
    DECODER,
    HF_DECODER_BIAS,
    IGNORE_INDEX,
    WORD_EMBEDDINGS,
    bert_encoder,
    bert_shapes,
    init_bert,
    mlm_logits,
    tag_logits,
)

V, K, N, L = 50, 5, 4, 12  # vocabulary, tag labels, batch, sequence length
BASE = TransformerSpec(
    hidden=16, layers=2, heads=2, intermediate=32, max_positions=L, hidden_dropout=0.0, attention_dropout=0.0
)
OPTIM = OptimSpec(name="adamw", lr=1e-3, weight_decay=0.01, eps=1e-6, decay_1d=False)  # BERT's AdamW
# (head, norm, tie): the MLM head in every norm/tie variant, the tagger (whose head ignores both)
CONFIGS = [("mlm", "post", True), ("mlm", "post", False), ("mlm", "pre", True), ("mlm", "pre", False)]
CONFIGS += [("tag", "post", True)]
IDS = ["mlm-post-tied", "mlm-post-untied", "mlm-pre-tied", "mlm-pre-untied", "tag"]


def spec(norm: str = "post", tie: bool = True, dropout: float = 0.0) -> TransformerSpec:
    return dataclasses.replace(BASE, norm=norm, tie_embeddings=tie, hidden_dropout=dropout, attention_dropout=dropout)


def weights(head: str, model: TransformerSpec, dtype: str) -> dict[str, np.ndarray]:
    """core's init, every tensor then moved by N(0, 0.05): BERT's zero biases and unit LayerNorm weights would
    hide a swapped, transposed or missing one."""
    w = init_bert(model, V, head, K if head == "tag" else 0, 0, "float64")
    rng = make_rng(1, "test-bert/weights")
    return {n: (v + rng.normal(0.0, 0.05, v.shape)).astype(dtype) for n, v in w.items()}


def bert_module(name: str) -> ModuleType:
    """backends/<name>/bert.py, through the registry (torch is imported before TensorFlow)."""
    if not registry.is_installed(name):
        pytest.skip(f"{registry.BACKENDS[name][1]} is not installed")
    registry.get_backend(name)
    return importlib.import_module(f"dualkit.backends.{name}.bert")


@functools.cache
def _build(name: str, head: str, norm: str, tie: bool, dtype: str, dropout: float):
    model = spec(norm, tie, dropout)
    w = weights(head, model, dtype)
    bert = bert_module(name)
    if head == "mlm":
        return bert.MaskedLM(model, V, w, OPTIM, dtype)
    return bert.TokenTagger(model, V, K, w, OPTIM, dtype)


def fresh(name: str, head: str = "mlm", norm: str = "post", tie: bool = True, dtype: str = "float64", dropout=0.0):
    """The model of this configuration at its initial weights with a fresh optimizer state, and those weights."""
    bert = _build(name, head, norm, tie, dtype, dropout)
    w = weights(head, spec(norm, tie, dropout), dtype)
    bert.set_weights(w)
    bert.set_optimizer_state(init_state(OPTIM, w))
    return bert, w


def batch(head: str = "mlm", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids (N, L), attention mask with padding in rows 1 and 3, labels: MLM ~30% of the real tokens, tags on
    every real token; IGNORE_INDEX elsewhere (padding included)."""
    rng = make_rng(seed, "test-bert/batch")
    ids = rng.integers(0, V, (N, L))
    mask = np.ones((N, L), np.int64)
    mask[1, 8:] = 0
    mask[3, 3:] = 0
    chosen = rng.random((N, L)) < 0.3 if head == "mlm" else np.ones((N, L), bool)
    targets = ids if head == "mlm" else rng.integers(0, K, (N, L))
    return ids, mask, np.where(chosen & (mask == 1), targets, IGNORE_INDEX)


def reference_logits(head: str, model: TransformerSpec, w: dict[str, np.ndarray], ids, mask) -> np.ndarray:
    hidden = bert_encoder(w, model, ids, mask)
    return mlm_logits(w, model, hidden) if head == "mlm" else tag_logits(w, hidden)


def reference_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    keep = labels != IGNORE_INDEX
    return softmax_cross_entropy(logits[keep], labels[keep])


# -- names, layouts, refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "norm", "tie"), [CONFIGS[0], CONFIGS[1], CONFIGS[4]], ids=["tied", "untied", "tag"])
def test_weights_and_optimizer_state_are_canonical_and_round_trip(backend, head, norm, tie):
    bert, w = fresh(backend.NAME, head, norm, tie)
    got = bert.get_weights()
    shapes = bert_shapes(spec(norm, tie), V, head, K if head == "tag" else 0)
    assert list(got) == list(shapes)  # core's order
    assert {n: v.shape for n, v in got.items()} == shapes
    assert (DECODER in got) == (head == "mlm" and not tie)  # tied: stored once, as the word embeddings
    for name, value in got.items():
        np.testing.assert_array_equal(value, w[name], err_msg=name)
    assert list(bert.get_optimizer_state()) == state_names(OPTIM, list(shapes))


def test_weights_that_do_not_fit_and_too_long_sequences_are_refused(backend):
    bert = bert_module(backend.NAME)
    w = weights("mlm", BASE, "float32")
    with pytest.raises(CheckpointError, match=r"missing: cls\.predictions\.bias"):
        bert.MaskedLM(BASE, V, {n: v for n, v in w.items() if n != "cls.predictions.bias"}, OPTIM)
    with pytest.raises(CheckpointError, match="unexpected: " + DECODER):
        bert.MaskedLM(BASE, V, {**w, DECODER: w[WORD_EMBEDDINGS]}, OPTIM)  # tied: the decoder is not stored
    model, _ = fresh(backend.NAME)
    ids = np.zeros((1, L + 1), np.int64)
    with pytest.raises(ValueError, match="max_positions"):
        model.logits(ids, np.ones_like(ids))


# -- forward: Hugging Face and core's reference ------------------------------------------------------------


def hugging_face(head: str, model: TransformerSpec, w: dict[str, np.ndarray], dtype: str):
    """Hugging Face's BERT (eager attention, eval mode) holding the canonical weights ``w``."""
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.BertConfig(
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
        tie_word_embeddings=model.tie_embeddings,
        num_labels=K,
        attn_implementation="eager",
    )
    cls = transformers.BertForMaskedLM if head == "mlm" else transformers.BertForTokenClassification
    hf = cls(config).to(getattr(torch, dtype)).eval()
    state = {n: torch.from_numpy(v) for n, v in w.items()}
    if head == "mlm":
        state[HF_DECODER_BIAS] = state["cls.predictions.bias"]  # HF's copy (untied in transformers 5)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {DECODER}
    if head == "mlm" and model.tie_embeddings:
        assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    return hf


# the untied head in float64 only: each float32 TF model costs its own traces
HF_CASES = [("mlm", True, "float64"), ("mlm", False, "float64"), ("tag", True, "float64")]
HF_CASES += [("mlm", True, "float32"), ("tag", True, "float32")]


@pytest.mark.parametrize(
    ("head", "tie", "dtype"), HF_CASES, ids=["tied", "untied", "tag", "tied-float32", "tag-float32"]
)
def test_logits_and_hidden_states_equal_hugging_faces(backend, head, tie, dtype):
    import torch

    bert, w = fresh(backend.NAME, head, "post", tie, dtype)
    hf = hugging_face(head, spec("post", tie), w, dtype)
    ids, mask, _ = batch(head)
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    tol = 1e-12 if dtype == "float64" else 1e-5
    logits = bert.logits(ids, mask)
    assert logits.dtype == np.dtype(dtype) and logits.shape == (N, L, V if head == "mlm" else K)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(bert.encoder_output(ids, mask), out.hidden_states[-1].numpy(), rtol=0, atol=tol)


@pytest.mark.parametrize(("head", "norm", "tie"), CONFIGS, ids=IDS)
def test_logits_and_loss_equal_cores_reference(backend, head, norm, tie):
    bert, w = fresh(backend.NAME, head, norm, tie)
    ids, mask, labels = batch(head)
    model = spec(norm, tie)
    ref = reference_logits(head, model, w, ids, mask)
    np.testing.assert_allclose(bert.logits(ids, mask), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bert.encoder_output(ids, mask), bert_encoder(w, model, ids, mask), rtol=0, atol=1e-12)
    loss, _ = bert.loss_and_grads(ids, mask, labels)  # dropout is off: train mode computes the same logits
    assert loss == pytest.approx(reference_loss(ref, labels), rel=1e-12)


def test_numpy_loss_is_the_mean_over_labelled_positions(backend):
    _, _, labels = batch()
    logits = make_rng(2, "test-bert/logits").normal(size=(N, L, V))
    got = backend.numpy_loss("masked_cross_entropy", logits, labels)
    assert got == pytest.approx(reference_loss(logits, labels), rel=1e-12)
    assert backend.numpy_loss("masked_cross_entropy", logits, np.full_like(labels, IGNORE_INDEX)) == 0.0


# -- torch against tf ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "norm", "tie"), CONFIGS, ids=IDS)
def test_torch_and_tf_agree_on_logits_loss_and_gradients(head, norm, tie):
    (a, w), (b, _) = fresh("torch", head, norm, tie), fresh("tf", head, norm, tie)
    ids, mask, labels = batch(head)
    np.testing.assert_allclose(a.logits(ids, mask), b.logits(ids, mask), rtol=0, atol=1e-10)
    (loss_a, grads_a), (loss_b, grads_b) = a.loss_and_grads(ids, mask, labels), b.loss_and_grads(ids, mask, labels)
    assert loss_a == pytest.approx(loss_b, abs=1e-10)
    assert list(grads_a) == list(grads_b) == list(w)  # every canonical tensor is trained
    for name in w:
        assert grads_a[name].shape == w[name].shape, name
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=0, atol=1e-10, err_msg=name)
    assert np.abs(grads_a["bert.embeddings.position_embeddings.weight"]).sum() > 0


def test_adamw_steps_and_an_optimizer_state_handed_from_torch_to_tf_agree():
    (a, _), (b, _) = fresh("torch"), fresh("tf")
    batches = [batch(seed=s) for s in range(4)]

    def steps(models, part) -> None:
        for ids, mask, labels in part:
            la, lb = (m.train_step(ids, mask, labels, 1e-2) for m in models)
            assert la == pytest.approx(lb, abs=1e-10)

    def assert_same(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> None:
        assert list(x) == list(y)
        for name in x:
            np.testing.assert_allclose(x[name], y[name], rtol=0, atol=1e-10, err_msg=name)

    steps((a, b), batches[:2])
    assert_same(a.get_weights(), b.get_weights())
    assert_same(a.get_optimizer_state(), b.get_optimizer_state())
    # hand over: torch's state, canonical, into a fresh tf model; both go on
    b, _ = fresh("tf")
    b.set_weights(a.get_weights())
    b.set_optimizer_state(a.get_optimizer_state())
    steps((a, b), batches[2:])
    assert_same(a.get_weights(), b.get_weights())
    assert_same(a.get_optimizer_state(), b.get_optimizer_state())


# -- the tied decoder, the ignore index ----------------------------------------------------------------------


def test_the_tied_decoder_is_the_word_embeddings(backend):
    tied, w = fresh(backend.NAME, "mlm", "post", True)
    untied, _ = fresh(backend.NAME, "mlm", "post", False)
    untied.set_weights({**w, DECODER: w[WORD_EMBEDDINGS].copy()})  # the same function, two tensors
    ids, mask, labels = batch()
    (loss_t, grads_t), (loss_u, grads_u) = (
        tied.loss_and_grads(ids, mask, labels),
        untied.loss_and_grads(ids, mask, labels),
    )
    assert loss_t == pytest.approx(loss_u, rel=1e-14)
    assert DECODER not in grads_t and np.abs(grads_u[DECODER]).sum() > 0
    # the one tensor's gradient has both uses: the lookup's and the decoder's
    np.testing.assert_allclose(
        grads_t[WORD_EMBEDDINGS], grads_u[WORD_EMBEDDINGS] + grads_u[DECODER], rtol=0, atol=1e-14
    )
    for _ in range(3):
        tied.train_step(ids, mask, labels, 1e-2)
    after = tied.get_weights()
    assert list(after) == list(w)  # still no decoder key
    assert np.abs(after[WORD_EMBEDDINGS] - w[WORD_EMBEDDINGS]).max() > 1e-3
    np.testing.assert_allclose(tied.logits(ids, mask), reference_logits("mlm", BASE, after, ids, mask), atol=1e-12)


def test_a_batch_without_labels_gives_loss_zero_and_zero_gradients(backend):
    bert, _ = fresh(backend.NAME)
    ids, mask, labels = batch()
    unlabelled = np.full_like(labels, IGNORE_INDEX)
    loss, grads = bert.loss_and_grads(ids, mask, unlabelled)
    assert loss == 0.0
    assert all(not g.any() for g in grads.values())
    assert bert.train_step(ids, mask, unlabelled, 1e-2) == 0.0
    assert all(np.isfinite(v).all() for v in bert.get_weights().values())
    assert np.isfinite(bert.train_step(ids, mask, labels, 1e-2))


# -- dropout and the RNG ----------------------------------------------------------------------------------------


def test_dropout_draws_in_training_only_and_follows_the_rng_state(backend):
    bert, _ = fresh(backend.NAME, dtype="float32", dropout=0.1)
    ids, mask, labels = batch()
    np.testing.assert_array_equal(bert.logits(ids, mask), bert.logits(ids, mask))  # eval mode: no dropout
    rng = bert.get_rng_state()
    assert rng
    # lr 0: the weights stay, so only the dropout draw changes the loss
    first, second = bert.train_step(ids, mask, labels, 0.0), bert.train_step(ids, mask, labels, 0.0)
    assert first != second
    bert.set_rng_state(rng)
    assert bert.train_step(ids, mask, labels, 0.0) == first
    # loss_and_grads draws as a train step would and puts the RNG back
    loss, _ = bert.loss_and_grads(ids, mask, labels)
    assert bert.train_step(ids, mask, labels, 0.0) == loss


def test_the_same_seed_gives_the_same_dropout_generators(backend):
    bert = bert_module(backend.NAME)
    model = spec(dropout=0.1)
    w = weights("mlm", model, "float32")
    states = []
    for seed in (7, 7, 8):
        backend.seed(seed)
        states.append(bert.MaskedLM(model, V, w, OPTIM).get_rng_state())
    assert list(states[0]) == list(states[1]) == list(states[2])
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(np.array_equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.backend_only("tf", reason="tf.function traces")
def test_steps_trace_once_for_every_batch_size_and_length(backend):
    bert, _ = fresh("tf")
    ids, mask, labels = batch()
    for n, length in ((N, L), (3, L), (2, 7)):
        bert.train_step(ids[:n, :length], mask[:n, :length], labels[:n, :length], 1e-3)
        assert bert.logits(ids[:n, :length], mask[:n, :length]).shape == (n, length, V)
    assert bert._train_fn.experimental_get_tracing_count() == 1
    assert bert._logits_fn.experimental_get_tracing_count() == 1
