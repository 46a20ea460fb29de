"""Text data for the transformer tasks: reading corpora and tags, tag schemes, splits, token ids with aligned
labels, padding, and seeded batches. numpy only; the tokenizer is any object with WordPiece's interface
(core/tokenizer.py: ``pad_id cls_id sep_id unk_id``, ``encode(text)``, ``encode_word(word)``).

Conventions every consumer relies on:

- A tagged sentence is ``(words, tags)``, two equal-length lists of strings.
- ``TokenData`` rows are ``[CLS] ... [SEP]`` then ``pad_id`` up to ``max_length``; ``attention_mask`` is 1 on
  real tokens (specials included) and 0 on padding, so it always equals ``input_ids != pad_id`` (a ``[PAD]``
  written in the text, which WordPiece keeps whole, is encoded as ``[UNK]``).
- ``labels`` is -100 wherever nothing is scored: for tagging, only the FIRST subword of each word carries its
  label id (later subwords, [CLS], [SEP], padding: -100); for MLM, -100 everywhere (masks are drawn per step).
- A batch is ``(x, y)`` = ``(input_ids, labels)``, both (B, L) int64; the attention mask is ``x != pad_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualkit.core import corpora
from dualkit.core.batches import make_rng, num_batches
from dualkit.core.datasets import SPLIT_SEED
from dualkit.core.errors import DataError, SpecError
from dualkit.core.specs import TextDataSpec

IGNORE = -100  # the label of a position no loss or metric counts (PyTorch's and Hugging Face's ignore_index)
SCHEMES = ("auto", "bio", "iob1", "iobes", "bilou", "none")
_PREFIXES = {"bio": "BI", "iob1": "BI", "iobes": "BIES", "bilou": "BILU"}
CONLLU_COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
UPOS_COLUMN = 3

Sentence = tuple[list[str], list[str]]


# --------------------------------------------------------------------------- reading files


def _read_utf8(path: Path) -> str:
    """A file's text (a UTF-8 BOM dropped, ``\\n`` line ends); refuses other encodings naming the byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}); check the path and its permissions") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 (byte offset {e.start}: 0x{data[e.start]:02x}); convert it to UTF-8, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def paragraphs(text: str) -> list[str]:
    """``text`` split into documents at blank lines (whitespace-only lines count as blank), each stripped."""
    return [d.strip() for d in re.split(r"\n[ \t\f\v]*\n", text) if d.strip()]


def read_text_folder(root: Path) -> list[str]:
    """The documents of every ``*.txt`` file under ``root`` (recursive, sorted by relative path, UTF-8): each
    file is split into documents at blank lines (whitespace-only lines count as blank)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; set data.root to a folder of UTF-8 .txt files")
    files = sorted((p for p in root.rglob("*.txt") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"{root} holds no .txt file; put the text in UTF-8 .txt files (blank lines part documents)")
    docs = []
    for path in files:
        docs.extend(paragraphs(_read_utf8(path)))
    if not docs:
        raise DataError(f"the .txt files under {root} hold only whitespace; add text to them")
    return docs


@dataclass
class _Tagged:
    """A sentence as read, with each word's ``file:line`` for error messages."""

    words: list[str]
    tags: list[str]
    where: list[str]


def _conll_sentences(path: Path, column: int) -> list[_Tagged]:
    text = _read_utf8(path)
    out: list[_Tagged] = []
    cur = _Tagged([], [], [])
    ncols = first = tag_col = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if cur.words:
                out.append(cur)
                cur = _Tagged([], [], [])
            continue
        if len(fields) < 2:
            raise DataError(
                f"{path}:{lineno}: one column ({line.strip()!r}); a CoNLL line is 'TOKEN ... TAG' "
                "(whitespace-separated), with a blank line between sentences"
            )
        if not ncols:
            ncols, first = len(fields), lineno
            tag_col = column if column >= 0 else ncols + column
            if not 1 <= tag_col < ncols:
                raise DataError(
                    f"{path}:{lineno}: no tag column {column} in lines of {ncols} columns (column 0 is the token); "
                    f"set data.column to 1..{ncols - 1}, or -1 for the last"
                )
        elif len(fields) != ncols:
            raise DataError(
                f"{path}:{lineno}: {len(fields)} columns, but line {first} has {ncols}; every token line needs the "
                "same columns (token first, tags after), with a blank line between sentences"
            )
        cur.words.append(fields[0])
        cur.tags.append(fields[tag_col])
        cur.where.append(f"{path}:{lineno}")
    if cur.words:
        out.append(cur)
    if not out:
        raise DataError(f"{path}: no sentences (only blank or -DOCSTART- lines); is it the right file?")
    return out


