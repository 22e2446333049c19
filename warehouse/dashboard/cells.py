"""What a table cell may hold, and the one function that writes a CSV file.

Every text a table holds came from an uploader (a clinical record, a DICOM header), so it is
bounded before it becomes a cell (:func:`bounded_text`, :data:`MAX_CELL_CHARS`), and every CSV
file the product writes (the tables, ``latest.csv``, the public statistics) is written by
:func:`csv_text`, which keeps a spreadsheet from running a cell as a formula
(:func:`neutralised`) and quotes every field that holds a line break.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = [
    "MAX_CELL_CHARS",
    "bounded_table",
    "bounded_text",
    "csv_text",
    "neutralised",
]

#: The longest text a table cell holds; a longer one keeps its first characters and ends
#: with an ellipsis (a cell of exactly this many characters).
MAX_CELL_CHARS = 1_000
ELLIPSIS = "\u2026"
#: A text a spreadsheet would run as a formula (OWASP: ``=``, ``+``, ``-``, ``@``, tab,
#: carriage return), behind any single quotes already there (so that the quote added is
#: always the only one to undo).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
#: RFC 4180 line ends: the csv module then quotes every field holding a CR or an LF (with
#: ``\n`` alone a lone CR is written unquoted and a reader splits the row there).
LINE_END = "\r\n"


def bounded_text(text: str, limit: int = MAX_CELL_CHARS) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis when it is longer.

    Parameters
    ----------
    text : str
        A cell's text.
    limit : int
        The longest text kept whole (:data:`MAX_CELL_CHARS`).

    Returns
    -------
    str
        At most ``limit`` characters.
    """
    if len(text) <= limit:
        return text
    return text[: limit - 1] + ELLIPSIS


def neutralised(text: str) -> str:
    """A text cell as a CSV file holds it: with a leading ``'`` when a spreadsheet would take
    it for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return,
    possibly behind single quotes), else unchanged.

    A reader gets the text back by removing one leading ``'`` from a cell that starts with
    ``'`` followed (after any more quotes) by one of those characters.
    """
    return "'" + text if _FORMULA.match(text) else text


def _cell(value: Any) -> Any:
    """A value as the CSV writes it: text bounded and neutralised, containers (dicts, lists)
    as their bounded text, numbers, dates and missing values unchanged."""
    if isinstance(value, dict | list | tuple):
        value = str(value)
    if isinstance(value, str):
        return neutralised(bounded_text(value))
    return value


def holds_container(values: list) -> bool:
    """Whether ``values`` hold a dict, a list or a tuple (their types gathered in C)."""
    return any(issubclass(kind, dict | list | tuple) for kind in set(map(type, values)))


def _is_text_column(column: pd.Series) -> bool:
    dtype = column.dtype
    return not (
        pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
        or isinstance(dtype, pd.PeriodDtype)
    )


def _text_only(column: pd.Series) -> bool:
    """Whether a column's dtype holds text only (``str`` or ``string``, not ``object``)."""
    return column.dtype != object and pd.api.types.is_string_dtype(column.dtype)


#: `_FORMULA` at the start of any line: of a text cell, when the cells are joined by lines.
_FORMULA_AT_LINE = re.compile(r"^" + _FORMULA.pattern, re.MULTILINE)


def _written_column(column: pd.Series) -> pd.Series:
    if _text_only(column):
        # A column of text only (str or string dtype): the rare cells to change are found
        # vectorised first.
        formula = column.str.match(_FORMULA.pattern).astype("boolean").fillna(False)
        long = (column.str.len() > MAX_CELL_CHARS).astype("boolean").fillna(False)
        if not (formula | long).any():
            return column
    values = column.tolist()
    if not holds_container(values):
        # no container: only its text cells may change; none does when none is long and none
        # starts like a formula (searched at once in the cells joined by lines: a line break
        # inside a cell can only send the column the long way, which changes nothing more)
        texts = [value for value in values if isinstance(value, str)]
        if not texts or (
            max(map(len, texts)) <= MAX_CELL_CHARS
            and _FORMULA_AT_LINE.search("\n".join(texts)) is None
        ):
            return column
    return pd.Series([_cell(v) for v in values], index=column.index, dtype="object")


def csv_text(table: pd.DataFrame, *, header: bool = True) -> str:
    """Write a table as CSV text: every CSV file of the product is written here.

    RFC 4180: comma-separated, ``\\r\\n`` line ends, a field quoted when it holds a comma, a
    double quote, a carriage return or a line feed (so each row reads back as one row, with
    its columns). Every text cell is bounded (:func:`bounded_text`) and neutralised
    (:func:`neutralised`), column names too; numbers (a negative one included), booleans,
    dates and missing values are written as they are. No index.

    Parameters
    ----------
    table : pandas.DataFrame
        The table (dicts and lists in object columns are written as their text).
    header : bool
        Whether the first row holds the column names.

    Returns
    -------
    str
        The CSV text.
    """
    columns = {}
    for index in range(table.shape[1]):  # by position: column names may repeat
        column = table.iloc[:, index]
        columns[index] = _written_column(column) if _is_text_column(column) else column
    out = pd.DataFrame(columns, index=table.index)
    out.columns = [neutralised(bounded_text(str(name))) for name in table.columns]
    return out.to_csv(index=False, header=header, lineterminator=LINE_END)


def _long(column: pd.Series) -> bool:
    """Whether a text column holds a text longer than :data:`MAX_CELL_CHARS`."""
    if _text_only(column):
        return bool((column.str.len() > MAX_CELL_CHARS).astype("boolean").fillna(False).any())
    return any(isinstance(v, str) and len(v) > MAX_CELL_CHARS for v in column.tolist())


def bounded_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every text value longer than :data:`MAX_CELL_CHARS` bounded
    (:func:`bounded_text`); other values (numbers, dicts, lists, ...) unchanged. A table
    without a long text is returned as it is (not copied)."""
    out = None
    for index in range(table.shape[1]):
        column = table.iloc[:, index]
        if not _is_text_column(column) or not _long(column):
            continue
        if out is None:
            out = table.copy()
        values = [bounded_text(v) if isinstance(v, str) else v for v in column.tolist()]
        out.isetitem(index, pd.Series(values, index=column.index, dtype=column.dtype))
    return table if out is None else out
