"""SIGTERM and SIGINT sent to real runs at points in them.

The run stops taking inputs, writes what it read, says it stopped (report, one line, exit code
128 + N), gives the lease back, and the next run files exactly the rest.

Each run is held at a point by a ``sitecustomize`` hook (a storage call that waits, in the
worker that makes it, until the run is told to stop, or for good), and the test signals it once
the hook says it holds (a file appears) or once the run says it stops (a log line): no test
waits for a time to pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import builders
from tests.builders import clinical, image, uid
from warehouse.core.lease import LEASE_KEY
from warehouse.storage.local import LocalStorage

SITE = "Split Trust"
PATIENTS = [f"Covid{n}" for n in range(1, 7)]
IMAGES_PER_PATIENT = 8
IMAGES = len(PATIENTS) * IMAGES_PER_PATIENT
NOT_REACHED = "inputs not reached (run stopped)"

#: Held storage calls: ``WAREHOUSE_TEST_HOLD`` is ``<method>:<substring>:<n>:<until>`` (the
#: n-th call of LocalStorage.<method> on a key holding <substring> waits, after it is made,
#: until the run is told to stop, or ``never``) and ``WAREHOUSE_TEST_HELD`` the file it makes
#: when it holds. ``WAREHOUSE_TEST_GRACE`` shortens the stop's grace.
_HOLD_HOOK = """
import os
import threading
from pathlib import Path

from warehouse.core import stop
from warehouse.storage import local

_method, _match, _nth, _until = os.environ["WAREHOUSE_TEST_HOLD"].split(":")
_held = Path(os.environ["WAREHOUSE_TEST_HELD"])
_made = getattr(local.LocalStorage, _method)
_calls = [0]
_lock = threading.Lock()
if os.environ.get("WAREHOUSE_TEST_GRACE"):
    stop.RUN_STOP.grace = float(os.environ["WAREHOUSE_TEST_GRACE"])


def _held_call(self, key, *args, **kwargs):
    result = _made(self, key, *args, **kwargs)
    if _match in key:
        with _lock:
            _calls[0] += 1
            hold = _calls[0] == int(_nth)
        if hold:
            _held.touch()
            if _until == "stop":
                stop.RUN_STOP.wait_requested(120)
            else:
                threading.Event().wait(120)
    return result


setattr(local.LocalStorage, _method, _held_call)
"""


def _training(pseudonym: str) -> bool:
    """The split rule at 50 %, computed here (the oracle does not use the product's rule)."""
    digest = hashlib.sha512(pseudonym.strip().upper().encode()).hexdigest()
    return int(digest, 16) % 100 < 50


def _tree() -> dict[str, bytes]:
    files = {"config.json": builders.config(["raw-a"], split=[SITE])}
    for patient in PATIENTS:
        files[f"raw-a/2021-01-01/data/{patient}_data.json"] = clinical(patient, SITE)
        for n in range(IMAGES_PER_PATIENT):
            name, data = image(patient, "CT", study=f"s{n % 2}", instance=n)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    return files


def _expected(files: dict[str, bytes]) -> dict[str, bytes | None]:
    """Every warehouse key a full run makes of `_tree`, with each copy's bytes.

    A metadata file's bytes are None here: the reference run gives them.
    """
    expected: dict[str, bytes | None] = {}
    for patient in PATIENTS:
        group = "training" if _training(patient) else "validation"
        expected[f"{group}/data/{patient}/data_2021-01-01.json"] = files[
            f"raw-a/2021-01-01/data/{patient}_data.json"
        ]
        for n in range(IMAGES_PER_PATIENT):
            study, series = uid(patient, f"s{n % 2}"), uid(patient, f"s{n % 2}", "r1")
            sop = uid(patient, f"s{n % 2}", "r1", n)
            where = f"{patient}/{study}/{series}"
            expected[f"{group}/ct/{where}/{sop}.dcm"] = files[f"raw-a/2021-01-02/images/{sop}.dcm"]
            expected[f"{group}/ct-metadata/{where}/{sop}.json"] = None
    return expected


def _warehouse(store: LocalStorage) -> dict[str, bytes]:
    return {
        key: data
        for key, data in builders.snapshot(store).items()
        if key.startswith(("training/", "validation/"))
    }


@pytest.fixture
def buckets(tmp_path):
    """``(the bucket a run is stopped in, the warehouse a run in one go makes)`` of `_tree`.

    The reference is checked against the keys and copies derived here.
    """
    files = _tree()
    stores = []
    for name in ("bucket", "reference"):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}-processed").mkdir()
        store = LocalStorage(tmp_path / name)
        builders.put_tree(store, files)
        stores.append(store)
    assert builders.run_loader(stores[1])[0] == 0
    reference = _warehouse(stores[1])
    expected = _expected(files)
    assert set(reference) == set(expected)
    assert all(reference[key] == data for key, data in expected.items() if data is not None)
    return stores[0], reference


