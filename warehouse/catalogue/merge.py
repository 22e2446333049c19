"""The whole image catalogue: every part merged into one table of the images the warehouse
holds now (the newest part's row of an image listed twice, nothing for an image no longer
there), completed by a backfill of the images no part lists.

An image that no part lists (a warehouse filed before the catalogue existed, or whose first
run was stopped before its part) is catalogued **once**: its header is read with ranged reads
through the run's worker pool (one GET per image, the same row the loader would have made,
TransferSyntaxUID included, which the metadata JSON leaves out with the file meta), its raw key
and upload date are recorded as unknown (only the run that filed it knew them: a guess by name
and size could borrow another upload's provenance), and the rows are kept in the processed
store as ``catalogue/backfill/<UTC time>.parquet``, read by the next runs like the loader's
parts.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

import pyarrow as pa

from warehouse.catalogue.rows import (
    COLUMNS,
    PARTS_PREFIX,
    SCHEMA,
    HeaderProgress,
    InvalidPart,
    RowBuffer,
    filed_image_row,
    is_part_key,
    part_bytes,
    read_part,
)
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport, utc_stamp
from warehouse.dicom.problems import HeaderProblem
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: Where the backfill's rows are kept, in the processed store.
BACKFILL_PREFIX = "catalogue/backfill/"


def merge_parts(tables: Iterable[pa.Table], present: set[str] | None = None) -> pa.Table:
    """One table from several parts, oldest first: one row per warehouse key (the newest
    part's row of a key listed twice), only the images still ``present`` when it is given,
    sorted by warehouse key.
    """
    tables = [t.select(list(COLUMNS)) for t in tables]
    if not tables:
        return SCHEMA.empty_table()
    merged = pa.concat_tables(tables)
    keys = merged.column("warehouse_key").to_pylist()
    last: dict[str, int] = {}
    for position, key in enumerate(keys):
        last[key] = position
    chosen = sorted(
        (position for key, position in last.items() if present is None or key in present),
        key=lambda position: keys[position],
    )
    return merged.take(pa.array(chosen, type=pa.int64()))


def backfill_key(now: dt.datetime) -> str:
    """``catalogue/backfill/2026-11-25T09-30-00.000000Z.parquet`` in the processed store."""
    return f"{BACKFILL_PREFIX}{utc_stamp(now)}.parquet"


def _part_keys(storage: Storage, prefix: str) -> list[str]:
    return sorted(
        info.key
        for info in storage.list(prefix)
        if not info.link and info.key.endswith(".parquet") and "/" not in info.key[len(prefix) :]
    )


def read_parts(
    storage: Storage, processed: Storage, submit: Callable, report: RunReport
) -> list[pa.Table]:
    """Every part, oldest first: the backfill's (processed store), then the loader's.

    A part that is not a catalogue part is reported ("invalid catalogue part") and left out.

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    keys = [(processed, key) for key in _part_keys(processed, BACKFILL_PREFIX)]
    keys += [(storage, k) for k in _part_keys(storage, PARTS_PREFIX) if is_part_key(k)]
    futures = [(key, submit(store.read, key)) for store, key in keys]
    tables = []
    for key, future in futures:
        try:
            tables.append(read_part(future.result()))
        except InvalidPart as exc:
            report.skip(key, Reason.INVALID_PART, str(exc))
    return tables


def backfill(
    storage: Storage,
    missing: dict[str, int],
    submit: Callable,
    report: RunReport,
    *,
    max_header_bytes: int | None = None,
) -> pa.Table:
    """Catalogue filed images that no part lists: read their headers through the pool (their
    raw key and upload date unknown: `catalogue.filed_image_row`).

    An image whose header cannot be parsed is reported ("image left out of the catalogue")
    and left for the next run.

    Raises
    ------
    StorageError
        When a read fails.
    """
    rows = RowBuffer()
    if not missing:
        return rows.table()
    logger.info("catalogue backfill: %d filed images are in no catalogue part", len(missing))
    progress = HeaderProgress(len(missing), logger, "catalogue backfill")
    futures = [
        (key, submit(filed_image_row, storage, key, size, max_header_bytes))
        for key, size in sorted(missing.items())
    ]
    for key, future in futures:
        try:
            rows.add(future.result())
        except HeaderProblem as exc:
            report.skip(key, Reason.NOT_CATALOGUED, str(exc))
        progress.step()
    report.count("images catalogued by the backfill", len(rows))
    return rows.table()


def image_catalogue(
    storage: Storage,
    filed: dict[str, int],
    submit: Callable,
    report: RunReport,
    now: dt.datetime,
    *,
    max_header_bytes: int | None = None,
) -> pa.Table:
    """The catalogue of the images the warehouse holds: the parts merged, the images no part
    lists backfilled (and their rows kept in the processed store for the next runs).

    Parameters
    ----------
    storage : Storage
        The warehouse (its ``processed()`` store holds the backfill's rows).
    filed : dict
        Image key -> size of every filed image (from this run's listing).
    submit : callable
        ``submit(work, *args) -> Future``: the run's worker pool.
    report : RunReport
        Where unusable parts and unreadable images are reported.
    now : datetime.datetime
        The run's time (the backfill part's name).

    Raises
    ------
    StorageError
        When a listing, a read or the backfill part's write fails.
    """
    processed = storage.processed()
    merged = merge_parts(read_parts(storage, processed, submit, report), present=set(filed))
    listed = set(merged.column("warehouse_key").to_pylist())
    missing = {key: size for key, size in filed.items() if key not in listed}
    added = backfill(storage, missing, submit, report, max_header_bytes=max_header_bytes)
    if added.num_rows:
        processed.write(backfill_key(now), part_bytes(added), "application/vnd.apache.parquet")
        merged = merge_parts([merged, added])
    return merged
