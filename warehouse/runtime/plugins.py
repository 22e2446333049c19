"""bonobo plugins of a run: status lines (with the run's progress line) when output is not a
terminal, and the call that ends the run once the graph has stopped."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from bonobo.execution import events
from bonobo.plugins import Plugin

from warehouse.core.run import log_format


class StatusLines(Plugin):
    """bonobo's status lines (``- name in=.. out=.. err=.. [done]``) for output that is not a
    terminal (containers, CloudWatch): every ``period`` seconds while running, and at the end.
    ``period`` may be a callable, asked at each tick (the run's settings are read only once
    the graph starts).

    While running, ``progress()`` (when given) adds a line of the run's own: how many inputs
    are done out of how many, the rate and the time left. In JSON logs each line is an event
    (``status``, ``progress``).
    """

    def __init__(
        self,
        period: float | Callable[[], float] = 10.0,
        stream=None,
        progress: Callable | None = None,
    ):
        self._period = period
        self.stream = stream
        self.progress = progress
        self._last = 0.0

    def register(self, dispatcher):
        dispatcher.add_listener(events.START, self._start)
        dispatcher.add_listener(events.TICK, self._tick)
        dispatcher.add_listener(events.STOPPED, self._stopped)

    def unregister(self, dispatcher):
        dispatcher.remove_listener(events.STOPPED, self._stopped)
        dispatcher.remove_listener(events.TICK, self._tick)
        dispatcher.remove_listener(events.START, self._start)

    def _start(self, event):
        self._last = time.monotonic()

    @property
    def period(self) -> float:
        """Seconds between two status lines while running."""
        return self._period() if callable(self._period) else self._period

    def _tick(self, event):
        if time.monotonic() - self._last >= self.period:
            self._last = time.monotonic()
            self._print(event.context, final=False)

    def _stopped(self, event):
        self._print(event.context, final=True)

    def _print(self, context, final: bool):
        lines = status_lines(context)
        progress = None if final or self.progress is None else self.progress()
        if log_format() == "json" and self.stream is None:
            for line in lines:
                _status_logger.info(line, extra={"event": "status"})
            if progress:
                _status_logger.info(progress, extra={"event": "progress"})
            return
        stream = self.stream or sys.stderr
        stamp = "" if final else time.strftime("[%H:%M:%S] ")
        for line in lines:
            print(stamp + line, file=stream)
        if progress:
            print(stamp + progress, file=stream)
        stream.flush()


_status_logger = logging.getLogger("warehouse.status")


def progress_of(services) -> Callable[[], str | None]:
    """The progress line of the run's state (its ``progress_line``), read when it is asked."""

    def progress() -> str | None:
        try:
            state = services["state"]
        except (KeyError, SystemExit):
            return None
        line = getattr(state, "progress_line", None)
        return line() if callable(line) else None

    return progress


def status_lines(context) -> list[str]:
    """The status line of each node of a graph execution context, without colours."""
    lines = []
    for index in context.graph.topologically_sorted_indexes:
        node = context[index]
        stats = node.get_statistics_as_string()
        if node.defunct:
            flag = "[defunct]"
        elif node.killed:
            flag = "[killed]"
        elif node.stopped:
            flag = "[done]"
        else:
            flag = ""
        lines.append(" ".join(part for part in (node.status, node.name, stats, flag) if part))
    return lines


class OnFinish(Plugin):
    """Call ``callback(context)`` once the graph has stopped, after the status lines."""

    def __init__(self, callback: Callable):
        self.callback = callback

    def register(self, dispatcher):
        dispatcher.add_listener(events.STOPPED, self._stopped, priority=100)

    def unregister(self, dispatcher):
        dispatcher.remove_listener(events.STOPPED, self._stopped)

    def _stopped(self, event):
        self.callback(event.context)
