"""The leakage checks at filing time, on a local store and on S3 over HTTP (moto server).

A study, series, SOP instance or raw file content filed (or filed earlier in the run) under
another patient is refused: in one run, across runs (from the catalogue's newer parts and from
its index), and in a sharded run, whose race the next runs report. What the site reads of such
a refusal names neither the other patient, its site, nor any group.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import builders
from tests.test_dataprocess import run_graph as run_dataprocess
from warehouse.catalogue import index
from warehouse.catalogue.rows import SCHEMA, part_key
from warehouse.loader.shards import shard_of
from warehouse.synthetic import build_dicom

SITE_A, SITE_B = "Site A", "Site B"
ALPHA, BETA = "PatAlpha", "PatBeta"
STUDY = "study filed under another patient"
SERIES = "series filed under another patient"
INSTANCE = "instance filed under another patient"
CONTENT = "identical file filed under another patient"
TWO_PATIENTS = "filed under two patients in the warehouse"


def uid(*parts) -> str:
    return builders.uid("leakage", *parts)


def dicom(patient: str, study: str, series: str, sop: str) -> bytes:
    """An X-ray of ``patient`` with the UIDs the short names make."""
    return build_dicom(
        patient_id=patient,
        study_uid=uid(study),
        series_uid=uid(study, series) if series.startswith("r") else uid(series),
        sop_uid=uid(sop),
        modality="DX",
    )


def base_tree() -> dict[str, bytes]:
    """Two sites, each with one patient filed from its own prefix."""
    return {
        "config.json": builders.config(["raw-a", "raw-b"], split=[SITE_A, SITE_B]),
        f"raw-a/2021-01-04/data/{ALPHA}_data.json": builders.clinical(ALPHA, SITE_A),
        f"raw-b/2021-01-04/data/{BETA}_data.json": builders.clinical(BETA, SITE_B),
    }


def group_of(storage, patient: str) -> str:
    """The patient's group, read from where the warehouse holds its clinical folder."""
    (group,) = {i.key.split("/", 1)[0] for i in storage.list("") if f"/data/{patient}/" in i.key}
    return group


def problems(state) -> dict[str, dict]:
    return {p["key"]: p for p in state.report.problems}


def filed_images(storage) -> dict[str, bytes]:
    """Every filed image, by file name (its raw name)."""
    return {
        i.key.rsplit("/", 1)[1]: storage.read(i.key)
        for i in storage.list("")
        if i.key.endswith(".dcm") and i.key.split("/")[1] == "xray"
    }


def feedback(storage, prefix: str) -> dict:
    return json.loads(storage.read(f"feedback/{prefix}/latest.json"))


def content_id(storage, data: bytes) -> str:
    """The content id of raw bytes, computed here.

    On S3 the ETag (the MD5 of a one-part upload) and size, locally the SHA-256.
    """
    if storage.url.startswith("s3://"):
        return f"etag:{hashlib.md5(data).hexdigest()}:{len(data)}"
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def check_refused(storage, state, key: str, reason: str, value: str, *, other=ALPHA, mine=BETA):
    """Check that ``key`` was refused for ``reason`` and is not filed.

    The run report names both patients, their groups and the UID (or content).
    """
    problem = problems(state)[key]
    assert problem["reason"] == reason
    detail = problem["detail"]
    for said in (other, mine, group_of(storage, other), group_of(storage, mine), value):
        assert said in detail, (said, detail)
    assert problem["facts"]["other"] == other
    assert problem["facts"]["other_group"] == group_of(storage, other)
    assert problem["facts"]["patient"] == mine
    assert key.rsplit("/", 1)[1] not in filed_images(storage)


def check_neutral_feedback(storage, key: str, reason: str, other: str = ALPHA):
    """Check what the site of ``key`` reads of its refusal.

    It names no other patient (``other``), site, prefix, group or warehouse key.
    """
    prefix = key.split("/", 1)[0]
    document = feedback(storage, prefix)
    (entry,) = [p for p in document["problems"] if p["key"] == key]
    assert entry["reason"] == reason
    assert "another patient" in entry["detail"]
    text = json.dumps(document)
    other_prefix = "raw-a" if prefix == "raw-b" else "raw-b"
    for secret in (other, SITE_A, SITE_B, other_prefix, "training", "validation", "xray/"):
        assert secret not in text, secret


# -------------------------------------------------------------------------------- studies


