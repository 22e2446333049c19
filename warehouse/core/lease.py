"""The run lease: two loader runs never work on one warehouse at once.

A small JSON object in the warehouse, ``locks/warehouseloader.json``, says which run holds the
warehouse and until when::

    {"run_id": "2026-12-02T10-00-00Z-4f1c", "holder": "host/4711",
     "acquired": "2026-12-02T10:00:00Z", "expires": "2026-12-02T10:05:00Z",
     "graph": "warehouseloader"}

Both graphs that change what a batch is built from hold it: the loader, and ``dataprocess``
(so that no batch mixes a half-filed run; ``graph`` says which holds it, and a record without
it, written before, is read as a loader's).

A run creates it with a conditional write that exactly one of several racing runs wins
(`Storage.write_if_absent`: ``If-None-Match: *`` on S3, ``link()`` locally), renews it every
``ttl / 3`` while it works, and deletes it at the end. A run that crashed leaves it to expire;
the next run then takes it over, again with a conditional write that exactly one racer wins
(`Storage.write_if_match` on the token it read: ``If-Match: <ETag>`` on S3). Every change is
conditional on the token read last, so a run never overwrites or deletes a lease it does not
hold, and a run that finds its lease gone or taken over knows it has lost it.

Requests per run: acquiring is 1 PUT (plus 1 GET when the lease is held or expired, plus 1 PUT
to take an expired one over), each renewal 1 PUT, releasing 1 DELETE; `RunLease.requests`
counts them.

Processes of one sharded run share its lease: the first takes it (`RunLease.acquire`), the
others join it by run id (`RunLease.join`) and renew it too; only the first releases it.

A dry run (a ``read_only`` store) takes no lease: it reads the lease once, warns when another
run holds it, and writes nothing.

Expiry is judged on each process's own clock: keep the ttl much longer than the clocks' skew.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from warehouse.core.errors import ExpectedError, ObjectNotFound, PreconditionFailed, StorageError
from warehouse.core.run import EXIT_BUSY

if TYPE_CHECKING:  # (annotations only: the lease works on any store, the port is above core)
    from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)

#: Where the loader's lease lives in the warehouse.
LEASE_KEY = "locks/warehouseloader.json"
DEFAULT_TTL_SECONDS = 300
#: Conditional requests tried before giving up on a lease that keeps changing under us.
_ATTEMPTS = 5


def _stamp(value: dt.datetime) -> str:
    """UTC ISO 8601 to the second: ``2026-12-02T10:00:00Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the lease object."""

    run_id: str
    holder: str
    acquired: dt.datetime
    expires: dt.datetime
    #: The graph of the run that holds it (None in a record that does not say).
    graph: str | None = None

    def to_json(self) -> bytes:
        """The object's bytes."""
        record = {
            "run_id": self.run_id,
            "holder": self.holder,
            "acquired": _stamp(self.acquired),
            "expires": _stamp(self.expires),
        }
        if self.graph is not None:
            record["graph"] = self.graph
        return json.dumps(record).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> LeaseRecord:
        """Parse the object's bytes.

        Raises
        ------
        LeaseError
            If they are not a lease record (the message says what to do).
        """
        try:
            record = json.loads(data)
            fields = {name: record[name] for name in ("run_id", "holder", "acquired", "expires")}
            if not all(isinstance(value, str) and value for value in fields.values()):
                raise ValueError("fields must be non-empty strings")
            times = {
                name: dt.datetime.fromisoformat(fields[name]) for name in ("acquired", "expires")
            }
            if any(value.tzinfo is None for value in times.values()):
                raise ValueError("times must be UTC")
            graph = record.get("graph")
            if graph is not None and not (isinstance(graph, str) and graph.isidentifier()):
                raise ValueError("graph must be a graph's name")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LeaseError(
                f"{where} is not a run lease ({exc}): if no loader or dataprocess run is "
                "active, delete it"
            ) from None
        return cls(fields["run_id"], fields["holder"], times["acquired"], times["expires"], graph)

    def live(self, now: dt.datetime) -> bool:
        """Whether it has not expired at ``now``, and its holder, if it ran on this machine,
        is still running (a run killed here need not wait for its lease to expire)."""
        return now < self.expires and not self._holder_gone()

    def _holder_gone(self) -> bool:
        host, _, pid = self.holder.rpartition("/")
        if host != socket.gethostname() or not pid.isdigit():
            return False  # another machine's process: only its expiry tells
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False


