"""Markdown tables: every line the same width, numbers right-aligned, text left-aligned."""

from __future__ import annotations

from dualkit.core.report import fmt, markdown_table


def cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return line[2:-2].split(" | ")


def test_columns_align():
    table = markdown_table(
        ["backend", "loss", "accuracy", "passed"],
        [["torch", 0.123456, 0.98, True], ["tensorflow", 12.5, 1, False], ["x", 1e-6, 123456.0, True]],
    )
    lines = table.splitlines()
    assert len(lines) == 5
    assert len({len(line) for line in lines}) == 1, table
    # the column separators sit at the same offsets on every line
    bars = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in lines}
    assert len(bars) == 1, table


def test_numbers_right_aligned_text_left_aligned():
    table = markdown_table(["name", "value"], [["a", 1.5], ["longer name", 1234.5678], ["b", 7]])
    header, rule, *rows = table.splitlines()
    names = [cells(r)[0] for r in rows]
    values = [cells(r)[1] for r in rows]
    assert names == ["a          ", "longer name", "b          "]  # ljust
    assert values == ["   1.5000", "1234.5678", "        7"]  # rjust
    assert cells(header) == ["name       ", "    value"]
    # Markdown alignment markers: right for numbers, none for text
    assert rule == "|-------------|----------:|"


def test_mixed_column_is_text():
    table = markdown_table(["v"], [[1], ["n/a"]])
    _, rule, a, b = table.splitlines()
    assert cells(a) == ["1  "] and cells(b) == ["n/a"]
    assert not rule.endswith(":|")


def test_absent_cells_keep_a_number_column_right_aligned():
    table = markdown_table(["v"], [[1.5], ["-"], [12.0]])
    _, rule, a, b, c = table.splitlines()
    assert [cells(a), cells(b), cells(c)] == [[" 1.5000"], ["      -"], ["12.0000"]]
    assert rule.endswith(":|")
    _, rule, *_ = markdown_table(["v"], [["-"], ["-"]]).splitlines()  # nothing but absent cells: text
    assert not rule.endswith(":|")


def test_bools_are_not_numbers():
    table = markdown_table(["ok"], [[True], [False]])
    _, rule, a, b = table.splitlines()
    assert cells(a) == ["yes"] and cells(b) == ["no "]
    assert ":" not in rule


def test_no_rows():
    table = markdown_table(["a", "bb"], [])
    assert table.splitlines() == ["| a | bb |", "|---|----|"]


def test_fmt():
    assert fmt(0.0) == "0"
    assert fmt(0.5) == "0.5000"
    assert fmt(1e-5) == "1.00e-05"
    assert fmt(123456.0) == "1.23e+05"
    assert fmt(3) == "3"
    assert fmt(True) == "yes"
    assert fmt("x") == "x"
