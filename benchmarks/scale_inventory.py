"""The S3 Inventory of a scale benchmark warehouse: what a reconcile reads instead of listing.

The real stack has S3 deliver a daily Parquet inventory of the warehouse bucket
(``reconcile-parquet-inventory``, docs/operations.md "S3 Inventory for reconcile runs"); a
reconcile run given it (``WAREHOUSE_INVENTORY``) reads the upload folders dated before the
inventory's day minus one, and the warehouse side, from it instead of listing them. This module
writes such a report for a benchmark warehouse, in the layout S3 delivers under a destination
prefix (here a local directory, ``file://``)::

    <directory>/<bucket>/reconcile-parquet-inventory/data/<uuid>.parquet
    <directory>/<bucket>/reconcile-parquet-inventory/<YYYY-MM-DDTHH-MMZ>/manifest.json
    <directory>/<bucket>/reconcile-parquet-inventory/<YYYY-MM-DDTHH-MMZ>/manifest.checksum

Its rows are the objects of the real part (a walk of its directory: a few thousand files) and
the placeholders' (`benchmarks.scale_storage.GeneratedStorage.placeholder_objects`, the
generator of the placeholder listing), never a listing of the warehouse: written streamed, in
row groups of `ROW_GROUP_ROWS`, a new data file every `ROWS_PER_FILE` rows as S3 splits a large
report, so writing ten million rows holds one row group at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.listing.inventory import INVENTORY_CONFIG_ID
from warehouse.storage.base import ObjectInfo

#: Rows of one data file (S3 splits a report into files of about this many).
ROWS_PER_FILE = 1_000_000
#: Rows of one row group: what the writer holds at once.
ROW_GROUP_ROWS = 100_000
#: The destination prefix the manifest names its data files under (the stack's).
DESTINATION_PREFIX = "reconcile/"
#: The columns of a current-versions report with Size and LastModifiedDate, in S3's types.
SCHEMA = pa.schema(
    [
        pa.field("bucket", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("last_modified_date", pa.timestamp("ms", tz="UTC")),
    ]
)
#: The same, as the manifest's ``fileSchema`` states it.
SCHEMA_TEXT = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
    "optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); }"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)
_HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class WrittenInventory:
    """A report `write_inventory` delivered.

    Attributes
    ----------
    url : str
        What ``WAREHOUSE_INVENTORY`` names it by (``file://`` the directory).
    manifest : Path
        Its ``manifest.json``.
    created : datetime.datetime
        Its ``creationTimestamp``.
    files : int
        Data files.
    rows : int
        Objects listed.
    size : int
        Bytes of its data files.
    """

    url: str
    manifest: Path
    created: dt.datetime
    files: int
    rows: int
    size: int

    def figures(self) -> dict:
        """Return what the benchmark's JSON keeps of it."""
        return {
            "created": self.created.isoformat(),
            "files": self.files,
            "rows": self.rows,
            "bytes": self.size,
        }


def tree_objects(root: Path) -> Iterator[ObjectInfo]:
    """Yield the files of a local directory as objects: key, size, last-modified time.

    Symbolic links are left out (a bucket holds none); times are the files' own (as the local
    store lists them), in the order the walk finds them.
    """
    for folder, folders, names in os.walk(root):
        folders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            found = os.stat(path)
            key = Path(path).relative_to(root).as_posix()
            modified = dt.datetime.fromtimestamp(found.st_mtime, dt.UTC)
            yield ObjectInfo(key, found.st_size, modified)


def _milliseconds(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MILLISECOND


def _groups(objects: Iterable[ObjectInfo], rows: int) -> Iterator[list[ObjectInfo]]:
    """Yield ``objects`` in lists of ``rows`` (the last shorter)."""
    group: list[ObjectInfo] = []
    for info in objects:
        group.append(info)
        if len(group) >= rows:
            yield group
            group = []
    if group:
        yield group


def _table(bucket: str, group: list[ObjectInfo]) -> pa.Table:
    """Return one row group's table (times converted once for each distinct time)."""
    times: dict[dt.datetime, int] = {}
    stamps = []
    for info in group:
        when = info.last_modified
        if when not in times:
            times[when] = _milliseconds(when)
        stamps.append(times[when])
    columns = [
        pa.array([bucket] * len(group), pa.string()),
        pa.array([info.key for info in group], pa.string()),
        pa.array([info.size for info in group], pa.int64()),
        pa.array(stamps, pa.int64()).cast(SCHEMA.field("last_modified_date").type),
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_inventory(
    directory: Path,
    bucket: str,
    objects: Iterable[ObjectInfo],
    created: dt.datetime,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> WrittenInventory:
    """Deliver an S3 Inventory report of ``objects`` into ``directory``, as S3 does.

    The data files first, then ``manifest.json`` (each file's key, size and MD5), then
    ``manifest.checksum`` (the manifest's MD5: what makes the report complete).

    Parameters
    ----------
    directory : Path
        The destination (``file://`` it is the ``WAREHOUSE_INVENTORY`` of the report).
    bucket : str
        The inventoried bucket's name (the warehouse directory's name).
    objects : iterable of ObjectInfo
        Its objects, in any order, each once.
    created : datetime.datetime
        The report's ``creationTimestamp`` (timezone-aware), which names its folder.
    rows_per_file, row_group_rows : int
        Rows of a data file, and of one of its row groups.

    Returns
    -------
    WrittenInventory
        Where it is and what it holds.
    """
    folder = directory / bucket / INVENTORY_CONFIG_ID
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    files: list[dict] = []
    rows = 0
    writer: pq.ParquetWriter | None = None
    path: Path | None = None
    in_file = 0

    def close() -> None:
        nonlocal writer
        if writer is not None and path is not None:
            writer.close()
            key = f"{DESTINATION_PREFIX}{bucket}/{INVENTORY_CONFIG_ID}/data/{path.name}"
            size = path.stat().st_size
            files.append({"key": key, "size": size, "MD5checksum": _md5(path)})
        writer = None

    for group in _groups(objects, min(row_group_rows, rows_per_file)):
        while group:
            if writer is None:
                path = data / f"{uuid.uuid4()}.parquet"
                writer = pq.ParquetWriter(path, SCHEMA, compression="snappy")
                in_file = 0
            taken, group = group[: rows_per_file - in_file], group[rows_per_file - in_file :]
            writer.write_table(_table(bucket, taken))
            in_file += len(taken)
            rows += len(taken)
            if in_file >= rows_per_file:
                close()
    close()
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": f"arn:aws:s3:::{bucket}-inventory",
        "version": "2016-11-30",
        "creationTimestamp": str(_milliseconds(created)),
        "fileFormat": "Parquet",
        "fileSchema": SCHEMA_TEXT,
        "files": files,
    }
    body = json.dumps(manifest, indent=2).encode("utf-8")
    delivery = folder / created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H-%MZ")
    delivery.mkdir(parents=True, exist_ok=True)
    (delivery / "manifest.json").write_bytes(body)
    checksum = hashlib.md5(body, usedforsecurity=False).hexdigest()
    (delivery / "manifest.checksum").write_text(checksum + "\n", encoding="ascii")
    return WrittenInventory(
        url=f"file://{directory.resolve()}",  # (as the setting takes it: no %-escapes)
        manifest=delivery / "manifest.json",
        created=created,
        files=len(files),
        rows=rows,
        size=sum(f["size"] for f in files),
    )
