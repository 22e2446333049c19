"""The benchmark's own parts: the delaying, counting proxy, the floor clients and the figures.

The whole harness (``python -m benchmarks.run --quick``) takes longer than this suite allows
and is not run here; ``docs/performance.md`` says how to run it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid

import boto3
import pytest
from botocore.config import Config

from benchmarks import floor, run
from benchmarks.proxy import (
    DelayProxy,
    classify,
    read_counts,
    reset_counts,
    start_moto,
    start_proxy,
    subject_of,
)
from warehouse.dicom.reader import MAX_HEADER_ELEMENTS


@pytest.fixture
def proxy(moto_server):
    """A `DelayProxy` (50 ms) in front of the test's moto server, in a thread of this process;
    its delays are recorded in ``proxy.delays`` rather than waited."""
    delays = []
    server = DelayProxy(moto_server, delay=0.05, sleep=delays.append)
    server.delays = delays
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(url: str, pool: int = 10):
    return boto3.client(
        "s3",
        endpoint_url=url,
        config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
    )


def new_bucket(moto_server) -> str:
    name = f"bench-test-{uuid.uuid4().hex[:10]}"
    client_for(moto_server).create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize(
    ("method", "target", "headers", "expected"),
    [
        ("GET", "/b?list-type=2&prefix=raw-a%2F", {}, ("LIST", "other")),
        ("GET", "/b?location", {}, ("other", "other")),
        ("GET", "/b/raw-a/2021-01-04/images/x.DCM", {"Range": "bytes=0-9"}, ("GET-range", "image")),
        ("GET", "/b/raw-a/2021-01-04/data/P1_data.json", {}, ("GET", "clinical")),
        ("GET", "/b/config.json", {}, ("GET", "other")),
        ("PUT", "/b/training/xray-metadata/P/1/2/x.json", {}, ("PUT", "image")),
        ("PUT", "/b/reports/warehouseloader/t.json", {}, ("PUT", "other")),
        (
            "PUT",
            "/b/training/data/P1/data_2021-01-04.json",
            {"x-amz-copy-source": "b/raw-a/2021-01-04/data/P1_data.json"},
            ("COPY", "clinical"),
        ),
        (
            "PUT",
            "/b/training/xray/P/1/2/x.dcm",
            {"x-amz-copy-source": "/b/raw-a/2021-01-04/images/x%20y.dcm?versionId=3"},
            ("COPY", "image"),
        ),
        ("PUT", "/b", {}, ("other", "other")),
        ("HEAD", "/b/raw-a/x.dcm", {}, ("HEAD", "image")),
        ("DELETE", "/b/raw-a/x.dcm", {}, ("other", "image")),
    ],
)
def test_classify_kinds_and_subjects(method, target, headers, expected):
    assert classify(method, target, headers) == expected


def test_subject_of_keys():
    assert subject_of("raw-a/2021-01-04/images/1.2.3.dcm") == "image"
    assert subject_of("validation/ct-metadata/P/1/2/1.2.3.json") == "image"
    assert subject_of("raw-a/2021-01-04/data/P_status.json") == "clinical"
    assert subject_of("training/data/P/status_2021-01-04.json") == "clinical"
    assert subject_of("raw-a/2021-01-04/data/readme.csv") == "other"
    assert subject_of("config.json") == "other"


def test_proxy_forwards_delays_and_counts_by_kind(moto_server, proxy):
    bucket = new_bucket(moto_server)
    client = client_for(proxy.url, pool=1)
    image = bytes(range(256)) * 40
    reset_counts(proxy.url)

    client.put_object(Bucket=bucket, Key="raw-a/2021-01-04/images/x.dcm", Body=image)
    assert proxy.delays == [0.05]  # the delay is added, once per forwarded request

    client.copy_object(
        Bucket=bucket,
        Key="training/xray/P/1/2/x.dcm",
        CopySource={"Bucket": bucket, "Key": "raw-a/2021-01-04/images/x.dcm"},
    )
    head = client.get_object(Bucket=bucket, Key="raw-a/2021-01-04/images/x.dcm", Range="bytes=0-99")
    assert head["Body"].read() == image[:100]
    whole = client.get_object(Bucket=bucket, Key="training/xray/P/1/2/x.dcm")["Body"].read()
    assert whole == image
    assert client.head_object(Bucket=bucket, Key="training/xray/P/1/2/x.dcm")[
        "ContentLength"
    ] == len(image)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="raw-a/")
    assert [o["Key"] for o in listed["Contents"]] == ["raw-a/2021-01-04/images/x.dcm"]
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=bucket, Key="missing.json")

    counts = read_counts(proxy.url)
    assert counts["kinds"] == {
        "LIST": 1,
        "GET-range": 1,
        "GET": 2,
        "PUT": 1,
        "COPY": 1,
        "HEAD": 1,
        "other": 0,
    }
    assert counts["total"] == 7
    assert proxy.delays == [0.05] * 7  # (the proxy's own counts requests are not delayed)
    assert counts["subjects"]["image"] == {"PUT": 1, "COPY": 1, "GET-range": 1, "GET": 1, "HEAD": 1}
    assert counts["subjects"]["other"] == {"LIST": 1, "GET": 1}
    assert counts["status"] == {"2xx": 6, "4xx": 1}
    # The client's one pooled connection, kept alive throughout, and this read's own.
    assert counts["connections"] == 2

    reset_counts(proxy.url)
    assert read_counts(proxy.url)["total"] == 0


def test_proxy_runs_in_its_own_process(moto_server):
    server = start_proxy(moto_server, delay_ms=0)
    try:
        client = client_for(server.url)
        bucket = f"bench-test-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="config.json", Body=b"{}")
        assert client.get_object(Bucket=bucket, Key="config.json")["Body"].read() == b"{}"
        counts = read_counts(server.url)
        assert counts["kinds"]["PUT"] == 1 and counts["kinds"]["GET"] == 1
        assert server.process.pid != os.getpid()
    finally:
        server.stop()
    assert not server.process.is_alive()


def test_moto_runs_in_its_own_process():
    with start_moto() as server:
        assert server.url.startswith("http://127.0.0.1:")
        client = client_for(server.url)
        client.create_bucket(Bucket="bench-own-process")
        client.put_object(Bucket="bench-own-process", Key="a.json", Body=b"[]")
        assert client.get_object(Bucket="bench-own-process", Key="a.json")["Body"].read() == b"[]"
        assert server.process.pid != os.getpid()
    assert not server.process.is_alive()


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """A small synthetic tree (with its faulty files: an empty image among them)."""
    return run.make_tree(tmp_path_factory.mktemp("bench") / "tree", patients=4, images=12)


def test_make_tree_indexes_the_configured_raw_images(tiny_tree):
    assert len(tiny_tree.images) >= tiny_tree.expected_images == 12
    assert all(key.lower().endswith(".dcm") for key in tiny_tree.images)
    assert all(any(key.startswith(p) for p in tiny_tree.raw_prefixes) for key in tiny_tree.images)
    assert tiny_tree.clinical >= 4


def test_s3_floor_makes_three_requests_per_image(moto_server, proxy, tiny_tree):
    bucket = new_bucket(moto_server)
    run.seed_buckets(moto_server, [(bucket, tiny_tree)])
    reset_counts(proxy.url)

    figures = floor.s3_floor(bucket, tiny_tree.images, workers=4, client=client_for(proxy.url))

    images = len(tiny_tree.images)
    assert figures["images"] == images and "seconds" in figures  # (printed, not judged)
    counts = read_counts(proxy.url)
    assert counts["total"] == 3 * images
    assert counts["kinds"]["GET-range"] == counts["kinds"]["COPY"] == images
    assert counts["kinds"]["PUT"] == images
    client = client_for(moto_server)
    key = tiny_tree.images[0]
    copied = client.get_object(Bucket=bucket, Key=floor.FLOOR_PREFIX + key)["Body"].read()
    assert copied == (tiny_tree.root / key).read_bytes()
    written = client.get_object(Bucket=bucket, Key=floor.metadata_key(key))["Body"].read()
    assert json.loads(written)["key"] == key

    listing = floor.list_only(
        bucket, [*tiny_tree.raw_prefixes, "training/"], 4, client=client_for(moto_server)
    )
    root_files = sum(1 for p in tiny_tree.root.iterdir() if p.is_file())
    raw_files = sum(
        1
        for prefix in tiny_tree.raw_prefixes
        for p in (tiny_tree.root / prefix).rglob("*")
        if p.is_file()
    )
    assert listing["objects"] == root_files + raw_files


def test_local_floor_reads_writes_and_copies(tmp_path, tiny_tree):
    figures = floor.local_floor(tiny_tree.root, tmp_path / "out", tiny_tree.images, workers=4)

    assert figures["images"] == len(tiny_tree.images)
    for key in tiny_tree.images:
        copied = tmp_path / "out" / floor.FLOOR_PREFIX / key
        assert copied.read_bytes() == (tiny_tree.root / key).read_bytes()
        assert (tmp_path / "out" / floor.metadata_key(key)).is_file()


def test_floor_command_prints_json(tmp_path, tiny_tree, capsys):
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(tiny_tree.images[:3]) + "\n")
    argv = ["local", "--root", str(tiny_tree.root), "--out", str(tmp_path / "o"), "--keys"]
    assert floor.main([*argv, str(keys), "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3


def test_run_process_measures_peak_memory_of_the_child(tmp_path, monkeypatch):
    """The child holds its 120 MB until the poller has seen them (an event, not a sleep)."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    writer = os.open(gate, os.O_RDWR)  # the child's read of the pipe ends when this closes
    # (the pipe is opened before the memory grows: opened after, it could find the writer
    # closed already and wait for another for ever)
    grow = (
        f"g = open({str(gate)!r}); "
        "b = bytearray(120 << 20); b[::4096] = b'x' * (30 << 10); g.read()"
    )
    seen = threading.Event()
    peak_rss_kb = run._peak_rss_kb

    def watched(pid):
        kb = peak_rss_kb(pid)
        if kb >= 120 << 10:
            seen.set()
        return kb

    monkeypatch.setattr(run, "_peak_rss_kb", watched)
    done = []
    runner = threading.Thread(
        target=lambda: done.append(
            run.run_process([sys.executable, "-c", grow], {}, tmp_path / "grow.log")
        )
    )
    runner.start()
    try:
        assert seen.wait(60), "the poller never saw the child's memory"
    finally:
        os.close(writer)  # the child's read ends: it exits
        runner.join(60)
    (process,) = done
    assert process.exit_code == 0
    assert 120 <= process.max_rss_mb < 200
    small = run.run_process([sys.executable, "-c", "pass"], {}, tmp_path / "small.log")
    assert small.max_rss_mb < 60  # not the parent's high-water mark


