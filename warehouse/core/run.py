"""One run of a graph, free of bonobo: its state (settings, report, storage workers), how it
ends (the summary, the JSON report and its page, the exit code) and the fields every log line
of it carries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO, TypeVar

from warehouse.core.config import Settings
from warehouse.core.reasons import Reason, problem_of
from warehouse.core.report import RunReport, publish_report
from warehouse.core.stop import NOT_REACHED, RUN_STOP, RunStop
from warehouse.core.text import escape_controls, escape_lines

if TYPE_CHECKING:
    from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
EXIT_BUSY = 3  # another run holds the warehouse (the run lease)
EXIT_INTERNAL = 70

#: What every log line of a run says about the run; filled in when its services are built.
RUN_CONTEXT: dict[str, str | None] = {"graph": None, "run_id": None, "shard": None}


def log_format() -> str:
    """``text`` or ``json``, from ``WAREHOUSE_LOG_FORMAT`` (a bad value is reported as a
    settings error once the settings are read; logging stays text until then)."""
    value = os.environ.get("WAREHOUSE_LOG_FORMAT", "text").strip().lower()
    return value if value in ("text", "json") else "text"


_Loaded = TypeVar("_Loaded")


def loaded(value: _Loaded | None, what: str) -> _Loaded:
    """Return ``value``, a field of a run's state that an earlier node sets, once it is set.

    Such fields hold ``config.json``, the warehouse's index, the patients' groups.

    Parameters
    ----------
    value : object or None
        The field.
    what : str
        What it holds, for the error.

    Returns
    -------
    object
        ``value``, never None.

    Raises
    ------
    RuntimeError
        When it is not set: a node ran before the one that sets it (an internal error).
    """
    if value is None:
        raise RuntimeError(f"{what} is not loaded yet: a node ran before the one that loads it")
    return value


class WorkerPool:
    """The run's one bounded pool of storage workers (``WAREHOUSE_WORKERS`` threads).

    Every pooled node submits its reads, copies and writes here, so at most ``size`` storage
    requests are in flight at once, whichever nodes they come from: a run with one worker makes
    one request at a time, and the threads contending for the interpreter stay few.
    """

    def __init__(self, size: int):
        self.size = max(1, size)
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="storage")

    def submit(self, work: Callable, *args: object) -> Future:
        """Run ``work(*args)`` in a worker."""
        return self._executor.submit(work, *args)

    def shutdown(self) -> None:
        """Stop the threads once the run is over."""
        self._executor.shutdown(wait=True, cancel_futures=True)


class ByteBudget:
    """At most ``limit`` bytes of uploads held in memory at once by the workers that take from
    it (one upload larger than the whole budget is held alone), so that many large uploads
    read at the same time cannot exhaust memory, whatever their number.

    Parameters
    ----------
    limit : int
        Bytes the holders may hold together.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self._held = 0
        #: Holders waiting for room (for diagnostics and tests).
        self.waiting = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, size: int | None) -> Iterator[None]:
        """Wait until ``size`` bytes fit in the budget, hold them for the ``with`` block."""
        size = min(max(0, size or 0), self.limit)
        with self._changed:
            self.waiting += 1
            self._changed.wait_for(lambda: self._held + size <= self.limit)
            self.waiting -= 1
            self._held += size
        try:
            yield
        finally:
            with self._changed:
                self._held -= size
                self._changed.notify_all()


@dataclass
class RunState:
    """What every graph's ``state`` service holds: the settings, the report, the storage
    workers and, at the end, the exit code. Each graph adds its own fields."""

    settings: Settings
    report: RunReport
    workers: WorkerPool | None = None
    exit_code: int | None = None
    #: Whether (and by which signal) the run was told to stop.
    stop: RunStop = field(default_factory=lambda: RUN_STOP)

    def item_failed(self, item: object, exc: BaseException) -> list:
        """Report one input that raised instead of being handled, and go on with the others.

        The exception's own reason is used (`report.problem_of`); anything else is an
        "internal error", logged with its traceback. Graphs add what their reports need
        (the loader: the listing stamp that lets the next run skip the input).

        Returns
        -------
        list
            No outputs: the item goes no further.
        """
        key = item_key(item)
        reason, detail = problem_of(exc)
        if reason is Reason.INTERNAL_ERROR:
            logger.error("internal error on %s", key, exc_info=(type(exc), exc, exc.__traceback__))
        self.report.skip(key, reason, detail, **self.skip_extras(item, reason))
        return []

    def skip_extras(self, item: object, reason: Reason) -> dict:
        """Extra `RunReport.skip` arguments for a failed item (none by default)."""
        return {}

    def not_reached(self, item: object) -> list:
        """Count an input the run did not start because it was stopped (the next run reads
        it); no outputs."""
        self.report.count(NOT_REACHED)
        return []

    def conclude(self, storage: Storage) -> str:
        """The graph's own work once its nodes have stopped, and the summary text that comes
        before the report's lines (by default the report's summary)."""
        return self.report.summary()

    def publishes_report(self) -> bool:
        """Whether the run's JSON report (and its page) is written at the end (by default
        yes; printed instead in a dry run)."""
        return True

    @property
    def summary_stream(self) -> TextIO:
        """Where the summary is printed: standard output unless a graph says otherwise."""
        return sys.stdout

    def close(self) -> None:
        """Give back what the run holds once it is over, however it ended (the storage
        workers; graphs add theirs, such as the loader's lease)."""
        if self.workers is not None:
            self.workers.shutdown()

    def give_back_at_once(self) -> None:
        """Give back what others wait for (the run lease) when the run ends at once, without
        waiting for its work in flight (`end_at_once`); nothing by default."""


