"""What one loader run looks at, and its work planned from it.

A **daily** run looks only at what can be new: the patients' clinical folders of the warehouse
(``<group>/data/``: the groups and the clinical files filed, tens of pages at ten million
objects), the catalogue's index and the parts newer than it (what is filed of images), the
raw prefixes' upload folders that are not closed (`warehouse.listing.folders`), and the last
run's report (the memo). Its cost follows the day's uploads, not the warehouse's size.

A **full** run looks at everything, as a reconcile run does (``WAREHOUSE_RECONCILE``, weekly)
and as the first run of a warehouse does (no folder state yet): both sides listed in full, the
catalogue checked against the warehouse (filed images no part lists are catalogued; catalogued
images no longer in the warehouse counted), every upload folder listed (a file added to a closed
folder is found), every raw image checked against its filed copy.

An **image shard** of a sharded run lists nothing: its clinical phase hands it the run's
pending images and what the warehouse holds (`warehouse.loader.parts`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from warehouse.catalogue.filed import FiledImages, list_filed_images
from warehouse.catalogue.run import RAW_CHANGED, RAW_FILED, LoaderCatalogue
from warehouse.core.config import IMAGE_PHASE
from warehouse.core.errors import ExpectedError
from warehouse.core.keys import GROUPS, parse_upload_date
from warehouse.core.patients import PatientGroups
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.listing.folders import (
    STATE_KEY,
    FolderState,
    InvalidFolderState,
    load_state,
)
from warehouse.listing.inventory import Inventory, InventoryUnusable, bucket_name, open_inventory
from warehouse.listing.raw import RawListing, list_raw
from warehouse.listing.warehouse import WarehouseIndex, index_warehouse
from warehouse.loader.decisions import report_shared_owners, retold
from warehouse.loader.memo import (
    load_previous_report,
    memo_of,
    problems_of,
    refused_claims,
    still_holds,
    unconfigured_patients,
)
from warehouse.loader.parts import load_pending
from warehouse.loader.planning import ImageKnowledge, plan_inputs
from warehouse.loader.shards import Handoff
from warehouse.loader.state import FiledCentres, LoaderState
from warehouse.loader.tasks import Task
from warehouse.storage.base import Storage

#: What a loader run says of its listings is said under the graph's name.
run_logger = logging.getLogger("warehouseloader")


def run_inputs(storage: Storage, state: LoaderState, graph: str) -> Iterator[Task]:
    """Look at what the run must look at (all at once where independent), set the run's
    groups and bindings from it, and yield its work (this process's share, all of it outside
    a sharded run): one clinical task per new clinical file, then one image task per image not
    yet filed.

    Raises
    ------
    ExpectedError
        When a listing or a read fails: the run is marked failed (nothing is planned from half
        a listing).
    """
    if state.part is not None and state.part.phase == IMAGE_PHASE:
        yield from _shard_inputs(storage, state)
        return
    report, settings = state.report, state.settings
    catalogue = state.catalogue
    catalogue.prepare(storage, settings)  # (where its parts go while the run files)
    try:
        with ThreadPoolExecutor(4, thread_name_prefix="listing") as pool:
            last_run = pool.submit(load_previous_report, storage, graph, report)
            warehouse = pool.submit(index_warehouse, storage, settings.workers, clinical_only=True)
            previous = _folder_state(storage, report)
            # everything is looked at by a reconcile, by a warehouse's first run, and when the
            # catalogue cannot vouch for what is filed (a part or its index is unreadable)
            whole = settings.reconcile or previous is None
            catalogue.load(storage, whole=whole)
            full = whole or bool(catalogue.invalid_parts)
            inventory = _inventory(storage, settings, report) if full else None
            filed = (
                pool.submit(_list_filed, storage, settings, catalogue, inventory) if full else None
            )
            index = warehouse.result()
            report.previous = last_run.result()
            memo = memo_of(problems_of(report.previous))
            now = dt.datetime.now(dt.UTC)
            reopened = set() if full else _folders_to_read_again(state, memo, index, previous)
            listing = list_raw(
                storage,
                state.config.raw_prefixes,
                settings.workers,
                now=now,
                open_folder=None if full else _open_folders(previous, reopened),
                keep_images=catalogue.unfiled if whole else None,
                **_inventory_source(inventory),
            )
            if filed is not None:
                _reconcile_catalogue(storage, state, index, filed.result(), inventory is None)
            statuses = catalogue.raw_status(listing.images)
    except ExpectedError as exc:
        report.fail(str(exc))
        raise
    report.listed = True
    state.mode = "full" if full else "daily"
    state.index = index
    state.groups = PatientGroups(index.groups, conflicted=index.conflicts)
    state.filed_centres = FiledCentres(storage, index)
    state.refused_claims.update(refused_claims(memo))
    state.unconfigured.update(unconfigured_patients(memo, state.config))
    state.folders = (previous or FolderState(), listing.listed, now)
    if not full:
        _carry_closed_problems(state, memo, index, listing)
    report_shared_owners(state)
    knowledge = ImageKnowledge(
        filed={
            raw.key for (raw, _), s in zip(listing.images, statuses, strict=True) if s == RAW_FILED
        },
        changed={
            raw.key
            for (raw, _), s in zip(listing.images, statuses, strict=True)
            if s == RAW_CHANGED
        },
        settled=(previous.settled if previous is not None else {}),
        image_filed=state.catalogue.target_filed,
    )
    run_logger.info(
        "%s run: listed %d clinical files and %d images in %d of %d upload folders under %d raw "
        "prefixes; the warehouse holds %d patients and the catalogue %d images",
        state.mode,
        len(listing.clinical),
        len(listing.images),
        sum(len(names) for names in listing.listed.values()),
        sum(len(names) for names in listing.folders.values()),
        len(state.config.raw_prefixes),
        len(index.groups),
        state.catalogue.images_known,
    )
    clinical, images = plan_inputs(
        listing,
        index,
        memo,
        state.config,
        settings,
        report,
        part=state.part,
        knowledge=knowledge,
        retell=functools.partial(retold, state),
    )
    state.new_patients.update(raw.pseudonym for raw, _ in clinical)
    state.pending_images = images
    state.progress.plan(len(clinical), 0 if state.part is not None else len(images))
    for raw, size in clinical:
        yield Task("clinical", raw.key, size, None, raw)
    if state.part is None:
        for raw, size in images:
            yield Task("image", raw.key, size, None, raw)


def _folder_state(storage: Storage, report: RunReport) -> FolderState | None:
    """The raw side's folder state; None (list every folder) when there is none or it cannot
    be used (reported by name: the run is then incomplete)."""
    try:
        return load_state(storage)
    except InvalidFolderState as exc:
        report.skip(STATE_KEY, Reason.INVALID_REPORT, f"{exc}; every upload folder is listed")
        report.fail(f"{STATE_KEY} cannot be used ({exc}): an operator should look at it")
        return None


def _open_folders(state: FolderState, reopened: set[tuple[str, str]]):
    def open_folder(prefix: str, folder: str) -> bool:
        return state.is_open(prefix, folder) or (prefix, folder) in reopened

    return open_folder


def _folder_of(key: str) -> tuple[str, str]:
    prefix, _, rest = key.partition("/")
    return prefix, rest.partition("/")[0]


def _folders_to_read_again(
    state: LoaderState, memo: dict[str, dict], index: WarehouseIndex, folders: FolderState
) -> set[tuple[str, str]]:
    """The closed folders that hold a remembered problem whose reason no longer holds (its
    patient now has data, its site is now configured, ...): listed again, so the input is read
    again with its current stamp."""
    again = set()
    for key, problem in memo.items():
        prefix, folder = _folder_of(key)
        if folders.is_open(prefix, folder):
            continue
        if not still_holds(
            problem,
            state.config,
            index,
            set(),
            state.settings,
            state.catalogue.target_filed,
        ):
            again.add((prefix, folder))
    return again


def _carry_closed_problems(
    state: LoaderState, memo: dict[str, dict], index: WarehouseIndex, listing: RawListing
) -> None:
    """The remembered problems of closed folders (not listed): still true, so reported again
    (the memo keeps every unfiled input, listed or not)."""
    listed = {(prefix, name) for prefix, names in listing.listed.items() for name in names}
    for key, problem in sorted(memo.items()):
        if _folder_of(key) not in listed and key.split("/", 1)[0] in listing.folders:
            state.report.skip_again(retold(state, problem))


def _inventory(storage: Storage, settings, report: RunReport) -> Inventory | None:
    """The S3 Inventory a full run takes what it cannot have changed from
    (``WAREHOUSE_INVENTORY``); None without one, or when it cannot be used (then the run
    lists, and says so)."""
    if not settings.inventory:
        return None
    try:
        inventory = open_inventory(
            settings.inventory, bucket_name(storage), workers=settings.workers
        )
    except InventoryUnusable as exc:
        run_logger.warning("the S3 inventory cannot be used (%s): the bucket is listed", exc)
        report.count("S3 inventory not used (the bucket is listed)")
        return None
    run_logger.info("S3 inventory of %s: older upload folders read from it", inventory.day)
    return inventory


def _inventory_source(inventory: Inventory | None) -> dict:
    """What `list_raw` takes from an inventory: the upload folders dated more than a day
    before it (a folder of its day or later is listed: it may have changed since)."""
    if inventory is None:
        return {}
    last = (dt.date.fromisoformat(inventory.day) - dt.timedelta(days=1)).isoformat()

    def from_inventory(prefix: str, folder: str) -> bool:
        return parse_upload_date(folder) is not None and folder < last

    return {"from_inventory": from_inventory, "inventory_records": inventory.records}


def _list_filed(
    storage: Storage, settings, catalogue: LoaderCatalogue, inventory: Inventory | None
) -> FiledImages:
    """A full run's compact listing of the warehouse side (from the inventory when there is
    one): what a reconcile checks the catalogue against."""
    known = catalogue.known_targets()
    if inventory is None:
        return list_filed_images(storage, settings.workers, known=known)
    source = inventory.records([f"{group}/" for group in GROUPS])
    return list_filed_images(storage, settings.workers, known=known, source=source)


def _reconcile_catalogue(
    storage: Storage,
    state: LoaderState,
    index: WarehouseIndex,
    filed: FiledImages,
    listed: bool,
) -> None:
    """A full run's check of the catalogue against the warehouse: the filed images no part
    lists are catalogued (their headers read), and, when the warehouse was listed (not taken
    from an inventory, which misses what was filed since), the catalogued images no longer
    in it counted. Links on the warehouse side join those the run reports."""
    catalogue = state.catalogue
    if listed:
        gone = int((~filed.holds(catalogue.known_targets())).sum())
        if gone:
            state.report.count("catalogued images no longer in the warehouse", gone)
    catalogue.recover_unknown_images(storage, filed.unknown)
    index.links = sorted(set(index.links) | set(filed.links))


def _shard_inputs(storage: Storage, state: LoaderState) -> Iterator[Task]:
    """An image shard's work: the pending images of its clinical phase's hand-off that it
    owns (no listing), with the groups and bindings the hand-off holds."""
    handoff: Handoff = state.handoff
    state.catalogue.prepare(storage, state.settings)  # (where its parts go while it files)
    try:
        # (the parts' times only say what changed since: a shard decides no raw file by them)
        parts = dict.fromkeys(handoff.catalogue_parts, dt.datetime.now(dt.UTC))
        state.catalogue.load_parts(storage, parts, handoff.catalogue_pointer)
        pending = load_pending(storage, handoff)
    except ExpectedError as exc:
        state.report.fail(str(exc))
        raise
    state.report.listed = True
    state.mode = "shard"
    index = handoff.warehouse_index()
    state.index = index
    state.groups = PatientGroups({**handoff.groups, **index.groups}, conflicted=index.conflicts)
    state.filed_centres = FiledCentres(storage, index)
    state.filed_centres.seed(handoff.filed_centres)
    state.refused_claims.update((prefix, pseudonym) for prefix, pseudonym in handoff.refused_claims)
    state.unconfigured.update(
        ((prefix, pseudonym), (centre, key))
        for prefix, pseudonym, centre, key in handoff.unconfigured
    )
    state.bound_centres.update(handoff.bound_centres)
    state.new_patients.update(handoff.new_patients)
    images = [(raw, size) for raw, size in pending if state.part.owns(raw.name)]
    state.progress.plan(0, len(images))
    for raw, size in images:
        yield Task("image", raw.key, size, None, raw)
