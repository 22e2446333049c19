"""The errors whose message is meant for the operator: the base of them all, and the storage
errors every layer may catch (the stores raise them; config, the lease and the graphs catch
them)."""

from __future__ import annotations

from warehouse.core.reasons import Reason


class ExpectedError(Exception):
    """An error that stops a run with a message for the operator: logged without a traceback.

    Configuration and storage errors derive from it; anything else reaching a node's boundary
    is a bug and is logged with its traceback.
    """


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