class LeaseError(ExpectedError):
    #: The exit code of a run stopped by the lease (another run holds the warehouse).
    exit_code = EXIT_BUSY

    """The run cannot hold the warehouse's lease (the base of the lease errors)."""


class LeaseHeld(LeaseError):
    """Another run holds the warehouse. ``run_id``, ``holder``, ``since`` and ``expires`` are
    the holder's."""

    def __init__(self, record: LeaseRecord, where: str):
        self.record = record
        self.run_id = record.run_id
        self.holder = record.holder
        self.since = record.acquired
        self.expires = record.expires
        same_day = (
            record.acquired.astimezone(dt.UTC).date() == record.expires.astimezone(dt.UTC).date()
        )
        until = _stamp(record.expires)[11:] if same_day else _stamp(record.expires)
        run = f"{record.graph} run" if record.graph else "run"
        super().__init__(
            f"another run holds the warehouse since {_stamp(record.acquired)} "
            f"({run} {record.run_id} on {record.holder}, until {until}); wait for it or, if it "
            f"crashed, for the lease to expire ({where})"
        )


class LeaseMissing(LeaseError):
    """A process joining its run found no lease of any run: the run's first process has not
    taken it (or has released it)."""


class LeaseLost(LeaseError):
    """The run's lease was taken over, deleted, or could not be renewed before it expired:
    continuing is unsafe, another run may be working on the warehouse."""


