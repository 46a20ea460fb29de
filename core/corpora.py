"""The text corpora that ship with every install: both are made from the Python standard library, read from
its files (never imported), so nothing is downloaded and a run on the same Python version sees the same text.

``stdlib_documents``: English documents for masked-language-model pretraining: first the values of
``pydoc_data.topics.topics`` (the language reference's help topics, sorted by topic name), then the docstrings
of the stdlib's modules, classes and functions, read with ``ast`` from the source files in ``stdlib_files()``
order and, within a file, in source order (module, then each class and function where it appears, nested ones
after their parent). Each topic and each docstring (``ast.get_docstring``, indentation cleaned) is one
document; a document equal to an earlier one is dropped.

``python_roles``: a token-classification corpus whose gold labels are exact and need context. A sentence is
one logical line of a stdlib source file (``tokenize``'s NEWLINE ends it); its words are the line's Python
tokens: names, keywords, operators, numbers and strings. Comments, NL/NEWLINE/INDENT/DEDENT/ENDMARKER are
skipped; a string literal longer than ``MAX_STRING_CHARS`` characters, or any f-string on Python >= 3.12
(which tokenizes into pieces), becomes the one word ``STRING_WORD``; a line that is only a string (a
docstring) is skipped. Each NAME token's tag, from the file's ``ast``:

- ``B-FUNC``: the name of a function or method at its ``def`` / ``async def``;
- ``B-CLASS``: the name of a class at its ``class`` statement;
- ``B-PARAM``: a parameter name in a ``def`` or ``lambda`` signature (``ast.arg``: positional-only, plain,
  ``*args``, keyword-only, ``**kwargs``; ``self`` too);
- ``B-ATTR``: the attribute name after a dot (``ast.Attribute.attr``: ``obj.name``, in any context);
- ``B-IMPORT``: the name an import binds: ``import a.b`` -> ``a``; ``import a.b as c`` -> ``c``;
  ``from m import x`` -> ``x``; ``from m import x as y`` -> ``y`` (module paths after ``from``, the other
  parts of a dotted path and ``*`` are ``O``);
- ``B-BUILTIN``: an ``ast.Name`` whose identifier is a public name of ``builtins`` (``dir(builtins)``
  without the ``_``-prefixed ones) that the file never binds (no assignment, ``del``, parameter, def,
  class, import, ``except ... as``, ``global``/``nonlocal`` or match capture of that name anywhere in it),
  so the name can only mean the builtin;
- ``O``: every other token (keywords, operators, literals, all other names, keyword-argument names).

Every identifier is one word, so only ``B-`` tags occur (entity-level F1 then scores words exactly). Files are
visited in ``stdlib_files()`` order; a file that cannot be decoded, tokenized or parsed is skipped.

Both corpora depend on the Python version (``STDLIB_VERSION``, recorded in ``stdlib_source()``), and are
built lazily up to ``limit_words`` and cached in-process.
"""

from __future__ import annotations

import ast
import builtins
import functools
import io
import keyword
import platform
import re
import sysconfig
import tokenize
import warnings
from collections.abc import Iterator
from pathlib import Path

STDLIB_VERSION = platform.python_version()
ROLES = ("FUNC", "CLASS", "PARAM", "ATTR", "IMPORT", "BUILTIN")
MAX_STRING_CHARS = 12  # a longer string literal is one placeholder word, so literals do not dominate
STRING_WORD = '"str"'
# folders of tests (their docstrings and code are not the library's), third-party packages and caches
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_"))

_SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings into tokens
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)
_WORD = re.compile(r"\S+")

Sentence = tuple[list[str], list[str]]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source() -> str:
    """Where the shipped corpora come from, for run records."""
    return f"Python {STDLIB_VERSION} standard library ({stdlib_root()})"


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """Every ``*.py`` under the stdlib folder, sorted by relative path, without ``SKIP_DIRS``."""
    root = stdlib_root()
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if not SKIP_DIRS.intersection(rel.parts[:-1]) and path.is_file():
            found.append((rel.as_posix(), path))
    return tuple(p for _, p in sorted(found))


def _read_source(path: Path) -> str | None:
    """The file's text with ``\\n`` line ends (as ``ast`` and ``tokenize`` count lines), or None if undecodable."""
    try:
        data = path.read_bytes()
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old files warn; they still parse
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


# --------------------------------------------------------------------------- documents


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of ``node`` and of the classes and functions inside it, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            yield doc.strip()
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


# reStructuredText's section rules and table borders ("-----", "*****", "+---+---+"): decoration, not English
_RULE_LINE = re.compile(r"^[ \t]*[-=*~^+#`'\".:_|]{3,}[ \t]*$", re.MULTILINE)


def _all_documents() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        topics = {}
    for key in sorted(topics):
        yield _RULE_LINE.sub("", topics[key]).strip()
    for path in stdlib_files():
        source = _read_source(path)
        tree = _parse(source) if source is not None else None
        if tree is not None:
            yield from _docstrings(tree)


@functools.lru_cache(maxsize=8)
def _documents(limit_words: int) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    words = 0
    for doc in _all_documents():
        if not doc or doc in seen:
            continue
        seen.add(doc)
        n = len(doc.split())
        if limit_words and words + n >= limit_words:
            # cut the last document after its limit_words-th word overall, keeping its own whitespace
            ends = [m.end() for m in _WORD.finditer(doc)]
            out.append(doc[: ends[limit_words - words - 1]])
            break
        out.append(doc)
        words += n
    return tuple(out)


