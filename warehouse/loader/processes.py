"""``WAREHOUSE_PROCESSES=P``: one loader command runs a sharded run on the cores of one machine.

The process the command starts takes the run lease, then runs the run's parts as processes of
its own (the standard library's ``multiprocessing``, ``spawn`` start method: each part a fresh
interpreter, nothing inherited but the settings): the clinical phase first, then P image shards
at once. Their status lines go to the command's own output as they come, each line prefixed
by its part (``[shard 1/2] - process_image in=...``; JSON logs carry the part in their
``shard`` field instead). Once every part has stopped it combines their reports into the run's
report (`warehouse.loader.parts.finish_run`), releases the lease, prints one summary and exits
with the worst part's code (a part killed by a signal counts as 1: a rerun finishes its work).

SIGTERM or SIGINT (the parts run in process groups of their own, so Ctrl-C reaches only the
command) is passed on to the parts that run: each stops cleanly and writes its report marked
stopped (`warehouse.core.stop`); shards not started yet are not started; the command then
ends the run as usual, its report marked stopped, and exits with 128 + the signal. A second
signal is passed on too, and the command exits at once.

It starts processes and waits for them, nothing more (no restarts, no scheduling: on AWS, Batch
does that). Each part's process imports the loader graph by its module name
(`GRAPH_MODULE`) and runs it there: the rules never import the graph nor bonobo.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.process import BaseProcess

from warehouse.core import run as run_module
from warehouse.core import stop
from warehouse.core.config import (
    CLINICAL_PHASE,
    IMAGE_PHASE,
    ConfigError,
    Settings,
    settings_from_env,
)
from warehouse.core.errors import ExpectedError
from warehouse.core.lease import graph_lease
from warehouse.core.report import RunReport
from warehouse.loader import parts as runs
from warehouse.loader.shards import RunPart
from warehouse.storage.base import Storage
from warehouse.storage.url import storage_from_url

logger = logging.getLogger(__name__)

GRAPH_NAME = "warehouseloader"
#: The module each part's process imports and runs (`run_part`): the loader graph.
GRAPH_MODULE = "warehouse.warehouseloader"


class PrefixedLines(io.TextIOBase):
    """A text stream that writes each complete line, prefixed, to a file descriptor in one
    ``write``: the lines of several processes sharing one output never mix within a line."""

    def __init__(self, fd: int, prefix: str):
        self._fd = fd
        self._prefix = prefix
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # bonobo's live console display would redraw over the other parts' lines

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
            if lines:
                self._send("".join(f"{self._prefix}{line}\n" for line in lines))
        return len(text)

    def close(self) -> None:
        with self._lock:
            if self._pending:
                self._send(f"{self._prefix}{self._pending}\n")
                self._pending = ""
        super().close()

    def _send(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(self._fd, data) :]


def run_part(settings: Settings, label: str, go: Connection | None = None) -> None:
    """A part's process (``spawn`` target): run the loader graph for ``settings``'s part and
    exit with its code.

    With ``go`` (the receiving end of a pipe), the process starts up (imports) at once, then
    waits for the word: True to run, False to exit without running (the shards start during
    the clinical phase, which then needs not wait for their interpreters).
    """
    os.setpgrp()  # the terminal's Ctrl-C reaches the command, which passes it on
    stop.arm()  # a signal that comes before the graph runs is kept for it
    streams = []
    if settings.log_format != "json":
        streams = [PrefixedLines(1, f"[{label}] "), PrefixedLines(2, f"[{label}] ")]
        sys.stdout, sys.stderr = streams
    graph = importlib.import_module(GRAPH_MODULE)

    if go is not None:
        try:
            started = go.recv()
        except EOFError:  # the starting process is gone
            started = False
        if not started or stop.RUN_STOP.requested:
            for stream in streams:
                stream.close()
            sys.exit(stop.RUN_STOP.exit_code)

    code = run_module.EXIT_INTERNAL
    try:
        # the command that started this process ends the run, once every part has stopped
        code = graph.run_part(settings)
    finally:
        for stream in streams:
            stream.close()
    sys.exit(code if code is not None else run_module.EXIT_INTERNAL)


def part_exit_code(process: BaseProcess) -> tuple[int, str]:
    """A finished part's exit code and how it ended, for the summary."""
    code = process.exitcode
    if code is None:
        return run_module.EXIT_INTERNAL, "still running"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else -code
        return run_module.EXIT_INCOMPLETE, f"killed by signal {name}"
    return code, f"exit code {code}"