def _held_env(tmp_path: Path, store: LocalStorage, hold: str, **extra) -> dict[str, str]:
    hook = tmp_path / "hold-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HOLD_HOOK)
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{store.root}",
        WAREHOUSE_WORKERS="1",
        WAREHOUSE_TEST_HOLD=hold,
        WAREHOUSE_TEST_HELD=str(tmp_path / "held"),
        **extra,
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return env


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=builders.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _python_m(graph: str) -> list[str]:
    return [str(builders.BIN / "python"), "-m", f"warehouse.{graph}"]


def _when_held(process: subprocess.Popen, held: Path) -> None:
    deadline = time.monotonic() + 90  # a guard against a hang, not a speed target
    while not held.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the held call"
        time.sleep(0.01)


def _run_report(store: LocalStorage, graph: str = "warehouseloader") -> dict:
    """The one timestamped run report of ``graph`` in ``store``."""
    keys = [
        info.key
        for info in store.list(f"reports/{graph}/")
        if info.key.endswith("Z.json") and "/runs/" not in info.key
    ]
    assert len(keys) == 1, keys
    return json.loads(store.read(keys[0]))


def _one_stop_line(err: str, name: str) -> str:
    lines = [line for line in err.splitlines() if f"stopped by {name}" in line]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Logging error" not in err, err[-3000:]
    return lines[0]


def _check_stopped_run(store, process, out, err, name, code) -> dict:
    """Check what every stopped loader run leaves; return its report.

    Its exit code and line, its report, no lease, its catalogue part.
    """
    assert process.returncode == code, err[-3000:]
    line = _one_stop_line(err, name)
    assert f"(exit code {code})" in line
    assert f"run stopped ({name})" in out
    report = _run_report(store)
    assert report["stopped"] == name and report["completed"] is False
    counts = report["counts"]
    assert counts[NOT_REACHED] > 0
    assert counts["images copied"] + counts[NOT_REACHED] == IMAGES
    assert counts["metadata files written"] == counts["images copied"]
    assert counts["images catalogued"] == counts["images copied"]  # its part lists them
    assert f"{counts[NOT_REACHED]:,} inputs not reached" in line
    assert LEASE_KEY not in builders.snapshot(store)
    # a stopped run is not the next run's memo, and tells the sites nothing
    assert "reports/warehouseloader/latest.json" not in {i.key for i in store.list("reports/")}
    assert not list(store.list("feedback/"))
    return report


