"""A run told to stop: the first SIGTERM or SIGINT stops it cleanly, a second ends it at once.

The first signal asks the run to stop (`RunStop`): no new input is started (the worker pools
of `warehouse.runtime.pools` start no more reads), the writes of the inputs already read
finish, and the run ends as usual with its report marked stopped, its catalogue part written
and its lease given back, exit code 128 + N (143 for SIGTERM, what ECS and AWS Batch send; 130
for Ctrl-C). If it has not ended ``grace`` seconds later (a listing or a storage call that does
not return), the deadline ends it at once (`arm`'s ``on_deadline``). A second signal exits at
once with one line and no traceback: every write is atomic, so it leaves nothing partial, and
the next run finishes the work.

Handlers can only be set from the main thread; elsewhere (a graph run from a test's thread)
signals keep their handlers and `arm` does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Seconds a stopped run gives the work it started (the writes of the inputs it read) before
#: it ends at once: ECS waits 30 s after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 20.0
#: The count of inputs a stopped run did not start (the next run handles them).
NOT_REACHED = "inputs not reached (run stopped)"


class RunStopped(Exception):
    """Work that was not started because the run was stopped (SIGTERM, SIGINT)."""


class RunStop:
    """Whether the run has been told to stop (SIGTERM, SIGINT), and for how long its work goes on.

    A stop is asked once (`request`); from then on no new input is started: the worker pools
    do not start the reads of inputs (`warehouse.runtime.pools`), while the writes of the
    inputs already read finish. The run then ends as usual, its report marked stopped, unless
    it is ending already (`close`: a stop that comes while the run writes its report changes
    nothing). A run still not ended ``grace`` seconds after the stop ends at once
    (`arm`'s ``on_deadline``).

    Parameters
    ----------
    grace : float
        Seconds from the stop to the deadline.
    clock : callable, optional
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, grace: float = STOP_GRACE_SECONDS, clock: Callable[[], float] | None = None):
        self.grace = grace
        self._clock = clock or time.monotonic
        # (reentrant: a signal handler runs in the main thread, perhaps while it holds the lock)
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget any stop: a new run in this process starts."""
        with self._lock:
            self._signal: int | None = None
            self._signals = 0
            self._at: float | None = None
            self._closed = False
            #: Whether the run is being ended at once (past its deadline).
            self.ending_at_once = False
            self._ended = threading.Event()
            self._closing = threading.Event()
            self._stopping = threading.Event()

    def request(self, signum: int) -> int:
        """Record a stop signal; return how many this run has received (1 for the first).

        The first one stops the run, unless the run is already ending (`close`).
        """
        with self._lock:
            self._signals += 1
            if self._signals == 1 and not self._closed:
                self._signal, self._at = signum, self._clock()
                self._stopping.set()
            return self._signals

    @property
    def requested(self) -> bool:
        """Whether the run was told to stop before it began to end."""
        return self._signal is not None

    def wait_requested(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the run to be told to stop: whether it was."""
        return self._stopping.wait(timeout)

    @property
    def signal(self) -> int | None:
        """The signal that stopped the run (None when none did)."""
        return self._signal

    @property
    def name(self) -> str:
        """The signal's name, such as ``SIGTERM`` (empty when the run was not stopped)."""
        return signal_name(self._signal) if self._signal is not None else ""

    @property
    def exit_code(self) -> int:
        """The exit code of a run stopped by signal N: 128 + N, as a shell reports it."""
        return 128 + self._signal if self._signal is not None else 0

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (None when the run was not stopped)."""
        if self._at is None:
            return None
        return self._at + self.grace - self._clock()

    def close(self) -> bool:
        """Begin the run's end: return whether it was stopped before (always the same answer).

        From now on a signal does not stop the run (it writes its report and catalogue part).
        When the run is already being ended at once (past its deadline), this waits for that
        end, which exits the process.
        """
        with self._lock:
            self._closed = True
            at_once = self.ending_at_once
        self._closing.set()
        if at_once:
            self._ended.wait()
        return self.requested

    def wait_closed(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the run's end to begin (`close`): whether it did."""
        return self._closing.wait(timeout)

    def end_at_once(self) -> bool:
        """Claim the run's end for its deadline: False when `close` came first."""
        with self._lock:
            if self._closed:
                return False
            self.ending_at_once = True
            return True


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: The stop of the run in this process (signals are a process's): each run starts with it reset.
RUN_STOP = RunStop()


#: The signals that stop a run.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_previous: dict[int, object] = {}
_on_deadline: list[Callable[[], int]] = []


def armed() -> bool:
    """Whether this process's stop handlers are in place."""
    return bool(_previous)


def arm(stop: RunStop = RUN_STOP, on_deadline: Callable[[], int] | None = None) -> bool:
    """Put the stop handlers in place for a run, once per process.

    A run inside a process that armed them already (a part of a sharded run) keeps the stop it
    may have received.

    Parameters
    ----------
    stop : RunStop
        What the handlers record (reset when they are put in place).
    on_deadline : callable, optional
        Ends the run at once and returns its exit code, when it has not ended ``stop.grace``
        seconds after the first signal (the process then exits with that code). Without it,
        the process exits with 128 + N.

    Returns
    -------
    bool
        Whether the handlers were put in place now (False when they were already, or when
        this is not the main thread).
    """
    if on_deadline is not None:
        _on_deadline[:] = [on_deadline]
    if armed() or threading.current_thread() is not threading.main_thread():
        return False
    stop.reset()

    def handle(signum: int, _frame: object) -> None:
        _received(stop, signum)

    for signum in STOP_SIGNALS:
        _previous[signum] = signal.signal(signum, handle)
    return True


def disarm() -> None:
    """Give the signals back their handlers from before `arm` (the run is over)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in list(_previous.items()):
        signal.signal(signum, handler)  # type: ignore[arg-type]
    _previous.clear()
    _on_deadline.clear()


def _received(stop: RunStop, signum: int) -> None:
    """Handle a stop signal (in the main thread, between two bytecodes: flags and a thread)."""
    if stop.request(signum) > 1:
        exit_at_once(signum)
    threading.Thread(target=_watch, args=(stop, signum), name="stop", daemon=True).start()


def exit_at_once(signum: int) -> None:
    """Exit now, with one line (a second signal: the operator wants it over)."""
    code = 128 + signum
    line = (
        f"{signal_name(signum)} again: exiting at once (exit code {code}); every write is "
        "atomic, the next run finishes the work\n"
    )
    try:
        os.write(2, line.encode())
    finally:
        os._exit(code)


def _watch(stop: RunStop, signum: int) -> None:
    """Say that the run stops, then end it at once if it has not ended by its deadline."""
    if not stop.requested:
        logger.warning(
            "%s received while the run ends: it ends as it was (a second signal exits at once)",
            signal_name(signum),
        )
        return
    logger.warning(
        "%s received: stopping (no new input is started; what was read is written, for at "
        "most %g s; a second signal exits at once)",
        stop.name,
        stop.grace,
        extra={"event": "stopping"},
    )
    left = stop.seconds_left()
    if left is not None and stop.wait_closed(max(0.0, left)):
        return
    if not stop.end_at_once():
        return  # the run began its own end just now
    code = stop.exit_code
    try:
        if _on_deadline:
            code = _on_deadline[0]()
    except Exception:  # noqa: BLE001 - the process ends anyway; say why the end is short
        logger.exception("could not end the stopped run at once")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
