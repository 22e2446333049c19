"""Releases: a selection written once, fetched again exactly later.

``select ... --release NAME`` writes it; ``--release NAME --download DIR`` later fetches
exactly that set (by S3 version where there is one), and refuses by name what changed with no
version to fall back on.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from tests import builders
from tests.builders import clinical, image
from tests.moto_conditions import serialise_conditional_requests
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_infrastructure import (
    PROCESSED,
    TEMPLATE,
    WAREHOUSE,
    CloudFormationLoader,
    allows,
    resource,
    statements,
)
from tests.test_warehouseloader import SPLIT
from warehouse import select as select_command
from warehouse.catalogue import releases
from warehouse.catalogue.releases import ReleaseError, ReleaseExists, name_problem, write_release
from warehouse.core.errors import StorageError
from warehouse.core.keys import parse_image_key
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage

OTHER = "Other Trust"
#: Each patient's clinical record: centre and the outcome fields (raw, as a site sends them).
PATIENTS = {
    "Covid1": (SPLIT, {"Death": 1, "ITU admission": 0, "Intubation": 1}),
    "Covid20": (SPLIT, {"Death": 0, "ITU admission": 1, "Intubation": 0}),
    "Covid7": (OTHER, {"Death": 0, "SwabDate": "05/01/2021"}),
    "Covid14": (SPLIT, {}),
}
SELECTION = ("--group", "training", "--modality", "xray")


def _upload(storage, patients, date, images_each=4, offset=0):
    files = {}
    for number, (patient, (centre, fields)) in enumerate(patients.items()):
        kind = "data" if number % 2 == 0 else "status"
        record = dict(fields)
        if kind == "data":
            record["Date of Positive Covid Swab"] = "01/03/2021"  # MM/DD/YYYY
        files[f"raw-a/{date}/data/{patient}_{kind}.json"] = clinical(patient, centre, **record)
        for n in range(offset, offset + images_each):
            modality = "CT" if n % 2 else "DX"
            name, data = image(patient, modality, f"s{n // 2}", "r1", n)
            files[f"raw-a/{date}/images/{name}"] = data
    builders.put_tree(storage, files)


def _warehouse(storage):
    builders.put_tree(
        storage, {"config.json": builders.config(["raw-a"], split=[SPLIT], training=[OTHER])}
    )
    _upload(storage, PATIENTS, "2021-01-01")
    assert builders.run_loader(storage, workers=4)[0] == 0
    assert run_dataprocess(storage, workers=4)[0] == 0


def _more_uploads(storage):
    """New images of the same patients and a new patient, loaded, and a new batch."""
    _upload(storage, {**PATIENTS, "Covid30": (SPLIT, {})}, "2021-02-01", offset=10)
    assert builders.run_loader(storage, workers=4)[0] == 0
    assert run_dataprocess(storage, workers=4)[0] == 0


def _selected_files(storage) -> dict[str, bytes]:
    """The oracle: every training xray image and its metadata file, from a listing."""
    found = {}
    for info in storage.list("training/"):
        key = parse_image_key(info.key)
        if key is not None and key.folder == "xray":
            found[key.key] = storage.read(key.key)
            found[key.metadata_key] = storage.read(key.metadata_key)
    return found


def _tree(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def _run(monkeypatch, storage, *args):
    monkeypatch.setenv("WAREHOUSE_BUCKET", storage.url)
    monkeypatch.setenv("WAREHOUSE_WORKERS", "4")
    return select_command.main([*args, "--no-progress"])


def _versioning(bucket, endpoint, status="Enabled"):
    client = boto3.client("s3", endpoint_url=endpoint)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})
    return client


@pytest.fixture(params=["local", "s3-versioned"])
def pinned_store(request):
    """A local store (content hashes only), or an S3 bucket that keeps versions."""
    if request.param == "local":
        return request.getfixturevalue("local_store")
    bucket = request.getfixturevalue("s3_bucket")
    _versioning(bucket, request.getfixturevalue("s3_endpoint"))
    return S3Storage(bucket, workers=8)


def test_a_release_later_downloads_byte_for_byte_the_first_set(
    pinned_store, monkeypatch, capsys, tmp_path
):
    store = pinned_store
    _warehouse(store)
    first = _selected_files(store)
    assert len(first) == 12  # 6 xray images (DX) of 3 patients, each with its metadata file
    assert _run(monkeypatch, store, *SELECTION, "--release", "xray-v1") == 0
    out = capsys.readouterr().out
    assert "release xray-v1 written to " in out and ": 6 images, 3 patients" in out
    how = "S3 version" if isinstance(store, S3Storage) else "SHA-256 (no version)"
    assert f"images pinned 6 by {how}" in out
    _more_uploads(store)
    assert len(_selected_files(store)) > len(first)  # the selection today is larger
    if isinstance(store, S3Storage):  # a versioned bucket keeps what was replaced or deleted
        replaced, deleted = sorted(k for k in first if k.endswith(".dcm"))[:2]
        store.write(replaced, b"replaced behind the product's back")
        boto3.client("s3").delete_object(Bucket=store.bucket, Key=deleted)
    target = tmp_path / "release"
    assert _run(monkeypatch, store, "--release", "xray-v1", "--download", str(target)) == 0
    assert _tree(target) == first
    assert f"{len(first)} files written, 0 already there" in capsys.readouterr().out
    # resuming: a file removed and a file with other bytes of the same size are fetched again
    one, two = sorted(first)[:2]
    (target / one).unlink()
    (target / two).write_bytes(bytes(len(first[two])))
    assert _run(monkeypatch, store, "--release", "xray-v1", "--download", str(target)) == 0
    assert _tree(target) == first
    assert f"2 files written, {len(first) - 2} already there" in capsys.readouterr().out


@pytest.fixture(params=["local", "s3"])
def unversioned_store(request):
    return request.getfixturevalue(f"{request.param}_store")


def test_a_changed_object_with_no_version_is_refused_by_name(
    unversioned_store, monkeypatch, capsys, tmp_path
):
    store = unversioned_store
    _warehouse(store)
    first = _selected_files(store)
    assert _run(monkeypatch, store, *SELECTION, "--release", "r1") == 0
    image_key = sorted(k for k in first if k.endswith(".dcm"))[0]
    metadata_key = sorted(k for k in first if k.endswith(".json"))[-1]
    store.write(image_key, first[image_key][:-4] + b"EDIT")  # same size, other bytes
    store.write(metadata_key, first[metadata_key] + b" ")
    capsys.readouterr()
    target = tmp_path / "release"
    code = _run(monkeypatch, store, "--release", "r1", "--download", str(target))
    out, err = capsys.readouterr()
    assert code == select_command.EXIT_CHANGED == 3, err
    assert "2 objects of the release changed" in err
    assert repr(image_key) in err and repr(metadata_key) in err
    unchanged = {k: v for k, v in first.items() if k not in (image_key, metadata_key)}
    assert _tree(target) == unchanged  # every other file is there; the changed ones are not
    assert f"{len(unchanged)} files written" in out


def test_an_existing_release_name_is_refused(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    assert _run(monkeypatch, local_store, *SELECTION, "--release", "same") == 0
    processed = local_store.processed()
    before = builders.snapshot(processed, "releases/")
    capsys.readouterr()

    def pinned_anyway(*args):
        raise AssertionError("a name already written is refused before any file is pinned")

    monkeypatch.setattr(select_command, "pins_of", pinned_anyway)
    args = ("--group", "training", "--release", "same")
    assert _run(monkeypatch, local_store, *args) == 2
    err = capsys.readouterr().err
    assert "release same already exists (written on 20" in err and ", 6 images)" in err
    assert err.count("\n") == 1
    assert builders.snapshot(processed, "releases/") == before


def _write_racing(processed, name, manifests):
    """Write release ``name`` from one thread per manifest at once; each thread's outcome."""
    barrier = threading.Barrier(len(manifests))
    outcomes: list = [None] * len(manifests)

    def write(number, manifest):
        document = {"manifest": {"sha256": hashlib.sha256(manifest).hexdigest()}, "n": number}
        barrier.wait()
        try:
            write_release(processed, name, manifest, document)
            outcomes[number] = "written"
        except ReleaseError as exc:
            outcomes[number] = exc

    threads = [threading.Thread(target=write, args=a) for a in enumerate(manifests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("same", [False, True], ids=["different", "same-manifest"])
def test_concurrent_writers_of_one_name_one_wins(store, monkeypatch, same):
    serialise_conditional_requests(monkeypatch)
    processed = store.processed()
    manifests = [b"one manifest" if same else f"manifest {n}".encode() for n in range(6)]
    outcomes = _write_racing(processed, "race", manifests)
    winners = [n for n, outcome in enumerate(outcomes) if outcome == "written"]
    assert len(winners) == 1, outcomes
    for number, outcome in enumerate(outcomes):
        if number not in winners:
            assert isinstance(outcome, ReleaseError)
            assert isinstance(outcome, ReleaseExists) or not same
    document = json.loads(processed.read("releases/race/release.json"))
    assert document["n"] == winners[0]
    manifest = processed.read("releases/race/manifest.parquet")
    assert hashlib.sha256(manifest).hexdigest() == document["manifest"]["sha256"]


def test_a_rerun_after_a_crash_completes_or_refuses(local_store, monkeypatch, capsys):
    _warehouse(local_store)
    real = LocalStorage.write_if_absent
    crashes = {"left": 2}

    def crash_before_release_json(self, key, data, content_type="application/json"):
        if key.endswith("/release.json") and crashes["left"]:
            crashes["left"] -= 1
            raise StorageError("the machine went away")
        return real(self, key, data, content_type)

    monkeypatch.setattr(LocalStorage, "write_if_absent", crash_before_release_json)
    assert _run(monkeypatch, local_store, *SELECTION, "--release", "crashed") == 1
    assert _run(monkeypatch, local_store, "--group", "training", "--release", "other") == 1
    capsys.readouterr()
    assert _run(monkeypatch, local_store, "--releases") == 0
    listed = capsys.readouterr().out
    assert "  crashed: incomplete (no release.json)" in listed
    assert "  other: incomplete (no release.json)" in listed
    # a half-written release is never read as one
    assert _run(monkeypatch, local_store, "--release", "crashed") == 2
    assert "no release crashed" in capsys.readouterr().err
    # the same selection completes it; another selection is refused
    assert _run(monkeypatch, local_store, *SELECTION, "--release", "crashed") == 0
    assert _run(monkeypatch, local_store, *SELECTION, "--release", "other") == 2
    assert "release other is incomplete" in capsys.readouterr().err
    assert _run(monkeypatch, local_store, "--releases") == 0
    listed = capsys.readouterr().out
    assert "  release crashed: 6 images" in listed and "2 releases in " in listed


@pytest.mark.parametrize(
    "name",
    ["", "../escape", "a/b", ".hidden", "a..b", "-flag", "é", "x\x1b[2J", "a" * 65, "a b", "/abs"],
)
def test_a_release_name_is_bounded_and_never_a_path(local_store, monkeypatch, capsys, name):
    assert name_problem(name) is not None
    with pytest.raises(SystemExit) as stopped:
        _run(monkeypatch, local_store, "--group", "training", f"--release={name}")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert not list(local_store.processed().list(""))
    with pytest.raises(ReleaseError):
        releases.release_keys(name)


@pytest.mark.parametrize("name", ["v1", "ct-positive_2021.03", "A" * 64, "0"])
def test_good_release_names(name):
    assert name_problem(name) is None
    assert releases.release_keys(name)[1] == f"releases/{name}/release.json"


def test_the_manifest_holds_the_rows_labels_and_pins(pinned_store, monkeypatch, capsys):
    store = pinned_store
    _warehouse(store)
    assert _run(monkeypatch, store, *SELECTION, "--release", "labels") == 0
    processed = store.processed()
    data = processed.read("releases/labels/manifest.parquet")
    document = json.loads(processed.read("releases/labels/release.json"))
    assert document["manifest"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["filters"]["groups"] == ["training"]
    assert document["filters"]["modalities"] == ["xray"]
    assert document["counts"]["images"] == 6 and document["counts"]["patients"] == 3
    assert document["batch"] and document["catalogue"].startswith(document["batch"] + "/")
    manifest = pq.read_table(io.BytesIO(data))
    assert manifest.schema.field("Rows").type == "int32"  # typed as the catalogue
    rows = manifest.to_pylist()
    oracle = _selected_files(store)
    assert {r["warehouse_key"] for r in rows} | {r["metadata_key"] for r in rows} == set(oracle)
    client = boto3.client("s3") if isinstance(store, S3Storage) else None
    for row in rows:
        for prefix, key in (("object", row["warehouse_key"]), ("metadata", row["metadata_key"])):
            content = oracle[key]
            assert row[f"{prefix}_size"] == len(content)
            if client is None:
                assert row[f"{prefix}_sha256"] == hashlib.sha256(content).hexdigest()
                assert row[f"{prefix}_version_id"] is None and row[f"{prefix}_etag"] is None
            else:
                head = client.head_object(Bucket=store.bucket, Key=key)
                assert row[f"{prefix}_version_id"] == head["VersionId"]
                assert row[f"{prefix}_etag"] == hashlib.md5(content).hexdigest()
        centre, fields = PATIENTS[row["PatientID"]]
        assert row["SubmittingCentre"] == centre
        assert row["death"] == (fields["Death"] == 1)
        assert row["itu_admission"] == ({0: False, 1: True}.get(fields.get("ITU admission")))
        assert row["intubation"] == ({0: False, 1: True}.get(fields.get("Intubation")))
        # a data file is a positive patient's (with its positive swab date, MM/DD/YYYY); a
        # SwabDate (DD/MM/YYYY) comes first
        expected = {
            "Covid1": (True, "2021-01-03"),
            "Covid20": (False, "None"),
            "Covid7": (True, "2021-01-05"),
        }
        assert (row["covid_positive"], str(row["swab_date"])) == expected[row["PatientID"]]


def test_a_manifest_edited_after_writing_is_refused(local_store, monkeypatch, capsys, tmp_path):
    _warehouse(local_store)
    assert _run(monkeypatch, local_store, *SELECTION, "--release", "r") == 0
    processed = local_store.processed()
    frame = pd.read_parquet(io.BytesIO(processed.read("releases/r/manifest.parquet")))
    buffer = io.BytesIO()
    frame.iloc[:1].to_parquet(buffer)
    processed.write("releases/r/manifest.parquet", buffer.getvalue())
    capsys.readouterr()
    code = _run(monkeypatch, local_store, "--release", "r", "--download", str(tmp_path / "d"))
    assert code == 2
    assert "is not the manifest release.json names" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_operators_may_write_and_fetch_releases():
    template = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)  # noqa: S506
    group = resource(template, "EtlGroup", "AWS::IAM::Group")
    policy = statements(group["Policies"])
    assert allows(policy, "s3:ListBucketVersions", WAREHOUSE)
    assert allows(policy, "s3:GetObjectVersion", f"{WAREHOUSE}/training/xray/P/1.2/1.3/x.dcm")
    assert allows(policy, "s3:PutObject", f"{PROCESSED}/releases/v1/release.json")
    assert allows(policy, "s3:GetObject", f"{PROCESSED}/releases/v1/manifest.parquet")


def test_a_flag_alone_with_a_release_name_selects(local_store, monkeypatch, capsys):
    """`--release NAME` with `--exclude-identifying` (or `--complete-volumes`) alone selects.

    It is a selection to write, not the release of that name to show: here it is refused as
    a selection (of both groups, or empty), and with `--both-groups` written.
    """
    _warehouse(local_store)
    capsys.readouterr()
    for flag in ("--exclude-identifying", "--complete-volumes"):
        assert _run(monkeypatch, local_store, flag, "--release", "clean") == 2
        # (a selection: of both groups, or, of complete volumes, none in these x-rays)
        assert capsys.readouterr().err.startswith("warehouse-select: the selection holds ")
    args = ("--both-groups", "--exclude-identifying", "--release", "clean")
    assert _run(monkeypatch, local_store, *args) == 0
    release = json.loads(local_store.processed().read("releases/clean/release.json"))
    assert release["filters"]["exclude_identifying"] is True
