"""Plain-text and Markdown tables that line up, with one precision per number column.

How a number column prints (:func:`column_format` picks the format from the column's values):

- Integers (Python or numpy) print as integers; bools print as ``yes`` / ``no`` and are not numbers.
- Floats share one format per column, so every row of a column has the same decimals. The decimals are
  chosen so that the column's largest absolute value shows :data:`SIGNIFICANT` significant digits
  (``141.7``, ``2.301``, ``9874``), at most :data:`MAX_DECIMALS` (``0.9820``, ``0.0512``), and widened so
  that its smallest nonzero value keeps :data:`SMALL_SIGNIFICANT` (a column holding 1.5 and 1234.5678
  prints ``1.5`` and ``1234.6``; one holding 2.3 and 0.0021 prints ``2.3000`` and ``0.0021``).
- A column whose smallest nonzero value would need more than :data:`MAX_DECIMALS` decimals (below 0.001:
  parity differences such as 3.1e-13), or whose largest value reaches :data:`LARGE`, prints every float in
  scientific notation with three significant digits (``3.10e-13``); exact zeros there print as ``0``.
- ``markdown_table(..., precision={"header": 2})`` forces a column's floats to 2 decimals;
  ``{"header": SCIENTIFIC}`` forces scientific notation.
- NaN and infinities print as ``nan``, ``inf``, ``-inf``; :data:`ABSENT` cells print as ``-``.

A column of numbers (and ``-`` cells) is right-aligned; any other column is left-aligned.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ABSENT = "-"  # the cell of a value that does not exist (a time never measured, a mean of nothing)

SIGNIFICANT = 4  # significant digits of the largest float of a column
SMALL_SIGNIFICANT = 2  # significant digits the smallest nonzero float of a column keeps at least
MAX_DECIMALS = 4  # the most decimals of a fixed-point column; a column needing more prints in scientific notation
LARGE = 1e7  # a column whose largest float reaches this prints in scientific notation
SCIENTIFIC = "e"  # the format of a scientific column (and the value that forces it in ``precision``)

Format = int | str  # decimals, or SCIENTIFIC


def column_format(values: Iterable[Any]) -> Format:
    """The one format of a column's floats: a number of decimals, or :data:`SCIENTIFIC`.

    Only finite, nonzero floats decide it (integers, text, bools, NaN and zeros do not); a column without
    any prints its floats with 0 decimals.
    """
    magnitudes = [abs(float(v)) for v in values if _is_float(v) and math.isfinite(v) and v != 0]
    if not magnitudes:
        return 0
    largest, smallest = max(magnitudes), min(magnitudes)
    if largest >= LARGE:
        return SCIENTIFIC
    for_smallest = SMALL_SIGNIFICANT - 1 - _exponent(smallest)
    if for_smallest > MAX_DECIMALS:
        return SCIENTIFIC
    return max(0, min(SIGNIFICANT - 1 - _exponent(largest), MAX_DECIMALS), for_smallest)


def fmt(value: Any, form: Format | None = None) -> str:
    """One cell as text; a float in ``form`` (decimals or SCIENTIFIC), by default its own column_format."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if _is_integer(value):
        return str(int(value))
    if _is_float(value):
        value = float(value)
        if not math.isfinite(value):
            return str(value)  # nan, inf, -inf
        if form is None:
            form = column_format([value])
        if form == SCIENTIFIC:
            return "0" if value == 0.0 else f"{value:.2e}"
        if isinstance(form, bool) or not isinstance(form, int) or form < 0:
            raise ValueError(f"a number format is a count of decimals or {SCIENTIFIC!r}, got {form!r}")
        if value == 0.0 and form == 0:
            return "0"
        text = f"{value:.{form}f}"
        return text.removeprefix("-") if float(text) == 0.0 else text  # no "-0.000" for a tiny negative
    return str(value)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], precision: Mapping[str, Format] | None = None
) -> str:
    """A GitHub Markdown table whose columns are padded to the same width (readable as plain text too).

    Each column's floats share one format (see the module docstring); ``precision`` maps a header to a
    forced format for that column: a number of decimals, or SCIENTIFIC.
    """
    precision = dict(precision or {})
    unknown = set(precision) - {str(h) for h in headers}
    if unknown:
        raise ValueError(f"precision names columns that the table does not have: {', '.join(sorted(unknown))}")
    columns = [[row[i] for row in rows] for i in range(len(headers))]
    forms = [precision.get(str(h), column_format(col)) if col else 0 for h, col in zip(headers, columns)]
    cells = [[fmt(c, form) for c, form in zip(row, forms)] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    # a column of numbers stays right-aligned where some cells are "-" (absent)
    numeric = [all(_is_number(c) or c == ABSENT for c in col) and any(_is_number(c) for c in col) for col in columns]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line([str(h) for h in headers]), rule, *(line(r) for r in cells)])


def _exponent(magnitude: float) -> int:
    """The decimal exponent of a positive number: 0 for 1.5, 2 for 141.7, -13 for 3.1e-13."""
    return math.floor(math.log10(magnitude))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_float(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and not _is_integer(value)


def _is_number(value: Any) -> bool:
    return _is_integer(value) or _is_float(value)


def mean_std(values: list[float], decimals: int = 4) -> str:
    """``mean ± std`` of the values, at ``decimals``."""
    return f"{np.mean(values):.{decimals}f} ± {np.std(values):.{decimals}f}"


def mean_or_absent(values: list[Any], count: bool = False) -> float | int | str:
    """Mean of the values that are present (a seed that never solved has no time to solve), "-" if none;
    ``count`` rounds it to a whole number (environment steps)."""
    present = [v for v in values if v is not None and np.isfinite(v)]
    if not present:
        return ABSENT
    return int(round(np.mean(present))) if count else float(np.mean(present))
