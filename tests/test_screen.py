"""The identifying-data screen, end to end.

The profile's rules, hostile values, the profile's own checks, both policies end to end (local
and S3 over HTTP), the catalogue column, the dashboard's count per site and
``select --exclude-identifying``.

Headers are built with pydicom; the expected outcomes are written out by hand.
"""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from tests import builders
from tests.test_dataprocess import catalogue_bytes, read_batch, run_graph
from tests.test_warehouseloader import CountingStorage
from warehouse.catalogue.selection import Filters, select
from warehouse.dicom import screen
from warehouse.dicom.reader import LARGE_VALUE_BYTES, parse_header
from warehouse.dicom.screen import ProfileError, load_profile, screen_header
from warehouse.storage.local import LocalStorage

PROFILE = load_profile()
PSEUDONYM = "Covid1"
NAME = "DOE^JANE"
BIRTH = "19580314"
IDENTIFYING = {"PatientName": NAME, "PatientBirthDate": BIRTH}

#: What the brief requires of the profile: each attribute and its rule.
REQUIRED = {
    "PatientName": "empty-or-pseudonym",
    "PatientBirthDate": "year-only",
    "PatientAddress": "empty",
    "PatientTelephoneNumbers": "empty",
    "OtherPatientIDs": "empty",
    "OtherPatientIDsSequence": "empty",
    "ReferringPhysicianName": "empty",
    "PerformingPhysicianName": "empty",
    "OperatorsName": "empty",
    "InstitutionAddress": "empty",
    "MedicalRecordLocator": "empty",
    "BurnedInAnnotation": "not-YES",
}
#: A value of each VR an "empty" attribute of the profile has.
SAMPLE = {
    "PN": "Smith^John",
    "LO": "12 High Street",
    "SH": "01632 960000",
    "ST": "1 Hospital Road, Truro",
    "TM": "101500",
}


def screened(**values) -> list[str]:
    """Screen a header built with pydicom holding ``values``."""
    dataset = Dataset()
    dataset.PatientID = PSEUDONYM
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return screen_header(dataset, PROFILE, PSEUDONYM)


def test_the_profile_holds_what_the_brief_requires_with_its_references():
    rules = {a.keyword: a.rule for a in PROFILE.attributes}
    assert {keyword: rules.get(keyword) for keyword in REQUIRED} == REQUIRED
    assert all(a.reference.startswith("PS3.15 Annex E") for a in PROFILE.attributes)
    assert PROFILE.attributes[0].tag == 0x00100010  # the file's tags, as numbers
    assert len(PROFILE.digest) == 16


@pytest.mark.parametrize(
    "attribute", [a for a in PROFILE.attributes if a.rule == "empty"], ids=lambda a: a.keyword
)
def test_empty_rule(attribute):
    keyword = attribute.keyword
    if keyword == "OtherPatientIDsSequence":
        item = Dataset()
        item.PatientID = "MRN0001"
        assert screened(**{keyword: Sequence([item])}) == [keyword]
        assert screened(**{keyword: Sequence([])}) == []
        return
    from pydicom.datadict import dictionary_VR

    assert screened(**{keyword: SAMPLE[dictionary_VR(attribute.tag)]}) == [keyword]
    assert screened(**{keyword: ""}) == []
    assert screened() == []


@pytest.mark.parametrize(
    ("value", "broken"),
    [
        ("Doe^Jane", True),
        ("covid1", True),  # another case: not the pseudonym
        ("Covid1 Smith", True),
        ("Covid1", False),
        ("Covid1^^^", False),  # empty trailing name components
        ("", False),
        ("^^", False),
    ],
)
def test_patient_name_rule_empty_or_the_pseudonym(value, broken):
    assert screened(PatientName=value) == (["PatientName"] if broken else [])


@pytest.mark.parametrize(
    ("value", "broken"),
    [
        ("19580314", True),
        ("19581231", True),
        ("1958-03-14", True),
        ("195803", True),
        ("March 1958", True),
        ("1958\\19580314", True),  # one full date among the values
        ("1958", False),
        ("19580101", False),  # the year, written as a DA value must be
        ("", False),
    ],
)
def test_birth_date_rule_year_only(value, broken):
    assert screened(PatientBirthDate=value) == (["PatientBirthDate"] if broken else [])


