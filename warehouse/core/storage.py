"""Storage: one small port, two adapters (S3 through boto3, a local directory laid out like a
bucket), and a dry-run wrapper that reads but never writes.

Nodes use the storage service only; they never touch boto3 or the file system themselves.

Besides plain reads and writes the port has conditional operations (create only if absent,
replace or delete only if unchanged since read, judged by a token: the ETag on S3) for the run
lease (`warehouse.core.lease`), and `Storage.check_store` to check up front that a store
exists before anything reads or writes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import queue
import re
import shlex
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from warehouse.core.errors import ExpectedError
from warehouse.core.keys import MAX_KEY_DEPTH, raw_prefix_of
from warehouse.core.report import Reason

logger = logging.getLogger(__name__)

#: CopyObject's limit; larger objects are copied with a multipart (UploadPartCopy) copy.
S3_COPY_LIMIT = 5 * 1024**3
#: How a local store's temporary files are named: the marker, the writer's pid and 32 random
#: hex digits. They are only ever written, looked for and removed where the product writes
#: (never under a ``raw-*`` prefix, where every name is an upload).
_TEMP_MARK = ".warehouse-partial-"
_TEMPORARY = re.compile(r"\.warehouse-partial-([1-9][0-9]{0,9})-[0-9a-f]{32}")
#: The form versions up to 0.2.0 gave them (``.tmp-<pid>-<12 hex digits>``): still removed
#: where the product writes, once their writer is gone.
_LEGACY_TEMPORARY = re.compile(r"\.tmp-([1-9][0-9]{0,9})-[0-9a-f]{12}")
#: The largest pid (``pid_t`` is a C int).
_MAX_PID = 2**31 - 1
_LIST_QUEUE_SIZE = 4096
#: Where the CloudFormation template is, for messages about a missing bucket.
_TEMPLATE = "infrastructure/templates/warehouse.yaml"


class StorageError(ExpectedError):
    """A storage request failed (after the SDK's retries); the message says which and why."""

    reason = Reason.READ_FAILED  # an input that could not be read; writes report their own


class ObjectNotFound(StorageError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreUnavailable(StorageError):
    """The bucket or directory a store names does not exist or cannot be used: a problem of the
    settings (nothing is read or written). The message says how to create it."""


class SymbolicLinkRefused(StorageError):
    """A read, write or copy in a local store would go through a symbolic link: refused, since a
    link can lead out of the bucket. ``link`` is the key of the link."""

    def __init__(self, message: str, link: str):
        super().__init__(message)
        self.link = link


class PreconditionFailed(StorageError):
    """A conditional write or delete found the object not as required: present when it had to
    be absent, or changed (or gone) since the token was read. HTTP 412 (or 409) on S3."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: key, size in bytes, last modification time (UTC).

    ``link`` is true for a symbolic link in a local store (a file or a folder, never followed):
    it is listed so that it can be reported, and is not an object to read, file or trust.
    Its size and time are the link's own.

    ``too_deep`` is true for a folder of a local store at `keys.MAX_KEY_DEPTH` levels: what it
    holds is deeper than any key may be, so it is not listed; the folder is, so that it can be
    reported. Its key ends with ``/``, its size is 0 and its time is the folder's own.
    """

    key: str
    size: int
    last_modified: dt.datetime
    link: bool = False
    too_deep: bool = False


class Storage:
    """The storage port. Subclasses implement the primitive operations."""

    #: URL-like name for messages (``s3://bucket`` or ``file:///path``).
    url: str = ""
    #: Whether writes are only pretended (a dry run): no lease is taken then.
    read_only: bool = False
    #: Seconds to which a listing's ``last_modified`` is exact (S3 lists whole seconds).
    time_resolution: float = 0.0

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
            if stop.is_set():  # the consumer has gone: the folders still queued are not listed
                return
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


#: A folder below the root: opened without following a link (a link fails with ENOTDIR).
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: An object: never through a link (ELOOP); O_NONBLOCK so that a FIFO cannot hang the run.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SENDFILE_CHUNK = 1 << 30


class _LinkFound(Exception):
    """Internal: a path component is a symbolic link (``key``, with its ``lstat``)."""

    def __init__(self, key: str, link_stat: os.stat_result):
        super().__init__(key)
        self.key = key
        self.stat = link_stat


def _content_token(data: bytes) -> str:
    """A local object's token: a digest of its content (as an S3 ETag is, for one-part PUTs)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class LocalStorage(Storage):
    """A local directory laid out like a bucket: key ``a/b/c`` is file ``<root>/a/b/c``.

    Writes go to a temporary file in the target folder, then are renamed into place, so a killed
    run never leaves a partial object; temporary files are never listed, and those a killed
    run left are removed when their folder is listed. The product never writes under a
    ``raw-*`` prefix, so there no name is taken for a temporary file and nothing is removed.
    Listings descend at most `keys.MAX_KEY_DEPTH` levels (``ObjectInfo.too_deep``).

    The root must be an existing directory other than ``/``; writes make the folders below it
    on demand, never the root itself. The root's own path may contain symbolic links (it is
    resolved once), but nothing below it is ever read, written or copied through one: every
    path is walked one folder at a time from the root with ``O_NOFOLLOW`` (``openat``), so a
    link swapped in at any moment is refused, not followed (`SymbolicLinkRefused`). Listings
    yield links as entries with ``link=True`` and never descend into them.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        if self.root == Path(self.root.anchor):
            raise StoreUnavailable(
                f"{self.url} is the file-system root: name a directory for the bucket, "
                "e.g. file:///data/warehouse"
            )

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or "\x00" in p for p in parts):
            raise StorageError(f"invalid key {key!r}")
        return parts

    @staticmethod
    def _info(
        key: str, entry_stat: os.stat_result, link: bool = False, too_deep: bool = False
    ) -> ObjectInfo:
        size = 0 if too_deep else entry_stat.st_size
        return ObjectInfo(key, size, _modified(entry_stat.st_mtime), link, too_deep)

    def _refusal(self, action: str, key: str, found: _LinkFound) -> SymbolicLinkRefused:
        return SymbolicLinkRefused(
            f"cannot {action} {self.url}/{key}: {self.url}/{found.key} is a symbolic link "
            "(links in a local store are never followed)",
            found.key,
        )

    # -- walking from the root, one folder at a time, never through a link

    def check_store(self) -> None:
        os.close(self._open_root())

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreUnavailable(
                f"{self.url} does not exist: a local store is an existing directory; "
                f"create it with `mkdir -p {shlex.quote(str(self.root))}`"
            ) from None
        except NotADirectoryError:
            raise StoreUnavailable(f"{self.url} is not a directory") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {self.url}: {exc.strerror}") from None

    @staticmethod
    def _raise_if_link(folder: int, name: str, key: str) -> None:
        """Raise `_LinkFound` if ``name`` in ``folder`` is a symbolic link (one ``lstat``)."""
        try:
            found = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(found.st_mode):
            raise _LinkFound(key, found)

    def _open_child(self, folder: int, name: str, key: str, create: bool) -> int:
        """Open sub-folder ``name`` of ``folder`` (making it if ``create``), never a link."""
        for attempt in (1, 2):
            try:
                return os.open(name, _FOLDER_FLAGS, dir_fd=folder)
            except FileNotFoundError:
                if not create or attempt == 2:
                    raise
            except NotADirectoryError:
                self._raise_if_link(folder, name, key)
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=folder)
        raise AssertionError("unreachable")

    def _open_folder(self, parts: list[str], create: bool = False) -> int:
        """The descriptor of the folder ``parts`` below the root (the caller closes it).

        Raises FileNotFoundError or NotADirectoryError if it is not there, `_LinkFound` if a
        component is a link, `StoreUnavailable` if the root is missing.
        """
        folder = self._open_root()
        try:
            for depth, name in enumerate(parts):
                child = self._open_child(folder, name, "/".join(parts[: depth + 1]), create)
                os.close(folder)
                folder = child
        except BaseException:
            os.close(folder)
            raise
        return folder

    @contextlib.contextmanager
    def _folder(self, parts: list[str], create: bool = False) -> Iterator[int]:
        folder = self._open_folder(parts, create)
        try:
            yield folder
        finally:
            os.close(folder)

    def _open_object(self, folder: int, name: str, key: str) -> int:
        """Open a regular file of ``folder`` for reading, never through a link."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._raise_if_link(folder, name, key)
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder")  # a folder is no object
            raise OSError(errno.EINVAL, "not a regular file")
        return fd

    # -- listing

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder, _, _ = prefix.rpartition("/")
        parts = self._parts(folder) if folder else []  # no ".." out of the root
        try:
            start = self._open_folder(parts)
        except (FileNotFoundError, NotADirectoryError):
            return
        except _LinkFound as found:  # the prefix lies in a linked folder: list the link only
            yield self._info(found.key, found.stat, link=True)
            return
        try:
            yield from self._walk(start, folder + "/" if folder else "", prefix)
        finally:
            os.close(start)

    def _walk(self, start: int, base: str, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the objects below folder ``start`` (key ``base``) whose keys start with
        ``prefix``, in key order.

        Depth first with a stack of open folders, never recursion: at most `MAX_KEY_DEPTH`
        levels are entered (and as many descriptors open), and a folder at that depth inside
        ``prefix`` is yielded itself (``too_deep``), not entered.
        """
        stack = [(start, base, iter(self._entries(start, base)))]
        try:
            while stack:
                directory, folder, entries = stack[-1]
                entry = next(entries, None)
                if entry is None:
                    stack.pop()
                    if directory != start:
                        os.close(directory)
                    continue
                key = folder + entry.name
                try:
                    if entry.is_symlink():
                        if key.startswith(prefix) or prefix.startswith(key + "/"):
                            yield self._info(key, entry.stat(follow_symlinks=False), link=True)
                    elif entry.is_dir(follow_symlinks=False):
                        inside = (key + "/").startswith(prefix)
                        if inside and key.count("/") + 1 >= MAX_KEY_DEPTH:
                            found = entry.stat(follow_symlinks=False)
                            yield self._info(key + "/", found, too_deep=True)
                        elif inside or prefix.startswith(key + "/"):
                            stack.append(self._enter(directory, entry.name, key))
                    elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                        yield self._info(key, entry.stat(follow_symlinks=False))
                except _LinkFound as found:  # replaced by a link since the folder was read
                    yield self._info(found.key, found.stat, link=True)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # removed or replaced since the folder was read
        finally:
            for directory, _, _ in stack:
                if directory != start:
                    os.close(directory)

    def _enter(self, directory: int, name: str, key: str) -> tuple:
        """Open sub-folder ``name`` and read its entries: a frame of `_walk`'s stack."""
        child = self._open_child(directory, name, key, create=False)
        try:
            return child, key + "/", iter(self._entries(child, key + "/"))
        except BaseException:
            os.close(child)
            raise

    def _entries(self, folder: int, base: str) -> list[os.DirEntry]:
        """The entries of ``folder`` (key ``base``) in key order.

        Where the product writes (anywhere but under a ``raw-*`` prefix) its temporary files
        are left out, and removed once their writer is gone. Under a raw prefix every name is
        an upload: all are kept, none is ever removed.
        """
        entries = sorted(os.scandir(folder), key=_key_order)
        if raw_prefix_of(base) is not None:
            return entries
        kept = []
        for entry in entries:
            writer = _temporary_writer(entry.name)
            if writer is None or not entry.is_file(follow_symlinks=False):
                kept.append(entry)
            else:
                _remove_if_abandoned(folder, entry.name, writer, self.url + "/" + base)
        return kept

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        parts = self._parts(prefix.strip("/")) if prefix.strip("/") else []
        folders: list[str] = []
        objects: list[ObjectInfo] = []
        try:
            directory = self._open_folder(parts)
        except (FileNotFoundError, NotADirectoryError):
            return folders, objects
        except _LinkFound as found:
            return folders, [self._info(found.key, found.stat, link=True)]
        try:
            for entry in self._entries(directory, prefix):
                key = prefix + entry.name
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_symlink():
                        objects.append(self._info(key, entry.stat(follow_symlinks=False), True))
                    elif entry.is_dir(follow_symlinks=False):
                        folders.append(key + "/")
                    elif entry.is_file(follow_symlinks=False):
                        objects.append(self._info(key, entry.stat(follow_symlinks=False)))
        finally:
            os.close(directory)
        return folders, objects

    # -- reading

    def _read_object(self, key: str, consume: Callable[[BinaryIO], bytes]) -> bytes:
        parts = self._parts(key)
        try:
            with self._folder(parts[:-1]) as folder:
                fd = self._open_object(folder, parts[-1], key)
            with open(fd, "rb") as handle:
                return consume(handle)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url}/{key} does not exist") from None
        except _LinkFound as found:
            raise self._refusal("read", key, found) from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.url}/{key}: {exc.strerror}") from None

    def read(self, key: str) -> bytes:
        return self._read_object(key, lambda handle: handle.read())

    def read_range(self, key: str, start: int, end: int) -> bytes:
        def ranged(handle: BinaryIO) -> bytes:
            handle.seek(start)
            return handle.read(max(0, end - start))

        return self._read_object(key, ranged)

    # -- writing

    @staticmethod
    def _write_temporary(folder: int, produce: Callable[[BinaryIO], object]) -> str:
        """Have ``produce(file)`` fill a new temporary file of ``folder``; return its name."""
        temp = f"{_TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex}"
        fd = os.open(temp, _CREATE_FLAGS, 0o666, dir_fd=folder)
        try:
            with open(fd, "wb") as handle:
                produce(handle)
        except BaseException:
            os.unlink(temp, dir_fd=folder)
            raise
        return temp

    def _replace_atomically(self, key: str, produce: Callable[[BinaryIO], object]) -> None:
        """Have ``produce(file)`` write the content, then rename it into place."""
        parts = self._parts(key)
        name = parts[-1]
        for attempt in (1, 2):
            try:
                with self._folder(parts[:-1], create=True) as folder:
                    self._raise_if_link(folder, name, key)
                    temp = self._write_temporary(folder, produce)
                    try:
                        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
                    except BaseException:
                        os.unlink(temp, dir_fd=folder)
                        raise
                return
            except FileNotFoundError as exc:
                if attempt == 2:  # else its folder was removed since it was opened: again
                    raise StorageError(f"cannot write {self.url}/{key}: {exc.strerror}") from None
            except _LinkFound as found:
                raise self._refusal("write", key, found) from None
            except OSError as exc:
                raise StorageError(f"cannot write {self.url}/{key}: {exc.strerror}") from None

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self._replace_atomically(key, lambda handle: handle.write(data))

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        parts = self._parts(source_key)
        self._parts(target_key)
        try:
            with self._folder(parts[:-1]) as folder:
                source = self._open_object(folder, parts[-1], source_key)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(f"{self.url}/{source_key} does not exist") from None
        except _LinkFound as found:
            raise self._refusal("copy", source_key, found) from None
        except OSError as exc:
            raise StorageError(f"cannot copy {self.url}/{source_key}: {exc.strerror}") from None
        try:
            self._replace_atomically(
                target_key, lambda handle: _copy_descriptor(source, handle.fileno())
            )
        finally:
            os.close(source)

    def processed(self) -> LocalStorage:
        return LocalStorage(self.root.with_name(self.root.name + "-processed"))

    # -- conditional operations (the run lease)

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        data = self.read(key)
        return data, _content_token(data)

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Complete in a temporary file first, then ``link()`` into place: ``link`` fails if
        the name exists (like ``O_CREAT|O_EXCL``), and nobody ever sees a half-written file."""
        parts = self._parts(key)
        try:
            with self._folder(parts[:-1], create=True) as folder:
                temp = self._write_temporary(folder, lambda handle: handle.write(data))
                try:
                    os.link(temp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
                except FileExistsError:
                    raise PreconditionFailed(f"{self.url}/{key} already exists") from None
                finally:
                    os.unlink(temp, dir_fd=folder)
        except _LinkFound as found:
            raise self._refusal("write", key, found) from None
        except OSError as exc:
            raise StorageError(f"cannot write {self.url}/{key}: {exc.strerror}") from None
        return _content_token(data)

    @contextlib.contextmanager
    def _unchanged(self, key: str, token: str, action: str) -> Iterator[tuple[int, str]]:
        """Hold the object's folder locked (``flock``) while it is compared with ``token`` and
        changed: yields ``(folder descriptor, name)``. The kernel drops the lock with the
        descriptor, so a killed process never leaves it held."""
        parts = self._parts(key)
        name = parts[-1]
        try:
            with self._folder(parts[:-1]) as folder:
                fcntl.flock(folder, fcntl.LOCK_EX)
                fd = self._open_object(folder, name, key)
                with open(fd, "rb") as handle:
                    current = _content_token(handle.read())
                if current != token:
                    raise PreconditionFailed(f"{self.url}/{key} has changed since it was read")
                yield folder, name
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PreconditionFailed(f"{self.url}/{key} does not exist") from None
        except _LinkFound as found:
            raise self._refusal(action, key, found) from None
        except OSError as exc:
            raise StorageError(f"cannot {action} {self.url}/{key}: {exc.strerror}") from None

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        with self._unchanged(key, token, "write") as (folder, name):
            temp = self._write_temporary(folder, lambda handle: handle.write(data))
            try:
                os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                os.unlink(temp, dir_fd=folder)
                raise
        return _content_token(data)

    def delete_if_match(self, key: str, token: str) -> None:
        with self._unchanged(key, token, "delete") as (folder, name):
            os.unlink(name, dir_fd=folder)


def _copy_descriptor(source: int, target: int) -> None:
    """Copy a whole file in the kernel (``sendfile``, as `shutil.copyfile` does on Linux), or
    through a buffer where the file system cannot."""
    offset = 0
    while True:
        try:
            sent = os.sendfile(target, source, offset, _SENDFILE_CHUNK)
        except OSError as exc:
            if offset == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                break
            raise
        if sent == 0:
            return
        offset += sent
    os.lseek(source, 0, os.SEEK_SET)
    while chunk := os.read(source, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view) :]


def _modified(seconds: float) -> dt.datetime:
    """A file's modification time (``st_mtime``) as a UTC datetime; one beyond what a datetime
    holds (some file systems keep any 64-bit time) is its first or last moment."""
    try:
        return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return (dt.datetime.max if seconds > 0 else dt.datetime.min).replace(tzinfo=dt.UTC)


def _temporary_writer(name: str) -> int | None:
    """The pid of the process that wrote a local store's temporary file of this name, or None
    when ``name`` is not one (any other name, whatever its digits or length)."""
    match = _TEMPORARY.fullmatch(name) or _LEGACY_TEMPORARY.fullmatch(name)
    if match is None:
        return None
    pid = int(match.group(1))  # ASCII digits only, at most 10 of them
    return pid if pid <= _MAX_PID else None


def _remove_if_abandoned(folder: int, name: str, writer: int, where: str) -> None:
    """Delete temporary file ``name`` of ``folder`` if its ``writer`` process is gone (a run
    killed mid-write); ``where`` is the folder's URL, for the log."""
    try:
        os.kill(writer, 0)
    except ProcessLookupError:
        pass
    except OSError:  # another user's live process (EPERM)
        return
    else:
        return
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("cannot remove %r, left by a killed run: %s", where + name, exc.strerror)
        return
    logger.info("removed %r, left by a run that was killed while writing", where + name)