class RunLease:
    """One run's lease on a warehouse.

    Parameters
    ----------
    storage : Storage
        The warehouse store (the lease is an object in it).
    run_id : str
        This run's identifier, unique per run and shared by all processes of a sharded run.
    ttl_seconds : int
        How long the lease lasts without a renewal (whole seconds, at least 1).
    renew_every : float, optional
        Seconds between renewals of the background thread; ``ttl_seconds / 3`` by default.
    key : str
        The lease object's key.
    holder : str, optional
        Who holds it, for messages; ``<host>/<pid>`` by default.
    clock : callable, optional
        Returns the current time (aware); tests pass a fake one.
    on_lost : callable, optional
        Called once with the `LeaseLost` error when the lease is lost (from the renewal
        thread, if that is where it is noticed).

    Notes
    -----
    Use it as a context manager (acquire, renew in the background, release)::

        with RunLease(storage, run_id) as lease:
            ...  # call lease.check() before each batch of writes

    A process of a sharded run that did not acquire it uses ``with lease.joined(): ...``.
    """

    def __init__(
        self,
        storage: Storage,
        run_id: str,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        renew_every: float | None = None,
        *,
        key: str = LEASE_KEY,
        holder: str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        on_lost: Callable[[LeaseLost], object] | None = None,
    ):
        if not run_id:
            raise ValueError("run_id must not be empty")
        if int(ttl_seconds) != ttl_seconds or ttl_seconds < 1:
            raise ValueError("ttl_seconds must be a whole number of seconds, at least 1")
        renew_every = ttl_seconds / 3 if renew_every is None else renew_every
        if not 0 < renew_every < ttl_seconds:
            raise ValueError("renew_every must be between 0 and ttl_seconds")
        self.storage = storage
        self.run_id = run_id
        self.ttl = dt.timedelta(seconds=int(ttl_seconds))
        self.renew_every = renew_every
        self.key = key
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}"
        self.on_lost = on_lost
        #: The graph of the run, written in the lease so that a run it stops can say which
        #: holds the warehouse (`graph_lease`); None writes none.
        self.graph: str | None = None
        #: Requests made to the store, by kind (``PUT``, ``GET``, ``DELETE``).
        self.requests: Counter[str] = Counter()
        self._clock = clock or _utc_now
        self._lock = threading.RLock()
        self._record: LeaseRecord | None = None
        self._token: str | None = None
        self._joined = False
        self._lost: LeaseLost | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state

    @property
    def where(self) -> str:
        """The lease object's URL, for messages."""
        return f"{self.storage.url}/{self.key}"

    @property
    def record(self) -> LeaseRecord | None:
        """The lease as this process last wrote or read it (None when not held)."""
        return self._record

    @property
    def held(self) -> bool:
        """Whether this process holds (or shares) the lease and has not lost it."""
        return self._token is not None and self._lost is None

    @property
    def lost(self) -> LeaseLost | None:
        """The error, once the lease has been lost; None while it is held."""
        return self._lost

    @property
    def request_count(self) -> int:
        """All requests the lease made."""
        return sum(self.requests.values())

    def check(self) -> None:
        """Raise `LeaseLost` if the lease has been lost; call it before each batch of writes."""
        if self._lost is not None:
            raise self._lost

    # -- requests, counted

    def _now(self) -> dt.datetime:
        return self._clock().astimezone(dt.UTC).replace(microsecond=0)

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def _read(self) -> tuple[LeaseRecord, str] | None:
        self._count("GET")
        try:
            data, token = self.storage.read_with_token(self.key)
        except ObjectNotFound:
            return None
        return LeaseRecord.from_json(data, self.where), token

    def _create(self, record: LeaseRecord) -> str:
        self._count("PUT")
        return self.storage.write_if_absent(self.key, record.to_json())

    def _replace(self, record: LeaseRecord, token: str) -> str:
        self._count("PUT")
        return self.storage.write_if_match(self.key, record.to_json(), token)

    def _hold(self, record: LeaseRecord, token: str) -> LeaseRecord:
        with self._lock:
            self._record, self._token, self._lost = record, token, None
        return record

    # -- taking the lease

    def acquire(self) -> LeaseRecord | None:
        """Take the lease: create it, or take over an expired one (or one of this run).

        Returns
        -------
        LeaseRecord or None
            The lease now held (None in a dry run, which takes none).

        Raises
        ------
        LeaseHeld
            If another run holds it (and it has not expired).
        LeaseError
            If the lease object is not a lease, or kept changing.
        StorageError
            If the store cannot be reached.
        """
        if self.storage.read_only:
            self._observe()
            return None
        for _ in range(_ATTEMPTS):
            now = self._now()
            record = LeaseRecord(self.run_id, self.holder, now, now + self.ttl, self.graph)
            try:
                return self._hold(record, self._create(record))
            except PreconditionFailed:
                pass
            current = self._read()
            if current is None:
                continue  # released since: create it again
            found, token = current
            if found.run_id == self.run_id:
                # Ours already: a retried request that had succeeded, or a process of this run.
                record = replace(found, expires=now + self.ttl)
            elif found.live(now):
                raise LeaseHeld(found, self.where)
            elif now >= found.expires:
                logger.warning(
                    "taking over the lease of run %s (%s), expired at %s",
                    found.run_id,
                    found.holder,
                    _stamp(found.expires),
                )
            else:
                logger.warning(
                    "taking over the lease of run %s (%s): its process on this machine is gone",
                    found.run_id,
                    found.holder,
                )
            try:
                return self._hold(record, self._replace(record, token))
            except PreconditionFailed:
                continue  # another run took it over first: look again
        raise LeaseError(f"could not take the lease {self.where}: it kept changing; try again")

    def join(self) -> LeaseRecord | None:
        """Share the lease of this run (a process of a sharded run that did not acquire it),
        renewing it once.

        Raises
        ------
        LeaseHeld
            If another run holds it.
        LeaseMissing
            If no run holds it.
        """
        if self.storage.read_only:
            self._observe()
            return None
        for _ in range(_ATTEMPTS):
            current = self._read()
            if current is None:
                raise LeaseMissing(
                    f"no run holds the warehouse ({self.where}): a process of run {self.run_id} "
                    "joins its lease only after the run's first process has taken it"
                )
            found, token = current
            if found.run_id != self.run_id:
                raise LeaseHeld(found, self.where)
            record = replace(found, expires=self._now() + self.ttl)
            try:
                self._hold(record, self._replace(record, token))
            except PreconditionFailed:
                continue  # renewed by another process of the run meanwhile
            self._joined = True
            return record
        raise LeaseError(f"could not join the lease {self.where}: it kept changing; try again")

    def _observe(self) -> None:
        """A dry run: read the lease, warn if another run holds it, take nothing."""
        current = self._read()
        if current is not None:
            found, _ = current
            if found.run_id != self.run_id and found.live(self._now()):
                logger.warning(
                    "DRY RUN: takes no lease, but %s; what it shows may change meanwhile",
                    LeaseHeld(found, self.where),
                )
        return None

    # -- keeping it

    def _lose(self, message: str) -> LeaseLost:
        with self._lock:
            first = self._lost is None
            if self._lost is None:
                self._lost = LeaseLost(f"the run lost its lease on the warehouse: {message}")
            error = self._lost
        if first:
            logger.error("%s; continuing without it is unsafe", error)
            if self.on_lost is not None:
                self.on_lost(error)
        return error

    def renew(self) -> None:
        """Extend the lease by the ttl from now (one PUT).

        Raises
        ------
        LeaseLost
            If it was taken over or deleted (`lost` is then set and ``on_lost`` called).
        StorageError
            If the store cannot be reached (the lease may still be ours).
        """
        with self._lock:
            self.check()
            if self._token is None or self._record is None:
                raise LeaseError("no lease to renew: acquire or join it first")
            for _ in range(_ATTEMPTS):
                record = replace(self._record, expires=self._now() + self.ttl)
                try:
                    self._hold(record, self._replace(record, self._token))
                    return
                except PreconditionFailed:
                    pass
                current = self._read()
                if current is None:
                    raise self._lose(f"{self.where} was deleted")
                found, token = current
                if found.run_id != self.run_id:
                    raise self._lose(
                        f"run {found.run_id} ({found.holder}) took {self.where} over "
                        f"at {_stamp(found.acquired)}"
                    )
                self._record, self._token = found, token  # renewed by another process of the run
            raise LeaseError(f"could not renew the lease {self.where}: it kept changing")

    def start_renewing(self) -> None:
        """Renew the lease every ``renew_every`` seconds in a background thread, until `stop`
        or `release`; a renewal that finds the lease lost sets `lost` and ends the thread."""
        if self.storage.read_only or (self._thread is not None and self._thread.is_alive()):
            return
        if not self.held:
            raise LeaseError("no lease to renew: acquire or join it first")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stopping.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost:
                return
            except (StorageError, LeaseError) as exc:
                record = self._record
                if record is None or not record.live(self._now()):
                    self._lose(f"could not renew {self.where} before it expired: {exc}")
                    return
                logger.warning("could not renew the run lease (trying again): %s", exc)
            except Exception as exc:  # noqa: BLE001 - a renewal that cannot run loses the lease
                logger.exception("the run lease's renewal failed")
                self._lose(f"its renewal failed: {exc!r}")
                return

    def stop(self) -> None:
        """Stop the renewal thread (waiting for a renewal in flight); the lease stays."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None

    # -- giving it back

    def release(self) -> bool:
        """Stop renewing and delete the lease if it is still this run's (one DELETE).

        A process that joined the lease only stops renewing: the run's first process releases.

        Returns
        -------
        bool
            Whether the lease was deleted.
        """
        self.stop()
        if self.storage.read_only or self._joined:
            return False
        with self._lock:
            for _ in range(_ATTEMPTS):
                if self._token is None:
                    return False
                self._count("DELETE")
                try:
                    self.storage.delete_if_match(self.key, self._token)
                except PreconditionFailed:
                    current = self._read()
                    if current is None or current[0].run_id != self.run_id:
                        self._token = None  # gone or another run's: not ours to delete
                        return False
                    self._record, self._token = current  # renewed by another process of the run
                    continue
                self._token = None
                return True
            return False

    def __enter__(self) -> RunLease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @contextlib.contextmanager
    def joined(self) -> Iterator[RunLease]:
        """Join the run's lease and renew it while the block runs (a process of a sharded run
        that did not acquire it); the lease stays for the run's first process to release."""
        self.join()
        self.start_renewing()
        try:
            yield self
        finally:
            self.stop()


