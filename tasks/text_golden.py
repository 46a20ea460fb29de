"""The transformer tasks' (``mlm``, ``tag``) parity levels as golden cases (tasks/golden.py), and their training-step
throughput on synthetic tokens (Task.step_throughput): what the GPU check runs for them.

The cases are tasks/text_parity.py's L0-L4 for one backend on recorded inputs: L0 the masked cross-entropy; L1 the
variants' eval-mode logits with and without padding (real positions only) and the preset model's on its first
batch; L2 the train-mode loss and gradients of the same (the attention key bias, whose gradient is zero by
construction, on the scale of the model's largest gradient as text_parity.grads_gap measures it); L3 the
classifier's optimizer cases (the same Optimizer, as text_parity reuses parity.level3); L4 the preset (dropout off)
trained ``l4_steps`` steps, recorded as the run loop feeds it: a torch CPU run through the task's own driver
(mlm.fit / tag.fit) with its train steps recorded (every batch with its MLM masks drawn by core, its attention mask,
labels and learning rate), so that the replay needs no corpus, tokenizer or data files.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core import transformer as ref
from dualkit.core.batches import make_rng
from dualkit.core.masking import mlm_mask
from dualkit.core.specs import OptimSpec, TransformerSpec
from dualkit.tasks import mlm, tag
from dualkit.tasks.base import timed_rate
from dualkit.tasks.classify_golden import END_STATE, optimizer_cases
from dualkit.tasks.golden import (
    Arrays,
    Compare,
    GoldenCase,
    Recorder,
    pack_batches,
    prefixed,
    unpack_batches,
    weights_in,
    weights_of,
)
from dualkit.tasks.loop import new_state
from dualkit.tasks.text_parity import (
    L4_EVAL_SEQUENCES,
    L4_STEPS,
    LABELS,
    SGD,
    SPECIALS,
    VARIANTS,
    VOCAB,
    first_batch,
    head_of,
    loss_probe,
    parity_spec,
    prepare,
    probe_batch,
)
from dualkit.tasks.transformer import TOKENS_PER_S, build_model

GOLDEN_LEVELS = ("L0", "L1", "L2", "L3", "L4")
SEED = 0  # the probes' seed, as the levels'
PADDING = {"padded": True, "unpadded": False}
KEY_BIAS = "attention.self.key.bias"  # its gradient is zero by construction (text_parity.grads_gap)
GRADS = {"loss": Compare("rel"), "grads": Compare("rel"), "key bias": Compare("abs")}
MASK_ID = SPECIALS[4]  # [MASK], core/tokenizer.py's order
# Step throughput: synthetic sequences of the preset's length and vocabulary size, no padding; a tagger's label
# count is the data's, which a synthetic run does not read: CoNLL-2003's nine BIO tags stand in.
SYNTHETIC_LABELS = 9
# Logit rows recorded per batch: the preset's first batch and L4's held-out sequences hold ~2,000 real positions;
# all of them (x 2,000 MLM logits, both backends, both dtypes) would make ~100 MiB of golden files; 32 rows hold
# 64,000 logits each, and 0.5 MiB a case and backend in float32.
LOGIT_ROWS = 32
LARGE_BATCH = 256  # sequences: besides the preset's own batch size, what a GPU does with a fuller batch


# -- the backend model from a case's arrays -----------------------------------------------------------------------
def text_model(
    backend: str, device: str, model: TransformerSpec, head: str, inputs: Arrays, optim: OptimSpec, dtype: str
) -> Any:
    """The backend's MaskedLM / TokenTagger from the case's weights (vocabulary and label count from their shapes)."""
    w = weights_of(inputs)
    vocab = int(w[ref.WORD_EMBEDDINGS].shape[0])
    labels = int(w["classifier.weight"].shape[0]) if head == "tag" else 0
    return build_model(registry.get_backend(backend, device), model, head, vocab, labels, w, optim, dtype, device)


def real_logits(m: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eval-mode logits at real positions (padded positions' outputs are never used: not compared), at most
    LOGIT_ROWS of them evenly spread over the batch: an MLM's rows are vocabulary-wide (2,000 numbers each)."""
    rows = m.logits(ids, mask)[mask.astype(bool)]
    keep = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), LOGIT_ROWS)).round().astype(np.int64))
    return rows[keep]


