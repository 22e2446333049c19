"""Dashboard tables: the warehouse side in, a batch of CSV and Parquet tables out.

    list_clinical_files -> load_clinical_files ----------------+
    list_image_metadata_files -> load_image_metadata_files ----+-> DataExtractor
    get_storage_stats -----------------------------------------+

The three branches run in parallel from one view of the warehouse (the ``warehouse_index``
service builds it on first use and shares it: `dashboard.view`): the patients' clinical
folders listed, the image catalogue merged with the parts written since the last batch, and
the last batch's rows, so that only new or changed clinical and metadata files are read.
``DataExtractor`` collects their rows and, once all three have ended, builds the tables and
writes them to the processed store (``<bucket>-processed``) in a folder named by the run's UTC
time, then ``latest.csv``.

Run it with ``bonobo run warehouse/dataprocess.py --env WAREHOUSE_BUCKET=...`` or
``python -m warehouse.dataprocess`` (same graph, a truthful exit code). The rules live in
``warehouse.dashboard`` (``contents``, ``extraction``, ``tables``, ``cleaning``, ``batch``,
``figures``, ``pages``); this module only wires nodes and services.
"""

from __future__ import annotations

import functools
import logging
import sys

import bonobo
from bonobo.config import use
from bonobo.config.processors import use_context_processor

from warehouse.core.config import Settings, load_pipeline_config
from warehouse.dashboard.batch import publish_batch
from warehouse.dashboard.extraction import (
    Collected,
    DataprocessState,
    Reused,
    clinical_inputs,
    in_runs,
    patient_row,
    read_patient_record,
    read_study_row,
    reused_rows,
    storage_sizes,
    study_row,
)
from warehouse.dashboard.view import SharedView, build_view
from warehouse.runtime import command, pools
from warehouse.runtime.services import graph_services
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

GRAPH_NAME = "dataprocess"


@use("warehouse_index", "state")
def list_clinical_files(warehouse_index: SharedView, state: DataprocessState):
    """Choose each patient's clinical file from the listed names (section 1.2); yield it with
    the record read from it last time, when the file has not changed since (those in runs:
    `in_runs`)."""
    for item in in_runs(clinical_inputs(state.view(warehouse_index), state.report)):
        yield (item,)


@use("storage", "state")
@pools.pooled
def load_clinical_files(pool, item, storage: Storage, state: DataprocessState):
    """Read the chosen clinical files concurrently (a record known from the last batch is
    not read again); yield their patient rows in input order."""
    then = functools.partial(patient_row, state.report)
    if isinstance(item, Reused):
        pool.put(item, then=functools.partial(reused_rows, then, state.item_failed), item=item)
    else:
        pool.submit(read_patient_record, storage, item[0], then=then)
    yield from pool.ready()


@use("warehouse_index", "state")
def list_image_metadata_files(warehouse_index: SharedView, state: DataprocessState):
    """Yield one metadata file per study folder (the first key in sort order), with the fields
    read from it last time when its study has no newly catalogued image (those in runs:
    `in_runs`)."""
    for item in in_runs(state.view(warehouse_index).study_files()):
        yield (item,)


@use("storage", "state")
@pools.pooled
def load_image_metadata_files(pool, item, storage: Storage, state: DataprocessState):
    """Read the studies' metadata files concurrently (unless known from the last batch);
    yield their study rows in input order."""
    then = functools.partial(study_row, state.report)
    if isinstance(item, Reused):
        pool.put(item, then=functools.partial(reused_rows, then, state.item_failed), item=item)
    else:
        pool.submit(read_study_row, storage, item[0], then=then)
    yield from pool.ready()


@use("warehouse_index", "state")
def get_storage_stats(warehouse_index: SharedView, state: DataprocessState):
    """Yield the bytes stored under each storage prefix (clinical folders as listed, image
    folders as catalogued)."""
    yield (storage_sizes(state.view(warehouse_index)),)