def graph_lease(
    graph: str,
    storage: Storage,
    run_id: str,
    on_lost: Callable[[LeaseLost], object] | None = None,
) -> RunLease:
    """The lease of one run of ``graph`` (``warehouseloader``, ``dataprocess``) on the
    warehouse, with the default ttl, that says which graph holds it.

    Parameters
    ----------
    graph : str
        The graph's name.
    storage : Storage
        The warehouse store.
    run_id : str
        The run's identifier.
    on_lost : callable, optional
        See `RunLease`.
    """
    lease = RunLease(storage, run_id, on_lost=on_lost)
    lease.graph = graph
    return lease


def release_run_lease(storage: Storage, run_id: str, key: str = LEASE_KEY) -> bool:
    """Delete the lease if run ``run_id`` holds it, whichever of the run's processes took it
    (the end of a sharded run, whose clinical phase took the lease and whose shards joined it);
    a lease of another run is left alone.

    Returns
    -------
    bool
        Whether the lease was deleted.

    Raises
    ------
    LeaseError
        If the lease object is not a lease.
    StorageError
        If the store cannot be reached.
    """
    where = f"{storage.url}/{key}"
    for _ in range(_ATTEMPTS):
        try:
            data, token = storage.read_with_token(key)
        except ObjectNotFound:
            return False
        if LeaseRecord.from_json(data, where).run_id != run_id:
            return False
        try:
            storage.delete_if_match(key, token)
        except PreconditionFailed:
            continue  # renewed by a process of the run meanwhile: read it again
        return True
    return False
