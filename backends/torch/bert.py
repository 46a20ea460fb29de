"""A BERT-style transformer in PyTorch: masked-language-model pretraining and token classification.

Modules are named as Hugging Face's PyTorch BERT (``modeling_bert.py``), so the state dict IS the canonical
weights of core/transformer.py. Attention is written out from plain Linear layers and explicit matmuls with
core's additive mask constant (not nn.MultiheadAttention or scaled_dot_product_attention, whose masks and
fast paths differ), so that it equals backends/tf/bert.py and HF's eager attention to rounding. Dropout is
the only framework randomness; init, MLM masks and batches come from core.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualkit.backends.torch import distributed
from dualkit.backends.torch.losses import masked_cross_entropy
from dualkit.backends.torch.model import ModelState
from dualkit.backends.torch.optim import Optimizer
from dualkit.backends.torch.runtime import (
    DTYPES,
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


def _add(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` under the dotted ``path``, creating plain containers on the way."""
    *parents, name = path.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(name, module)


class _BertNet(nn.Module):
    """The encoder and one head ("mlm", "tag" or "none"); every part is reached by its canonical prefix, as in
    backends/tf/bert.py. Inputs: (N, L) int64 ids and (N, L) 0/1 attention mask."""

    def __init__(self, model: TransformerSpec, vocab_size: int, head: str, num_labels: int, dtype: str):
        super().__init__()
        self.spec, self.head = model, head
        self.mask_value = MASK_VALUE(dtype)
        h, eps = model.hidden, model.layer_norm_eps
        e = "bert.embeddings."
        _add(self, e + "word_embeddings", nn.Embedding(vocab_size, h))
        _add(self, e + "position_embeddings", nn.Embedding(model.max_positions, h))
        _add(self, e + "token_type_embeddings", nn.Embedding(model.type_vocab_size, h))
        _add(self, e + "LayerNorm", nn.LayerNorm(h, eps=eps))
        _add(self, e + "dropout", nn.Dropout(model.hidden_dropout))
        for i in range(model.layers):
            p = f"bert.encoder.layer.{i}."
            for name in ("query", "key", "value"):
                _add(self, p + "attention.self." + name, nn.Linear(h, h))
            _add(self, p + "attention.self.dropout", nn.Dropout(model.attention_dropout))
            _add(self, p + "attention.output.dense", nn.Linear(h, h))
            _add(self, p + "attention.output.LayerNorm", nn.LayerNorm(h, eps=eps))
            _add(self, p + "attention.output.dropout", nn.Dropout(model.hidden_dropout))
            _add(self, p + "intermediate.dense", nn.Linear(h, model.intermediate))
            _add(self, p + "output.dense", nn.Linear(model.intermediate, h))
            _add(self, p + "output.LayerNorm", nn.LayerNorm(h, eps=eps))
            _add(self, p + "output.dropout", nn.Dropout(model.hidden_dropout))
        if model.norm == "pre":
            _add(self, FINAL_LN, nn.LayerNorm(h, eps=eps))
        if head == "mlm":
            t = "cls.predictions.transform."
            _add(self, t + "dense", nn.Linear(h, h))
            _add(self, t + "LayerNorm", nn.LayerNorm(h, eps=eps))
            self.get_submodule("cls.predictions").register_parameter("bias", nn.Parameter(torch.zeros(vocab_size)))
            if not model.tie_embeddings:
                _add(self, DECODER.removesuffix(".weight"), nn.Linear(h, vocab_size, bias=False))
            # torch lists a module's own parameters before its children's; core's order has the bias after
            # the transform (and before the decoder): move it there in every state dict.
            self.get_submodule("cls.predictions")._register_state_dict_hook(_bias_after_transform)
        elif head == "tag":
            _add(self, "dropout", nn.Dropout(model.hidden_dropout))
            _add(self, "classifier", nn.Linear(h, num_labels))
        self.to(dtype=DTYPES[dtype])

    def part(self, prefix: str) -> nn.Module:
        return self.get_submodule(prefix)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, L, H) last hidden states."""
        m, e = self.part, "bert.embeddings."
        length = ids.shape[1]
        # word + token type (all 0) + position, in Hugging Face's order of additions
        x = m(e + "word_embeddings")(ids) + m(e + "token_type_embeddings").weight[0]
        x = x + m(e + "position_embeddings").weight[:length]
        x = m(e + "dropout")(m(e + "LayerNorm")(x))
        # (N, 1, 1, L) additive bias: 0 where attended, core's MASK_VALUE at padding
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(mask == 0, self.mask_value)
        bias = bias[:, None, None, :]
        for i in range(self.spec.layers):
            x = self._layer(x, bias, f"bert.encoder.layer.{i}.")
        if self.spec.norm == "pre":
            x = m(FINAL_LN)(x)
        return x

    def _attention(self, x: torch.Tensor, bias: torch.Tensor, p: str) -> torch.Tensor:
        """Multi-head self-attention, its output dense and dropout (before the residual)."""
        m = self.part
        n, length, h = x.shape
        heads = self.spec.heads
        d = h // heads

        def split(name: str) -> torch.Tensor:  # (N, L, H) -> (N, heads, L, d)
            return m(p + "attention.self." + name)(x).view(n, length, heads, d).transpose(1, 2)

        scores = torch.matmul(split("query"), split("key").transpose(2, 3)) * d**-0.5 + bias
        probs = m(p + "attention.self.dropout")(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, split("value")).transpose(1, 2).reshape(n, length, h)
        return m(p + "attention.output.dropout")(m(p + "attention.output.dense")(context))

    def _feed_forward(self, x: torch.Tensor, p: str) -> torch.Tensor:
        m = self.part
        return m(p + "output.dropout")(m(p + "output.dense")(F.gelu(m(p + "intermediate.dense")(x))))

    def _layer(self, x: torch.Tensor, bias: torch.Tensor, p: str) -> torch.Tensor:
        """post (BERT): LN(x + attn(x)), LN(x + ffn(x)); pre: x + attn(LN(x)), x + ffn(LN(x)) with the same
        two LayerNorms (core.transformer.bert_layer)."""
        ln_attn, ln_out = self.part(p + "attention.output.LayerNorm"), self.part(p + "output.LayerNorm")
        if self.spec.norm == "pre":
            x = x + self._attention(ln_attn(x), bias, p)
            return x + self._feed_forward(ln_out(x), p)
        x = ln_attn(self._attention(x, bias, p) + x)
        return ln_out(self._feed_forward(x, p) + x)

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., H) -> the head's logits: (..., V) for "mlm", (..., K) for "tag"."""
        m = self.part
        if self.head == "mlm":
            t = "cls.predictions.transform."
            x = m(t + "LayerNorm")(F.gelu(m(t + "dense")(x)))
            decoder = self.get_parameter(WORD_EMBEDDINGS if self.spec.tie_embeddings else DECODER)
            return F.linear(x, decoder, self.get_parameter("cls.predictions.bias"))
        return m("classifier")(m("dropout")(x))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The head's logits (N, L, V or K); the hidden states (N, L, H) for head "none"."""
        x = self.encode(ids, mask)
        return x if self.head == "none" else self.head_logits(x)


