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
import functools
import gzip
import io
import itertools
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.catalogue.backfill import ColumnFiller
from warehouse.catalogue.filed import FiledImages
from warehouse.catalogue.index import (
    PART_COLUMNS,
    InvalidIndex,
    PartArrays,
    SavedIndex,
    arrays_of_parts,
    combine_saved,
    contains,
    key_hashes,
    part_arrays,
    publish_saved_index,
    read_pointer,
    save_index,
    settled_parts,
)
from warehouse.catalogue.rows import (
    PARTS_PREFIX,
    SCHEMA,
    InvalidPart,
    conformed,
    is_part_key,
    part_written,
    read_in_order,
    read_part,
    release_arrow_memory,
)
from warehouse.catalogue.segments import (
    InvalidManifest,
    Segment,
    is_segments_folder,
    read_manifest,
)
from warehouse.catalogue.series import SOURCE_COLUMNS
from warehouse.core.errors import ExpectedError, ObjectNotFound
from warehouse.core.keys import KEY_PATIENT, KEY_STUDY
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.storage.base import Storage
from warehouse.storage.files import StoredFile, copy_to_file

logger = logging.getLogger("dataprocess")

#: The merged table's columns: the parts' and the date each image's part was written.
MERGED_SCHEMA = SCHEMA.append(pa.field("filed", pa.date32()))
#: Rows a streamed pass reads or writes at a time (a row group of the files it writes): the
#: catalogue's 60 columns take about 2 KB a row in Arrow while a batch is joined and written,
#: so 16,384 rows hold dataprocess at 10 million objects under 1 GB (65,536: just over).
BATCH_ROWS = 16_384
#: What the pages count images by (with ``group``): each distinct combination, and how many.
SUMMARY_COLUMNS = (
    "group",
    "PatientID",
    "upload_date",
    "Manufacturer",
    "BodyPartExamined",
    "ViewPosition",
)
#: What the identifying-data screen made of an image (`screen_status`).
FLAGGED, CLEAN, NOT_SCREENED = "flagged", "clean", "not screened"
#: The counts of a batch's merged catalogue, kept in the batch for the next run
#: (`counts_document`).
COUNTS_NAME = "rows/catalogue-counts.json.gz"
#: The columns of a part the index keeps (as hashes and sizes).
_INDEX_COLUMNS = PART_COLUMNS
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
    screened : Counter
        ``(raw prefix, screen status)`` -> images: what the identifying-data screen made of
        each site's images (`screen_status`; the prefix is None when the raw key is not known).
    gone : int
        Rows left out because their image is no longer in the warehouse (a reconcile).
    touched : set
        The studies (as in ``studies``) with a row from a part merged now: their first
        metadata file may have changed.
    index : SavedIndex or None
        The catalogue index of every part merged (for the loader), when it was built: saved
        to a local file, published once the batch is built.
    reused : str or None
        When no part was written since the last batch: its catalogue (``images/``, a key of
        the processed store), whose rows stand as they are (``path`` is then not written), the
        counts being those the last batch saved (`counts_document`).
    beyond : list of str or None
        The parts merged that ``through`` does not cover yet (not settled): merged again by
        the next run, whose rows stand as they are when those are all it finds; None when a
        part could not be read (the next run merges again).
    previous : PreviousCatalogue or None
        With ``reused``: the last batch's catalogue, as its footer describes it.
    layers : Layers or None
        When the merge left the catalogue as the last batch's rows and the day's parts
        (`merged_batches` reads it), ``path`` not written.
    changed_series : ChangedSeries or None
        When the merge added rows to the last batch's catalogue as it was (no reconcile, a
        day's parts): the rows of the series they changed, so that the series table is
        brought up to date from them (`series.update_series`); None: computed in full.
    """

    path: str
    rows: int = 0
    through: str | None = None
    new_parts: int = 0
    _studies: dict[tuple, tuple[str, dt.date | None]] = field(default_factory=dict, repr=False)
    _study_images: Counter = field(default_factory=Counter, repr=False)
    image_bytes: Counter = field(default_factory=Counter)
    metadata_bytes: Counter = field(default_factory=Counter)
    unsized_metadata: int = 0
    _summary: Counter = field(default_factory=Counter, repr=False)
    screened: Counter = field(default_factory=Counter)
    gone: int = 0
    touched: set[tuple] = field(default_factory=set)
    index: SavedIndex | None = None
    reused: str | None = None
    beyond: list[str] | None = field(default_factory=list)
    previous: PreviousCatalogue | None = None
    changed_series: ChangedSeries | None = None
    layers: Layers | None = None
    #: The saved counts' body (`counted_scan`) not decoded yet: a run whose last batch stands
    #: never needs its studies, images per study or summary.
    _saved: bytes | dict | None = field(default=None, repr=False)
    _study_count: int | None = field(default=None, repr=False)

    @property
    def study_count(self) -> int:
        """How many studies the catalogue holds (without decoding saved counts)."""
        if self._saved is not None and self._study_count is not None:
            return self._study_count
        return len(self.studies)

    @property
    def studies(self) -> dict[tuple, tuple[str, dt.date | None]]:
        """See the class's attributes."""
        self._decode_saved()
        return self._studies

    @property
    def study_images(self) -> Counter:
        """See the class's attributes."""
        self._decode_saved()
        return self._study_images

    @property
    def summary(self) -> Counter:
        """See the class's attributes."""
        self._decode_saved()
        return self._summary

    def prune(self) -> None:
        """Drop the counts of images that rows counted out (`_count`) left at zero."""
        for counter in (self.study_images, self.summary, self.screened):
            for key in [key for key, n in counter.items() if n <= 0]:
                del counter[key]

    def _decode_saved(self) -> None:
        doc, self._saved = self._saved, None
        if doc is None:
            return
        try:
            if isinstance(doc, bytes):
                doc = json.loads(doc)
            for *study, key, filed in doc["studies"]:
                self._studies[tuple(study)] = (key, _day(filed))
            for *study, filed, n in doc["study_images"]:
                self._study_images[(*study, _day(filed))] = int(n)
            for group, patient, upload, *rest, n in doc["summary"]:
                self._summary[(group, patient, _day(upload), *rest)] = int(n)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise InvalidCounts(
                f"the last batch's catalogue counts cannot be used ({exc}): rerun with "
                "WAREHOUSE_RECONCILE=true"
            ) from None


