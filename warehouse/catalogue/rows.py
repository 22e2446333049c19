"""The image catalogue: one row per filed image, in Parquet parts the loader writes.

A loader run writes the rows of the images it files as parts,
``catalogue/images/<UTC time>.parquet``, while it files (`warehouse.catalogue.run`): a row
once its image and metadata file are both written. A row holds where the image is (its
warehouse key, its metadata key, the raw key it came from, group, modality folder, upload
date, sizes) and the header fields a researcher filters on, typed: dates as dates, numbers as
numbers, a missing or unreadable value as null. This module holds the row schema, the rules
that make a row from a parsed header, and writing and reading parts (`warehouse.catalogue.merge`
merges them).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.dataset import Dataset

from warehouse.core.keys import ImageKey, parse_image_key
from warehouse.core.report import utc_stamp
from warehouse.core.text import quote
from warehouse.dicom.reader import read_header
from warehouse.dicom.values import dicom_age_years

if TYPE_CHECKING:
    from warehouse.storage.base import Storage

#: Where the loader's parts are, in the warehouse.
PARTS_PREFIX = "catalogue/images/"
PART_SUFFIX = ".parquet"

#: Where the image is, and what it is (identifiers); then the header fields, typed.
SCHEMA = pa.schema(
    [
        ("warehouse_key", pa.string()),
        ("metadata_key", pa.string()),
        ("raw_key", pa.string()),
        ("group", pa.string()),
        ("modality_folder", pa.string()),
        ("upload_date", pa.date32()),
        ("object_size", pa.int64()),
        ("metadata_size", pa.int64()),
        ("PatientID", pa.string()),
        ("StudyInstanceUID", pa.string()),
        ("SeriesInstanceUID", pa.string()),
        ("SOPInstanceUID", pa.string()),
        ("SOPClassUID", pa.string()),
        ("Modality", pa.string()),
        ("BodyPartExamined", pa.string()),
        ("ViewPosition", pa.string()),
        ("PatientSex", pa.string()),
        ("PatientAge", pa.float64()),
        ("StudyDate", pa.date32()),
        ("Manufacturer", pa.string()),
        ("ManufacturerModelName", pa.string()),
        ("Rows", pa.int32()),
        ("Columns", pa.int32()),
        ("PixelSpacing", pa.list_(pa.float64())),
        ("SliceThickness", pa.float64()),
        ("NumberOfFrames", pa.int32()),
        ("PhotometricInterpretation", pa.string()),
        ("BitsStored", pa.int32()),
        ("TransferSyntaxUID", pa.string()),
        ("SeriesDescription", pa.string()),
        ("StudyDescription", pa.string()),
        ("SeriesNumber", pa.int32()),
        ("InstanceNumber", pa.int32()),
        ("ImagePositionPatient", pa.list_(pa.float64())),
        ("ImageOrientationPatient", pa.list_(pa.float64())),
        ("SliceLocation", pa.float64()),
        ("ConvolutionKernel", pa.list_(pa.string())),
        ("ImageType", pa.list_(pa.string())),
        ("KVP", pa.float64()),
        ("AcquisitionDate", pa.date32()),
        ("content_id", pa.string()),
        ("identifying_attributes", pa.list_(pa.string())),
    ]
)
COLUMNS = tuple(SCHEMA.names)
#: The columns taken from the header: after the eight that say where the image is, before the
#: loader's own (its raw file's content, what the identifying-data screen flagged).
HEADER_COLUMNS = COLUMNS[8 : COLUMNS.index("content_id")]
#: Where a row holds its metadata file's size (known once that file is written).
METADATA_SIZE = COLUMNS.index("metadata_size")
#: The header columns added after the first version of the catalogue: parts written before
#: lack them (null), until a reconcile fills them from the metadata files
#: (`warehouse.catalogue.backfill`).
SERIES_COLUMNS = (
    "SeriesDescription",
    "StudyDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "ConvolutionKernel",
    "ImageType",
    "KVP",
    "AcquisitionDate",
)
#: The most values a multi-valued text column keeps (ImageType, ConvolutionKernel): a value
#: of more is not one of those (null), so an uploader's 16 KiB of backslashes cannot make a
#: row of thousands of strings.
MAX_LIST_VALUES = 32
#: How many numbers a patient-geometry value holds (ImagePositionPatient: x, y, z;
#: ImageOrientationPatient: the row and column direction cosines); any other count is null.
GEOMETRY_VALUES = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6}

#: Seconds between two progress lines of a pass over filed images' headers.
PROGRESS_SECONDS = 10.0

_INT32 = (-(2**31), 2**31 - 1)
#: A conversion that cannot be made (a malformed value) gives null: what may go wrong.
CONVERSION_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
    UnicodeError,
    ArithmeticError,
)


def part_key(now: dt.datetime, shard: tuple[int, int] | None = None) -> str:
    """The key of the part a run writes at ``now``:
    ``catalogue/images/2026-11-25T09-30-00.123456Z.parquet`` (UTC; a process of a sharded run
    adds ``-shard-<i>-of-<N>``, so that the shards' parts never share a name)."""
    stamp = utc_stamp(now)
    if shard is not None:
        stamp += f"-shard-{shard[0]}-of-{shard[1]}"
    return f"{PARTS_PREFIX}{stamp}{PART_SUFFIX}"


def is_part_key(key: str) -> bool:
    """Whether ``key`` names a catalogue part."""
    return (
        key.startswith(PARTS_PREFIX)
        and key.endswith(PART_SUFFIX)
        and "/" not in key[len(PARTS_PREFIX) :]
    )


# --------------------------------------------------------------------------------------------
# typed values from a header


def _raw_value(dataset: Dataset, keyword: str):
    try:
        element = dataset.get(keyword)
    except CONVERSION_ERRORS:
        return None
    return element


def _is_multi(value) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def _text(value) -> str | None:
    if value is None:
        return None
    try:
        if _is_multi(value):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
    except CONVERSION_ERRORS:
        return None
    text = text.rstrip(" \x00").strip()
    return text or None


def _integer(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        if _is_multi(value):
            value = value[0]
        number = int(float(str(value).strip()))
    except CONVERSION_ERRORS:
        return None
    return number if _INT32[0] <= number <= _INT32[1] else None


def _real(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        if _is_multi(value):
            value = value[0]
        number = float(str(value).strip())
    except CONVERSION_ERRORS:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _reals(value) -> list[float] | None:
    if value is None or value == "":
        return None
    items = list(value) if _is_multi(value) else [value]
    numbers = [_real(item) for item in items]
    reals = [number for number in numbers if number is not None]
    if not numbers or len(reals) < len(numbers):
        return None
    return reals


def _texts(value) -> list[str] | None:
    """A multi-valued text (CS, SH) as the list of its values, each without its padding (an
    empty value stays, as ``""``: the values are positional); null when there is none, or
    more than `MAX_LIST_VALUES`."""
    if value is None or value == "":
        return None
    items = list(value) if _is_multi(value) else [value]
    if not items or len(items) > MAX_LIST_VALUES:
        return None
    try:
        texts = [str(item).rstrip(" \x00").strip() for item in items]
    except CONVERSION_ERRORS:
        return None
    return texts if any(texts) else None


def _geometry(value, count: int) -> list[float] | None:
    """Exactly ``count`` numbers (`_reals`), else null."""
    numbers = _reals(value)
    return numbers if numbers is not None and len(numbers) == count else None


def dicom_date(value) -> dt.date | None:
    """A DA value (``YYYYMMDD``, or the old ``YYYY.MM.DD``) as a date; None if it is not one."""
    text = _text(value)
    if text is None:
        return None
    digits = text.replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def upload_date(value: str | None) -> dt.date | None:
    """An upload folder's name (``YYYY-MM-DD``) as a date; None for none."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def instance_uid(dataset: Dataset) -> str | None:
    """A header's SOPInstanceUID (else its file meta's MediaStorageSOPInstanceUID), or None."""
    meta = getattr(dataset, "file_meta", None)
    return _text(_raw_value(dataset, "SOPInstanceUID")) or (
        _text(_raw_value(meta, "MediaStorageSOPInstanceUID")) if meta is not None else None
    )


def header_fields(dataset: Dataset) -> dict:
    """The catalogue's header fields of a parsed header, typed, by column name.

    Identifiers and other text lose their DICOM padding; a value that is absent, empty or
    cannot be converted is None. SOPInstanceUID and SOPClassUID fall back on the file meta's
    media storage UIDs; TransferSyntaxUID comes from the file meta. Multi-valued text
    (ImageType, ConvolutionKernel) is a list; ImagePositionPatient and
    ImageOrientationPatient are lists of 3 and 6 numbers.
    """
    meta = getattr(dataset, "file_meta", None)

    def value(keyword):
        return _raw_value(dataset, keyword)

    def from_meta(keyword):
        return _raw_value(meta, keyword) if meta is not None else None

    return {
        "PatientID": _text(value("PatientID")),
        "StudyInstanceUID": _text(value("StudyInstanceUID")),
        "SeriesInstanceUID": _text(value("SeriesInstanceUID")),
        "SOPInstanceUID": instance_uid(dataset),
        "SOPClassUID": _text(value("SOPClassUID")) or _text(from_meta("MediaStorageSOPClassUID")),
        "Modality": _text(value("Modality")),
        "BodyPartExamined": _text(value("BodyPartExamined")),
        "ViewPosition": _text(value("ViewPosition")),
        "PatientSex": _text(value("PatientSex")),
        "PatientAge": dicom_age_years(_text(value("PatientAge"))),
        "StudyDate": dicom_date(value("StudyDate")),
        "Manufacturer": _text(value("Manufacturer")),
        "ManufacturerModelName": _text(value("ManufacturerModelName")),
        "Rows": _integer(value("Rows")),
        "Columns": _integer(value("Columns")),
        "PixelSpacing": _reals(value("PixelSpacing")),
        "SliceThickness": _real(value("SliceThickness")),
        "NumberOfFrames": _integer(value("NumberOfFrames")),
        "PhotometricInterpretation": _text(value("PhotometricInterpretation")),
        "BitsStored": _integer(value("BitsStored")),
        "TransferSyntaxUID": _text(from_meta("TransferSyntaxUID")),
        **series_fields(dataset),
    }


def series_fields(dataset: Dataset) -> dict:
    """The `SERIES_COLUMNS` of a parsed header (or of a metadata file read back as a data
    set: `warehouse.catalogue.backfill`), typed as `header_fields` types them."""

    def value(keyword):
        return _raw_value(dataset, keyword)

    return {
        "SeriesDescription": _text(value("SeriesDescription")),
        "StudyDescription": _text(value("StudyDescription")),
        "SeriesNumber": _integer(value("SeriesNumber")),
        "InstanceNumber": _integer(value("InstanceNumber")),
        **{name: _geometry(value(name), count) for name, count in GEOMETRY_VALUES.items()},
        "SliceLocation": _real(value("SliceLocation")),
        "ConvolutionKernel": _texts(value("ConvolutionKernel")),
        "ImageType": _texts(value("ImageType")),
        "KVP": _real(value("KVP")),
        "AcquisitionDate": dicom_date(value("AcquisitionDate")),
    }


def header_values(dataset: Dataset) -> tuple:
    """The catalogue's header fields of a parsed header (`header_fields`), in `HEADER_COLUMNS`
    order (a column no header gives is None)."""
    fields = header_fields(dataset)
    return tuple(fields.get(name) for name in HEADER_COLUMNS)


def image_row(
    dataset: Dataset,
    image: ImageKey,
    *,
    size: int,
    raw_key: str | None,
    upload: str | None,
    metadata_size: int | None = None,
    content_id: str | None = None,
    identifying: list[str] | None = None,
) -> tuple:
    """One catalogue row, in `COLUMNS` order, for the image filed at ``image``.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        The image's parsed header (the one the loader filed it by).
    image : ImageKey
        Where it is filed.
    size : int
        The filed object's size in bytes.
    raw_key : str or None
        The raw key it was copied from (None when not known).
    upload : str or None
        The upload folder's date, ``YYYY-MM-DD`` (None when not known).
    metadata_size : int, optional
        The size of its metadata file, when it is written (`with_metadata_size` sets it later).
    content_id : str, optional
        The identity of the raw file's bytes (`warehouse.listing.raw.content_id`); None when
        not known.
    identifying : list of str, optional
        The attributes the identifying-data screen flagged (`warehouse.dicom.screen`): empty
        when it passed; None (null) when it was not screened.
    """
    return (
        image.key,
        image.metadata_key,
        raw_key,
        image.group,
        image.folder,
        upload_date(upload),
        int(size),
        metadata_size,
        *header_values(dataset),
        content_id,
        identifying,
    )


def with_metadata_size(row: tuple, size: int) -> tuple:
    """``row`` with its metadata file's size (the loader knows it once the file is written)."""
    return (*row[:METADATA_SIZE], int(size), *row[METADATA_SIZE + 1 :])


def filed_image_row(
    storage,
    key: str,
    size: int,
    max_header_bytes: int | None = None,
    metadata_size: int | None = None,
) -> tuple[tuple, int, int]:
    """The row of an image filed already but in no part, from its header (ranged reads, as
    the loader's own), and what reading it cost.

    Its raw key and upload date are recorded as unknown (null): only the run that filed an
    image knows them, and a guess (another raw file of the same name and size) could borrow
    the provenance of an upload of another site.

    Parameters
    ----------
    storage : Storage
        The warehouse.
    key : str
        The filed image's key.
    size : int
        Its listed size.
    max_header_bytes : int, optional
        The header read limit (`dicom.read_header`).
    metadata_size : int, optional
        Its metadata file's listed size.

    Returns
    -------
    tuple
        ``(row, requests, bytes read)``: the row, in `COLUMNS` order, and the header read's
        range requests and bytes.

    Raises
    ------
    HeaderProblem, StorageError
        When the header cannot be read or parsed.
    ValueError
        When ``key`` is not an image's key (the callers list filed images only).
    """
    image = parse_image_key(key)
    if image is None:
        raise ValueError(f"{quote(key)} is not the key of an image of the warehouse layout")
    header = read_header(storage, key, size, max_header_bytes=max_header_bytes)
    row = image_row(
        header.dataset,
        image,
        size=size,
        raw_key=None,
        upload=None,
        metadata_size=metadata_size,
    )
    return row, header.requests, header.bytes_read


# --------------------------------------------------------------------------------------------
# rows and parts


class RowBuffer:
    """Catalogue rows, kept compact: every ``batch`` rows become one Arrow record batch
    (columnar, a few hundred bytes a row) instead of staying Python tuples."""

    def __init__(self, batch: int = 4096):
        self._batch = batch
        self._rows: list[tuple] = []
        self._batches: list[pa.RecordBatch] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, row: tuple) -> None:
        """Add one row (in `COLUMNS` order)."""
        self._rows.append(row)
        self._count += 1
        if len(self._rows) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows, strict=True))
            arrays = [
                pa.array(list(values), type=field.type)
                for values, field in zip(columns, SCHEMA, strict=True)
            ]
            self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=SCHEMA))
            self._rows = []

    def table(self) -> pa.Table:
        """Every row so far, as a table of `SCHEMA`."""
        self._flush()
        return pa.Table.from_batches(self._batches, schema=SCHEMA)

    def take(self) -> pa.Table:
        """Every row so far, as a table of `SCHEMA`; the buffer is then empty."""
        table = self.table()
        self._batches, self._count = [], 0
        return table


