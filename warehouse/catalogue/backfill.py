"""Filling the columns older parts lack, once, from each image's metadata file.

The columns are the header columns added for the series table
(`warehouse.catalogue.rows.SERIES_COLUMNS`). Parts written before those columns existed hold
none of them. A reconcile run of ``dataprocess`` (``WAREHOUSE_RECONCILE=true``), which reads
every part anyway, fills each such part as it reads it: one ranged GET of each of its images'
metadata file (the first `METADATA_READ_BYTES`; an image whose metadata file is longer has its
header read instead, with ranged reads), then the part is written again under its own key
with every column, keeping the time it was first written in its footer (`rows.part_written`:
its rows' ``filed`` date stays the day they were filed). A part is filled whole or not at
all, so a run stopped half-way loses at most the part it was filling; the next reconcile
finds the parts written again complete and fills the rest. Daily runs fill nothing: the
loader writes every column, and a daily merge takes a part as it is (its older rows null in
those columns until then).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pyarrow as pa
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from warehouse.catalogue.rows import (
    CONVERSION_ERRORS,
    PROGRESS_SECONDS,
    SCHEMA,
    SERIES_COLUMNS,
    lacks_columns,
    part_bytes,
    read_part,
    series_fields,
)
from warehouse.core.errors import ObjectNotFound
from warehouse.core.report import RunReport
from warehouse.dicom.problems import HeaderProblem
from warehouse.dicom.reader import read_header
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: The most bytes of a metadata file read to fill a row (one ranged GET): real ones are a few
#: KiB; a longer one is not parsed whole, its image's header is read instead.
METADATA_READ_BYTES = 1024 * 1024
#: Metadata files read ahead at most while a part is filled (memory: that many files).
READS_AHEAD = 32
#: The DICOM JSON key of each column's element.
_JSON_TAGS = {name: f"{tag_for_keyword(name):08X}" for name in SERIES_COLUMNS}
#: What the run counts.
FILLED_PARTS = "catalogue parts filled with the series columns (written again)"
FILLED_ROWS = "catalogue rows filled with the series columns"
UNFILLED_ROWS = (
    "catalogue rows left without the series columns (metadata file missing or unreadable)"
)


def metadata_fields(data: bytes) -> dict | None:
    """Return the `SERIES_COLUMNS` of an image from its metadata file (DICOM JSON).

    They are typed as the loader types them from the header (`rows.series_fields`); None when
    ``data`` is not a DICOM JSON object. Each element is read on its own
    (`pydicom.Dataset.from_json`): one that cannot be read is null, the others stand.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    dataset = Dataset()
    for tag in _JSON_TAGS.values():
        element = document.get(tag)
        if not isinstance(element, dict):
            continue
        try:
            dataset.update(Dataset.from_json({tag: element}))
        except (*CONVERSION_ERRORS, RecursionError):
            continue
    return series_fields(dataset)


def _row_fields(storage: Storage, row: dict, max_header_bytes: int | None) -> dict | None:
    """Return a row's `SERIES_COLUMNS` from its metadata file.

    From its image's header when the file is over `METADATA_READ_BYTES`; None when neither
    can be read (gone, not DICOM JSON).
    """
    try:
        data = storage.read_range(row["metadata_key"], 0, METADATA_READ_BYTES + 1)
    except ObjectNotFound:
        return None
    if len(data) <= METADATA_READ_BYTES:
        return metadata_fields(data)
    try:
        header = read_header(
            storage, row["warehouse_key"], row["object_size"], max_header_bytes=max_header_bytes
        )
    except (HeaderProblem, ObjectNotFound):
        return None
    return series_fields(header.dataset)


class ColumnFiller:
    """Fills the parts of a reconcile's merge that lack `SERIES_COLUMNS`, one at a time.

    Parameters
    ----------
    storage : Storage
        The warehouse (metadata files read, parts written again).
    submit : callable
        The run's worker pool's submit: the metadata files are read through it, at most
        `READS_AHEAD` at a time.
    report : RunReport
        Where the run counts what was filled.
    parts : int
        The parts the merge reads (for the progress line).
    max_header_bytes : int, optional
        The header read limit, for an image whose metadata file is too long to read whole.
    """

    def __init__(
        self,
        storage: Storage,
        submit: Callable[..., Future],
        report: RunReport,
        parts: int,
        max_header_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._storage, self._submit, self._report = storage, submit, report
        self._max_header_bytes = max_header_bytes
        self._parts, self._seen, self._rows = parts, 0, 0
        self._clock = clock
        self._start = self._last = clock()

    def fill(self, key: str, data: bytes, written: dt.datetime) -> bytes:
        """Return the part ``key`` (its bytes ``data``, first ``written`` then) with every column.

        ``data`` itself when it has them all; otherwise the part filled and written again.

        Raises
        ------
        InvalidPart
            When ``data`` is not a part.
        StorageError
            When a read or the write fails (the part stays as it was: the next reconcile
            fills it).
        """
        self._seen += 1
        if not lacks_columns(data, SERIES_COLUMNS):
            self._progress()
            return data
        table = read_part(data)
        values: dict[str, list] = {name: [] for name in SERIES_COLUMNS}
        unfilled = 0
        for fields in self._fields(table):
            unfilled += fields is None
            for name in SERIES_COLUMNS:
                values[name].append(fields.get(name) if fields is not None else None)
        for name in SERIES_COLUMNS:
            field = SCHEMA.field(name)
            table = table.set_column(
                table.schema.get_field_index(name), field, pa.array(values[name], field.type)
            )
        filled = part_bytes(table, written)
        self._storage.write(key, filled, "application/vnd.apache.parquet")
        self._report.count(FILLED_PARTS)
        self._report.count(FILLED_ROWS, table.num_rows - unfilled)
        if unfilled:
            self._report.count(UNFILLED_ROWS, unfilled)
        self._rows += table.num_rows
        self._progress()
        return filled

    def _fields(self, table: pa.Table) -> Iterator[dict | None]:
        """Each row's fields, in row order, the reads `READS_AHEAD` at a time."""
        rows = table.select(["warehouse_key", "metadata_key", "object_size"]).to_pylist()
        waiting: deque[Future] = deque()
        for row in rows:
            waiting.append(self._submit(_row_fields, self._storage, row, self._max_header_bytes))
            if len(waiting) >= READS_AHEAD:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()

    def _progress(self) -> None:
        now = self._clock()
        if self._rows and (now - self._last >= PROGRESS_SECONDS or self._seen == self._parts):
            self._last = now
            logger.info("%s", self.line())

    def line(self) -> str:
        """Return the progress line.

        ``catalogue: filling older parts' series columns: parts 12/340, 11,532 images filled,
        118.0 images/s``.
        """
        elapsed = self._clock() - self._start
        rate = f", {self._rows / elapsed:.1f} images/s" if elapsed > 0 else ""
        return (
            f"catalogue: filling older parts' series columns: parts {self._seen:,}/"
            f"{self._parts:,}, {self._rows:,} images filled{rate}"
        )
