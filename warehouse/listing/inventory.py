"""The warehouse bucket's S3 Inventory: what a reconcile run reads instead of listing millions
of keys.

S3 delivers a daily report of the bucket (`WAREHOUSE_INVENTORY` names where) in this layout::

    <prefix><source bucket>/<config id>/<YYYY-MM-DDTHH-MMZ>/manifest.json
    <prefix><source bucket>/<config id>/<YYYY-MM-DDTHH-MMZ>/manifest.checksum
    <prefix><source bucket>/<config id>/data/<uuid>.parquet

A report is **complete** once its ``manifest.checksum`` (the MD5 of ``manifest.json``) is
there. `open_inventory` takes the newest complete report and checks its manifest: the checksum,
``fileFormat`` Parquet, a ``fileSchema`` with bucket, key, size and last_modified_date,
``sourceBucket`` the warehouse bucket, data files in the report's own ``data/`` folder.
`Inventory.records` then streams ``(key, size, last_modified)`` of the keys under given
prefixes as `ObjectInfo`, the type a store's listing yields: each data file is downloaded to a
temporary file in chunks, its size and MD5 checked against the manifest before any of its rows
is read, then read one batch of rows at a time (only the columns needed), so memory stays flat
whatever the size of the bucket. Parquet keys are plain text (only CSV inventories URL-encode
them); delete markers and non-current versions are skipped where the report has them.

An inventory is eventually consistent and a day old: it covers the bucket up to its
`Inventory.created` time. The caller lists what is newer (the upload folders dated on or
after `Inventory.day`). Whatever makes an inventory unusable (none delivered yet, a corrupt
manifest or data file, a schema without a needed column) raises `InventoryUnusable` with its
reason; the caller then lists the bucket as it does without an inventory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.core.errors import ExpectedError, ObjectNotFound
from warehouse.core.text import MAX_DETAIL_CHARS, bounded, escape_controls, quote
from warehouse.storage.base import ObjectInfo, Storage
from warehouse.storage.files import ranged_chunks
from warehouse.storage.url import location_from_url

#: The inventory configuration the CloudFormation template sets on the warehouse bucket; used
#: when the destination holds several configurations of the bucket.
INVENTORY_CONFIG_ID = "reconcile-parquet-inventory"
#: The largest ``manifest.json`` read: a manifest lists a few hundred bytes per data file.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: Bytes of one ranged read when a data file is downloaded.
DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024
#: Rows turned into Python objects at once: what bounds the memory of `Inventory.records`.
BATCH_ROWS = 8192

MANIFEST = "manifest.json"
CHECKSUM = "manifest.checksum"
#: The columns of the report that are read (their names in a Parquet inventory).
BUCKET, KEY, SIZE, MODIFIED = "bucket", "key", "size", "last_modified_date"
IS_LATEST, IS_DELETE_MARKER = "is_latest", "is_delete_marker"
_NEEDED = (BUCKET, KEY, SIZE, MODIFIED)
_NEEDED_TEXT = "Bucket, Key, Size and LastModifiedDate (bucket, key, size, last_modified_date)"

_DELIVERY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}-[0-9]{2}Z")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_MILLISECONDS = re.compile(r"[0-9]{1,15}")
# A field of a Parquet message type: ``required binary key (UTF8);``.
_SCHEMA_FIELD = re.compile(r"\b(?:required|optional|repeated)\s+\w+\s+(\w+)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_FOLDERS_NAMED = 5


class InventoryUnusable(ExpectedError):
    """The inventory cannot be used (none delivered yet, or one that is incomplete, corrupt or
    of another kind): a reconcile lists the bucket instead.

    Attributes
    ----------
    where : str
        The report or file concerned, as a URL (control characters escaped).
    reason : str
        Why, in a few words: values from the files quoted, control characters escaped, at
        most `MAX_DETAIL_CHARS` characters as the whole message.
    """

    def __init__(self, where: str, reason: str):
        # A corrupt file's text, or a library's message about it, may hold any character.
        where, reason = escape_controls(where), escape_controls(reason)
        super().__init__(bounded(f"inventory {where} is unusable: {reason}", MAX_DETAIL_CHARS))
        self.where = where
        self.reason = bounded(reason, MAX_DETAIL_CHARS)


@dataclass(frozen=True)
class InventoryFile:
    """One data file of a report, as its manifest lists it."""

    key: str
    size: int
    md5: str


@dataclass(frozen=True)
class Inventory:
    """One complete inventory report whose manifest was checked.

    Attributes
    ----------
    storage : Storage
        The store the report was delivered to.
    folder : str
        ``<prefix><source bucket>/<config id>/``: the report's configuration folder.
    manifest_key : str
        The key of its ``manifest.json``.
    source_bucket : str
        The inventoried bucket (the warehouse bucket).
    created_ms : int
        ``creationTimestamp``: when S3 began scanning the bucket, in milliseconds since the
        epoch.
    files : tuple of InventoryFile
        Its data files.
    """

    storage: Storage
    folder: str
    manifest_key: str
    source_bucket: str
    created_ms: int
    files: tuple[InventoryFile, ...]

    @property
    def created(self) -> dt.datetime:
        """`created_ms` as a UTC datetime: objects modified after it may be missing."""
        return _EPOCH + dt.timedelta(milliseconds=self.created_ms)

    @property
    def day(self) -> str:
        """The UTC day of `created` (``YYYY-MM-DD``): upload folders dated on or after it
        may hold objects the report does not, and are listed.
        """
        return self.created.date().isoformat()

    def records(self, prefixes: Iterable[str]) -> Iterator[ObjectInfo]:
        """Yield the current objects whose keys start with one of ``prefixes``, streaming.

        Each data file is downloaded to a temporary file (in `DOWNLOAD_CHUNK_BYTES` ranged
        reads), checked against the manifest (size, MD5), then read `BATCH_ROWS` rows at a
        time; one call reads every data file once, so pass every prefix to one call.

        Parameters
        ----------
        prefixes : iterable of str
            Key prefixes (``"raw-a/"``, ``"training/"``); a key is yielded when it starts with
            any of them (``""`` matches every key). None given: nothing is yielded.

        Yields
        ------
        ObjectInfo
            ``key`` (plain text, as the bucket names it), ``size`` and ``last_modified`` (UTC,
            whole seconds as an S3 listing gives them), in the report's order, not key order.
            Delete markers and non-current versions are skipped.

        Raises
        ------
        InventoryUnusable
            When a data file is missing, differs from the manifest (size, MD5), is not
            Parquet, lacks a needed column or holds a row of another bucket or without a
            value; rows of the files before it have been yielded by then.
        StorageError
            When a read fails.
        """
        if isinstance(prefixes, str):
            raise TypeError("records() takes a collection of prefixes, not one string")
        wanted = _by_length(prefixes)
        if not wanted:
            return
        for file in self.files:
            where = f"{self.storage.url}/{self.data_key(file)}"
            with tempfile.TemporaryDirectory(prefix="warehouse-inventory-") as folder:
                path = os.path.join(folder, "data.parquet")
                _download(self.storage, self.data_key(file), file, path, where)
                yield from _read_records(path, self.source_bucket, wanted, where)

    def data_key(self, file: InventoryFile) -> str:
        """Where a data file is read: in this report's ``data/`` folder, whatever the
        destination prefix its manifest names (a report copied elsewhere stays readable).
        """
        return f"{self.folder}data/{file.key.rpartition('/')[2]}"


def bucket_name(storage: Storage) -> str:
    """The name an inventory gives ``storage`` as its source bucket: an S3 bucket's name, a
    local store's directory name (a wrapped store's inner store's).
    """
    while hasattr(storage, "inner"):
        storage = storage.inner
    name = getattr(storage, "bucket", None)
    if isinstance(name, str):
        return name
    root = getattr(storage, "root", None)
    if isinstance(root, os.PathLike):
        return os.path.basename(os.fspath(root))
    raise TypeError(f"no bucket name for {storage.url}")


def open_inventory(url: str, bucket: str, *, workers: int = 8) -> Inventory:
    """The newest complete inventory of ``bucket`` delivered at ``url`` (the setting
    ``WAREHOUSE_INVENTORY``), its manifest checked.

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix`` (the destination bucket and prefix of the inventory
        configuration) or ``file://path`` (a local directory laid out like that prefix).
    bucket : str
        The inventoried bucket (`bucket_name` of the warehouse store).
    workers : int
        Size of the S3 client's connection pool.

    Raises
    ------
    InventoryUnusable
        When no complete report exists or the newest one's manifest is unusable.
    StorageError
        When ``url`` names no location or a read fails.
    """
    storage, prefix = location_from_url(url, workers=workers)
    return find_inventory(storage, prefix, bucket)


def find_inventory(storage: Storage, prefix: str, bucket: str) -> Inventory:
    """`open_inventory` in an opened store: the newest complete report of ``bucket`` under
    ``prefix`` (``""`` or ending with ``/``).

    A report without ``manifest.checksum`` is still being delivered: the newest report that
    has one is taken, and a problem with it is raised, never hidden by an older one.
    """
    folder = _configuration_folder(storage, f"{prefix}{bucket}/")
    deliveries, _ = storage.list_folders(folder)
    names = (d[len(folder) :].rstrip("/") for d in deliveries)
    for name in sorted((n for n in names if _DELIVERY.fullmatch(n)), reverse=True):
        try:
            checksum = storage.read_range(f"{folder}{name}/{CHECKSUM}", 0, 256)
        except ObjectNotFound:
            continue  # not complete yet
        manifest_key = f"{folder}{name}/{MANIFEST}"
        where = f"{storage.url}/{manifest_key}"
        try:
            data = storage.read_range(manifest_key, 0, MAX_MANIFEST_BYTES + 1)
        except ObjectNotFound:
            raise InventoryUnusable(
                where, f"the report has a {CHECKSUM} but no {MANIFEST}"
            ) from None
        return _parse_manifest(storage, folder, manifest_key, data, checksum, bucket)
    raise InventoryUnusable(
        f"{storage.url}/{folder}",
        "no complete report has been delivered (the first arrives within 48 hours of the "
        "inventory's configuration, then one a day)",
    )


def _configuration_folder(storage: Storage, bucket_folder: str) -> str:
    """``<prefix><bucket>/<config id>/``: the only configuration there, else the template's."""
    configurations, _ = storage.list_folders(bucket_folder)
    if len(configurations) == 1:
        return configurations[0]
    ours = f"{bucket_folder}{INVENTORY_CONFIG_ID}/"
    if ours in configurations:
        return ours
    if not configurations:
        reason = "no inventory of this bucket has been delivered there"
    else:
        names = [quote(c[len(bucket_folder) :].rstrip("/")) for c in configurations]
        more = ", ..." if len(names) > _FOLDERS_NAMED else ""
        reason = (
            f"it holds {len(names)} inventory configurations ({', '.join(names[:_FOLDERS_NAMED])}"
            f"{more}) and none is {INVENTORY_CONFIG_ID}: give the prefix of one alone"
        )
    raise InventoryUnusable(f"{storage.url}/{bucket_folder}", reason)