@dataclass(frozen=True)
class ChangedSeries:
    """The rows of the series a merge changed, for the series table to be brought up to date.

    Attributes
    ----------
    path : str
        A local Parquet file (`series.SOURCE_COLUMNS`): every merged row of those series.
    series : int
        How many series changed.
    previous : str or None
        A local copy of the last batch's series table, when the merge read it
        (`_in_last_catalogue`): the table brought up to date starts from it.
    """

    path: str
    series: int
    previous: str | None = None


class _ChangedSeriesRows:
    """Writes the merged rows of the changed series to ``changed.path`` (a context manager)."""

    def __init__(self, changed: ChangedSeries | None, series: set[str]):
        self.changed = changed
        self.wanted = pa.array(sorted(series), pa.string())
        self.schema = pa.schema([MERGED_SCHEMA.field(name) for name in SOURCE_COLUMNS])
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> _ChangedSeriesRows:
        if self.changed is not None:
            self.writer = pq.ParquetWriter(self.changed.path, self.schema, compression="zstd")
        return self

    def add(self, table: pa.Table) -> None:
        """Write the rows of ``table`` that belong to a changed series."""
        if self.writer is None or not len(self.wanted):
            return
        rows = table.filter(pc.is_in(table.column("SeriesInstanceUID"), self.wanted))
        if rows.num_rows:
            self.writer.write_table(rows.select(self.schema.names).cast(self.schema))

    def __exit__(self, *exc_info) -> None:
        if self.writer is not None:
            self.writer.close()


def _parts_after(storage: Storage, through: str | None) -> dict[str, dt.datetime]:
    return {
        info.key: info.last_modified
        for info in storage.list_after(PARTS_PREFIX, through)
        if not info.link and is_part_key(info.key)
    }


@dataclass
class NewRows:
    """What a merge notes of the rows of the parts it reads, while they are few.

    Attributes
    ----------
    keys : list of pyarrow.Array
        Their warehouse keys (a row of the last batch's catalogue under one of them is
        replaced), by part.
    series : list of pyarrow.Array
        Their SeriesInstanceUIDs (the series whose rows change), by part (`series_of`).
    rows : int
        The rows noted; past `NOTED_ROWS` nothing is (``keys`` and ``series`` are emptied, and
        ``overflow`` set): the merge then compares hashes and computes every series again.
    """

    keys: list[pa.Array] = field(default_factory=list)
    series: list[pa.Array] = field(default_factory=list)
    rows: int = 0
    overflow: bool = False

    def series_of(self, chosen: Iterable[bool] | None = None) -> set[str]:
        """Return the SeriesInstanceUIDs of the parts noted (of those ``chosen``, a flag a part)."""
        arrays = self.series
        if chosen is not None:
            arrays = [a for a, kept in zip(arrays, chosen, strict=True) if kept]
        return set(pa.chunked_array(arrays, pa.string()).to_pylist()) if arrays else set()

    def note(self, table: pa.Table) -> None:
        """Note a part's rows."""
        if self.overflow:
            return
        self.rows += table.num_rows
        if self.rows > NOTED_ROWS:
            self.keys, self.series, self.overflow = [], [], True
            return
        self.keys.append(table.column("warehouse_key").combine_chunks())
        self.series.append(pc.unique(table.column("SeriesInstanceUID")).drop_null())


#: Settled parts the index must lack before a merge writes it again (a reconcile always
#: does): the index is the whole catalogue's (356 MB at ten million objects), rewritten a few
#: times a month rather than daily; the loader reads the parts after it (a day's: a few) and
#: takes them into its arrays past `catalogue.run.RECENT_PARTS`, more than these.
INDEX_AFTER_PARTS = 16
#: The new rows a merge notes by their keys and series (`NewRows`): a day's parts hold a few
#: thousand rows; a backlog of more is merged with hashes, and its series computed again.
NOTED_ROWS = 200_000


