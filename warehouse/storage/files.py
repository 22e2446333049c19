"""An object of a store read as a seekable file.

Each read is one ranged read, so a Parquet file's footer and the column chunks a reader asks
for are all that is fetched.
"""

from __future__ import annotations

import io

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


#: Bytes a copy of an object to a local file reads at a time (one ranged read each).
COPY_CHUNK_BYTES = 8 * 1024 * 1024


def copy_to_file(storage: Storage, key: str, size: int, path: str) -> None:
    """Copy ``key`` of ``storage`` (of ``size`` bytes) to the local file ``path``.

    In ranged reads of `COPY_CHUNK_BYTES`, so that a file read whole several times (a Parquet
    file read column by column, row group by row group) costs a few large requests, not
    thousands of small ones, and never more than one chunk of memory.

    Raises
    ------
    StorageError
        When a read fails.
    OSError
        When the file cannot be written.
    """
    with open(path, "wb") as out:
        for start in range(0, size, COPY_CHUNK_BYTES):
            end = min(size, start + COPY_CHUNK_BYTES)
            data = storage.read_range(key, start, end)
            if len(data) != end - start:
                raise OSError(f"{key}: read {len(data)} bytes of {end - start} at {start}")
            out.write(data)
