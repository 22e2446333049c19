"""Sharded runs: the shard rule, the parts' reports, and whole runs made of separate processes
(a clinical phase, then N shards; ``WAREHOUSE_PROCESSES``) on both backends, which must give
exactly the warehouse one process gives."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import boto3
import psutil
import pytest

from tests import builders
from tests.builders import BIN, REPO
from warehouse.core.errors import StorageError
from warehouse.core.lease import LEASE_KEY
from warehouse.core.report import combine_reports
from warehouse.loader import shards
from warehouse.loader.shards import Handoff, RunPart, shard_of
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.wrappers import DelegatingStorage
from warehouse.synthetic import generate_tree

# ---------------------------------------------------------------------------- the shard rule


def test_shard_of_is_stable_across_processes_and_versions():
    # SHA-256 of the stem: these values must never change (a rerun must find its shard's work).
    assert [shard_of(f"image-{n}.dcm", 16) for n in range(8)] == [
        shard_of(f"image-{n}.dcm", 16) for n in range(8)
    ]
    script = "from warehouse.loader.shards import shard_of; print(shard_of('a.dcm', 16))"
    other = subprocess.run(
        [str(BIN / "python"), "-c", script],
        env=builders.graph_env(PYTHONHASHSEED="123"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(other.stdout) == shard_of("a.dcm", 16)


def test_images_that_can_claim_one_target_share_a_shard():
    for count in (2, 3, 4, 16, 10_000):
        # the same file name under two dates, and another suffix case: one stem, one shard
        assert shard_of("1.2.3.dcm", count) == shard_of("1.2.3.DCM", count)
        assert shard_of("x.Dcm", count) == shard_of("x.dcm", count)


def test_shards_split_names_evenly_and_one_shard_takes_everything():
    names = [f"1.2.826.0.1.{n}.dcm" for n in range(4000)]
    counts = [0] * 4
    for name in names:
        counts[shard_of(name, 4)] += 1
    assert min(counts) > 900 and max(counts) < 1100
    assert {shard_of(name, 1) for name in names} == {0}
    with pytest.raises(ValueError):
        shard_of("a.dcm", 0)


def test_a_part_owns_its_images_and_the_clinical_phase_none():
    part = RunPart(shards.IMAGE_PHASE, (1, 3))
    assert part.owns("a.dcm") == (shard_of("a.dcm", 3) == 1)
    assert not RunPart(shards.CLINICAL_PHASE).owns("a.dcm")
    assert part.label == "shard 1/3" and RunPart(shards.CLINICAL_PHASE).label == "clinical phase"


def test_part_keys():
    keys = shards.expected_part_keys("warehouseloader", "r1", 2)
    assert keys == [
        "reports/warehouseloader/runs/r1/clinical.json",
        "reports/warehouseloader/runs/r1/shard-0000-of-0002.json",
        "reports/warehouseloader/runs/r1/shard-0001-of-0002.json",
    ]


def test_handoff_round_trip_and_garbage():
    handoff = Handoff({"P1": "training"}, ["P1"], [["raw-a", "P2"]], {"P1": "C"}, {"P3": None})
    assert Handoff.from_dict(json.loads(json.dumps(handoff.as_dict()))) == handoff
    with pytest.raises(ValueError):
        Handoff.from_dict({"groups": []})


def _part(phase, shard=None, counts=None, problems=(), fatal=None, listed=True):
    return {
        "graph": "warehouseloader",
        "version": "1",
        "run_id": "r1",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:01:00+00:00",
        "completed": fatal is None,
        "fatal": fatal,
        "counts": counts or {},
        "not_filed": {"not a DICOM file": len(problems)} if problems else {},
        "problems": [{"key": k, "reason": "not a DICOM file"} for k in problems],
        "phase": phase,
        "shard": shard,
        "listed": listed,
    }


def test_combined_report_sums_the_parts():
    parts = {
        "c": _part("clinical", counts={"clinical files copied": 3}),
        "s0": _part("images", [0, 2], {"images copied": 5}, ["raw-a/d/images/x.dcm"]),
        "s1": _part("images", [1, 2], {"images copied": 7}, ["raw-a/d/images/a.dcm"]),
    }
    combined = combine_reports(parts, "r1", "warehouseloader")
    assert combined["counts"] == {"clinical files copied": 3, "images copied": 12}
    assert combined["not_filed"] == {"not a DICOM file": 2}
    assert [p["key"] for p in combined["problems"]] == [
        "raw-a/d/images/a.dcm",
        "raw-a/d/images/x.dcm",
    ]
    assert combined["completed"] and combined["listed"] and combined["shards"] == 2


def test_a_missing_or_failed_part_makes_the_run_incomplete():
    parts = {"c": _part("clinical"), "s0": None, "s1": _part("images", [1, 2], fatal="boom")}
    combined = combine_reports(parts, "r1", "warehouseloader")
    assert not combined["completed"] and not combined["listed"]
    assert "s0 was not written" in combined["fatal"] and "shard 1/2: boom" in combined["fatal"]


# ---------------------------------------------------------------------------- whole runs


def _stores(kind, tmp_path):
    """Two empty stores of one backend, ``(sharded, reference)``, and the bucket setting of
    the first."""
    if kind == "local":
        made = []
        for name in ("sharded", "reference"):
            (tmp_path / name).mkdir()
            (tmp_path / f"{name}-processed").mkdir()
            made.append(LocalStorage(tmp_path / name))
        return made[0], made[1], f"file://{made[0].root}"
    client = boto3.client("s3")
    names = []
    for _ in range(2):
        name = f"warehouse-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        client.create_bucket(Bucket=f"{name}-processed")
        names.append(name)
    return S3Storage(names[0], workers=8), S3Storage(names[1], workers=8), f"s3://{names[0]}"


def _tree(tmp_path) -> dict[str, bytes]:
    """The generator's tree (every site kind, faulty files, prefix_sites), with images
    uploaded twice: the same file under another date, and with an upper-case suffix."""
    root = tmp_path / "generated"
    generate_tree(root, patients=16, seed=5)
    files = {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }
    images = sorted(key for key in files if key.endswith(".dcm") and "/images/" in key)
    for key in images[:6:2]:
        prefix, date, _, name = key.split("/")
        files[f"{prefix}/2030-01-01/images/{name}"] = files[key]  # implausible: reported
        files[f"{prefix}/{date}/images/{name[:-4]}.DCM"] = files[key]
    for key in images[1:8:2]:
        prefix, date, _, name = key.split("/")
        later = f"{date[:-2]}{min(28, int(date[-2:]) + 1):02d}"
        files[f"{prefix}/{later}/images/{name}"] = files[key]  # the same target: one is filed
    return files


def _env(bucket: str, **extra) -> dict[str, str]:
    return builders.graph_env(**{"WAREHOUSE_BUCKET": bucket, "WAREHOUSE_WORKERS": "8", **extra})


def _loader(env) -> subprocess.Popen:
    return builders.start_loader(env, capture=True)


def run_sharded(bucket: str, count: int, run_id: str) -> list[subprocess.CompletedProcess]:
    """A clinical phase, then ``count`` shards at once, each a ``python -m`` process as an
    ECS task or an AWS Batch child runs it; their results."""
    clinical = builders.python_m(
        "warehouseloader",
        env=_env(bucket, WAREHOUSE_PHASE="clinical", WAREHOUSE_RUN_ID=run_id),
    )
    assert clinical.returncode == 0, clinical.stderr
    running = []
    for index in range(count):
        if count == 4:  # as AWS Batch says it to an array job's children
            part = {"WAREHOUSE_SHARDS": "4", "AWS_BATCH_JOB_ARRAY_INDEX": str(index)}
        else:
            part = {"WAREHOUSE_SHARD": f"{index}/{count}"}
        running.append(_loader(_env(bucket, WAREHOUSE_RUN_ID=run_id, **part)))
    results = [clinical]
    for process in running:
        out, err = process.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def _feedback(storage) -> dict[str, list]:
    return {
        info.key: json.loads(storage.read(info.key))["problems"]
        for info in storage.list("feedback/")
        if info.key.endswith("/latest.json")
    }


def check_same_run(sharded, reference, count: int):
    """The sharded warehouse is the reference's, key by key and byte by byte; its run report
    counts each input once, as the reference's does; no lease is left."""
    warehouse, expected = builders.snapshot(sharded), builders.snapshot(reference)
    assert sorted(warehouse) == sorted(expected)
    assert warehouse == expected
    assert LEASE_KEY not in warehouse
    report = json.loads(sharded.read("reports/warehouseloader/latest.json"))
    single = json.loads(reference.read("reports/warehouseloader/latest.json"))
    assert report["completed"] and report["shards"] == count
    pages = [i.key for i in sharded.list("reports/warehouseloader/") if i.key.endswith(".html")]
    pages.remove("reports/warehouseloader/latest.html")  # the whole list's page
    assert len(pages) == 1 and "/runs/" not in pages[0]  # the run's page, of the whole run
    # the run's own report: a first run's, every input not filed is new
    stamped = json.loads(sharded.read(pages[0].removesuffix(".html") + ".json"))
    assert stamped["previous"] is None and stamped["changes"]["resolved"] == []
    assert sorted((p["key"], p["reason"]) for p in stamped["changes"]["new"]) == sorted(
        (p["key"], p["reason"]) for p in single["problems"]
    )
    assert len(report["parts"]) == count + 1
    keys = [(p["key"], p["reason"]) for p in report["problems"]]
    assert len(keys) == len(set(keys))  # each input reported once
    assert sorted(keys) == sorted((p["key"], p["reason"]) for p in single["problems"])
    assert report["not_filed"] == single["not_filed"]
    lease = "run lease requests"
    assert {k: v for k, v in report["counts"].items() if k != lease} == {
        k: v for k, v in single["counts"].items() if k != lease
    }
    assert report["counts"]["images copied"] > 100
    assert report["counts_by_prefix"] == single["counts_by_prefix"]  # what each site's came to
    assert _feedback(sharded) == _feedback(reference)  # the sites see every shard's problems


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_shards_in_separate_processes_make_the_warehouse_one_process_makes(
    kind, count, tmp_path, request
):
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
    sharded, reference, bucket = _stores(kind, tmp_path)
    files = _tree(tmp_path)
    builders.put_tree(sharded, files)
    builders.put_tree(reference, files)
    assert builders.run_loader(reference, workers=8)[0] == 0

    results = run_sharded(bucket, count, f"run-{count}")
    for result in results:
        assert result.returncode == 0, result.stderr
    check_same_run(sharded, reference, count)
    # the shards' own reports are kept, each counting only its images
    parts = [
        json.loads(sharded.read(k))
        for k in shards.expected_part_keys("warehouseloader", f"run-{count}", count)
    ]
    assert parts[0]["counts"].get("images copied", 0) == 0
    assert (
        sum(p["counts"].get("images copied", 0) for p in parts)
        == json.loads(reference.read("reports/warehouseloader/latest.json"))["counts"][
            "images copied"
        ]
    )

    # a rerun, sharded or not, finds nothing to do and reads no unfiled input again
    rerun = builders.run_loader(sharded, workers=8)[1]
    assert "images copied" not in rerun.report.counts
    assert rerun.report.counts["unfiled inputs not read again (unchanged)"] == len(
        [p for p in rerun.report.problems if "modified" in p]
    )