@pytest.mark.parametrize("first", [ALPHA, BETA])
def test_a_study_under_two_patients_in_one_run_the_first_is_filed(store, first):
    """A site re-sends a study under a second pseudonym, in the same run.

    The image first in key order is filed, the other refused, whichever patient it is.
    """
    second = BETA if first == ALPHA else ALPHA
    # (no prefix_sites: any prefix may send any patient's images; raw-a's sort first)
    keys = {first: "raw-a/2021-01-05/images/x1.dcm", second: "raw-b/2021-01-05/images/x2.dcm"}
    tree = base_tree()
    tree[keys[ALPHA]] = dicom(ALPHA, "s1", "r1", "i1")
    tree[keys[BETA]] = dicom(BETA, "s1", "r2", "i2")  # the same study, its own series, instance
    builders.put_tree(store, tree)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    assert set(filed_images(store)) == {"x1.dcm"}
    check_refused(store, state, keys[second], STUDY, uid("s1"), other=first, mine=second)
    check_neutral_feedback(store, keys[second], STUDY, other=first)
    # the next run reads neither again and says the same
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and "header read requests" not in state.report.counts
    assert problems(state)[keys[second]]["reason"] == STUDY


@pytest.mark.parametrize("catalogue", ["newer part", "index"])
def test_a_study_under_two_patients_across_runs(store, monkeypatch, catalogue):
    """Alpha's study filed by one run; Beta's copy of it, uploaded later, refused by the next.

    Whether the catalogue's newer parts or its index (written by dataprocess) say whose the
    study is.
    """
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    tree = base_tree()
    tree["raw-a/2021-01-05/images/a1.dcm"] = dicom(ALPHA, "s1", "r1", "i1")
    tree["raw-a/2021-01-05/images/a2.dcm"] = dicom(ALPHA, "s1", "r1", "i2")
    builders.put_tree(store, tree)
    assert builders.run_loader(store, workers=4)[0] == 0
    if catalogue == "index":
        assert run_dataprocess(store, workers=4)[0] == 0
        pointer = json.loads(store.read(index.POINTER_KEY))
        assert pointer["format"] == index.INDEX_FORMAT and pointer["images"] == 2
    key = "raw-b/2021-01-06/images/b1.dcm"
    store.write(key, dicom(BETA, "s1", "r9", "i9"))
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    check_refused(store, state, key, STUDY, uid("s1"))
    check_neutral_feedback(store, key, STUDY)
    assert set(filed_images(store)) == {"a1.dcm", "a2.dcm"}


def test_a_series_under_two_patients_is_refused(store):
    """Beta's image in a study of its own but in Alpha's series."""
    tree = base_tree()
    tree["raw-a/2021-01-05/images/a1.dcm"] = dicom(ALPHA, "s1", "shared-series", "i1")
    tree["raw-b/2021-01-05/images/b1.dcm"] = dicom(BETA, "s2", "shared-series", "i2")
    builders.put_tree(store, tree)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    key = "raw-b/2021-01-05/images/b1.dcm"
    check_refused(store, state, key, SERIES, uid("shared-series"))
    check_neutral_feedback(store, key, SERIES)


# ------------------------------------------------------------------------------ instances


def test_the_same_instance_under_another_patient_is_refused_under_the_same_a_duplicate(store):
    """An SOP instance filed under Alpha is refused under Beta, a duplicate under Alpha.

    Sent again under Beta (new study and series): refused as another patient's; sent again
    under Alpha (another name): a duplicate, as before.
    """
    tree = base_tree()
    tree["raw-a/2021-01-05/images/a1.dcm"] = dicom(ALPHA, "s1", "r1", "i1")
    builders.put_tree(store, tree)
    assert builders.run_loader(store, workers=4)[0] == 0
    again = {
        "raw-b/2021-01-06/images/b1.dcm": dicom(BETA, "s2", "r1", "i1"),
        "raw-a/2021-01-06/images/a1-again.dcm": dicom(ALPHA, "s3", "r1", "i1"),
    }
    builders.put_tree(store, again)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    check_refused(store, state, "raw-b/2021-01-06/images/b1.dcm", INSTANCE, uid("i1"))
    check_neutral_feedback(store, "raw-b/2021-01-06/images/b1.dcm", INSTANCE)
    same = problems(state)["raw-a/2021-01-06/images/a1-again.dcm"]
    assert same["reason"] in ("duplicate image", "conflicting duplicate")
    assert BETA not in same["detail"] and "a1.dcm" in same["detail"]
    assert set(filed_images(store)) == {"a1.dcm"}


# -------------------------------------------------------------------------------- content


