"""Hugging Face BERT folders in and out: config.json + model.safetensors (+ tokenizer files).

dualkit's transformer names its weights exactly as Hugging Face's PyTorch BERT ``state_dict`` does
(core/transformer.py), so reading and writing is a name-preserving copy; what this module adds is the
config.json, the few keys Hugging Face stores differently (the tied MLM decoder, legacy names, buffers,
the pooler) and the refusals for what dualkit's BERT cannot hold. Framework-free: numpy and safetensors
only, and never a pickle.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from dualkit.core import checkpoint
from dualkit.core.errors import CheckpointError, RunError, SpecError
from dualkit.core.runs import atomic_write_bytes, write_json
from dualkit.core.specs import TransformerSpec
from dualkit.core.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG
from dualkit.core.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE, VOCAB_FILE
from dualkit.core.transformer import DECODER, WORD_EMBEDDINGS, bert_shapes, check_model, encoder_shapes, head_shapes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint's name -> shard map
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (VOCAB_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_FILE)
# what write_hf_folder writes; with overwrite=True it replaces these and leaves every other file alone
EXPORT_FILES = (CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES)
# files Hugging Face may hold instead of safetensors, which dualkit will not open (pickles / other frameworks)
_FOREIGN_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
ARCHITECTURES = {"mlm": "BertForMaskedLM", "tag": "BertForTokenClassification"}
# dualkit's WordPiece specials under the names BertTokenizer gives them
_SPECIAL_NAMES = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIAL_TOKENS))
DECODER_BIAS = "cls.predictions.decoder.bias"  # Hugging Face's copy of cls.predictions.bias (tied or not)
MLM_BIAS = "cls.predictions.bias"

# TransformerSpec field -> (config.json key, BertConfig's default): one table for writing and reading.
_FIELDS = (
    ("hidden", "hidden_size", 768),
    ("layers", "num_hidden_layers", 12),
    ("heads", "num_attention_heads", 12),
    ("intermediate", "intermediate_size", 3072),
    ("max_positions", "max_position_embeddings", 512),
    ("type_vocab_size", "type_vocab_size", 2),
    ("layer_norm_eps", "layer_norm_eps", 1e-12),
    ("hidden_dropout", "hidden_dropout_prob", 0.1),
    ("attention_dropout", "attention_probs_dropout_prob", 0.1),
    ("init_std", "initializer_range", 0.02),
    ("tie_embeddings", "tie_word_embeddings", True),
)
_ENCODER_FIELDS = 7  # the first ones decide the encoder's shapes and arithmetic (check_fits compares them)
# Hugging Face-only keys: buffers, the pooler and the next-sentence head dualkit's BERT has no use for
_DROPPED_PREFIXES = (
    ("bert.embeddings.position_ids", "a buffer (0..max_positions-1), not a weight"),
    ("bert.embeddings.token_type_ids", "a buffer (zeros), not a weight"),
    ("bert.pooler.", "the [CLS] pooler, which neither dualkit head uses"),
    ("cls.seq_relationship.", "the next-sentence-prediction head, which dualkit does not train"),
)


@dataclass
class HFModel:
    """A Hugging Face BERT folder read into dualkit's canonical names (float32)."""

    path: Path
    weights: dict[str, np.ndarray]  # canonical names: bert.* plus each present head's tensors
    model: TransformerSpec  # from config.json (norm "post": Hugging Face's BERT has no pre-LN)
    vocab_size: int
    labels: list[str] | None  # the tagger's labels in id order (from id2label); None without a tag head
    head_present: tuple[str, ...]  # "mlm" and/or "tag": the heads whose tensors the file holds
    tokenizer_path: Path | None  # the folder when it holds vocab.txt or tokenizer.json, else None
    dropped: dict[str, str] = field(default_factory=dict)  # key (canonical spelling) -> why it was left out
    config: dict[str, Any] = field(default_factory=dict)  # config.json as read


# -- writing -----------------------------------------------------------------------------------------------------