def test_a_shard_that_ends_an_ended_run_leaves_its_report(tmp_path):
    """Two shards that finish at once may both end the run: the second finds latest.json
    already the run's and leaves it (a second report would count no feedback files)."""
    from warehouse.loader import parts as runs

    sharded, _, bucket = _stores("local", tmp_path)
    builders.put_tree(sharded, _tree(tmp_path))
    assert all(r.returncode == 0 for r in run_sharded(bucket, 2, "run-twice"))
    latest = sharded.read("reports/warehouseloader/latest.json")
    assert json.loads(latest)["counts"]["feedback files written"] > 0
    ended = runs.finish_run(sharded, "warehouseloader", "run-twice", 2, force=False)
    assert ended.report["run_id"] == "run-twice" and "another shard" in ended.lines
    assert sharded.read("reports/warehouseloader/latest.json") == latest


def test_a_shard_before_its_clinical_phase_or_with_bad_settings_stops(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    builders.put_tree(LocalStorage(root), {"config.json": builders.config(["raw-a"])})
    bucket = f"file://{root}"
    for env, code, message in [
        ({"WAREHOUSE_SHARD": "2/2", "WAREHOUSE_RUN_ID": "r"}, 2, "WAREHOUSE_SHARD='2/2'"),
        ({"WAREHOUSE_SHARD": "0/2"}, 2, "WAREHOUSE_SHARD=0/2 needs WAREHOUSE_RUN_ID"),
        (
            {"WAREHOUSE_SHARDS": "2", "AWS_BATCH_JOB_ARRAY_INDEX": "2", "WAREHOUSE_RUN_ID": "r"},
            2,
            "AWS_BATCH_JOB_ARRAY_INDEX='2'",
        ),
        ({"WAREHOUSE_PROCESSES": "two"}, 2, "WAREHOUSE_PROCESSES='two'"),
        # no clinical phase ran: the shard says so before it looks for the run's lease
        (
            {"WAREHOUSE_SHARD": "0/2", "WAREHOUSE_RUN_ID": "r"},
            2,
            "shard 0/2 of run r: its clinical phase wrote no report",
        ),
    ]:
        result = builders.python_m("warehouseloader", env=_env(bucket, **env))
        assert result.returncode == code, (env, result.stderr)
        assert message in result.stderr, result.stderr
    assert [info.key for info in LocalStorage(root).list("")] == ["config.json"]


class FailingListing(DelegatingStorage):
    """The raw side cannot be listed (a clinical phase that stops before its hand-off)."""

    def list(self, prefix):
        if prefix.startswith("raw-"):
            raise StorageError(f"listing refused: {prefix}")
        return self.inner.list(prefix)


def test_a_shard_whose_clinical_phase_failed_stops_with_a_settings_error(tmp_path):
    sharded, _, bucket = _stores("local", tmp_path)
    builders.put_tree(sharded, _tree(tmp_path))
    code, state = builders.run_loader(
        FailingListing(sharded), workers=4, phase="clinical", run_id="r"
    )
    assert code == 1 and "listing refused" in state.report.fatal
    assert LEASE_KEY not in builders.snapshot(sharded)  # no shard will use it: released
    shard = builders.python_m(
        "warehouseloader", env=_env(bucket, WAREHOUSE_SHARD="0/1", WAREHOUSE_RUN_ID="r")
    )
    assert shard.returncode == 2, shard.stderr
    assert "shard 0/1 of run r: its clinical phase did not complete (" in shard.stderr
    assert "listing refused" in shard.stderr
    assert not [k for k in builders.snapshot(sharded) if k.startswith(("training/", "validation/"))]


# ---------------------------------------------------------------------------- many processes


def _local_pair(tmp_path, files):
    sharded, reference, bucket = _stores("local", tmp_path)
    builders.put_tree(sharded, files)
    builders.put_tree(reference, files)
    assert builders.run_loader(reference, workers=8)[0] == 0
    return sharded, reference, bucket


def test_two_processes_under_bonobo_run(tmp_path):
    sharded, reference, bucket = _local_pair(tmp_path, _tree(tmp_path))
    result = subprocess.run(
        [str(BIN / "bonobo"), "run", str(REPO / "warehouse" / "warehouseloader.py")],
        cwd=tmp_path,
        env=_env(bucket, WAREHOUSE_PROCESSES="2"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    check_same_run(sharded, reference, 2)
    # one stream: every part's status lines, prefixed; one summary of the whole run at the end
    for part in ("clinical phase", "shard 0/2", "shard 1/2"):
        assert f"[{part}] - data_copy in=" in result.stderr
    assert result.stdout.count("warehouseloader run summary (2 shards)") == 1
    summary = result.stdout.split("warehouseloader run summary (2 shards)")[1]
    assert "shard 0/2: exit code 0" in summary and "shard 1/2: exit code 0" in summary
    assert "\x1b[" not in result.stderr


def test_two_processes_under_python_m_on_s3(s3_endpoint, tmp_path):
    sharded, reference, bucket = _stores("s3", tmp_path)
    files = _tree(tmp_path)
    builders.put_tree(sharded, files)
    builders.put_tree(reference, files)
    assert builders.run_loader(reference, workers=8)[0] == 0
    summary = tmp_path / "summary.txt"
    result = builders.python_m(
        "warehouseloader",
        env=_env(bucket, WAREHOUSE_PROCESSES="2", RUN_SUMMARY_FILE=str(summary)),
    )
    assert result.returncode == 0, result.stderr
    check_same_run(sharded, reference, 2)
    assert "run summary (2 shards)" in summary.read_text()


def test_json_logs_name_the_part_instead_of_a_prefix(tmp_path):
    sharded, _, bucket = _local_pair(tmp_path, _tree(tmp_path))
    result = builders.python_m(
        "warehouseloader", env=_env(bucket, WAREHOUSE_PROCESSES="2", WAREHOUSE_LOG_FORMAT="json")
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (result.stdout + result.stderr).splitlines() if line]
    assert {r["shard"] for r in records} >= {None, "clinical", "0/2", "1/2"}
    summary = [r for r in records if r.get("event") == "summary" and r["shard"] is None]
    assert len(summary) == 1 and summary[0]["exit_code"] == 0


def test_a_bad_config_stops_the_run_before_any_shard(tmp_path):
    sharded, _, bucket = _stores("local", tmp_path)
    builders.put_tree(sharded, {"config.json": b'{"raw_prefixes": ["raw-a"]}'})
    result = builders.python_m("warehouseloader", env=_env(bucket, WAREHOUSE_PROCESSES="2"))
    assert result.returncode == 2, result.stderr
    assert "training_percentage" in result.stderr + result.stdout
    assert "shards: not started" in result.stdout
    assert LEASE_KEY not in builders.snapshot(sharded)


def test_another_run_is_refused_while_a_sharded_run_holds_the_warehouse(tmp_path):
    sharded, _, bucket = _stores("local", tmp_path)
    builders.put_tree(sharded, _tree(tmp_path))
    process = _loader(_env(bucket, WAREHOUSE_PROCESSES="2", WAREHOUSE_WORKERS="1"))
    deadline = time.monotonic() + 60
    while LEASE_KEY not in {i.key for i in sharded.list("locks/")}:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    other = builders.python_m("warehouseloader", env=_env(bucket))
    process.communicate(timeout=180)
    assert other.returncode == 3, other.stderr
    assert process.returncode == 0


def _shard_processes(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in parent.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize("rerun_processes", ["1", "2"])
def test_a_shard_killed_and_a_rerun_finish_the_work(tmp_path, rerun_processes):
    """SIGKILL one shard half-way: the run ends with exit code 1, names the shard, keeps the
    last complete memo and releases the lease; the next run, sharded or not, finishes."""
    files = {"config.json": builders.config(["raw-a"], split=["Split Trust"])}
    for n in range(160):
        name, data = builders.image(f"Covid{n % 8 + 1}", "DX", f"s{n % 3}", "r1", n)
        files[f"raw-a/2021-01-01/images/{name}"] = data
    for p in range(1, 9):
        files[f"raw-a/2021-01-01/data/Covid{p}_data.json"] = builders.clinical(
            f"Covid{p}", "Split Trust"
        )
    sharded, reference, bucket = _local_pair(tmp_path, files)
    process = _loader(_env(bucket, WAREHOUSE_PROCESSES="2", WAREHOUSE_WORKERS="1"))
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 90
    victim = None
    while victim is None:
        assert time.monotonic() < deadline and process.poll() is None
        filed = [k for k in builders.snapshot(sharded) if k.startswith("training/xray/")]
        workers = _shard_processes(parent)
        if len(filed) >= 30 and len(workers) == 2:
            victim = workers[0]
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 1, err
    assert "killed by signal SIGKILL" in out
    partial = builders.snapshot(sharded)
    assert LEASE_KEY not in partial
    assert "reports/warehouseloader/latest.json" not in {i.key for i in sharded.list("reports/")}
    filed = [k for k in partial if k.startswith(("training/", "validation/"))]
    assert len(filed) < len(builders.snapshot(reference))

    rerun = builders.python_m(
        "warehouseloader", env=_env(bucket, WAREHOUSE_PROCESSES=rerun_processes)
    )
    assert rerun.returncode == 0, rerun.stderr
    assert builders.snapshot(sharded) == builders.snapshot(reference)
    assert list((tmp_path / "sharded").rglob(".tmp-*")) == []


class FailingCopies(DelegatingStorage):
    """Copies of images fail (a shard that ends with exit code 1)."""

    def copy(self, source_key, target_key, size=None):
        if source_key.endswith(".dcm"):
            raise StorageError(f"copy refused: {target_key}")
        self.inner.copy(source_key, target_key, size)


def test_a_failed_shard_leaves_work_the_next_run_finishes(tmp_path):
    files = _tree(tmp_path)
    sharded, reference, _ = _local_pair(tmp_path, files)
    assert builders.run_loader(sharded, workers=4, phase="clinical", run_id="r1")[0] == 0
    assert (
        builders.run_loader(sharded, workers=4, shard=(0, 2), phase="images", run_id="r1")[0] == 0
    )
    failing = FailingCopies(sharded)
    code, state = builders.run_loader(failing, workers=4, shard=(1, 2), phase="images", run_id="r1")
    assert code == 1 and state.report.failures > 0
    report = json.loads(sharded.read("reports/warehouseloader/latest.json"))
    assert report["shards"] == 2 and not report["completed"]
    assert LEASE_KEY not in builders.snapshot(sharded)  # the last part ended the run
    assert builders.run_loader(sharded, workers=4)[0] == 0
    assert builders.snapshot(sharded) == builders.snapshot(reference)


def test_sigterm_stops_every_part_and_gives_the_lease_back(tmp_path):
    """ECS stops a task with SIGTERM: the command stops its parts, releases the lease and
    exits 143; the next run finishes the work."""
    files = _tree(tmp_path)
    sharded, reference, bucket = _local_pair(tmp_path, files)
    process = _loader(_env(bucket, WAREHOUSE_PROCESSES="2", WAREHOUSE_WORKERS="1"))
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 90
    while not [k for k in builders.snapshot(sharded) if k.startswith("training/xray/")]:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    children = _shard_processes(parent)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 143
    assert not [child for child in children if child.is_running() and child.status() != "zombie"]
    assert LEASE_KEY not in builders.snapshot(sharded)
    assert builders.run_loader(sharded, workers=8)[0] == 0
    assert builders.snapshot(sharded) == builders.snapshot(reference)


def test_prefixed_lines_write_whole_lines_with_their_prefix(tmp_path):
    from warehouse.loader.processes import PrefixedLines

    path = tmp_path / "out.txt"
    with open(path, "wb") as handle:
        stream = PrefixedLines(handle.fileno(), "[shard 0/2] ")
        stream.write("- process_image in=1")
        stream.write(" [done]\nsecond\nthird, unfinished")
        assert not stream.isatty()
        stream.close()
    assert path.read_text() == (
        "[shard 0/2] - process_image in=1 [done]\n[shard 0/2] second\n"
        "[shard 0/2] third, unfinished\n"
    )