def _parse_manifest(
    storage: Storage, folder: str, key: str, data: bytes, checksum: bytes, bucket: str
) -> Inventory:
    """Check a report's manifest against its checksum and what a reconcile needs."""
    where = f"{storage.url}/{key}"

    def unusable(reason: str) -> InventoryUnusable:
        return InventoryUnusable(where, reason)

    if len(data) > MAX_MANIFEST_BYTES:
        raise unusable(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    expected = checksum.decode("ascii", "replace").strip()
    if not _MD5.fullmatch(expected):
        raise unusable(f"{CHECKSUM} is not an MD5 digest: {quote(expected)}")
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != expected.lower():
        raise unusable(f"{MANIFEST} has MD5 {actual}, {CHECKSUM} says {expected.lower()}")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise unusable(f"{MANIFEST} is not JSON ({_said(exc)})") from None
    if not isinstance(manifest, dict):
        raise unusable(f"{MANIFEST} is not a JSON object")
    source = manifest.get("sourceBucket")
    if source != bucket:
        raise unusable(f"its sourceBucket is {quote(source)}, not {quote(bucket)}")
    file_format = manifest.get("fileFormat")
    if file_format != "Parquet":
        raise unusable(f"its fileFormat is {quote(file_format)}, not Parquet")
    schema = manifest.get("fileSchema")
    fields = set(_SCHEMA_FIELD.findall(schema)) if isinstance(schema, str) else set()
    missing = [name for name in _NEEDED if name not in fields]
    if missing:
        raise unusable(
            f"its fileSchema lacks {', '.join(missing)} (a reconcile needs {_NEEDED_TEXT})"
        )
    created = manifest.get("creationTimestamp")
    text = str(created) if isinstance(created, (str, int)) else ""
    if isinstance(created, bool) or not _MILLISECONDS.fullmatch(text):
        raise unusable(f"its creationTimestamp {quote(created)} is not milliseconds")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        # The warehouse bucket always holds config.json: an empty list is a broken report.
        raise unusable("it lists no data file")
    # <source bucket>/<config id>/data/: where S3 puts a report's data files.
    tail = "/".join(folder.rstrip("/").split("/")[-2:]) + "/data/"
    parsed = tuple(_data_file(item, tail, unusable) for item in files)
    return Inventory(storage, folder, key, bucket, int(text), parsed)


def _data_file(
    item: object, tail: str, unusable: Callable[[str], InventoryUnusable]
) -> InventoryFile:
    """One entry of the manifest's ``files``, checked: a key in the report's ``data/``
    folder, a size, an MD5.
    """
    if not isinstance(item, dict):
        raise unusable(f"an entry of its files is not an object: {quote(item)}")
    key, size, md5 = item.get("key"), item.get("size"), item.get("MD5checksum")
    if not isinstance(key, str):
        raise unusable(f"a data file has no key: {quote(item)}")
    head, _, name = key.rpartition("/")
    inside = head + "/" == tail or (head + "/").endswith("/" + tail)
    if not inside or name in ("", ".", ".."):
        raise unusable(f"data file {quote(key)} is not in the report's folder {quote(tail)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise unusable(f"data file {quote(key)} has no size: {quote(size)}")
    if not isinstance(md5, str) or not _MD5.fullmatch(md5):
        raise unusable(f"data file {quote(key)} has no MD5checksum: {quote(md5)}")
    return InventoryFile(key, size, md5.lower())


def _download(storage: Storage, key: str, file: InventoryFile, path: str, where: str) -> None:
    """Copy a data file to ``path`` in ranged reads, checking its size and MD5 as it comes."""
    digest = hashlib.md5(usedforsecurity=False)
    offset = 0
    # (one byte more than the manifest says: a longer file shows)
    chunks = ranged_chunks(storage, key, file.size + 1, DOWNLOAD_CHUNK_BYTES)
    with open(path, "wb") as out:
        try:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                offset += len(chunk)
        except ObjectNotFound:
            raise InventoryUnusable(where, "the data file does not exist") from None
    if offset != file.size:
        size = f"{offset}" if offset <= file.size else f"more than {file.size}"
        raise InventoryUnusable(where, f"the data file has {size} bytes, the manifest {file.size}")
    if digest.hexdigest() != file.md5:
        raise InventoryUnusable(
            where, f"the data file has MD5 {digest.hexdigest()}, the manifest {file.md5}"
        )


#: Prefixes grouped by their length in UTF-8 bytes: ``(length, the prefixes as binary)``.
_Prefixes = tuple[tuple[int, pa.Array], ...]


def _by_length(prefixes: Iterable[str]) -> _Prefixes:
    """Group ``prefixes`` by their length in UTF-8 bytes (each once), shortest first."""
    groups: dict[int, set[bytes]] = {}
    for prefix in prefixes:
        encoded = prefix.encode("utf-8")
        groups.setdefault(len(encoded), set()).add(encoded)
    return tuple((n, pa.array(sorted(values), pa.binary())) for n, values in sorted(groups.items()))


def _starts_with_any(keys: pa.Array, prefixes: _Prefixes) -> pa.Array:
    """Tell which keys start with one of ``prefixes``.

    A key's first bytes, as many as a group's length, are looked up in that group's set: a
    pass over the keys for each length of prefix, not for each prefix (a reconcile passes
    every closed upload folder, thousands of them; UTF-8 makes a text prefix a byte prefix).
    """
    large = pa.types.is_large_string(keys.type)
    raw = keys.cast(pa.large_binary() if large else pa.binary())
    keep = None
    for length, values in prefixes:
        head = pc.binary_slice(raw, 0, length)
        found = pc.is_in(head, value_set=values.cast(raw.type) if large else values)
        keep = found if keep is None else pc.or_(keep, found)
    return keep


def _read_records(path: str, bucket: str, prefixes: _Prefixes, where: str) -> Iterator[ObjectInfo]:
    """The rows of a downloaded data file under ``prefixes``, one batch at a time."""
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise InventoryUnusable(where, f"not a Parquet file ({_said(exc)})") from None
    _check_schema(schema, where)
    columns = [*_NEEDED, *(n for n in (IS_LATEST, IS_DELETE_MARKER) if n in schema.names)]
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise InventoryUnusable(where, f"unreadable rows ({_said(exc)})") from None
        if batch is None:
            return
        yield from _batch_records(batch, bucket, prefixes, where)


def _check_schema(schema: pa.Schema, where: str) -> None:
    """Refuse a data file without the columns a reconcile reads, or with others' types."""
    kinds = {
        BUCKET: (pa.types.is_string, pa.types.is_large_string),
        KEY: (pa.types.is_string, pa.types.is_large_string),
        SIZE: (pa.types.is_integer,),
        MODIFIED: (pa.types.is_timestamp, pa.types.is_int64),
        IS_LATEST: (pa.types.is_boolean,),
        IS_DELETE_MARKER: (pa.types.is_boolean,),
    }
    for name, accepted in kinds.items():
        found = schema.get_all_field_indices(name)
        if len(found) > 1:
            raise InventoryUnusable(where, f"the data file has {len(found)} columns {name}")
        if not found:
            if name in _NEEDED:
                raise InventoryUnusable(where, f"the data file has no column {name}")
            continue
        kind = schema.field(found[0]).type
        if not any(test(kind) for test in accepted):
            raise InventoryUnusable(where, f"column {name} of the data file is {kind}")


def _batch_records(
    batch: pa.RecordBatch, bucket: str, prefixes: _Prefixes, where: str
) -> Iterator[ObjectInfo]:
    """The rows of one batch that are current objects under ``prefixes``, as `ObjectInfo`."""
    buckets = batch.column(BUCKET)
    if buckets.null_count or not pc.all(pc.equal(buckets, bucket)).as_py():
        raise InventoryUnusable(where, f"a row is not of bucket {quote(bucket)}")
    keys = batch.column(KEY)
    if keys.null_count:
        raise InventoryUnusable(where, "a row has no key")
    keep = _starts_with_any(keys, prefixes)
    names = batch.schema.names
    if IS_DELETE_MARKER in names:
        keep = pc.and_(keep, pc.invert(pc.fill_null(batch.column(IS_DELETE_MARKER), False)))
    if IS_LATEST in names:
        keep = pc.and_(keep, pc.fill_null(batch.column(IS_LATEST), True))
    rows = batch.filter(keep)
    if not rows.num_rows:
        return
    sizes, times = rows.column(SIZE), rows.column(MODIFIED)
    if sizes.null_count or times.null_count:
        raise InventoryUnusable(where, "an object's row has no size or no last_modified_date")
    seconds = _whole_seconds(times)
    for key, size, second in zip(
        rows.column(KEY).to_pylist(), sizes.to_pylist(), seconds, strict=True
    ):
        if size < 0:
            raise InventoryUnusable(where, f"object {quote(key)} has size {size}")
        try:
            modified = _EPOCH + dt.timedelta(seconds=second)
        except OverflowError:
            raise InventoryUnusable(
                where, f"object {quote(key)} has last_modified_date {second} s"
            ) from None
        yield ObjectInfo(key, size, modified)


def _said(exc: Exception) -> str:
    """What a library said about a file, in at most 200 characters."""
    return bounded(str(exc).strip(), 200)


def _whole_seconds(times: pa.Array) -> list[int]:
    """Times since the epoch in whole seconds (floored): a timestamp in any unit (UTC, as
    S3 writes them), or int64 milliseconds.
    """
    kind = times.type
    per_second = 1000
    if pa.types.is_timestamp(kind):
        per_second = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}[kind.unit]
        times = times.cast(pa.int64())
    return [value // per_second for value in times.to_pylist()]
