"""WordPiece tokenisation owned by core, so that both backends see exactly the same ids.

Encoding is BERT's, as Hugging Face ``tokenizers`` does it (``BertNormalizer`` + ``BertPreTokenizer`` +
``WordPiece``), and a saved folder is read by ``tokenizers`` and ``transformers`` with the same ids:

1. The five special tokens written literally in the text (``[MASK]``, ...; case-sensitive) are kept whole,
   as HF's added special tokens are; the text between them goes through steps 2-6.
2. Clean: drop U+0000, U+FFFD and control characters (Cc, Cf, Co, surrogates; not tab, newline, return),
   turn whitespace into spaces.
3. Put spaces around CJK ideographs.
4. When ``lowercase``: NFD, drop nonspacing marks (strip accents), then lowercase character by character.
5. Split on spaces, then split off every punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, and
   Unicode P*) as a word of its own.
6. WordPiece each word: greedy longest match first, continuation pieces prefixed ``##``; a word longer
   than 100 characters, or with a part that matches nothing, is one ``[UNK]``.

The character classes (control, whitespace, punctuation, nonspacing mark) and the CJK ranges are fixed
tables, copied from what ``tokenizers`` does (its Unicode tables are older than Python's and its CJK ranges
skip U+2B820..U+2B91F), so encoding does not change with the Python version. NFD and lowercasing use
Python's ``unicodedata``: characters newer than Python's Unicode database may differ, and tokenizers 0.23
leaves U+11938 undecomposed.

Vocabulary building (``build_vocab``), the exact rule, which makes it a function of the multiset of words
(the same text in any order of documents gives the same list):

- Count the words (steps 1-5 above; special tokens and words over 100 characters are not counted).
- Tokens 0..4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
- Then the characters: each character ``c`` seen, once as ``c`` and once as ``##c``; all ``c`` forms in
  code-point order, then all ``##c`` forms in code-point order. When they do not all fit in ``vocab_size``,
  the most frequent characters are kept (count descending, then code point ascending), as many as fit
  in pairs, and words holding a dropped character are left out of the merges (they encode to ``[UNK]``).
- Then merges, as HF's WordPiece trainer does (BPE pair merging over the words split into ``c ##c ##c``):
  repeatedly take the adjacent pair ``(a, b)`` with the highest count (summed over word occurrences); ties
  go to the smallest ``(a, b)`` compared as Python strings (code points). Stop when the best count is below
  ``min_frequency`` or the vocabulary has ``vocab_size`` tokens. The merged token ``a + b`` without ``b``'s
  ``##`` is appended unless it is already there (two merges can spell the same token); the pair is merged
  in every word, left to right.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from dualkit.core.errors import DataError, SpecError
from dualkit.core.runs import atomic_write_text

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PREFIX = "##"  # continuation pieces
MAX_INPUT_CHARS_PER_WORD = 100  # BERT's: a longer word is one [UNK]
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
_CACHE_SIZE = 1 << 17  # words whose ids are remembered; text repeats most words

# --------------------------------------------------------------------------- character tables


def _ranges(spec: str) -> tuple[list[int], list[int]]:
    """Parse "21-2f a1 ..." (hex code points and inclusive ranges) into sorted starts and ends."""
    starts, ends = [], []
    for item in spec.split():
        lo, _, hi = item.partition("-")
        starts.append(int(lo, 16))
        ends.append(int(hi or lo, 16))
    return starts, ends


def _member(table: tuple[list[int], list[int]], cp: int) -> bool:
    i = bisect.bisect_right(table[0], cp) - 1
    return i >= 0 and cp <= table[1][i]


# What tokenizers' BertNormalizer drops (clean_text: U+0000, U+FFFD and its control classes; surrogates,
# which a Rust string cannot hold) and turns into a space; the punctuation BertPreTokenizer splits off;
# the nonspacing marks its strip_accents removes. Read off tokenizers 0.23 over every code point; the
# test checks them against the installed tokenizers.
_CTRL = _ranges(
    "0-8 b-c e-1f 7f-9f ad 600-605 61c 6dd 70f 180e 200b-200f 202a-202e 2060-2064 2066-206f d800-f8ff feff "
    "fff9-fffb fffd 110bd 1bca0-1bca3 1d173-1d17a e0001 e0020-e007f f0000-ffffd 100000-10fffd "
)
_WS = _ranges("9-a d 20 a0 1680 2000-200a 2028-2029 202f 205f 3000 ")
_PUNCT = _ranges(
    "21-2f 3a-40 5b-60 7b-7e a1 a7 ab b6-b7 bb bf 37e 387 55a-55f 589-58a 5be 5c0 5c3 5c6 5f3-5f4 609-60a "
    "60c-60d 61b 61e-61f 66a-66d 6d4 700-70d 7f7-7f9 830-83e 85e 964-965 970 af0 df4 e4f e5a-e5b f04-f12 f14 "
    "f3a-f3d f85 fd0-fd4 fd9-fda 104a-104f 10fb 1360-1368 1400 166d-166e 169b-169c 16eb-16ed 1735-1736 "
    "17d4-17d6 17d8-17da 1800-180a 1944-1945 1a1e-1a1f 1aa0-1aa6 1aa8-1aad 1b5a-1b60 1bfc-1bff 1c3b-1c3f "
    "1c7e-1c7f 1cc0-1cc7 1cd3 2010-2027 2030-2043 2045-2051 2053-205e 207d-207e 208d-208e 2308-230b 2329-232a "
    "2768-2775 27c5-27c6 27e6-27ef 2983-2998 29d8-29db 29fc-29fd 2cf9-2cfc 2cfe-2cff 2d70 2e00-2e2e 2e30-2e42 "
    "3001-3003 3008-3011 3014-301f 3030 303d 30a0 30fb a4fe-a4ff a60d-a60f a673 a67e a6f2-a6f7 a874-a877 "
    "a8ce-a8cf a8f8-a8fa a8fc a92e-a92f a95f a9c1-a9cd a9de-a9df aa5c-aa5f aade-aadf aaf0-aaf1 abeb fd3e-fd3f "
    "fe10-fe19 fe30-fe52 fe54-fe61 fe63 fe68 fe6a-fe6b ff01-ff03 ff05-ff0a ff0c-ff0f ff1a-ff1b ff1f-ff20 "
    "ff3b-ff3d ff3f ff5b ff5d ff5f-ff65 10100-10102 1039f 103d0 1056f 10857 1091f 1093f 10a50-10a58 10a7f "
    "10af0-10af6 10b39-10b3f 10b99-10b9c 11047-1104d 110bb-110bc 110be-110c1 11140-11143 11174-11175 "
    "111c5-111c9 111cd 111db 111dd-111df 11238-1123d 112a9 114c6 115c1-115d7 11641-11643 1173c-1173e "
    "12470-12474 16a6e-16a6f 16af5 16b37-16b3b 16b44 1bc9f 1da87-1da8b "
)
_MN = _ranges(
    "300-33f 342 345-36f 483-487 591-5bd 5bf 5c1-5c2 5c4-5c5 5c7 610-61a 64b-65f 670 6d6-6dc 6df-6e4 6e7-6e8 "
    "6ea-6ed 711 730-74a 7a6-7b0 7eb-7f3 816-819 81b-823 825-827 829-82d 859-85b 8e3-902 93a 93c 941-948 94d "
    "951-957 962-963 981 9bc 9c1-9c4 9cd 9e2-9e3 a01-a02 a3c a41-a42 a47-a48 a4b-a4d a51 a70-a71 a75 a81-a82 "
    "abc ac1-ac5 ac7-ac8 acd ae2-ae3 b01 b3c b3f b41-b44 b4d b56 b62-b63 b82 bc0 bcd c00 c3e-c40 c46-c47 "
    "c4a-c4d c55-c56 c62-c63 c81 cbc cbf cc6 ccc-ccd ce2-ce3 d01 d41-d44 d4d d62-d63 dca dd2-dd4 dd6 e31 "
    "e34-e3a e47-e4e eb1 eb4-eb9 ebb-ebc ec8-ecd f18-f19 f35 f37 f39 f71-f72 f74 f77 f79-f7e f80 f82-f84 "
    "f86-f87 f8d-f92 f94-f97 f99-f9c f9e-fa1 fa3-fa6 fa8-fab fad-fb8 fba-fbc fc6 102d-1030 1032-1037 "
    "1039-103a 103d-103e 1058-1059 105e-1060 1071-1074 1082 1085-1086 108d 109d 135d-135f 1712-1714 1732-1734 "
    "1752-1753 1772-1773 17b4-17b5 17b7-17bd 17c6 17c9-17d3 17dd 180b-180d 18a9 1920-1922 1927-1928 1932 "
    "1939-193b 1a17-1a18 1a1b 1a56 1a58-1a5e 1a60 1a62 1a65-1a6c 1a73-1a7c 1a7f 1ab0-1abd 1b00-1b03 1b34 "
    "1b36-1b3a 1b3c 1b42 1b6b-1b73 1b80-1b81 1ba2-1ba5 1ba8-1ba9 1bab-1bad 1be6 1be8-1be9 1bed 1bef-1bf1 "
    "1c2c-1c33 1c36-1c37 1cd0-1cd2 1cd4-1ce0 1ce2-1ce8 1ced 1cf4 1cf8-1cf9 1dc0-1df5 1dfc-1dff 20d0-20dc 20e1 "
    "20e5-20f0 2cef-2cf1 2d7f 2de0-2dff 302a-302d 3099-309a a66f a674-a67d a69e-a69f a6f0-a6f1 a802 a806 a80b "
    "a825-a826 a8c4 a8e0-a8f1 a926-a92d a947-a951 a980-a982 a9b3 a9b6-a9b9 a9bc a9e5 aa29-aa2e aa31-aa32 "
    "aa35-aa36 aa43 aa4c aa7c aab0 aab2-aab4 aab7-aab8 aabe-aabf aac1 aaec-aaed aaf6 abe5 abe8 abed fb1e "
    "fe00-fe0f fe20-fe2f 101fd 102e0 10376-1037a 10a01-10a03 10a05-10a06 10a0c-10a0f 10a38-10a3a 10a3f "
    "10ae5-10ae6 11001 11038-11046 1107f-11081 110b3-110b6 110b9-110ba 11100-11102 11127-1112b 1112d "
    "11130-11134 11173 11180-11181 111b6-111be 111ca-111cc 1122f-11231 11234 11236-11237 112df 112e3-112ea "
    "11300-11301 1133c 11340 11366-1136c 11370-11374 114b3-114b8 114ba 114bf-114c0 114c2-114c3 115b2-115b5 "
    "115bc-115bd 115bf-115c0 115dc-115dd 11633-1163a 1163d 1163f-11640 116ab 116ad 116b0-116b5 116b7 "
    "1171d-1171f 11722-11725 11727-1172b 16af0-16af4 16b30-16b36 16f8f-16f92 1bc9d-1bc9e 1d167-1d169 "
    "1d17b-1d182 1d185-1d18b 1d1aa-1d1ad 1d242-1d244 1da00-1da36 1da3b-1da6c 1da75 1da84 1da9b-1da9f "
    "1daa1-1daaf 1e8d0-1e8d6 e0100-e01ef "
)
_CJK = _ranges("3400-4dbf 4e00-9fff f900-faff 20000-2a6df 2a700-2b81f 2b920-2ceaf 2f800-2fa1f")


def _spaced(ch: str) -> str:
    return " " + ch + " "


def _clean_char(cp: int) -> str:
    if _member(_CTRL, cp):
        return ""
    if _member(_WS, cp):
        return " "
    return _spaced(chr(cp)) if _member(_CJK, cp) else chr(cp)


def _split_punct(text: str) -> str:
    return "".join(_spaced(ch) if _member(_PUNCT, ord(ch)) else ch for ch in text)


def _clean_and_split_char(cp: int) -> str:
    """Steps 2, 3 and 5 in one pass, for ``lowercase=False`` (no NFD has to come between them)."""
    out = _clean_char(cp)
    return _split_punct(out) if len(out) == 1 else out


def _fold_char(cp: int) -> str:
    """The rest of step 4 and step 5, for one character of the NFD text: drop a nonspacing mark, else
    lowercase it (per character, as Rust does: no final-sigma rule) and space out punctuation."""
    return "" if _member(_MN, cp) else _split_punct(chr(cp).lower())


class _CharMap(dict):
    """A str.translate table that computes each character's replacement once, on first sight."""

    def __init__(self, fn: Callable[[int], str]):
        super().__init__()
        self._fn = fn

    def __missing__(self, cp: int) -> str:
        out = self[cp] = self._fn(cp)
        return out