#: A part's footer key holding when the part was first written (ISO 8601), kept when a
#: reconcile writes the part again with the columns it lacked (`warehouse.catalogue.backfill`):
#: its rows were filed then, not when it was written again.
WRITTEN_METADATA = b"written"


def part_bytes(table: pa.Table, written: dt.datetime | None = None) -> bytes:
    """A part's content: ``table`` as Parquet (zstd), rows sorted by warehouse key; with
    ``written``, the time the part was first written (`part_written` reads it)."""
    table = table.sort_by("warehouse_key") if table.num_rows else table
    if written is not None:
        table = table.replace_schema_metadata({WRITTEN_METADATA: written.isoformat()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def part_written(data: bytes, listed: dt.datetime) -> dt.datetime:
    """When a part was first written: the time its footer keeps (`part_bytes`), else the time
    it was ``listed`` as last modified."""
    try:
        metadata = pq.ParquetFile(io.BytesIO(data)).schema_arrow.metadata or {}
        kept = dt.datetime.fromisoformat(metadata[WRITTEN_METADATA].decode("ascii"))
    except (KeyError, ValueError, UnicodeError, pa.ArrowException, OSError):
        return listed
    return kept if kept.tzinfo is not None else listed


class InvalidPart(ValueError):
    """A part that is not a Parquet file of catalogue rows."""


def read_part(data: bytes, columns: Iterable[str] | None = None) -> pa.Table:
    """A part's rows as a table of `SCHEMA` (or of ``columns`` of it).

    A column a part does not have (written by an older version) is null; columns of other
    types are cast to the schema's (`conform`).

    Raises
    ------
    InvalidPart
        When ``data`` is not a Parquet file with a ``warehouse_key`` column.
    """
    wanted = list(columns) if columns is not None else list(COLUMNS)
    try:
        table = pq.ParquetFile(io.BytesIO(data)).read()  # (read_table: 5x the CPU of a part)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidPart(f"not a Parquet file: {exc}") from None
    if "warehouse_key" not in table.column_names:
        raise InvalidPart("no warehouse_key column")
    return conformed(table, pa.schema([SCHEMA.field(n) for n in wanted]))


#: Bytes Arrow allocates between two hand-backs of its freed memory (`release_arrow_memory`).
RELEASE_EVERY_BYTES = 32 << 20
_released_at = [0]


def release_arrow_memory() -> None:
    """Hand Arrow's allocator back what the last batches of rows freed, once they have
    allocated `RELEASE_EVERY_BYTES` since the last time.

    Arrow's allocator (mimalloc) keeps freed memory for its next allocations rather than
    reuse it at once: measured, reading the catalogue index at ten million objects a row
    group at a time held 125 MB more than its arrays. Called between batches of a pass; not
    handed back after every batch, since the next batch would take the same pages from the
    system again (at ten million objects, 1.2 CPU s of page faults a dataprocess run).
    """
    pool = pa.default_memory_pool()
    allocated = pool.total_bytes_allocated()
    if allocated - _released_at[0] >= RELEASE_EVERY_BYTES:
        pool.release_unused()
        _released_at[0] = allocated


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` as a table of ``schema``: THE way a reader of rows written by an older
    version meets a column they lack (all null), and a column of another type (cast).

    Raises
    ------
    InvalidPart
        When a column cannot be cast to the schema's type.
    """
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            try:
                arrays.append(column.cast(field.type) if column.type != field.type else column)
            except (pa.ArrowException, ValueError) as exc:
                raise InvalidPart(f"column {field.name} is not {field.type}: {exc}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def lacks_columns(data: bytes, names: Iterable[str]) -> bool:
    """Whether the Parquet file ``data`` (a part) lacks any of the columns ``names``."""
    present = set(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names)
    return any(name not in present for name in names)


#: Parts read ahead at most while parts are taken one at a time (memory: a few parts).
PARTS_AHEAD = 32


def read_in_order(
    storage: Storage, keys: Iterable[str], submit: Callable[..., Future], ahead: int = PARTS_AHEAD
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(key, its bytes)`` for each of ``keys``, in their order.

    The reads go through ``submit`` (the run's worker pool), at most ``ahead`` at a time, so
    thousands of parts pass through memory a few at a time.

    Raises
    ------
    StorageError
        When a read fails.
    """
    waiting: deque[tuple[str, Future]] = deque()
    for key in keys:
        waiting.append((key, submit(storage.read, key)))
        if len(waiting) >= ahead:
            done, future = waiting.popleft()
            yield done, future.result()
    while waiting:
        done, future = waiting.popleft()
        yield done, future.result()


class HeaderProgress:
    """The progress line of a pass over filed images' headers (a full run's over the filed
    images no part lists), at most every `PROGRESS_SECONDS`."""

    def __init__(self, total: int, log: logging.Logger, label: str, clock=time.monotonic):
        self.total, self.done = total, 0
        self._log, self._label = log, label
        self._clock = clock
        self._start = self._last = clock()

    def step(self) -> None:
        """One more image read; log the line when it is time (and at the end)."""
        self.done += 1
        now = self._clock()
        if now - self._last >= PROGRESS_SECONDS or self.done == self.total:
            self._last = now
            self._log.info("%s", self.line())

    def line(self) -> str:
        """``catalogue: filed images in no part: images 1,200/5,000 (24%), 118.0 images/s``."""
        share = 100 * self.done // self.total if self.total else 100
        elapsed = self._clock() - self._start
        rate = f", {self.done / elapsed:.1f} images/s" if elapsed > 0 else ""
        return f"{self._label}: images {self.done:,}/{self.total:,} ({share}%){rate}"
