"""The warehouse loader: raw hospital uploads in, the training/validation warehouse out.

    load_config -> extract_raw_files_from_folder -> process_patient_data -> process_image
        process_image -> process_dicom_data -> upload_text_data
        process_patient_data, process_image -> data_copy

Run it with ``bonobo run warehouse/warehouseloader.py --env WAREHOUSE_BUCKET=...`` or
``python -m warehouse.warehouseloader`` (same graph, a truthful exit code). The rules live in
``warehouse.loader`` over ``warehouse.core``; this module only wires nodes and services.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import replace

import bonobo
from bonobo.config import use

from warehouse.core.config import (
    CONFIG_KEY,
    Settings,
    load_pipeline_config,
)
from warehouse.core.run import EXIT_INTERNAL, loaded
from warehouse.dicom.screen import load_screen_profile
from warehouse.loader import processes
from warehouse.loader.decisions import file_clinical, file_image
from warehouse.loader.inputs import run_inputs
from warehouse.loader.state import LoaderState
from warehouse.loader.tasks import Task
from warehouse.loader.work import (
    copy_object,
    metadata_file,
    read_clinical,
    read_image,
    record_write,
    write_object,
)
from warehouse.runtime import command, pools
from warehouse.runtime.logs import configure_logging
from warehouse.runtime.services import LazyServices, graph_services
from warehouse.storage.base import Storage

logger = logging.getLogger("warehouseloader")

GRAPH_NAME = "warehouseloader"
#: Parsed headers waiting for their JSON conversion (each some kilobytes of elements).
HEADERS_IN_QUEUE = 256
#: Tasks waiting for data_copy, which also sees (and passes over) every metadata task, header
#: included: its queue is bounded too.
TASKS_IN_QUEUE = 1024


@use("storage", "state")
def load_config(storage: Storage, state: LoaderState):
    """Read and validate ``config.json`` and the identifying-data profile; nothing runs
    without valid ones."""
    state.config = load_pipeline_config(storage, state.report)
    state.profile = load_screen_profile(state.report)
    logger.info(
        "config: %d raw prefixes, %d sites, training_percentage %d",
        len(state.config.raw_prefixes),
        len(state.config.site_rules),
        state.config.training_percentage,
    )
    yield (Task("config", CONFIG_KEY, None, None, state.config),)


@use("storage", "state")
def extract_raw_files_from_folder(task: Task, storage: Storage, state: LoaderState):
    """Look at what the run must (a daily run: what can be new; a full run: everything; a
    shard: its clinical phase's hand-off; `loader.inputs`); yield clinical files, then
    pending images."""
    for work in run_inputs(storage, state, GRAPH_NAME):
        yield (work,)


def _passthrough(task: Task) -> list[Task]:
    return [task]


@use("storage", "state")
@pools.pooled
def process_patient_data(pool, task: Task, storage: Storage, state: LoaderState):
    """Read new clinical files concurrently; assign groups in upload order; yield copy tasks.

    Images pass through behind the clinical files, so every group is known when they arrive.
    """
    if task.action == "clinical":
        read = functools.partial(
            read_clinical,
            max_bytes=state.settings.max_clinical_bytes,
            filed_centre=loaded(state.filed_centres, "the filed patients' centres"),
            budget=state.clinical_budget,
        )
        pool.submit(read, storage, task, then=functools.partial(file_clinical, state))
    elif pool.pending:
        pool.put(task, then=_passthrough)  # behind the clinical files still being read
    else:
        yield (task,)
    yield from pool.ready()


@use("storage", "state")
@pools.pooled
def process_image(pool, task: Task, storage: Storage, state: LoaderState):
    """Read each image's header (ranged reads) and yield its copy and metadata tasks."""
    if task.action == "image":
        needs_centre = task.payload.prefix in loaded(state.config, "config.json").prefix_sites
        read = functools.partial(
            read_image,
            max_header_bytes=state.settings.max_header_bytes,
            centre_of=state.filed_centres if needs_centre else None,
        )
        pool.submit(read, storage, task, then=functools.partial(file_image, state))
    yield from pool.ready()


@use("state")
@pools.bounded_input(HEADERS_IN_QUEUE)
@pools.per_item
def process_dicom_data(task: Task, state: LoaderState):
    """Turn a header into DICOM JSON (PS3.18 F.2) without bulk data."""
    if task.action == "metadata":
        for write in metadata_file(state, task):
            yield (write,)


@use("storage", "state")
@pools.pooled_writes
def upload_text_data(pool, task: Task, storage: Storage, state: LoaderState):
    """Write metadata files."""
    if task.action == "write":
        pool.submit(write_object, storage, task, then=functools.partial(record_write, state))
    yield from pool.ready()


@use("storage", "state")
@pools.bounded_input(TASKS_IN_QUEUE)
@pools.pooled_writes
def data_copy(pool, task: Task, storage: Storage, state: LoaderState):
    """Copy clinical files and images into the warehouse (server-side on S3)."""
    if task.action == "copy":
        pool.submit(copy_object, storage, task, then=functools.partial(record_write, state))
    yield from pool.ready()


def get_graph(**options) -> bonobo.Graph:
    """The loader graph (DESIGN section 3); node names are part of the interface."""
    graph = bonobo.Graph()
    graph.add_chain(load_config, extract_raw_files_from_folder, process_patient_data, process_image)
    graph.add_chain(process_dicom_data, upload_text_data, _input=process_image)
    graph.add_chain(data_copy, _input=process_patient_data)
    graph.add_chain(_input=process_image, _output=data_copy)
    return graph


def get_services(settings: Settings | None = None, storage: Storage | None = None, **options):
    """The loader's services: ``storage`` (the warehouse store, under the run lease) and
    ``state`` (the run); see `graph_services`."""
    services = graph_services(GRAPH_NAME, LoaderState, settings, storage)
    services["storage"] = services["state"].take_lease(services["storage"])
    return services


def run(services) -> int | None:
    """Run the graph with ``services``; the exit code, or None when only recorded (bonobo run)."""
    return command.run_graph(get_graph(), services)


def command_parser():
    """The command line (``--help``)."""
    return command.command_parser(
        "warehouseloader",
        "Load raw uploads (clinical JSON, DICOM) into the training/validation warehouse of "
        "WAREHOUSE_BUCKET.",
        """  DRY_RUN            true/false: run everything, write nothing (default false)
  WAREHOUSE_PROCESSES  P or auto: a sharded run on this machine, the clinical phase then
                     P shard processes (default 1)
  WAREHOUSE_PHASE, WAREHOUSE_SHARD=i/N, WAREHOUSE_SHARDS=N (with AWS_BATCH_JOB_ARRAY_INDEX),
  WAREHOUSE_RUN_ID   one part of a sharded run: its clinical phase, or shard i of N
  WAREHOUSE_INVENTORY  s3://bucket/prefix (or file:///path): where the bucket's S3 Inventory
                     is delivered, read by a reconcile run instead of listing every key

exit codes: 0 run completed (per-file problems are reported, not failures);
  1 some reads or writes failed (rerun to finish); 2 bad settings, config.json or a missing
  store; 3 another run (a loader or dataprocess run) holds the warehouse (the run lease);
  70 the graph could not run; 130/143 stopped by SIGINT/SIGTERM: what it read is filed, its
  report says what it did not reach, and the next run files the rest""",
    )


def main(argv=None) -> int | None:
    """Command line entry point (``python -m warehouse.warehouseloader``); with
    ``WAREHOUSE_PROCESSES`` above 1, a sharded run in processes of this machine."""
    command_parser().parse_args(argv)  # --help and --version answer before anything else
    configure_logging()
    code = processes.run_if_many_processes()
    if code is not None:
        return code
    return command.main(sys.modules[__name__], argv)


def run_part(settings: Settings) -> int:
    """Run the graph for one part of a sharded run in this process (each process of
    ``WAREHOUSE_PROCESSES`` does, `warehouse.loader.processes`): its exit code. The command
    that started the process ends the run once every part has stopped, so this part does not.
    """

    def services() -> dict:
        built = get_services(settings=settings)
        state = built["state"]
        state.part = replace(state.part, finishes=False)
        return built

    try:
        code = command.run_graph(get_graph(), LazyServices(services))
    except SystemExit as stop:  # a settings or lease error before the graph started
        return stop.code if isinstance(stop.code, int) else EXIT_INTERNAL
    return code if code is not None else EXIT_INTERNAL


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