def _start(
    context: SpawnContext, settings: Settings, part: RunPart, go: Connection | None = None
) -> SpawnProcess:
    process = context.Process(
        target=run_part, args=(settings, part.label, go), name=part.label.replace(" ", "-")
    )
    process.start()
    return process


def run_processes(settings: Settings) -> int:
    """Run one sharded run of ``settings.processes`` shards in processes of this machine.

    Returns
    -------
    int
        The exit code: the worst of the parts' (0, 1, 2, 3, 70), 3 when another run holds the
        warehouse, 2 for a missing store.
    """
    count = settings.processes
    run_id = settings.run_id or RunReport(GRAPH_NAME).run_id
    run_module.RUN_CONTEXT.update(graph=GRAPH_NAME, run_id=run_id, shard=None)
    try:
        storage = storage_from_url(settings.bucket, workers=settings.workers)
        storage.check_store()
        lease = graph_lease(GRAPH_NAME, storage, run_id)
        lease.acquire()
    except ExpectedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "exit_code", run_module.EXIT_CONFIG)
    lease.start_renewing()
    context = multiprocessing.get_context("spawn")
    outcomes: list[tuple[str, int, str]] = []
    running: list[BaseProcess] = []  # the parts told to run: what a signal is passed on to
    previous = _pass_signals_on(running)
    try:
        logger.info("run %s: the clinical phase, then %d shards in processes", run_id, count)
        clinical = RunPart(CLINICAL_PHASE)
        process = _start(context, replace(settings, phase=CLINICAL_PHASE, run_id=run_id), clinical)
        running.append(process)
        # the shards' interpreters start meanwhile, and wait for the clinical phase's end
        shards: dict[int, tuple[RunPart, BaseProcess]] = {}
        words = []
        for index in range(count):
            part = RunPart(IMAGE_PHASE, (index, count))
            part_settings = replace(
                settings, phase=IMAGE_PHASE, shard=(index, count), processes=1, run_id=run_id
            )
            waiting, word = context.Pipe(duplex=False)
            started = _start(context, part_settings, part, waiting)
            waiting.close()
            shards[started.sentinel] = (part, started)
            words.append(word)
        process.join()
        outcomes.append((clinical.label, *part_exit_code(process)))
        handed_over = not stop.RUN_STOP.requested and _clinical_phase_handed_over(
            storage, settings, run_id, outcomes[-1][1]
        )
        if handed_over:
            running.extend(started for _, started in shards.values())
        for word in words:
            try:
                word.send(handed_over and not stop.RUN_STOP.requested)
            except OSError:  # that shard ended already (its exit code tells)
                pass
            finally:
                word.close()
        if not handed_over:
            for _, waiting_process in shards.values():
                waiting_process.join()
        else:
            pending = set(shards)
            while pending:
                for sentinel in wait(list(pending)):
                    pending.discard(sentinel)
                    # (typeshed widens what wait gives back: the sentinels it was given)
                    part, ended = shards[sentinel]  # type: ignore[index]
                    ended.join()
                    code, how = part_exit_code(ended)
                    logger.info("%s ended: %s", part.label, how)
                    outcomes.append((part.label, code, how))
            outcomes[1:] = sorted(outcomes[1:], key=lambda outcome: outcome[0])
        return _end(storage, settings, run_id, count, outcomes)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        for child in multiprocessing.active_children():  # only after an error of this process
            logger.warning("stopping %s", child.name)
            child.terminate()
            child.join()
        lease.release()