def _part_of_another_patient(storage, content: str) -> None:
    """Write a catalogue part listing an image of Beta whose raw file had ``content``.

    As another tool, or a version that filed by other rules, could have written it: the
    loader itself files an image under its header's PatientID, so byte-identical files it
    files name one patient.
    """
    row = {name: None for name in SCHEMA.names}
    study, series, sop = uid("b-study"), uid("b-series"), uid("b-sop")
    row.update(
        warehouse_key=f"{group_of(storage, BETA)}/xray/{BETA}/{study}/{series}/b.dcm",
        metadata_key=f"{group_of(storage, BETA)}/xray-metadata/{BETA}/{study}/{series}/b.json",
        raw_key="raw-b/2021-01-04/images/b.dcm",
        group=group_of(storage, BETA),
        modality_folder="xray",
        upload_date=dt.date(2021, 1, 4),
        object_size=10,
        PatientID=BETA,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID=sop,
        content_id=content,
    )
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), buffer)
    when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    storage.write(part_key(when), buffer.getvalue().to_pybytes())


@pytest.mark.parametrize("catalogue", ["newer part", "index, full run"])
def test_identical_content_filed_under_another_patient_is_refused(store, monkeypatch, catalogue):
    """A raw file whose bytes the catalogue holds filed under Beta is refused for Alpha.

    By a daily run when a newer part holds it, by a full run when the index does (a daily run
    does not read the index's contents: `test_a_daily_run_leaves_the_index_s_contents_to_the
    _certificate`). The product's own content id of each filed image is the one computed here.
    """
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    builders.put_tree(store, base_tree())
    assert builders.run_loader(store, workers=4)[0] == 0  # (the patients and their groups)
    data = dicom(ALPHA, "s1", "r1", "i1")
    _part_of_another_patient(store, content_id(store, data))
    full = catalogue != "newer part"
    if full:
        assert run_dataprocess(store, workers=4)[0] == 0
    key = "raw-a/2021-01-06/images/a1.dcm"
    store.write(key, data)
    code, state = builders.run_loader(store, workers=4, reconcile=full)
    assert code == 0
    check_refused(store, state, key, CONTENT, content_id(store, data), other=BETA, mine=ALPHA)
    document = json.dumps(feedback(store, "raw-a"))
    assert BETA not in document and "raw-b" not in document and SITE_B not in document
    # another file of Alpha is filed, its content id its own
    other = dicom(ALPHA, "s1", "r1", "i2")
    store.write("raw-a/2021-01-06/images/a2.dcm", other)
    assert builders.run_loader(store, workers=4)[0] == 0
    assert filed_images(store) == {"a2.dcm": other}
    rows = [
        row
        for info in store.list("catalogue/images/")
        for row in pq.read_table(pa.BufferReader(store.read(info.key))).to_pylist()
        if row["PatientID"] == ALPHA
    ]
    assert [row["content_id"] for row in rows] == [content_id(store, other)]


def test_a_daily_run_leaves_the_index_s_contents_to_the_certificate(store, monkeypatch):
    """A content only the index holds under another patient: filed, then certified.

    A daily run reads no content arrays of the index (16 bytes an image), so it files the
    image, and the next batch's hold-out certificate counts it under two patients. (The loader
    itself cannot file such a pair: identical bytes name one patient and one SOP instance.
    Here Beta's row was written by hand, with Alpha's image's content.)
    """
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    builders.put_tree(store, base_tree())
    assert builders.run_loader(store, workers=4)[0] == 0
    data = dicom(ALPHA, "s1", "r1", "i1")
    _part_of_another_patient(store, content_id(store, data))
    assert run_dataprocess(store, workers=4)[0] == 0  # (the index now holds Beta's row)
    store.write("raw-a/2021-01-06/images/a1.dcm", data)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["images copied"] == 1
    assert run_dataprocess(store, workers=4)[0] == 0
    processed = store.processed()
    latest = processed.read("latest.csv").decode()
    batch = next(
        line.split(",", 1)[1].split("/")[0]
        for line in latest.splitlines()
        if line.startswith("images,")
    )
    certificate = json.loads(processed.read(f"{batch}/holdout.json"))
    check = certificate["checks"]["content_under_two_patients"]
    assert check["violations"] == 1
    assert sorted(h["pseudonym"] for h in check["listed"][0]["holders"]) == sorted([ALPHA, BETA])


# ---------------------------------------------------------------------------- sharded runs


def _name_in(shard: int, shards: int, stem: str) -> str:
    """An image name of ``shard`` (of ``shards``) that starts with ``stem``."""
    return next(f"{stem}{n}.dcm" for n in range(100) if shard_of(f"{stem}{n}.dcm", shards) == shard)


def _sharded_run(storage, run_id: str, shards: int = 2) -> None:
    settings = {"workers": 2, "run_id": run_id}
    assert builders.run_loader(storage, phase="clinical", **settings)[0] == 0
    for shard in range(shards):
        assert builders.run_loader(storage, shard=(shard, shards), **settings)[0] == 0


def _site_feedback(storage) -> str:
    return "".join(storage.read(info.key).decode() for info in storage.list("feedback/"))