def _stage_parts(
    storage: Storage,
    parts: dict[str, dt.datetime],
    submit: Callable,
    report: RunReport,
    folder: str,
    filler: ColumnFiller | None = None,
    noted: NewRows | None = None,
) -> tuple[list[PartArrays], str | None]:
    """Read the parts, oldest first, each once, into ``folder`` (with ``filler``, a part
    lacking the series columns is filled first: `backfill.ColumnFiller`).

    Each is copied to a local file named by its place and its rows' hashes are kept; returned
    with the first part that cannot be read (reported and left out; None when every part was
    read). Only a few parts are in memory at a time, so a first merge of thousands of parts stays
    in a flat bound. With ``noted``, the rows' keys and series are noted there.
    """
    os.makedirs(folder, exist_ok=True)
    staged: list[PartArrays] = []
    unreadable = None
    for key, data in read_in_order(storage, sorted(parts), submit):
        try:
            table = read_part(data, _INDEX_COLUMNS)
        except InvalidPart as exc:
            report.skip(key, Reason.INVALID_PART, str(exc))
            unreadable = unreadable or key
            continue
        written = part_written(data, parts[key])
        if filler is not None:
            data = filler.fill(key, data, written)
        with open(_staged_path(folder, len(staged)), "wb") as out:
            out.write(data)
        staged.append(part_arrays(key, written, table))
        if noted is not None:
            noted.note(table)
    return staged, unreadable


def _staged_path(folder: str, number: int) -> str:
    return os.path.join(folder, f"{number:08d}.parquet")


def _newest_masks(staged: list[PartArrays]) -> tuple[list[np.ndarray], np.ndarray]:
    """Tell which rows of each staged part are the newest of their warehouse key.

    The newest is the last in part order. Also returned: every key hash the parts hold, sorted.
    """
    if not staged:
        return [], np.zeros(0, dtype=np.uint64)
    targets = np.concatenate([part.target for part in staged])
    reverse_first = np.unique(targets[::-1], return_index=True)[1]
    keep = np.zeros(len(targets), dtype=bool)
    keep[len(targets) - 1 - reverse_first] = True
    bounds = np.cumsum([0, *(len(part.target) for part in staged)])
    masks = [keep[bounds[n] : bounds[n + 1]] for n in range(len(staged))]
    return masks, np.unique(targets)


@dataclass(frozen=True)
class PreviousCatalogue:
    """The last batch's merged catalogue: its segments and the newest part it covers.

    Attributes
    ----------
    key : str
        What ``latest.csv`` names: its folder (``<batch>/images/``) or, from a batch of an
        older version, its one file.
    segments : tuple of Segment
        Its files in order.
    through : str or None
        The newest part it covers.
    current : bool
        Whether every segment has this version's columns and types.
    """

    key: str
    segments: tuple[Segment, ...]
    through: str | None
    current: bool = True

    def files(self, processed: Storage) -> Iterator[pq.ParquetFile]:
        """Open each segment for reading (ranged reads), in order."""
        for segment in self.segments:
            yield pq.ParquetFile(StoredFile(processed, segment.key, segment.size))


class ShortSegment(ExpectedError):
    """A segment of the last batch's catalogue is shorter than its manifest says."""


class SegmentCopies:
    """The last batch's catalogue segments: read where they are stored, a few columns or row
    groups at a time, and copied to a local file only when a pass reads one whole.

    A usual day reads a column or two of them, or nothing (`_layered_scan`,
    `catalogue.publish`): not the whole catalogue, which is copied only for a pass over every
    row (a certificate or a series table made in full, a segment written again).
    """

    def __init__(self, previous: PreviousCatalogue, processed: Storage, folder: str):
        self.previous, self.processed, self.folder = previous, processed, folder
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.previous.segments)

    def path(self, number: int) -> str:
        """Return the local copy of the ``number``-th segment (`storage.files.copy_to_file`: a
        few large reads), made on first use.

        Raises
        ------
        ShortSegment
            When the segment is shorter than the last batch's manifest says.
        """
        with self._lock:
            path = self._paths.get(number)
            if path is None:
                segment = self.previous.segments[number]
                path = os.path.join(self.folder, f"previous-{number:06d}.parquet")
                if copy_to_file(self.processed, segment.key, segment.size, path) < segment.size:
                    raise ShortSegment(
                        f"{segment.key} is shorter than the last batch's manifest says: "
                        "rerun with WAREHOUSE_RECONCILE=true"
                    )
                self._paths[number] = path
            return path

    def file(self, number: int) -> pq.ParquetFile:
        """Open the ``number``-th segment to read a few of its columns or row groups.

        Its local copy once made, else the stored object by ranged reads.
        """
        with self._lock:
            path = self._paths.get(number)
        if path is not None:
            return pq.ParquetFile(path)
        segment = self.previous.segments[number]
        return pq.ParquetFile(StoredFile(self.processed, segment.key, segment.size))


def _is_current(schema: pa.Schema) -> bool:
    return all(
        name in schema.names and schema.field(name).type == MERGED_SCHEMA.field(name).type
        for name in MERGED_SCHEMA.names
    )


def previous_catalogue(processed: Storage, key: str | None) -> PreviousCatalogue | None:
    """The last batch's merged catalogue (``key``: its folder, or its one file from an older
    version); None when there is none usable (then every part is merged again).
    """
    if key is None:
        return None
    try:
        if is_segments_folder(key):
            manifest = read_manifest(processed, key)
            segments, through = manifest.segments, manifest.through
            schemas = [
                file.schema_arrow
                for file in PreviousCatalogue(key, segments, None).files(processed)
            ]
        else:
            size = next((info.size for info in processed.list(key) if info.key == key), None)
            if size is None:
                return None
            file = pq.ParquetFile(StoredFile(processed, key, size))
            schemas = [file.schema_arrow]
            through = json.loads((schemas[0].metadata or {})[b"through"])
            if through is not None and not isinstance(through, str):
                raise ValueError("its footer's through is not a part key")
            segments = (Segment(key, size, file.metadata.num_rows),)
    except (
        InvalidManifest,
        ObjectNotFound,
        KeyError,
        ValueError,
        pa.ArrowException,
        OSError,
    ) as exc:
        logger.warning("the last batch's catalogue cannot be used (%s): merged again", exc)
        return None
    return PreviousCatalogue(key, segments, through, all(_is_current(s) for s in schemas))


