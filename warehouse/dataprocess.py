"""Dashboard tables: the warehouse side in, a batch of CSV and Parquet tables out.

    list_clinical_files -> load_clinical_files ----------------+
    list_image_metadata_files -> load_image_metadata_files ----+-> DataExtractor
    get_storage_stats -----------------------------------------+

The three branches run in parallel from one listing of ``training/`` and ``validation/`` (the
``catalogue`` service lists on first use and shares the result). ``DataExtractor`` collects
their rows and, once all three have ended, builds the tables and writes them to the processed
store (``<bucket>-processed``) in a folder named by the run's UTC time, then ``latest.csv``.

Run it with ``bonobo run warehouse/dataprocess.py --env WAREHOUSE_BUCKET=...`` or
``python -m warehouse.dataprocess`` (same graph, a truthful exit code). The rules live in
``warehouse.components`` (``catalogue``, ``extraction``, ``tables``, ``cleaning``,
``dashboard``); this module only wires nodes and services.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys

import bonobo
from bonobo.config import use
from bonobo.config.processors import use_context_processor

from warehouse.components import execution
from warehouse.core.config import Settings, load_pipeline_config
from warehouse.core.errors import ExpectedError
from warehouse.core.report import Reason
from warehouse.core.storage import Storage
from warehouse.dashboard.batch import build_batch, read_page_inputs, write_batch
from warehouse.dashboard.contents import StudyFile, WarehouseCatalogue, WarehouseContents
from warehouse.dashboard.extraction import (
    Collected,
    DataprocessState,
    PatientFile,
    StorageSizes,
    patient_files,
    patient_row,
    read_patient_record,
    read_study_row,
    study_row,
)

logger = logging.getLogger("dataprocess")

GRAPH_NAME = "dataprocess"


def _contents(catalogue: WarehouseCatalogue, state: DataprocessState) -> WarehouseContents:
    try:
        contents = catalogue.contents()
    except ExpectedError as exc:
        state.report.fail(f"cannot list the warehouse: {exc}")
        raise
    state.report.listed = True
    return contents


@use("catalogue", "state")
def list_clinical_files(catalogue: WarehouseCatalogue, state: DataprocessState):
    """Choose each patient's clinical file from the listed names (section 1.2); yield it."""
    contents = _contents(catalogue, state)
    for key in contents.links:
        state.report.skip(key, Reason.SYMLINK, "a symbolic link in the warehouse: not read")
    logger.info(
        "listed %d objects: %d patients with clinical files, %d studies",
        contents.objects,
        len(contents.clinical),
        len(contents.studies),
    )
    for patient in patient_files(contents, state.report):
        yield (patient,)


@use("storage", "state")
@execution.pooled
def load_clinical_files(pool, patient: PatientFile, storage: Storage, state: DataprocessState):
    """Read the chosen clinical files concurrently; yield one patient row each."""
    then = functools.partial(patient_row, state.report)
    pool.submit(read_patient_record, storage, patient, then=then)
    yield from pool.ready()


@use("catalogue", "state")
def list_image_metadata_files(catalogue: WarehouseCatalogue, state: DataprocessState):
    """Yield one metadata file per study folder (the first key in sort order)."""
    for study in _contents(catalogue, state).sorted_studies():
        yield (study,)


@use("storage", "state")
@execution.pooled
def load_image_metadata_files(pool, study: StudyFile, storage: Storage, state: DataprocessState):
    """Read the studies' metadata files concurrently; yield one study row each."""
    pool.submit(read_study_row, storage, study, then=functools.partial(study_row, state.report))
    yield from pool.ready()


@use("catalogue", "state")
def get_storage_stats(catalogue: WarehouseCatalogue, state: DataprocessState):
    """Yield the bytes stored under each storage prefix (from the same listing)."""
    yield (StorageSizes(dict(_contents(catalogue, state).storage)),)


def _build_and_write(
    context,
    storage: Storage,
    state: DataprocessState,
    collected: Collected,
    catalogue: WarehouseCatalogue,
):
    """Build the batch and write it; a failure is reported and nothing else is published."""
    report = state.report
    errors = execution.unexpected_errors(context.parent) if context.parent else 0
    if errors or not report.completed:
        report.fail(report.fatal or "some files could not be read; nothing was written")
        logger.error("the run is incomplete: no tables written, latest.csv unchanged")
        return
    store = storage.processed()
    state.processed_url = store.url
    try:
        batch = build_batch(
            collected.patients,
            collected.studies,
            collected.storage,
            dt.datetime.now(dt.UTC),
            # For the pages: images per study from the same listing, config.json and the
            # loader's last run report.
            study_images=catalogue.contents().images,
            inputs=read_page_inputs(storage, state.config),
        )
        state.batch = batch.name
        for name, table in batch.tables.items():
            logger.info("%s: %d rows", name, len(table))
        state.written = write_batch(store, batch, state.settings.workers)
    except ExpectedError as exc:
        report.fail(f"tables not written: {exc}")
        logger.error("tables not written: %s", exc)
    except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the run fails
        logger.exception("could not build or write the tables")
        report.fail("could not build or write the tables; see the log above")


def _collect_then_write(
    node,
    context,
    *,
    storage: Storage,
    state: DataprocessState,
    catalogue: WarehouseCatalogue,
    **services,
):
    collected = Collected()
    yield collected
    _build_and_write(context, storage, state, collected, catalogue)


# The node names are part of the interface (status lines): hence a class-like function name.
@use("storage", "state", "catalogue")
@use_context_processor(_collect_then_write)
def DataExtractor(
    collected: Collected,
    item,
    storage: Storage,
    state: DataprocessState,
    catalogue: WarehouseCatalogue,
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
    tables), ``catalogue`` (its listing, made once) and ``state`` (the run); see
    `execution.graph_services`."""
    services = execution.graph_services(GRAPH_NAME, DataprocessState, settings, storage)
    services["storage"].processed().check_store()  # before reading: where the tables go
    # A bucket without a valid config.json is not a warehouse: nothing is published from it.
    state = services["state"]
    state.config = load_pipeline_config(services["storage"], state.report)
    services["catalogue"] = WarehouseCatalogue(
        services["storage"], services["state"].settings.workers
    )
    return services


def finish_run(services, context) -> int:
    """After the graph: print the summary, write the JSON report, decide the exit code."""
    storage, state = services["storage"], services["state"]
    report = state.report
    execution.account_for_errors(report, context)
    summary = report.summary()
    if state.written:
        where = f"{state.processed_url}/{state.batch}/"
        if state.settings.dry_run:
            summary += f"\n  tables: {where} (dry run: nothing was written)"
        else:
            summary += f"\n  tables: {where} ({len(state.written) - 1} files; latest.csv updated)"
    if not state.settings.dry_run and not services["catalogue"].listed:
        logger.warning("the warehouse could not be listed: no run report written")
    else:
        summary += execution.publish_report(storage, report, state.settings.dry_run)
    state.exit_code = execution.exit_code(report)
    summary += f"\n  run id: {report.run_id}"
    execution.emit_summary(summary, report, state.exit_code)
    execution.write_summary_file(summary)
    return state.exit_code


def run(services) -> int | None:
    """Run the graph with ``services``; the exit code, or None when only recorded (bonobo run)."""
    return execution.run_graph(get_graph(), services, finish_run)


def command_parser():
    """The command line (``--help``)."""
    return execution.command_parser(
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
    return execution.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
