"""Running bonobo graphs well: logging that works on Python 3.11, bounded worker pools inside
nodes, status lines when output is not a terminal, a final report, and a truthful exit code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import bonobo
from bonobo import _api as bonobo_api
from bonobo.config.processors import use_context_processor
from bonobo.constants import BEGIN, END
from bonobo.execution import events
from bonobo.execution.contexts.graph import GraphExecutionContext
from bonobo.execution.contexts.node import NodeExecutionContext
from bonobo.execution.strategies.executor import ThreadPoolExecutorStrategy
from bonobo.plugins import Plugin
from bonobo.structs.inputs import Input

from warehouse.core.config import Settings, config_help, settings_from_env
from warehouse.core.errors import ExpectedError
from warehouse.core.report import REPORT_LOGGER, Reason, RunReport, problem_of
from warehouse.core.report_page import page_key, run_report_page
from warehouse.core.storage import storage_from_url

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_CONFIG = 2
EXIT_BUSY = 3  # another run holds the warehouse (the run lease)
EXIT_INTERNAL = 70

_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def _cache_node_signatures() -> None:
    """bonobo binds every input to its node with ``inspect.signature(node)``, computed again on
    every call (about 6 % of the loader's CPU); a node's signature never changes, so compute it
    once per node."""
    from bonobo.config import processors

    if not hasattr(processors.signature, "cache_info"):
        processors.signature = functools.lru_cache(maxsize=1024)(processors.signature)


_cache_node_signatures()


#: What every log line of a run says about the run; filled in when its services are built.
RUN_CONTEXT: dict[str, str | None] = {"graph": None, "run_id": None, "shard": None}
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


def log_format() -> str:
    """``text`` or ``json``, from ``WAREHOUSE_LOG_FORMAT`` (a bad value is reported as a
    settings error once the settings are read; logging stays text until then)."""
    value = os.environ.get("WAREHOUSE_LOG_FORMAT", "text").strip().lower()
    return value if value in ("text", "json") else "text"


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
    filed is then logged too (event ``not_filed``, with its key and reason).
    """
    import mondrian
    from mondrian import formatters

    fmt = fmt or log_format()
    if not hasattr(formatters._Style, "_defaults"):
        formatters._Style._defaults = None
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        root.addHandler(handler)
        mondrian.is_setup = True
    plain = not sys.stderr.isatty()
    for handler in root.handlers:
        if not any(isinstance(f, _RunRecords) for f in handler.filters):
            handler.addFilter(_RunRecords())
        if fmt == "json":
            handler.setFormatter(_json_formatter())
        elif plain and isinstance(handler.formatter, formatters.Formatter):
            # Container logs: no ANSI colours or cursor codes.
            handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.setLevel(level)
    # One line per unfiled input: wanted in JSON logs (queried by key or reason), not in text.
    logging.getLogger(REPORT_LOGGER).setLevel(logging.INFO if fmt == "json" else logging.WARNING)
    # botocore logs every retry at DEBUG; keep third-party chatter out of INFO logs.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class WorkerPool:
    """The run's one bounded pool of storage workers (``WAREHOUSE_WORKERS`` threads).

    Every pooled node submits its reads, copies and writes here, so at most ``size`` storage
    requests are in flight at once, whichever nodes they come from: a run with one worker makes
    one request at a time, and the threads contending for the interpreter stay few.
    """

    def __init__(self, size: int):
        self.size = max(1, size)
        self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="storage")

    def submit(self, work: Callable, *args) -> Future:
        """Run ``work(*args)`` in a worker."""
        return self._executor.submit(work, *args)

    def shutdown(self) -> None:
        """Stop the threads once the run is over."""
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class RunState:
    """What every graph's ``state`` service holds: the settings, the report, the storage
    workers and, at the end, the exit code. Each graph adds its own fields."""

    settings: Settings
    report: RunReport
    workers: WorkerPool | None = None
    exit_code: int | None = None

    def item_failed(self, item, exc: BaseException) -> list:
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

    def skip_extras(self, item, reason: Reason) -> dict:
        """Extra `RunReport.skip` arguments for a failed item (none by default)."""
        return {}

    def close(self) -> None:
        """Give back what the run holds once it is over, however it ended (the storage
        workers; graphs add theirs, such as the loader's lease)."""
        if self.workers is not None:
            self.workers.shutdown()


def item_key(item) -> str:
    """The key an item stands for in a report: its ``key``, or its first of ``keys``."""
    key = getattr(item, "key", None)
    if isinstance(key, str):
        return key
    keys = getattr(item, "keys", None)
    if isinstance(keys, tuple | list) and keys:
        return str(keys[0])
    return repr(item)[:200]


