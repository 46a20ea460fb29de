"""Markdown tables: every line the same width, numbers right-aligned, text left-aligned, one precision per
number column."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualkit.core.report import SCIENTIFIC, column_format, fmt, markdown_table


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
    assert values == ["   1.5", "1234.6", "     7"]  # rjust; one decimal for the column, the int stays an int
    assert cells(header) == ["name       ", " value"]
    # Markdown alignment markers: right for numbers, none for text
    assert rule == "|-------------|-------:|"


def test_mixed_column_is_text():
    table = markdown_table(["v"], [[1], ["n/a"]])
    _, rule, a, b = table.splitlines()
    assert cells(a) == ["1  "] and cells(b) == ["n/a"]
    assert not rule.endswith(":|")


def test_absent_cells_keep_a_number_column_right_aligned():
    table = markdown_table(["v"], [[1.5], ["-"], [12.0]])
    _, rule, a, b, c = table.splitlines()
    assert [cells(a), cells(b), cells(c)] == [[" 1.50"], ["    -"], ["12.00"]]
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
    assert fmt(123456.0) == "123456"  # was 1.23e+05: numbers below LARGE print in full
    assert fmt(3) == "3"
    assert fmt(True) == "yes"
    assert fmt("x") == "x"


def column(values, precision=None) -> list[str]:
    """The cells of a one-column table, without padding."""
    _, _, *rows = markdown_table(
        ["v"], [[v] for v in values], {"v": precision} if precision is not None else None
    ).splitlines()
    return [cells(r)[0].strip() for r in rows]


def test_a_column_shares_its_decimals():
    # the old output mixed 9873.8956 and 1.03e+04 in one column
    assert column([9873.8956, 10312.4, 812.25]) == ["9874", "10312", "812"]
    assert column([141.6746, 98.5]) == ["141.7", "98.5"]  # ms: 4 significant digits of the largest
    assert column([2.3012345, 0.51234]) == ["2.301", "0.512"]
    assert column([0.98, 0.1]) == ["0.9800", "0.1000"]  # accuracies: never more than 4 decimals
    assert column([0.0512, 0.0498]) == ["0.0512", "0.0498"]


def test_the_smallest_value_keeps_two_significant_digits():
    assert column([1.5, 1234.5678]) == ["1.5", "1234.6"]
    assert column([2.3, 0.0021]) == ["2.3000", "0.0021"]
    assert column([500.0, 0.05]) == ["500.000", "0.050"]


def test_tiny_values_make_the_whole_column_scientific():
    assert column([0.0, 3.1e-13, 2.1e-3]) == ["0", "3.10e-13", "2.10e-03"]
    assert column([1e-5, -2.5e-7]) == ["1.00e-05", "-2.50e-07"]
    assert column([0.001, 0.5]) == ["0.0010", "0.5000"]  # 0.001 still fits in 4 decimals
    assert column([3e10, 7e10]) == ["3.00e+10", "7.00e+10"]  # from LARGE up
    assert column_format([0.0009]) == SCIENTIFIC and column_format([0.001]) == 4


def test_integers_stay_integers_and_zeros_nans_and_absent_cells_keep_their_form():
    assert column([7, np.int64(38333), 2.5]) == ["7", "38333", "2.500"]  # only floats choose the format
    assert column([0.0, 0.5]) == ["0.0000", "0.5000"]
    assert column([0.0, 0.0]) == ["0", "0"]
    assert column([math.nan, 0.25, math.inf, -math.inf, "-"]) == ["nan", "0.2500", "inf", "-inf", "-"]
    assert column([np.float32(0.25), 1.0]) == ["0.250", "1.000"]  # numpy floats are numbers too
    assert column([np.bool_(True), False]) == ["yes", "no"]
    _, rule, *_ = markdown_table(["v"], [[np.float32(1.5)], ["-"]]).splitlines()
    assert rule.endswith(":|")


def test_numbers_in_a_text_column_share_the_column_format():
    assert column(["only in new", 0.98, 0.1]) == ["only in new", "0.9800", "0.1000"]


def test_a_header_forces_a_precision():
    assert column([141.6746, 98.5], precision=0) == ["142", "98"]
    assert column([0.98, 0.1], precision=2) == ["0.98", "0.10"]
    assert column([0.5, 0.0], precision=SCIENTIFIC) == ["5.00e-01", "0"]
    assert column([-0.0001], precision=2) == ["0.00"]  # no "-0.00"
    assert column([3, 2.5], precision=2) == ["3", "2.50"]  # integers stay integers
    with pytest.raises(ValueError, match="does not have: nope"):
        markdown_table(["v"], [[1.0]], {"nope": 2})
    with pytest.raises(ValueError, match="count of decimals"):
        markdown_table(["v"], [[1.0]], {"v": "f"})


def test_forced_and_chosen_columns_still_line_up():
    table = markdown_table(["a", "b", "c"], [[1.23456, 1e-9, 12], [123.4, 0.5, 7]], {"a": 1})
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1, table
    assert [cells(r) for r in lines[2:]] == [["  1.2", "1.00e-09", "12"], ["123.4", "5.00e-01", " 7"]]
    assert lines[1] == "|------:|---------:|---:|"
