"""What the warehouse adds to bonobo's own command line, through its commands' entry points.

Every ``bonobo`` command loads the ``bonobo.commands`` entry points before it parses its
arguments:

- ``bonobo graphs`` lists the warehouse's graphs and how to run them from any directory;
- ``bonobo run`` (or ``bonobo inspect``) of a graph file or module that cannot be found says so
  in one line and exits 2, instead of bonobo's traceback (which mondrian 0.8.1 cannot even
  print on Python >= 3.10: a "logging error" is all that shows). Any other uncaught error is
  printed as a traceback, with the logging repaired first.

This module is imported by every ``bonobo`` command: it imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

#: The graph modules, in the order a run uses them.
GRAPHS = ("warehouse.submittingcentres", "warehouse.warehouseloader", "warehouse.dataprocess")


def graphs_command(parser):
    """Make the ``bonobo graphs`` command, and a missing graph one line (`missing_graph_line`).

    bonobo's function form of a command: it is given its parser and returns its handler.
    """
    parser.description = "List the warehouse's graphs and how to run them."
    sys.excepthook = _one_line_for_a_missing_graph(sys.excepthook)

    def handle(**_options) -> None:
        for module in GRAPHS:
            print(f"bonobo run -m {module} --env WAREHOUSE_BUCKET=...")
        print("(any directory; bonobo run warehouse/<graph>.py from the repository root)")

    return handle


def missing_graph_line(error: BaseException, traceback: TracebackType | None) -> str | None:
    """Say in one line why ``bonobo run`` could not read its graph (None: another error).

    The graph file does not exist, or its module cannot be found.

    Parameters
    ----------
    error : BaseException
        The uncaught error.
    traceback : traceback or None
        Its traceback: the error counts only when ``runpy`` raised it (bonobo reads the graph
        file or module with it).
    """
    if not _raised_by_runpy(traceback):
        return None
    if isinstance(error, FileNotFoundError):
        return (
            f"bonobo: graph file not found: {error.filename} (in {os.getcwd()}); run it from "
            "the repository root, or name its module from anywhere: "
            "bonobo run -m warehouse.<graph>"
        )
    if isinstance(error, ImportError):
        return (
            f"bonobo: graph module not found ({error}); the graphs are "
            f"{', '.join(GRAPHS)} (bonobo graphs lists them)"
        )
    return None


def _raised_by_runpy(traceback: TracebackType | None) -> bool:
    last = None
    while traceback is not None:
        last, traceback = traceback, traceback.tb_next
    where = last.tb_frame.f_code.co_filename if last is not None else ""
    return where == "<frozen runpy>" or os.path.basename(where) == "runpy.py"


def _one_line_for_a_missing_graph(previous):
    def hook(kind, error, traceback) -> None:
        line = missing_graph_line(error, traceback)
        if line is None:
            from warehouse.runtime.logs import configure_logging

            configure_logging()  # (mondrian's hook logs the traceback: repair it first)
            previous(kind, error, traceback)
            return
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        os._exit(2)  # a usage error; nothing of the run had started

    return hook
