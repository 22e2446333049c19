"""Submitting centres: the sorted unique ``SubmittingCentre`` values of the raw clinical files.

    load_config -> extract_raw_data_files -> SubmittingCentreExtractor

An operator runs it to fill the ``sites`` of ``config.json``. Standard output carries the
centres only, one per line, sorted, so that ``... > centres.txt`` keeps them (a name's control
characters and backslashes escaped: `collection.centre_lines`); logs, status lines, unreadable
files and the run summary go to standard error. Nothing is written.

Run it with ``bonobo run warehouse/submittingcentres.py --env WAREHOUSE_BUCKET=...`` or
``python -m warehouse.submittingcentres`` (same graph, a truthful exit code). The per-file
rules live in ``warehouse.centres.collection``; this module only wires nodes and services.
"""

from __future__ import annotations

import functools
import logging
import sys

import bonobo
from bonobo.config import use

from warehouse.centres.collection import (
    CentresState,
    PatientFiles,
    collect_centres,
    patients_to_read,
    read_centres,
)
from warehouse.core.config import (
    PipelineConfig,
    Settings,
    load_pipeline_config,
)
from warehouse.runtime import command, pools
from warehouse.runtime.services import graph_services
from warehouse.storage.base import Storage

logger = logging.getLogger("submittingcentres")

GRAPH_NAME = "submittingcentres"


@use("storage", "state")
def load_config(storage: Storage, state: CentresState):
    """Read and validate ``config.json`` (its ``raw_prefixes`` say what to read)."""
    state.config = load_pipeline_config(storage, state.report)
    yield (state.config,)


@use("storage", "state")
def extract_raw_data_files(config: PipelineConfig, storage: Storage, state: CentresState):
    """List the configured raw prefixes once; yield each patient's clinical files together."""
    for patient in patients_to_read(storage, state):
        yield (patient,)


# The node names are part of the interface (status lines): hence a class-like function name.
@use("storage", "state")
@pools.pooled
def SubmittingCentreExtractor(pool, patient: PatientFiles, storage: Storage, state: CentresState):
    """Read the patients' files concurrently; collect the centres (yield each new one)."""
    pool.submit(read_centres, storage, patient, then=functools.partial(collect_centres, state))
    yield from pool.ready()


def get_graph(**options) -> bonobo.Graph:
    """The submittingcentres graph; node names are part of the interface."""
    graph = bonobo.Graph()
    graph.add_chain(load_config, extract_raw_data_files, SubmittingCentreExtractor)
    return graph


def get_services(settings: Settings | None = None, storage: Storage | None = None, **options):
    """The services: ``storage`` (the warehouse store, read only) and ``state`` (the run); see
    `graph_services`."""
    return graph_services(GRAPH_NAME, CentresState, settings, storage)


def run(services) -> int | None:
    """Run the graph with ``services``; the exit code, or None when only recorded (bonobo run)."""
    return command.run_graph(get_graph(), services)


def command_parser():
    """The command line (``--help``)."""
    return command.command_parser(
        "submittingcentres",
        "Print the sorted unique SubmittingCentre values of the clinical files under the raw "
        "prefixes that config.json lists, one per line on standard output (logs and the run "
        "summary go to standard error). Control characters in a name are printed as backslash "
        "escapes (a newline as \\n, ESC as \\x1b) and a backslash as \\\\, so each name "
        "stays one line. Nothing is written.",
        """
exit codes: 0 run completed (unreadable files are reported on stderr, not failures);
  1 some reads failed (the list may be incomplete, so it is not printed);
  2 bad settings, config.json or a missing store; 70 the graph could not run;
  130/143 stopped by SIGINT/SIGTERM (nothing printed)""",
    )


def main(argv=None) -> int | None:
    """Command line entry point (``python -m warehouse.submittingcentres``)."""
    return command.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