def _conllu_sentences(path: Path, column: int) -> list[_Tagged]:
    if not 2 <= column < len(CONLLU_COLUMNS):
        raise DataError(
            f"{path}: CoNLL-U column {column} cannot be the tag; set data.column to 2..9 "
            f"({', '.join(f'{i} {n}' for i, n in enumerate(CONLLU_COLUMNS) if i >= 2)})"
        )
    text = _read_utf8(path)
    out: list[_Tagged] = []
    cur = _Tagged([], [], [])
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            if cur.words:
                out.append(cur)
                cur = _Tagged([], [], [])
            continue
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != len(CONLLU_COLUMNS):
            raise DataError(
                f"{path}:{lineno}: {len(fields)} tab-separated columns, CoNLL-U has 10 ({' '.join(CONLLU_COLUMNS)}); "
                "fix the line, or use data.name=conll for whitespace-separated token/tag columns"
            )
        if "-" in fields[0] or "." in fields[0]:
            continue  # a multiword token's range line (1-2) or an empty node (1.1): not a word of the sentence
        tag = fields[column]
        if tag in ("", "_"):
            raise DataError(
                f"{path}:{lineno}: column {column} ({CONLLU_COLUMNS[column]}) is {tag!r}, not annotated; "
                "pick an annotated column with data.column (3 = UPOS)"
            )
        cur.words.append(fields[1])
        cur.tags.append(tag)
        cur.where.append(f"{path}:{lineno}")
    if cur.words:
        out.append(cur)
    if not out:
        raise DataError(f"{path}: no sentences (only comments or blank lines); is it the right file?")
    return out


def read_conll(path: Path, column: int = -1) -> list[Sentence]:
    """Whitespace-separated columns (CoNLL-2003, WNUT): the token first, the tag in ``column`` (-1 = the
    last), a blank line between sentences, ``-DOCSTART-`` lines skipped. Tags are returned as written."""
    return [(s.words, s.tags) for s in _conll_sentences(Path(path), column)]


def read_conllu(path: Path, column: int = UPOS_COLUMN) -> list[Sentence]:
    """CoNLL-U: FORM as the word, ``column`` (0-based; 3 = UPOS, 4 = XPOS) as the tag; comments, multiword
    token ranges (``1-2``) and empty nodes (``1.1``) skipped."""
    return [(s.words, s.tags) for s in _conllu_sentences(Path(path), column)]


# --------------------------------------------------------------------------- tag schemes


def _is_chunk(tag: str) -> bool:
    return len(tag) > 2 and tag[1] == "-"


def detect_scheme(tag_sequences: Iterable[Sequence[str]]) -> str:
    """The scheme of a corpus's tags: ``none`` when no tag looks like ``P-TYPE`` (plain labels such as POS tags;
    also when every tag is O), else ``iobes`` if any ``S-``/``E-`` occurs, ``bilou`` if any ``U-``/``L-``, ``iob1``
    if an ``I-X`` starts an entity (not after ``B-X``/``I-X``), else ``bio``. Invalid tags are left for
    :func:`normalize_tags` to refuse with their location."""
    chunked = iobes = bilou = iob1 = False
    for tags in tag_sequences:
        prev = "O"
        for tag in tags:
            if _is_chunk(tag):
                chunked = True
                p, kind = tag[0], tag[2:]
                iobes = iobes or p in "SE"
                bilou = bilou or p in "UL"
                iob1 = iob1 or (p == "I" and prev not in (f"B-{kind}", f"I-{kind}"))
            prev = tag
    if not chunked:
        return "none"
    if iobes:
        return "iobes"
    if bilou:
        return "bilou"
    return "iob1" if iob1 else "bio"