def hf_config(model: TransformerSpec, vocab_size: int, head: str, labels: list[str] | None = None) -> dict[str, Any]:
    """The config.json ``transformers.BertConfig`` reads for this model and head ("mlm" or "tag")."""
    check_model(model)
    if model.norm == "pre":
        raise SpecError(
            "model.norm='pre' has no Hugging Face BERT equivalent (BERT is post-LN, with no final LayerNorm); "
            "export a model trained with model.norm=post"
        )
    if head not in ARCHITECTURES:
        raise ValueError(f"head={head!r}: a Hugging Face folder holds one of the heads {', '.join(ARCHITECTURES)}")
    config: dict[str, Any] = {"architectures": [ARCHITECTURES[head]], "model_type": "bert", "vocab_size": vocab_size}
    for name, key, _ in _FIELDS:
        config[key] = getattr(model, name)
    config.update(
        hidden_act="gelu",  # exact erf GELU, as core/transformer.py
        position_embedding_type="absolute",
        pad_token_id=0,  # dualkit's WordPiece puts [PAD] first
        is_decoder=False,
        classifier_dropout=None,  # the tagger's dropout is hidden_dropout_prob
        dtype="float32",  # transformers >= 5 reads "dtype", earlier versions "torch_dtype"
        torch_dtype="float32",
    )
    if head == "tag":
        if not labels:
            raise ValueError("head 'tag' needs its labels (id order)")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    return config


def write_hf_folder(
    out: Path,
    weights: dict[str, np.ndarray],
    model: TransformerSpec,
    vocab_size: int,
    head: str,
    labels: list[str] | None = None,
    tokenizer_folder_writer: Callable[[Path], None] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a folder ``BertForMaskedLM`` / ``BertForTokenClassification.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` load offline, with no missing or unexpected weights.

    ``weights`` are canonical (core/transformer.py bert_shapes for ``head``); ``tokenizer_folder_writer(folder)``
    writes vocab.txt and/or tokenizer.json there (``WordPiece(...).save``), beside which this completes
    tokenizer_config.json and adds special_tokens_map.json. A new or empty ``out`` appears whole or not at all
    (built in a temp sibling, then renamed). A non-empty ``out`` is refused unless ``overwrite``, which then
    replaces the files written (each atomically), removes an older export's EXPORT_FILES not written this time,
    and keeps everything else the user has there."""
    out = Path(out)
    config = hf_config(model, vocab_size, head, labels)
    expected = bert_shapes(model, vocab_size, head, len(labels or ()))
    checkpoint.check_fits(weights, expected, what=f"the {head} model being exported")
    existing = _existing_entries(out)
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise RunError(f"{out} is not empty ({shown}); choose another output folder or pass --overwrite to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 would become the user's folder's mode on the rename
    try:
        atomic_write_bytes(tmp / WEIGHTS_FILE, _safetensors_bytes(weights, expected, model, head))
        write_json(tmp / CONFIG_FILE, config)
        if tokenizer_folder_writer is not None:
            tokenizer_folder_writer(tmp)
            _complete_tokenizer_config(tmp, model, vocab_size)
        if not existing:
            os.replace(tmp, out)  # rename(2) replaces a missing or empty folder in one step
            return out
        written = sorted(p.name for p in tmp.iterdir())
        for name in written:  # overwrite: one file at a time; the user's other files stay
            os.replace(tmp / name, out / name)
        for name in set(EXPORT_FILES) - set(written):
            if (out / name).is_file():
                (out / name).unlink()  # e.g. an old export's tokenizer that no longer belongs to these weights
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _existing_entries(out: Path) -> list[str]:
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another output folder")
    return sorted(p.name for p in out.iterdir()) if out.is_dir() else []


def _safetensors_bytes(
    weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], model: TransformerSpec, head: str
) -> bytes:
    """float32 tensors under Hugging Face's names, as ``save_pretrained`` writes them (metadata format=pt).

    A tied MLM model stores neither decoder tensor: ``from_pretrained`` ties decoder.weight to the word
    embeddings and decoder.bias to cls.predictions.bias. An untied one stores both; transformers >= 5 then
    computes with decoder.bias (cls.predictions.bias is not tied to it and goes unused), so both get the bias."""
    tensors = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in expected}
    if head == "mlm" and not model.tie_embeddings:
        tensors[DECODER_BIAS] = tensors[MLM_BIAS].copy()
    return st_save(tensors, metadata={"format": "pt"})


def _complete_tokenizer_config(folder: Path, model: TransformerSpec, vocab_size: int) -> None:
    """Beside the vocabulary the writer put in ``folder`` (WordPiece.save: vocab.txt, tokenizer.json and a
    tokenizer_config.json), make tokenizer_config.json complete for AutoTokenizer (its class, do_lower_case,
    the specials, model_max_length = max_positions) and add special_tokens_map.json (read by older transformers)."""
    vocab_txt, tok_json = folder / VOCAB_FILE, folder / TOKENIZER_FILE
    if not vocab_txt.is_file() and not tok_json.is_file():
        raise ValueError(f"tokenizer_folder_writer wrote neither {VOCAB_FILE} nor {TOKENIZER_FILE}")
    tok = json.loads(tok_json.read_text(encoding="utf-8")) if tok_json.is_file() else {}
    if vocab_txt.is_file():
        size = len(vocab_txt.read_text(encoding="utf-8").splitlines())
    else:
        size = len((tok.get("model") or {}).get("vocab") or {})
    if size != vocab_size:
        raise ValueError(f"the tokenizer written has {size} tokens but the model's vocab_size is {vocab_size}")
    written = folder / TOKENIZER_CONFIG
    config = json.loads(written.read_text(encoding="utf-8")) if written.is_file() else {}
    lowercase = config.get("do_lower_case", (tok.get("normalizer") or {}).get("lowercase", True))  # BERT's default
    config = {"tokenizer_class": "BertTokenizer", **_SPECIAL_NAMES, **config, "do_lower_case": bool(lowercase)}
    config["model_max_length"] = model.max_positions
    write_json(written, config)
    write_json(folder / SPECIAL_TOKENS_FILE, _SPECIAL_NAMES)


# -- reading -----------------------------------------------------------------------------------------------------


def read_hf_folder(path: Path) -> HFModel:
    """Read a local Hugging Face BERT folder (config.json + model.safetensors, or a sharded
    model.safetensors.index.json) into canonical float32 weights and a TransformerSpec.

    Accepts ``BertForMaskedLM``, ``BertForTokenClassification``, ``BertForPreTraining`` and bare ``BertModel``
    files (whose keys lack the ``bert.`` prefix). Hugging Face-only keys (position_ids, the pooler, the NSP head)
    and a tied decoder are left out and listed in ``dropped``. Refuses pickles and other frameworks' files."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(
            f"{path} is not a Hugging Face model folder (no {CONFIG_FILE}); give the folder that save_pretrained wrote"
        )
    config = _read_config(config_path)
    raw, where = _read_weights(path)
    weights, dropped = _canonical_names(raw)
    vocab_size = config.get("vocab_size", 30522)  # BertConfig's default
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise CheckpointError(
            f"{config_path}: vocab_size is {vocab_size!r}, not a positive whole number; the config is damaged"
        )
    tie = bool(config.get("tie_word_embeddings", True))

    if DECODER_BIAS in weights:  # the bias Hugging Face computes with (see _safetensors_bytes)
        decoder_bias = weights.pop(DECODER_BIAS)
        if MLM_BIAS in weights and not np.array_equal(weights[MLM_BIAS], decoder_bias):
            dropped[MLM_BIAS] = f"differs from {DECODER_BIAS}, which Hugging Face uses for the logits"
        weights[MLM_BIAS] = decoder_bias
    if DECODER in weights:
        same = weights[DECODER].shape == weights.get(WORD_EMBEDDINGS, np.empty(0)).shape and np.array_equal(
            weights[DECODER], weights[WORD_EMBEDDINGS]
        )
        if tie and same:
            del weights[DECODER]
            dropped[DECODER] = f"tied: equal to {WORD_EMBEDDINGS}"
        else:
            tie = False  # as from_pretrained: a decoder that differs from the embeddings is not tied
    elif not tie and "cls.predictions.transform.dense.weight" in weights:
        raise CheckpointError(
            f"{config_path} says tie_word_embeddings false but {where} has no {DECODER}; the MLM head is "
            "incomplete (set tie_word_embeddings true if the decoder is the word embeddings)"
        )

    model = _spec_from_config(config, config_path, tie)
    heads = tuple(
        h
        for h, key in (("mlm", "cls.predictions.transform.dense.weight"), ("tag", "classifier.weight"))
        if key in weights
    )
    labels = _labels(config, config_path, weights) if "tag" in heads else None
    expected = encoder_shapes(model, vocab_size)
    for h in heads:
        expected.update(head_shapes(model, vocab_size, h, len(labels or ())))
    for name in list(weights):
        if name not in expected:
            dropped[name] = "not part of a BERT encoder or a head dualkit has"
            del weights[name]
    _check_shapes(weights, expected, where, config_path)
    tokenizer = path if any((path / n).is_file() for n in (VOCAB_FILE, TOKENIZER_FILE)) else None
    return HFModel(path, weights, model, vocab_size, labels, heads, tokenizer, dropped, config)


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not JSON ({exc}); the folder is damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object; the folder is damaged")
    refusals = (  # (field, the only value dualkit's BERT computes, why)
        ("model_type", "bert", "dualkit reads Hugging Face BERT folders only"),
        ("hidden_act", "gelu", "dualkit's BERT uses the exact erf GELU"),
        ("position_embedding_type", "absolute", "dualkit's BERT has learned absolute position embeddings only"),
    )
    for key, want, why in refusals:
        got = config.get(key, "absolute" if key == "position_embedding_type" else None)
        if got != want:
            raise CheckpointError(
                f"{config_path}: {key} is {got!r}, not {want!r}; {why}: choose a checkpoint with {key} {want!r}"
            )
    if config.get("is_decoder") or config.get("add_cross_attention"):
        raise CheckpointError(
            f"{config_path}: is_decoder/add_cross_attention is set (causal or cross attention); dualkit's BERT is an "
            "encoder: choose an encoder checkpoint"
        )
    return config


def _read_weights(path: Path) -> tuple[dict[str, np.ndarray], Path]:
    """model.safetensors (preferred, as from_pretrained does), else the shards a model.safetensors.index.json
    names; with the file read, for messages."""
    if (path / WEIGHTS_FILE).is_file():
        return _load_safetensors(path / WEIGHTS_FILE), path / WEIGHTS_FILE
    if (path / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise CheckpointError(f"{path / INDEX_FILE} has no readable weight_map; the folder is damaged") from None
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard:  # a shard lives beside its index
                raise CheckpointError(f"{path / INDEX_FILE} names shard {shard!r} outside its folder; refusing it")
            out.update(_load_safetensors(path / shard))
        return out, path / INDEX_FILE
    foreign = [n for n in _FOREIGN_WEIGHTS if (path / n).is_file()]
    if foreign:
        raise CheckpointError(
            f"{path} holds {foreign[0]} but no {WEIGHTS_FILE}; dualkit never unpickles or reads other frameworks' "
            "model files: convert it once with transformers (from_pretrained, then "
            "save_pretrained(folder, safe_serialization=True))"
        )
    raise CheckpointError(f"{path} has a {CONFIG_FILE} but no {WEIGHTS_FILE}; copy the model's weights beside it")


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing; the sharded checkpoint is incomplete")
    raw = file.read_bytes()
    try:
        return st_load(raw)
    except KeyError:  # safetensors.numpy has no bfloat16 (numpy lacks the type): decode the file here
        return _load_widening_bf16(raw, file)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{file} is not a safetensors file ({_first_line(exc)}); the folder is damaged") from None


_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def _load_widening_bf16(raw: bytes, file: Path) -> dict[str, np.ndarray]:
    """A safetensors file holding bfloat16 tensors, read with those widened exactly to float32 (a bfloat16 is
    the top half of a float32)."""
    try:
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            data = raw[8 + n + start : 8 + n + end]
            if info["dtype"] == "BF16":
                array = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
            else:
                array = np.frombuffer(data, _NUMPY_DTYPES[info["dtype"]])
            out[name] = array.reshape(info["shape"])
    except KeyError as exc:
        raise CheckpointError(
            f"{file} holds tensors of dtype {exc.args[0]}, which dualkit does not read; save the model in float32 "
            "with transformers (model.float().save_pretrained(folder))"
        ) from None
    except (ValueError, TypeError, UnicodeDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{file} is not a safetensors file ({_first_line(exc)}); the folder is damaged") from None
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _canonical_names(raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Hugging Face keys -> canonical: the ``bert.`` prefix a bare BertModel lacks, LayerNorm gamma/beta (old
    TF-converted checkpoints) as weight/bias; buffers, the pooler and the NSP head dropped."""
    bare = not any(k.startswith("bert.") for k in raw)
    weights: dict[str, np.ndarray] = {}
    dropped: dict[str, str] = {}
    for key, value in raw.items():
        name = key
        if bare and not name.startswith(("cls.", "classifier.")):
            name = "bert." + name
        if ".LayerNorm." in name and name.endswith((".gamma", ".beta")):
            name = name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")
        why = next((why for prefix, why in _DROPPED_PREFIXES if name.startswith(prefix)), None)
        if why:
            dropped[name] = why
        else:
            weights[name] = np.asarray(value, dtype=np.float32)
    return weights, dropped


def _spec_from_config(config: dict[str, Any], config_path: Path, tie: bool) -> TransformerSpec:
    values: dict[str, Any] = {}
    for name, key, default in _FIELDS:
        value = config.get(key, default)
        kind = type(default)
        if value is None or isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float)):
            raise CheckpointError(f"{config_path}: {key} is {value!r}, not a {kind.__name__}; the config is damaged")
        if kind is int and value != int(value):
            raise CheckpointError(f"{config_path}: {key} is {value!r}, not a whole number; the config is damaged")
        values[name] = kind(value)
    values["tie_embeddings"] = tie
    model = TransformerSpec(norm="post", **values)
    try:
        check_model(model)
    except SpecError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    return model


def _labels(config: dict[str, Any], config_path: Path, weights: dict[str, np.ndarray]) -> list[str]:
    """The tagger's labels in id order; Hugging Face's LABEL_i when config.json has no id2label."""
    k = weights["classifier.weight"].shape[0]
    id2label = config.get("id2label")
    if not id2label:
        return [f"LABEL_{i}" for i in range(k)]
    try:
        by_id = {int(i): str(label) for i, label in dict(id2label).items()}
    except (ValueError, TypeError):
        raise CheckpointError(
            f"{config_path}: id2label is not a map from ids to labels; the config is damaged"
        ) from None
    if sorted(by_id) != list(range(k)):
        raise CheckpointError(
            f"{config_path}: id2label has ids {sorted(by_id)} but the classifier has {k} outputs; the folder is damaged"
        )
    return [by_id[i] for i in range(k)]


def _check_shapes(
    weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], where: Path, config_path: Path
) -> None:
    """One line naming the first missing or mis-shaped tensor (and how many more)."""
    problems = [f"{n} is missing" for n in expected if n not in weights]
    problems += [
        f"{n} has shape {tuple(weights[n].shape)}, {CONFIG_FILE} implies {tuple(shape)}"
        for n, shape in expected.items()
        if n in weights and tuple(weights[n].shape) != tuple(shape)
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{where}: {problems[0]}{more}; the weights do not match {config_path}: the folder is damaged or mixed"
        )


# -- fitting a checkpoint to a spec --------------------------------------------------------------------------------


def check_fits(hf: HFModel, model: TransformerSpec, vocab_size: int | None = None) -> None:
    """Refuse, in one line naming the first differing field, a checkpoint whose encoder ``model`` cannot take
    (shapes, heads, LayerNorm placement and eps); ``vocab_size``, when given, is the tokenizer's."""
    config_path = hf.path / CONFIG_FILE
    for name, key, _ in _FIELDS[:_ENCODER_FIELDS]:
        theirs, ours = getattr(hf.model, name), getattr(model, name)
        equal = math.isclose(theirs, ours, rel_tol=1e-9, abs_tol=0.0) if isinstance(ours, float) else theirs == ours
        if not equal:
            raise CheckpointError(
                f"{key} {theirs} in {config_path}, but the spec's model.{name} is {ours}; "
                f"set --set model.{name}={theirs} or choose a matching checkpoint"
            )
    if model.norm != hf.model.norm:
        raise CheckpointError(
            f"{config_path} is a post-LN BERT, but the spec's model.norm is {model.norm!r}; "
            "set --set model.norm=post or choose a matching checkpoint"
        )
    if vocab_size is not None and vocab_size != hf.vocab_size:
        raise CheckpointError(
            f"vocab_size {hf.vocab_size} in {config_path}, but the tokenizer has {vocab_size} tokens; "
            f"use the checkpoint's own tokenizer (--set tokenizer.vocab={hf.path})"
        )