def _figures(**overrides) -> dict:
    counts = {
        "total": 3300,
        "kinds": {"LIST": 20, "GET-range": 1010, "GET": 101, "PUT": 1001, "COPY": 1168},
        "subjects": {
            "image": {"GET-range": 1010, "COPY": 1000, "PUT": 1000},
            "clinical": {"GET": 100, "COPY": 168},
            "other": {"LIST": 20, "GET": 1, "PUT": 1},
        },
    }
    breakdown = run.request_breakdown(counts, raw_images=1000, clinical_files=134)
    figures = {
        "options": {"delay_ms": 20},
        "s3_loader": {
            "seconds": 20.0,
            "images": 1000,
            "images_per_second": 50.0,
            "images_copied": 990,
            "expected_images": 990,
            "cpu_ms_per_image": 5.0,
            "requests_breakdown": breakdown,
        },
        "s3_floor": {"images": 1000, "images_per_second": 55.0, "cpu_ms_per_image": 3.0},
        "single_worker": {"images_per_second": 4.0},
        "memory": {"250": 100.0, "1000": 110.0},
    }
    figures.update(overrides)
    return figures


def test_request_breakdown_separates_clinical_files():
    breakdown = _figures()["s3_loader"]["requests_breakdown"]
    assert breakdown["all"] == 3.3
    assert breakdown["without_clinical"] == 3.032
    assert breakdown["image_only"] == 3.01
    assert breakdown["clinical_per_file"] == 2.0
    assert breakdown["by_kind"]["COPY"] == 1.168