@pytest.mark.parametrize(
    ("value", "broken"), [("YES", True), ("yes ", True), ("NO", False), ("", False)]
)
def test_burned_in_annotation_rule_not_yes(value, broken):
    assert screened(BurnedInAnnotation=value) == (["BurnedInAnnotation"] if broken else [])


def test_keywords_come_in_the_profile_order_and_nothing_else_counts():
    found = screened(
        BurnedInAnnotation="YES",
        OperatorsName="Tech^A",
        PatientName=NAME,
        PatientBirthDate=BIRTH,
        StudyDescription="CT chest of Jane Doe",  # free text: not screened
        InstitutionName="Royal Cornwall Hospital",  # not in the profile
    )
    assert found == ["PatientName", "PatientBirthDate", "OperatorsName", "BurnedInAnnotation"]


# --------------------------------------------------------------------------------------------
# through the loader's reader: raw bytes, hostile values


def file_bytes(*elements: tuple[int, str, object]) -> bytes:
    """Write a small CT image whose data set holds ``elements`` (tag, VR, value).

    A VR may be the wrong one for the tag: it is written as given.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1.77"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = "1.2.826.0.1.3680043.10.1.77"
    dataset.PatientID = PSEUDONYM
    dataset.Modality = "CT"
    for tag, vr, value in elements:
        dataset.add_new(tag, vr, value)
    dataset.add_new(0x7FE00010, "OW", b"\x00" * 8)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("elements", "broken"),
    [
        # a value too large to fetch: not shown clean
        ([(0x00100010, "PN", "A" * (LARGE_VALUE_BYTES + 2))], ["PatientName"]),
        ([(0x00100010, "OB", b"\xff\xfe<script>\x00")], ["PatientName"]),  # wrong VR, binary
        ([(0x00100010, "UN", b"Covid1  ")], []),  # wrong VR, but the pseudonym
        ([(0x00100030, "LO", "not a date at all")], ["PatientBirthDate"]),
        ([(0x00100030, "UN", b"19580101")], []),
        ([(0x00280301, "UN", b"YES ")], ["BurnedInAnnotation"]),
        ([(0x00081070, "PN", "\\".join(["Tech"] * 500))], ["OperatorsName"]),  # many values
        (
            [(0x00080005, "CS", "ISO_IR 192"), (0x00100010, "PN", b"\xc3\x28\xa0\xa1^\xf0")],
            ["PatientName"],  # bytes that are not UTF-8: never decoded
        ),
        ([(0x00101002, "SQ", Sequence([Dataset()]))], ["OtherPatientIDsSequence"]),
    ],
)
def test_hostile_values_are_screened_without_a_failure(elements, broken):
    header = parse_header(file_bytes(*elements))
    assert screen_header(header, PROFILE, PSEUDONYM) == broken


# --------------------------------------------------------------------------------------------
# the profile's own checks


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["attributes"][0].update(keyword="PatientNam"), "is not a DICOM keyword"),
        (lambda d: d["attributes"][0].update(tag="(0010,0020)"), "is not the tag of PatientName"),
        (lambda d: d["attributes"][0].update(tag="0010,0010"), "must be a tag written"),
        (lambda d: d["attributes"][0].update(rule="blank"), "must be one of empty"),
        (lambda d: d["attributes"][0].update(rule="year-only"), "cannot judge PatientName"),
        (lambda d: d["attributes"].append(dict(d["attributes"][0])), "is listed twice"),
        (lambda d: d["attributes"][0].pop("annex_e"), "'annex_e' is a required property"),
        (lambda d: d.update(attributes=[]), "attributes"),
    ],
)
def test_a_malformed_profile_is_refused_naming_the_problem(tmp_path, change, message):
    doc = json.loads(screen.PROFILE_PATH.read_text())
    change(doc)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=re.escape(message)) as raised:
        load_profile(path)
    assert str(path) in str(raised.value)


def test_a_profile_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text("{ not json")
    with pytest.raises(ProfileError, match="is not JSON"):
        load_profile(path)
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(tmp_path / "missing.json")


def test_the_loader_does_not_start_with_a_malformed_profile(local_store, tmp_path, monkeypatch):
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"name": "x", "version": 1, "attributes": [{"keyword": 3}]}))
    monkeypatch.setattr(screen, "PROFILE_PATH", bad)
    files, _ = policy_tree()
    builders.put_tree(local_store, files)
    code, state = builders.run_loader(local_store)
    assert code == 2
    assert state.report.config_problem
    assert "identifying-data profile" in state.report.fatal and str(bad) in state.report.fatal
    assert builders.snapshot(local_store, "training/") == {}
    assert builders.snapshot(local_store, "validation/") == {}


# --------------------------------------------------------------------------------------------
# both policies, end to end


def policy_tree(
    policies: dict[str, str] | None = None, identifying: bool = True
) -> tuple[dict[str, bytes], dict]:
    """Build two sites: raw-a (policy report) and raw-b (refuse, unless ``policies`` says).

    Each has a clean image and images with identifying data (without it when not
    ``identifying``: the same keys). Returns the files and ``image label -> raw key``.
    """
    named = IDENTIFYING if identifying else None
    burned = {"BurnedInAnnotation": "YES"} if identifying else None
    config = json.loads(builders.config(["raw-a", "raw-b"], split=["A Trust", "B Trust"]))
    config["identifying_data"] = {"raw-b": "refuse"} if policies is None else policies
    files = {"config.json": json.dumps(config).encode()}
    keys = {}
    for prefix, centre, patient in (("raw-a", "A Trust", "Covid1"), ("raw-b", "B Trust", "Covid2")):
        files[f"{prefix}/2021-03-01/data/{patient}_data.json"] = builders.clinical(patient, centre)
        images = {
            "clean": builders.image(patient, "DX", instance=1),
            "named": builders.image(patient, "DX", instance=2, extra=named),
            "burned": builders.image(patient, "CR", instance=3, extra=burned),
        }
        for label, (name, data) in images.items():
            key = f"{prefix}/2021-03-02/images/{name}"
            files[key] = data
            keys[f"{prefix[-1]}-{label}"] = key
    return files, keys


def filed_names(store) -> set[str]:
    warehouse = builders.snapshot(store, "training/") | builders.snapshot(store, "validation/")
    return {key.rsplit("/", 1)[1] for key in warehouse if key.endswith(".dcm")}


def every_text(store) -> str:
    """Every run report and feedback file in ``store``, as one text."""
    return "\n".join(
        store.read(info.key).decode("utf-8")
        for prefix in ("reports/", "feedback/")
        for info in store.list(prefix)
    )


def test_report_files_and_flags_refuse_does_not_file(store):
    files, keys = policy_tree()
    builders.put_tree(store, files)
    code, state = builders.run_loader(store)
    assert code == 0
    name = {label: key.rsplit("/", 1)[1] for label, key in keys.items()}
    assert filed_names(store) == {
        name["a-clean"],
        name["a-named"],
        name["a-burned"],
        name["b-clean"],
    }

    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert {(f["key"], f["detail"]) for f in report["flagged"]} == {
        (keys["a-named"], "PatientName, PatientBirthDate (filed: the policy of raw-a is report)"),
        (keys["a-burned"], "BurnedInAnnotation (filed: the policy of raw-a is report)"),
    }
    refused = {p["key"]: p for p in report["problems"] if p["key"].endswith(".dcm")}
    assert {key: (p["reason"], p["detail"]) for key, p in refused.items()} == {
        keys["b-named"]: ("identifying data in the header", "PatientName, PatientBirthDate"),
        keys["b-burned"]: ("identifying data in the header", "BurnedInAnnotation"),
    }
    assert (
        report["counts_by_prefix"]["raw-a"]["images filed with identifying data in the header"] == 2
    )
    assert (
        "images filed with identifying data in the header"
        not in report["counts_by_prefix"]["raw-b"]
    )
    assert report["not_filed"] == {"identifying data in the header": 2}

    # each site reads its own, by attribute name
    site_a = json.loads(store.read("feedback/raw-a/latest.json"))
    site_b = json.loads(store.read("feedback/raw-b/latest.json"))
    assert [f["key"] for f in site_a["flagged"]] == sorted([keys["a-named"], keys["a-burned"]])
    assert site_a["problems"] == [] and site_b["flagged"] == []
    assert [(p["key"], p["detail"]) for p in site_b["problems"]] == sorted(
        [
            (keys["b-named"], "PatientName, PatientBirthDate"),
            (keys["b-burned"], "BurnedInAnnotation"),
        ]
    )
    assert "raw-b" not in json.dumps(site_a)
    # never a value
    text = every_text(store)
    assert "PatientBirthDate" in text and "DOE" not in text and BIRTH not in text

    # the catalogue's column
    rows = {key.rsplit("/", 1)[1]: row for key, row in builders.catalogue_rows(store).items()}
    assert {n: rows[n]["identifying_attributes"] for n in rows} == {
        name["a-clean"]: [],
        name["a-named"]: ["PatientName", "PatientBirthDate"],
        name["a-burned"]: ["BurnedInAnnotation"],
        name["b-clean"]: [],
    }

    # a rerun does not read the refused images again; nothing is flagged again
    code, state = builders.run_loader(store)
    assert code == 0
    assert state.report.counts["unfiled inputs not read again (unchanged)"] == 2
    assert "flagged" not in json.loads(store.read("reports/warehouseloader/latest.json"))

    # raw-b's policy becomes report: its refused images are read again, filed and flagged
    config = json.loads(store.read("config.json"))
    config["identifying_data"] = {"raw-b": "report"}
    store.write("config.json", json.dumps(config).encode())
    code, state = builders.run_loader(store)
    assert code == 0
    assert {name["b-named"], name["b-burned"]} <= filed_names(store)
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert sorted(f["key"] for f in report["flagged"]) == sorted(
        [keys["b-named"], keys["b-burned"]]
    )
    assert report["problems"] == []


def test_the_screen_adds_no_request(local_store, tmp_path):
    """The same images with and without identifying values: the same requests, per image."""
    clean = LocalStorage(tmp_path / "clean")
    (tmp_path / "clean").mkdir()
    files, keys = policy_tree({})
    builders.put_tree(local_store, files)
    stripped, same_keys = policy_tree({}, identifying=False)
    assert same_keys == keys and stripped != files
    builders.put_tree(clean, stripped)
    runs = {}
    for label, store in (("identifying", local_store), ("clean", clean)):
        counting = CountingStorage(store)
        code, state = builders.run_loader(counting)
        assert code == 0
        reads = counting.calls["read"]
        runs[label] = ({key: reads.count(key) for key in keys.values()}, state.header_requests)
    assert runs["identifying"] == runs["clean"]
    assert set(runs["clean"][0].values()) == {1}  # one ranged read a header, either way
    assert filed_names(local_store) == filed_names(clean)


# --------------------------------------------------------------------------------------------
# the dashboard's count per site, and select


def test_the_dashboard_counts_flagged_images_per_site_as_an_independent_count(local_store):
    files, keys = policy_tree({})  # both sites report: everything filed
    builders.put_tree(local_store, files)
    assert builders.run_loader(local_store)[0] == 0
    assert run_graph(local_store)[0] == 0
    _, batch = read_batch(local_store.processed())
    html = batch["dashboard.html"].decode("utf-8")
    specs = json.loads(re.search(r"var specs = (.*?);\n", html)[1])
    shown = {
        (r["site"], r["status"]): r["images"]
        for r in specs["identifying_by_site"]["data"]["values"]
    }
    # independently: the parts' rows, by the first folder of their raw key
    expected: dict = {}
    for row in builders.catalogue_rows(local_store).values():
        status = "flagged" if row["identifying_attributes"] else "clean"
        site = row["raw_key"].split("/")[0]
        expected[(site, status)] = expected.get((site, status), 0) + 1
    assert (
        shown
        == expected
        == {
            ("raw-a", "flagged"): 2,
            ("raw-a", "clean"): 1,
            ("raw-b", "flagged"): 2,
            ("raw-b", "clean"): 1,
        }
    )

    images = pd.read_parquet(io.BytesIO(catalogue_bytes(batch)))
    kept = select(images, Filters(exclude_identifying=True, both_groups=True))
    assert len(images) == 6
    assert sorted(kept["raw_key"]) == sorted([keys["a-clean"], keys["b-clean"]])


def test_select_keeps_rows_not_screened_and_older_catalogues():
    catalogue = pd.DataFrame(
        {
            "group": ["training"] * 4,
            "modality_folder": ["xray"] * 4,
            "SubmittingCentre": ["A"] * 4,
            "upload_date": [None] * 4,
            "covid_positive": [True] * 4,
            "warehouse_key": ["k1", "k2", "k3", "k4"],
            "identifying_attributes": [None, [], ["PatientName"], ["OperatorsName", "x"]],
        }
    )
    kept = select(catalogue, Filters(exclude_identifying=True))
    assert list(kept["warehouse_key"]) == ["k1", "k2"]
    assert len(select(catalogue, Filters())) == 4
    older = catalogue.drop(columns=["identifying_attributes"])  # a batch before the screen
    assert len(select(older, Filters(exclude_identifying=True))) == 4


def test_select_help_says_null_rows_are_kept(capsys):
    from warehouse import select as command

    with pytest.raises(SystemExit):
        command.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--exclude-identifying" in text
        and "(filed before the screen, null in that column) are kept" in text
    )


def test_a_sharded_run_flags_and_refuses_as_one_process(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    store = LocalStorage(root)
    files, keys = policy_tree()
    builders.put_tree(store, files)
    result = builders.python_m(
        "warehouseloader",
        env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}", WAREHOUSE_PROCESSES="2"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert report["shards"] == 2
    assert sorted(f["key"] for f in report["flagged"]) == sorted(
        [keys["a-named"], keys["a-burned"]]
    )
    assert sorted(p["key"] for p in report["problems"]) == sorted(
        [keys["b-named"], keys["b-burned"]]
    )
    site_a = json.loads(store.read("feedback/raw-a/latest.json"))
    assert sorted(f["key"] for f in site_a["flagged"]) == sorted(
        [keys["a-named"], keys["a-burned"]]
    )


def test_counts_saved_before_the_screen_make_the_catalogue_merge_again():
    """A batch's saved counts without the screen's (an older version) are not reused.

    The next merge counts every row again (`merge.counted_scan` refuses them).
    """
    import gzip

    from warehouse.catalogue import merge

    document = {
        "rows": 1,
        "through": None,
        "beyond": [],
        "unsized_metadata": 0,
        "studies": [],
        "study_images": [],
        "image_bytes": [],
        "metadata_bytes": [],
        "summary": [],
    }
    with pytest.raises(ValueError, match="screened"):
        merge.counted_scan(gzip.compress(json.dumps(document).encode()), "/x", "b/images.parquet")


def test_rows_written_before_the_column_read_it_as_null():
    import pyarrow as pa

    from warehouse.catalogue.merge import MERGED_SCHEMA
    from warehouse.catalogue.rows import conformed

    older = pa.table({"warehouse_key": ["k1", "k2"], "Rows": pa.array([512, 1024], pa.int64())})
    table = conformed(older, MERGED_SCHEMA)
    assert table.schema == MERGED_SCHEMA
    assert table.column("identifying_attributes").to_pylist() == [None, None]
    assert table.column("Rows").to_pylist() == [512, 1024]  # (cast to the schema's int32)


def test_a_refusal_holds_while_the_policy_and_the_profile_are_the_same():
    from warehouse.core.config import parse_config
    from warehouse.loader.memo import still_holds

    def config(policy):
        doc = json.loads(builders.config(["raw-b"], split=["B Trust"]))
        doc["identifying_data"] = {"raw-b": policy}
        return parse_config(json.dumps(doc).encode())

    facts = {"attributes": ["PatientName"], "prefix": "raw-b", "profile": PROFILE.digest}
    problem = {"key": "raw-b/2021-03-02/images/x.dcm", "reason": "identifying data in the header"}
    assert still_holds({**problem, "facts": facts}, config("refuse"), None, set())
    assert not still_holds({**problem, "facts": facts}, config("report"), None, set())
    changed = {**facts, "profile": "0123456789abcdef"}  # refused by another profile
    assert not still_holds({**problem, "facts": changed}, config("refuse"), None, set())


def test_the_benchmark_measures_the_screen_and_the_parse(capsys):
    from benchmarks import screen as benchmark

    assert benchmark.main(["--images", "8", "--rounds", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["images"] == 8 and figures["flagged"] == 4  # every other header
    assert figures["profile_attributes"] == len(PROFILE.attributes)
    assert figures["screen_us_per_image"] > 0 and figures["parse_us_per_image"] > 0
