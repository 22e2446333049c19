"""The run lease on each backend: a local directory, S3 in-process (moto) and S3 over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import Counter

import boto3
import pytest
from moto import mock_aws

from tests.moto_conditions import serialise_conditional_requests
from warehouse.core.errors import ExpectedError, ObjectNotFound, StorageError
from warehouse.core.lease import (
    LEASE_KEY,
    LeaseError,
    LeaseHeld,
    LeaseLost,
    LeaseMissing,
    LeaseRecord,
    RunLease,
)
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.url import storage_from_url
from warehouse.storage.wrappers import DryRunStorage

BUCKET = "lease-test"
T0 = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)
#: How long a test waits for the renewal thread at most (it normally takes milliseconds).
PATIENCE = 10


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime = T0):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture(params=["local", "moto", "http"])
def store(request, tmp_path, monkeypatch):
    """The warehouse store, on each backend; S3's conditional requests decided atomically."""
    if request.param == "local":
        (tmp_path / "bucket").mkdir()
        yield LocalStorage(tmp_path / "bucket")
        return
    serialise_conditional_requests(monkeypatch)
    if request.param == "http":
        bucket = request.getfixturevalue("s3_bucket")
        yield storage_from_url(f"s3://{bucket}", workers=4)
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3Storage(BUCKET, client=client)


def lease_on(store) -> LeaseRecord:
    return LeaseRecord.from_json(store.read(LEASE_KEY), "test")


