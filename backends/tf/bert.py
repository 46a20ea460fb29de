"""A BERT-style transformer in TensorFlow / Keras 3: masked-language-model pretraining and token classification.

Keras layers (Embedding, Dense, LayerNormalization, Dropout) are held flat by their canonical prefix (Hugging
Face's PyTorch BERT names, core/transformer.py), so the forward reads as backends/torch/bert.py's; dense
kernels are stored (in, out) as Keras does and converted at the canonical boundary (runtime.DENSE_LAYOUT).
Attention is written out from plain Dense layers and explicit matmuls with core's additive mask constant
(not keras.layers.MultiHeadAttention, whose masking value and scaling change with its options). Dropout
is the only framework randomness; init, MLM masks and batches come from core.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from dualkit.backends.tf import distributed
from dualkit.backends.tf.losses import masked_cross_entropy
from dualkit.backends.tf.model import ModelState
from dualkit.backends.tf.optim import Optimizer
from dualkit.backends.tf.runtime import (
    DENSE_LAYOUT,
    DTYPES,
    IDENTITY_LAYOUT,
    framework_device,
    get_rng_state,
    save_native,
    set_rng_state,
    to_numpy,
    to_tensor,
)
from dualkit.core.checkpoint import check_fits
from dualkit.core.specs import OptimSpec, TransformerSpec
from dualkit.core.transformer import DECODER, FINAL_LN, IGNORE_INDEX, MASK_VALUE, WORD_EMBEDDINGS, bert_shapes


def _gelu(x: tf.Tensor) -> tf.Tensor:
    """Exact GELU as torch's F.gelu computes it, x * 0.5 * (1 + erf(x / sqrt 2)). Not keras.activations.gelu:
    tf.nn.gelu casts its Python constant 1/sqrt(2) through float32, 5e-9 off in float64."""
    return x * tf.constant(0.5, x.dtype) * (1.0 + tf.math.erf(x * tf.constant(math.sqrt(0.5), x.dtype)))


@keras.saving.register_keras_serializable(package="dualkit", name="BertNet")
class _BertNet(keras.Model):
    """The encoder and one head ("mlm", "tag" or "none"); every part is reached by its canonical prefix, as in
    backends/torch/bert.py. Inputs: (N, L) int64 ids and (N, L) 0/1 attention mask. The layers sit in one flat
    dict, so that ``self.layers`` lists every Dropout (runtime.get_rng_state saves their generators)."""

    def __init__(self, model: TransformerSpec, vocab_size: int, head: str, num_labels: int, dtype: str, **kwargs):
        super().__init__(dtype=dtype, name="bert")
        self.spec, self.head = model, head
        self.config = {"vocab_size": vocab_size, "head": head, "num_labels": num_labels, "dtype": dtype}
        self.mask_value = MASK_VALUE(dtype)
        h, eps = model.hidden, model.layer_norm_eps

        def dense(units: int, in_features: int = h, use_bias: bool = True) -> keras.layers.Dense:
            layer = keras.layers.Dense(units, use_bias=use_bias, dtype=dtype)
            layer.build((None, in_features))  # the variables exist before set_weights
            return layer

        def norm() -> keras.layers.LayerNormalization:
            layer = keras.layers.LayerNormalization(epsilon=eps, dtype=dtype)
            layer.build((None, h))
            return layer

        def embedding(rows: int) -> keras.layers.Embedding:
            layer = keras.layers.Embedding(rows, h, dtype=dtype)
            layer.build()
            return layer

        def dropout(rate: float) -> keras.layers.Layer:
            # Keras gives a rate-0 Dropout no seed generator (runtime.get_rng_state reads every Dropout's)
            return keras.layers.Dropout(rate, dtype=dtype) if rate > 0 else keras.layers.Identity(dtype=dtype)

        e = "bert.embeddings."
        parts: dict[str, keras.layers.Layer] = {
            e + "word_embeddings": embedding(vocab_size),
            e + "position_embeddings": embedding(model.max_positions),
            e + "token_type_embeddings": embedding(model.type_vocab_size),
            e + "LayerNorm": norm(),
            e + "dropout": dropout(model.hidden_dropout),
        }
        for i in range(model.layers):
            p = f"bert.encoder.layer.{i}."
            for name in ("query", "key", "value"):
                parts[p + "attention.self." + name] = dense(h)
            parts[p + "attention.self.dropout"] = dropout(model.attention_dropout)
            parts[p + "attention.output.dense"] = dense(h)
            parts[p + "attention.output.LayerNorm"] = norm()
            parts[p + "attention.output.dropout"] = dropout(model.hidden_dropout)
            parts[p + "intermediate.dense"] = dense(model.intermediate)
            parts[p + "output.dense"] = dense(h, model.intermediate)
            parts[p + "output.LayerNorm"] = norm()
            parts[p + "output.dropout"] = dropout(model.hidden_dropout)
        if model.norm == "pre":
            parts[FINAL_LN] = norm()
        if head == "mlm":
            t = "cls.predictions.transform."
            parts[t + "dense"] = dense(h)
            parts[t + "LayerNorm"] = norm()
            if not model.tie_embeddings:
                parts[DECODER.removesuffix(".weight")] = dense(vocab_size, use_bias=False)
            self.mlm_bias = self.add_weight(shape=(vocab_size,), initializer="zeros", dtype=dtype, name="mlm_bias")
        elif head == "tag":
            parts["dropout"] = dropout(model.hidden_dropout)
            parts["classifier"] = dense(num_labels)
        self.parts = parts

    def get_config(self) -> dict:
        """What a ``.keras`` archive needs to build the network again (the spec as a plain dict)."""
        return {"model": dataclasses.asdict(self.spec), **self.config}

    @classmethod
    def from_config(cls, config: dict) -> _BertNet:
        config = dict(config)
        return cls(TransformerSpec(**config.pop("model")), **config)

    def canonical_variables(self, names: list[str]) -> dict[str, tuple[keras.Variable, object, object]]:
        """canonical name -> (variable, canonical->keras, keras->canonical), in the order of ``names``."""
        out = {}
        for name in names:
            if name == "cls.predictions.bias":
                out[name] = (self.mlm_bias, *IDENTITY_LAYOUT)
                continue
            prefix, part = name.rsplit(".", 1)
            layer = self.parts[prefix]
            if isinstance(layer, keras.layers.Embedding):
                out[name] = (layer.embeddings, *IDENTITY_LAYOUT)
            elif isinstance(layer, keras.layers.LayerNormalization):
                out[name] = (layer.gamma if part == "weight" else layer.beta, *IDENTITY_LAYOUT)
            else:
                out[name] = (layer.kernel, *DENSE_LAYOUT) if part == "weight" else (layer.bias, *IDENTITY_LAYOUT)
        return out

    def encode(self, ids: tf.Tensor, mask: tf.Tensor, training: bool) -> tf.Tensor:
        """(N, L, H) last hidden states."""
        m, e = self.parts, "bert.embeddings."
        length = tf.shape(ids)[1]
        # word + token type (all 0) + position, in Hugging Face's order of additions
        x = m[e + "word_embeddings"](ids) + m[e + "token_type_embeddings"].embeddings[0]
        x = x + m[e + "position_embeddings"].embeddings[:length]
        x = m[e + "dropout"](m[e + "LayerNorm"](x), training=training)
        # (N, 1, 1, L) additive bias: 0 where attended, core's MASK_VALUE at padding
        masked = tf.equal(mask[:, None, None, :], 0)
        bias = tf.where(masked, tf.constant(self.mask_value, x.dtype), tf.constant(0.0, x.dtype))
        for i in range(self.spec.layers):
            x = self._layer(x, bias, f"bert.encoder.layer.{i}.", training)
        if self.spec.norm == "pre":
            x = m[FINAL_LN](x)
        return x

    def _attention(self, x: tf.Tensor, bias: tf.Tensor, p: str, training: bool) -> tf.Tensor:
        """Multi-head self-attention, its output dense and dropout (before the residual)."""
        m = self.parts
        n, length = tf.shape(x)[0], tf.shape(x)[1]
        h, heads = self.spec.hidden, self.spec.heads
        d = h // heads

        def split(name: str) -> tf.Tensor:  # (N, L, H) -> (N, heads, L, d)
            return tf.transpose(tf.reshape(m[p + "attention.self." + name](x), [n, length, heads, d]), [0, 2, 1, 3])

        scores = tf.matmul(split("query"), split("key"), transpose_b=True) * tf.constant(d**-0.5, x.dtype) + bias
        probs = m[p + "attention.self.dropout"](tf.nn.softmax(scores, axis=-1), training=training)
        context = tf.reshape(tf.transpose(tf.matmul(probs, split("value")), [0, 2, 1, 3]), [n, length, h])
        return m[p + "attention.output.dropout"](m[p + "attention.output.dense"](context), training=training)

    def _feed_forward(self, x: tf.Tensor, p: str, training: bool) -> tf.Tensor:
        m = self.parts
        inner = _gelu(m[p + "intermediate.dense"](x))
        return m[p + "output.dropout"](m[p + "output.dense"](inner), training=training)

    def _layer(self, x: tf.Tensor, bias: tf.Tensor, p: str, training: bool) -> tf.Tensor:
        """post (BERT): LN(x + attn(x)), LN(x + ffn(x)); pre: x + attn(LN(x)), x + ffn(LN(x)) with the same
        two LayerNorms (core.transformer.bert_layer)."""
        ln_attn, ln_out = self.parts[p + "attention.output.LayerNorm"], self.parts[p + "output.LayerNorm"]
        if self.spec.norm == "pre":
            x = x + self._attention(ln_attn(x), bias, p, training)
            return x + self._feed_forward(ln_out(x), p, training)
        x = ln_attn(self._attention(x, bias, p, training) + x)
        return ln_out(self._feed_forward(x, p, training) + x)

    def head_logits(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        """Hidden states (..., H) -> the head's logits: (..., V) for "mlm", (..., K) for "tag"."""
        m = self.parts
        if self.head == "mlm":
            t = "cls.predictions.transform."
            x = m[t + "LayerNorm"](_gelu(m[t + "dense"](x)))
            if self.spec.tie_embeddings:
                x = tf.matmul(x, m[WORD_EMBEDDINGS.removesuffix(".weight")].embeddings, transpose_b=True)
            else:
                x = m[DECODER.removesuffix(".weight")](x)
            return x + self.mlm_bias
        return m["classifier"](m["dropout"](x, training=training))

    def call(self, ids: tf.Tensor, mask: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The head's logits (N, L, V or K); the hidden states (N, L, H) for head "none"."""
        x = self.encode(ids, mask, training)
        return x if self.head == "none" else self.head_logits(x, training)


class BertModel(ModelState):
    """A BERT encoder with one head, its optimizer and steps (``MaskedLM`` and ``TokenTagger`` fix the head).
    Inputs are numpy: input_ids (N, L) int64, attention_mask (N, L) 1 = real token, labels (N, L) int64 with
    core.transformer.IGNORE_INDEX (-100) where no loss is taken; outputs are numpy."""

    def __init__(
        self,
        model: TransformerSpec,
        vocab_size: int,
        head: str,
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        num_labels: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        self.device = framework_device(device)
        self.dtype = DTYPES[dtype]
        self.spec = model
        shapes = bert_shapes(model, vocab_size, head, num_labels)
        check_fits(weights, shapes, "this transformer")  # a missing tensor would keep Keras's default init
        self.names = list(shapes)
        with tf.device(self.device):
            self.net = _BertNet(model, vocab_size, head, num_labels, dtype)
            self.variables = self.net.canonical_variables(self.names)
            self.set_weights(weights)
            self.params = {n: v for n, (v, _, _) in self.variables.items()}
            self.optimizer = Optimizer(optim, self.params, {n: (to, fr) for n, (_, to, fr) in self.variables.items()})
        # One trace for every batch size and length (the last batch of an epoch is shorter).
        ids = tf.TensorSpec((None, None), tf.int64)
        self._train_fn = tf.function(self._train, input_signature=[ids, ids, ids, tf.TensorSpec((), tf.float64)])
        self._grads_fn = tf.function(self._loss_and_grads, input_signature=[ids, ids, ids])
        self._logits_fn = tf.function(lambda i, m: self.net(i, m, training=False), input_signature=[ids, ids])
        self._encode_fn = tf.function(lambda i, m: self.net.encode(i, m, False), input_signature=[ids, ids])

    # -- steps ---------------------------------------------------------------------------------
    def _tensors(self, input_ids: np.ndarray, *arrays: np.ndarray) -> list[tf.Tensor]:
        """int64 tensors of the ids, the attention mask [and the labels]."""
        if np.shape(input_ids)[1] > self.spec.max_positions:  # the spec checks data.max_length against it
            raise ValueError(f"sequences of {np.shape(input_ids)[1]} tokens exceed model.max_positions")
        # ids, mask and labels are int64; a shard's loss scale (several workers) is in the model's dtype
        return [
            to_tensor(np.asarray(a), tf.int64 if np.asarray(a).dtype.kind in "iub" else self.dtype)
            for a in (input_ids, *arrays)
        ]

    def _loss(self, ids: tf.Tensor, mask: tf.Tensor, labels: tf.Tensor, scale: tf.Tensor | None = None) -> tf.Tensor:
        """Train-mode loss (see train_step). The loss needs logits only where a label is: the head (for MLM a (V, H)
        decoder and a softmax over V) runs on those rows alone, ~15% of the tokens in BERT's masking."""
        keep = tf.not_equal(labels, IGNORE_INDEX)
        hidden = tf.boolean_mask(self.net.encode(ids, mask, True), keep)
        logits, y = self.net.head_logits(hidden, True), tf.boolean_mask(labels, keep)
        if scale is None:
            return masked_cross_entropy(logits, y)
        # a shard of a global batch (several workers): its summed loss times scale (= workers / the global batch's
        # labelled count), so that the mean over the workers is the global batch's mean over its labelled tokens
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)) * scale[0]

    def _loss_and_grads(self, ids: tf.Tensor, mask: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, list]:
        trainable = list(self.params.values())
        with tf.GradientTape() as tape:
            loss = self._loss(ids, mask, labels)
        # the word embeddings' gradient from the lookup alone is IndexedSlices: dense, as torch's, for the
        # optimizer and for comparison (tied, it is summed with the decoder's dense gradient anyway)
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, trainable)]

    def _train(self, ids: tf.Tensor, mask: tf.Tensor, labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        loss, grads = self._loss_and_grads(ids, mask, labels)
        self.optimizer.apply(grads, lr)
        return loss

    def train_step(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        labels: np.ndarray,
        lr: float,
        scale: np.ndarray | None = None,
    ) -> float:
        """One optimizer update on a batch; returns the loss before the update (mean cross-entropy over the
        labelled positions; 0 with zero gradients when none is labelled). On several workers the arrays are this
        worker's shard and ``scale`` (one value per sequence: workers / the global batch's labelled count) makes
        the averaged gradient the global batch's (tasks/transformer.shard_scale)."""
        if distributed.replicas() > 1:
            return self._step((input_ids, attention_mask, labels, scale), lr)
        with tf.device(self.device):
            loss = self._train_fn(*self._tensors(input_ids, attention_mask, labels), tf.constant(lr, tf.float64))
        return float(loss.numpy())

    def loss_and_grads(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Train-mode loss and its gradient w.r.t. every trainable weight (canonical names and layout); no
        state changes: the dropout RNG is put back, so the next train_step draws the same dropout."""
        rng = get_rng_state([self.net])
        with tf.device(self.device):
            loss, grads = self._grads_fn(*self._tensors(input_ids, attention_mask, labels))
        set_rng_state(rng, [self.net])
        return float(loss.numpy()), {n: self.variables[n][2](to_numpy(g)).copy() for n, g in zip(self.params, grads)}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Eval-mode (no dropout) logits: (N, L, V) for the MLM head, (N, L, K) for the tagger."""
        with tf.device(self.device):
            return to_numpy(self._logits_fn(*self._tensors(input_ids, attention_mask)))

    def encoder_output(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Eval-mode last hidden states (N, L, H) (after the final LayerNorm for pre-LN)."""
        with tf.device(self.device):
            return to_numpy(self._encode_fn(*self._tensors(input_ids, attention_mask)))

    def save_native(self, path: str) -> None:
        """A Keras ``.keras`` archive of the network (weights in Keras layout), written to a temp name, then
        renamed."""
        save_native(self.net, path)


class MaskedLM(BertModel):
    """BERT with the masked-language-model head (``cls.predictions``; tied to the word embeddings when
    ``model.tie_embeddings``): logits (N, L, vocab_size)."""

    def __init__(
        self,
        model: TransformerSpec,
        vocab_size: int,
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        super().__init__(model, vocab_size, "mlm", weights, optim, 0, dtype, device)


class TokenTagger(BertModel):
    """BERT with a token-classification head (dropout, ``classifier``): logits (N, L, num_labels)."""

    def __init__(
        self,
        model: TransformerSpec,
        vocab_size: int,
        num_labels: int,
        weights: dict[str, np.ndarray],
        optim: OptimSpec,
        dtype: str = "float32",
        device: str = "cpu",
    ):
        super().__init__(model, vocab_size, "tag", weights, optim, num_labels, dtype, device)