def _rerun_completes(store, reference) -> str:
    """Rerun the loader: it ends well and the warehouse is the one-go run's; its output."""
    rerun = builders.python_m(
        "warehouseloader", env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _warehouse(store) == reference
    return rerun.stdout


def _rerun_files_the_rest(store, reference, stopped: dict) -> None:
    before = _warehouse(store)
    out = _rerun_completes(store, reference)
    assert f"images copied: {stopped['counts'][NOT_REACHED]}\n" in out
    after = _warehouse(store)
    # exactly the rest: what the stopped run filed is the same bytes, the rest is new
    assert all(after[key] == data for key, data in before.items())
    filed_by_the_stopped_run = sum(1 for key in before if key.endswith(".dcm"))
    assert filed_by_the_stopped_run == stopped["counts"]["images copied"]
    assert list(store.root.rglob(".tmp-*")) == []


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_images_stops_the_run_cleanly(buckets, tmp_path, name):
    store, reference = buckets
    env = _held_env(tmp_path, store, "copy:.dcm:12:stop")
    process = _start(_python_m("warehouseloader"), env)
    _when_held(process, tmp_path / "held")
    process.send_signal(getattr(signal, name))
    out, err = process.communicate(timeout=120)
    stopped = _check_stopped_run(store, process, out, err, name, 128 + getattr(signal, name))
    assert stopped["counts"]["images copied"] >= 12
    _rerun_files_the_rest(store, reference, stopped)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_bin_wrapper_is_passed_on_and_reported(buckets, tmp_path, name):
    store, reference = buckets
    summary = tmp_path / "summary.txt"
    env = _held_env(tmp_path, store, "copy:.dcm:5:stop", RUN_SUMMARY_FILE=str(summary))
    wrapper = [str(builders.BIN / "python"), str(builders.REPO / "bin/warehouseloader")]
    process = _start(wrapper, env)
    _when_held(process, tmp_path / "held")
    process.send_signal(getattr(signal, name))  # to the wrapper alone, as ECS does
    out, err = process.communicate(timeout=120)
    code = 128 + getattr(signal, name)
    stopped = _check_stopped_run(store, process, out, err, name, code)
    assert f"and exited with code {code}." in err
    assert f"run stopped ({name})" in summary.read_text()  # what the notification carries
    _rerun_files_the_rest(store, reference, stopped)


def test_a_second_signal_exits_at_once_and_quietly(buckets, tmp_path):
    store, reference = buckets
    env = _held_env(tmp_path, store, "copy:.dcm:3:never")
    process = _start(_python_m("warehouseloader"), env)
    _when_held(process, tmp_path / "held")
    process.send_signal(signal.SIGINT)
    seen = []
    for line in process.stderr:  # the run says it stops (and cannot: its copy is held)
        seen.append(line)
        if "SIGINT received: stopping" in line:
            break
    process.send_signal(signal.SIGINT)
    out, rest = process.communicate(timeout=60)
    err = "".join(seen) + rest
    assert process.returncode == 130
    assert "SIGINT again: exiting at once (exit code 130)" in err
    assert "Traceback" not in err and "Logging error" not in err and "internal error" not in err
    assert len(err.splitlines()) < 30, err
    assert "run summary" not in out
    # the next run takes the lease over (its holder is gone) and files everything
    _rerun_completes(store, reference)


def test_a_run_that_does_not_stop_in_time_ends_at_once_with_its_report(buckets, tmp_path):
    store, reference = buckets
    # the listing of the warehouse side never returns: only the deadline ends the run
    env = _held_env(tmp_path, store, "list:training/:1:never", WAREHOUSE_TEST_GRACE="1")
    process = _start(_python_m("warehouseloader"), env)
    _when_held(process, tmp_path / "held")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-3000:]
    _one_stop_line(err, "SIGTERM")
    report = _run_report(store)
    assert report["stopped"] == "SIGTERM"
    assert report["fatal"].startswith("the run did not stop within 1 s of SIGTERM")
    assert LEASE_KEY not in builders.snapshot(store)
    _rerun_completes(store, reference)


def test_a_sharded_run_passes_the_signal_on_and_reports_it(buckets, tmp_path):
    store, reference = buckets
    env = _held_env(tmp_path, store, "copy:.dcm:4:stop", WAREHOUSE_PROCESSES="2")
    process = _start(_python_m("warehouseloader"), env)
    _when_held(process, tmp_path / "held")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    assert "run stopped (SIGTERM)" in out
    command_lines = [
        line
        for line in err.splitlines()
        if "stopped by SIGTERM" in line and not line.startswith("[")
    ]
    assert len(command_lines) == 1, err[-3000:]
    assert "Traceback" not in err
    report = _run_report(store)  # the combined report
    assert report["stopped"] == "SIGTERM" and report["completed"] is False
    counts = report["counts"]
    assert counts["images copied"] + counts[NOT_REACHED] == IMAGES
    assert LEASE_KEY not in builders.snapshot(store)
    assert "reports/warehouseloader/latest.json" not in {i.key for i in store.list("reports/")}
    _rerun_files_the_rest(store, reference, report)


