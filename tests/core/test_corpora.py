"""The shipped corpora: the standard library's documentation text and the roles of identifiers in its source."""

from __future__ import annotations

import platform

import pytest

from dualkit.core import corpora
from dualkit.core.corpora import ROLES, STRING_WORD, python_roles, source_roles, stdlib_documents, stdlib_files

SNIPPET = '''\
"""Module docstring: skipped, a line that is only a string."""
import os.path
import numpy as np
from collections import OrderedDict as OD, deque  # a comment
from typing import *


class Box(object):
    @staticmethod
    def __init__(self, size, *args, key=None, **kw):
        self.size = len(size)
        print("a string longer than twelve", 'ok', key=kw)


async def fetch(url, /) -> str:
    return await url.read()


def shadow(x):
    list = [x]
    total = (1 +
             2)
    return list, max(x, 1), lambda y: y + total


name = "héllo" ; value = name.upper().strip
'''

# each sentence: its words, a word with "/ROLE" carries B-ROLE, the rest O
EXPECTED = [
    "import os/IMPORT . path",
    "import numpy as np/IMPORT",
    "from collections import OrderedDict as OD/IMPORT , deque/IMPORT",
    "from typing import *",
    "class Box/CLASS ( object/BUILTIN ) :",
    "@ staticmethod/BUILTIN",
    "def __init__/FUNC ( self/PARAM , size/PARAM , * args/PARAM , key/PARAM = None , ** kw/PARAM ) :",
    "self . size/ATTR = len/BUILTIN ( size )",
    f"print/BUILTIN ( {STRING_WORD} , 'ok' , key = kw )",
    "async def fetch/FUNC ( url/PARAM , / ) -> str/BUILTIN :",
    "return await url . read/ATTR ( )",
    "def shadow/FUNC ( x/PARAM ) :",
    "list = [ x ]",  # `list` is bound in this file, so no occurrence of it is the builtin
    "total = ( 1 + 2 )",
    "return list , max/BUILTIN ( x , 1 ) , lambda y/PARAM : y + total",
    'name = "héllo" ; value = name . upper/ATTR ( ) . strip/ATTR',  # non-ASCII before: ast counts bytes
]


def parse_expected(line: str) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for item in line.split():
        word, _, role = item.rpartition("/") if "/" in item[1:] else (item, "", "")
        words.append(word)
        tags.append(f"B-{role}" if role else "O")
    return words, tags


def test_source_roles_exact_on_a_snippet():
    got = source_roles(SNIPPET)
    want = [parse_expected(line) for line in EXPECTED]
    for g, w in zip(got, want, strict=False):
        assert g == w
    assert len(got) == len(want)


def test_source_roles_crlf_and_unparsable():
    assert source_roles(SNIPPET.replace("\n", "\r\n")) == source_roles(SNIPPET)
    assert source_roles("def f(:\n") == []
    assert source_roles("") == []


def test_python_roles_deterministic_limited_and_complete():
    a = python_roles(20000)
    corpora._roles.cache_clear()  # rebuilt from the files, not served from the cache
    b = python_roles(20000)
    assert a == b and a is not b
    words = sum(len(w) for w, _ in a)
    assert 19000 < words <= 20000
    assert all(len(w) == len(t) and w for w, t in a)
    tags = {t for _, ts in a for t in ts}
    assert tags == {"O"} | {f"B-{r}" for r in ROLES}
    a[0][0].append("mutated")  # callers get copies: the cache is not changed
    assert python_roles(20000) == b


def test_stdlib_documents_deterministic_and_limited():
    from pydoc_data.topics import topics

    docs = stdlib_documents(70000)
    corpora._documents.cache_clear()
    assert stdlib_documents(70000) == docs
    assert sum(len(d.split()) for d in docs) == 70000
    assert len(set(docs)) == len(docs)
    assert docs[0] == corpora._RULE_LINE.sub("", topics[sorted(topics)[0]]).strip()
    assert not any(corpora._RULE_LINE.search(d) for d in docs[:5])  # reST rules ("-----") are dropped
    small = stdlib_documents(1000)  # a smaller limit gives a prefix: whole documents, the last one cut
    assert small[:-1] == docs[: len(small) - 1] and docs[len(small) - 1].startswith(small[-1])
    assert sum(len(d.split()) for d in small) == 1000
    # past the help topics come the docstrings of the sorted source files
    assert len(docs) > len(topics) and all(d.strip() == d and d for d in docs)


def test_stdlib_files_and_source():
    files = stdlib_files()
    rel = [p.relative_to(corpora.stdlib_root()).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 300
    assert not any(part in corpora.SKIP_DIRS for r in rel for part in r.split("/")[:-1])
    assert platform.python_version() in corpora.stdlib_source()


def test_limits_refuse_negative():
    with pytest.raises(ValueError):
        stdlib_documents(-1)
    with pytest.raises(ValueError):
        python_roles(-1)
