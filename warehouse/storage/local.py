"""A local directory laid out like a bucket: the store of the demo and of the tests."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import re
import shlex
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from warehouse.core.errors import (
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
    SymbolicLinkRefused,
)
from warehouse.core.keys import MAX_KEY_DEPTH, raw_prefix_of
from warehouse.storage.base import ObjectInfo, Storage

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

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

    def _entries(self, folder: int, base: str) -> builtins.list[os.DirEntry]:
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

    def list_folders(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
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

    def _read_object(self, key: str, consume: Callable[[BinaryIO], _T]) -> _T:
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

    def content_digest(self, key: str) -> str:
        def digest(handle: BinaryIO) -> str:
            sha = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                sha.update(chunk)
            return sha.hexdigest()

        return self._read_object(key, digest)

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

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None
        try:
            self._replace_atomically(key, lambda handle: _copy_descriptor(source, handle.fileno()))
        finally:
            os.close(source)

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
