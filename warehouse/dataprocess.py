"""Dashboard tables: the warehouse side in, a batch of CSV and Parquet tables out.

    list_clinical_files -> load_clinical_files ----------------+
    list_image_metadata_files -> load_image_metadata_files ----+-> DataExtractor
    get_storage_stats -----------------------------------------+

The three branches run in parallel from one listing of ``training/`` and ``validation/`` (the
``warehouse_index`` service lists on first use and shares the result). ``DataExtractor``
collects their rows and, once all three have ended, builds the tables and writes them to the
processed store (``<bucket>-processed``) in a folder named by the run's UTC time, then
``latest.csv``.

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
    PatientFile,
    clinical_inputs,
    patient_row,
    read_patient_record,
    read_study_row,
    storage_sizes,
    study_row,
)
from warehouse.listing.warehouse import SharedWarehouseIndex, StudyFile
from warehouse.runtime import command, pools
from warehouse.runtime.services import graph_services
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

GRAPH_NAME = "dataprocess"


@use("warehouse_index", "state")
def list_clinical_files(warehouse_index: SharedWarehouseIndex, state: DataprocessState):
    """Choose each patient's clinical file from the listed names (section 1.2); yield it."""
    for patient in clinical_inputs(state.index(warehouse_index), state.report):
        yield (patient,)


@use("storage", "state")
@pools.pooled
def load_clinical_files(pool, patient: PatientFile, storage: Storage, state: DataprocessState):
    """Read the chosen clinical files concurrently; yield one patient row each."""
    then = functools.partial(patient_row, state.report)
    pool.submit(read_patient_record, storage, patient, then=then)
    yield from pool.ready()


@use("warehouse_index", "state")
def list_image_metadata_files(warehouse_index: SharedWarehouseIndex, state: DataprocessState):
    """Yield one metadata file per study folder (the first key in sort order)."""
    for study in state.index(warehouse_index).sorted_studies():
        yield (study,)


@use("storage", "state")
@pools.pooled
def load_image_metadata_files(pool, study: StudyFile, storage: Storage, state: DataprocessState):
    """Read the studies' metadata files concurrently; yield one study row each."""
    pool.submit(read_study_row, storage, study, then=functools.partial(study_row, state.report))
    yield from pool.ready()


@use("warehouse_index", "state")
def get_storage_stats(warehouse_index: SharedWarehouseIndex, state: DataprocessState):
    """Yield the bytes stored under each storage prefix (from the same listing)."""
    yield (storage_sizes(state.index(warehouse_index)),)


def _collect_then_write(
    node,
    context,
    *,
    storage: Storage,
    state: DataprocessState,
    warehouse_index: SharedWarehouseIndex,
    **services,
):
    collected = Collected()
    yield collected
    errors = command.unexpected_errors(context.parent) if context.parent else 0
    publish_batch(storage, state, collected, warehouse_index, errors)


# The node names are part of the interface (status lines): hence a class-like function name.
@use("storage", "state", "warehouse_index")
@use_context_processor(_collect_then_write)
def DataExtractor(
    collected: Collected,
    item,
    storage: Storage,
    state: DataprocessState,
    warehouse_index: SharedWarehouseIndex,
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
    tables), ``warehouse_index`` (its listing, made once) and ``state`` (the run); see
    `graph_services`."""
    services = graph_services(GRAPH_NAME, DataprocessState, settings, storage)
    services["storage"].processed().check_store()  # before reading: where the tables go
    # A bucket without a valid config.json is not a warehouse: nothing is published from it.
    state = services["state"]
    state.config = load_pipeline_config(services["storage"], state.report)
    # (with each image's name: the image catalogue is checked against the listing)
    services["warehouse_index"] = SharedWarehouseIndex(
        services["storage"], services["state"].settings.workers
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
        "mri, patient, patient_clean, storage and study_images as CSV and Parquet, the public "
        "statistics files and two pages (dashboard.html, public.html), then latest.csv "
        "naming them.",
        """  DRY_RUN            true/false: read and build everything, write nothing (default false)

exit codes: 0 tables written (unusable files are reported, not failures);
  1 some reads or writes failed, nothing published (rerun); 2 bad settings""",
    )


def main(argv=None) -> int | None:
    """Command line entry point (``python -m warehouse.dataprocess``)."""
    return command.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