_CLEAN = _CharMap(_clean_char)
_CLEAN_SPLIT = _CharMap(_clean_and_split_char)
_FOLD = _CharMap(_fold_char)
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def _words(segment: str, lowercase: bool) -> list[str]:
    """Steps 2-5 on text holding no special token."""
    if lowercase:
        text = unicodedata.normalize("NFD", segment.translate(_CLEAN)).translate(_FOLD)
    else:
        text = segment.translate(_CLEAN_SPLIT)
    return text.split()  # only spaces are left; split() drops the empty strings between them


def pre_tokenize(text: str, lowercase: bool) -> list[str]:
    """Steps 1-5: the words WordPiece sees (special tokens kept whole)."""
    if "[" not in text:  # fast path: no special token possible
        return _words(text, lowercase)
    out: list[str] = []
    for i, part in enumerate(_SPECIAL_RE.split(text)):
        if i % 2:
            out.append(part)
        elif part:
            out.extend(_words(part, lowercase))
    return out


# --------------------------------------------------------------------------- vocabulary building


def build_vocab(texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool) -> list[str]:
    """A WordPiece vocabulary learned from ``texts`` by the deterministic rule in the module docstring."""
    if isinstance(texts, str):
        raise SpecError("build_vocab takes an iterable of texts, got one str; pass [text]")
    if vocab_size < len(SPECIAL_TOKENS):
        raise SpecError(
            f"tokenizer vocab_size must be at least {len(SPECIAL_TOKENS)} (the special tokens), got {vocab_size}"
        )
    if min_frequency < 1:
        raise SpecError(f"tokenizer min_frequency must be at least 1, got {min_frequency}")
    words: Counter[str] = Counter()
    for text in texts:
        words.update(pre_tokenize(text, lowercase))
    for token in SPECIAL_TOKENS:
        words.pop(token, None)
    words = Counter({w: n for w, n in words.items() if len(w) <= MAX_INPUT_CHARS_PER_WORD})

    chars: Counter[str] = Counter()
    for word, n in words.items():
        for ch in word:
            chars[ch] += n
    fit = (vocab_size - len(SPECIAL_TOKENS)) // 2
    kept = sorted(chars, key=lambda ch: (-chars[ch], ch))[:fit] if len(chars) > fit else list(chars)
    alphabet = sorted(kept)
    vocab = list(SPECIAL_TOKENS) + alphabet + [PREFIX + ch for ch in alphabet]
    if len(kept) < len(chars):
        allowed = set(kept)
        words = Counter({w: n for w, n in words.items() if allowed.issuperset(w)})
    return _merge(words, vocab, vocab_size, min_frequency)


