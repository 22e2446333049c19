"""Logging for the graphs: mondrian repaired for Python >= 3.10, plain lines for containers,
JSON lines with the run's fields for CloudWatch Logs Insights. A text log record is one line
whatever its arguments (`text.escape_controls`), and warnings go through the same logs."""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import traceback
import warnings

from warehouse.core.errors import ExpectedError
from warehouse.core.report import REPORT_LOGGER
from warehouse.core.run import RUN_CONTEXT, log_format
from warehouse.core.text import escape_controls

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: The fields of a JSON log line (``WAREHOUSE_LOG_FORMAT=json``), in order.
JSON_FIELDS = ("time", "level", "logger", "graph", "run_id", "shard", "event", "key", "reason")
_NODE_IN_CONTEXT = re.compile(r"ExecutionContext\([-+!~ ]?(\w+)\)")


class _RunRecords(logging.Filter):
    """The one filter on every handler: it gives each record the run's fields (and an ISO UTC
    time), names bonobo's own error lines after the product's node instead of
    ``bonobo.execution...``, and turns a record about an `ExpectedError` (bonobo logs node
    errors with their traceback) into its message alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ExpectedError):
            record.msg, record.args = str(exc), ()
            record.exc_info, record.exc_text = None, None
        record.time = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
            timespec="milliseconds"
        )
        for name, value in RUN_CONTEXT.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        for name in ("event", "key", "reason"):
            if not hasattr(record, name):
                setattr(record, name, None)
        if record.name.startswith("bonobo.execution"):
            found = _NODE_IN_CONTEXT.search(str(record.msg))
            graph = RUN_CONTEXT["graph"] or "graph"
            record.name = f"warehouse.{graph}.{found.group(1)}" if found else f"warehouse.{graph}"
        return True


class _OneLineRecords(logging.Formatter):
    """A text formatter (plain, or mondrian's on a terminal) whose records cannot forge lines:
    the message, arguments included, is escaped into one physical line; a traceback follows
    on lines of its own, each escaped and indented, so no line a record writes can start
    like another record or steer the terminal."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape_controls(record.getMessage()), ()
        safe.exc_info, safe.exc_text, safe.stack_info = None, None, None
        text = self.inner.format(safe)
        blocks = []
        if record.exc_info:
            blocks.append(self.formatException(record.exc_info))
        elif record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            text += "".join(f"\n    {escape_controls(line)}" for line in block.splitlines())
        return text

    def formatException(self, exc_info) -> str:
        """The traceback with each frame's lines as Python writes them, and each exception's
        message (which may quote an upload) escaped into one line."""
        lines = []
        for chunk in traceback.TracebackException(*exc_info).format():
            if chunk.startswith("  "):  # a frame: its file, line and source
                lines.extend(chunk.rstrip("\n").split("\n"))
            else:  # "Traceback ...", an exception's message, or what chains two exceptions
                lines.append(escape_controls(chunk.strip("\n")))
        return "\n".join(lines)


def plain_formatter() -> logging.Formatter:
    """The formatter of plain text logs (a container's, or standard error redirected): level,
    logger and message, each record one line (`_OneLineRecords`)."""
    return _OneLineRecords(logging.Formatter(_LOG_FORMAT))


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of a run: a warning is a log record of ``py.warnings`` (one
    line, escaped in text logs) instead of raw text on standard error."""
    logging.getLogger("py.warnings").warning(
        "%s: %s (%s:%s)", category.__name__, message, filename, lineno
    )


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    fields = " ".join(f"%({name})s" for name in JSON_FIELDS if name not in ("level", "logger"))
    return JsonFormatter(
        f"%(time)s %(levelname)s %(name)s {fields.replace('%(time)s ', '')} %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
    )


def configure_logging(level: int = logging.INFO, fmt: str | None = None) -> None:
    """Set up logging once, in the one place that knows about mondrian.

    mondrian 0.8.1's formatter style never calls ``PercentStyle.__init__``, so on Python >= 3.10
    every record fails with ``'_Style' object has no attribute '_defaults'``. bonobo's CLI and
    ``bonobo.run`` call ``mondrian.setup()`` themselves, so the style class is repaired here;
    without a handler yet (``python -m``), a plain one is installed and mondrian is told it is set
    up, so it does not add a second.

    With ``fmt="json"`` (``WAREHOUSE_LOG_FORMAT=json``) every line is one JSON object with the
    fields of `JSON_FIELDS` and the message, for CloudWatch Logs Insights; each input that is not
    filed is then logged too (event ``not_filed``, with its key and reason). In text, every
    record is one line with its control characters escaped (`_OneLineRecords`). Warnings
    (``warnings.warn`` of any library) are logged as records of ``py.warnings``, so they are
    escaped too.
    """
    import mondrian
    from mondrian import formatters

    fmt = fmt or log_format()
    if not hasattr(formatters._Style, "_defaults"):
        formatters._Style._defaults = None
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(plain_formatter())
        root.addHandler(handler)
        mondrian.is_setup = True
    plain = not sys.stderr.isatty()
    for handler in root.handlers:
        if not any(isinstance(f, _RunRecords) for f in handler.filters):
            handler.addFilter(_RunRecords())
        if fmt == "json":
            handler.setFormatter(_json_formatter())
        else:
            inner = handler.formatter or logging.Formatter()
            if isinstance(inner, _OneLineRecords):
                inner = inner.inner  # configured before
            if plain and isinstance(inner, formatters.Formatter):
                handler.setFormatter(plain_formatter())  # no ANSI colours or cursor codes
            else:
                handler.setFormatter(_OneLineRecords(inner))
    root.setLevel(level)
    # A warning may echo an upload's text (pydicom's do): never written raw to stderr.
    warnings.showwarning = _log_warning
    # One line per unfiled input: wanted in JSON logs (queried by key or reason), not in text.
    logging.getLogger(REPORT_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.WARNING)
    # botocore logs every retry at DEBUG; keep third-party chatter out of INFO logs.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