def normalize_tags(tags: Sequence[str], scheme: str, where: Sequence[str] | None = None) -> list[str]:
    """``tags`` in ``scheme`` (``auto``: :func:`detect_scheme` on these tags) as BIO; ``none`` returns them as
    they are. IOB1, IOBES and BILOU map ``S-``/``U-`` to ``B-`` and ``E-``/``L-`` to ``I-``; then in every
    scheme an ``I-X`` that does not continue a ``B-X``/``I-X`` starts an entity and becomes ``B-X`` (IOB1's
    rule; in BIO/IOBES data it repairs a broken sequence as conlleval and seqeval read it). A tag that is not
    ``O`` or ``P-TYPE`` with a prefix of the scheme is refused, naming ``where[i]`` (``file:line``) if given."""
    if scheme not in SCHEMES:
        raise SpecError(f"data.scheme={scheme!r} is not one of {', '.join(SCHEMES)}")
    if scheme == "auto":
        scheme = detect_scheme([tags])
    if scheme == "none":
        return list(tags)
    prefixes = _PREFIXES[scheme]
    out: list[str] = []
    prev = "O"
    for i, tag in enumerate(tags):
        if tag != "O" and not (_is_chunk(tag) and tag[0] in prefixes):
            at = f"{where[i]}: " if where is not None else ""
            raise DataError(
                f"{at}tag {tag!r} is neither O nor {'/'.join(prefixes)}-TYPE ({scheme} scheme); fix the tag, or set "
                "data.scheme (none: plain labels such as POS tags)"
            )
        if tag == "O":
            new = "O"
        else:
            kind = tag[2:]
            if tag[0] in "BSU" or prev not in (f"B-{kind}", f"I-{kind}"):
                new = f"B-{kind}"
            else:
                new = f"I-{kind}"
        out.append(new)
        prev = new
    return out


def label_list(sentences: Iterable[Sentence]) -> list[str]:
    """The sorted labels of ``sentences``, with ``O`` first when present: a label's index is its id."""
    labels = sorted({t for _, tags in sentences for t in tags})
    if "O" in labels:
        labels.remove("O")
        labels.insert(0, "O")
    return labels


# --------------------------------------------------------------------------- corpora and splits


@dataclass
class TagCorpus:
    """Tagged sentences (BIO tags, or plain labels for scheme none) in three splits."""

    train: list[Sentence]
    val: list[Sentence]
    test: list[Sentence]
    scheme: str  # the scheme the tags were written in (detected for auto); they are BIO now unless "none"
    source: str  # where they came from
    files: dict[str, str] = field(default_factory=dict)  # split -> file, or "split off train (fraction f)"