def grads(m: Any, ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, where: str) -> Arrays:
    """Train-mode loss and gradients: the key bias's gradients over the model's largest gradient (that backend's
    own; to first order the same gap as text_parity.grads_gap's, compared absolutely), the others as they are."""
    loss, g = m.loss_and_grads(ids, mask, labels)
    scale = max(float(np.abs(v).max()) for v in g.values())
    key = {k: np.asarray(v, np.float64) / scale for k, v in g.items() if k.endswith(KEY_BIAS)}
    rest = {k: v for k, v in g.items() if not k.endswith(KEY_BIAS)}
    return {
        f"loss/{where}": np.asarray(loss),
        **prefixed(f"grads/{where}", rest),
        **prefixed(f"key bias/{where}", key),
    }


# -- L0 -------------------------------------------------------------------------------------------------------------
def loss_case(dtype: str) -> GoldenCase:
    """The masked cross-entropy with ignored positions (relative) and with every position ignored (0: absolute)."""

    def inputs() -> Arrays:
        logits, labels = loss_probe(SEED, dtype)
        return {"logits": logits, "labels": labels}

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        m = registry.get_backend(backend, device)
        none = np.full_like(i["labels"], -100)
        return {
            "loss/ignored positions": np.asarray(
                m.numpy_loss("masked_cross_entropy", i["logits"], i["labels"], device=device)
            ),
            "all ignored/loss": np.asarray(m.numpy_loss("masked_cross_entropy", i["logits"], none, device=device)),
        }

    compare = {"loss": Compare("rel"), "all ignored": Compare("abs")}
    return GoldenCase("L0", "masked cross-entropy", dtype, inputs, run, compare)


# -- L1, L2: the variants ---------------------------------------------------------------------------------------------
def variant_inputs(model: TransformerSpec, head: str, dtype: str) -> Arrays:
    out = weights_in(ref.init_bert(model, VOCAB, head, LABELS if head == "tag" else 0, SEED, dtype))
    for pad, padded in PADDING.items():
        ids, mask, labels = probe_batch(SEED, padded, head)
        out.update({f"ids.{pad}": ids, f"mask.{pad}": mask, f"labels.{pad}": labels})
    return out


def variant_cases(levels: list[str], dtype: str) -> list[GoldenCase]:
    cases = []
    for variant, (model, head) in VARIANTS.items():
        make = partial(variant_inputs, model, head, dtype)

        def run_l1(backend: str, device: str, i: Arrays, v: tuple = (model, head)) -> Arrays:
            m = text_model(backend, device, *v, i, SGD, dtype)
            return {f"logits/{pad}": real_logits(m, i[f"ids.{pad}"], i[f"mask.{pad}"]) for pad in PADDING}

        def run_l2(backend: str, device: str, i: Arrays, v: tuple = (model, head)) -> Arrays:
            m = text_model(backend, device, *v, i, SGD, dtype)
            out: Arrays = {}
            for pad in PADDING:
                out.update(grads(m, i[f"ids.{pad}"], i[f"mask.{pad}"], i[f"labels.{pad}"], pad))
            return out

        if "L1" in levels:
            cases.append(GoldenCase("L1", f"{variant} logits", dtype, make, run_l1, {"logits": Compare("rel")}))
        if "L2" in levels:
            cases.append(GoldenCase("L2", variant, dtype, make, run_l2, GRADS))
    return cases


# -- L1, L2: the preset's own model on its first batch ---------------------------------------------------------------
def preset_label(spec: Any) -> str:
    return f"preset model ({spec.model.layers}x{spec.model.hidden}), first batch"