def _merge(words: Counter[str], vocab: list[str], vocab_size: int, min_frequency: int) -> list[str]:
    """BPE pair merging, updated incrementally: only the words holding the merged pair are recounted."""
    seqs = [[w[0]] + [PREFIX + ch for ch in w[1:]] for w in words]
    freqs = list(words.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pairs[pair] += freqs[i]
            where.setdefault(pair, set()).add(i)
    # (-count, a, b): the heap's smallest is the highest count, then the smallest pair. Entries go stale
    # when a count changes; the fresh count is pushed anew and a stale entry is skipped when popped.
    heap = [(-n, a, b) for (a, b), n in pairs.items()]
    heapq.heapify(heap)
    known = set(vocab)
    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if pairs.get((a, b)) != -neg:
            continue
        if -neg < min_frequency:
            break
        token = a + b[len(PREFIX) :]
        if token not in known:
            known.add(token)
            vocab.append(token)
        changed: set[tuple[str, str]] = set()
        for i in where.pop((a, b)):
            seq, n = seqs[i], freqs[i]
            for pair in zip(seq, seq[1:]):
                pairs[pair] -= n
                changed.add(pair)
            merged, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    merged.append(token)
                    j += 2
                else:
                    merged.append(seq[j])
                    j += 1
            seqs[i] = merged
            for pair in zip(merged, merged[1:]):
                pairs[pair] += n
                changed.add(pair)
                where.setdefault(pair, set()).add(i)
        for pair in changed:
            n = pairs[pair]
            if n > 0:
                heapq.heappush(heap, (-n, *pair))
            else:
                del pairs[pair]
                where.pop(pair, None)
    return vocab


# --------------------------------------------------------------------------- the tokenizer


class WordPiece:
    """BERT's WordPiece tokenizer over a fixed vocabulary (token id = its index in ``vocab``)."""

    def __init__(self, vocab: list[str], lowercase: bool = True, *, source: str = "the vocabulary"):
        _check_vocab(vocab, source)
        self.vocab: list[str] = list(vocab)
        self.lowercase = bool(lowercase)
        self.token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.token_to_id[t] for t in SPECIAL_TOKENS)
        self.special_ids: frozenset[int] = frozenset(self.token_to_id[t] for t in SPECIAL_TOKENS)
        self._longest = max(len(t) for t in self.vocab)  # no match can be longer: bounds the search
        self._cache: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordPiece({len(self)} tokens, lowercase={self.lowercase})"

    # ---- encoding

    def pre_tokenize(self, text: str) -> list[str]:
        """The normalised words of ``text`` that WordPiece encodes one by one (specials kept whole)."""
        return pre_tokenize(text, self.lowercase)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._wordpiece(word)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first, as tokenizers' WordPiece model (one pre-tokenised word)."""
        special = self.token_to_id.get(word) if word in SPECIAL_TOKENS else None
        if special is not None:
            return (special,)
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            return (self.unk_id,)
        lookup, out, start = self.token_to_id.get, [], 0
        while start < len(word):
            prefix = PREFIX if start else ""
            for end in range(min(len(word), start + self._longest), start, -1):
                found = lookup(prefix + word[start:end])
                if found is not None:
                    break
            else:
                return (self.unk_id,)
            out.append(found)
            start = end
        return tuple(out)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without [CLS]/[SEP]."""
        out: list[int] = []
        for word in pre_tokenize(text, self.lowercase):
            out.extend(self._word_ids(word))
        return out

    def encode_word(self, word: str) -> list[int]:
        """Ids of one word given by a corpus (e.g. a CoNLL token): normalised here, and all the subwords of
        every piece it splits into ("U.S." gives those of "u", ".", "s", "."). Empty when the word holds
        only characters that cleaning drops (controls, whitespace)."""
        return self.encode(word)

    def tokenize_word(self, word: str) -> list[str]:
        """The subword strings of ``encode_word(word)``."""
        return [self.vocab[i] for i in self.encode(word)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Tokens joined for display: ``##`` pieces glued to the piece before, others spaced."""
        words: list[str] = []
        for raw in ids:
            i = int(raw)
            if not 0 <= i < len(self.vocab):
                raise SpecError(f"token id {i} is outside this vocabulary (0..{len(self.vocab) - 1})")
            if skip_special and i in self.special_ids:
                continue
            tok = self.vocab[i]
            if words and tok.startswith(PREFIX):
                words[-1] += tok[len(PREFIX) :]
            else:
                words.append(tok)
        return " ".join(words)

    def fingerprint(self) -> str:
        """sha256 (hex) of the vocabulary and the lowercase flag: equal fingerprints encode equally."""
        blob = json.dumps({"vocab": self.vocab, "lowercase": self.lowercase}, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ---- constructors and files

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool) -> WordPiece:
        """A tokenizer with a vocabulary learned from ``texts`` (see ``build_vocab``)."""
        return cls(build_vocab(texts, vocab_size, min_frequency, lowercase), lowercase)

    @classmethod
    def load(cls, path: str | Path, lowercase: bool = True) -> WordPiece:
        """From a ``vocab.txt``, a WordPiece ``tokenizer.json``, or a folder holding either (``vocab.txt``
        preferred). The lowercase flag: in a folder, ``do_lower_case`` of its ``tokenizer_config.json``,
        else the ``lowercase`` of its tokenizer.json's BertNormalizer; for a tokenizer.json file, its
        normalizer; else the ``lowercase`` argument."""
        path = Path(path).expanduser()
        if path.is_dir():
            vocab_file, json_file = path / VOCAB_FILE, path / TOKENIZER_FILE
            if not vocab_file.is_file() and not json_file.is_file():
                raise DataError(f"{path}: holds neither {VOCAB_FILE} nor {TOKENIZER_FILE}; point at a tokenizer folder")
            found = _config_lowercase(path / CONFIG_FILE)
            if found is None and json_file.is_file():
                doc = _read_json(json_file)
                found = _normalizer_lowercase(doc.get("normalizer") if isinstance(doc, dict) else None, json_file)
            lower = lowercase if found is None else found
            if vocab_file.is_file():
                return cls(_read_vocab_txt(vocab_file), lower, source=str(vocab_file))
            return cls(_read_tokenizer_json(json_file)[0], lower, source=str(json_file))
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; give a {VOCAB_FILE}, a {TOKENIZER_FILE} or their folder")
        if path.suffix == ".json":
            vocab, found = _read_tokenizer_json(path)
            return cls(vocab, lowercase if found is None else found, source=str(path))
        return cls(_read_vocab_txt(path), lowercase, source=str(path))

    def save(self, folder: str | Path) -> Path:
        """Write ``vocab.txt``, ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder`` (atomically,
        each); HF ``tokenizers`` and ``transformers`` load them and encode as this class does."""
        folder = Path(folder)
        atomic_write_text(folder / VOCAB_FILE, "".join(tok + "\n" for tok in self.vocab))
        atomic_write_text(folder / TOKENIZER_FILE, json.dumps(self._hf_json(), indent=2, ensure_ascii=False) + "\n")
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase}
        config.update({f"{name}_token": tok for name, tok in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS)})
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return folder

    def _hf_json(self) -> dict:
        """tokenizers' serialisation of BERT's pipeline over this vocabulary."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": self.token_to_id[tok],
                    "content": tok,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for tok in SPECIAL_TOKENS
            ],
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": True,
                "handle_chinese_chars": True,
                "strip_accents": self.lowercase,
                "lowercase": self.lowercase,
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": [SEP, self.sep_id], "cls": [CLS, self.cls_id]},
            "decoder": {"type": "WordPiece", "prefix": PREFIX, "cleanup": True},
            "model": {
                "type": "WordPiece",
                "unk_token": UNK,
                "continuing_subword_prefix": PREFIX,
                "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD,
                "vocab": self.token_to_id,
            },
        }


# --------------------------------------------------------------------------- reading files


def _check_vocab(vocab: list[str], source: str) -> None:
    if isinstance(vocab, str) or not all(isinstance(t, str) for t in vocab):
        raise SpecError(f"{source}: a vocabulary is a list of token strings")
    seen: dict[str, int] = {}
    for i, tok in enumerate(vocab):
        if not tok or tok != tok.rstrip() or "\n" in tok or "\r" in tok:
            raise DataError(f"{source}: token {i} is {tok!r}; tokens must be non-empty, one line, no trailing space")
        if tok in seen:
            raise DataError(f"{source}: token {tok!r} appears twice (ids {seen[tok]} and {i}); remove one")
        seen[tok] = i
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise DataError(
            f"{source}: the vocabulary lacks {' '.join(missing)}; add it (a BERT vocabulary needs all of "
            f"{' '.join(SPECIAL_TOKENS)})"
        )


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}); check the path and its permissions") from None
    if not data.strip():
        raise DataError(f"{path}: the file is empty; give a tokenizer file that holds a vocabulary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8; tokenizer files are UTF-8, re-save it as UTF-8") from None


def _read_vocab_txt(path: Path) -> list[str]:
    """One token per line, id = line number - 1 (as tokenizers reads it: trailing whitespace dropped)."""
    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()
    vocab, seen = [], {}
    for n, line in enumerate(lines, start=1):
        tok = line.rstrip()
        if not tok:
            raise DataError(f"{path}: line {n} is blank; every line must hold one token (id = line number - 1)")
        if tok in seen:
            raise DataError(
                f"{path}: line {n} repeats {tok!r} from line {seen[tok]}; remove the duplicate (ids are line numbers)"
            )
        seen[tok] = n
        vocab.append(tok)
    _check_vocab(vocab, str(path))
    return vocab


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def _read_json(path: Path) -> object:
    text = _read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise DataError(f"{path}: key {exc.args[0]!r} appears twice in one object; remove the duplicate") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); give an intact file") from None


def _read_tokenizer_json(path: Path) -> tuple[list[str], bool | None]:
    """A tokenizers ``tokenizer.json`` with a WordPiece model: its vocabulary, and the lowercase flag of its
    BertNormalizer (None when it has none)."""
    doc = _read_json(path)
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise DataError(f"{path}: no tokenizer model in it; give a tokenizers tokenizer.json")
    kind = model.get("type")
    if kind != "WordPiece":
        raise DataError(f"{path}: the tokenizer model is {kind}, not WordPiece; give a WordPiece (BERT) tokenizer")
    settings = {
        "continuing_subword_prefix": PREFIX,
        "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD,
        "unk_token": UNK,
    }
    for key, want in settings.items():
        if model.get(key, want) != want:
            raise DataError(f"{path}: model {key} is {model[key]!r}; this tokenizer supports only {want!r} (BERT's)")
    table = model.get("vocab")
    if not isinstance(table, dict) or not table:
        raise DataError(f"{path}: the WordPiece model has no vocab; give an intact tokenizer.json")
    by_id: dict[int, str] = {}
    for tok, i in table.items():
        if not isinstance(i, int) or i < 0 or i >= len(table):
            raise DataError(f"{path}: token {tok!r} has id {i!r}, not in 0..{len(table) - 1}; ids must be 0..n-1")
        if i in by_id:
            raise DataError(f"{path}: id {i} is given to both {by_id[i]!r} and {tok!r}; ids must be unique")
        by_id[i] = tok
    vocab = [by_id[i] for i in range(len(table))]
    _check_vocab(vocab, str(path))
    return vocab, _normalizer_lowercase(doc.get("normalizer"), path)


def _normalizer_lowercase(normalizer: object, path: Path) -> bool | None:
    """The lowercase flag of a BertNormalizer (alone or in a Sequence); None when there is none."""
    if not isinstance(normalizer, dict):
        return None
    if normalizer.get("type") == "Sequence":
        for inner in normalizer.get("normalizers") or []:
            found = _normalizer_lowercase(inner, path)
            if found is not None:
                return found
        return None
    if normalizer.get("type") != "BertNormalizer":
        return None
    lower = bool(normalizer.get("lowercase", True))
    strip = normalizer.get("strip_accents")
    if strip is not None and bool(strip) != lower:
        raise DataError(
            f"{path}: BertNormalizer has strip_accents={strip} with lowercase={lower}; this tokenizer strips "
            "accents exactly when it lowercases (set strip_accents to null)"
        )
    return lower


def _config_lowercase(path: Path) -> bool | None:
    """``do_lower_case`` of a transformers ``tokenizer_config.json``; None when the file or key is absent."""
    if not path.is_file():
        return None
    doc = _read_json(path)
    value = doc.get("do_lower_case") if isinstance(doc, dict) else None
    if value is not None and not isinstance(value, bool):
        raise DataError(f"{path}: do_lower_case is {value!r}; set it to true or false")
    return value