class OrderedPool:
    """A node's view of the `WorkerPool`: its results come back in submission order.

    Work is submitted from a node's thread; ``then`` callbacks turn each result into the node's
    outputs, in the node's thread and in input order, so decisions that depend on order (first
    upload wins, first claim of a target) do not depend on timing or on the number of workers.
    At most ``window`` items are in flight: the node blocks on the oldest when it is full.

    An exception in the work or in ``then`` is handed to ``on_error(item, exception)``, which
    returns the item's outputs (usually none, after reporting it): one bad item never costs the
    items behind it. Without ``on_error`` the exception propagates.
    """

    def __init__(self, workers: WorkerPool, window: int | None = None, on_error=None):
        self.workers = workers
        self.window = window or workers.size * 4
        self.on_error = on_error
        self._pending: deque[tuple[Future, Callable, object]] = deque()

    def submit(self, work: Callable, *args, then: Callable, item=None) -> None:
        """Run ``work(*args)`` in a worker; ``then(result)`` later yields the outputs.

        ``item`` is what a failure is reported against (default: the first argument after
        the storage, the usual input of a worker).
        """
        if item is None and args:
            item = args[-1]
        self._pending.append((self.workers.submit(work, *args), then, item))

    @property
    def pending(self) -> int:
        """Results not yet handed out."""
        return len(self._pending)

    def put(self, value, *, then: Callable, item=None) -> None:
        """Queue an already-known result behind the work submitted before it."""
        future: Future = Future()
        future.set_result(value)
        self._pending.append((future, then, value if item is None else item))

    def _outputs(self, future: Future, then: Callable, item) -> Iterable:
        try:
            return list(then(future.result()) or ())
        except Exception as exc:
            if self.on_error is None:
                raise
            return list(self.on_error(item, exc) or ())

    def ready(self) -> Iterator[tuple]:
        """Outputs of the oldest results that are done (waiting only when the window is full),
        each as a one-item tuple, the shape bonobo passes between nodes."""
        while self._pending and (self._pending[0][0].done() or len(self._pending) >= self.window):
            for output in self._outputs(*self._pending.popleft()):
                yield (output,)

    def drain(self) -> Iterator:
        """Outputs of every remaining result, in order, waiting for them."""
        while self._pending:
            yield from self._outputs(*self._pending.popleft())


