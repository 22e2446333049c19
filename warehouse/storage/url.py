"""Opening the store a URL names: ``name`` or ``s3://name``, ``file://path``; and a place
inside a store (``s3://name/prefix``), for what the product reads but does not own.
"""

from __future__ import annotations

from warehouse.core.errors import StorageError
from warehouse.core.text import quote
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.wrappers import DryRunStorage


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


def location_from_url(url: str, *, workers: int = 8) -> tuple[Storage, str]:
    """Open the store and the key prefix that a location URL names.

    Parameters
    ----------
    url : str
        ``s3://bucket`` or ``s3://bucket/prefix`` (S3; the prefix may end with ``/``), or
        ``file:///abs/path`` / ``file://relative/path``: a local directory that holds what
        the prefix of a bucket would (its prefix is then empty).
    workers : int
        Size of the S3 client's connection pool.

    Returns
    -------
    tuple
        ``(storage, prefix)``: the prefix is ``""`` or ends with ``/``.

    Raises
    ------
    StorageError
        If ``url`` names no location (the message quotes it, bounded); `StoreUnavailable` if it
        names a local directory that does not exist.
    """
    text = url.strip()
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"{quote(url)} names no bucket: use s3://bucket/prefix")
        prefix = prefix.strip("/")
        return storage_from_url(f"s3://{bucket}", workers=workers), prefix + "/" if prefix else ""
    if text.startswith("file://"):
        return storage_from_url(text, workers=workers), ""
    raise StorageError(f"{quote(url)} is not s3://bucket/prefix or file:///path")
