"""Stores that wrap another and change some of its operations: a dry run's writes, a leased
run's writes, and the base they share (`DelegatingStorage`)."""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Iterator

from warehouse.core.errors import StorageError
from warehouse.core.lease import RunLease
from warehouse.storage.base import ObjectInfo, ObjectVersion, Storage

logger = logging.getLogger(__name__)


class DelegatingStorage(Storage):
    """A store that hands every operation to ``inner``: the base of the stores that change
    some of them (a dry run's writes, a leased run's writes, the tests' recording stores)."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.read_only = inner.read_only

    def check_store(self) -> None:
        self.inner.check_store()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_after(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        return self.inner.list_after(prefix, start_after)

    def list_folders(self, prefix: str) -> tuple[builtins.list[str], builtins.list[ObjectInfo]]:
        return self.inner.list_folders(prefix)

    def read(self, key: str) -> bytes:
        return self.inner.read(key)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.read_range(key, start, end)

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        return self.inner.list_versions(prefix)

    def read_pinned(self, key, start, end, *, version_id=None, etag=None) -> bytes:
        return self.inner.read_pinned(key, start, end, version_id=version_id, etag=etag)

    def content_digest(self, key: str) -> str | None:
        return self.inner.content_digest(key)

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self.inner.write(key, data, content_type)

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        self.inner.write_file(key, path, content_type)

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

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        self._intend(f"write {self.url}/{key} ({os.path.getsize(path)} bytes)")

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


class LeasedStorage(DelegatingStorage):
    """A store whose writes and copies first check that the run still holds its lease: a run
    that lost it stops writing (each write fails, naming why) instead of racing another run."""

    def __init__(self, inner: Storage, lease: RunLease):
        super().__init__(inner)
        self.lease = lease

    def __getattr__(self, name):
        # what only some stores have (the S3 store's probe): asked of the wrapped one
        return getattr(self.inner, name)

    def _check(self, key: str) -> None:
        lost = self.lease.lost
        if lost is not None:
            raise StorageError(f"not writing {self.url}/{key}: the run lost its lease ({lost})")

    def write(self, key, data, content_type="application/json"):
        self._check(key)
        self.inner.write(key, data, content_type)

    def write_file(self, key, path, content_type="application/json"):
        self._check(key)
        self.inner.write_file(key, path, content_type)

    def copy(self, source_key, target_key, size=None):
        self._check(target_key)
        self.inner.copy(source_key, target_key, size)

    def write_if_absent(self, key, data, content_type="application/json"):
        self._check(key)
        return self.inner.write_if_absent(key, data, content_type)

    def write_if_match(self, key, data, token, content_type="application/json"):
        self._check(key)
        return self.inner.write_if_match(key, data, token, content_type)
