"""What one loader run looks at: the warehouse side, the raw prefixes and the last run's report,
listed once (at the same time: they are independent), and its work planned from them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from warehouse.core.config import IMAGE_PHASE
from warehouse.core.errors import ExpectedError
from warehouse.core.patients import PatientGroups
from warehouse.listing.raw import list_raw, shared_names_filed
from warehouse.loader.memo import load_previous_report, memo_of, problems_of, refused_claims
from warehouse.loader.planning import plan_inputs
from warehouse.loader.shards import Handoff
from warehouse.loader.state import FiledCentres, LoaderState
from warehouse.loader.tasks import Task
from warehouse.storage.base import Storage

#: What a loader run says of its listings is said under the graph's name.
run_logger = logging.getLogger("warehouseloader")


def run_inputs(storage: Storage, state: LoaderState, graph: str) -> Iterator[Task]:
    """List the warehouse side, the raw prefixes and the last run's report once (at the same
    time: they are independent), set the run's groups and bindings from them, and yield its
    work (`plan`: this process's share, all of it outside a sharded run): one clinical task per
    new clinical file, then one image task per image not yet filed.

    Raises
    ------
    ExpectedError
        When a listing fails: the run is marked failed (nothing is planned from half a
        listing).
    """
    report, workers = state.report, state.settings.workers
    try:
        with ThreadPoolExecutor(3, thread_name_prefix="listing") as pool:
            last_run = pool.submit(load_previous_report, storage, graph, report)
            # (the catalogue's cutoff for a stopped run's images is in the last report)
            warehouse_side = pool.submit(
                state.catalogue.index_warehouse,
                storage,
                workers,
                last_run.result,
                find_orphans=state.part is None or state.part.phase != IMAGE_PHASE,
            )
            raw_side = pool.submit(list_raw, storage, state.config.raw_prefixes, workers)
            index, listing = warehouse_side.result(), raw_side.result()
            state.previous_problems = problems_of(last_run.result())
            memo = memo_of(state.previous_problems)
            # (a raw image whose name others share is known filed by its raw key)
            filed_sources = state.catalogue.filed_sources(shared_names_filed(listing, index))
    except ExpectedError as exc:
        report.fail(str(exc))
        raise
    report.listed = True
    state.index = index
    state.groups = PatientGroups(index.groups, conflicted=index.conflicts)
    state.filed_centres = FiledCentres(storage, index)
    state.refused_claims.update(refused_claims(memo))
    run_logger.info(
        "listed %d clinical files and %d images under %d raw prefixes; "
        "the warehouse holds %d objects of %d patients",
        len(listing.clinical),
        len(listing.images),
        len(state.config.raw_prefixes),
        index.objects,
        len(index.groups),
    )
    clinical, images = plan(state, listing, index, memo, state.handoff, filed_sources)
    state.progress.plan(len(clinical), len(images))
    for raw, size in clinical:
        yield Task("clinical", raw.key, size, None, raw)
    for raw, size in images:
        yield Task("image", raw.key, size, None, raw)


def plan(state, listing, index, memo, handoff: Handoff | None, filed_sources=frozenset()):
    """This process's share of the run's work (`planning.plan_inputs` for its part), with the
    clinical phase's hand-off taken into the state of an image shard.

    Returns
    -------
    tuple
        ``(clinical, images)`` as `planning.plan_inputs` returns them.
    """
    if handoff is not None:
        # The warehouse's groups win; the hand-off adds those whose copy failed.
        state.groups = PatientGroups({**handoff.groups, **index.groups}, conflicted=index.conflicts)
        state.refused_claims.update(
            (prefix, pseudonym) for prefix, pseudonym in handoff.refused_claims
        )
        state.bound_centres.update(handoff.bound_centres)
        state.filed_centres.seed(handoff.filed_centres)
    clinical, images = plan_inputs(
        listing,
        index,
        memo,
        state.config,
        state.settings,
        state.report,
        part=state.part,
        new_patients=set(handoff.new_patients) if handoff is not None else None,
        filed_sources=filed_sources,
    )
    state.new_patients.update(raw.pseudonym for raw, _ in clinical)
    return clinical, images