def test_evaluate_checks_each_target():
    figures = _figures()
    rows = run.evaluate(figures)

    checks = {name: c["result"] for name, c in figures["checks"].items()}
    assert checks == {
        "loader_vs_floor": "PASS",  # 50 / 55 = 0.91
        "loader_vs_single_worker": "PASS",  # 12.5
        "requests_per_image": "PASS",  # 3.032
        "peak_memory_mb": "PASS",
        "memory_growth_vs_images": "PASS",  # +10 % for +300 %
    }
    table = run.format_table(rows)
    assert "| loader / floor throughput at 20 ms" in table and "0.91" in table

    slow = _figures(single_worker={"images_per_second": 10.0}, memory={"250": 100, "1000": 250})
    run.evaluate(slow)
    assert slow["checks"]["loader_vs_single_worker"]["result"] == "FAIL"
    assert slow["checks"]["memory_growth_vs_images"]["result"] == "FAIL"


def test_parse_args_quick_and_defaults():
    args = run.parse_args(["--quick", "--images", "900"])
    assert (args.patients, args.images, args.serial_images) == (60, 900, 60)
    defaults = run.parse_args([])
    assert (defaults.patients, defaults.images, defaults.memory_sizes) == (800, 8000, "2000,8000")
    assert defaults.delay_ms == 20.0 and defaults.workers is None and not defaults.check


def test_notes_say_which_request_figure_is_checked():
    figures = _figures(machine={"cpus": 2})
    figures["s3_loader"]["cpu_seconds_during_run"] = {"machine_busy_cores": 1.9, "others": 0}
    text = " ".join(" ".join(run.notes(figures)).split())
    assert "checked against 3.032" in text and "it holds" in text
    assert "all requests / raw images = 3.3, which would NOT hold" in text
    assert "bound by CPU" in text