def item_key(item: object) -> str:
    """The key an item stands for in a report: its ``key``, or its first of ``keys``."""
    key = getattr(item, "key", None)
    if isinstance(key, str):
        return key
    keys = getattr(item, "keys", None)
    if isinstance(keys, tuple | list) and keys:
        return str(keys[0])
    return repr(item)[:200]


def end_run(state: RunState, storage: Storage, unexpected_errors: int = 0) -> int:
    """End a run the same way in every graph: note a stop (`RunStop.close`: from now on a
    signal changes nothing), account for errors its nodes did not handle, let the graph
    conclude (`RunState.conclude`), publish the report, give back what the run holds, then
    print the summary and decide the exit code.

    Parameters
    ----------
    state : RunState
        The run's state service.
    storage : Storage
        The store the report is written to.
    unexpected_errors : int
        Exceptions the graph runner counted in the nodes: any makes the run incomplete.

    Returns
    -------
    int
        The exit code (also set on ``state.exit_code``).
    """
    report = state.report
    if state.stop.close():
        report.stopped = state.stop.name
    if unexpected_errors:
        report.fail(f"{unexpected_errors} unexpected error(s) in the nodes; see the log above")
    summary = state.conclude(storage)
    if state.publishes_report():
        fatal = report.fatal
        summary += publish_report(storage, report, state.settings.dry_run)
        if report.fatal != fatal:  # (the report could not be written: the summary says so)
            summary += f"\n  run could not complete: {escape_controls(report.fatal or '')}"
    state.close()
    return _finish(state, summary)


def end_at_once(state: RunState, storage: Storage) -> int:
    """End a stopped run that did not end within its grace (`RunStop.grace`) at once: its
    report (marked stopped, and saying so), the lease given back (`RunState.give_back_at_once`),
    the summary; the work still in flight is left (every write is atomic: the next run does
    it again). The caller exits the process with the code returned.

    Returns
    -------
    int
        The exit code (128 + the signal).
    """
    report, stop = state.report, state.stop
    report.stopped = stop.name
    report.fail(
        f"the run did not stop within {stop.grace:g} s of {stop.name}: ended at once (what it "
        "was writing is written again by the next run)"
    )
    summary = report.summary()
    if state.publishes_report():
        summary += publish_report(storage, report, state.settings.dry_run)
    state.give_back_at_once()
    return _finish(state, summary)


def _finish(state: RunState, summary: str) -> int:
    """The exit code, the summary printed and copied, and for a stopped run its one line."""
    report = state.report
    state.exit_code = exit_code(report)
    summary += f"\n  run id: {report.run_id}"
    emit_summary(summary, report, state.exit_code, stream=state.summary_stream)
    write_summary_file(summary)
    if report.stopped:
        logger.warning(stopped_line(report, state.exit_code), extra={"event": "stopped"})
    return state.exit_code


def stopped_line(report: RunReport, code: int) -> str:
    """The one line a stopped run ends with: which signal, what it left, the exit code."""
    left = report.counts.get(NOT_REACHED, 0)
    return (
        f"{report.graph} run {report.run_id} stopped by {report.stopped}: {left:,} inputs not "
        f"reached, left for the next run (exit code {code})"
    )


def emit_summary(
    summary: str, report: RunReport, exit_code: int, stream: TextIO | None = None
) -> None:
    """Print the run summary: as text (each line escaped, `text.escape_lines`: the parts
    that quote uploads escape their own line breaks), or (``WAREHOUSE_LOG_FORMAT=json``) as
    one JSON object with the run's counts, its inputs not filed by reason and the exit
    code."""
    stream = stream or sys.stdout
    if log_format() == "json":
        record = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": f"warehouse.{report.graph}",
            **{name: RUN_CONTEXT.get(name) for name in ("graph", "run_id", "shard")},
            "event": "summary",
            "completed": report.completed,
            "fatal": report.fatal,
            "exit_code": exit_code,
            "counts": dict(sorted(report.counts.items())),
            "not_filed": dict(sorted(report.reasons.items())),
            "message": summary.splitlines()[-1].strip() if summary else "",
        }
        print(json.dumps(record), file=stream, flush=True)
    else:
        print(escape_lines(summary), file=stream, flush=True)


def write_summary_file(summary: str) -> None:
    """Copy the run summary (escaped as printed) to ``RUN_SUMMARY_FILE`` when it is set (the
    bin/ wrappers read it for their notification)."""
    path = os.environ.get("RUN_SUMMARY_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(escape_lines(summary) + "\n")


def exit_code(report: RunReport) -> int:
    """0 when the run completed, 2 when config.json stopped it, 1 when it could not complete,
    128 + N when signal N stopped it (143 for SIGTERM, 130 for SIGINT)."""
    if report.stopped:
        try:
            return 128 + signal.Signals[report.stopped].value
        except KeyError:
            return EXIT_INCOMPLETE
    if report.fatal and report.config_problem:
        return EXIT_CONFIG
    return EXIT_OK if report.completed else EXIT_INCOMPLETE
