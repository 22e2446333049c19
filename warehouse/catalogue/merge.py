"""The whole image catalogue, kept up to date a day at a time: the last batch's catalogue and
the parts written since, merged into one table, streamed (never the whole catalogue in memory
at once), with what the dashboards need of it counted on the way, and the catalogue's index
written for the loader's next runs.

The merged table holds one row per image (a part's newer row of an image replaces the older
one) and a ``filed`` column, the date its part was written. Its Parquet metadata says which
part it covers up to (``through``), so the next merge reads only the parts after it: one LIST
and one GET a part, whatever the warehouse's size. A batch without that metadata (or without
a catalogue) is merged again from every part.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.catalogue.filed import FiledImages
from warehouse.catalogue.index import (
    IndexArrays,
    InvalidIndex,
    arrays_of_parts,
    combined,
    key_hashes,
    read_index,
    read_pointer,
    settled_parts,
    write_index,
)
from warehouse.catalogue.rows import (
    PARTS_PREFIX,
    SCHEMA,
    InvalidPart,
    is_part_key,
    read_part,
)
from warehouse.core.errors import ObjectNotFound
from warehouse.core.keys import KEY_PATIENT, KEY_STUDY
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.storage.base import Storage
from warehouse.storage.files import StoredFile

logger = logging.getLogger("dataprocess")

#: The merged table's columns: the parts' and the date each image's part was written.
MERGED_SCHEMA = SCHEMA.append(pa.field("filed", pa.date32()))
#: Rows a streamed pass reads or writes at a time.
BATCH_ROWS = 65_536
#: What the pages count images by (with ``group``): each distinct combination, and how many.
SUMMARY_COLUMNS = (
    "group",
    "PatientID",
    "upload_date",
    "Manufacturer",
    "BodyPartExamined",
    "ViewPosition",
)
#: A study folder: its group, modality folder, patient and study folder names.
_STUDY = ("group", "modality_folder", "patient_folder", "study_folder")


@dataclass
class CatalogueScan:
    """The merged catalogue (in a local file) and what was counted of it.

    Attributes
    ----------
    path : str
        The merged table, `MERGED_SCHEMA`, in a local Parquet file.
    rows : int
        Its rows (images).
    through : str or None
        The newest part it covers.
    new_parts : int
        Parts read by this merge (those newer than the last batch's).
    studies : dict
        ``(group, modality folder, patient, study)`` -> ``(first metadata key, filed date)``.
    study_images : Counter
        ``(group, modality folder, patient, study, filed date)`` -> images.
    image_bytes : Counter
        ``(group, modality folder)`` -> bytes of the images filed there.
    metadata_bytes : Counter
        ``(group, modality folder)`` -> bytes of the images' metadata files (as the loader
        wrote them).
    unsized_metadata : int
        Rows without their metadata file's size (catalogued by an older version).
    summary : Counter
        `SUMMARY_COLUMNS` values -> images (what the pages count).
    gone : int
        Rows left out because their image is no longer in the warehouse (a reconcile).
    touched : set
        The studies (as in ``studies``) with a row from a part merged now: their first
        metadata file may have changed.
    index : IndexArrays or None
        The catalogue index of every part merged (written for the loader), when it was built.
    """

    path: str
    rows: int = 0
    through: str | None = None
    new_parts: int = 0
    studies: dict[tuple, tuple[str, dt.date | None]] = field(default_factory=dict)
    study_images: Counter = field(default_factory=Counter)
    image_bytes: Counter = field(default_factory=Counter)
    metadata_bytes: Counter = field(default_factory=Counter)
    unsized_metadata: int = 0
    summary: Counter = field(default_factory=Counter)
    gone: int = 0
    touched: set[tuple] = field(default_factory=set)
    index: IndexArrays | None = None


def _parts_after(storage: Storage, through: str | None) -> dict[str, dt.datetime]:
    return {
        info.key: info.last_modified
        for info in storage.list_after(PARTS_PREFIX, through)
        if not info.link and is_part_key(info.key)
    }


def _read_parts(
    storage: Storage, parts: dict[str, dt.datetime], submit: Callable, report: RunReport
) -> tuple[list[tuple[str, dt.datetime, pa.Table]], str | None]:
    """The parts' rows, oldest first, and the first part that cannot be read (reported and
    left out; None when every part was read).
    """
    futures = [(key, when, submit(storage.read, key)) for key, when in sorted(parts.items())]
    tables, unreadable = [], None
    for key, when, future in futures:
        try:
            tables.append((key, when, read_part(future.result())))
        except InvalidPart as exc:
            report.skip(key, Reason.INVALID_PART, str(exc))
            unreadable = unreadable or key
    return tables, unreadable


def previous_catalogue(processed: Storage, key: str | None) -> tuple[StoredFile, str | None] | None:
    """The last batch's merged catalogue (a file over the processed store) and the part it
    covers up to; None when there is none usable (then every part is merged again).
    """
    if key is None:
        return None
    size = next((info.size for info in processed.list(key) if info.key == key), None)
    if size is None:
        return None
    handle = StoredFile(processed, key, size)
    try:
        metadata = pq.ParquetFile(handle).schema_arrow.metadata or {}
        through = json.loads(metadata[b"through"])
    except (KeyError, ValueError, pa.ArrowException, OSError):
        return None
    if through is not None and not isinstance(through, str):
        return None
    handle.seek(0)
    return handle, through


def _batches_of(handle: StoredFile, skip: pa.Array) -> Iterator[pa.Table]:
    """The rows of a merged catalogue, but those of the warehouse keys in ``skip``."""
    file = pq.ParquetFile(handle)
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=MERGED_SCHEMA.names):
        table = pa.Table.from_batches([batch]).cast(MERGED_SCHEMA)
        if len(skip):
            table = table.filter(pc.invert(pc.is_in(table.column("warehouse_key"), skip)))
        yield table


def _still_filed(table: pa.Table, filed: FiledImages | None, scan: CatalogueScan) -> pa.Table:
    """The rows of ``table`` whose image the warehouse still holds (all of them when it was
    not listed); the others are counted in ``scan.gone``.
    """
    if filed is None or not table.num_rows:
        return table
    held = filed.holds(key_hashes(table.column("warehouse_key").to_pylist()))
    scan.gone += int(len(held) - held.sum())
    return table.filter(pa.array(held))


def _newest_rows(parts: list[tuple[str, dt.datetime, pa.Table]]) -> pa.Table:
    """The parts' rows with their ``filed`` date, one per warehouse key (the newest part's),
    in key order.
    """
    tables = []
    for _key, when, table in parts:
        filed = pa.array([when.date()] * table.num_rows, type=pa.date32())
        tables.append(table.append_column(MERGED_SCHEMA.field("filed"), filed))
    if not tables:
        return MERGED_SCHEMA.empty_table()
    merged = pa.concat_tables(tables)
    order = pa.table(
        {"key": merged.column("warehouse_key"), "position": pa.array(range(merged.num_rows))}
    )
    last = order.group_by("key", use_threads=False).aggregate([("position", "max")])
    newest = merged.take(last.column("position_max"))
    return newest.take(pc.sort_indices(newest, [("warehouse_key", "ascending")]))


def _with_folders(table: pa.Table) -> pa.Table:
    """``table`` with the patient and study folders its metadata keys name."""
    parts = pc.split_pattern(table.column("metadata_key"), "/")
    return table.append_column("patient_folder", pc.list_element(parts, KEY_PATIENT)).append_column(
        "study_folder", pc.list_element(parts, KEY_STUDY)
    )


def _count(scan: CatalogueScan, rows: pa.Table) -> None:
    """Count merged rows into ``scan`` (studies, images, bytes, the summary)."""
    table = _with_folders(rows)
    firsts = table.group_by([*_STUDY, "filed"], use_threads=False).aggregate(
        [("metadata_key", "min"), ("warehouse_key", "count")]
    )
    for row in firsts.to_pylist():
        study = tuple(row[name] for name in _STUDY)
        scan.study_images[(*study, row["filed"])] += row["warehouse_key_count"]
        first = (row["metadata_key_min"], row["filed"])
        known = scan.studies.get(study)
        if known is None or first[0] < known[0]:
            scan.studies[study] = first
    sizes = table.group_by(["group", "modality_folder"]).aggregate(
        [("object_size", "sum"), ("metadata_size", "sum")]
    )
    for row in sizes.to_pylist():
        scan.image_bytes[(row["group"], row["modality_folder"])] += row["object_size_sum"] or 0
        scan.metadata_bytes[(row["group"], row["modality_folder"])] += row["metadata_size_sum"] or 0
    scan.unsized_metadata += table.column("metadata_size").null_count
    summary = table.group_by(list(SUMMARY_COLUMNS), use_threads=False).aggregate(
        [("warehouse_key", "count")]
    )
    for row in summary.to_pylist():
        scan.summary[tuple(row[name] for name in SUMMARY_COLUMNS)] += row["warehouse_key_count"]


def scan_catalogue(
    storage: Storage,
    processed: Storage,
    previous_key: str | None,
    submit: Callable,
    report: RunReport,
    path: str,
    now: dt.datetime | None = None,
    filed: FiledImages | None = None,
) -> CatalogueScan:
    """Merge the last batch's catalogue (``previous_key`` in the processed store) with the
    parts written since into ``path`` (a local file), counting what the dashboards need, and
    build the catalogue's next index from the current one and those parts. With ``filed``
    (a reconcile's listing of the warehouse), rows of images no longer filed are left out.

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    now = now or dt.datetime.now(dt.UTC)
    previous = previous_catalogue(processed, previous_key)
    through = previous[1] if previous is not None else None
    new_parts = _parts_after(storage, through)
    tables, unreadable = _read_parts(storage, new_parts, submit, report)
    settled = settled_parts(tables, unreadable, now)
    newest = _newest_rows(tables)
    scan = CatalogueScan(path, through=max([through or "", *(t[0] for t in settled)]) or None)
    scan.new_parts = len(new_parts)
    metadata = {"through": json.dumps(scan.through)}
    older = _batches_of(previous[0], newest.column("warehouse_key")) if previous else iter(())
    with pq.ParquetWriter(path, MERGED_SCHEMA.with_metadata(metadata), compression="zstd") as out:
        for table in itertools.chain(
            older, (newest.slice(at, BATCH_ROWS) for at in range(0, newest.num_rows, BATCH_ROWS))
        ):
            table = _still_filed(table, filed, scan)
            if table.num_rows:
                out.write_table(table)
                scan.rows += table.num_rows
                _count(scan, table)
    touched = _with_folders(newest).group_by(list(_STUDY), use_threads=False).aggregate([])
    scan.touched = {tuple(row[name] for name in _STUDY) for row in touched.to_pylist()}
    scan.index = _next_index(storage, through, settled, report)
    logger.info(
        "catalogue: %d images, %d parts merged since the last batch", scan.rows, scan.new_parts
    )
    return scan


def _next_index(
    storage: Storage,
    through: str | None,
    settled: list[tuple[str, dt.datetime, pa.Table]],
    report: RunReport,
) -> IndexArrays | None:
    """The loader's index after a merge of the parts after ``through`` (None: every part):
    the current index with the settled parts it lacks, or (every part merged) those parts
    alone; None when it stays as it is (nothing new, none settled yet, or it cannot be
    brought up to date without the parts before: the loader then reads them, and the next
    full merge rebuilds it).
    """
    if through is None:
        return arrays_of_parts(settled) if settled else None
    try:
        pointer = read_pointer(storage)
        if pointer is None:
            return None
        covered = pointer.get("through") or ""
        if covered < through:
            return None  # (parts between the two are in neither)
        new = [(key, when, table) for key, when, table in settled if key > covered]
        if not new:
            return None
        old = read_index(storage, pointer["index"], pointer["size"], with_raw=True)
    except (InvalidIndex, ObjectNotFound) as exc:
        report.count("catalogue index not updated (the current one cannot be read)")
        logger.warning("the catalogue index cannot be read (%s): not updated", exc)
        return None
    return combined(old, arrays_of_parts(new))


def publish_index(storage: Storage, scan: CatalogueScan, now: dt.datetime) -> str | None:
    """Write the index a merge built (`write_index`), when it built one."""
    if scan.index is None or storage.read_only:
        return None
    return write_index(storage, scan.index, now)


def write_joined(
    scan: CatalogueScan, summary_of: Callable[[pa.Table], dict[str, pa.Array]], path: str
) -> int:
    """Write the batch's ``images.parquet`` at ``path``: the merged catalogue with, for each
    row, the columns ``summary_of(rows)`` gives (each patient's clinical summary), streamed.

    Returns
    -------
    int
        Its size in bytes.
    """
    source = pq.ParquetFile(scan.path)
    writer = None
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            for name, column in summary_of(table).items():
                table = table.append_column(name, column)
            if writer is None:
                schema = table.schema.with_metadata(source.schema_arrow.metadata)
                writer = pq.ParquetWriter(path, schema, compression="zstd")
            writer.write_table(table)
        if writer is None:  # no image: an empty table of the same columns
            empty = pa.Table.from_batches([], schema=MERGED_SCHEMA)
            for name, column in summary_of(empty).items():
                empty = empty.append_column(name, column)
            pq.write_table(empty.replace_schema_metadata(source.schema_arrow.metadata), path)
    finally:
        if writer is not None:
            writer.close()
    return os.path.getsize(path)