def per_item(node):
    """Report an exception a node raises for one input against that input
    (``state.item_failed``; the node must use the ``state`` service) instead of letting bonobo
    count an unexpected error: the node goes on with the next input."""
    names = list(inspect.signature(node).parameters)
    state_at = names.index("state")
    item_at = 1 if names and names[0] == "pool" else 0

    @functools.wraps(node)
    def guarded(*args, **kwargs):
        try:
            yield from node(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported against its input; the node goes on
            state = args[state_at] if len(args) > state_at else kwargs["state"]
            item = args[item_at] if len(args) > item_at else None
            state.item_failed(item, exc)

    return guarded


def pooled(node):
    """Give a node function a first argument ``pool`` (an `OrderedPool` on the run's
    `WorkerPool`, ``state.workers``; the node must use the ``state`` service).

    The node submits work and yields ``pool.ready()``; when its input ends, what is still in
    flight is drained and sent downstream before the end of the stream is (bonobo tears a node
    down before it passes END on). A failure of one item is reported against it
    (``state.item_failed``), in the node body, the work or its ``then``, and every other item
    is still handled.
    """

    def open_pool(node, context, *args, **services):
        context.set_output_type(tuple)
        state = services["state"]
        pool = OrderedPool(state.workers, on_error=getattr(state, "item_failed", None))
        yield pool
        while pool.pending:  # a failure that escapes on_error ends one drain, not the rest
            for output in _guarded(pool.drain(), node):
                context.send(output)

    return use_context_processor(open_pool)(per_item(node))


def bounded_input(size: int):
    """Make a node's input queue hold at most ``size`` items instead of bonobo's 8,192.

    A node whose items are large (parsed headers) then holds its producers back when it lags,
    so memory stays flat however fast the reads upstream are. `StartedThreadPoolStrategy`
    applies the size before any node starts.
    """

    def mark(node):
        node.__input_size__ = size
        return node

    return mark


def _guarded(outputs: Iterable, node) -> Iterator:
    """Drain outputs, logging (and counting on the run) an unexpected error without losing the
    rest of the queue."""
    iterator = iter(outputs)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except Exception:
            logger.exception("unexpected error while finishing %s", getattr(node, "__name__", node))
            _UNEXPECTED.set()


_UNEXPECTED = threading.Event()


class StatusLines(Plugin):
    """bonobo's status lines (``- name in=.. out=.. err=.. [done]``) for output that is not a
    terminal (containers, CloudWatch): every ``period`` seconds while running, and at the end.

    While running, ``progress()`` (when given) adds a line of the run's own: how many inputs
    are done out of how many, the rate and the time left. In JSON logs each line is an event
    (``status``, ``progress``).
    """

    def __init__(self, period: float = 10.0, stream=None, progress: Callable | None = None):
        self.period = period
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


def _progress_of(services) -> Callable[[], str | None]:
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


class PromptInput(Input):
    """A node's input queue that waits for the next item instead of polling for it.

    bonobo asks for an item without waiting and, when there is none, sleeps 0.2 s: at every
    stage of a graph an item (or the end of the stream) could wait that long. Waiting on the
    queue itself wakes the node as soon as something arrives.
    """

    WAIT = 1.0

    def get(self, block=True, timeout=None):
        return super().get(block, self.WAIT if timeout == 0 else timeout)


class PromptNodeExecutionContext(NodeExecutionContext):
    """bonobo's node context with a `PromptInput`."""

    QueueType = PromptInput


class PromptGraphExecutionContext(GraphExecutionContext):
    """bonobo's graph context with prompt nodes, watched 20 times a second."""

    NodeExecutionContextType = PromptNodeExecutionContext
    TICK_PERIOD = 0.05


class StartedThreadPoolStrategy(ThreadPoolExecutorStrategy):
    """bonobo's thread-per-node strategy, but it waits for every node to start before it
    watches for the end, so a graph never ends early ("context cannot be stopped as it never
    started") when threads are slow to start; its nodes wait for their input promptly."""

    GraphExecutionContextType = PromptGraphExecutionContext

    def execute(self, graph, **kwargs):
        context = self.create_graph_execution_context(graph, **kwargs)
        for node in context.nodes:
            node.input.maxsize = getattr(node.wrapped, "__input_size__", node.input.maxsize)
        context.write(BEGIN, (), END)
        futures: list[Future] = []
        with self.create_executor(graph) as executor:
            try:
                context.start(self.get_starter(executor, futures))
            except Exception:
                logger.critical("could not start the graph", exc_info=True)
            while not all(node.started for node in context.nodes) and not all(
                f.done() for f in futures
            ):
                time.sleep(0.005)
            while context.alive:
                try:
                    context.tick()
                except KeyboardInterrupt:
                    logger.warning("interrupted: stopping the nodes")
                    context.kill()
                    break
            context.stop()
        return context


class LazyServices(Mapping):
    """A graph's services, built on first use.

    bonobo reads the services only when it starts the graph, so ``bonobo inspect`` never builds
    them (it needs no environment), while a run with a bad setting stops before any node starts:
    ``factory`` raising `ExpectedError` prints its message and exits with the error's
    ``exit_code`` (`EXIT_CONFIG` by default; `EXIT_BUSY` when another run holds the lease).
    """

    def __init__(self, factory: Callable[[], dict]):
        self._factory = factory
        self._services: dict | None = None

    @property
    def built(self) -> bool:
        """Whether the services have been built."""
        return self._services is not None

    def load(self) -> dict:
        """Build the services (once) and return them."""
        if self._services is None:
            try:
                self._services = self._factory()
            except ExpectedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(getattr(exc, "exit_code", EXIT_CONFIG)) from None
        return self._services

    def __getitem__(self, name):
        return self.load()[name]

    def __iter__(self):
        return iter(self.load())

    def __len__(self) -> int:
        return len(self.load())


def unexpected_errors(context) -> int:
    """Errors bonobo counted in the nodes (each an exception a node did not handle)."""
    extra = 1 if _UNEXPECTED.is_set() else 0
    return sum(node.statistics.get("err", 0) for node in context.nodes) + extra


class GraphDidNotRun(RuntimeError):
    """bonobo stopped before the graph ran (it prints the error in a box and returns None)."""


def run(graph, services, *, finish: Callable | None = None, progress_seconds: float = 10.0):
    """Run ``graph`` with bonobo, the way both ``bonobo run`` and ``python -m`` use it.

    Under ``bonobo run`` this only records the call (the CLI runs the graph afterwards, with the
    same plugins) and returns None; otherwise it runs the graph and returns the context.

    Raises
    ------
    GraphDidNotRun
        When bonobo could not run the graph at all (an import or start-up error that
        ``bonobo.run`` reports in a box and swallows): the run must not look successful.
    """
    _UNEXPECTED.clear()
    plugins: list = []
    if not sys.stdout.isatty():
        plugins.append(StatusLines(progress_seconds, progress=_progress_of(services)))
    if finish is not None:
        plugins.append(OnFinish(finish))
    recorded = bonobo.run is not bonobo_api.run  # the bonobo CLI's recorder
    context = bonobo.run(
        graph, services=services, plugins=plugins, strategy=StartedThreadPoolStrategy()
    )
    if context is None and not recorded:
        raise GraphDidNotRun("bonobo could not run the graph; its error is printed above")
    return context


#: The environment every graph reads (each command adds its own lines).
ENVIRONMENT_HELP = """environment:
  WAREHOUSE_BUCKET   bucket name, s3://name, or file:///path (BUCKET_NAME accepted too);
                     it and <bucket>-processed must exist
  WAREHOUSE_WORKERS  storage requests in flight at once (default 32)
  WAREHOUSE_PROGRESS_SECONDS  status line period when output is not a terminal (default 10)
  WAREHOUSE_LOG_FORMAT  text (default) or json: one JSON object per line
  WAREHOUSE_MAX_CLINICAL_BYTES, WAREHOUSE_MAX_HEADER_BYTES  size limits (16 MiB, 64 MiB)
  RUN_SUMMARY_FILE   also write the run summary to this file
  AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_PROFILE, ...  standard AWS settings"""


def command_parser(module: str, description: str, extra_help: str) -> argparse.ArgumentParser:
    """The command line of a graph: its description, the environment, ``--version``.

    Parameters
    ----------
    module : str
        The graph, such as ``warehouseloader``: also the name of its console script.
    description, extra_help : str
        What the graph does; its own environment and exit code lines.

    Returns
    -------
    argparse.ArgumentParser
        Named after the console script when run as one, else ``python -m warehouse.<graph>``;
        ``--version`` prints ``<name> <warehouse.__version__>``.
    """
    from warehouse import __version__

    invoked_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    prog = module if invoked_as == module else f"python -m warehouse.{module}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{ENVIRONMENT_HELP}\n{extra_help}\n\n{config_help()}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def account_for_errors(report, context) -> None:
    """Mark the run incomplete if bonobo counted unhandled errors in its nodes."""
    errors = unexpected_errors(context)
    if errors:
        report.fail(f"{errors} unexpected error(s) in the nodes; see the log above")


def emit_summary(summary: str, report, exit_code: int, stream=None) -> None:
    """Print the run summary: as text, or (``WAREHOUSE_LOG_FORMAT=json``) as one JSON object
    with the run's counts, its inputs not filed by reason and the exit code."""
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
        print(summary, file=stream, flush=True)


def write_summary_file(summary: str) -> None:
    """Copy the run summary to ``RUN_SUMMARY_FILE`` when it is set (the bin/ wrappers read it)."""
    path = os.environ.get("RUN_SUMMARY_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(summary + "\n")


def exit_code(report) -> int:
    """0 when the run completed, 2 when config.json stopped it, 1 when it could not complete."""
    if report.fatal and report.config_problem:
        return EXIT_CONFIG
    return EXIT_OK if report.completed else EXIT_INCOMPLETE


def run_graph(graph, services, finish: Callable[[dict, object], int]) -> int | None:
    """Run a graph module's graph; the exit code ``finish(services, context)`` decided, or None
    when the call was only recorded (under ``bonobo run``, which runs the graph afterwards).

    Parameters
    ----------
    graph : bonobo.Graph
        The graph.
    services : dict or LazyServices
        Its services; a `LazyServices` is built when the graph starts.
    finish : callable
        ``finish(services, context) -> exit code``, called once the graph has stopped.
    """
    configure_logging()
    lazy = services if isinstance(services, LazyServices) else None

    def loaded() -> dict:
        return lazy.load() if lazy else services

    codes: list[int] = []

    def finish_safely(context) -> None:
        # bonobo swallows an exception here and returns nothing: keep the exit code truthful.
        try:
            codes.append(finish(loaded(), context))
        except Exception:
            logger.exception("could not finish the run")
            codes.append(EXIT_INTERNAL)

    progress = float(os.environ.get("WAREHOUSE_PROGRESS_SECONDS", "10") or 10)
    recording = bonobo.run is not bonobo_api.run
    try:
        context = run(graph, services, finish=finish_safely, progress_seconds=progress)
    except GraphDidNotRun as exc:
        logger.critical("%s: nothing was done (exit code %d)", exc, EXIT_INTERNAL)
        return EXIT_INTERNAL
    finally:
        # (under bonobo run the graph only runs later: its finish gives things back)
        if not recording and (lazy is None or lazy.built):
            loaded()["state"].close()
    if context is None:
        return None
    return codes[0] if codes else EXIT_INTERNAL


def main(module, argv) -> int | None:
    """Command line of a graph module: parse ``--help``, run with services from the
    environment (built lazily, so ``bonobo inspect`` needs none).

    Parameters
    ----------
    module : module
        The graph module, as its ``main`` passes it: ``sys.modules[__name__]``.
    argv : list of str or None
        The arguments (``sys.argv[1:]`` when None).
    """
    graph_globals = sys._getframe(1).f_globals
    if vars(module) is not graph_globals and graph_globals.get("__name__") == module.__name__:
        # `bonobo run -m warehouse.<graph>` runs the module through runpy as "__main__" in a
        # namespace of its own, without putting it in sys.modules: sys.modules["__main__"] is
        # then bonobo's script. The caller's globals are the graph module's.
        import types

        module = types.SimpleNamespace(**graph_globals)
    module.command_parser().parse_args(argv)
    return run_graph(module.get_graph(), LazyServices(module.get_services), module.finish_run)


def publish_report(storage, report, dry_run: bool) -> str:
    """Write the JSON run report into the warehouse (print it instead in a dry run), then its
    page beside it (``report_page.page_key``).

    A page that cannot be written is logged and named in the summary; it does not change the
    run's outcome (the JSON report, which the next run reads, is written first).

    The copy ``latest.json``, which the next loader run reads as its memo of unfiled inputs, is
    replaced only by a run that listed its inputs: a run stopped by ``config.json`` or by a
    listing that failed writes its own report (saying why) but never makes the next run read
    every known-bad input again.

    Returns
    -------
    str
        The summary lines that say where the report and its page are (empty when the report
        is not written).
    """
    if dry_run:
        print(json.dumps(report.as_dict(), indent=2))
        return ""
    try:
        data = report.to_json()
        storage.write(report.key(), data)
        if report.listed:
            storage.write(report.latest_key(), data)
    except ExpectedError as exc:
        logger.error("could not write the run report: %s", exc)
        report.fail(f"run report not written: {exc}")
        return ""
    lines = f"\n  report: {storage.url}/{report.key()}"
    page = page_key(report.key())
    try:
        html = run_report_page(json.loads(data), warehouse=storage.url, json_key=report.key())
        storage.write(page, html.encode("utf-8"), "text/html; charset=utf-8")
    except ExpectedError as exc:
        logger.error("could not write the run report page: %s", exc)
        return lines + f"\n  report page not written: {exc}"
    except Exception:  # noqa: BLE001 - a bug in the page never costs the run or its report
        logger.exception("could not build the run report page")
        return lines + "\n  report page not written: see the log above"
    return lines + f"\n  report page: {storage.url}/{page}"


def graph_services(graph: str, state_type: type, settings=None, storage=None) -> dict:
    """The services every graph has: ``storage`` and ``state`` (a ``state_type``, with the run's
    report and `WorkerPool`).

    Parameters
    ----------
    graph : str
        The graph's name (its run report's folder).
    state_type : type
        The graph's `RunState` subclass.
    settings : Settings, optional
        Run settings; read from the environment when omitted.
    storage : Storage, optional
        A store to use instead of the one the settings name (tests swap backends here).
    """
    settings = settings or settings_from_env()
    if storage is None:
        storage = storage_from_url(
            settings.bucket, workers=settings.workers, dry_run=settings.dry_run
        )
    storage.check_store()  # before anything is read: a missing bucket is a settings error
    report = RunReport(graph, settings.run_id)
    shard = f"{settings.shard[0]}/{settings.shard[1]}" if settings.shard else None
    if settings.phase == "clinical":
        shard = "clinical"  # the clinical phase of a sharded run
    RUN_CONTEXT.update(graph=graph, run_id=report.run_id, shard=shard)
    state = state_type(settings, report, WorkerPool(settings.workers))
    # bonobo adds an ``fs`` (pyfilesystem, which needs pkg_resources) and an ``http``
    # (requests) service to any graph without them; no node uses either, so neither is built.
    return {"storage": storage, "state": state, "fs": None, "http": None}