def split_indices(
    n: int, val_fraction: float, test_fraction: float, stream: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted train, validation and test indices of ``n`` items: ``round(f * n)`` items (at least one when
    ``f > 0``) taken by a permutation from ``make_rng(SPLIT_SEED, stream)`` (the same split for every seed):
    its first ones to test, the next to validation."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise SpecError(f"data.{name} must be in [0, 1), got {f}")
    counts = [max(int(round(f * n)), 1) if f > 0 else 0 for f in (test_fraction, val_fraction)]
    if sum(counts) >= n and sum(counts) > 0:
        raise DataError(
            f"{n} item(s) cannot give {counts[1]} to validation and {counts[0]} to test and keep any to train; "
            "lower data.val_fraction / data.test_fraction, or add data"
        )
    order = make_rng(SPLIT_SEED, stream).permutation(n)
    test = np.sort(order[: counts[0]])
    val = np.sort(order[counts[0] : counts[0] + counts[1]])
    train = np.sort(order[counts[0] + counts[1] :])
    return train, val, test


# a file's role from its lowercased name: checked in this order, first match wins
_ROLE_WORDS = (("val", ("dev", "valid", "testa")), ("test", ("test",)), ("train", ("train",)))
CONLL_SUFFIXES = (
    "", ".txt", ".conll", ".tsv", ".iob", ".iob1", ".iob2", ".bio", ".iobes", ".bioes", ".bilou",
    ".train", ".dev", ".valid", ".testa", ".testb", ".test", ".annotated",
)  # fmt: skip


def find_split_files(root: Path, name: str) -> dict[str, Path]:
    """The train/val/test files in ``root`` (not its subfolders). Candidates: not hidden, ending ``.conllu``
    (name conllu) or with a suffix in ``CONLL_SUFFIXES`` (conll: ``eng.train``, ``train.txt``, ``x.conll``...).
    A candidate's lowercased name decides its split: containing ``dev``, ``valid`` or ``testa`` -> val; else
    ``test`` (so ``testb``) -> test; else ``train`` -> train; else it is ignored. A training file is required;
    two files for one split are refused."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; set data.root to the folder holding the {name} train/dev/test files")
    found: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for path in sorted(root.iterdir()):
        low = path.name.lower()
        fits = low.endswith(".conllu") if name == "conllu" else path.suffix.lower() in CONLL_SUFFIXES
        if path.name.startswith(".") or not path.is_file() or not fits:
            continue
        for role, words in _ROLE_WORDS:
            if any(w in low for w in words):
                found[role].append(path)
                break
    for role, paths in found.items():
        if len(paths) > 1:
            raise DataError(
                f"{root}: {len(paths)} {role} files ({', '.join(p.name for p in paths)}); keep one per split "
                "(a name with dev/valid/testa is validation, test/testb test, train training)"
            )
    if not found["train"]:
        example = "en_ewt-ud-train.conllu" if name == "conllu" else "train.txt, eng.train or train.conll"
        raise DataError(
            f"{root}: no training file for data.name={name} (a name containing 'train', e.g. {example}); "
            "rename it or set data.root to the folder that holds it"
        )
    return {role: paths[0] for role, paths in found.items() if paths}


def _normalize_corpus(parts: dict[str, list[_Tagged]], scheme: str) -> tuple[dict[str, list[Sentence]], str]:
    if scheme not in SCHEMES:
        raise SpecError(f"data.scheme={scheme!r} is not one of {', '.join(SCHEMES)}")
    if scheme == "auto":  # one scheme for the whole corpus: a sentence alone can look like several
        scheme = detect_scheme(s.tags for sents in parts.values() for s in sents)
    out = {role: [(s.words, normalize_tags(s.tags, scheme, s.where)) for s in sents] for role, sents in parts.items()}
    return out, scheme


def _carve(
    splits: dict[str, list[Sentence]], files: dict[str, str], spec: TextDataSpec, stream: str
) -> dict[str, list[Sentence]]:
    """Split validation/test sentences off ``train`` where the corpus has no such split of its own."""
    val_f = spec.val_fraction if "val" not in splits else 0.0
    test_f = spec.test_fraction if "test" not in splits else 0.0
    train = splits["train"]
    keep, val, test = split_indices(len(train), val_f, test_f, stream)
    for role, idx, f in (("val", val, val_f), ("test", test, test_f)):
        if role not in splits:
            splits[role] = [train[i] for i in idx]
            files[role] = f"split off train ({f:g})"
    splits["train"] = [train[i] for i in keep]
    return splits


def load_tag_corpus(spec: TextDataSpec) -> TagCorpus:
    """The tagging corpus ``spec`` names, in three splits with BIO tags (plain labels for scheme none).

    ``pyroles``: core/corpora.python_roles(limit_words). ``conll``/``conllu``: the files
    :func:`find_split_files` finds in ``root`` (column: conll's tag column, -1 = the last; conllu's 0-based
    column, where -1, the spec default, means 3 = UPOS). A split without its own file is taken from the
    training sentences (val_fraction/test_fraction, by :func:`split_indices` with stream ``tag/split``)."""
    if spec.name == "pyroles":
        train = corpora.python_roles(spec.limit_words)
        if not train:
            raise DataError("the Python standard library gave no source lines; use data.name=conll or conllu")
        files = {"train": corpora.stdlib_source()}
        splits = _carve({"train": train}, files, spec, "tag/split")
        return TagCorpus(splits["train"], splits["val"], splits["test"], "bio", corpora.stdlib_source(), files)
    if spec.name not in ("conll", "conllu"):
        raise DataError(f"data.name={spec.name!r} is not a tagging corpus; use pyroles, conll or conllu")
    if not spec.root:
        raise DataError(f"data.name={spec.name} needs the folder of its files: --set data.root=FOLDER")
    paths = find_split_files(Path(spec.root), spec.name)
    if spec.name == "conllu":
        column = UPOS_COLUMN if spec.column == -1 else spec.column
        parts = {role: _conllu_sentences(p, column) for role, p in paths.items()}
    else:
        parts = {role: _conll_sentences(p, spec.column) for role, p in paths.items()}
    splits, scheme = _normalize_corpus(parts, spec.scheme)
    files = {role: str(p) for role, p in paths.items()}
    splits = _carve(splits, files, spec, "tag/split")
    source = str(Path(spec.root).expanduser().resolve())
    return TagCorpus(splits["train"], splits["val"], splits["test"], scheme, source, files)


# --------------------------------------------------------------------------- encoding


def _int64(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.int64)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value for ==
class TokenData:
    """Encoded sequences: ``input_ids``, ``attention_mask``, ``labels``, ``word_ids`` (N, L) int64 and
    ``source_ids`` (N,) int64. ``word_ids``: the index of the word in its source sentence that each position
    belongs to (every subword of it), -1 for [CLS]/[SEP]/padding and for MLM blocks; ``source_ids``: the
    sentence (tagging) or the document a block starts in (MLM) each row came from. ``stats``: counts from the
    encoding that made the rows (kept as they are by :meth:`subset`)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    word_ids: np.ndarray | None = None
    source_ids: np.ndarray | None = None
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = _int64(self.input_ids)
        if ids.ndim != 2:
            raise DataError(f"input_ids must be (N, L), got shape {ids.shape}")
        word_ids = np.full(ids.shape, -1, dtype=np.int64) if self.word_ids is None else self.word_ids
        source_ids = np.arange(len(ids), dtype=np.int64) if self.source_ids is None else self.source_ids
        arrays = {"input_ids": ids}
        for name, a in (("attention_mask", self.attention_mask), ("labels", self.labels), ("word_ids", word_ids)):
            arrays[name] = _int64(a)
            if arrays[name].shape != ids.shape:
                raise DataError(f"{name} has shape {arrays[name].shape}, input_ids {ids.shape}")
        arrays["source_ids"] = _int64(source_ids)
        if arrays["source_ids"].shape != (len(ids),):
            raise DataError(f"source_ids has shape {arrays['source_ids'].shape}, expected ({len(ids)},)")
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def max_length(self) -> int:
        return int(self.input_ids.shape[1])

    def subset(self, idx: Any) -> TokenData:
        """The rows ``idx`` (indices, a slice or a boolean mask), in that order."""
        return TokenData(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.labels[idx],
            self.word_ids[idx],
            self.source_ids[idx],
            dict(self.stats),
        )


def _check_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 3:
        raise SpecError(f"data.max_length must be at least 3 ([CLS], a token, [SEP]), got {max_length!r}")


def _pack(rows: list[list[int]], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), max_length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), max_length), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return ids, mask


