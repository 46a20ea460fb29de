"""The parity levels for the transformer tasks (``mlm`` and ``tag``): each returns measured Checks (bounds:
tasks/parity.py's BOUNDS, the same as the other tasks').

L0 the masked cross-entropy (ignored positions, an all-ignored batch) in each backend vs core's numpy reference;
L1 logits from the same canonical weights, torch vs tf and each backend vs core's numpy forward
(core/transformer.py), over the variants (post-/pre-LN, tied/untied MLM head, the tag head) with and without
padding, and the preset's own model on its own first batch; L2 the loss and its gradient w.r.t. every weight,
same variants and the preset's batch; L3 the optimizer (the classifier's level: the same Optimizer); L4 a real
training run of the preset in both backends (same init, batches and masks; dropout off): per-step losses, and the
end state's eval logits, float32 within the rounding envelope; L5 the preset's outcome over seeds; port a run
trained in one backend evaluated in the other through its run folder, and written as a Hugging Face folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import registry
from dualkit.core import transformer as ref
from dualkit.core.batches import make_rng
from dualkit.core.losses import masked_cross_entropy
from dualkit.core.masking import mlm_mask
from dualkit.core.specs import MlmSpec, OptimSpec, TransformerSpec
from dualkit.tasks import mlm, tag
from dualkit.tasks.base import NATIVE_SUFFIX
from dualkit.tasks.mlm_spec import MlmRunSpec
from dualkit.tasks.parity import (
    BACKENDS,
    Check,
    check,
    end_state_check,
    l4_envelope_check,
    level3,
    perturb_ulp,
    rel_diff,
)
from dualkit.tasks.transformer import TextData, build_model

# L5: the gap between the two backends' mean outcome over seeds (points of MLM accuracy / of F1)
L5_MAX_GAP_POINTS_MLM = 1.0
L5_MAX_GAP_POINTS_TAG = 3.0
L4_STEPS = 100  # the preset's L4 length by default (`dualkit parity --l4-steps` asks for more)
L4_EVAL_SEQUENCES = 64  # held-out sequences whose eval-mode logits L4's end state compares
PORT_STEPS = 20  # the port level's short run: a port does not depend on how well the model learned

# Small models the forward and gradient levels sweep. init_std 0.3 (BERT's is 0.02): attention far from uniform
# and activations far from zero, so that a mix-up of heads, masks or layouts cannot hide in small numbers.
_BASE = TransformerSpec(
    hidden=16,
    layers=2,
    heads=2,
    intermediate=32,
    max_positions=12,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    init_std=0.3,
)
VARIANTS: dict[str, tuple[TransformerSpec, str]] = {
    "post-LN tied MLM": (_BASE, "mlm"),
    "pre-LN tied MLM": (replace(_BASE, norm="pre"), "mlm"),
    "post-LN untied MLM": (replace(_BASE, tie_embeddings=False), "mlm"),
    "post-LN tag": (_BASE, "tag"),
    "pre-LN tag": (replace(_BASE, norm="pre"), "tag"),
}
VOCAB = 40
LABELS = 5
SPECIALS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], core/tokenizer.py's order
SGD = OptimSpec(name="sgd", lr=0.1)


def probe_batch(seed: int, padded: bool, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, attention_mask, labels) of 6 sequences of 12 tokens: [CLS] ... [SEP], the last ones padded
    when ``padded``; MLM labels from BERT's masking, tag labels on most real positions (-100 elsewhere)."""
    rng = make_rng(seed, "parity-text")
    n, length = 6, _BASE.max_positions
    lengths = rng.integers(4, length + 1, n) if padded else np.full(n, length)
    lengths[0] = length  # one full row always
    ids = np.zeros((n, length), np.int64)
    for i, k in enumerate(lengths):
        ids[i, :k] = np.concatenate([[2], rng.integers(len(SPECIALS), VOCAB, k - 2), [3]])
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    if head == "mlm":
        masked, labels = mlm_mask(ids, SPECIALS, 4, VOCAB, MlmSpec(ratio=0.3), rng, mask)
        return masked, mask, labels
    labels = np.where(mask.astype(bool) & (rng.random(ids.shape) < 0.8), rng.integers(0, LABELS, ids.shape), -100)
    labels[:, 0] = -100
    return ids, mask, labels


