"""Data from files: one numeric column of a CSV or ``.npy`` file, and the bundled data set.

Every malformed input is a ``ValueError`` naming the file, the line and the column
(the command line prints it as one line), before anything is fitted.
"""

from __future__ import annotations

import csv
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["read_column", "strikes", "strikes_path", "Column"]

# Cells read as "missing" rather than "not a number", so the message says what they are.
_MISSING = {"", "na", "n/a", "nan", "null", "none", "nil", "-", ".", "?"}
_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+$")


class Column(NamedTuple):
    """One numeric column read from a file: the values and where each came from."""

    values: np.ndarray  # float64, shape (n,)
    lines: np.ndarray  # 1-based line of the file for each value (CSV); index for .npy
    name: str  # the column's header, or its index for a file without a header
    path: str


def strikes_path() -> Path:
    """Returns the path of the bundled ``strikes.csv`` (Kennan 1985 strike durations).

    Public domain; columns ``duration`` (days) and ``iprod``. See ``mlefit/data/README.md``.

    Example:
        >>> strikes_path().name
        'strikes.csv'
    """
    return Path(str(resources.files("mlefit") / "data" / "strikes.csv"))


def strikes(column: str = "duration") -> np.ndarray:
    """Returns a column of the bundled U.S. strike data (Kennan, 1985), as float64.

    62 contract strikes in U.S. manufacturing; ``"duration"`` is the length in days
    (the default data set of the ``mlefit`` command line), ``"iprod"`` the
    unanticipated industrial production. Public domain (U.S. Bureau of Labor
    Statistics); see ``mlefit/data/README.md``.

    Example:
        >>> x = strikes()
        >>> x.shape, float(x.min()), float(x.max())
        ((62,), 1.0, 216.0)
    """
    return read_column(strikes_path(), column)


def read_column(path, column: str | int | None = None) -> np.ndarray:
    """Returns one numeric column of a CSV (header row) or ``.npy`` file as float64.

    Args:
        path: a ``.npy`` file (1-D, or 2-D with observations on rows) or a delimited
            text file (comma, semicolon or tab) whose first non-blank line is a header.
        column: the column's header name or its 0-based index (an int, or a string of
            digits that is not a header name); may be omitted for a one-column file.

    Raises:
        ValueError: the file is missing or unreadable, the column is unknown or
            ambiguous, a cell is empty, NaN, infinite or not a number, or the column
            has no values. The message names the file, the line and the column.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.csv")
        >>> _ = open(p, "w").write("x\\n1.5\\n2\\n")
        >>> read_column(p)
        array([1.5, 2. ])
    """
    return read_column_with_lines(path, column).values


