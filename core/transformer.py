"""The BERT-style transformer's canonical weights, their seeded initialisation, and a plain numpy forward.

Names and layouts are exactly Hugging Face's PyTorch BERT ``state_dict`` (``modeling_bert.py``), so
loading from or saving to Hugging Face is a name-preserving copy. Layout is PyTorch's: a dense kernel
is (out_features, in_features), an embedding table (num_embeddings, hidden). With ``L`` layers, ``H``
hidden, ``I`` intermediate, ``V`` vocabulary, ``P`` max_positions, ``T`` type_vocab_size, ``K`` labels:

    bert.embeddings.word_embeddings.weight (V, H), .position_embeddings.weight (P, H),
    .token_type_embeddings.weight (T, H), bert.embeddings.LayerNorm.weight|bias (H,)
    bert.encoder.layer.{i}.attention.self.query|key|value.weight (H, H) / .bias (H,)
    bert.encoder.layer.{i}.attention.output.dense.weight (H, H) / .bias, .attention.output.LayerNorm.weight|bias
    bert.encoder.layer.{i}.intermediate.dense.weight (I, H) / .bias (I,)
    bert.encoder.layer.{i}.output.dense.weight (H, I) / .bias (H,), .output.LayerNorm.weight|bias
    bert.encoder.LayerNorm.weight|bias (H,)                      pre-LN only (Hugging Face's BERT has none)
    cls.predictions.transform.dense.weight (H, H) / .bias, cls.predictions.transform.LayerNorm.weight|bias,
    cls.predictions.bias (V,), cls.predictions.decoder.weight (V, H)        head "mlm"; the decoder only
                                       when not tied (tied: it IS the word embeddings, stored once)
    classifier.weight (K, H) / .bias (K,)                                  head "tag"

Hugging Face also keeps ``cls.predictions.decoder.bias``, a copy of ``cls.predictions.bias`` that is not a
canonical tensor: transformers 5 unties it from ``cls.predictions.bias`` when ``tie_word_embeddings`` is false,
so an export to Hugging Face writes it too (HF_DECODER_BIAS), and an import ignores it.

The forward here is the parity oracle (float64-capable), in eval mode: dropout is not modelled.
"""

from __future__ import annotations

import math

import numpy as np

from dualkit.core.batches import make_rng
from dualkit.core.errors import SpecError
from dualkit.core.specs import TransformerSpec

HEADS = ("mlm", "tag", "none")
IGNORE_INDEX = -100  # labels with this value are left out of losses and metrics (as PyTorch / Hugging Face)
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"
DECODER = "cls.predictions.decoder.weight"  # absent when tied: the MLM decoder is WORD_EMBEDDINGS
HF_DECODER_BIAS = "cls.predictions.decoder.bias"  # Hugging Face's copy of cls.predictions.bias (see above)
FINAL_LN = "bert.encoder.LayerNorm"  # pre-LN's final LayerNorm
_LAYER = "bert.encoder.layer.{}."
_LAYER_PARTS = (  # one encoder layer's tensors, in Hugging Face's order, with their shape's symbols
    ("attention.self.query.weight", ("H", "H")),
    ("attention.self.query.bias", ("H",)),
    ("attention.self.key.weight", ("H", "H")),
    ("attention.self.key.bias", ("H",)),
    ("attention.self.value.weight", ("H", "H")),
    ("attention.self.value.bias", ("H",)),
    ("attention.output.dense.weight", ("H", "H")),
    ("attention.output.dense.bias", ("H",)),
    ("attention.output.LayerNorm.weight", ("H",)),
    ("attention.output.LayerNorm.bias", ("H",)),
    ("intermediate.dense.weight", ("I", "H")),
    ("intermediate.dense.bias", ("I",)),
    ("output.dense.weight", ("H", "I")),
    ("output.dense.bias", ("H",)),
    ("output.LayerNorm.weight", ("H",)),
    ("output.LayerNorm.bias", ("H",)),
)


def MASK_VALUE(dtype: str | np.dtype) -> float:  # noqa: N802 (named as the shared constant it stands for)
    """The additive attention-mask value for padded keys: the dtype's most negative finite number, as
    Hugging Face's eager attention uses. Both backends and the reference add exactly this."""
    return float(np.finfo(np.dtype(dtype)).min)


def check_model(model: TransformerSpec) -> None:
    if model.hidden < 1 or model.heads < 1 or model.hidden % model.heads:
        raise SpecError(f"model.hidden={model.hidden} must be a positive multiple of model.heads={model.heads}")
    if model.norm not in ("post", "pre"):
        raise SpecError(f"model.norm={model.norm!r} is not one of: post, pre")


def _check_head(head: str, vocab_size: int, num_labels: int) -> None:
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of: {', '.join(HEADS)}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if head == "tag" and num_labels < 1:
        raise ValueError(f"head 'tag' needs num_labels >= 1, got {num_labels}")