def _pair(model: TransformerSpec, head: str, dtype: str, device: str, seed: int) -> list[Any]:
    weights = ref.init_bert(model, VOCAB, head, LABELS if head == "tag" else 0, seed, dtype)
    return [
        build_model(registry.get_backend(b, device), model, head, VOCAB, LABELS, weights, SGD, dtype, device)
        for b in BACKENDS
    ], weights


def reference_logits(weights: dict[str, np.ndarray], model: TransformerSpec, head: str, ids, mask) -> np.ndarray:
    """core's numpy forward in float64: the oracle of L1."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    hidden = ref.bert_encoder(w, model, ids, mask)
    return ref.mlm_logits(w, model, hidden) if head == "mlm" else ref.tag_logits(w, hidden)


def loss_probe(seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """L0's inputs: (4, 9, 7) logits and labels with about 40% of the positions ignored (-100)."""
    rng = make_rng(seed, "parity-text-loss")
    logits = rng.normal(size=(4, 9, 7)).astype(dtype) * 3
    labels = np.where(rng.random((4, 9)) < 0.6, rng.integers(0, 7, (4, 9)), -100).astype(np.int64)
    return logits, labels


def level0(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Each backend's masked cross-entropy vs core's numpy reference: positions ignored (-100), and a batch with
    every position ignored (0 by definition, no NaN)."""
    logits, labels = loss_probe(seed, dtype)
    out = []
    for name in BACKENDS:
        backend = registry.get_backend(name, device)
        for what, y in (("ignored positions", labels), ("all ignored", np.full_like(labels, -100))):
            got = backend.numpy_loss("masked_cross_entropy", logits, y, device=device)
            want = masked_cross_entropy(logits.astype(np.float64), y)
            value = rel_diff(got, want) if want else abs(got - want)
            out.append(check("L0", f"{name} masked cross-entropy, {what}", value, dtype, device))
    return out


def level1(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Eval-mode logits, torch vs tf and each vs core's numpy forward (relative to the reference's largest)."""
    out = []
    for variant, (model, head) in VARIANTS.items():
        pair, weights = _pair(model, head, dtype, device, seed)
        for padded in (True, False):
            ids, mask, _ = probe_batch(seed, padded, head)
            a, b = (m.logits(ids, mask) for m in pair)
            want = reference_logits(weights, model, head, ids, mask)
            pad = "padded" if padded else "unpadded"
            real = mask.astype(bool)  # padded positions' outputs are never used: they are not compared
            out.append(check("L1", f"{variant} {pad}: torch vs tf", rel_diff(b[real], a[real]), dtype, device))
            worst = max(rel_diff(x[real], want[real]) for x in (a, b))
            out.append(check("L1", f"{variant} {pad}: each vs numpy", worst, dtype, device, "worst backend"))
    return out


def grads_gap(ga: dict[str, np.ndarray], gb: dict[str, np.ndarray]) -> tuple[float, str]:
    """The worst relative gradient difference over the tensors (``ga`` the reference). The attention key bias's
    gradient is zero by construction (adding one number to every score of a softmax row changes nothing), so its
    rounding noise is measured on the scale of the model's largest gradient instead of its own."""
    scale = max(float(np.abs(g).max()) for g in ga.values())
    worst = (0.0, "")
    for name, ref_g in ga.items():
        denom = scale if name.endswith("attention.self.key.bias") else max(float(np.abs(ref_g).max()), 1e-30)
        worst = max(worst, (float(np.abs(np.asarray(gb[name], np.float64) - ref_g).max()) / denom, name))
    return worst


def level2(dtype: str = "float32", device: str = "cpu", seed: int = 0) -> list[Check]:
    """Train-mode loss and its gradient w.r.t. every weight, torch vs tf (worst tensor, relative)."""
    out = []
    for variant, (model, head) in VARIANTS.items():
        pair, _ = _pair(model, head, dtype, device, seed)
        for padded in (True, False):
            batch = probe_batch(seed, padded, head)
            (la, ga), (lb, gb) = (m.loss_and_grads(*batch) for m in pair)
            worst, tensor = grads_gap(ga, gb)
            pad = "padded" if padded else "unpadded"
            out.append(check("L2", f"{variant} {pad}", max(worst, rel_diff(lb, la)), dtype, device, f"worst: {tensor}"))
    return out


# -- the preset's own model and data ---------------------------------------------------------------------------
def head_of(spec: Any) -> str:
    """The spec's model head: "mlm" for an MLM pretraining spec, "tag" for a tagger's (by spec class: nothing
    dispatches on a task's name, tests/test_layout.py)."""
    return "mlm" if isinstance(spec, MlmRunSpec) else "tag"


def prepare(spec: Any) -> TextData:
    return mlm.prepare_data(spec) if head_of(spec) == "mlm" else tag.prepare_data(spec)


def parity_spec(spec: Any, dtype: str) -> Any:
    """The preset with dropout off (the one framework-drawn randomness) in ``dtype``."""
    return replace(spec, dtype=dtype, model=replace(spec.model, hidden_dropout=0.0, attention_dropout=0.0))


def first_batch(spec: Any, data: TextData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The preset's first training sequences as one batch, masked as in training (MLM) or with their tags."""
    sl = slice(0, spec.train.batch_size)
    ids, mask = data.train.input_ids[sl], data.train.attention_mask[sl]
    if head_of(spec) == "mlm":
        masked, labels = mlm.masks_for(ids, data, spec.mlm, make_rng(spec.seed, "parity-mlm"))
        return masked, mask, labels
    return ids, mask, data.train.labels[sl]


def preset_pair(spec: Any, data: TextData, dtype: str, device: str) -> tuple[list[Any], dict[str, np.ndarray]]:
    head, n_labels = head_of(spec), len(data.labels or [])
    weights = ref.init_bert(spec.model, data.vocab_size, head, n_labels, spec.seed, dtype)
    models = [
        build_model(
            registry.get_backend(b, device), spec.model, head, data.vocab_size, n_labels, weights, SGD, dtype, device
        )
        for b in BACKENDS
    ]
    return models, weights


def preset_levels(spec: Any, data: TextData, dtype: str, device: str) -> list[Check]:
    """L1 and L2 on the preset's model (dropout off) and its first training batch."""
    s = parity_spec(spec, dtype)
    (a, b), weights = preset_pair(s, data, dtype, device)
    ids, mask, labels = first_batch(s, data)
    real = mask.astype(bool)
    la, lb = a.logits(ids, mask), b.logits(ids, mask)
    name = f"preset model ({s.model.layers}x{s.model.hidden}, vocab {data.vocab_size}), first batch"
    out = [check("L1", f"{name}: torch vs tf", rel_diff(lb[real], la[real]), dtype, device)]
    (loss_a, ga), (loss_b, gb) = a.loss_and_grads(ids, mask, labels), b.loss_and_grads(ids, mask, labels)
    worst, tensor = grads_gap(ga, gb)
    out.append(check("L2", name, max(worst, rel_diff(loss_b, loss_a)), dtype, device, f"worst: {tensor}"))
    return out


# -- L4: a real training run ----------------------------------------------------------------------------------
def run(spec: Any, backend: str, data: TextData, device: str, init_weights: dict | None = None) -> Any:
    """One training run without a run folder (MLM: no evaluation; tag: its test evaluation is cheap)."""
    if head_of(spec) == "mlm":
        return mlm.pretrain(
            spec, backend, device=device, progress=False, evaluate=False, data=data, init_weights=init_weights
        )
    return tag.train(spec, backend, device=device, progress=False, data=data, init_weights=init_weights)


def level4(base: Any, data: TextData, dtype: str, device: str, steps: int = L4_STEPS) -> list[Check]:
    """The preset (dropout off) trained ``steps`` steps in both backends from the same init, batches and masks:
    per-step loss gap (float64: the fixed bound; float32: within the rounding envelope) and the end state's
    eval-mode logits on held-out sequences."""
    spec = replace(parity_spec(base, dtype), max_steps=steps, train=replace(base.train, epochs=10_000))
    runs = {b: run(spec, b, data, device) for b in BACKENDS}
    a, b = np.array(runs["tf"].step_losses), np.array(runs["torch"].step_losses)
    gaps = np.abs(a - b) / np.abs(b)
    name = f"{spec.task} preset, {len(b)} steps"
    detail = f"worst at step {int(gaps.argmax()) + 1}, final loss torch {b[-1]:.4f} tf {a[-1]:.4f}"
    out, own = [], {}
    if dtype == "float64":
        out.append(check("L4", name, float(gaps.max()), dtype, device, detail))
    else:
        head, n_labels = head_of(spec), len(data.labels or [])
        w0 = perturb_ulp(ref.init_bert(spec.model, data.vocab_size, head, n_labels, spec.seed, dtype), spec.seed)
        own = {bk: run(spec, bk, data, device, init_weights=w0) for bk in BACKENDS}
        out.append(
            l4_envelope_check(
                f"{name}: per-step loss within the rounding envelope", a, b, own, runs, "text", dtype, device
            )
        )
    held = data.test if len(data.test) else data.val
    ids, mask = held.input_ids[:L4_EVAL_SEQUENCES], held.attention_mask[:L4_EVAL_SEQUENCES]

    def outputs(backend: str, weights: dict[str, np.ndarray]) -> np.ndarray:
        model = build_model(
            registry.get_backend(backend, device),
            spec.model,
            head_of(spec),
            data.vocab_size,
            len(data.labels or []),
            weights,
            SGD,
            dtype,
            device,
        )
        return model.logits(ids, mask)[mask.astype(bool)]

    out.append(
        end_state_check(
            name,
            {k: r.weights for k, r in runs.items()},
            {k: r.weights for k, r in own.items()},
            outputs,
            dtype,
            device,
        )
    )
    return out


# -- L5 and port ----------------------------------------------------------------------------------------------
def outcome(spec: Any, backend: str, device: str) -> float:
    """The preset's outcome in points-ready form: held-out MLM accuracy (mlm), test F1 (tag)."""
    if head_of(spec) == "mlm":
        res = mlm.pretrain(
            replace(spec, downstream=replace(spec.downstream, preset="")), backend, device=device, progress=False
        )
        return res.evaluation["accuracy"]
    return tag.train(spec, backend, device=device, progress=False).test["f1"]


def l5_checks(runs: list[dict[str, Any]], what: str, max_gap_points: float) -> list[Check]:
    """Each backend's mean outcome over its runs (reported, no bound) and the gap between the means (bounded)."""
    values = {b: [r["value"] for r in runs if r["backend"] == b] for b in BACKENDS}
    out = [
        Check(
            "L5",
            f"{b} mean {what}",
            float(np.mean(v)),
            float("-inf"),
            True,
            "per seed: " + ", ".join(f"{x:.4f}" for x in v),
        )
        for b, v in values.items()
    ]
    gap = abs(np.mean(values["torch"]) - np.mean(values["tf"])) * 100
    out.append(Check("L5", f"mean {what} gap (points)", float(gap), max_gap_points, bool(gap <= max_gap_points)))
    return out


def level5(spec: Any, device: str, seeds: tuple[int, ...]) -> list[Check]:
    runs = [{"backend": b, "value": outcome(replace(spec, seed=s), b, device)} for b in BACKENDS for s in seeds]
    if head_of(spec) == "mlm":
        return l5_checks(runs, "MLM accuracy", L5_MAX_GAP_POINTS_MLM)
    return l5_checks(runs, "test F1", L5_MAX_GAP_POINTS_TAG)


def port_checks(base: Any, data: TextData, device: str) -> list[Check]:
    """A short run in each backend written to a run folder, ported to the other backend and to a Hugging Face
    folder (loaded back by ``transformers`` where it is installed): logits within the port bound and the same
    predictions at every real position."""
    spec = replace(base, max_steps=PORT_STEPS, train=replace(base.train, epochs=10_000))
    if head_of(spec) == "mlm":
        spec = replace(spec, downstream=replace(spec.downstream, preset=""))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in (("tf", "torch"), ("torch", "tf"), ("torch", "hf")):
            run_dir = Path(tmp) / f"run-{src}-{dst}"
            artifact = Path(tmp) / (f"hf-{src}" if dst == "hf" else f"model-{src}{NATIVE_SUFFIX[dst]}")
            if head_of(spec) == "mlm":
                mlm.pretrain(spec, src, run_dir=run_dir, device=device, progress=False, evaluate=False, data=data)
                rep = mlm.port(run_dir, dst, artifact, device)
            else:
                tag.train(spec, src, run_dir=run_dir, device=device, progress=False, data=data)
                rep = tag.port(run_dir, dst, artifact, device)
            row = rep.row
            c = check(
                "port",
                f"{spec.task} {src} -> {dst}",
                row["relative logit diff"],
                "float32" if dst == "hf" else spec.dtype,
                device,
                f"{row['test sequences']} test sequences, identical predictions: {row['identical predictions']}, "
                f"checked by {row['checked by']}",
            )
            c.passed = bool(c.passed and rep.ok)
            out.append(c)
    return out


def run_levels(
    base: Any, levels: list[str], dtypes: list[str], device: str = "cpu", seeds: int = 3, l4_steps: int | None = None
) -> list[Check]:
    """The requested levels (L0..L5, port) for ``dualkit parity <bert preset>``; L0-L4 in each dtype."""
    checks: list[Check] = []
    data = prepare(base) if {"L1", "L2", "L4", "port"} & set(levels) else None
    for dtype in dtypes:
        if "L0" in levels:
            checks += level0(dtype, device)
        if "L1" in levels:
            checks += level1(dtype, device)
        if "L2" in levels:
            checks += level2(dtype, device)
        if "L1" in levels or "L2" in levels:
            checks += [c for c in preset_levels(base, data, dtype, device) if c.level in levels]
        if "L3" in levels:
            checks += level3(dtype, device)
        if "L4" in levels:
            checks += level4(base, data, dtype, device, l4_steps or L4_STEPS)
    if "L5" in levels and seeds > 0:
        checks += level5(base, device, tuple(range(seeds)))
    if "port" in levels:
        checks += port_checks(base, data, device)
    return checks


def bench_levels(spec: Any, device: str) -> list[Check]:
    """The benchmark's parity: every level below L5 and the port, both dtypes; for an MLM preset, also its
    downstream tag preset's own model levels (preset L1/L2, L4, port: the tag head on its data)."""
    levels, dtypes = ["L0", "L1", "L2", "L3", "L4", "port"], ["float32", "float64"]
    checks = run_levels(spec, levels, dtypes, device)
    if head_of(spec) == "mlm" and spec.downstream.preset:
        from dualkit.tasks import presets

        tag_spec = presets.load(spec.downstream.preset)
        data = prepare(tag_spec)
        for dtype in dtypes:
            checks += preset_levels(tag_spec, data, dtype, device) + level4(tag_spec, data, dtype, device)
        checks += port_checks(tag_spec, data, device)
    return checks