def _collect_then_write(
    node,
    context,
    *,
    storage: Storage,
    state: DataprocessState,
    warehouse_index: SharedView,
    **services,
):
    collected = Collected()
    yield collected
    errors = command.unexpected_errors(context.parent) if context.parent else 0
    try:
        # the batch is the run's end: a stop that comes later does not cut it in half
        if state.stop.close():
            state.report.stopped = state.stop.name
            logger.warning("the run was stopped (%s): no batch is published", state.stop.name)
        else:
            publish_batch(storage, state, collected, warehouse_index, errors)
    finally:
        warehouse_index.close()


# The node names are part of the interface (status lines): hence a class-like function name.
@use("storage", "state", "warehouse_index")
@use_context_processor(_collect_then_write)
def DataExtractor(
    collected: Collected,
    item,
    storage: Storage,
    state: DataprocessState,
    warehouse_index: SharedView,
):
    """Join the branches: collect every row; at the end, build and write the tables."""
    collected.add(item)


def get_graph(**options) -> bonobo.Graph:
    """The dataprocess graph: three branches joined by ``DataExtractor``."""
    graph = bonobo.Graph()
    graph.add_chain(list_clinical_files, load_clinical_files, DataExtractor)
    graph.add_chain(list_image_metadata_files, load_image_metadata_files, _output=DataExtractor)
    graph.add_chain(get_storage_stats, _output=DataExtractor)
    return graph


def get_services(settings: Settings | None = None, storage: Storage | None = None, **options):
    """The services: ``storage`` (the warehouse store; its ``processed()`` store receives the
    tables), ``warehouse_index`` (what the run reads, `dashboard.view`, built once) and
    ``state`` (the run); see `graph_services`."""
    services = graph_services(GRAPH_NAME, DataprocessState, settings, storage)
    services["storage"].processed().check_store()  # before reading: where the tables go
    state = services["state"]
    # A bucket without a valid config.json is not a warehouse: nothing is published from it
    # (and nothing written: not even a lease).
    state.config = load_pipeline_config(services["storage"], state.report)
    # no loader run files while the batch is built from the warehouse (exit 3 if one does)
    services["storage"] = state.take_lease(services["storage"])
    settings = state.settings
    services["warehouse_index"] = SharedView(
        functools.partial(
            build_view,
            services["storage"],
            settings.workers,
            state.workers.submit,
            state.report,
            reconcile=settings.reconcile,
            config=state.config,
        )
    )
    return services


def run(services) -> int | None:
    """Run the graph with ``services``; the exit code, or None when only recorded (bonobo run)."""
    return command.run_graph(get_graph(), services)


def command_parser():
    """The command line (``--help``)."""
    return command.command_parser(
        "dataprocess",
        "Build the dashboard tables of the WAREHOUSE_BUCKET warehouse side (training/, "
        "validation/) and write them to <bucket>-processed: a folder <UTC time>/ with ct, xray, "
        "mri, patient, patient_clean, storage and study_images as CSV and Parquet, the image "
        "catalogue images/ (Parquet segments), the public statistics files and two pages "
        "(dashboard.html, public.html), then latest.csv naming them. A run reads only what "
        "changed since the last batch: the clinical folders are listed, images come from the "
        "catalogue.",
        """  <bucket>-processed  where the tables go: it must exist too (only dataprocess needs it)
  DRY_RUN            true/false: read and build everything, write nothing (default false)
  WAREHOUSE_RECONCILE true/false: reuse nothing from the last batch; merge every catalogue part
                     and read every clinical and metadata file again (default false)

exit codes: 0 tables written, or nothing changed since the last batch (unusable files are
  reported, not failures); 1 some reads or writes failed (rerun): no batch published, or its
  run report not written (the summary says which); 2 bad settings, a missing store or
  processed store, config.json missing or invalid; 3 a loader run (or another dataprocess run)
  holds the warehouse (the run lease); 70 the graph could not run;
  130/143 stopped by SIGINT/SIGTERM: no batch published""",
    )


def main(argv=None) -> int | None:
    """Command line entry point (``python -m warehouse.dataprocess``)."""
    return command.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