class S3Storage(Storage):
    """An S3 bucket (or any S3-compatible endpoint) through one thread-safe boto3 client.

    The client uses botocore's adaptive retries and a connection pool sized to the workers;
    ``AWS_ENDPOINT_URL`` and the other standard AWS variables are honoured by botocore.
    """

    time_resolution = 1.0

    def __init__(
        self,
        bucket: str,
        *,
        client=None,
        probe=None,
        workers: int = 32,
        copy_limit=S3_COPY_LIMIT,
    ):
        self.bucket = bucket
        self.url = f"s3://{bucket}"
        self.workers = workers
        self.copy_limit = copy_limit
        self.client = client or make_s3_client(workers)
        #: The client of `check_store`: short timeouts, one attempt (the given client itself
        #: when one is given).
        self.probe = probe or (client if client is not None else probe_client(self.client))

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
        return S3Storage(
            self.bucket + "-processed", client=self.client, probe=self.probe, workers=self.workers
        )

    def check_store(self) -> None:
        """One HeadBucket through a client with short timeouts and no retries, so that an
        endpoint that cannot be reached is said within seconds, not after the SDK's retries."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        try:
            self.probe.head_bucket(Bucket=self.bucket)
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
            raise StoreUnavailable(
                f"cannot reach the S3 endpoint {self.client.meta.endpoint_url} for bucket "
                f"{self.bucket} ({exc}); check AWS_ENDPOINT_URL, the region and the network"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreUnavailable(
                    f"bucket {self.bucket} does not exist: create it with "
                    f"`aws s3 mb s3://{self.bucket}` (the CloudFormation template {_TEMPLATE} "
                    "makes the warehouse bucket and its -processed bucket)"
                ) from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StoreUnavailable(
                    f"cannot use bucket {self.bucket}: access denied (HeadBucket needs "
                    "s3:ListBucket on it)"
                ) from None
            raise StoreUnavailable(str(self._error(exc, "use", ""))) from None
        except BotoCoreError as exc:
            raise StoreUnavailable(str(self._error(exc, "use", ""))) from None

    # -- conditional operations (the run lease)

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "read", key) from None

    def _conditional(self, call, action: str, key: str, **kwargs) -> dict:
        """One conditional request; a failed condition raises `PreconditionFailed`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(Bucket=self.bucket, Key=key, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            where = f"{self.url}/{key}"
            if code in ("PreconditionFailed", "412"):
                state = "already exists" if "IfNoneMatch" in kwargs else "has changed"
                raise PreconditionFailed(f"{where} {state}") from None
            if code in ("ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"{where} is being changed by another request") from None
            if code in ("NoSuchKey", "404"):
                raise PreconditionFailed(f"{where} does not exist") from None
            raise self._error(exc, action, key) from None
        except BotoCoreError as exc:
            raise self._error(exc, action, key) from None

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        response = self._conditional(
            self.client.put_object,
            "write",
            key,
            Body=data,
            ContentType=content_type,
            IfNoneMatch="*",
        )
        return response["ETag"]

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        response = self._conditional(
            self.client.put_object, "write", key, Body=data, ContentType=content_type, IfMatch=token
        )
        return response["ETag"]

    def delete_if_match(self, key: str, token: str) -> None:
        self._conditional(self.client.delete_object, "delete", key, IfMatch=token)


#: The store probe's limits: it must answer within seconds when the endpoint cannot be reached.
PROBE_CONNECT_SECONDS = 2
PROBE_READ_SECONDS = 2


def probe_client(client):
    """A client of the same endpoint and region as ``client``, with short timeouts and a
    single attempt: for the one request that checks a store before a run starts."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=PROBE_CONNECT_SECONDS,
        read_timeout=PROBE_READ_SECONDS,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=client.meta.endpoint_url,
        region_name=client.meta.region_name,
        config=config,
    )


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


class DelegatingStorage(Storage):
    """A store that hands every operation to ``inner``: the base of the stores that change
    some of them (a dry run's writes, a leased run's writes, the tests' recording stores)."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.read_only = inner.read_only
        self.time_resolution = inner.time_resolution

    def check_store(self) -> None:
        self.inner.check_store()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        return self.inner.list_folders(prefix)

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.read_range(key, start, end)

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self.inner.write(key, data, content_type)

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        self.inner.copy(source_key, target_key, size)

    def processed(self) -> Storage:
        return self.inner.processed()

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        return self.inner.read_with_token(key)

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        return self.inner.write_if_absent(key, data, content_type)

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        return self.inner.write_if_match(key, data, token, content_type)

    def delete_if_match(self, key: str, token: str) -> None:
        self.inner.delete_if_match(key, token)


class DryRunStorage(DelegatingStorage):
    """Reads from the wrapped store; logs each write or copy it would make instead of making it.

    A dry run takes no run lease: it is ``read_only``, so `RunLease` only reads the lease (and
    warns when another run holds it); the conditional writes refuse with a `StorageError`
    rather than pretend that a lease was taken.
    """

    def __init__(self, inner: Storage):
        super().__init__(inner)
        self.read_only = True
        self.intended_writes = 0
        self._lock = threading.Lock()

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

    def _refuse(self, key: str) -> StorageError:
        return StorageError(f"a dry run writes nothing, not even {self.url}/{key} (no lease)")

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        raise self._refuse(key)

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        raise self._refuse(key)

    def delete_if_match(self, key: str, token: str) -> None:
        raise self._refuse(key)


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

    Raises
    ------
    StorageError
        If ``url`` names no store; `StoreUnavailable` if it names a local directory that does
        not exist, is not a directory, or is ``/`` (S3 buckets are checked by
        `Storage.check_store`, which makes a request).
    """
    text = url.strip()
    if text.startswith("file://"):
        path = text[len("file://") :]
        if not path:
            raise StorageError("file:// needs a path, e.g. file:///data/warehouse")
        store: Storage = LocalStorage(path)
        store.check_store()  # a local store that is not there is a settings error, not a mkdir
    else:
        bucket = text[len("s3://") :] if text.startswith("s3://") else text
        bucket = bucket.rstrip("/")
        if not bucket or "/" in bucket or "://" in text and not text.startswith("s3://"):
            raise StorageError(f"{url!r} is not a bucket name, s3://name or file://path")
        store = S3Storage(bucket, workers=workers)
    return DryRunStorage(store) if dry_run else store