def _no_pad(ids: Sequence[int], tokenizer: Any) -> list[int]:
    """``ids`` with a literal [PAD] of the text (WordPiece keeps written special tokens whole) as [UNK]: padding
    is only ever what :func:`_pack` adds, so ``input_ids != pad_id`` is the attention mask."""
    pad, unk = tokenizer.pad_id, tokenizer.unk_id
    return [unk if i == pad else i for i in ids]


def _chunks(pieces: list[list[int]], tags: Sequence[str], budget: int) -> list[tuple[int, int]]:
    """Consecutive word ranges whose subwords fit in ``budget``: greedy, but a cut before an ``I-`` word
    moves back to the nearest earlier word that does not continue an entity, when there is one."""
    out = []
    start = 0
    while start < len(pieces):
        end, used = start, 0
        while end < len(pieces) and used + len(pieces[end]) <= budget:
            used += len(pieces[end])
            end += 1
        if end < len(pieces) and tags[end].startswith("I-"):
            back = next((k for k in range(end - 1, start, -1) if not tags[k].startswith("I-")), None)
            end = back if back is not None else end
        out.append((start, end))
        start = end
    return out


def encode_tagged(sentences: Sequence[Sentence], tokenizer: Any, labels: Sequence[str], max_length: int) -> TokenData:
    """Tagged sentences as ``[CLS] subwords [SEP] padding`` rows of ``max_length``, the first subword of each
    word labelled with its tag's index in ``labels``, every other position -100.

    No gold word is lost: a sentence whose subwords do not fit in ``max_length - 2`` is split into several rows
    of consecutive whole words (see :func:`_chunks`; ``source_ids`` tells which sentence a row is from), and a
    single word longer than that keeps only its first ``max_length - 2`` subwords (its label stays on the first).
    A word the tokenizer gives no id for (e.g. only control characters) is encoded as ``unk_id``. ``stats``:
    sentences, words, rows, split_sentences (those given more than one row), cut_words, cut_subwords."""
    _check_length(max_length)
    index = {label: i for i, label in enumerate(labels)}
    budget = max_length - 2
    rows: list[list[int]] = []
    row_labels: list[list[int]] = []
    row_words: list[list[int]] = []
    sources: list[int] = []
    stats = dict.fromkeys(("sentences", "words", "rows", "split_sentences", "cut_words", "cut_subwords"), 0)
    for s, (words, tags) in enumerate(sentences):
        if len(words) != len(tags):
            raise DataError(f"sentence {s} has {len(words)} words but {len(tags)} tags")
        pieces = []
        for word in words:
            ids = _no_pad(tokenizer.encode_word(word), tokenizer) or [tokenizer.unk_id]
            if len(ids) > budget:
                stats["cut_words"] += 1
                stats["cut_subwords"] += len(ids) - budget
                ids = ids[:budget]
            pieces.append(ids)
        chunks = _chunks(pieces, tags, budget)
        stats["sentences"] += 1
        stats["words"] += len(words)
        stats["split_sentences"] += len(chunks) > 1
        for start, end in chunks:
            ids, lab, wid = [tokenizer.cls_id], [IGNORE], [-1]
            for w in range(start, end):
                tag = tags[w]
                if tag not in index:
                    raise DataError(
                        f"sentence {s}, word {w} ({words[w]!r}) has tag {tag!r}, which is not among the model's "
                        f"labels ({', '.join(labels)}); train with data that has it, or map it to a known tag"
                    )
                ids.extend(pieces[w])
                lab.extend([index[tag]] + [IGNORE] * (len(pieces[w]) - 1))
                wid.extend([w] * len(pieces[w]))
            rows.append(ids + [tokenizer.sep_id])
            row_labels.append(lab + [IGNORE])
            row_words.append(wid + [-1])
            sources.append(s)
    stats["rows"] = len(rows)
    input_ids, attention = _pack(rows, max_length, tokenizer.pad_id)
    label_arr = np.full(input_ids.shape, IGNORE, dtype=np.int64)
    word_arr = np.full(input_ids.shape, -1, dtype=np.int64)
    for r, (lab, wid) in enumerate(zip(row_labels, row_words, strict=True)):
        label_arr[r, : len(lab)] = lab
        word_arr[r, : len(wid)] = wid
    return TokenData(input_ids, attention, label_arr, word_arr, np.array(sources, dtype=np.int64), stats)