def test_a_sharded_run_refuses_a_study_under_two_patients_within_a_shard(store):
    """Both images in one shard: the shard decides in key order, as one process does."""
    first, second = _name_in(1, 2, "a"), _name_in(1, 2, "b")
    tree = base_tree()
    tree[f"raw-a/2021-01-05/images/{first}"] = dicom(ALPHA, "s1", "r1", "i1")
    tree[f"raw-a/2021-01-05/images/{second}"] = dicom(BETA, "s1", "r2", "i2")
    builders.put_tree(store, tree)
    _sharded_run(store, "run-1")
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    refused = {p["key"]: p for p in report["problems"]}[f"raw-a/2021-01-05/images/{second}"]
    assert refused["reason"] == STUDY and ALPHA in refused["detail"]
    assert set(filed_images(store)) == {first}


def test_a_sharded_run_sees_what_is_filed_and_the_next_runs_report_what_two_shards_raced(
    store, monkeypatch
):
    """Shards see the index but not each other; the next runs report what they raced.

    A study filed before the run is refused in either shard; the same study under two
    patients in two shards is filed twice: the next run (from the shards' parts) and a full
    run (from the index) report it, for the operators, never to the sites.
    """
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    tree = base_tree()
    tree["raw-a/2021-01-05/images/filed.dcm"] = dicom(ALPHA, "s0", "r1", "i0")
    builders.put_tree(store, tree)
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0  # (the index says whose s0 is)
    first, second = _name_in(0, 2, "a"), _name_in(1, 2, "b")
    old = [_name_in(shard, 2, "old") for shard in (0, 1)]
    day = {
        f"raw-a/2021-01-06/images/{first}": dicom(ALPHA, "s1", "r1", "i1"),
        f"raw-b/2021-01-06/images/{second}": dicom(BETA, "s1", "r2", "i2"),
        f"raw-b/2021-01-06/images/{old[0]}": dicom(BETA, "s0", "r5", "i5"),
        f"raw-b/2021-01-06/images/{old[1]}": dicom(BETA, "s0", "r6", "i6"),
    }
    builders.put_tree(store, day)
    _sharded_run(store, "run-2")
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    reasons = {p["key"]: p["reason"] for p in report["problems"]}
    for name in old:
        assert reasons[f"raw-b/2021-01-06/images/{name}"] == STUDY
    assert {first, second} <= set(filed_images(store))  # the race let both through

    def raced(state) -> list[dict]:
        return [p for p in state.report.problems if p["reason"] == TWO_PATIENTS]

    code, state = builders.run_loader(store, workers=4)  # the next daily run
    assert code == 0
    (found,) = raced(state)
    assert uid("s1") in found["detail"] and ALPHA in found["detail"] and BETA in found["detail"]
    assert found["key"].split("/")[2] in (ALPHA, BETA) and found["key"].endswith(".dcm")
    assert TWO_PATIENTS not in _site_feedback(store)
    # once dataprocess folds the parts into the index, a reconcile finds it there
    assert run_dataprocess(store, workers=4)[0] == 0
    code, state = builders.run_loader(store, workers=4, reconcile=True)
    assert code == 0
    (found,) = raced(state)
    assert ALPHA in found["detail"] and BETA in found["detail"]
    assert found["key"] in {
        f"{group_of(store, patient)}/data/{patient}/" for patient in (ALPHA, BETA)
    }
    assert TWO_PATIENTS not in _site_feedback(store)


def test_the_checks_benchmark_times_the_lookups_and_finds_what_is_planted(capsys):
    """`benchmarks.checks` (run by `make bench`) prints the checks' CPU per image.

    The screen's and the leakage checks'; its lookups are the product's: a value claimed for
    one patient is found under another.
    """
    from benchmarks import checks as benchmark
    from warehouse.catalogue.run import LoaderCatalogue
    from warehouse.core.report import RunReport

    assert benchmark.main(["--owners", "1000", "--images", "400"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["leakage"]["images"] == 400 and figures["leakage"]["owners_per_kind"] == 1000
    assert figures["leakage"]["leakage_us_per_image"] > 0
    assert figures["screen"]["screen_us_per_image"] > 0
    # (two hundred images a study and a patient: nothing is another patient's)
    assert figures["leakage"]["found"] == 0

    catalogue = LoaderCatalogue(RunReport("warehouseloader"))
    catalogue._index = benchmark.owner_index(1000)
    values = {"study": "1.2.3", "series": "1.2.3.4", "content": "sha256:00"}
    catalogue.claim_owners(values, "Covid1", "training/ct/Covid1/a.dcm")
    assert catalogue.other_owner("study", "1.2.3", "Covid2").patient == "Covid1"
    assert catalogue.other_owner("study", "1.2.3", "Covid1") is None