def preset_cases(spec: Any, levels: list[str], dtype: str) -> list[GoldenCase]:
    """text_parity.preset_levels: the preset (dropout off) from its seeded init on its first training batch, masked
    as in training (MLM) or with its tags."""
    s = parity_spec(spec, dtype)
    head = head_of(s)

    def inputs() -> Arrays:
        data = prepare(s)
        weights = ref.init_bert(s.model, data.vocab_size, head, len(data.labels or []), s.seed, dtype)
        ids, mask, labels = first_batch(s, data)
        return {**weights_in(weights), "ids": ids, "mask": mask, "labels": labels}

    def run_l1(backend: str, device: str, i: Arrays) -> Arrays:
        m = text_model(backend, device, s.model, head, i, SGD, dtype)
        return {"logits/first batch": real_logits(m, i["ids"], i["mask"])}

    def run_l2(backend: str, device: str, i: Arrays) -> Arrays:
        m = text_model(backend, device, s.model, head, i, SGD, dtype)
        return grads(m, i["ids"], i["mask"], i["labels"], "first batch")

    cases = []
    if "L1" in levels:
        cases.append(GoldenCase("L1", f"{preset_label(s)} logits", dtype, inputs, run_l1, {"logits": Compare("rel")}))
    if "L2" in levels:
        cases.append(GoldenCase("L2", preset_label(s), dtype, inputs, run_l2, GRADS))
    return cases


# -- L4 ---------------------------------------------------------------------------------------------------------------
def l4_spec(base: Any, dtype: str, steps: int) -> Any:
    """text_parity.level4's run: the preset with dropout off in ``dtype``, ``steps`` steps."""
    return replace(parity_spec(base, dtype), max_steps=steps, train=replace(base.train, epochs=10_000))


def recorded_run(base: Any, dtype: str, steps: int) -> Arrays:
    """The inputs of L4's run as the run loop feeds them: a torch CPU run of :func:`l4_spec` through the task's
    driver (mlm.fit, whose masks core draws from the run's ``masks`` stream; tag.fit), its train steps recorded
    (initial weights, every batch's ids, attention mask, labels and learning rate), and the held-out sequences whose
    eval-mode logits L4's end state compares."""
    spec = l4_spec(base, dtype, steps)
    data = prepare(spec)
    backend = registry.get_backend("torch", "cpu")
    backend.seed(spec.seed)  # as the drivers do (dropout is off: nothing draws from it)
    head, n_labels = head_of(spec), len(data.labels or [])
    weights = ref.init_bert(spec.model, data.vocab_size, head, n_labels, spec.seed, dtype)
    inner = build_model(backend, spec.model, head, data.vocab_size, n_labels, weights, spec.optim, dtype, "cpu")
    model = Recorder(inner, ("train_step",))
    if head == "mlm":
        state = new_state(spec.task, spec.seed, ("batches", "masks"))
        mlm.fit(spec, backend, "cpu", model, data, state, None, False, False)
    else:
        tag.fit(spec, backend, "cpu", model, data, new_state(spec.task, spec.seed), None, False)
    # train_step(ids, attention mask, labels, lr[, scale]): the shard scale matters on several workers only
    ids, masks, labels, lrs = zip(*(a[:4] for a in model.args("train_step")))
    # one int32 row per sequence of (ids, attention mask, labels): a sequence seen again with the same masks and
    # labels is stored once
    rows = [np.stack([i, m, y], axis=1).astype(np.int32) for i, m, y in zip(ids, masks, labels, strict=True)]
    held = data.test if len(data.test) else data.val
    return {
        **weights_in(weights),
        **pack_batches("batch", rows),
        "lr": np.array(lrs, np.float64),
        "held.ids": held.input_ids[:L4_EVAL_SEQUENCES],
        "held.mask": held.attention_mask[:L4_EVAL_SEQUENCES],
    }


def recorded_steps(inputs: Arrays) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """The recorded train steps, in order: (ids, attention mask, labels) as int64, and the learning rate."""
    out = []
    for rows, lr in zip(unpack_batches("batch", inputs), inputs["lr"], strict=True):
        ids, mask, labels = (np.ascontiguousarray(rows[:, k], np.int64) for k in range(3))
        out.append((ids, mask, labels, float(lr)))
    return out


