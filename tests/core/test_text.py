"""Text data: reading folders, CoNLL and CoNLL-U files, tag schemes, splits, label alignment, MLM blocks, batches."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dualkit.core.batches import make_rng
from dualkit.core.corpora import stdlib_documents
from dualkit.core.errors import DataError, SpecError
from dualkit.core.specs import TextDataSpec
from dualkit.core.text import (
    IGNORE,
    TokenData,
    detect_scheme,
    encode_documents,
    encode_tagged,
    eval_text_batches,
    find_split_files,
    label_list,
    load_tag_corpus,
    normalize_tags,
    read_conll,
    read_conllu,
    read_text_folder,
    split_indices,
    text_batches,
)
from dualkit.core.tokenizer import WordPiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "new", "york", "is", "big", "un", "##believ", "##able", "a", "##b", "##c", "."]
VOCAB = SPECIALS + WORDS  # ids: the=5 cat=6 sat=7 new=8 york=9 is=10 big=11 un=12 ##believ=13 ##able=14 ...
ID = {t: i for i, t in enumerate(VOCAB)}


@pytest.fixture
def tok():
    return WordPiece(VOCAB)


def write(path, text: str, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- text folders


def test_read_text_folder_sorted_recursive_split_on_blank_lines(tmp_path):
    write(tmp_path / "b.txt", "second file.\n")
    write(tmp_path / "a" / "z.txt", "\ufefffirst doc\nline two\r\n\r\n  \t\nsecond doc\n\n\n")
    write(tmp_path / "a.md", "not text")
    assert read_text_folder(tmp_path) == ["first doc\nline two", "second doc", "second file."]


def test_read_text_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        read_text_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="no .txt file"):
        read_text_folder(tmp_path)
    write(tmp_path / "ok.txt", "fine\n")
    bad = write(tmp_path / "bad.txt", "caf\xe9 au lait", encoding="latin-1")
    with pytest.raises(DataError) as e:
        read_text_folder(tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and "byte offset 3" in msg and "0xe9" in msg and "\n" not in msg


# --------------------------------------------------------------------------- CoNLL


CONLL_2003 = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "EU NNP B-NP I-ORG\n"
    "rejects\tVBZ\tB-VP\tO\n"
    "German JJ  B-NP   I-MISC\n"
    ". . O O\n"
    "\n"
    "\n"
    "Peter NNP B-NP I-PER\n"
    "Blackburn NNP I-NP I-PER\n"
    "-DOCSTART- -X- -X- O\n"
    "Brussels NNP B-NP I-LOC\n"
)


def test_read_conll_2003(tmp_path):
    path = write(tmp_path / "eng.train", CONLL_2003)
    assert read_conll(path) == [
        (["EU", "rejects", "German", "."], ["I-ORG", "O", "I-MISC", "O"]),
        (["Peter", "Blackburn"], ["I-PER", "I-PER"]),
        (["Brussels"], ["I-LOC"]),
    ]
    assert read_conll(path, column=1)[1] == (["Peter", "Blackburn"], ["NNP", "NNP"])


@pytest.mark.parametrize(
    "text, column, line, words",
    [
        ("a B-X\nb\n", -1, 2, "one column"),
        ("a x B-X\n\nb B-X\n", -1, 3, "2 columns, but line 1 has 3"),
        ("a B-X\n", 5, 1, "no tag column 5"),
        ("a B-X\n", 0, 1, "column 0 is the token"),
    ],
)
def test_read_conll_malformed_names_file_and_line(tmp_path, text, column, line, words):
    path = write(tmp_path / "train.txt", text)
    with pytest.raises(DataError) as e:
        read_conll(path, column)
    assert f"{path}:{line}: " in str(e.value) and words in str(e.value)


def test_read_conll_empty_file(tmp_path):
    with pytest.raises(DataError, match="no sentences"):
        read_conll(write(tmp_path / "train.txt", "-DOCSTART- O\n\n\n"))


CONLLU = (
    "# sent_id = 1\n"
    "# text = I'm here.\n"
    "1-2\tI'm\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_\n"
    "2\t'm\tbe\tAUX\tVBP\t_\t3\tcop\t_\t_\n"
    "3\there\there\tADV\tRB\t_\t0\troot\t_\t_\n"
    "3.1\tis\tbe\tAUX\t_\t_\t_\t_\t3:cop\t_\n"
    "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n"
    "\n"
    "# sent_id = 2\n"
    "1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_\n"
)


def test_read_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    path = write(tmp_path / "x-ud-train.conllu", CONLLU)
    assert read_conllu(path) == [
        (["I", "'m", "here", "."], ["PRON", "AUX", "ADV", "PUNCT"]),
        (["New York"], ["PROPN"]),
    ]
    assert read_conllu(path, column=4)[0][1] == ["PRP", "VBP", "RB", "."]


def test_read_conllu_refusals(tmp_path):
    path = write(tmp_path / "t.conllu", "1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: 9 tab-separated columns"):
        read_conllu(path)
    path = write(tmp_path / "u.conllu", "# c\n1\tI\tI\tPRON\t_\t_\t3\tnsubj\t_\t_\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: column 4 \(XPOS\) is '_'"):
        read_conllu(path, column=4)
    with pytest.raises(DataError, match="cannot be the tag"):
        read_conllu(path, column=1)


# --------------------------------------------------------------------------- tag schemes


def test_iob1_to_bio():
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "I-MISC", "O", "B-PER"]
    bio = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "B-MISC", "O", "B-PER"]
    assert detect_scheme([iob1]) == "iob1"
    assert normalize_tags(iob1, "iob1") == bio
    assert normalize_tags(iob1, "auto") == bio


def test_iobes_and_bilou_to_bio():
    iobes = ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-ORG", "E-ORG", "S-ORG"]
    bio = ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC", "B-ORG", "I-ORG", "B-ORG"]
    assert detect_scheme([iobes]) == "iobes"
    assert normalize_tags(iobes, "iobes") == bio
    bilou = [t.replace("S-", "U-").replace("E-", "L-") for t in iobes]
    assert detect_scheme([bilou]) == "bilou"
    assert normalize_tags(bilou, "bilou") == bio


def test_bio_kept_and_broken_bio_repaired():
    bio = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]
    assert detect_scheme([bio, ["O"]]) == "bio"
    assert normalize_tags(bio, "bio") == bio
    assert normalize_tags(["O", "I-PER", "I-LOC"], "bio") == ["O", "B-PER", "B-LOC"]


def test_entities_survive_conversion_as_seqeval_reads_them():
    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    iobes = ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-ORG", "E-ORG", "O", "S-MISC"]
    iob1 = ["I-PER", "O", "I-LOC", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "O", "I-MISC"]
    want = seqeval.get_entities(normalize_tags(iobes, "iobes"))
    assert seqeval.get_entities(iobes) == want  # seqeval reads IOBES itself
    assert want == [("PER", 0, 0), ("LOC", 2, 4), ("LOC", 5, 5), ("ORG", 6, 7), ("MISC", 9, 9)]
    assert seqeval.get_entities(normalize_tags(iob1, "iob1")) == want


def test_plain_labels_and_invalid_tags():
    assert detect_scheme([["NOUN", "VERB", "X"], ["-LRB-"]]) == "none"
    assert normalize_tags(["NOUN", "X"], "none") == ["NOUN", "X"]
    assert normalize_tags(["NOUN", "X"], "auto") == ["NOUN", "X"]
    with pytest.raises(DataError) as e:
        normalize_tags(["B-PER", "X-PER"], "bio", where=["f.txt:3", "f.txt:4"])
    assert str(e.value).startswith("f.txt:4: tag 'X-PER'")
    with pytest.raises(DataError, match="tag 'S-PER'"):
        normalize_tags(["S-PER"], "bio")
    with pytest.raises(DataError, match="tag 'MISC'"):
        normalize_tags(["B-PER", "MISC"], "auto")
    with pytest.raises(SpecError, match="data.scheme"):
        normalize_tags(["O"], "bioes")


def test_label_list_puts_o_first():
    sents = [(["a", "b"], ["I-PER", "O"]), (["c"], ["B-LOC"]), (["d"], ["B-PER"])]
    assert label_list(sents) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert label_list([(["a"], ["VERB"]), (["b"], ["ADJ"])]) == ["ADJ", "VERB"]


# --------------------------------------------------------------------------- corpora and splits


def test_split_indices_seeded_disjoint_and_sized():
    tr, va, te = split_indices(50, 0.1, 0.2, "s")
    assert (len(tr), len(va), len(te)) == (35, 5, 10)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(50))
    again = split_indices(50, 0.1, 0.2, "s")
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))
    assert not np.array_equal(te, split_indices(50, 0.1, 0.2, "other")[2])
    assert [len(x) for x in split_indices(5, 0.01, 0.0, "s")] == [4, 1, 0]  # at least one when f > 0
    with pytest.raises(DataError, match="lower data.val_fraction"):
        split_indices(2, 0.5, 0.5, "s")
    with pytest.raises(SpecError, match="data.test_fraction"):
        split_indices(10, 0.1, 1.0, "s")


@pytest.mark.parametrize(
    "names, train, val, test",
    [
        (["eng.train", "eng.testa", "eng.testb", "README"], "eng.train", "eng.testa", "eng.testb"),
        (["train.txt", "valid.txt", "test.txt"], "train.txt", "valid.txt", "test.txt"),
        (["wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated"], "wnut17train.conll",
         "emerging.dev.conll", "emerging.test.annotated"),
        (["train.conll", ".test.conll", "test.json"], "train.conll", None, None),
    ],
)  # fmt: skip
def test_find_split_files_conll_names(tmp_path, names, train, val, test):
    for name in names:
        write(tmp_path / name, "a O\n")
    found = find_split_files(tmp_path, "conll")
    roles = {"train": train, "val": val, "test": test}
    assert {role: p.name for role, p in found.items()} == {r: n for r, n in roles.items() if n}


def test_find_split_files_conllu_and_refusals(tmp_path):
    for name in ("en_ewt-ud-train.conllu", "en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu", "en_ewt-ud-train.txt"):
        write(tmp_path / "ud" / name, "x")
    found = find_split_files(tmp_path / "ud", "conllu")
    assert {r: p.name for r, p in found.items()} == {
        "train": "en_ewt-ud-train.conllu",
        "val": "en_ewt-ud-dev.conllu",
        "test": "en_ewt-ud-test.conllu",
    }
    write(tmp_path / "two" / "train.txt", "a O\n")
    write(tmp_path / "two" / "train.conll", "a O\n")
    with pytest.raises(DataError, match="2 train files"):
        find_split_files(tmp_path / "two", "conll")
    write(tmp_path / "none" / "notes.txt", "a O\n")
    with pytest.raises(DataError, match="no training file"):
        find_split_files(tmp_path / "none", "conll")


def test_load_tag_corpus_conll_detects_scheme_over_the_corpus(tmp_path):
    write(tmp_path / "eng.train", CONLL_2003)
    write(tmp_path / "eng.testa", "Paris NNP B-NP I-LOC\n")
    write(tmp_path / "eng.testb", "Rome NNP B-NP B-LOC\nParis NNP B-NP I-LOC\n")  # BIO-looking alone
    spec = TextDataSpec(name="conll", root=str(tmp_path))
    corpus = load_tag_corpus(spec)
    assert corpus.scheme == "iob1"
    assert corpus.train[0] == (["EU", "rejects", "German", "."], ["B-ORG", "O", "B-MISC", "O"])
    assert corpus.val == [(["Paris"], ["B-LOC"])]
    assert corpus.test == [(["Rome", "Paris"], ["B-LOC", "I-LOC"])]
    assert corpus.files["val"].endswith("eng.testa")
    write(tmp_path / "eng.testa", "Paris NNP B-NP I-LOC\n\nNice NNP B-NP X-LOC\n")
    with pytest.raises(DataError) as e:
        load_tag_corpus(spec)
    assert f"{tmp_path / 'eng.testa'}:3: tag 'X-LOC'" in str(e.value)


def test_load_tag_corpus_carves_missing_splits(tmp_path):
    text = "".join(f"w{i} B-X\nv{i} I-X\n\n" for i in range(20))
    write(tmp_path / "train.txt", text)
    spec = TextDataSpec(name="conll", root=str(tmp_path), val_fraction=0.1, test_fraction=0.25)
    corpus = load_tag_corpus(spec)
    assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (13, 2, 5)
    assert corpus.scheme == "bio" and corpus.files["test"] == "split off train (0.25)"
    words = sorted(w[0] for part in (corpus.train, corpus.val, corpus.test) for w, _ in part)
    assert words == sorted(f"w{i}" for i in range(20))
    again = load_tag_corpus(spec)
    assert (again.train, again.val, again.test) == (corpus.train, corpus.val, corpus.test)


def test_load_tag_corpus_conllu_upos_by_default(tmp_path):
    write(tmp_path / "x-ud-train.conllu", CONLLU)
    write(tmp_path / "x-ud-dev.conllu", CONLLU)
    write(tmp_path / "x-ud-test.conllu", CONLLU)
    corpus = load_tag_corpus(TextDataSpec(name="conllu", root=str(tmp_path)))
    assert corpus.scheme == "none" and corpus.train[1] == (["New York"], ["PROPN"])


def test_load_tag_corpus_pyroles_and_refusals(tmp_path):
    corpus = load_tag_corpus(TextDataSpec(name="pyroles", limit_words=3000))
    n = len(corpus.train) + len(corpus.val) + len(corpus.test)
    assert len(corpus.val) == round(0.1 * n) and len(corpus.test) == round(0.1 * n)
    assert corpus.scheme == "bio" and "standard library" in corpus.source
    with pytest.raises(DataError, match="not a tagging corpus"):
        load_tag_corpus(TextDataSpec(name="stdlib"))
    with pytest.raises(DataError, match="data.root=FOLDER"):
        load_tag_corpus(TextDataSpec(name="conll"))


# --------------------------------------------------------------------------- encoding


def test_encode_tagged_first_subword_carries_the_label(tok):
    labels = ["O", "B-LOC", "I-LOC"]
    sents = [(["The", "unbelievable", "New", "York"], ["O", "O", "B-LOC", "I-LOC"]), (["cat"], ["O"])]
    data = encode_tagged(sents, tok, labels, max_length=9)
    c, s, p, x = ID["[CLS]"], ID["[SEP]"], ID["[PAD]"], IGNORE
    assert data.input_ids.tolist() == [
        [c, ID["the"], ID["un"], ID["##believ"], ID["##able"], ID["new"], ID["york"], s, p],
        [c, ID["cat"], s, p, p, p, p, p, p],
    ]
    assert data.labels.tolist() == [[x, 0, 0, x, x, 1, 2, x, x], [x, 0, x, x, x, x, x, x, x]]
    assert data.attention_mask.tolist() == [[1] * 8 + [0], [1, 1, 1] + [0] * 6]
    assert np.array_equal(data.attention_mask, (data.input_ids != tok.pad_id).astype(np.int64))
    assert data.word_ids.tolist() == [[-1, 0, 1, 1, 1, 2, 3, -1, -1], [-1, 0, -1, -1, -1, -1, -1, -1, -1]]
    assert data.source_ids.tolist() == [0, 1]
    assert all(a.dtype == np.int64 for a in (data.input_ids, data.attention_mask, data.labels, data.word_ids))
    assert data.stats == {
        "sentences": 2,
        "words": 5,
        "rows": 2,
        "split_sentences": 0,
        "cut_words": 0,
        "cut_subwords": 0,
    }


def test_encode_tagged_long_sentences_lose_no_gold_word(tok):
    labels = ["O", "B-X", "I-X"]
    words = ["the", "cat", "sat", "new", "york", "is", "big", "a"]
    tags = ["O", "O", "O", "B-X", "I-X", "I-X", "O", "O"]
    data = encode_tagged([(words, tags)], tok, labels, max_length=6)  # 4 subwords per row
    # greedy rows would be [the cat sat new][york is big a]; the cut before I-X moves back before B-X
    assert data.word_ids[:, 1:-1].tolist() == [[0, 1, 2, -1], [3, 4, 5, 6], [7, -1, -1, -1]]
    scored = data.labels != IGNORE
    assert sorted(data.word_ids[scored].tolist()) == list(range(len(words)))
    assert [labels[i] for i in data.labels[scored]] == tags
    assert data.source_ids.tolist() == [0, 0, 0] and data.stats["split_sentences"] == 1
    one_long = encode_tagged([(["unbelievable", "cat"], ["B-X", "O"])], tok, labels, max_length=4)
    assert one_long.input_ids.tolist() == [[2, ID["un"], ID["##believ"], 3], [2, ID["cat"], 3, 0]]
    assert one_long.labels.tolist() == [[IGNORE, 1, IGNORE, IGNORE], [IGNORE, 0, IGNORE, IGNORE]]
    assert one_long.stats["cut_words"] == 1 and one_long.stats["cut_subwords"] == 1


def test_encode_tagged_refusals_and_unk_for_empty_words(tok):
    data = encode_tagged([(["cat", "\u200b"], ["O", "O"])], tok, ["O"], 8)
    assert data.input_ids[0, :4].tolist() == [2, ID["cat"], tok.unk_id, 3]
    with pytest.raises(DataError, match="tag 'B-Y', which is not among"):
        encode_tagged([(["cat"], ["B-Y"])], tok, ["O"], 8)
    with pytest.raises(SpecError, match="data.max_length must be at least 3"):
        encode_tagged([(["cat"], ["O"])], tok, ["O"], 2)
    empty = encode_tagged([], tok, ["O"], 8)
    assert empty.input_ids.shape == (0, 8) and len(empty) == 0


def test_encode_documents_group_texts_layout(tok):
    docs = ["the cat sat", "", "new york is big .", "a"]
    data = encode_documents(docs, tok, max_length=5)  # blocks of 3
    c, s, p = ID["[CLS]"], ID["[SEP]"], ID["[PAD]"]
    stream = [ID[w] for w in "the cat sat".split()] + [s] + [ID[w] for w in "new york is big .".split()] + [s, ID["a"]]
    assert data.input_ids.tolist() == [
        [c, *stream[0:3], s],
        [c, *stream[3:6], s],
        [c, *stream[6:9], s],
        [c, *stream[9:11], s, p],
    ]
    assert data.attention_mask.tolist() == [[1] * 5] * 3 + [[1, 1, 1, 1, 0]]
    assert (data.labels == IGNORE).all() and (data.word_ids == -1).all()
    # the document each block starts in (index in docs; a [SEP] belongs to the document after it)
    assert data.source_ids.tolist() == [0, 2, 2, 3]
    assert data.stats == {"documents": 4, "tokens": 11, "rows": 4, "padded": 1}
    assert len(encode_documents(["", ""], tok, 5)) == 0


def test_token_data_subset_and_shape_checks(tok):
    data = encode_documents(["the cat sat new york is big"], tok, 4)
    sub = data.subset(np.array([2, 0]))
    assert sub.input_ids.tolist() == [data.input_ids[2].tolist(), data.input_ids[0].tolist()]
    assert sub.source_ids.tolist() == [0, 0] and len(sub) == 2 and sub.max_length == 4
    plain = TokenData(np.ones((2, 3)), np.ones((2, 3)), np.full((2, 3), IGNORE))
    assert plain.word_ids.tolist() == [[-1] * 3] * 2 and plain.source_ids.tolist() == [0, 1]
    assert plain.input_ids.dtype == np.int64
    with pytest.raises(DataError, match="labels has shape"):
        TokenData(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 4)))


# --------------------------------------------------------------------------- batches


def _rows(n: int) -> TokenData:
    ids = np.arange(n * 4, dtype=np.int64).reshape(n, 4) + 5
    return TokenData(ids, np.ones_like(ids), ids * 10)


def test_text_batches_seeded_and_cover_every_row_once():
    data = _rows(23)
    first = list(text_batches(data, 5, make_rng(3, "shuffle")))
    again = list(text_batches(data, 5, make_rng(3, "shuffle")))
    assert [len(x) for x, _ in first] == [5, 5, 5, 5, 3]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    x = np.concatenate([x for x, _ in first])
    y = np.concatenate([y for _, y in first])
    assert np.array_equal(y, x * 10) and x.dtype == np.int64 and y.dtype == np.int64
    order = make_rng(3, "shuffle").permutation(23)  # the draw epoch_batches makes for images
    assert np.array_equal(x, data.input_ids[order])
    rng = make_rng(3, "shuffle")
    epoch1 = np.concatenate([x for x, _ in text_batches(data, 5, rng)])
    epoch2 = np.concatenate([x for x, _ in text_batches(data, 5, rng)])
    assert not np.array_equal(epoch1, epoch2) and sorted(epoch2[:, 0]) == sorted(data.input_ids[:, 0])
    assert len(list(text_batches(data, 5, make_rng(3, "s"), drop_last=True))) == 4
    plain = np.concatenate([x for x, _ in text_batches(data, 5, make_rng(3, "s"), shuffle=False)])
    assert np.array_equal(plain, data.input_ids)


def test_eval_text_batches_in_order():
    assert list(eval_text_batches(7, 3)) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert list(eval_text_batches(0, 3)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(eval_text_batches(4, 0))


# --------------------------------------------------------------------------- the shipped corpora, end to end


def test_pyroles_encoded_with_a_built_vocabulary_keep_every_word_label():
    corpus = load_tag_corpus(TextDataSpec(name="pyroles", limit_words=3000))
    tok = WordPiece.build([" ".join(w) for w, _ in corpus.train], 400, 2, True)
    labels = label_list(corpus.train + corpus.val + corpus.test)
    data = encode_tagged(corpus.train, tok, labels, max_length=16)  # short rows: long lines are split
    assert data.stats["split_sentences"] > 0
    got: dict[tuple[int, int], str] = {}
    for r, c in zip(*np.nonzero(data.labels != IGNORE), strict=True):
        key = (int(data.source_ids[r]), int(data.word_ids[r, c]))
        assert key not in got  # each word scored once
        got[key] = labels[data.labels[r, c]]
    want = {(s, w): tag for s, (_, tags) in enumerate(corpus.train) for w, tag in enumerate(tags)}
    assert got == want
    assert np.array_equal(data.attention_mask, (data.input_ids != tok.pad_id).astype(np.int64))


def test_stdlib_blocks_hold_the_concatenated_stream():
    docs = stdlib_documents(3000)
    tok = WordPiece.build(docs, 500, 2, True)
    data = encode_documents(docs, tok, max_length=32)
    inner = data.input_ids[:, 1:][data.attention_mask[:, 1:] == 1]  # drop [CLS]; real tokens incl. [SEP]
    stream = []
    for d in docs:
        stream += ([tok.sep_id] if stream else []) + tok.encode(d)
    rows_sep = np.cumsum(data.attention_mask.sum(1) - 1) - 1  # where each row's closing [SEP] is in `inner`
    assert np.array_equal(np.delete(inner, rows_sep), np.array(stream))
    assert (data.input_ids[:, 0] == tok.cls_id).all() and len(data) == -(-len(stream) // 30)


def test_literal_special_tokens_in_text_are_not_padding(tok):
    data = encode_documents(["the [PAD] cat [MASK]"], tok, 8)
    assert data.input_ids[0, :6].tolist() == [2, ID["the"], tok.unk_id, ID["cat"], tok.mask_id, 3]
    assert np.array_equal(data.attention_mask, (data.input_ids != tok.pad_id).astype(np.int64))