def stdlib_documents(limit_words: int = 0) -> list[str]:
    """The standard library's documentation text as documents (module docstring); ``limit_words > 0`` keeps
    the first that many whitespace-separated words (the last document cut short)."""
    if limit_words < 0:
        raise ValueError(f"limit_words must be >= 0, got {limit_words}")
    return list(_documents(limit_words))


# --------------------------------------------------------------------------- roles


def _char_col(lines: list[str], lineno: int, byte_col: int) -> int:
    """``ast`` columns count UTF-8 bytes; ``tokenize`` counts characters."""
    line = lines[lineno - 1]
    if line.isascii():
        return byte_col
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the module binds anywhere (any scope): such a name may not mean the builtin."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return bound


def _role_maps(tree: ast.AST, lines: list[str]) -> tuple[dict, dict, dict]:
    """Roles keyed by a NAME token's start ``(line, char col)``, by its end, and the def/class keyword
    positions whose next NAME token (equal to the given name) is the defined name."""
    starts: dict[tuple[int, int], str] = {}
    ends: dict[tuple[int, int], str] = {}
    defs: dict[tuple[int, int], tuple[str, str]] = {}
    bound = _bound_names(tree)

    def start(node: ast.AST) -> tuple[int, int]:
        return node.lineno, _char_col(lines, node.lineno, node.col_offset)

    def end(node: ast.AST) -> tuple[int, int]:
        return node.end_lineno, _char_col(lines, node.end_lineno, node.end_col_offset)

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defs[start(node)] = ("FUNC", node.name)  # the position of `def` (or `async`), decorators excluded
        elif isinstance(node, ast.ClassDef):
            defs[start(node)] = ("CLASS", node.name)
        elif isinstance(node, ast.arg):
            starts[start(node)] = "PARAM"
        elif isinstance(node, ast.Attribute):
            ends[end(node)] = "ATTR"  # the attribute name is the node's last token
        elif isinstance(node, ast.alias) and node.name != "*":
            if node.asname:
                ends[end(node)] = "IMPORT"  # `a.b as c`: the alias ends with the bound name
            else:
                starts[start(node)] = "IMPORT"  # `a.b`: binds its first name
        elif isinstance(node, ast.Name) and node.id in BUILTIN_NAMES and node.id not in bound:
            starts[start(node)] = "BUILTIN"
    return starts, ends, defs


def _tokens(source: str) -> Iterator[tokenize.TokenInfo]:
    """The source's tokens, with each f-string (Python >= 3.12: several tokens) folded into one STRING token."""
    depth = 0
    first = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if _FSTRING_START is not None and tok.type == _FSTRING_START:
            depth += 1
            first = first or tok
            continue
        if depth:
            if tok.type == _FSTRING_END:
                depth -= 1
                if not depth:
                    yield tokenize.TokenInfo(tokenize.STRING, STRING_WORD, first.start, tok.end, tok.line)
                    first = None
            continue
        yield tok


def _word(tok: tokenize.TokenInfo) -> str:
    if tok.type == tokenize.STRING and (len(tok.string) > MAX_STRING_CHARS or "\n" in tok.string):
        return STRING_WORD
    return tok.string


def source_roles(source: str) -> list[Sentence]:
    """The role-tagged sentences of one Python source text (the rule: module docstring); [] if it does not
    parse or tokenize."""
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    tree = _parse(source)
    if tree is None:
        return []
    lines = source.split("\n")
    starts, ends, defs = _role_maps(tree, lines)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    strings_only = True
    pending: tuple[str, str] | None = None  # (role, name) after a def/class keyword
    try:
        for tok in _tokens(source):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                if words and not (strings_only and len(words) == 1):
                    sentences.append((words, tags))
                words, tags, strings_only = [], [], True
                continue
            if tok.type in _SKIP_TOKENS:
                continue
            role = None
            if tok.type == tokenize.NAME:
                if tok.start in defs:
                    pending = defs[tok.start]
                elif pending is not None and tok.string == pending[1] and not keyword.iskeyword(tok.string):
                    role, pending = pending[0], None
                else:
                    role = starts.get(tok.start) or ends.get(tok.end)
                if keyword.iskeyword(tok.string):
                    role = None
            strings_only = strings_only and tok.type == tokenize.STRING
            words.append(_word(tok))
            tags.append(f"B-{role}" if role else "O")
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        return []
    return sentences


def _all_roles() -> Iterator[Sentence]:
    for path in stdlib_files():
        source = _read_source(path)
        if source is not None:
            yield from source_roles(source)


@functools.lru_cache(maxsize=8)
def _roles(limit_words: int) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    out = []
    words = 0
    for tokens, tags in _all_roles():
        if limit_words and words + len(tokens) > limit_words:
            break  # whole sentences only: at most limit_words words
        out.append((tuple(tokens), tuple(tags)))
        words += len(tokens)
    return tuple(out)


def python_roles(limit_words: int = 0) -> list[Sentence]:
    """Role-tagged logical lines of the standard library's source (module docstring): ``(words, tags)`` pairs;
    ``limit_words > 0`` keeps the leading whole sentences with at most that many words in all."""
    if limit_words < 0:
        raise ValueError(f"limit_words must be >= 0, got {limit_words}")
    return [(list(t), list(g)) for t, g in _roles(limit_words)]