def test_hostile_files_are_what_they_claim(tmp_path, tiny_tree):
    import json as json_module
    import shutil

    from benchmarks.hostile import MB, add_hostile_files
    from warehouse.dicom.problems import HeaderTooComplex, NotDicom
    from warehouse.dicom.reader import parse_header

    root = tmp_path / "hostile"
    shutil.copytree(tiny_tree.root, root)
    elements = MAX_HEADER_ELEMENTS + 10_000
    added = add_hostile_files(
        root,
        share=0.5,
        images=40,
        clinical_sizes={2 * MB: 1},
        header_elements=elements,
        long_strings=4,
        wide_records=2,
    )
    assert added["hostile files"] == 20 + 4 + 2
    folder = next(root.glob("raw-*/2021-06-01"))
    big = sorted(folder.glob("images/big-value-*.dcm"))
    assert len(big) == added["images with a 20 MB private value"]
    assert big[0].stat().st_size > 20 * MB
    assert big[0].stat().st_blocks * 512 < 2 * MB  # sparse: the value is never written
    dataset = parse_header(big[0].read_bytes())
    assert dataset.PatientID.startswith("Covid9")
    garbage = sorted(folder.glob("images/garbage-*.dcm"))
    assert garbage and garbage[0].stat().st_size == 1024 * MB
    with pytest.raises(NotDicom):
        parse_header(garbage[0].read_bytes()[: 64 * 1024])
    (many,) = folder.glob("images/many-elements-*.dcm")
    assert added[f"images with {elements:,} tiny header elements"] == 1
    assert many.stat().st_size > elements * 12
    with pytest.raises(HeaderTooComplex):
        parse_header(many.read_bytes())
    (huge,) = [p for p in folder.glob("data/*.json") if p.stat().st_size > 1.5 * MB]
    assert json_module.loads(huge.read_text())["SubmittingCentre"]
    records = [json_module.loads(p.read_text()) for p in folder.glob("data/*.json")]
    long = [r for r in records if MB - 1024 < len(r["SubmittingCentre"] + r["Pseudonym"]) < MB]
    assert len(long) == 4 and sum(len(r) > 20_000 for r in records) == 2


def test_one_header_of_many_elements_is_measured(capsys):
    from benchmarks import hostile

    assert hostile.main(["--header-elements", str(MAX_HEADER_ELEMENTS + 10_000)]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["outcome"].startswith(
        f"DICOM header too complex: more than {MAX_HEADER_ELEMENTS:,}"
    )
    assert figures["peak_rss_mb"] >= figures["peak_rss_mb_before"] > 0


def test_dicom_json_benchmark_converts_the_real_world_headers(capsys):
    from benchmarks import dicom_json

    files = dicom_json.real_headers()
    assert len(files) > 80  # pydicom ships about 90 readable files
    assert dicom_json.main(["--rounds", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.match(rf"{len(files)} real-world headers \([0-9]+ naming a Specific Character", line)
    assert "): header_json_dict " in line and line.endswith("x)")


def test_dicom_json_benchmark_measures_headers_without_a_character_set(capsys):
    """``--character-set absent``: the same files written again without (0008,0005), the
    default repertoire (read back by pydicom: none names one, each still converts)."""
    import io

    import pydicom

    from benchmarks import dicom_json

    files = dicom_json.real_headers("absent")
    assert len(files) > 80
    for data in files:
        header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        assert "SpecificCharacterSet" not in header
    assert dicom_json.main(["--rounds", "1", "--character-set", "absent"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{len(files)} real-world headers (without Specific Character Set): ")


def test_catalogue_benchmark_measures_the_parts_and_a_reconcile(tmp_path, capsys):
    """A small round of ``python -m benchmarks.catalogue``: its figures are there and say what
    the catalogue should cost (one LIST and one PUT in a run that files images)."""
    import json

    from benchmarks import catalogue

    output = tmp_path / "figures.json"
    argv = ["--patients", "4", "--images", "24", "--delay-ms", "0", "--output", str(output)]
    assert catalogue.main(argv) == 0
    figures = json.loads(output.read_text())
    assert figures["first run"]["raw_images"] >= 24  # (with the generator's faulty files)
    assert figures["reconcile"]["images"] == 24
    assert figures["first run"]["catalogue_requests"].get("PUT", 0) >= 1
    assert "PUT" not in figures["rerun"]["catalogue_requests"]
    assert "reconcile cataloguing 24 images in no part" in capsys.readouterr().out
