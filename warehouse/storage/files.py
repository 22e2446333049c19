"""An object of a store read as a seekable file.

Each read is one ranged read, so a Parquet file's footer and the column chunks a reader asks
for are all that is fetched.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

from warehouse.storage.base import Storage

#: The end of an object fetched by the first read near it (a Parquet footer is read in two
#: small reads, its length then the metadata: one range serves both).
TAIL_BYTES = 64 * 1024


class StoredFile(io.RawIOBase):
    """A read-only, seekable file over ``key`` of ``storage`` (of ``size`` bytes).

    Parameters
    ----------
    storage : Storage
        The store.
    key : str
        The object.
    size : int
        Its size (from the listing: no request to learn it).
    """

    def __init__(self, storage: Storage, key: str, size: int):
        super().__init__()
        self._storage = storage
        self._key = key
        self._size = size
        self._position = 0
        self._tail: bytes | None = None
        self._tail_start = max(0, size - TAIL_BYTES)
        #: Ranged reads made (the tail counts once).
        self.requests = 0

    def readable(self) -> bool:
        """Return True: it is read."""
        return True

    def seekable(self) -> bool:
        """Return True: any position can be read."""
        return True

    def tell(self) -> int:
        """Return the position of the next read."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` (from the start, the position or the end, as ``whence`` says)."""
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"whence {whence} is not 0, 1 or 2")
        if position < 0:
            raise OSError(f"cannot seek to {position} in {self._key}")
        self._position = position
        return position

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the position with one ranged read; return the bytes read."""
        start = self._position
        end = min(self._size, start + len(buffer))
        if end <= start:
            return 0
        if start >= self._tail_start:
            if self._tail is None:
                self._tail = self._storage.read_range(self._key, self._tail_start, self._size)
                self.requests += 1
            data = self._tail[start - self._tail_start : end - self._tail_start]
        else:
            data = self._storage.read_range(self._key, start, end)
            self.requests += 1
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


#: Bytes a chunked read of a whole object asks for at a time (one ranged read each).
RANGE_CHUNK_BYTES = 8 * 1024 * 1024


def ranged_chunks(
    storage: Storage, key: str, size: int, chunk_bytes: int | None = None
) -> Iterator[bytes]:
    """Yield bytes 0 to ``size`` of ``key``, one ranged read of `RANGE_CHUNK_BYTES` at a time.

    ``chunk_bytes``, when given, instead. An object read whole that way is never whole in
    memory, and a file read whole several times costs a few large requests, not one per
    column chunk. It stops early at an empty read (the object is shorter than ``size``): the caller
    compares the bytes it got with what it expected.

    Raises
    ------
    StorageError
        When a read fails.
    """
    step = chunk_bytes or RANGE_CHUNK_BYTES
    done = 0
    while done < size:
        chunk = storage.read_range(key, done, min(size, done + step))
        if not chunk:
            return
        yield chunk
        done += len(chunk)


def copy_to_file(storage: Storage, key: str, size: int, path: str | os.PathLike) -> int:
    """Copy ``key`` of ``storage`` (of ``size`` bytes) to the local file ``path``.

    By `ranged_chunks`; returns the bytes written (fewer than ``size``: the object is shorter).

    Raises
    ------
    StorageError
        When a read fails.
    OSError
        When the file cannot be written.
    """
    written = 0
    with open(path, "wb") as out:
        for chunk in ranged_chunks(storage, key, size):
            out.write(chunk)
            written += len(chunk)
    return written