def race(count: int, attempt) -> list[object]:
    """Run ``attempt(n)`` in ``count`` threads started together; their results or errors."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(n: int) -> None:
        barrier.wait()
        try:
            results[n] = attempt(n)
        except Exception as exc:  # collected for the test's assertions
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def wait_for(condition) -> bool:
    """Poll ``condition`` for up to PATIENCE seconds (the renewal thread's pace is 20 ms)."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


# --------------------------------------------------------------------------------------------
# acquiring


def test_acquire_writes_the_lease_record(store):
    lease = RunLease(store, "run-a", ttl_seconds=300, holder="host-a/11", clock=FakeClock())
    record = lease.acquire()
    assert json.loads(store.read(LEASE_KEY)) == {
        "run_id": "run-a",
        "holder": "host-a/11",
        "acquired": "2026-12-02T10:00:00Z",
        "expires": "2026-12-02T10:05:00Z",
    }
    assert record == lease_on(store) and lease.record == record
    assert lease.held and lease.lost is None
    assert lease.requests == Counter({"PUT": 1})
    assert [info.key for info in store.list("")] == [LEASE_KEY]


def test_two_acquirers_at_once_exactly_one_wins(store):
    leases = [RunLease(store, f"run-{n}", holder=f"host/{n}") for n in range(8)]
    results = race(len(leases), lambda n: leases[n].acquire())
    winners = [n for n, result in enumerate(results) if isinstance(result, LeaseRecord)]
    assert len(winners) == 1, results
    winner = f"run-{winners[0]}"
    losers = [result for result in results if not isinstance(result, LeaseRecord)]
    assert all(isinstance(error, LeaseHeld) for error in losers), losers
    assert {error.run_id for error in losers} == {winner}
    assert lease_on(store).run_id == winner
    assert [lease.held for lease in leases].count(True) == 1


def test_held_lease_names_its_holder(store):
    clock = FakeClock()
    RunLease(store, "abc", holder="host-a/11", clock=clock).acquire()
    clock.advance(120)
    other = RunLease(store, "def", clock=clock)
    with pytest.raises(LeaseHeld) as caught:
        other.acquire()
    error = caught.value
    assert isinstance(error, ExpectedError)
    assert (error.run_id, error.holder) == ("abc", "host-a/11")
    assert (error.since, error.expires) == (T0, T0 + dt.timedelta(seconds=300))
    assert str(error) == (
        "another run holds the warehouse since 2026-12-02T10:00:00Z (run abc on host-a/11, "
        "until 10:05:00Z); wait for it or, if it crashed, for the lease to expire "
        f"({store.url}/{LEASE_KEY})"
    )
    assert other.requests == Counter({"PUT": 1, "GET": 1})
    assert not other.held and lease_on(store).run_id == "abc"


def test_held_message_gives_the_full_expiry_on_another_day(store):
    clock = FakeClock(dt.datetime(2026, 12, 2, 23, 58, 0, tzinfo=dt.UTC))
    RunLease(store, "abc", holder="h/1", clock=clock).acquire()
    with pytest.raises(LeaseHeld, match=r"until 2026-12-03T00:03:00Z\)"):
        RunLease(store, "def", clock=clock).acquire()


def test_expired_lease_is_taken_over(store, caplog):
    clock = FakeClock()
    crashed = RunLease(store, "crashed", holder="host-a/11", clock=clock)
    crashed.acquire()
    clock.advance(301)
    successor = RunLease(store, "next", holder="host-b/22", clock=clock)
    with caplog.at_level(logging.WARNING, logger="warehouse.core.lease"):
        record = successor.acquire()
    assert record.run_id == "next" and record.acquired == T0 + dt.timedelta(seconds=301)
    assert lease_on(store) == record
    assert successor.requests == Counter({"PUT": 2, "GET": 1})
    assert "taking over the lease of run crashed (host-a/11), expired at 2026-12-02T10:05:00Z" in (
        caplog.text
    )
    # The crashed run, were it still alive, learns it lost the lease and deletes nothing.
    with pytest.raises(LeaseLost) as caught:
        crashed.renew()
    assert str(caught.value) == (
        f"the run lost its lease on the warehouse: run next (host-b/22) took "
        f"{store.url}/{LEASE_KEY} over at 2026-12-02T10:05:01Z"
    )
    assert crashed.release() is False
    assert lease_on(store) == record


def test_racing_takeover_of_an_expired_lease_exactly_one_wins(store):
    clock = FakeClock()
    RunLease(store, "crashed", clock=clock).acquire()
    clock.advance(600)
    leases = [RunLease(store, f"run-{n}", clock=clock) for n in range(6)]
    results = race(len(leases), lambda n: leases[n].acquire())
    winners = [n for n, result in enumerate(results) if isinstance(result, LeaseRecord)]
    assert len(winners) == 1, results
    losers = [result for result in results if not isinstance(result, LeaseRecord)]
    assert all(isinstance(error, LeaseHeld) for error in losers), losers
    assert {error.run_id for error in losers} == {f"run-{winners[0]}"}
    assert lease_on(store).run_id == f"run-{winners[0]}"


def test_acquire_again_by_the_same_run_keeps_it(store):
    clock = FakeClock()
    first = RunLease(store, "run-a", holder="h/1", clock=clock)
    first.acquire()
    clock.advance(10)
    again = RunLease(store, "run-a", holder="h/2", clock=clock)
    record = again.acquire()  # e.g. a retried request: the lease is already this run's
    assert (record.holder, record.acquired) == ("h/1", T0)
    assert record.expires == T0 + dt.timedelta(seconds=310)


def test_a_lease_that_is_not_a_lease_is_reported(store):
    store.write(LEASE_KEY, b"{not json")
    with pytest.raises(
        LeaseError, match="is not a run lease .*if no loader or dataprocess run is active, delete"
    ):
        RunLease(store, "run-a").acquire()
    store.write(LEASE_KEY, json.dumps({"run_id": "x", "holder": "h"}).encode())
    with pytest.raises(LeaseError, match="is not a run lease"):
        RunLease(store, "run-a").acquire()


# --------------------------------------------------------------------------------------------
# renewing


def test_renew_extends_the_lease_by_the_ttl_from_now(store):
    clock = FakeClock()
    lease = RunLease(store, "run-a", ttl_seconds=300, clock=clock)
    lease.acquire()
    clock.advance(100)
    lease.renew()
    assert lease_on(store).expires == T0 + dt.timedelta(seconds=400)
    assert lease_on(store).acquired == T0
    assert lease.requests == Counter({"PUT": 2})


def test_renewal_thread_keeps_renewing_until_stopped(store):
    clock = FakeClock()
    lease = RunLease(store, "run-a", ttl_seconds=60, renew_every=0.02, clock=clock)
    lease.acquire()
    before = set(threading.enumerate())
    lease.start_renewing()
    (renewer,) = [t for t in set(threading.enumerate()) - before if t.name == "lease-renewal"]
    clock.advance(30)
    assert wait_for(lambda: lease_on(store).expires == T0 + dt.timedelta(seconds=90))
    assert wait_for(lambda: lease.requests["PUT"] >= 4)
    lease.stop()
    # none happens once stopped: the renewal thread has ended (nothing is left to renew)
    assert not renewer.is_alive()
    puts = lease.requests["PUT"]
    clock.advance(30)
    assert lease.requests["PUT"] == puts and lease_on(store).expires == T0 + dt.timedelta(
        seconds=90
    )
    assert lease.held and lease.lost is None


def test_a_lease_taken_over_while_renewing_is_noticed(store):
    noticed = threading.Event()
    errors: list[LeaseLost] = []

    def on_lost(error):
        errors.append(error)
        noticed.set()

    lease = RunLease(store, "slow", ttl_seconds=60, renew_every=0.02, on_lost=on_lost)
    lease.acquire()
    # Another run, whose clock says the lease has expired (a stalled renewer), takes it over.
    late = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120))
    RunLease(store, "fast", holder="host-b/22", clock=late).acquire()
    lease.start_renewing()
    assert noticed.wait(PATIENCE)
    assert errors == [lease.lost] and isinstance(lease.lost, LeaseLost)
    assert isinstance(lease.lost, ExpectedError)
    assert "took" in str(lease.lost) and "run fast (host-b/22)" in str(lease.lost)
    assert not lease.held
    with pytest.raises(LeaseLost):
        lease.check()
    with pytest.raises(LeaseLost):
        lease.renew()
    assert lease.release() is False
    assert lease_on(store).run_id == "fast"