def _bias_after_transform(module: nn.Module, state: dict, prefix: str, _meta: object) -> None:
    for key in (prefix + "bias", prefix + "decoder.weight"):
        if key in state:
            state.move_to_end(key)


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
        check_fits(weights, shapes, "this transformer")  # a missing tensor would keep torch's default init
        self.names = list(shapes)
        self.net = _BertNet(model, vocab_size, head, num_labels, dtype).to(device=self.device)
        self.set_weights(weights)
        params = dict(self.net.named_parameters())
        self.params = {n: params[n] for n in self.names}  # core's order (the optimizer state's too)
        self.optimizer = Optimizer(optim, self.params)

    # -- steps ---------------------------------------------------------------------------------
    def _tensors(self, input_ids: np.ndarray, *arrays: np.ndarray) -> list[torch.Tensor]:
        """int64 tensors of the ids, the attention mask [and the labels]."""
        if np.shape(input_ids)[1] > self.spec.max_positions:  # the spec checks data.max_length against it
            raise ValueError(f"sequences of {np.shape(input_ids)[1]} tokens exceed model.max_positions")
        return [to_tensor(np.asarray(a), torch.long, self.device) for a in (input_ids, *arrays)]

    def _loss(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray, scale: np.ndarray | None = None
    ) -> torch.Tensor:
        self.net.train()
        ids, mask, y = self._tensors(input_ids, attention_mask, labels)
        keep = y != IGNORE_INDEX
        # The loss needs logits only where a label is: the head (for MLM a (V, H) decoder and a softmax over V)
        # runs on those rows alone, ~15% of the tokens in BERT's masking.
        logits = self.net.head_logits(self.net.encode(ids, mask)[keep])
        if scale is None:
            return masked_cross_entropy(logits, y[keep])
        # a shard of a global batch (several workers): its summed loss times scale (= workers / the global batch's
        # labelled count), so that the mean over the workers is the global batch's mean over its labelled tokens
        return F.cross_entropy(logits, y[keep], reduction="sum") * float(np.asarray(scale).reshape(-1)[0])

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
        loss = self._loss(input_ids, attention_mask, labels)
        loss.backward()
        self.optimizer.apply([p.grad for p in self.params.values()], lr)
        return float(loss.item())

    def loss_and_grads(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Train-mode loss and its gradient w.r.t. every trainable weight (canonical names and layout); no
        state changes: the dropout RNG is put back, so the next train_step draws the same dropout."""
        rng = get_rng_state([self.net])
        loss = self._loss(input_ids, attention_mask, labels)
        # torch.autograd.grad, not backward: the parameters' .grad (the optimizer's input) stays untouched
        grads = dict(zip(self.params, torch.autograd.grad(loss, list(self.params.values()))))
        set_rng_state(rng, [self.net])
        return float(loss.item()), {n: to_numpy(g) for n, g in grads.items()}

    @torch.no_grad()
    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Eval-mode (no dropout) logits: (N, L, V) for the MLM head, (N, L, K) for the tagger."""
        self.net.eval()
        return to_numpy(self.net(*self._tensors(input_ids, attention_mask)))

    @torch.no_grad()
    def encoder_output(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Eval-mode last hidden states (N, L, H) (after the final LayerNorm for pre-LN)."""
        self.net.eval()
        return to_numpy(self.net.encode(*self._tensors(input_ids, attention_mask)))

    def save_native(self, path: str) -> None:
        """A plain PyTorch state dict (``.pt``) of the network (Hugging Face BERT's names; the tied decoder is the
        word-embedding tensor), written to a temp name, then renamed."""
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
