"""Storage: one small port, two adapters (S3 through boto3, a local directory laid out like a
bucket), and a dry-run wrapper that reads but never writes.

Nodes use the storage service only; they never touch boto3 or the file system themselves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from warehouse.components.errors import ExpectedError
from warehouse.components.report import Reason

logger = logging.getLogger(__name__)

#: CopyObject's limit; larger objects are copied with a multipart (UploadPartCopy) copy.
S3_COPY_LIMIT = 5 * 1024**3
_TEMP_PREFIX = ".tmp-"
_LIST_QUEUE_SIZE = 4096


class StorageError(ExpectedError):
    """A storage request failed (after the SDK's retries); the message says which and why."""

    reason = Reason.READ_FAILED  # an input that could not be read; writes report their own


class ObjectNotFound(StorageError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: key, size in bytes, last modification time (UTC)."""

    key: str
    size: int
    last_modified: dt.datetime


class Storage:
    """The storage port. Subclasses implement the five primitive operations."""

    #: URL-like name for messages (``s3://bucket`` or ``file:///path``).
    url: str = ""

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order, streaming."""
        raise NotImplementedError

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level below ``prefix`` (which ends with ``/``): sub-folder prefixes and objects."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        """Return an object's content. Raises `ObjectNotFound` if it does not exist."""
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``start`` to ``end`` (exclusive) of an object; fewer at the end of it."""
        raise NotImplementedError

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        """Create or replace an object atomically: readers see the old or the new, never part."""
        raise NotImplementedError

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        """Copy an object within the store (server-side on S3), atomically."""
        raise NotImplementedError

    def processed(self) -> Storage:
        """The processed store beside this one (``<bucket>-processed``)."""
        raise NotImplementedError

    def list_many(self, prefixes: Iterable[str], workers: int = 8) -> Iterator[ObjectInfo]:
        """List several prefixes in parallel, streaming, in no particular order.

        Each prefix (a folder, ending with ``/``) is first split into its sub-folders, which are
        then listed concurrently by at most ``workers`` threads; memory stays bounded by a queue.

        Raises
        ------
        StorageError
            If any listing fails.
        """
        results: queue.Queue = queue.Queue(maxsize=_LIST_QUEUE_SIZE)
        done = object()
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def list_prefix(prefix: str) -> None:
            for info in self.list(prefix):
                if not put(info):
                    return

        def produce() -> None:
            try:
                with ThreadPoolExecutor(max(1, workers), thread_name_prefix="list") as pool:
                    futures = []
                    for folders, objects in pool.map(self.list_folders, prefixes):
                        for info in objects:
                            if not put(info):
                                return
                        futures.extend(pool.submit(list_prefix, f) for f in folders)
                    for future in futures:
                        future.result()
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
                put(exc)
            finally:
                put(done)

        producer = threading.Thread(target=produce, name="list-many", daemon=True)
        producer.start()
        try:
            while True:
                item = results.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            producer.join(timeout=5)


def _key_order(entry: os.DirEntry) -> str:
    """Sort a directory's entries in S3 key order: a folder's keys continue with ``/``."""
    return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name


class LocalStorage(Storage):
    """A local directory laid out like a bucket: key ``a/b/c`` is file ``<root>/a/b/c``.

    Writes go to a temporary file in the target folder, then are renamed into place, so a killed
    run never leaves a partial object; leftover temporary files are never listed.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self._folders: set[Path] = set()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise StorageError(f"invalid key {key!r}")
        return self.root.joinpath(*parts)

    def _info(self, key: str, stat: os.stat_result) -> ObjectInfo:
        modified = dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC)
        return ObjectInfo(key, stat.st_size, modified)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"{self.url} is not a directory")

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._check_root()
        folder, _, _ = prefix.rpartition("/")
        start = self._path(folder) if folder else self.root  # no ".." out of the root
        base = folder + "/" if folder else ""
        if not start.is_dir():
            return
        yield from self._walk(start, base, prefix)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=_key_order)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX):
                _remove_if_abandoned(entry)
                continue
            key = base + entry.name
            if entry.is_dir(follow_symlinks=False):
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(entry.path), key + "/", prefix)
            elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                yield self._info(key, entry.stat(follow_symlinks=False))

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        self._check_root()
        directory = self._path(prefix.strip("/")) if prefix.strip("/") else self.root
        folders, objects = [], []
        if not directory.is_dir():
            return folders, objects
        for entry in sorted(os.scandir(directory), key=_key_order):
            if entry.name.startswith(_TEMP_PREFIX):
                _remove_if_abandoned(entry)
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(f"{prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                objects.append(self._info(prefix + entry.name, entry.stat(follow_symlinks=False)))
        return folders, objects

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url}/{key} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.url}/{key}: {exc.strerror}") from None

    def read_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                handle.seek(start)
                return handle.read(max(0, end - start))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url}/{key} does not exist") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.url}/{key}: {exc.strerror}") from None

    def _replace_atomically(self, key: str, produce) -> None:
        """Have ``produce(temporary path)`` write the content, then rename it into place."""
        target = self._path(key)
        temp = target.with_name(f"{_TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            self._make_folder(target.parent)
            try:
                produce(temp)
            except FileNotFoundError:
                if not target.parent.is_dir():  # removed since it was made: make it again
                    self._folders.discard(target.parent)
                    self._make_folder(target.parent)
                    produce(temp)
                else:
                    raise
            os.replace(temp, target)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                temp.unlink()  # never made when its folder could not be
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {self.url}/{key}: {exc.strerror}") from None
            raise

    def _make_folder(self, folder: Path) -> None:
        # One mkdir per folder and run, not one per write.
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._replace_atomically(key, lambda temp: temp.write_bytes(data))

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        source = self._path(source_key)
        if not source.is_file():
            raise ObjectNotFound(f"{self.url}/{source_key} does not exist")
        # copyfile uses the kernel's copy (sendfile / copy_file_range), not Python buffers.
        self._replace_atomically(target_key, lambda temp: shutil.copyfile(source, temp))

    def processed(self) -> LocalStorage:
        return LocalStorage(self.root.with_name(self.root.name + "-processed"))


def _remove_if_abandoned(entry: os.DirEntry) -> None:
    """Delete a temporary file whose writer process is gone (a run killed mid-write)."""
    pid_text = entry.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
    if not pid_text.isdigit():
        return
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        Path(entry.path).unlink(missing_ok=True)
        logger.info("removed %s, left by a run that was killed while writing", entry.path)
    except PermissionError:
        return  # another user's live process


class S3Storage(Storage):
    """An S3 bucket (or any S3-compatible endpoint) through one thread-safe boto3 client.

    The client uses botocore's adaptive retries and a connection pool sized to the workers;
    ``AWS_ENDPOINT_URL`` and the other standard AWS variables are honoured by botocore.
    """

    def __init__(self, bucket: str, *, client=None, workers: int = 32, copy_limit=S3_COPY_LIMIT):
        self.bucket = bucket
        self.url = f"s3://{bucket}"
        self.workers = workers
        self.copy_limit = copy_limit
        self.client = client or make_s3_client(workers)

    def _error(self, exc: Exception, action: str, key: str = "") -> StorageError:
        from botocore.exceptions import ClientError

        where = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(f"{where} does not exist")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket} does not exist")
            return StorageError(f"cannot {action} {where}: {code} {error.get('Message', '')}")
        return StorageError(f"cannot {action} {where}: {exc}")

    def _paginate(self, **kwargs) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "list", kwargs.get("Prefix", "")) from None

    @staticmethod
    def _info(item: dict) -> ObjectInfo:
        return ObjectInfo(item["Key"], int(item["Size"]), item["LastModified"])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for page in self._paginate(Prefix=prefix):
            for item in page.get("Contents", ()):
                yield self._info(item)

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        folders, objects = [], []
        for page in self._paginate(Prefix=prefix, Delimiter="/"):
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
            objects.extend(self._info(item) for item in page.get("Contents", ()))
        return folders, objects

    def read(self, key: str) -> bytes:
        return self._get(key)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._get(key, Range=f"bytes={start}-{end - 1}")

    def _get(self, key: str, **kwargs) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            return response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise self._error(exc, "read", key) from None
        except BotoCoreError as exc:
            raise self._error(exc, "read", key) from None

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "write", key) from None

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        source = {"Bucket": self.bucket, "Key": source_key}
        try:
            if size is not None and size <= self.copy_limit:
                # One server-side request; the size from the listing spares a HEAD.
                self.client.copy_object(Bucket=self.bucket, Key=target_key, CopySource=source)
            else:
                config = TransferConfig(
                    multipart_threshold=self.copy_limit,
                    multipart_chunksize=max(self.copy_limit // 8, 5 * 1024**2),
                    max_concurrency=4,
                )
                self.client.copy(source, self.bucket, target_key, Config=config)
        except (ClientError, BotoCoreError) as exc:
            error = self._error(exc, "copy to", target_key)
            if isinstance(error, ObjectNotFound):  # only the source has to exist
                error = ObjectNotFound(f"{self.url}/{source_key} does not exist")
            raise error from None

    def processed(self) -> S3Storage:
        return S3Storage(self.bucket + "-processed", client=self.client, workers=self.workers)


def make_s3_client(workers: int = 32):
    """A boto3 S3 client with adaptive retries and a connection pool for ``workers`` threads."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": 10},
        # Every pooled node (header reads, copies, metadata writes, clinical reads) may run
        # `workers` requests at once on the one shared client.
        max_pool_connections=4 * workers + 8,
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=config)


class DryRunStorage(Storage):
    """Reads from the wrapped store; logs each write or copy it would make instead of making it."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.intended_writes = 0
        self._lock = threading.Lock()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        return self.inner.list_folders(prefix)

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.read_range(key, start, end)

    def _intend(self, message: str) -> None:
        with self._lock:
            self.intended_writes += 1
        logger.info("DRY RUN: would %s", message)

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._intend(f"write {self.url}/{key} ({len(data)} bytes)")

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        self._intend(f"copy {self.url}/{source_key} to {self.url}/{target_key}")

    def processed(self) -> DryRunStorage:
        return DryRunStorage(self.inner.processed())


def storage_from_url(url: str, *, workers: int = 32, dry_run: bool = False) -> Storage:
    """Open the store that ``url`` names.

    Parameters
    ----------
    url : str
        ``name`` or ``s3://name`` (S3), ``file:///abs/path`` or ``file://relative/path``.
    workers : int
        Size of the worker pools that will share the S3 client's connection pool.
    dry_run : bool
        Wrap the store so that nothing is written.
    """
    text = url.strip()
    if text.startswith("file://"):
        path = text[len("file://") :]
        if not path:
            raise StorageError("file:// needs a path, e.g. file:///data/warehouse")
        store: Storage = LocalStorage(path)
    else:
        bucket = text[len("s3://") :] if text.startswith("s3://") else text
        bucket = bucket.rstrip("/")
        if not bucket or "/" in bucket or "://" in text and not text.startswith("s3://"):
            raise StorageError(f"{url!r} is not a bucket name, s3://name or file://path")
        store = S3Storage(bucket, workers=workers)
    return DryRunStorage(store) if dry_run else store