def catalogue_batches(
    file: pq.ParquetFile, columns: Iterable[str] | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[pa.Table]:
    """Yield a merged catalogue's rows, ``batch_rows`` at a time, as tables of `MERGED_SCHEMA`.

    Only ``columns`` of it, when given. A column the file lacks (a catalogue written by an
    older version) is all null.
    """
    fields = [MERGED_SCHEMA.field(name) for name in (columns or MERGED_SCHEMA.names)]
    held = set(file.schema_arrow.names)
    present = [f.name for f in fields if f.name in held]
    if not file.metadata.num_rows:
        return
    for batch in file.iter_batches(batch_size=batch_rows, columns=present):
        yield conformed(pa.Table.from_batches([batch]), pa.schema(fields))
        del batch
        release_arrow_memory()


def _batches_of(
    file: pq.ParquetFile, skip: np.ndarray, noted: NewRows | None = None
) -> Iterator[pa.Table]:
    """Yield the rows of a merged catalogue but those of the keys hashed in ``skip`` (sorted).

    When ``noted`` holds those keys themselves (`NewRows`: not overflowed), rows are matched
    by key in Arrow, not hashed one by one in Python.
    """
    by_value = None
    if noted is not None and not noted.overflow and len(skip):
        by_value = pa.chunked_array(noted.keys, pa.string()).combine_chunks()
    for table in catalogue_batches(file):
        if by_value is not None:
            table = table.filter(pc.invert(pc.is_in(table.column("warehouse_key"), by_value)))
        elif len(skip):
            replaced = contains(skip, key_hashes(table.column("warehouse_key").to_pylist()))
            table = table.filter(pa.array(~replaced))
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


def _newest_batches(
    staged: list[PartArrays], masks: list[np.ndarray], folder: str, keep: bool = False
) -> Iterator[pa.Table]:
    """Yield the staged parts' newest rows (``masks``) with their ``filed`` date, by part.

    Each staged file is removed once read, unless ``keep``.
    """
    for number, (part, newest) in enumerate(zip(staged, masks, strict=True)):
        if not newest.any():
            continue
        yield _staged_rows(_staged_path(folder, number), newest, part.written)
        if not keep:
            os.remove(_staged_path(folder, number))


def _staged_rows(path: str, newest: np.ndarray, written: dt.datetime) -> pa.Table:
    """A staged part's newest rows, with their ``filed`` date (when it was ``written``)."""
    with open(path, "rb") as staged_file:
        table = read_part(staged_file.read()).filter(pa.array(newest))
    filed = pa.array([written.date()] * table.num_rows, type=pa.date32())
    return table.append_column(MERGED_SCHEMA.field("filed"), filed)


def _with_folders(table: pa.Table) -> pa.Table:
    """``table`` with the patient and study folders its metadata keys name."""
    parts = pc.split_pattern(table.column("metadata_key"), "/")
    return table.append_column("patient_folder", pc.list_element(parts, KEY_PATIENT)).append_column(
        "study_folder", pc.list_element(parts, KEY_STUDY)
    )


def _count(scan: CatalogueScan, rows: pa.Table, sign: int = 1) -> None:
    """Count merged rows into ``scan`` (rows, studies, images, bytes, the summary).

    With ``sign`` -1, count them out (rows another part replaces: `CatalogueScan.prune`
    after).
    """
    scan.rows += sign * rows.num_rows
    table = _with_folders(rows)
    firsts = table.group_by([*_STUDY, "filed"], use_threads=False).aggregate(
        [("metadata_key", "min"), ("warehouse_key", "count")]
    )
    for row in firsts.to_pylist():
        study = tuple(row[name] for name in _STUDY)
        scan.study_images[(*study, row["filed"])] += sign * row["warehouse_key_count"]
        first = (row["metadata_key_min"], row["filed"])
        known = scan.studies.get(study)
        if sign < 0:
            # the study's first file is replaced: the row replacing it (the same key) is
            # counted in after, and is the first again
            if known is not None and known[0] == first[0]:
                del scan.studies[study]
        elif known is None or first[0] < known[0]:
            scan.studies[study] = first
    sizes = table.group_by(["group", "modality_folder"]).aggregate(
        [("object_size", "sum"), ("metadata_size", "sum")]
    )
    for row in sizes.to_pylist():
        where = (row["group"], row["modality_folder"])
        scan.image_bytes[where] += sign * (row["object_size_sum"] or 0)
        scan.metadata_bytes[where] += sign * (row["metadata_size_sum"] or 0)
    scan.unsized_metadata += sign * table.column("metadata_size").null_count
    summary = table.group_by(list(SUMMARY_COLUMNS), use_threads=False).aggregate(
        [("warehouse_key", "count")]
    )
    for row in summary.to_pylist():
        key = tuple(row[name] for name in SUMMARY_COLUMNS)
        scan.summary[key] += sign * row["warehouse_key_count"]
    screened = pa.table(
        {"prefix": raw_prefixes(rows), "status": screen_status(rows), "n": rows["warehouse_key"]}
    )
    for row in screened.group_by(["prefix", "status"]).aggregate([("n", "count")]).to_pylist():
        scan.screened[(row["prefix"], row["status"])] += sign * row["n_count"]


def raw_prefixes(rows: pa.Table) -> pa.Array:
    """Each row's raw prefix (the site that uploaded it: the first folder of its raw key),
    null when its raw key is not known.
    """
    parts = pc.split_pattern(rows.column("raw_key"), "/")
    return pc.list_element(parts, 0).combine_chunks()


def screen_status(rows: pa.Table) -> pa.Array:
    """Each row's screen status from its ``identifying_attributes``: `FLAGGED` (a keyword),
    `CLEAN` (an empty list) or `NOT_SCREENED` (null: a row written before the screen, or an
    image catalogued from its header).
    """
    lengths = pc.list_value_length(rows.column("identifying_attributes"))
    status = pc.if_else(pc.greater(lengths, 0), FLAGGED, CLEAN)
    return pc.fill_null(status, NOT_SCREENED).combine_chunks()


@functools.lru_cache(maxsize=8192)  # (a few thousand distinct dates, read many times)
def _day(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value is not None else None


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def counts_document(scan: CatalogueScan) -> bytes:
    """Save what a merge counted, for a next run that merges no part.

    Compressed JSON lines: a head (what a run needs to decide that the last batch stands: rows,
    parts, sizes by folder), then a body (studies, images per study, summary) that only a run
    building a new batch decodes.
    """
    head = {
        "rows": scan.rows,
        "through": scan.through,
        "beyond": scan.beyond,
        "unsized_metadata": scan.unsized_metadata,
        "image_bytes": [[*k, n] for k, n in scan.image_bytes.items()],
        "metadata_bytes": [[*k, n] for k, n in scan.metadata_bytes.items()],
        "study_count": scan.study_count,
        "screened": [[*k, n] for k, n in scan.screened.items()],
    }
    body = {
        "studies": [[*study, key, _iso(filed)] for study, (key, filed) in scan.studies.items()],
        "study_images": [[*k[:-1], _iso(k[-1]), n] for k, n in scan.study_images.items()],
        "summary": [[*k[:2], _iso(k[2]), *k[3:], n] for k, n in scan.summary.items()],
    }
    text = json.dumps(head) + "\n" + json.dumps(body)  # (json.dumps writes no newline)
    # (level 1: at ten million images level 9 took 1.6 s of CPU for a third fewer bytes)
    return gzip.compress(text.encode("utf-8"), compresslevel=1, mtime=0)


class InvalidCounts(ExpectedError):
    """The last batch's saved counts, taken for its catalogue, cannot be decoded."""


def counted_scan(data: bytes, path: str, reused: str) -> CatalogueScan:
    """Rebuild the counts `counts_document` saved, for the rows of ``reused``.

    Raises
    ------
    ValueError
        When ``data`` is not such a document.
    """
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as unzipped:
            doc = json.loads(unzipped.readline())
            # (a document of an older version is one line: head and body together)
            body = doc if "studies" in doc else unzipped.read()
        scan = CatalogueScan(path, rows=int(doc["rows"]), through=doc["through"], reused=reused)
        scan.unsized_metadata = int(doc["unsized_metadata"])
        beyond = doc["beyond"]
        if beyond is not None and not all(isinstance(key, str) for key in beyond):
            raise ValueError("beyond is not a list of part keys")
        scan.beyond = beyond
        for name in ("image_bytes", "metadata_bytes"):
            for group, folder, n in doc[name]:
                getattr(scan, name)[(group, folder)] = int(n)
        # (counts saved before the screen have none: the catalogue is merged and counted again)
        for prefix, status, n in doc["screened"]:
            scan.screened[(prefix, status)] = int(n)
        if isinstance(body, dict):
            if not all(
                isinstance(body[name], list) for name in ("studies", "study_images", "summary")
            ):
                raise ValueError("studies, study_images and summary are lists")
            scan._study_count = len(body["studies"])
        elif isinstance(doc.get("study_count"), int):
            scan._study_count = doc["study_count"]
        else:
            raise ValueError("no study count")
        scan._saved = body  # (decoded when first asked for)
    except (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise ValueError(f"not the counts of a catalogue: {exc}") from None
    if scan.through is not None and not isinstance(scan.through, str):
        raise ValueError("not the counts of a catalogue: through is not a part key")
    return scan


@dataclass(frozen=True)
class LastBatch:
    """What a merge takes from the last batch (in the processed store).

    Attributes
    ----------
    images : str or None
        Its catalogue (``images/``, or ``images.parquet`` from an older version).
    counts : bytes or None
        Its `COUNTS_NAME` file.
    series : str or None
        Its series table (``series.parquet``), when it has one.
    """

    images: str | None = None
    counts: bytes | None = None
    series: str | None = None


def scan_catalogue(
    storage: Storage,
    processed: Storage,
    last: LastBatch,
    submit: Callable,
    report: RunReport,
    path: str,
    now: dt.datetime | None = None,
    filed: FiledImages | None = None,
) -> CatalogueScan:
    """Merge the last batch's catalogue (``last.images`` in the processed store) with the
    parts written since into ``path`` (a local file), counting what the dashboards need, and
    build the catalogue's next index from the current one and those parts. With ``filed``
    (a reconcile's listing of the warehouse), rows of images no longer filed are left out.
    When no part was written since and the last batch saved its counts, its catalogue
    stands as it is (``reused``): nothing is read or written but those counts. A reconcile
    (``filed`` given) also fills the parts that lack the series columns from the metadata
    files, and writes them again, as it reads them (`backfill.ColumnFiller`).

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    now = now or dt.datetime.now(dt.UTC)
    previous = previous_catalogue(processed, last.images)
    through = previous.through if previous is not None else None
    new_parts = _parts_after(storage, through)
    saved = None
    if previous is not None and last.images and last.counts and filed is None:
        try:
            saved = counted_scan(last.counts, path, last.images)
            saved.previous = previous
        except ValueError as exc:
            logger.warning("the last batch's catalogue counts cannot be used (%s)", exc)
        else:
            # the parts after ``through`` are those the last batch merged already: its rows
            if saved.through == through and saved.beyond == sorted(new_parts):
                logger.info("catalogue: no part since the last batch: its %d images", saved.rows)
                return saved
    folder = f"{path}.parts"
    filler = ColumnFiller(storage, submit, report, len(new_parts)) if filed is not None else None
    noted = NewRows()
    staged, unreadable = _stage_parts(storage, new_parts, submit, report, folder, filler, noted)
    settled = settled_parts(staged, unreadable, now)
    masks, replaced = _newest_masks(staged)
    covers = max([through or "", *(p.key for p in settled)]) or None
    scan = None
    if previous is not None and previous.current and saved is not None and not noted.overflow:
        if unreadable is None and saved.through == through:
            scan = _layered_scan(saved, processed, noted, staged, masks, folder, last.series)
    if scan is None:
        day = _Staged(staged, masks, folder, replaced, noted)
        scan = _merged_scan(path, covers, previous, processed, filed, day)
    scan.through = covers
    scan.new_parts = len(new_parts)
    scan.beyond = None if unreadable else sorted(k for k in new_parts if k > (scan.through or ""))
    scan.index = _next_index(
        storage,
        through,
        settled,
        submit,
        report,
        f"{path}.index.parquet",
        compact=filed is not None,
    )
    logger.info(
        "catalogue: %d images, %d parts merged since the last batch", scan.rows, scan.new_parts
    )
    return scan


@dataclass(frozen=True)
class _Staged:
    """The parts a merge read: their arrays, newest rows, local folder, keys, noted rows."""

    parts: list[PartArrays]
    masks: list[np.ndarray]
    folder: str
    replaced: np.ndarray
    noted: NewRows


def _merged_scan(
    path: str,
    covers: str | None,
    previous: PreviousCatalogue | None,
    processed: Storage,
    filed: FiledImages | None,
    day: _Staged,
) -> CatalogueScan:
    """Merge the last batch's rows and the staged parts' into the local file ``path``.

    Every row is counted: a first merge, a reconcile, a backlog, counts that cannot be used.
    """
    staged, masks, folder, replaced, noted = (
        day.parts,
        day.masks,
        day.folder,
        day.replaced,
        day.noted,
    )
    scan = CatalogueScan(path)
    older = itertools.chain.from_iterable(
        _batches_of(file, replaced, noted)
        for file in (previous.files(processed) if previous else ())
    )
    # (a reconcile may leave rows out: its series are all computed again)
    if previous is not None and previous.current and filed is None and not noted.overflow:
        series = noted.series_of()
        scan.changed_series = ChangedSeries(f"{path}.series-rows.parquet", len(series))
        changed = _ChangedSeriesRows(scan.changed_series, series)
    else:
        changed = _ChangedSeriesRows(None, set())
    metadata = {"through": json.dumps(covers)}
    schema = MERGED_SCHEMA.with_metadata(metadata)
    with pq.ParquetWriter(path, schema, compression="zstd") as out, changed:
        for table, new in itertools.chain(
            ((t, False) for t in older),
            ((t, True) for t in _newest_batches(staged, masks, folder)),
        ):
            table = _still_filed(table, filed, scan)
            if not table.num_rows:
                continue
            changed.add(table)
            out.write_table(table)
            _count(scan, table)
            if new:
                _touch(scan, table)
    return scan


def _touch(scan: CatalogueScan, rows: pa.Table) -> None:
    """Note the studies of new ``rows`` (their first metadata file may have changed)."""
    touched = _with_folders(rows).group_by(list(_STUDY), use_threads=False)
    scan.touched.update(
        tuple(row[name] for name in _STUDY) for row in touched.aggregate([]).to_pylist()
    )


#: No warehouse key.
_NO_KEYS = pa.array([], pa.string())


@dataclass(frozen=True)
class Layers:
    """A merged catalogue left as the last batch's rows and the day's parts (not one file).

    Attributes
    ----------
    previous : SegmentCopies
        The segments of the last batch's catalogue (a pass over every row reads local copies,
        made once).
    replaced : pyarrow.Array
        The warehouse keys of its rows that the parts' rows replace.
    staged : list of tuple
        Each staged part's local file, the mask of its newest rows and when it was written.
    replacing : frozenset of int
        The positions (in ``previous``) of the segments that hold a replaced row.
    """

    previous: SegmentCopies
    replaced: pa.Array
    staged: list[tuple[str, np.ndarray, dt.datetime]]
    replacing: frozenset[int] = frozenset()

    def replaced_in(self, number: int) -> pa.Array:
        """The replaced keys to leave out of the ``number``-th segment: none when it holds
        no replaced row (its warehouse keys need not even be read).
        """
        return self.replaced if number in self.replacing else _NO_KEYS


def _layered_scan(
    saved: CatalogueScan,
    processed: Storage,
    noted: NewRows,
    staged: list[PartArrays],
    masks: list[np.ndarray],
    folder: str,
    series_key: str | None = None,
) -> CatalogueScan | None:
    """Bring the last batch's saved counts (``saved``) up to date with the staged parts.

    The rows of the last batch's catalogue that the parts replace are counted out (found by
    key, a column of the catalogue read, then only the row groups that hold one), the parts'
    newest rows counted in; the catalogue is left in layers (`Layers`, read by
    `merged_batches`), not written again. Its segments are not even looked at when no key of
    the day is in one of its study folders and none of the day's series is in its series
    table (``series_key``; `_in_last_catalogue`): the usual day, new images of new studies.
    What it reads and counts follows the day's parts, not the catalogue's size. None when
    the saved counts cannot be decoded (the catalogue is then merged and counted in full).

    A part the last batch merged already (``saved.beyond``: not settled then, merged again
    until it is) holds rows the last batch's catalogue has as they are: those that are still
    the newest of their key are neither counted again nor replaced, so the segment that holds
    them stands (`catalogue.publish`).
    """
    previous = saved.previous
    assert previous is not None
    try:
        saved.studies  # noqa: B018 - decoded now: a fault falls back to a full merge
    except InvalidCounts as exc:
        logger.warning("%s: the catalogue is merged and counted again", exc)
        return None
    scan, saved.reused = saved, None
    copies = SegmentCopies(previous, processed, folder)
    merged_before = set(saved.beyond or ())
    again = [part.key in merged_before for part in staged]
    keys = pa.chunked_array(
        [k for k, before in zip(noted.keys, again, strict=True) if not before], pa.string()
    ).combine_chunks()
    masks = [
        np.zeros_like(mask) if before else mask for mask, before in zip(masks, again, strict=True)
    ]
    # (a part merged already changes no series: the last batch's series table counts its rows)
    day_series = noted.series_of(not before for before in again)
    series = pa.array(sorted(day_series), pa.string())
    look_keys, look_series, previous_series = _in_last_catalogue(
        saved, processed, series_key, keys, series, f"{scan.path}.series-previous.parquet"
    )
    scan.changed_series = ChangedSeries(
        f"{scan.path}.series-rows.parquet", len(day_series), previous_series
    )
    changed = _ChangedSeriesRows(scan.changed_series, day_series)
    replacing: set[int] = set()
    with changed:
        for number in range(len(copies)):
            if not (len(look_keys) or len(look_series)):
                break  # (the segments are not even opened)
            for rows, gone in _rows_of(copies.file(number), look_keys, look_series):
                if gone.num_rows:
                    _count(scan, gone, sign=-1)
                    replacing.add(number)
                changed.add(rows)
        for table in _newest_batches(staged, masks, folder, keep=True):
            changed.add(table)
            _count(scan, table)
            _touch(scan, table)
    scan.prune()
    scan.layers = Layers(
        copies,
        keys,
        [
            (_staged_path(folder, n), mask, part.written)
            for n, (part, mask) in enumerate(zip(staged, masks, strict=True))
        ],
        frozenset(replacing),
    )
    return scan


def _in_last_catalogue(
    saved: CatalogueScan,
    processed: Storage,
    series_key: str | None,
    keys: pa.Array,
    series: pa.Array,
    copy: str,
) -> tuple[pa.Array, pa.Array, str | None]:
    """Narrow the day's warehouse ``keys`` and ``series`` to those the last batch's catalogue
    may hold.

    A key of a study folder it holds (``saved.studies``; a warehouse key names the folders its
    row's metadata key names, as the loader files them), a series its series table lists (all
    the day's series when it has none or it cannot be read). The series table is read from a
    local copy (``copy``, returned when made: the series table of the batch starts from it).
    """
    if len(keys):
        studies = saved.studies
        looked = []
        for key in keys.to_pylist():
            folders = key.split("/", KEY_STUDY + 1)[: KEY_STUDY + 1]
            # (a key that names no study folder is looked for anyway)
            looked.append(len(folders) <= KEY_STUDY or tuple(folders) in studies)
        keys = keys.filter(pa.array(looked, pa.bool_()))
    copied = None
    if len(series) and series_key is not None:
        try:
            size = next((i.size for i in processed.list(series_key) if i.key == series_key), None)
            if size is not None:
                copy_to_file(processed, series_key, size, copy)
                listed = pq.read_table(copy, columns=["SeriesInstanceUID"]).column(0)
                series = series.filter(pc.is_in(series, value_set=listed.combine_chunks()))
                copied = copy
        except (ObjectNotFound, KeyError, pa.ArrowException, OSError, ValueError) as exc:
            logger.warning("%s cannot be read (%s): every segment is looked at", series_key, exc)
    return keys, series, copied


def _rows_of(
    file: pq.ParquetFile, keys: pa.Array, series: pa.Array
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Yield, by row group of a merged catalogue, the rows (not replaced) of the ``series``
    and the rows whose warehouse key is one of ``keys`` (replaced).

    A row group is read whole only when it holds one: the others, by two columns.
    """
    if not file.metadata.num_rows or not (len(keys) or len(series)):
        return
    held = set(file.schema_arrow.names)
    for group in range(file.num_row_groups):
        look = file.read_row_group(group, columns=["warehouse_key", "SeriesInstanceUID"])
        gone = pc.is_in(look.column("warehouse_key"), keys)
        wanted = pc.and_(pc.is_in(look.column("SeriesInstanceUID"), series), pc.invert(gone))
        if not (pc.any(gone).as_py() or pc.any(wanted).as_py()):
            continue
        names = [name for name in MERGED_SCHEMA.names if name in held]
        rows = conformed(file.read_row_group(group, columns=names), MERGED_SCHEMA)
        yield rows.filter(wanted), rows.filter(gone)


def merged_batches(
    scan: CatalogueScan,
    processed: Storage | None,
    columns: Iterable[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Yield the merged catalogue's rows (``columns`` of `MERGED_SCHEMA`, all by default).

    From the local file a merge wrote, the last batch's catalogue when it stands as it is
    (``scan.reused``), or its layers (``scan.layers``: the last batch's rows but those
    replaced, then the parts' newest rows). Nothing when there is no catalogue.
    """
    names = list(columns or MERGED_SCHEMA.names)
    layers = scan.layers
    if layers is None:
        if scan.reused is not None and scan.previous is not None:
            if processed is None:
                raise ValueError("the last batch's rows are read from the processed store")
            for file in scan.previous.files(processed):
                yield from catalogue_batches(file, names, batch_rows)
        elif os.path.exists(scan.path):
            yield from catalogue_batches(pq.ParquetFile(scan.path), names, batch_rows)
        return
    for number in range(len(layers.previous)):
        path = layers.previous.path(number)
        yield from kept_batches(path, layers.replaced_in(number), names, batch_rows)
    yield from day_batches(layers, names)


def kept_batches(
    path: str,
    replaced: pa.Array,
    columns: Iterable[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.Table]:
    """Yield the rows of the local catalogue file ``path`` but those whose warehouse key is
    one of ``replaced`` (``columns`` of `MERGED_SCHEMA`, all by default).
    """
    names = list(columns or MERGED_SCHEMA.names)
    if not len(replaced):  # (nothing to leave out: the keys are not read for it)
        yield from catalogue_batches(pq.ParquetFile(path), names, batch_rows)
        return
    read = names if "warehouse_key" in names else [*names, "warehouse_key"]
    for table in catalogue_batches(pq.ParquetFile(path), read, batch_rows):
        table = table.filter(pc.invert(pc.is_in(table.column("warehouse_key"), replaced)))
        yield table.select(names)


def day_batches(layers: Layers, columns: Iterable[str] | None = None) -> Iterator[pa.Table]:
    """Yield the newest rows of the parts a layered merge staged (`Layers`)."""
    schema = pa.schema([MERGED_SCHEMA.field(name) for name in columns or MERGED_SCHEMA.names])
    for path, newest, written in layers.staged:
        if newest.any():
            yield conformed(_staged_rows(path, newest, written), schema)


def _next_index(
    storage: Storage,
    through: str | None,
    settled: list[PartArrays],
    submit: Callable,
    report: RunReport,
    path: str,
    compact: bool = False,
) -> SavedIndex | None:
    """Save at ``path`` the loader's index after a merge of the parts after ``through`` (None:
    every part).

    The current index with the settled parts it lacks (`combine_saved`: an array at a time):
    those this merge read, and those the last batch merged that the index was not rewritten
    with (read again, a few); or (every part merged) those parts alone. None when it stays
    as it is: nothing new or none settled yet; fewer than `INDEX_AFTER_PARTS` parts lacking,
    unless ``compact`` (the loader reads those); or it cannot be read (said), or a part it
    lacks cannot (the loader reads them; the next merge tries again).
    """
    if through is None:
        return save_index(arrays_of_parts(settled), path) if settled else None
    try:
        pointer = read_pointer(storage)
        if pointer is None:
            return None
        covered = pointer.get("through") or ""
        new = [part for part in settled if part.key > covered]
        between = {}
        if covered < through:  # (merged by the last batch, not in the index)
            between = {k: t for k, t in _parts_after(storage, covered).items() if k <= through}
        if len(between) + len(new) < (1 if compact else INDEX_AFTER_PARTS):
            return None
        older = []
        for key, data in read_in_order(storage, sorted(between), submit):
            table = read_part(data, _INDEX_COLUMNS)
            older.append(part_arrays(key, part_written(data, between[key]), table))
        lacking = arrays_of_parts([*older, *new])
        return combine_saved(storage, pointer["index"], pointer["size"], lacking, path)
    except InvalidPart as exc:
        logger.warning("a part the index lacks cannot be read (%s): not updated", exc)
        return None
    except (InvalidIndex, ObjectNotFound) as exc:
        report.count("catalogue index not updated (the current one cannot be read)")
        logger.warning("the catalogue index cannot be read (%s): not updated", exc)
        return None


def publish_index(storage: Storage, scan: CatalogueScan, now: dt.datetime) -> str | None:
    """Publish the index a merge built and saved (`publish_saved_index`), when it built one."""
    if scan.index is None or storage.read_only:
        return None
    return publish_saved_index(storage, scan.index, now)