def _pass_signals_on(running: list[BaseProcess]) -> dict[int, object]:
    """Handle SIGTERM and SIGINT in the command of a sharded run: pass each on to the parts
    that run (they stop cleanly, `warehouse.core.stop`), note the stop (no shard starts after
    it), and exit at once on a second one. Returns the handlers it replaced."""
    run_stop = stop.RUN_STOP
    run_stop.reset()

    def handle(signum: int, _frame: object) -> None:
        for part in running:
            if part.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(part.pid, signum)
        if run_stop.request(signum) > 1:
            stop.exit_at_once(signum)

    return {signum: signal.signal(signum, handle) for signum in stop.STOP_SIGNALS}


def _clinical_phase_handed_over(
    storage: Storage, settings: Settings, run_id: str, code: int
) -> bool:
    """Whether the shards may start: the clinical phase ended with 0 or 1 (some files could not
    be read or written, as in one process: the images still go) and wrote its hand-off."""
    if code not in (run_module.EXIT_OK, run_module.EXIT_INCOMPLETE):
        return False
    probe = replace(settings, shard=(0, 1), run_id=run_id)
    try:
        runs.load_handoff(storage, probe, GRAPH_NAME)
    except ExpectedError as exc:
        logger.error("the shards do not start: %s", exc)
        return False
    return True


def _end(
    storage: Storage,
    settings: Settings,
    run_id: str,
    count: int,
    outcomes: list[tuple[str, int, str]],
) -> int:
    """Combine the parts' reports, print the one summary, and return the worst exit code."""
    code = max(code for _, code, _ in outcomes)
    if stop.RUN_STOP.requested:
        code = stop.RUN_STOP.exit_code
    try:
        ended = runs.finish_run(storage, GRAPH_NAME, run_id, count, force=True, release_lease=False)
    except ExpectedError as exc:
        logger.error("could not combine the run's reports: %s", exc)
        ended = None
        code = max(code, run_module.EXIT_INCOMPLETE)
    if ended is not None and ended.report is not None:
        report = runs.report_of(ended.report)
        if not ended.report["completed"]:
            code = max(code, run_module.EXIT_INCOMPLETE)
    else:
        report = RunReport(GRAPH_NAME, run_id)
        report.fail("the run's reports could not be combined")
    if stop.RUN_STOP.requested:
        report.stopped = stop.RUN_STOP.name
    summary = report.summary().replace(
        f"{GRAPH_NAME} run summary", f"{GRAPH_NAME} run summary ({count} shards)", 1
    )
    for label, _, how in outcomes:
        summary += f"\n  {label}: {how}"
    if len(outcomes) == 1:
        why = (
            "the run was stopped"
            if stop.RUN_STOP.requested
            else "the clinical phase did not complete"
        )
        summary += f"\n  shards: not started ({why})"
    summary += ended.lines if ended is not None else ""
    summary += f"\n  run id: {run_id}"
    run_module.emit_summary(summary, report, code)
    run_module.write_summary_file(summary)
    if report.stopped:
        logger.warning(run_module.stopped_line(report, code), extra={"event": "stopped"})
    return code


def run_if_many_processes() -> int | None:
    """What a loader command does first (once its command line is parsed and logging set up):
    with ``WAREHOUSE_PROCESSES`` above 1, run the whole sharded run (`run_processes`) and return
    its exit code; otherwise None, and the command runs the graph in this process.

    A settings error is left to the graph's own start, which reports it (exit code 2); a dry
    run always runs in one process (it writes nothing, so shards could not see the clinical
    phase's groups).
    """
    try:
        settings = settings_from_env()
    except ConfigError:
        return None
    if settings.processes <= 1 or settings.phase != "all":
        return None
    if settings.dry_run:
        logger.warning(
            "DRY_RUN: WAREHOUSE_PROCESSES=%d is ignored, the dry run runs in one process",
            settings.processes,
        )
        return None
    return run_processes(settings)