def test_dataprocess_stopped_publishes_no_batch_and_says_so(buckets, tmp_path):
    store, _ = buckets
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    assert builders.python_m("warehouseloader", env=env).returncode == 0
    assert builders.python_m("dataprocess", env=env).returncode == 0
    processed = store.processed()
    latest = processed.read("latest.csv")
    # something new, so that a run would build a batch; the run is held reading it
    patient = PATIENTS[0]
    group = "training" if _training(patient) else "validation"
    store.write(f"{group}/data/{patient}/status_2021-03-01.json", clinical(patient, SITE))
    # (a reconcile reads every clinical file again: one of those reads is held)
    held = _held_env(tmp_path, store, "read:/data/:1:stop", WAREHOUSE_RECONCILE="true")
    process = _start(_python_m("dataprocess"), held)
    _when_held(process, tmp_path / "held")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    _one_stop_line(err, "SIGTERM")
    assert processed.read("latest.csv") == latest  # no batch published
    reports = sorted(i.key for i in store.list("reports/dataprocess/") if i.key.endswith("Z.json"))
    stopped = json.loads(store.read(reports[-1]))
    assert stopped["stopped"] == "SIGTERM" and stopped["completed"] is False
    assert LEASE_KEY not in builders.snapshot(store)
    again = builders.python_m("dataprocess", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert processed.read("latest.csv") != latest


def test_submittingcentres_stopped_prints_no_list(buckets, tmp_path):
    store, _ = buckets
    env = _held_env(tmp_path, store, "read:/data/:1:stop")
    process = _start(_python_m("submittingcentres"), env)
    _when_held(process, tmp_path / "held")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert out == ""  # a partial list would be taken for the whole
    _one_stop_line(err, "SIGINT")
    assert "run stopped (SIGINT)" in err


def test_dataprocess_and_the_loader_never_overlap(buckets, tmp_path):
    store, _ = buckets
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{store.root}")
    # a loader run holds the warehouse (held mid-run): dataprocess exits 3, naming it
    loader = _start(_python_m("warehouseloader"), _held_env(tmp_path, store, "copy:.dcm:2:stop"))
    _when_held(loader, tmp_path / "held")
    refused = builders.python_m("dataprocess", env=env)
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert "another run holds the warehouse since" in refused.stderr
    assert "(warehouseloader run " in refused.stderr
    assert not list(store.processed().list(""))  # nothing built from a half-filed warehouse
    loader.send_signal(signal.SIGTERM)
    loader.communicate(timeout=120)
    assert loader.returncode == 143
    # and a dataprocess run holds it against the loader
    (tmp_path / "held").unlink()
    other = tmp_path / "other"
    other.mkdir()
    batch = _start(
        _python_m("dataprocess"),
        _held_env(other, store, "read:/data/:1:stop", WAREHOUSE_RECONCILE="true"),
    )
    _when_held(batch, other / "held")
    refused = builders.python_m("warehouseloader", env=env)
    assert refused.returncode == 3, refused.stderr[-3000:]
    assert "(dataprocess run " in refused.stderr
    batch.send_signal(signal.SIGTERM)
    batch.communicate(timeout=120)
    assert batch.returncode == 143
    assert LEASE_KEY not in builders.snapshot(store)


# --------------------------------------------------------------------------------------------
# the pieces, in this process


def test_a_stopped_pool_of_reads_starts_no_more_work_and_a_pool_of_writes_finishes():
    import threading

    from warehouse.core.run import WorkerPool
    from warehouse.core.stop import RunStop
    from warehouse.runtime.pools import OrderedPool

    stop = RunStop()
    workers = WorkerPool(1)
    running, release = threading.Event(), threading.Event()
    started: list[int] = []

    def work(n: int) -> int:
        started.append(n)
        if n == 0:
            running.set()
            release.wait(30)
        return n

    not_reached: list[int] = []
    reads = OrderedPool(workers, stop=stop, on_stopped=lambda n: not_reached.append(n) or [])
    writes = OrderedPool(workers)
    for n in range(5):
        reads.submit(work, n, then=lambda n: [("read", n)])
    assert running.wait(30)  # the first read runs, the others wait for the worker
    for n in range(10, 13):
        writes.submit(work, n, then=lambda n: [("written", n)])
    assert stop.request(15) == 1
    reads.submit(work, 5, then=lambda n: [("read", n)])  # submitted after the stop
    release.set()
    assert list(reads.drain()) == [("read", 0)]  # the one running finished
    assert not_reached == [1, 2, 3, 4, 5]
    assert list(writes.drain()) == [("written", 10), ("written", 11), ("written", 12)]
    assert started == [0, 10, 11, 12]  # no read was started after the stop
    workers.shutdown()


def test_a_stop_is_a_signal_before_the_run_ends_and_only_the_first():
    from warehouse.core.stop import RunStop

    now = [100.0]
    stop = RunStop(grace=20, clock=lambda: now[0])
    assert not stop.requested and stop.exit_code == 0 and stop.seconds_left() is None
    assert stop.request(signal.SIGTERM) == 1
    now[0] += 5
    assert stop.seconds_left() == 15
    assert stop.request(signal.SIGINT) == 2  # (the second: the handler exits at once)
    assert stop.name == "SIGTERM" and stop.exit_code == 143
    assert stop.close() is True and stop.close() is True
    assert stop.end_at_once() is False  # the run's own end came first

    late = RunStop()
    assert late.close() is False
    assert late.request(signal.SIGTERM) == 1
    assert not late.requested and late.exit_code == 0  # the run was ending: it ends as it was
    assert not late.wait_requested(0)

    ended = RunStop()
    ended.request(signal.SIGINT)
    assert ended.end_at_once() is True and ended.exit_code == 130
