"""core/tokenizer.py against its oracles: HF ``tokenizers`` (the saved tokenizer.json, BertWordPieceTokenizer
over the saved vocab.txt) and ``transformers``' BertTokenizerFast; vocabulary building; files and refusals."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import unicodedata
from pathlib import Path

import pytest

from dualkit.core.errors import DataError, SpecError
from dualkit.core.tokenizer import SPECIAL_TOKENS, WordPiece, build_vocab, pre_tokenize

tokenizers = pytest.importorskip("tokenizers")

# Text that exercises every step: accents, CJK (a compatibility ideograph, extension B, and U+2B820 which
# tokenizers does not count as CJK), punctuation of other scripts, controls, odd whitespace, special tokens
# written in the text, final sigma, dotted I, long words, emoji, Hangul (NFD splits it into jamo).
TRICKY = [
    "Müller, Ångström and Ærø visited São Paulo; naïve café façade résumé ÉCOLE.",
    "北京欢迎你！東京都「渋谷」、漢字かな交じり文。豈\U00020000\U0002b820x",
    "«Bonjour» ¿Qué tal? ¡Hola! „Anführung“ ‘single’ — dash … ellipsis · middot",
    "Arabic: مرحبا، كيف حالك؟ Hindi: नमस्ते। Greek: ΟΔΟΣ Σίσυφος; Russian: Привет, мир!",
    "ctrl\x00chars\x01here\x7f zero\u200bwidth\ufeffbom rep\ufffdlacement soft\xadhyphen",
    "tab\there\r\nnew line\u00a0nbsp\u3000ideographic\u2028line\u2029para\x0bvt\x0cff\x85nel",
    "hello[MASK]world [CLS] x[SEP]y [mask] [UNK][PAD] [ MASK ]",
    "İstanbul ISTANBUL ıi ß ẞ ﬁ ǅ Ⅻ ① ㎏ ﬀ",
    "a" * 100 + " " + "b" * 101 + " " + "c" * 99 + "d",
    "emoji 😀👍🏽 🥰 flags 🇫🇷 and ZWJ 👩\u200d💻 symbols ☃ ♥ ∑ √ ≠ ±",
    "한국어 텍스트입니다. Tiếng Việt có dấu. ภาษาไทย",
    "e\u0301 a\u0308 n\u0303 combining\u0336struck Z\u0351\u0362a\u0307",
]


def stdlib_docstrings(limit: int = 300) -> list[str]:
    """The docstrings of the first ``limit`` standard-library modules (by file name) that have one."""
    found = re.compile(r"\A(?:\s|#[^\n]*\n)*[rRuU]?(\"\"\"|''')(.*?)\1", re.DOTALL)
    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        match = found.match(path.read_text(encoding="utf-8", errors="replace")[:20000])
        if match and match.group(2).strip():
            out.append(match.group(2))
            if len(out) == limit:
                break
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)] + stdlib_docstrings()


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def saved(request, corpus, tmp_path_factory) -> tuple[WordPiece, Path]:
    """A tokenizer built from the corpus and saved; (tokenizer, folder)."""
    tok = WordPiece.build(corpus + TRICKY, vocab_size=3000, min_frequency=2, lowercase=request.param)
    folder = tmp_path_factory.mktemp("tok") / ("uncased" if request.param else "cased")
    tok.save(folder)
    return tok, folder


def hf_tokenizers(tok: WordPiece, folder: Path) -> dict:
    return {
        "tokenizer.json": tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")),
        "BertWordPieceTokenizer": tokenizers.BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=tok.lowercase),
    }


# --------------------------------------------------------------------------- encoding = HF's


def test_stdlib_docs_encode_as_hf_tokenizers(saved, corpus):
    tok, folder = saved
    mine = [tok.encode(doc) for doc in corpus]
    assert sum(map(len, mine)) > 100_000
    unk = sum(ids.count(tok.unk_id) for ids in mine)
    assert unk < 0.001 * sum(map(len, mine))  # the vocabulary covers its own text
    for name, hf in hf_tokenizers(tok, folder).items():
        theirs = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
        bad = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
        assert not bad, f"{name} differs on document {bad[0]}"
        with_specials = hf.encode(corpus[0]).ids  # the post-processor adds [CLS] ... [SEP]
        assert with_specials == [tok.cls_id, *mine[0], tok.sep_id]


def test_non_ascii_text_encodes_as_hf_tokenizers(saved):
    tok, folder = saved
    for name, hf in hf_tokenizers(tok, folder).items():
        for text in TRICKY:
            assert tok.encode(text) == hf.encode(text, add_special_tokens=False).ids, (name, text)
            if not any(special in text for special in SPECIAL_TOKENS):  # HF splits those off before normalising
                words = hf.pre_tokenizer.pre_tokenize_str(hf.normalizer.normalize_str(text))
                assert tok.pre_tokenize(text) == [w for w, _ in words], (name, text)


def test_character_classes_match_hf_on_every_code_point():
    """Cleaning, CJK spacing, accent stripping, lowercasing and punctuation splitting of each code point in
    planes 0-2 (and every 97th above), each between two letters, as tokenizers' BertNormalizer and
    BertPreTokenizer do."""
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    points = [c for c in range(0x30000) if not 0xD800 <= c <= 0xDFFF] + list(range(0x30000, 0x110000, 97))
    for lowercase in (False, True):
        if lowercase:
            # Lowercasing and NFD use Python's unicodedata: code points it does not know yet may differ
            # (tokenizers' Rust tables are newer), and tokenizers does not decompose U+11938.
            points = [c for c in points if unicodedata.category(chr(c)) != "Cn" and c != 0x11938]
        text = "".join("x" + chr(c) for c in points)
        norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase)
        theirs = [w for w, _ in BertPreTokenizer().pre_tokenize_str(norm.normalize_str(text))]
        assert pre_tokenize(text, lowercase) == theirs


def test_words_and_subwords(saved):
    tok, _ = saved
    assert (
        tok.encode_word("U.S.") == tok.encode("U.S.") == [i for w in ("U", ".", "S", ".") for i in tok.encode_word(w)]
    )
    assert len(tok.encode_word("U.S.")) == 4
    if tok.lowercase:
        assert tok.pre_tokenize("Müller") == ["muller"]  # normalised inside: a CoNLL token works as given
        assert "".join(t.removeprefix("##") for t in tok.tokenize_word("Müller")) == "muller"
    else:
        assert tok.pre_tokenize("Müller") == ["Müller"]
    assert [tok.vocab[i] for i in tok.encode_word("Müller")] == tok.tokenize_word("Müller")
    assert tok.encode_word("\x00\u200b") == []  # nothing left after cleaning
    assert tok.encode_word("a" * 101) == [tok.unk_id]  # over max_input_chars_per_word
    assert tok.unk_id not in tok.encode_word("a" * 100)
    assert "\U0001f680" not in tok.token_to_id and "x" in tok.token_to_id
    assert tok.encode_word("x\U0001f680y") == [tok.unk_id]  # one unknown character: the whole word
    assert tok.encode("a [MASK] b") == tok.encode("a") + [tok.mask_id] + tok.encode("b")
    assert tok.mask_id not in tok.encode("[mask]")  # special tokens are matched case-sensitively


def test_special_ids_decode_and_fingerprint(saved):
    tok, _ = saved
    assert tok.vocab[:5] == list(SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == frozenset(range(5)) and len(tok) == len(tok.vocab) == 3000
    text = "The quick brown fox jumps over the lazy dog."
    ids = [tok.cls_id, *tok.encode(text), tok.sep_id, tok.pad_id]
    expected = "the quick brown fox jumps over the lazy dog ." if tok.lowercase else text.replace(".", " .")
    assert tok.decode(ids) == expected
    assert tok.decode(ids, skip_special=False).startswith("[CLS] ")
    with pytest.raises(SpecError, match="outside this vocabulary"):
        tok.decode([len(tok)])
    assert tok.fingerprint() == WordPiece(list(tok.vocab), tok.lowercase).fingerprint()
    assert tok.fingerprint() != WordPiece(list(tok.vocab), not tok.lowercase).fingerprint()
    assert tok.fingerprint() != WordPiece(tok.vocab[:-1], tok.lowercase).fingerprint()


# --------------------------------------------------------------------------- building


def test_build_is_deterministic_and_free_of_document_order(corpus):
    docs = corpus[:79]  # pydoc topics
    first = build_vocab(docs, 1500, 2, True)
    assert build_vocab(docs, 1500, 2, True) == first
    assert build_vocab(docs[::-1], 1500, 2, True) == first  # a function of the word counts only
    assert build_vocab(docs[40:] + docs[:40], 1500, 2, True) == first
    assert len(first) == 1500 and len(set(first)) == 1500


def test_build_does_not_depend_on_string_hashing(tmp_path):
    """Set and dict order change with PYTHONHASHSEED; the vocabulary must not."""
    script = (
        "import sys; from pydoc_data.topics import topics; from dualkit.core.tokenizer import WordPiece; "
        "t = WordPiece.build([topics[k] for k in sorted(topics)][:30], 800, 2, True); print(t.fingerprint())"
    )
    prints = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        prints.add(done.stdout.strip())
    assert len(prints) == 1


def test_build_layout_tie_rule_and_min_frequency():
    # specials, then every character as c (code-point order), then as ##c, then merges
    vocab = build_vocab(["ab cd"], vocab_size=5 + 8 + 1, min_frequency=1, lowercase=True)
    assert vocab[:5] == list(SPECIAL_TOKENS)
    assert vocab[5:13] == ["a", "b", "c", "d", "##a", "##b", "##c", "##d"]
    assert vocab[13:] == ["ab"]  # ("a", "##b") and ("c", "##d") tie at 1: the smaller pair wins
    vocab = build_vocab(["cd cd ab"], 5 + 8 + 2, 1, True)
    assert vocab[13:] == ["cd", "ab"]  # highest count first
    assert build_vocab(["cd cd ab"], 100, 2, True)[13:] == ["cd"]  # "ab" occurs once: below min_frequency
    assert build_vocab(["cd cd ab"], 100, 3, True)[13:] == []
    # merges go on over merged symbols: ("##b", "##c") x4 first, then ("a", "##bc") x3, ("x", "##bc") x1
    assert build_vocab(["abc abc abc xbc"], 100, 1, True)[13:] == ["##bc", "abc", "xbc"]
    assert build_vocab(["Héllo"], 100, 1, False)[5:9] == ["H", "l", "o", "é"]  # cased: kept as written
    assert build_vocab(["Héllo"], 100, 1, True)[5:9] == ["e", "h", "l", "o"]  # uncased: accent stripped


def test_build_respects_vocab_size_when_characters_do_not_fit():
    # a x3, b x2, c x1: room for two characters, so c goes, and words with c are not merged
    vocab = build_vocab(["aaa bb c ab ac"], vocab_size=5 + 4 + 1, min_frequency=1, lowercase=True)
    assert vocab[5:9] == ["a", "b", "##a", "##b"]
    assert len(vocab) == 10
    tok = WordPiece(vocab)
    assert tok.encode("ac") == [tok.unk_id]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vocab_size": 4}, "vocab_size must be at least 5"),
        ({"min_frequency": 0}, "min_frequency must be at least 1"),
        ({"texts": "one string"}, "got one str"),
    ],
)
def test_build_refuses_bad_arguments(kwargs, message):
    args = {"texts": ["a b"], "vocab_size": 100, "min_frequency": 1, "lowercase": True, **kwargs}
    with pytest.raises(SpecError, match=message):
        build_vocab(**args)


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(saved, corpus, tmp_path):
    tok, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1] == tok.vocab  # id = line number
    docs = corpus[::10] + TRICKY
    expected = [tok.encode(d) for d in docs]
    for path in (folder, folder / "vocab.txt", folder / "tokenizer.json"):
        # a lone vocab.txt carries no case flag: it takes the argument
        back = WordPiece.load(path, lowercase=tok.lowercase if path.name == "vocab.txt" else not tok.lowercase)
        assert back.vocab == tok.vocab and back.lowercase == tok.lowercase, path
        assert back.fingerprint() == tok.fingerprint()
        assert [back.encode(d) for d in docs] == expected
    only_json = tmp_path / "json-only"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    assert WordPiece.load(only_json, lowercase=not tok.lowercase).fingerprint() == tok.fingerprint()


def test_load_reads_the_case_flag_from_config_then_tokenizer_json(saved, tmp_path):
    tok, folder = saved
    both = tmp_path / "both"
    both.mkdir()
    for name in ("vocab.txt", "tokenizer.json"):
        (both / name).write_bytes((folder / name).read_bytes())
    assert WordPiece.load(both, lowercase=not tok.lowercase).lowercase == tok.lowercase  # tokenizer.json's
    (both / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": not tok.lowercase}))
    assert WordPiece.load(both, lowercase=tok.lowercase).lowercase == (not tok.lowercase)  # config first
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "vocab.txt").write_bytes((folder / "vocab.txt").read_bytes())
    assert WordPiece.load(alone, lowercase=False).lowercase is False
    assert WordPiece.load(alone, lowercase=True).lowercase is True


def test_transformers_reads_our_files_and_we_read_its(saved, corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok, folder = saved
    texts = corpus[:30] + TRICKY
    expected = [[tok.cls_id, *tok.encode(t), tok.sep_id] for t in texts]
    # transformers 5 names the vocab.txt argument `vocab` (vocab_file= is ignored there)
    fast = transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=tok.lowercase)
    assert len(fast) == len(tok)
    assert fast(texts)["input_ids"] == expected
    auto = transformers.AutoTokenizer.from_pretrained(str(folder))  # our tokenizer_config.json + tokenizer.json
    assert auto(texts)["input_ids"] == expected
    fast.save_pretrained(str(tmp_path / "hf"))  # transformers 5 writes tokenizer.json and tokenizer_config.json
    back = WordPiece.load(tmp_path / "hf", lowercase=not tok.lowercase)
    assert back.vocab == tok.vocab and back.lowercase == tok.lowercase


# --------------------------------------------------------------------------- refusals

VOCAB = "\n".join([*SPECIAL_TOKENS, "a", "##b"]) + "\n"


def write_bpe(path: Path) -> None:
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.save(str(path))


def write_unigram(path: Path) -> None:
    tokenizers.Tokenizer(tokenizers.models.Unigram([("a", -1.0), ("b", -2.0)], 0)).save(str(path))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("vocab.txt", VOCAB.replace("[MASK]\n", ""), r"lacks \[MASK\]"),
        ("vocab.txt", VOCAB.replace("[CLS]\n", "").replace("[SEP]\n", ""), r"lacks \[CLS\] \[SEP\]"),
        ("vocab.txt", "", "the file is empty"),
        ("vocab.txt", "\n \n", "the file is empty"),
        ("vocab.txt", VOCAB + "a\n", r"line 8 repeats 'a' from line 6"),
        ("vocab.txt", VOCAB.replace("a\n", "a\n\n"), "line 7 is blank"),
        ("vocab.txt", VOCAB.encode() + b"caf\xe9\n", "line 8 is not UTF-8"),
        ("tokenizer.json", write_bpe, "the tokenizer model is BPE, not WordPiece"),
        ("tokenizer.json", write_unigram, "the tokenizer model is Unigram, not WordPiece"),
        ("tokenizer.json", "{not json", "not valid JSON"),
        ("tokenizer.json", "", "the file is empty"),
        (
            "tokenizer.json",
            '{"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 0}}}',
            "id 0 is given to both",
        ),
        ("tokenizer.json", '{"model": {"type": "WordPiece", "vocab": {"a": 0, "a": 1}}}', "key 'a' appears twice"),
        (
            "tokenizer.json",
            '{"model": {"type": "WordPiece", "continuing_subword_prefix": "@@", "vocab": {"a": 0}}}',
            "continuing_subword_prefix is '@@'",
        ),
        (
            "tokenizer.json",
            json.dumps({"model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(SPECIAL_TOKENS[:4])}}}),
            r"lacks \[MASK\]",
        ),
    ],
)
def test_refusals_are_one_line_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    for target in (path, tmp_path):  # the file, and the folder holding it
        with pytest.raises(DataError, match=message) as caught:
            WordPiece.load(target)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_refuses_missing_paths_and_bad_vocabularies(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        WordPiece.load(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="holds neither vocab.txt nor tokenizer.json"):
        WordPiece.load(tmp_path)
    with pytest.raises(DataError, match=r"the vocabulary lacks \[UNK\]"):
        WordPiece(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"])
    with pytest.raises(DataError, match="appears twice"):
        WordPiece([*SPECIAL_TOKENS, "a", "a"])
    with pytest.raises(DataError, match="non-empty, one line"):
        WordPiece([*SPECIAL_TOKENS, "a\nb"])
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "vocab.txt").write_text(VOCAB)
    (config / "tokenizer_config.json").write_text('{"do_lower_case": "yes"}')
    with pytest.raises(DataError, match="do_lower_case is 'yes'"):
        WordPiece.load(config)