def encode_documents(docs: Sequence[str], tokenizer: Any, max_length: int) -> TokenData:
    """MLM blocks as Hugging Face's ``group_texts``: the token ids of all documents concatenated with one
    [SEP] between consecutive documents, cut into blocks of ``max_length - 2``, each row ``[CLS] block [SEP]``.
    The last, shorter block is kept and padded (attention 0 there), so no text is lost; documents that encode
    to nothing are skipped. Labels are -100 everywhere (masks are drawn per step); ``source_ids`` is the
    document each block starts in. ``stats``: documents, tokens (concatenated, separators included), rows,
    padded (pad positions in the last row)."""
    _check_length(max_length)
    stream: list[int] = []
    starts: list[int] = []  # per token of the stream: its document
    for d, doc in enumerate(docs):
        ids = _no_pad(tokenizer.encode(doc), tokenizer)
        if not ids:
            continue
        if stream:
            stream.append(tokenizer.sep_id)
            starts.append(d)
        stream.extend(ids)
        starts.extend([d] * len(ids))
    block = max_length - 2
    rows = [[tokenizer.cls_id, *stream[i : i + block], tokenizer.sep_id] for i in range(0, len(stream), block)]
    input_ids, attention = _pack(rows, max_length, tokenizer.pad_id)
    stats = {
        "documents": len(docs),
        "tokens": len(stream),
        "rows": len(rows),
        "padded": int(max_length - len(rows[-1])) if rows else 0,
    }
    sources = np.array([starts[i] for i in range(0, len(stream), block)], dtype=np.int64)
    return TokenData(input_ids, attention, np.full(input_ids.shape, IGNORE, dtype=np.int64), None, sources, stats)


# --------------------------------------------------------------------------- batches


def text_batches(
    data: TokenData, batch_size: int, rng: np.random.Generator, *, shuffle: bool = True, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(input_ids, labels)`` batches, (B, L) int64 each, as core.batches.epoch_batches orders
    images: ``rng.permutation(n)`` drawn once when the first batch is asked for (if ``shuffle``), then
    consecutive slices of it; the last batch may be short unless ``drop_last``."""
    n = len(data)
    count = num_batches(n, batch_size, drop_last)
    order = rng.permutation(n) if shuffle else np.arange(n)
    for b in range(count):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield data.input_ids[idx], data.labels[idx]


def eval_text_batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices over ``n`` rows in order, ``batch_size`` at a time (the last may be short): evaluation indexes
    ``input_ids``, masks, labels (or fixed MLM masks) with the same slice."""
    num_batches(n, batch_size, drop_last=False)  # refuses batch_size < 1
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