def run_case(base: Any, dtype: str, steps: int) -> GoldenCase:
    spec = l4_spec(base, dtype, steps)
    head = head_of(spec)

    def run(backend: str, device: str, i: Arrays) -> Arrays:
        m = text_model(backend, device, spec.model, head, i, spec.optim, dtype)
        losses = [m.train_step(*step) for step in recorded_steps(i)]
        return {"losses": np.array(losses), "end/eval logits": real_logits(m, i["held.ids"], i["held.mask"])}

    return GoldenCase(
        "L4",
        f"{spec.task} preset training run",
        dtype,
        lambda: recorded_run(base, dtype, steps),
        run,
        {"losses": Compare("steps"), "end": END_STATE},
        envelope=True,
    )


def golden_cases(spec: Any, levels: list[str], dtype: str, l4_steps: int | None = None) -> list[GoldenCase]:
    """The transformer tasks' golden cases for ``levels`` (of GOLDEN_LEVELS) in ``dtype``; ``l4_steps``: L4's length
    (default text_parity.L4_STEPS)."""
    cases: list[GoldenCase] = []
    if "L0" in levels:
        cases.append(loss_case(dtype))
    cases += variant_cases(levels, dtype)
    cases += preset_cases(spec, levels, dtype)
    if "L3" in levels:
        cases += optimizer_cases(dtype)
    if "L4" in levels:
        cases.append(run_case(spec, dtype, l4_steps or L4_STEPS))
    return cases


# -- training-step throughput ------------------------------------------------------------------------------------------
def synthetic_tokens(spec: Any, batch: int, vocab: int, n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of full-length [CLS] ... [SEP] sequences of random tokens: MLM-masked as BERT masks (MLM), with
    random tags on the real tokens (tag)."""
    rng = make_rng(spec.seed, "throughput")
    length = spec.data.max_length
    ids = rng.integers(len(SPECIALS), vocab, (batch, length))
    ids[:, 0], ids[:, -1] = SPECIALS[2], SPECIALS[3]
    mask = np.ones_like(ids)
    if head_of(spec) == "mlm":
        ids, labels = mlm_mask(ids, SPECIALS, MASK_ID, vocab, spec.mlm, rng, mask)
        return ids, mask, labels
    labels = rng.integers(0, n_labels, ids.shape)
    labels[:, 0] = labels[:, -1] = -100
    return ids, mask, labels


def step_throughput(spec: Any, backend: str, device: str, seconds: float) -> list[dict[str, Any]]:
    """Train steps of the preset's model (its dropout on, as it trains) on synthetic sequences of its length and
    vocabulary size: tokens/s at the preset's batch size (and on a GPU at LARGE_BATCH sequences)."""
    module = registry.get_backend(backend, device)
    head = head_of(spec)
    vocab, n_labels = spec.tokenizer.vocab_size, SYNTHETIC_LABELS if head == "tag" else 0
    length = spec.data.max_length
    rows = []
    for batch in sorted({spec.train.batch_size, LARGE_BATCH if device != "cpu" else spec.train.batch_size}):
        weights = ref.init_bert(spec.model, vocab, head, n_labels, spec.seed, spec.dtype)
        m = build_model(module, spec.model, head, vocab, n_labels, weights, spec.optim, spec.dtype, device)
        ids, mask, labels = synthetic_tokens(spec, batch, vocab, n_labels)
        r = timed_rate(partial(m.train_step, ids, mask, labels, spec.optim.lr), batch * length, seconds)
        what = "MLM" if head == "mlm" else f"tagging ({n_labels} labels)"
        rows.append(
            {
                "what": f"{'pretraining' if head == 'mlm' else 'train'} step, batch {batch}",
                "value": r["rate"],
                "unit": TOKENS_PER_S,
                "detail": f"{r['steps']} steps, {r['ms_per_step']:.2f} ms each; synthetic {what} sequences of "
                f"{length} tokens, vocabulary {vocab}, {spec.model.layers}x{spec.model.hidden}, {spec.dtype}",
            }
        )
    return rows