def test_a_lease_deleted_while_renewing_is_noticed(store):
    noticed = threading.Event()
    lease = RunLease(store, "run-a", ttl_seconds=60, renew_every=0.02)
    lease.on_lost = lambda error: noticed.set()
    lease.acquire()
    _, token = store.read_with_token(LEASE_KEY)
    store.delete_if_match(LEASE_KEY, token)
    lease.start_renewing()
    assert noticed.wait(PATIENCE)
    assert f"{store.url}/{LEASE_KEY} was deleted" in str(lease.lost)
    with pytest.raises(ObjectNotFound):
        store.read(LEASE_KEY)  # the lost lease is not written again


def test_a_renewal_that_cannot_reach_the_store_loses_the_lease_once_expired(store, monkeypatch):
    noticed = threading.Event()
    clock = FakeClock()
    lease = RunLease(store, "run-a", ttl_seconds=60, renew_every=0.02, clock=clock)
    lease.on_lost = lambda error: noticed.set()
    lease.acquire()

    def unreachable(*args, **kwargs):
        raise StorageError("cannot write: endpoint unreachable")

    monkeypatch.setattr(store, "write_if_match", unreachable)
    lease.start_renewing()
    assert wait_for(lambda: lease.requests["PUT"] >= 3)
    assert lease.lost is None  # not expired yet: it keeps trying
    clock.advance(61)
    assert noticed.wait(PATIENCE)
    assert "before it expired: cannot write: endpoint unreachable" in str(lease.lost)
    lease.stop()


# --------------------------------------------------------------------------------------------
# releasing


def test_release_deletes_only_our_lease(store):
    lease = RunLease(store, "run-a")
    lease.acquire()
    assert lease.release() is True
    assert lease.requests == Counter({"PUT": 1, "DELETE": 1})
    assert list(store.list("locks/")) == []
    assert lease.release() is False  # nothing held any more: no request
    assert lease.requests["DELETE"] == 1
    other = RunLease(store, "run-b")
    other.acquire()
    assert lease.release() is False
    assert lease_on(store).run_id == "run-b"


def test_the_next_run_acquires_after_a_release(store):
    first = RunLease(store, "run-a")
    first.acquire()
    first.release()
    second = RunLease(store, "run-b")
    assert second.acquire().run_id == "run-b"
    assert second.requests == Counter({"PUT": 1})


# --------------------------------------------------------------------------------------------
# sharded runs: joining by run id


def test_join_by_run_id(store):
    clock = FakeClock()
    first = RunLease(store, "run-a", holder="h/1", clock=clock)
    first.acquire()
    clock.advance(50)
    shard = RunLease(store, "run-a", holder="h/2", clock=clock)
    record = shard.join()
    assert (record.run_id, record.holder, record.acquired) == ("run-a", "h/1", T0)
    assert record.expires == T0 + dt.timedelta(seconds=350) == lease_on(store).expires
    assert shard.requests == Counter({"GET": 1, "PUT": 1})
    with pytest.raises(LeaseHeld) as caught:
        RunLease(store, "run-b", clock=clock).join()
    assert caught.value.run_id == "run-a"
    # Both renew the one lease; each finds the other's renewal and carries on.
    clock.advance(10)
    first.renew()
    shard.renew()
    first.renew()
    assert first.held and shard.held
    assert lease_on(store).expires == T0 + dt.timedelta(seconds=360)
    assert shard.release() is False  # a joined process leaves the lease to the first
    assert lease_on(store).run_id == "run-a"
    assert first.release() is True  # though the shard renewed it last
    with pytest.raises(LeaseMissing, match="no run holds the warehouse"):
        RunLease(store, "run-a").join()


def test_joined_context_renews_and_leaves_the_lease(store):
    first = RunLease(store, "run-a")
    first.acquire()
    shard = RunLease(store, "run-a", ttl_seconds=60, renew_every=0.02)
    with shard.joined():
        assert wait_for(lambda: shard.requests["PUT"] >= 3)
    assert lease_on(store).run_id == "run-a"
    assert first.release() is True


# --------------------------------------------------------------------------------------------
# as a context manager


