"""Text safety: what an upload says, shown as one physical line that cannot steer a terminal,
and never more of it than a message needs (`quote`, `bounded`).

Anything from an upload (a key, a centre name, a value pydicom echoes in a warning) may hold a
newline that forges a log line, a carriage return that overwrites one, or an escape sequence
that clears the operator's screen or sets their clipboard. `escape_controls` is the one rule
for showing such text in plain logs, summaries and standard output.
"""

from __future__ import annotations

import reprlib

#: Characters shown as a backslash escape: the C0 controls, DEL, the C1 controls, the Unicode
#: line and paragraph separators, and the bidirectional marks, embeddings, overrides and
#: isolates (they reorder what a terminal shows).
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPED = [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029]
_ESCAPED += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]


def _escape(code: int) -> str:
    char = chr(code)
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_TABLE = {code: _escape(code) for code in _ESCAPED}
_TABLE_WITH_BACKSLASH = {**_TABLE, ord("\\"): "\\\\"}


def escape_controls(text: str, *, backslashes: bool = False) -> str:
    """``text`` with every control character as a backslash escape: one physical line.

    ``\\n``, ``\\r`` and ``\\t`` keep their short forms; the other C0 controls, DEL and the C1
    controls become ``\\xNN`` (ESC is ``\\x1b``), the line and paragraph separators (U+2028,
    U+2029) and the bidirectional controls (U+061C, U+200E-U+200F, U+202A-U+202E,
    U+2066-U+2069) ``\\uNNNN``. Nothing else changes, so the escaped text never holds a line
    break of any kind (``str.splitlines`` gives one line) nor an escape sequence.

    Parameters
    ----------
    text : str
        Text that may come from an upload.
    backslashes : bool
        Also write each backslash as ``\\\\``, so that the escaping can be undone and two
        different texts never look the same (standard output that lists values); log lines
        leave backslashes alone (escaping them again would double Python's own repr).

    Returns
    -------
    str
        The escaped text (``text`` itself when nothing needs escaping).
    """
    return text.translate(_TABLE_WITH_BACKSLASH if backslashes else _TABLE)


def escape_lines(text: str) -> str:
    """Multi-line text the product composed (a run summary) with each of its ``\\n``-separated
    lines escaped (`escape_controls`): the lines stay lines, nothing inside them can break or
    steer one."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


#: The most characters a report line's detail (or a text fact) keeps: upload values can be
#: megabytes long, and every report, page and feedback file repeats the detail.
MAX_DETAIL_CHARS = 1_000
#: The most characters of one upload value quoted in a detail (`quote`).
MAX_QUOTED_CHARS = 120
_ELLIPSIS = "\u2026"

_quoting = reprlib.Repr()
_quoting.maxstring = MAX_QUOTED_CHARS
_quoting.maxother = MAX_QUOTED_CHARS // 2
_quoting.maxlevel = 2


def quote(value: object) -> str:
    """``repr(value)`` cut to about `MAX_QUOTED_CHARS` characters, for quoting an upload value
    (a pseudonym, a centre, a header value) in a message without copying all of it."""
    return _quoting.repr(value)


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS
