"""The storage port: what a store can do, and one listed object.

Nodes use the storage service only; they never touch boto3 or the file system themselves.
Besides plain reads and writes the port has conditional operations (create only if absent,
replace or delete only if unchanged since read, judged by a token: the ETag on S3) for the run
lease (`warehouse.core.lease`), and `Storage.check_store` to check up front that a store
exists before anything reads or writes it. A release pins objects (`Storage.list_versions`,
`Storage.read_pinned`): by S3 VersionId and ETag where the bucket keeps versions; a local
store keeps none.
"""

from __future__ import annotations

import builtins
import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from warehouse.core.errors import StorageError

#: Listed objects handed from a listing thread to the consumer at a time.
_LIST_CHUNK = 256
#: Chunks of listed objects held between the listing threads and the consumer (memory bound).
_LIST_QUEUE_SIZE = 4096 // _LIST_CHUNK


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: key, size in bytes, last modification time (UTC).

    ``link`` is true for a symbolic link in a local store (a file or a folder, never followed):
    it is listed so that it can be reported, and is not an object to read, file or trust.
    Its size and time are the link's own.

    ``too_deep`` is true for a folder of a local store at `keys.MAX_KEY_DEPTH` levels: what it
    holds is deeper than any key may be, so it is not listed; the folder is, so that it can be
    reported. Its key ends with ``/``, its size is 0 and its time is the folder's own.

    ``etag`` is the object's ETag as an S3 listing gives it (quotes included), None where the
    store gives none (a local store).
    """

    key: str
    size: int
    last_modified: dt.datetime
    link: bool = False
    too_deep: bool = False
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """The newest version of one listed object, as a release pins it.

    ``version_id`` is S3's VersionId (None when the object has none: a bucket that never kept
    versions, an object written before versioning was turned on, or a local store); ``etag``
    is S3's ETag without its quotes (None on a local store).
    """

    key: str
    size: int
    etag: str | None = None
    version_id: str | None = None


class Storage:
    """The storage port. Subclasses implement the primitive operations."""

    #: URL-like name for messages (``s3://bucket`` or ``file:///path``).
    url: str = ""
    #: Whether writes are only pretended (a dry run): no lease is taken then.
    read_only: bool = False

    def check_store(self) -> None:
        """Check that the store exists and can be used; call it before reading or writing.

        One request on S3 (HeadBucket), one ``open`` locally.

        Raises
        ------
        StoreUnavailable
            If the bucket or directory does not exist (the message says how to create it) or
            cannot be used.
        """
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, in key order, streaming."""
        raise NotImplementedError

    def list_after(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """Yield the objects under ``prefix`` whose keys sort after ``start_after`` (all of
        them for None), in key order: what a run reads of a folder whose keys grow in time
        order (catalogue parts), without listing the old ones again where the store can
        start there (S3's ``StartAfter``).
        """
        for info in self.list(prefix):
            if start_after is None or info.key > start_after:
                yield info

    def list_folders(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        """One level below ``prefix`` (which ends with ``/``): sub-folder prefixes and objects."""
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        """Return an object's content. Raises `ObjectNotFound` if it does not exist."""
        raise NotImplementedError

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``start`` to ``end`` (exclusive) of an object; fewer at the end of it."""
        raise NotImplementedError

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Yield the newest version of each object under ``prefix`` (deleted ones left out).

        On S3 one ListObjectVersions request per thousand versions, each with its VersionId
        and ETag; a store without versions yields its listing (no VersionId, no ETag).
        """
        for info in self.list(prefix):
            if not (info.link or info.too_deep):
                yield ObjectVersion(info.key, info.size)

    def read_pinned(
        self,
        key: str,
        start: int,
        end: int,
        *,
        version_id: str | None = None,
        etag: str | None = None,
    ) -> bytes:
        """Return bytes ``start`` to ``end`` of one version of an object: version
        ``version_id`` when given, and only while its ETag is ``etag`` when given.

        A store without versions refuses a ``version_id``, and cannot compare ETags: it
        reads the object as it is (the caller checks its content).

        Raises
        ------
        ObjectNotFound
            If the object or that version does not exist.
        PreconditionFailed
            If its ETag is not ``etag``.
        StorageError
            If the store keeps no versions and ``version_id`` is given.
        """
        if version_id is not None:
            raise StorageError(f"{self.url} keeps no versions: cannot read {key} by version")
        return self.read_range(key, start, end)

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        """Create or replace an object atomically: readers see the old or the new, never part."""
        raise NotImplementedError

    def content_digest(self, key: str) -> str | None:
        """Return the SHA-256 (hex) of an object's bytes where reading them costs no request.

        A local store reads the file; elsewhere None (on S3 the listing's ETag identifies the
        bytes instead, without a request).

        Raises
        ------
        ObjectNotFound, StorageError
            When it cannot be read.
        """
        return None

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        """Create or replace an object with the content of the local file ``path``,
        atomically, streaming it (a large file is never all in memory). By default it is read
        and written whole; the adapters stream it.
        """
        with open(path, "rb") as handle:
            self.write(key, handle.read(), content_type)

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        """Copy an object within the store (server-side on S3), atomically."""
        raise NotImplementedError

    def processed(self) -> Storage:
        """The processed store beside this one (``<bucket>-processed``)."""
        raise NotImplementedError

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        """Return an object's content and its token (the ETag on S3), for a conditional write.

        Raises
        ------
        ObjectNotFound
            If it does not exist.
        """
        raise NotImplementedError

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Create an object only if no object has its key, atomically; return its token.

        Of several callers racing for one key, exactly one succeeds.

        Raises
        ------
        PreconditionFailed
            If the object exists.
        """
        raise NotImplementedError

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        """Replace an object only if it is unchanged since ``token`` was read; return the new
        token. Of several callers holding the same token, exactly one succeeds.

        Raises
        ------
        PreconditionFailed
            If the object changed or no longer exists.
        """
        raise NotImplementedError

    def delete_if_match(self, key: str, token: str) -> None:
        """Delete an object only if it is unchanged since ``token`` was read.

        Raises
        ------
        PreconditionFailed
            If the object changed or no longer exists.
        """
        raise NotImplementedError

    def list_many(
        self, prefixes: Iterable[str], workers: int = 8, *, split: bool = True
    ) -> Iterator[ObjectInfo]:
        """List several prefixes in parallel, streaming, in no particular order.

        Each prefix (a folder, ending with ``/``) is first split into its sub-folders, which are
        then listed concurrently by at most ``workers`` threads; memory stays bounded by a queue.
        Without ``split`` each prefix is listed whole (a thousand keys a request, however many
        sub-folders it has: a folder of many small sub-folders, such as the patients' clinical
        folders, costs one request a folder when split).

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
            if stop.is_set():  # the consumer has gone: the folders still queued are not listed
                return
            # (handed over in chunks: a queue hand-off costs more than a listed key)
            chunk: list[ObjectInfo] = []
            for info in self.list(prefix):
                chunk.append(info)
                if len(chunk) == _LIST_CHUNK:
                    if not put(chunk):
                        return
                    chunk = []
            if chunk:
                put(chunk)

        def produce() -> None:
            try:
                with ThreadPoolExecutor(max(1, workers), thread_name_prefix="list") as pool:
                    futures: list[Future[None]] = []
                    if not split:
                        futures = [pool.submit(list_prefix, p) for p in prefixes]
                        prefixes_split: Iterable[str] = ()
                    else:
                        prefixes_split = prefixes
                    for folders, objects in pool.map(self.list_folders, prefixes_split):
                        if objects and not put(list(objects)):
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
                yield from item
        finally:
            stop.set()
            producer.join(timeout=5)