def encoder_shapes(model: TransformerSpec, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The ``bert.*`` tensors: embeddings, layers 0..L-1, then (pre-LN only) the final LayerNorm."""
    check_model(model)
    h, i_ = model.hidden, model.intermediate
    dims = {"H": h, "I": i_}
    shapes: dict[str, tuple[int, ...]] = {
        WORD_EMBEDDINGS: (vocab_size, h),
        "bert.embeddings.position_embeddings.weight": (model.max_positions, h),
        "bert.embeddings.token_type_embeddings.weight": (model.type_vocab_size, h),
        "bert.embeddings.LayerNorm.weight": (h,),
        "bert.embeddings.LayerNorm.bias": (h,),
    }
    for layer in range(model.layers):
        prefix = _LAYER.format(layer)
        for part, symbols in _LAYER_PARTS:
            shapes[prefix + part] = tuple(dims[s] for s in symbols)
    if model.norm == "pre":
        shapes[FINAL_LN + ".weight"] = (h,)
        shapes[FINAL_LN + ".bias"] = (h,)
    return shapes


def encoder_names(model: TransformerSpec) -> tuple[str, ...]:
    """The encoder's canonical names in order (what an MLM checkpoint hands to a tagger), ``bert.*``."""
    return tuple(encoder_shapes(model, 1))


def head_shapes(model: TransformerSpec, vocab_size: int, head: str, num_labels: int = 0) -> dict[str, tuple[int, ...]]:
    """The head's tensors in order: mlm: transform dense, transform LayerNorm, cls.predictions.bias, then the
    decoder only when untied; tag: classifier weight, bias; none: nothing."""
    _check_head(head, vocab_size, num_labels)
    h = model.hidden
    if head == "mlm":
        shapes: dict[str, tuple[int, ...]] = {
            "cls.predictions.transform.dense.weight": (h, h),
            "cls.predictions.transform.dense.bias": (h,),
            "cls.predictions.transform.LayerNorm.weight": (h,),
            "cls.predictions.transform.LayerNorm.bias": (h,),
            "cls.predictions.bias": (vocab_size,),
        }
        if not model.tie_embeddings:
            shapes[DECODER] = (vocab_size, h)
        return shapes
    if head == "tag":
        return {"classifier.weight": (num_labels, h), "classifier.bias": (num_labels,)}
    return {}


def bert_shapes(model: TransformerSpec, vocab_size: int, head: str, num_labels: int = 0) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor, in a fixed order: embeddings, layers in order, final LN (pre-LN), head."""
    _check_head(head, vocab_size, num_labels)
    return {**encoder_shapes(model, vocab_size), **head_shapes(model, vocab_size, head, num_labels)}


def init_tensor(name: str, shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """BERT's init: LayerNorm weight 1, every bias 0 (cls.predictions.bias too), kernels and embedding
    tables N(0, std) (plain normal, as Hugging Face's ``normal_``; not truncated), in float64."""
    if ".LayerNorm." in name or name.startswith(FINAL_LN + "."):
        return np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
    if name.endswith(".bias"):
        return np.zeros(shape)
    return rng.normal(0.0, std, size=shape)


def init_bert(
    model: TransformerSpec, vocab_size: int, head: str, num_labels: int = 0, seed: int = 0, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    """Seeded initial weights, in bert_shapes order. Each tensor draws from its own stream
    ``make_rng(seed, "init/" + name)``, so the encoder's values do not depend on the head, the number of
    layers after it, or the tie; both backends start from exactly these arrays."""
    out: dict[str, np.ndarray] = {}
    for name, shape in bert_shapes(model, vocab_size, head, num_labels).items():
        out[name] = init_tensor(name, shape, model.init_std, make_rng(seed, "init/" + name)).astype(dtype)
    return out


# -- the numpy reference forward (eval mode) ---------------------------------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with the biased variance, as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


_ERF = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf and scipy is not a dependency; math.erf is exact to ~1 ulp


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise erf, computed in float64 and returned in x's float dtype (float64 for integers)."""
    x = np.asarray(x)
    out = _ERF(x.astype(np.float64)).astype(np.float64)
    return out.astype(x.dtype) if x.dtype.kind == "f" else out


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (BERT's "gelu", not the tanh approximation)."""
    x = np.asarray(x)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def attention_mask_bias(attention_mask: np.ndarray, dtype: str | np.dtype = "float64") -> np.ndarray:
    """(N, L) 1 = attend / 0 = padding  ->  (N, 1, 1, L) additive bias: 0 where attended, MASK_VALUE where not."""
    m = np.asarray(attention_mask)
    bias = np.where(m.astype(bool), 0.0, MASK_VALUE(dtype)).astype(dtype)
    return bias[:, None, None, :]


def _dense(x: np.ndarray, weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    return x @ weights[name + ".weight"].T + weights[name + ".bias"]


def self_attention(
    x: np.ndarray, weights: dict[str, np.ndarray], prefix: str, heads: int, bias: np.ndarray
) -> np.ndarray:
    """Multi-head self-attention up to the context (before ``attention.output.dense``).

    ``prefix`` is a layer's ``bert.encoder.layer.{i}.``; ``bias`` is attention_mask_bias's (N, 1, 1, L)."""
    n, length, h = x.shape
    d = h // heads

    def split(name: str) -> np.ndarray:  # (N, L, H) -> (N, heads, L, d)
        return _dense(x, weights, prefix + "attention.self." + name).reshape(n, length, heads, d).transpose(0, 2, 1, 3)

    q, k, v = split("query"), split("key"), split("value")
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
    context = softmax(scores, axis=-1) @ v
    return context.transpose(0, 2, 1, 3).reshape(n, length, h)


def feed_forward(x: np.ndarray, weights: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """dense(I) -> GELU -> dense(H), before the residual."""
    return _dense(gelu(_dense(x, weights, prefix + "intermediate.dense")), weights, prefix + "output.dense")


def bert_layer(
    x: np.ndarray, weights: dict[str, np.ndarray], model: TransformerSpec, layer: int, bias: np.ndarray
) -> np.ndarray:
    """One encoder layer. post: LN(x + attn(x)), then LN(x + ffn(x)) (BERT); pre: x + attn(LN(x)), then
    x + ffn(LN(x)), with the same two LayerNorms (attention.output.LayerNorm before attention,
    output.LayerNorm before the feed-forward)."""
    p = _LAYER.format(layer)
    eps = model.layer_norm_eps

    def ln(y: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(y, weights[p + name + ".weight"], weights[p + name + ".bias"], eps)

    def attn(y: np.ndarray) -> np.ndarray:
        return _dense(self_attention(y, weights, p, model.heads, bias), weights, p + "attention.output.dense")

    if model.norm == "pre":
        x = x + attn(ln(x, "attention.output.LayerNorm"))
        return x + feed_forward(ln(x, "output.LayerNorm"), weights, p)
    x = ln(x + attn(x), "attention.output.LayerNorm")
    return ln(x + feed_forward(x, weights, p), "output.LayerNorm")


def embeddings(
    weights: dict[str, np.ndarray], model: TransformerSpec, input_ids: np.ndarray, token_type_ids: np.ndarray | None
) -> np.ndarray:
    """word + position(0..L-1) + token_type (all 0 unless given), then LayerNorm."""
    ids = np.asarray(input_ids)
    length = ids.shape[1]
    if length > model.max_positions:
        raise ValueError(f"sequence length {length} exceeds model.max_positions={model.max_positions}")
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
    x = (
        weights[WORD_EMBEDDINGS][ids]
        + weights["bert.embeddings.position_embeddings.weight"][:length][None]
        + weights["bert.embeddings.token_type_embeddings.weight"][types]
    )
    w, b = weights["bert.embeddings.LayerNorm.weight"], weights["bert.embeddings.LayerNorm.bias"]
    return layer_norm(x, w, b, model.layer_norm_eps)


def bert_encoder(
    weights: dict[str, np.ndarray],
    model: TransformerSpec,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray | None = None,
) -> np.ndarray:
    """(N, L) token ids and 0/1 attention mask -> (N, L, H) last hidden states, in the weights' dtype."""
    x = embeddings(weights, model, input_ids, token_type_ids)
    bias = attention_mask_bias(attention_mask, x.dtype)
    for layer in range(model.layers):
        x = bert_layer(x, weights, model, layer, bias)
    if model.norm == "pre":
        x = layer_norm(x, weights[FINAL_LN + ".weight"], weights[FINAL_LN + ".bias"], model.layer_norm_eps)
    return x


def mlm_logits(weights: dict[str, np.ndarray], model: TransformerSpec, hidden: np.ndarray) -> np.ndarray:
    """(N, L, H) -> (N, L, V): dense -> GELU -> LayerNorm -> decoder (the word embeddings when tied) + bias."""
    t = "cls.predictions.transform."
    x = gelu(_dense(hidden, weights, t + "dense"))
    x = layer_norm(x, weights[t + "LayerNorm.weight"], weights[t + "LayerNorm.bias"], model.layer_norm_eps)
    decoder = weights[WORD_EMBEDDINGS] if model.tie_embeddings else weights[DECODER]
    return x @ decoder.T + weights["cls.predictions.bias"]


def tag_logits(weights: dict[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """(N, L, H) -> (N, L, K): the token classifier (its dropout is not modelled)."""
    return _dense(hidden, weights, "classifier")