def read_column_with_lines(path, column: str | int | None = None) -> Column:
    """Like :func:`read_column`, also returning the line of each value (for messages)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, expected a .csv or .npy file")
    if path.lower().endswith(".npy"):
        return _read_npy(path, column)
    return _read_csv(path, column)


# -- .npy ------------------------------------------------------------------------------
def _read_npy(path: str, column) -> Column:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy file of numbers ({_reason(e)})") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{path}: expected one array, found an archive of several")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim == 1:
        if column not in (None, 0, "0"):
            raise ValueError(f"{path}: the array is 1-D, so it has no column {column!r}")
        values, name = a, "0"
    elif a.ndim == 2:
        j = _npy_column_index(path, a.shape[1], column)
        values, name = a[:, j], str(j)
    else:
        raise ValueError(
            f"{path}: expected a 1-D array or a 2-D array (observations, columns), "
            f"got shape {a.shape}"
        )
    values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError(f"{path}, column {name}: no values (the array is empty)")
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{path}, index {i}, column {name}: value {float(values[i])!r} is not a finite number "
            f"({int(bad.sum())} such value(s) in the column)"
        )
    return Column(values, np.arange(values.size), name, path)


def _npy_column_index(path: str, n_cols: int, column) -> int:
    if column is None:
        if n_cols == 1:
            return 0
        raise ValueError(
            f"{path}: the array has {n_cols} columns; choose one with --column INDEX "
            f"(0 to {n_cols - 1})"
        )
    j = _as_index(column)
    if j is None:
        raise ValueError(
            f"{path}: a .npy file has no column names; give --column as an index "
            f"(0 to {n_cols - 1}), got {column!r}"
        )
    if not 0 <= j < n_cols:
        raise ValueError(f"{path}: no column {j}; the array has columns 0 to {n_cols - 1}")
    return j


# -- CSV -------------------------------------------------------------------------------
def _read_csv(path: str, column) -> Column:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected a .csv or .npy file)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({_reason(e)})") from None
    if "\x00" in text:
        raise ValueError(f"{path}: looks binary, expected a text .csv file or a .npy file")
    reader = csv.reader(text.splitlines(), dialect=_sniff(text))
    header, header_line = None, 0
    for row in reader:
        if any(cell.strip() for cell in row):
            header, header_line = [cell.strip() for cell in row], reader.line_num
            break
    if header is None:
        raise ValueError(f"{path}: the file is empty (expected a header row, then values)")
    j = _csv_column_index(path, header, header_line, column)
    name = header[j] or str(j)
    values, lines = [], []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue  # blank lines (often at the end of a file) carry no observation
        where = f"{path}, line {reader.line_num}, column {name!r}"
        if j >= len(row):
            raise ValueError(f"{where}: missing value (the row has only {len(row)} field(s))")
        values.append(_parse_cell(row[j], where))
        lines.append(reader.line_num)
    if not values:
        raise ValueError(
            f"{path}, column {name!r}: no values (the file has a header on line "
            f"{header_line} but no data rows)"
        )
    return Column(np.asarray(values, np.float64), np.asarray(lines), name, path)


def _sniff(text: str):
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel  # one column, or too little text to tell: plain commas


def _csv_column_index(path: str, header: list[str], line: int, column) -> int:
    names = ", ".join(repr(h) for h in header)
    if column is None:
        if len(header) == 1:
            return 0
        twice = sorted({h for h in header if header.count(h) > 1})
        how = "--column INDEX" if twice else "--column NAME or --column INDEX"
        why = f" ({', '.join(map(repr, twice))} more than once)" if twice else ""
        raise ValueError(
            f"{path}: the header on line {line} has {len(header)} columns ({names}); "
            f"choose one with {how}{why}"
        )
    if isinstance(column, str) and column.strip() in header:
        name = column.strip()
        at = [i for i, h in enumerate(header) if h == name]
        if len(at) > 1:  # which one is meant cannot be told: never pick the first silently
            raise ValueError(
                f"{path}: the header on line {line} has the column {name!r} "
                f"{'twice' if len(at) == 2 else f'{len(at)} times'} "
                f"(indices {', '.join(map(str, at))}); rename the columns, or choose one by "
                "its 0-based index"
            )
        return at[0]
    j = _as_index(column)
    if j is None:
        raise ValueError(f"{path}: no column {column!r}; the header on line {line} has {names}")
    if not 0 <= j < len(header):
        raise ValueError(
            f"{path}: no column {j}; the header on line {line} has {len(header)} columns "
            f"(indices 0 to {len(header) - 1}: {names})"
        )
    return j


def _parse_cell(cell: str, where: str) -> float:
    s = cell.strip()
    if s.lower() in _MISSING:
        shown = "empty cell" if not s else f"missing value {s!r}"
        raise ValueError(f"{where}: {shown}; remove the row or fill the value in")
    try:
        v = float(s)
    except ValueError:
        hint = " (a decimal comma? write 3.5, not 3,5)" if _DECIMAL_COMMA.match(s) else ""
        raise ValueError(f"{where}: {s!r} is not a number{hint}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {s!r} is not a finite number")
    return v


def _as_index(column) -> int | None:
    if isinstance(column, bool):
        return None
    if isinstance(column, (int, np.integer)):
        return int(column)
    s = str(column).strip()
    return int(s) if s.lstrip("-").isdigit() else None


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