def test_context_manager_acquires_renews_and_releases(store):
    with RunLease(store, "run-a", ttl_seconds=60, renew_every=0.02) as lease:
        assert lease.held and lease_on(store).run_id == "run-a"
        assert wait_for(lambda: lease.requests["PUT"] >= 3)
        with pytest.raises(LeaseHeld):
            RunLease(store, "run-b").acquire()
    assert list(store.list("locks/")) == []
    assert lease.requests["DELETE"] == 1


def test_context_manager_releases_after_an_error(store):
    with pytest.raises(ZeroDivisionError):
        with RunLease(store, "run-a"):
            1 / 0  # noqa: B018
    assert list(store.list("locks/")) == []


def test_context_manager_does_not_start_when_held(store):
    RunLease(store, "run-a").acquire()
    with pytest.raises(LeaseHeld):
        with RunLease(store, "run-b"):
            raise AssertionError("must not run")
    assert lease_on(store).run_id == "run-a"


# --------------------------------------------------------------------------------------------
# a dry run takes no lease


def test_dry_run_takes_no_lease(store, caplog):
    dry = DryRunStorage(store)
    with RunLease(dry, "dry") as lease:
        assert not lease.held
    assert list(store.list("")) == []
    assert lease.requests == Counter({"GET": 1})
    RunLease(store, "real", holder="host-a/11").acquire()
    with caplog.at_level(logging.WARNING, logger="warehouse.core.lease"):
        with RunLease(dry, "dry"):
            pass
    assert "DRY RUN: takes no lease, but another run holds the warehouse since" in caplog.text
    assert "(run real on host-a/11" in caplog.text
    assert lease_on(store).run_id == "real"
    assert RunLease(dry, "dry").join() is None


# --------------------------------------------------------------------------------------------
# requests and files


def test_lease_requests_are_the_s3_requests(tmp_path):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        calls: Counter[str] = Counter()
        client.meta.events.register(
            "before-call.s3.*", lambda event_name, **kw: calls.update([event_name.split(".")[-1]])
        )
        store = S3Storage(BUCKET, client=client)
        clock = FakeClock()
        held = RunLease(store, "run-a", clock=clock)
        held.acquire()
        held.renew()
        held.renew()
        blocked = RunLease(store, "run-b", clock=clock)
        with pytest.raises(LeaseHeld):
            blocked.acquire()
        clock.advance(400)
        successor = RunLease(store, "run-c", clock=clock)
        successor.acquire()
        successor.release()
        leases = (held, blocked, successor)
        assert sum((lease.requests for lease in leases), Counter()) == Counter(
            {"PUT": 6, "GET": 2, "DELETE": 1}
        )
        assert calls == Counter({"PutObject": 6, "GetObject": 2, "DeleteObject": 1})


def test_local_lease_leaves_only_the_lock_file(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    clock = FakeClock()
    lease = RunLease(store, "run-a", clock=clock)
    lease.acquire()
    for _ in range(3):
        lease.renew()
    with pytest.raises(LeaseHeld):
        RunLease(store, "run-b", clock=clock).acquire()
    assert sorted(p.name for p in (tmp_path / "bucket" / "locks").iterdir()) == [
        "warehouseloader.json"
    ]
    lease.release()
    assert list((tmp_path / "bucket" / "locks").iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"run_id": ""}, "run_id"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": 1.5}, "ttl_seconds"),
        ({"ttl_seconds": 10, "renew_every": 10}, "renew_every"),
        ({"renew_every": 0}, "renew_every"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, message):
    (tmp_path / "bucket").mkdir()
    arguments = {"run_id": "run-a", **kwargs}
    with pytest.raises(ValueError, match=message):
        RunLease(LocalStorage(tmp_path / "bucket"), **arguments)


def test_renewing_needs_a_lease(tmp_path):
    (tmp_path / "bucket").mkdir()
    lease = RunLease(LocalStorage(tmp_path / "bucket"), "run-a")
    with pytest.raises(LeaseError, match="acquire or join it first"):
        lease.renew()
    with pytest.raises(LeaseError, match="acquire or join it first"):
        lease.start_renewing()


def test_a_lease_whose_process_on_this_machine_is_gone_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    from warehouse.core.lease import LeaseHeld, RunLease
    from warehouse.storage.local import LocalStorage

    root = tmp_path / "bucket"
    root.mkdir()
    store = LocalStorage(root)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    here = socket.gethostname()
    RunLease(store, "killed", holder=f"{here}/{gone.stdout.strip()}").acquire()
    successor = RunLease(store, "next")
    assert successor.acquire().run_id == "next"
    with pytest.raises(LeaseHeld, match="run next"):
        RunLease(store, "third").acquire()  # this process is alive: held
