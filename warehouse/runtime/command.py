"""The command line and the run of every graph: ``--help`` and ``--version``, running the
graph the same way under ``bonobo run`` and ``python -m``, the shared end of a run, a clean stop
on SIGTERM or SIGINT (`warehouse.core.stop`), and an exit code that never says a run succeeded
when it did not, under ``bonobo run`` too."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import bonobo
from bonobo import _api as bonobo_api

from warehouse.core import stop
from warehouse.core.config import config_help
from warehouse.core.run import EXIT_INTERNAL, end_at_once, end_run
from warehouse.runtime import pools
from warehouse.runtime.logs import configure_logging
from warehouse.runtime.plugins import OnFinish, StatusLines, progress_of
from warehouse.runtime.services import LazyServices
from warehouse.runtime.strategy import StartedThreadPoolStrategy

logger = logging.getLogger(__name__)


def unexpected_errors(context) -> int:
    """Errors bonobo counted in the nodes (each an exception a node did not handle), and one
    for any error while a pooled node drained its work."""
    extra = 1 if pools.unexpected_error_seen() else 0
    return sum(node.statistics.get("err", 0) for node in context.nodes) + extra


def recording() -> bool:
    """Whether ``bonobo.run`` is the bonobo CLI's recorder (``bonobo run FILE`` runs the file,
    records the graph it passes to ``bonobo.run`` and runs that graph afterwards)."""
    return bonobo.run is not bonobo_api.run


def finish_run(services, context) -> int:
    """The end of every graph's run, once its nodes have stopped (`warehouse.core.run.end_run`
    with the errors bonobo counted): the report, the summary and the exit code."""
    return end_run(services["state"], services["storage"], unexpected_errors(context))


class GraphDidNotRun(RuntimeError):
    """bonobo stopped before the graph ran (it prints the error in a box and returns None)."""


def run(
    graph,
    services,
    *,
    finish: Callable | None = None,
    progress_seconds: float | Callable[[], float] | None = None,
):
    """Run ``graph`` with bonobo, the way both ``bonobo run`` and ``python -m`` use it.

    Under ``bonobo run`` this only records the call (the CLI runs the graph afterwards, with the
    same plugins) and returns None; otherwise it runs the graph and returns the context.

    Raises
    ------
    GraphDidNotRun
        When bonobo could not run the graph at all (an import or start-up error that
        ``bonobo.run`` reports in a box and swallows): the run must not look successful.
    """
    pools.forget_unexpected_error()
    plugins: list = []
    if not sys.stdout.isatty():
        period = progress_seconds
        if period is None:  # the run's setting (WAREHOUSE_PROGRESS_SECONDS), read with the others
            period = lambda: services["state"].settings.progress_seconds  # noqa: E731
        plugins.append(StatusLines(period, progress=progress_of(services)))
    if finish is not None:
        plugins.append(OnFinish(finish))
    recorded = recording()
    context = bonobo.run(
        graph, services=services, plugins=plugins, strategy=StartedThreadPoolStrategy()
    )
    if context is None and not recorded:
        raise GraphDidNotRun("bonobo could not run the graph; its error is printed above")
    return context


#: The environment every graph reads (each command adds its own lines).
ENVIRONMENT_HELP = """environment:
  WAREHOUSE_BUCKET   bucket name, s3://name, or file:///path (BUCKET_NAME accepted too);
                     it must exist
  WAREHOUSE_WORKERS  storage requests in flight at once (default 32)
  WAREHOUSE_PROGRESS_SECONDS  status line period when output is not a terminal (default 10)
  WAREHOUSE_LOG_FORMAT  text (default) or json: one JSON object per line
  WAREHOUSE_MAX_CLINICAL_BYTES, WAREHOUSE_MAX_HEADER_BYTES  size limits (1 MiB, 64 MiB)
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


def run_graph(graph, services, finish: Callable[[dict, object], int] = finish_run) -> int | None:
    """Run a graph module's graph; the exit code ``finish(services, context)`` decided, or None
    when the call was only recorded (under ``bonobo run``, which runs the graph afterwards and
    then exits with that code when it is not 0).

    SIGTERM and SIGINT stop the run cleanly while it lasts (`warehouse.core.stop.arm`): its
    end is the usual one, its report marked stopped, and the code is 128 + the signal.

    Parameters
    ----------
    graph : bonobo.Graph
        The graph.
    services : dict or LazyServices
        Its services; a `LazyServices` is built when the graph starts.
    finish : callable, optional
        ``finish(services, context) -> exit code``, called once the graph has stopped
        (`finish_run` unless a graph needs another end).
    """
    configure_logging()
    lazy = services if isinstance(services, LazyServices) else None

    def loaded() -> dict:
        return lazy.load() if lazy else services

    def ended_at_once() -> int:
        # the deadline of a stop: end with what the run has, if it has started at all
        if lazy is not None and not lazy.built:
            return stop.RUN_STOP.exit_code
        built = loaded()
        return end_at_once(built["state"], built["storage"])

    if not stop.arm(on_deadline=ended_at_once) and not stop.armed():
        stop.RUN_STOP.reset()  # (not the main thread: no handlers, but a fresh stop)
    codes: list[int] = []
    recorded = recording()

    def finish_safely(context) -> None:
        # bonobo swallows an exception here and returns nothing: keep the exit code truthful.
        try:
            codes.append(finish(loaded(), context))
        except Exception:
            logger.exception("could not finish the run")
            codes.append(EXIT_INTERNAL)
        if recorded:
            # under bonobo run, whose command exits 0 whatever happened: exit with the run's
            # code (this is the last listener of the graph's end, after the status lines)
            loaded()["state"].close()
            stop.disarm()
            if codes[0]:
                raise SystemExit(codes[0])

    try:
        context = run(graph, services, finish=finish_safely)
    except GraphDidNotRun as exc:
        logger.critical("%s: nothing was done (exit code %d)", exc, EXIT_INTERNAL)
        return EXIT_INTERNAL
    finally:
        # (under bonobo run the graph only runs later: its finish gives things back)
        if not recorded:
            if lazy is None or lazy.built:
                loaded()["state"].close()
            stop.disarm()
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
    return run_graph(module.get_graph(), LazyServices(module.get_services))
