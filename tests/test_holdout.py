"""The hold-out certificate (``holdout.json`` in each batch, the top of the internal page).

Its counts are checked against counts made here in plain Python: over the objects a real
loader run filed (metadata JSON, filed bytes, clinical folders), and over catalogue parts
written by hand with conflicting rows (the loader refuses most of those once it checks
leakage at filing time, so they are written directly).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from collections import defaultdict
from html.parser import HTMLParser

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import builders
from tests.builders import clinical, uid
from tests.test_dataprocess import replace_segment, stored_catalogue
from warehouse import dataprocess
from warehouse.catalogue import holdout
from warehouse.catalogue.rows import SCHEMA, part_bytes
from warehouse.core.config import Settings
from warehouse.dashboard import batch as batch_module
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.synthetic import build_dicom

CENTRE_A, CENTRE_B = "Alpha Trust", "Beta Trust"
GROUPS = ("training", "validation")
#: The catalogue column of each kind of value the certificate compares.
COLUMN = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
    "content": "content_id",
}
#: The DICOM JSON tag of each header kind.
TAG = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}
ALL_CHECKS = [
    "pseudonym_in_both_groups",
    *(f"{kind}_{what}" for kind in COLUMN for what in ("in_both_groups", "under_two_patients")),
]


def run_dataprocess(storage: Storage):
    services = dataprocess.get_services(settings=Settings(bucket=storage.url), storage=storage)
    code = dataprocess.run(services)
    return code, services["state"]


def latest_batch(processed: Storage) -> str:
    latest = pd.read_csv(io.BytesIO(processed.read("latest.csv")))
    return latest["path"].iloc[0].split("/")[0]


def certificate_of(storage: Storage) -> tuple[str, dict]:
    processed = storage.processed()
    batch = latest_batch(processed)
    return batch, json.loads(processed.read(f"{batch}/holdout.json"))


def counts(certificate: dict) -> dict[str, int]:
    return {name: check["violations"] for name, check in certificate["checks"].items()}


def own_digest(certificate: dict) -> str:
    """The digest as the README says a reader computes it (written here, not imported)."""
    body = dict(certificate)
    del body["digest"]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# a warehouse side written by hand: catalogue parts, metadata files and clinical folders


def row(patient, group, study, series, instance, content=None, name=None) -> dict:
    """One catalogue row of a CT image of ``patient`` filed in ``group``."""
    name = name or f"{instance}-{patient}"
    where = f"{group}/ct/{patient}/{study}/{series}/{name}"
    return {
        "warehouse_key": f"{where}.dcm",
        "metadata_key": f"{group}/ct-metadata/{patient}/{study}/{series}/{name}.json",
        "raw_key": f"raw-a/2021-03-01/images/{name}.dcm",
        "group": group,
        "modality_folder": "ct",
        "object_size": 100,
        "metadata_size": 50,
        "PatientID": patient,
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": instance,
        "Modality": "CT",
        "content_id": content,
    }


def metadata_json(item: dict) -> bytes:
    document = {
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00100020": {"vr": "LO", "Value": [item["PatientID"]]},
        "0020000D": {"vr": "UI", "Value": [item["StudyInstanceUID"]]},
        "0020000E": {"vr": "UI", "Value": [item["SeriesInstanceUID"]]},
        "00080018": {"vr": "UI", "Value": [item["SOPInstanceUID"]]},
    }
    return json.dumps(document).encode()


def part(rows: list[dict], columns=None) -> bytes:
    """A catalogue part of ``rows`` (the schema's columns a row leaves out are null)."""
    names = columns or [f.name for f in SCHEMA]
    table = pa.table(
        {name: pa.array([r.get(name) for r in rows], SCHEMA.field(name).type) for name in names}
    )
    return part_bytes(table)


def hand_made(storage: Storage, rows: list[dict], clinical_files=(), stamp="2021-03-02") -> None:
    """Write a warehouse side by hand.

    Its config, each row's metadata file, the rows as one catalogue part, and a clinical file
    for each ``(pseudonym, group)`` (each row's patient in its group, unless
    ``clinical_files`` says otherwise).
    """
    files = {
        "config.json": builders.config(["raw-a"], training=[CENTRE_A], validation=[CENTRE_B]),
        f"catalogue/images/{stamp}T00-00-00.000000Z.parquet": part(rows),
    }
    places = set(clinical_files) or {(r["PatientID"], r["group"]) for r in rows}
    for patient, group in places:
        centre = CENTRE_A if group == "training" else CENTRE_B
        files[f"{group}/data/{patient}/data_2021-03-01.json"] = clinical(patient, centre)
    for item in rows:
        files[item["metadata_key"]] = metadata_json(item)
    builders.put_tree(storage, files)


def clean_rows() -> list[dict]:
    """Two patients, one a group, each with its own study, series, instances and files."""
    return [
        row("P1", "training", "S1", "R1", "I1", "sha256:c1"),
        row("P1", "training", "S1", "R1", "I2", "sha256:c2"),
        row("P2", "validation", "S2", "R2", "I3", "sha256:c3"),
    ]


def test_a_clean_warehouse_is_all_zeros_and_its_certificate_reads_on_its_own(local_store):
    hand_made(local_store, clean_rows())
    code, state = run_dataprocess(local_store)
    assert code == 0
    batch, certificate = certificate_of(local_store)
    assert counts(certificate) == dict.fromkeys(ALL_CHECKS, 0)
    assert certificate["holds"] is True and certificate["violations"] == 0
    assert certificate["batch"] == batch == state.batch
    assert certificate["format"] == 1
    assert certificate["catalogue"]["rows"] == 3
    assert certificate["catalogue"]["unknown"] == {
        "study": 0,
        "series": 0,
        "instance": 0,
        "content": 0,
    }
    assert certificate["clinical_files"] == 2
    assert all(check["listed"] == [] for check in certificate["checks"].values())
    assert certificate["digest"] == own_digest(certificate)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", certificate["created"])


#: Each kind of violation, built by hand: the rows added to the clean warehouse (or its
#: clinical files), the counts the certificate must give and the value it must list with its
#: holders (pseudonym, group).
VIOLATIONS = {
    "a study under two patients, one group": (
        [row("P3", "training", "S1", "R9", "I9", "sha256:c9")],
        (),
        {"study_under_two_patients": 1},
        "S1",
        [("P1", "training"), ("P3", "training")],
    ),
    "a study in both groups": (
        [row("P2", "validation", "S1", "R9", "I9", "sha256:c9")],
        (),
        {"study_in_both_groups": 1, "study_under_two_patients": 1},
        "S1",
        [("P1", "training"), ("P2", "validation")],
    ),
    "a series under two patients": (
        [row("P3", "training", "S9", "R1", "I9", "sha256:c9")],
        (),
        {"series_under_two_patients": 1},
        "R1",
        [("P1", "training"), ("P3", "training")],
    ),
    "a series in both groups": (
        [row("P2", "validation", "S9", "R1", "I9", "sha256:c9")],
        (),
        {"series_in_both_groups": 1, "series_under_two_patients": 1},
        "R1",
        [("P1", "training"), ("P2", "validation")],
    ),
    "an instance under two patients": (
        [row("P3", "training", "S9", "R9", "I2", "sha256:c9")],
        (),
        {"instance_under_two_patients": 1},
        "I2",
        [("P1", "training"), ("P3", "training")],
    ),
    "an instance in both groups": (
        [row("P2", "validation", "S9", "R9", "I1", "sha256:c9")],
        (),
        {"instance_in_both_groups": 1, "instance_under_two_patients": 1},
        "I1",
        [("P1", "training"), ("P2", "validation")],
    ),
    "one file's content under two patients": (
        [row("P3", "training", "S9", "R9", "I9", "sha256:c1")],
        (),
        {"content_under_two_patients": 1},
        "sha256:c1",
        [("P1", "training"), ("P3", "training")],
    ),
    "content in both groups, two patients": (
        [row("P2", "validation", "S9", "R9", "I9", "sha256:c2")],
        (),
        {"content_in_both_groups": 1, "content_under_two_patients": 1},
        "sha256:c2",
        [("P1", "training"), ("P2", "validation")],
    ),
    "a pseudonym's images in both groups": (
        [row("P1", "validation", "S9", "R9", "I9", "sha256:c9")],
        (),
        {"pseudonym_in_both_groups": 1},
        "P1",
        [("P1", "training"), ("P1", "validation")],
    ),
    "a pseudonym's clinical files in both groups": (
        [],
        [("P1", "training"), ("P2", "validation"), ("P1", "validation")],
        {"pseudonym_in_both_groups": 1},
        "P1",
        [("P1", "training"), ("P1", "validation")],
    ),
    "a pseudonym's clinical file in the other group than its images": (
        [],
        [("P1", "validation"), ("P2", "validation")],
        {"pseudonym_in_both_groups": 1},
        "P1",
        [("P1", "training"), ("P1", "validation")],
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_each_kind_of_violation_built_by_hand(local_store, case):
    added, clinical_places, expected, value, holders = VIOLATIONS[case]
    rows = clean_rows() + added
    hand_made(local_store, rows, clinical_places)
    assert run_dataprocess(local_store)[0] == 0
    _, certificate = certificate_of(local_store)

    assert counts(certificate) == {name: expected.get(name, 0) for name in ALL_CHECKS}
    assert certificate["violations"] == sum(expected.values())
    assert certificate["holds"] is (not expected)
    assert certificate["digest"] == own_digest(certificate)
    for name in ALL_CHECKS:
        listed = certificate["checks"][name]["listed"]
        if name not in expected:
            assert listed == []
            continue
        (entry,) = listed
        if name == "pseudonym_in_both_groups":
            assert entry["pseudonym"] == value
            assert [(value, g["group"]) for g in entry["groups"]] == holders
            places = set(clinical_places) or {(r["PatientID"], r["group"]) for r in rows}
            for place in entry["groups"]:
                # the smallest warehouse key of its images there, and its clinical file there
                here = [
                    r["warehouse_key"]
                    for r in rows
                    if (r["PatientID"], r["group"]) == (value, place["group"])
                ]
                assert place["image"] == (min(here) if here else None)
                assert place["clinical"] == (
                    f"{place['group']}/data/{value}/data_2021-03-01.json"
                    if (value, place["group"]) in places
                    else None
                )
            continue
        assert entry["value"] == value
        assert [(h["pseudonym"], h["group"]) for h in entry["holders"]] == holders
        for holder in entry["holders"]:
            assert holder["warehouse_key"] == min(
                r["warehouse_key"]
                for r in rows
                if r[COLUMN[name.split("_")[0]]] == value
                and (r["PatientID"], r["group"]) == (holder["pseudonym"], holder["group"])
            )
        assert entry["more_holders"] is False


# --------------------------------------------------------------------------------------------
# a real run: the certificate against a count over what the loader filed


def raw_tree() -> dict[str, bytes]:
    """Three patients' uploads.

    Covid1 and Covid3 at a training site, Covid2 at a validation site; Covid2's image carries
    Covid1's StudyInstanceUID (a study re-sent under a second pseudonym: the loader's leakage
    check refuses it, so the warehouse holds four images).
    """
    files = {"config.json": builders.config(["raw-a"], training=[CENTRE_A], validation=[CENTRE_B])}
    images = [
        ("Covid1", uid("Covid1", "s1"), uid("Covid1", "s1", "r1"), 1),
        ("Covid1", uid("Covid1", "s1"), uid("Covid1", "s1", "r1"), 2),
        ("Covid1", uid("Covid1", "s2"), uid("Covid1", "s2", "r1"), 3),
        ("Covid2", uid("Covid1", "s1"), uid("Covid2", "s1", "r1"), 4),
        ("Covid3", uid("Covid3", "s1"), uid("Covid3", "s1", "r1"), 5),
    ]
    for patient, study, series, n in images:
        sop = uid(patient, "instance", n)
        data = build_dicom(
            patient_id=patient, study_uid=study, series_uid=series, sop_uid=sop, modality="CT"
        )
        files[f"raw-a/2021-03-01/images/{n}.dcm"] = data
    for patient, centre in (("Covid1", CENTRE_A), ("Covid2", CENTRE_B), ("Covid3", CENTRE_A)):
        files[f"raw-a/2021-03-01/data/{patient}_data.json"] = clinical(patient, centre)
    return files


def independent_counts(storage: Storage) -> tuple[dict[str, int], int]:
    """Count the checks here, and the images filed.

    Over the filed metadata JSON files (PatientID and UIDs), the filed images' bytes (their
    SHA-256) and the clinical folders.
    """
    holders: dict[str, dict[str, set]] = {kind: defaultdict(set) for kind in COLUMN}
    groups_of: dict[str, set] = defaultdict(set)
    images = 0
    for group in GROUPS:
        for info in storage.list(f"{group}/"):
            parts = info.key.split("/")
            if parts[1] == "data":
                groups_of[parts[2]].add(group)
            elif parts[1].endswith("-metadata"):
                document = json.loads(storage.read(info.key))
                patient = document["00100020"]["Value"][0]
                groups_of[patient].add(group)
                for kind, tag in TAG.items():
                    holders[kind][document[tag]["Value"][0]].add((patient, group))
                image_key = info.key.replace("-metadata/", "/", 1).removesuffix(".json") + ".dcm"
                content = hashlib.sha256(storage.read(image_key)).hexdigest()
                holders["content"][content].add((patient, group))
                images += 1
    found = {"pseudonym_in_both_groups": sum(1 for g in groups_of.values() if len(g) == 2)}
    for kind, values in holders.items():
        found[f"{kind}_in_both_groups"] = sum(
            1 for held in values.values() if len({g for _, g in held}) == 2
        )
        found[f"{kind}_under_two_patients"] = sum(
            1 for held in values.values() if len({p for p, _ in held}) > 1
        )
    return found, images


def test_the_counts_equal_an_independent_count_over_a_real_run(store):
    builders.put_tree(store, raw_tree())
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    refused = {p["key"]: p["reason"] for p in state.report.problems}
    assert refused["raw-a/2021-03-01/images/4.dcm"] == "study filed under another patient"
    # a patient's clinical file in the other group too, as an older warehouse may hold
    store.write("validation/data/Covid3/data_2021-03-02.json", clinical("Covid3", CENTRE_B))
    assert run_dataprocess(store)[0] == 0
    _, certificate = certificate_of(store)

    expected, images = independent_counts(store)
    assert counts(certificate) == expected
    assert expected["pseudonym_in_both_groups"] == 1  # (the test sees something)
    assert certificate["catalogue"]["rows"] == images == 4
    assert certificate["holds"] is (sum(expected.values()) == 0)
    listed = certificate["checks"]["pseudonym_in_both_groups"]["listed"]
    assert [entry["pseudonym"] for entry in listed] == ["Covid3"]


# --------------------------------------------------------------------------------------------
# the checks on their own: hashes that collide, parts spilled, candidates a few at a time


def planted_rows() -> list[dict]:
    """Build a catalogue of 40 patients with violations planted and unknown contents.

    Even patients are in training, odd ones in validation.
    """
    rows = []
    for p in range(40):
        patient, group = f"Pat{p:02d}", GROUPS[p % 2]
        for s in range(3):
            study = f"1.2.{p}.{s}"
            for i in range(4):
                instance = f"{study}.{i}"
                content = None if (p + i) % 7 == 0 else f"sha256:{instance}"
                rows.append(row(patient, group, study, f"{study}.9", instance, content))
    rows += [
        row("Pat00", "training", "1.2.1.0", "9.1", "9.1.1", "sha256:9.1.1"),  # study: 0 and 1
        row("Pat02", "training", "1.2.4.0", "9.2", "9.2.1", "sha256:9.2.1"),  # study: 2 and 4
        row("Pat03", "validation", "9.3", "1.2.5.1.9", "9.3.1", None),  # series: 3 and 5
        row("Pat06", "training", "9.6", "9.6", "1.2.7.2.3", "sha256:1.2.9.0.1"),  # two
        row("Pat08", "validation", "9.8", "9.8", "9.8.1", "sha256:9.8.1"),  # Pat08 in both
    ]
    return rows


def plain_counts(rows: list[dict], clinical_files=()) -> dict[str, int]:
    """The checks counted over ``rows`` and clinical files in plain Python."""
    holders: dict[str, dict[str, set]] = {kind: defaultdict(set) for kind in COLUMN}
    groups_of: dict[str, set] = defaultdict(set)
    for item in rows:
        place = (item["PatientID"], item["group"])
        groups_of[item["PatientID"]].add(item["group"])
        for kind, column in COLUMN.items():
            if item[column] is not None:
                holders[kind][item[column]].add(place)
    for pseudonym, group, _ in clinical_files:
        groups_of[pseudonym].add(group)
    found = {"pseudonym_in_both_groups": sum(1 for g in groups_of.values() if len(g) == 2)}
    for kind, values in holders.items():
        found[f"{kind}_in_both_groups"] = sum(
            1 for h in values.values() if len({g for _, g in h}) == 2
        )
        found[f"{kind}_under_two_patients"] = sum(
            1 for h in values.values() if len({p for p, _ in h}) > 1
        )
    return found


def certify_rows(tmp_path, rows, clinical_files=(), columns=None) -> dict:
    path = tmp_path / "catalogue.parquet"
    path.write_bytes(part(rows, columns))
    source = holdout.CatalogueSource.of_file(path, "part-1")
    now = pd.Timestamp("2026-01-02T03:04:05Z").to_pydatetime()
    return holdout.certify(source, list(clinical_files), batch="B", now=now, workdir=str(tmp_path))


def colliding_hashes(columns: list[pa.Array]) -> list[np.ndarray]:
    """A hash that collides all the time: the value's length, modulo 4."""
    return [
        np.array([len(v) % 4 if v is not None else 0 for v in c.to_pylist()], np.uint64)
        for c in columns
    ]


def test_colliding_hashes_spilled_parts_and_candidates_a_few_at_a_time_change_nothing(
    tmp_path, monkeypatch
):
    rows = planted_rows()
    clinical_files = [("Pat10", "validation", "validation/data/Pat10/data_2021-03-01.json")]
    expected = plain_counts(rows, clinical_files)
    assert sum(expected.values()) >= 6 and expected["content_under_two_patients"] == 1

    (tmp_path / "a").mkdir()
    reference = certify_rows(tmp_path / "a", rows, clinical_files)
    assert counts(reference) == expected
    assert reference["catalogue"]["unknown"]["content"] == sum(
        1 for r in rows if r["content_id"] is None
    )

    # every value collides with a quarter of the others, the pairs are spilled to many
    # files, two rows are read at a time, and three candidates are confirmed a pass
    monkeypatch.setattr(holdout, "_hash_columns", colliding_hashes)
    monkeypatch.setattr(holdout, "PART_PAIRS", 8)
    monkeypatch.setattr(holdout, "BATCH_ROWS", 2)
    monkeypatch.setattr(holdout, "CONFIRM_AT_ONCE", 3)
    (tmp_path / "b").mkdir()
    collided = certify_rows(tmp_path / "b", rows, clinical_files)
    assert collided == reference
    assert list((tmp_path / "b" / "holdout").iterdir()) == []  # (the spilled files are gone)
    assert (tmp_path / "b" / holdout.HASHES_FILE).exists()


def test_the_listing_is_capped_and_the_count_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(holdout, "MAX_LISTED", 2)
    monkeypatch.setattr(holdout, "MAX_HOLDERS", 2)
    rows = [
        row(f"Pat{p}", "training", f"S{s}", f"R{s}.{p}", f"I{s}.{p}", f"sha256:{s}.{p}")
        for s in (5, 3, 4, 1, 2)
        for p in (3, 1, 2)
    ]
    certificate = certify_rows(tmp_path, rows)
    check = certificate["checks"]["study_under_two_patients"]
    assert check["violations"] == 5
    assert [entry["value"] for entry in check["listed"]] == ["S1", "S2"]
    for entry in check["listed"]:
        assert [h["pseudonym"] for h in entry["holders"]] == ["Pat1", "Pat2"]
        assert entry["more_holders"] is True
    assert certificate["listed_at_most"] == 2 and certificate["holders_listed_at_most"] == 2


def test_rows_without_content_are_unknown_not_compared(tmp_path):
    rows = [
        row("Pat1", "training", "S1", "R1", "I1"),
        row("Pat2", "validation", "S2", "R2", "I2"),
    ]
    columns = [name for name in SCHEMA.names if name != "content_id"]  # an older part
    certificate = certify_rows(tmp_path, rows, columns=columns)
    assert certificate["holds"] is True
    assert certificate["catalogue"]["unknown"]["content"] == 2


# --------------------------------------------------------------------------------------------
# the pages


class _Cells(HTMLParser):
    """The holdout section of a page: its attributes, and each check row's count."""

    def __init__(self):
        super().__init__()
        self.section: dict | None = None
        self.checks: dict[str, int] = {}
        self._check: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and attributes.get("id") == "holdout":
            self.section = attributes
        if tag == "tr" and "data-check" in attributes:
            self._check = attributes["data-check"]
        if tag == "td" and self._check and "data-value" in attributes:
            self.checks[self._check] = int(attributes["data-value"])
            self._check = None


def page_cells(text: str) -> _Cells:
    cells = _Cells()
    cells.feed(text)
    return cells


HOSTILE = 'S1"><script>alert(1)</script>'


def local(tmp_path, name: str) -> LocalStorage:
    """A local bucket ``name`` (and its processed store) under ``tmp_path``."""
    (tmp_path / name).mkdir()
    (tmp_path / f"{name}-processed").mkdir()
    return LocalStorage(tmp_path / name)


def test_the_internal_page_shows_the_certificate_at_its_top_green_or_red(tmp_path):
    local_store = local(tmp_path, "clean")
    hand_made(local_store, clean_rows())
    assert run_dataprocess(local_store)[0] == 0
    batch, certificate = certificate_of(local_store)
    page = local_store.processed().read(f"{batch}/dashboard.html").decode()
    cells = page_cells(page)
    assert cells.section is not None
    assert cells.section["class"] == "panel holdout holds"
    assert cells.section["data-holds"] == "true"
    assert cells.checks == dict.fromkeys(ALL_CHECKS, 0)
    assert certificate["digest"] in page and 'id="holdout-violations"' not in page
    # at the top: before the first chart
    assert page.index('id="holdout"') < page.index('class="chart"')

    # the same warehouse with a hostile study shared by two patients of both groups
    rows = [dict(r, StudyInstanceUID=HOSTILE) for r in clean_rows()]
    rows.append(row("Leak7Alpha", "training", "S9", "R9", "I9", "sha256:c9"))
    rows.append(row("Leak7Alpha", "validation", "S8", "R8", "I8", "sha256:c8"))
    local_store = local(tmp_path, "broken")
    hand_made(local_store, rows)
    assert run_dataprocess(local_store)[0] == 0
    batch, certificate = certificate_of(local_store)
    page = local_store.processed().read(f"{batch}/dashboard.html").decode()
    cells = page_cells(page)
    assert cells.section["class"] == "panel holdout broken"
    assert cells.section["data-holds"] == "false"
    assert cells.section["data-violations"] == "3"
    expected = dict.fromkeys(ALL_CHECKS, 0)
    expected.update(pseudonym_in_both_groups=1, study_in_both_groups=1, study_under_two_patients=1)
    assert cells.checks == expected == counts(certificate)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, escaped
    assert 'id="holdout-violations"' in page and "Leak7Alpha" in page

    public = local_store.processed().read(f"{batch}/public.html").decode()
    for secret in ("Leak7Alpha", "alert(1)", "holdout.json", 'id="holdout', "Hold-out", "S9", "I9"):
        assert secret not in public


# --------------------------------------------------------------------------------------------
# the certificate goes with the batch it describes


def test_a_kept_batch_still_has_its_certificate_and_a_new_one_gets_its_own(
    local_store, monkeypatch
):
    rows = clean_rows() + [row("P2", "validation", "S1", "R9", "I9", "sha256:c9")]
    hand_made(local_store, rows)
    assert run_dataprocess(local_store)[0] == 0
    processed = local_store.processed()
    batch, first = certificate_of(local_store)
    stored = processed.read(f"{batch}/holdout.json")

    code, state = run_dataprocess(local_store)  # nothing changed: the last batch stands
    assert code == 0 and state.kept and state.batch == batch
    assert latest_batch(processed) == batch
    assert processed.read(f"{batch}/holdout.json") == stored
    assert first["batch"] == batch and first["digest"] == own_digest(first)

    # a clinical file changes (the catalogue stands as it was): a new batch, a new certificate
    # over the same catalogue, read from the last batch's segments
    local_store.write("training/data/P1/data_2021-03-01.json", clinical("P1", CENTRE_A, Age=40))
    # (a batch is named by the second it is built in: this one is not the same second's)
    monkeypatch.setattr(batch_module, "batch_name", lambda now: "2099-01-01T00-00-00Z")
    code, state = run_dataprocess(local_store)
    assert code == 0 and not state.kept
    later, second = certificate_of(local_store)
    assert later == state.batch == "2099-01-01T00-00-00Z" == second["batch"] != batch
    assert counts(second) == counts(first) and second["catalogue"] == first["catalogue"]
    assert second["digest"] == own_digest(second) != first["digest"]


def test_a_last_catalogue_written_before_content_id_is_merged_with_it_unknown(
    local_store, monkeypatch
):
    hand_made(local_store, clean_rows())
    assert run_dataprocess(local_store)[0] == 0
    processed = local_store.processed()
    batch = latest_batch(processed)
    # the last batch's catalogue as an older version wrote it: no content_id column
    images = stored_catalogue(processed, batch)
    replace_segment(processed, batch, images.drop_columns(["content_id"]))

    newer = [row("P3", "training", "S3", "R3", "I4", "sha256:c1")]  # P1's content again
    local_store.write("catalogue/images/2021-03-03T00-00-00.000000Z.parquet", part(newer))
    local_store.write(newer[0]["metadata_key"], metadata_json(newer[0]))
    monkeypatch.setattr(batch_module, "batch_name", lambda now: "2099-01-01T00-00-00Z")
    assert run_dataprocess(local_store)[0] == 0
    assert latest_batch(processed) == "2099-01-01T00-00-00Z" != batch
    _, certificate = certificate_of(local_store)
    assert certificate["catalogue"]["rows"] == 4
    assert certificate["catalogue"]["unknown"]["content"] == 3  # (the older rows)
    assert certificate["holds"] is True  # (P1's c1 is no longer known: not compared)
    merged = stored_catalogue(processed, latest_batch(processed))
    assert merged.column("content_id").to_pylist() == [None, None, None, "sha256:c1"]


def test_the_benchmark_prints_its_figures_and_finds_what_it_planted(capsys):
    from benchmarks import holdout as benchmark

    assert benchmark.main(["--rows", "3000"]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(printed[printed.index("{") :])
    assert figures["rows"] >= 3003 and figures["cpu_seconds"] >= 0
    assert figures["peak_rss_mb"] >= figures["before"]["peak_rss_mb"] > 0
    # a study, an instance and a content of the first patient, planted in the other group
    assert figures["violations"] == {
        f"{kind}_{what}": 1
        for kind in ("study", "instance", "content")
        for what in ("in_both_groups", "under_two_patients")
    }


# --------------------------------------------------------------------------------------------
# the certificate of a day's rows (`holdout.certify_day`)


#: A day's rows on top of the planted catalogue, and what they do.
DAYS = {
    "clean rows of a new patient": [
        row("Pat40", "training", "1.2.40.0", "1.2.40.0.9", f"1.2.40.0.{i}", f"sha256:40.{i}")
        for i in range(3)
    ],
    "new violations of every kind": [
        row("Pat41", "validation", "1.2.0.0", "1.2.0.0.9", "1.2.0.0.0", "sha256:1.2.0.0.0"),
        row("Pat10", "validation", "9.10", "9.10", "9.10.1", "sha256:1.2.12.1.1"),
    ],
    "another holder of a listed violation": [
        # study 1.2.1.0 (Pat01 and Pat00) gets Pat05, with a smaller key than theirs
        row("Pat05", "validation", "1.2.1.0", "9.5", "9.5.1", None, name="0-first"),
        row("Pat09", "validation", "1.2.9.1", "1.2.9.1.9", "1.2.9.1.7", None),  # clean
    ],
    "no rows": [],
}


def last_of(folder, rows, clinical_files=()) -> holdout.LastCertificate:
    """The certificate of a catalogue of ``rows`` and the value hashes kept with it."""
    folder.mkdir()
    certificate = certify_rows(folder, rows, clinical_files)
    return holdout.LastCertificate(certificate, pq.ParquetFile(folder / holdout.HASHES_FILE))


def bound_to(last: holdout.LastCertificate, certificate: dict, path) -> holdout.LastCertificate:
    """``certificate``, with a copy (at ``path``) of ``last``'s hashes that says it goes with it.

    Written here with pyarrow: the same row groups, the metadata's ``certificate`` changed.
    """
    assert last.hashes is not None
    about = json.loads(last.hashes.metadata.metadata[b"holdout"])
    about["certificate"] = certificate["digest"]
    with pq.ParquetWriter(path, last.hashes.schema_arrow) as writer:
        for number in range(last.hashes.num_row_groups):
            writer.write_table(last.hashes.read_row_group(number))
        writer.add_key_value_metadata({b"holdout": json.dumps(about).encode()})
    return holdout.LastCertificate(certificate, pq.ParquetFile(path))


def _certify_day(
    tmp_path, before, day, clinical_files=(), last=None, name="day", reads=None
) -> dict | None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "all.parquet").write_bytes(part(before + day))
    (folder / "day.parquet").write_bytes(part(day or [row("X", "training", "x", "x", "x")]))
    source = holdout.CatalogueSource.of_file(folder / "all.parquet", "part-2")
    if reads is not None:
        source = holdout.CatalogueSource(reads(source.read), source.through, source.rows)
    day_source = holdout.CatalogueSource.of_file(folder / "day.parquet")
    now = pd.Timestamp("2026-01-02T03:04:05Z").to_pydatetime()
    return holdout.certify_day(
        source,
        day_source.read if day else (lambda columns: iter(())),
        list(clinical_files),
        last if last is not None else last_of(folder / "last", before, clinical_files),
        batch="B",
        now=now,
        workdir=str(folder),
    )


def whole_certificate(tmp_path, rows, clinical_files=()) -> dict:
    """What `certify` makes of ``rows`` (as through the day's part ``part-2``)."""
    (tmp_path / "whole").mkdir()
    whole = certify_rows(tmp_path / "whole", rows, clinical_files)
    whole["catalogue"]["through"] = "part-2"
    whole["digest"] = holdout.certificate_digest(whole)
    return whole


def kept_hashes(path) -> dict[str, list[int]]:
    """A hashes file's hashes by kind, as its metadata groups its row groups."""
    file = pq.ParquetFile(path)
    about = json.loads(file.metadata.metadata[b"holdout"])
    return {
        kind: [h for n in groups for h in file.read_row_group(n).column(0).to_pylist()]
        for kind, groups in about["row_groups"].items()
    }


def expected_hashes(rows: list[dict]) -> dict[str, list[int]]:
    """Each kind's distinct hashes over the rows with a patient and a group, by DuckDB's SQL.

    The patients' (63 bits, shifted left, the group bit) under ``pseudonym``.
    """
    names = ["PatientID", "group", *COLUMN.values()]
    table = pa.table({name: pa.array([r[name] for r in rows], pa.string()) for name in names})
    found = {}
    holder = "PatientID IS NOT NULL AND \"group\" IN ('training', 'validation')"
    patient = "((hash(PatientID) & 9223372036854775807) << 1) | (\"group\" = 'validation')::UBIGINT"
    found["pseudonym"] = f"SELECT DISTINCT {patient} FROM catalogue WHERE {holder}"
    for kind, column in COLUMN.items():
        found[kind] = (
            f"SELECT DISTINCT hash({column}) FROM catalogue WHERE {holder} AND {column} IS NOT NULL"
        )
    connection = duckdb.connect()
    connection.register("catalogue", table)
    return {
        kind: sorted(v for (v,) in connection.execute(sql).fetchall())
        for kind, sql in found.items()
    }


@pytest.mark.parametrize("day", list(DAYS))
def test_a_day_s_certificate_is_the_one_a_whole_pass_makes(tmp_path, day):
    """Make, from the last certificate and the day's rows, the whole catalogue's certificate.

    The one `certify` makes: counts (against a plain count), listed values, holders, digest.
    The value hashes it keeps are those of the whole catalogue (as `certify` keeps them).
    """
    before, added = planted_rows(), DAYS[day]
    clinical_files = [("Pat12", "validation", "validation/data/Pat12/status_2021-03-01.json")]
    made = _certify_day(tmp_path, before, added, clinical_files)
    assert made == whole_certificate(tmp_path, before + added, clinical_files)
    assert counts(made) == plain_counts(before + added, clinical_files)
    if day == "another holder of a listed violation":
        listed = made["checks"]["study_under_two_patients"]["listed"]
        entry = next(e for e in listed if e["value"] == "1.2.1.0")
        assert [h["pseudonym"] for h in entry["holders"]] == ["Pat00", "Pat01", "Pat05"]
    assert kept_hashes(tmp_path / "day" / holdout.HASHES_FILE) == expected_hashes(before + added)
    assert kept_hashes(tmp_path / "whole" / holdout.HASHES_FILE) == expected_hashes(before + added)


def test_a_usual_day_reads_no_row_of_the_catalogue_and_one_filed_value_reads_its_column(
    tmp_path,
):
    """Read no catalogue row for a day of new values; for one filed value, its kind's column.

    (The pseudonym check reads no row while no patient is in both groups.)
    """
    before = clean_rows()
    passes: list[list[str]] = []

    def recorded(read):
        def reader(columns):
            passes.append(sorted(columns))
            return read(columns)

        return reader

    new = [row("P5", "training", "S5", "R5", "I5", "sha256:c5")]
    made = _certify_day(tmp_path, before, new, name="new", reads=recorded)
    assert made is not None and made["holds"] and passes == []

    # P6 (validation) files P1's series again: the series' and the study's columns are read
    again = [row("P6", "validation", "S6", "R1", "I6", "sha256:c6")]
    made = _certify_day(tmp_path, before, again, name="again", reads=recorded)
    assert made is not None
    assert counts(made) == plain_counts(before + again)
    assert made["checks"]["series_in_both_groups"]["violations"] == 1
    assert passes[0] == sorted(["PatientID", "group", "SeriesInstanceUID"])


def random_rows(rng: random.Random, n: int, start: int) -> list[dict]:
    """Draw ``n`` rows from a few patients, groups and values.

    So that days often hold values filed before (in the other group, under another patient),
    and sometimes none.
    """
    rows = []
    for number in range(start, start + n):
        patient = f"Pat{rng.randrange(6)}"
        group = rng.choice([*GROUPS, *GROUPS, None])
        rows.append(
            row(
                patient if rng.random() > 0.05 else None,
                group,
                f"S{rng.randrange(8)}",
                f"R{rng.randrange(12)}",
                f"I{rng.randrange(40)}",
                f"sha256:{rng.randrange(40)}" if rng.random() > 0.2 else None,
                name=f"n{number}",
            )
        )
    return rows


@pytest.mark.parametrize("seed", range(12))
def test_days_of_random_rows_carry_the_certificate_a_whole_pass_makes(tmp_path, seed):
    """Carry the certificate and its value hashes over three days of random rows.

    Each day's certificate is the one `certify` makes of the whole catalogue (its counts as a
    plain count says), and the hashes it keeps are those of every row (DuckDB's SQL).
    """
    rng = random.Random(seed)
    rows = random_rows(rng, 30, 0)
    clinical_files = [(f"Pat{p}", rng.choice(GROUPS), f"data/Pat{p}.json") for p in range(3)]
    last = last_of(tmp_path / "start", rows, clinical_files)
    for day in range(3):
        added = random_rows(rng, rng.randrange(0, 6), 100 * (day + 1))
        made = _certify_day(tmp_path, rows, added, clinical_files, last=last, name=f"day{day}")
        whole = whole_certificate(tmp_path / f"day{day}", rows + added, clinical_files)
        assert made == whole
        assert counts(made) == plain_counts(
            [r for r in rows + added if r["PatientID"] is not None and r["group"] is not None],
            clinical_files,
        )
        kept = tmp_path / f"day{day}" / holdout.HASHES_FILE
        assert kept_hashes(kept) == expected_hashes(rows + added)
        rows += added
        last = holdout.LastCertificate(made, pq.ParquetFile(kept))


def test_a_last_certificate_that_cannot_be_carried_means_a_whole_pass(tmp_path, monkeypatch):
    """Carry no certificate that cannot be trusted or does not add up (None).

    One that does not list every violation, was altered, is another warehouse's, or whose
    rows and the day's are not the catalogue's; nor one without its value hashes or with
    another's.
    """
    before, day = planted_rows(), DAYS["clean rows of a new patient"]
    last = last_of(tmp_path / "last", before)
    assert last.certificate is not None
    assert _certify_day(tmp_path, before, day, last=last, name="carried") is not None
    altered = json.loads(json.dumps(last.certificate))
    altered["checks"]["study_under_two_patients"]["violations"] += 1
    assert (
        _certify_day(
            tmp_path, before, day, last=bound_to(last, altered, tmp_path / "a.pq"), name="altered"
        )
        is None
    )
    altered["digest"] = holdout.certificate_digest(altered)  # (digested again: listed 1 short)
    assert (
        _certify_day(
            tmp_path, before, day, last=bound_to(last, altered, tmp_path / "s.pq"), name="short"
        )
        is None
    )
    # (the pseudonyms' check is made again in full: what the last one said of it is not used)
    pseudonyms = json.loads(json.dumps(last.certificate))
    pseudonyms["checks"]["pseudonym_in_both_groups"]["violations"] += 5
    pseudonyms["digest"] = holdout.certificate_digest(pseudonyms)
    made = _certify_day(
        tmp_path, before, day, last=bound_to(last, pseudonyms, tmp_path / "p.pq"), name="pseudonyms"
    )
    assert made is not None and counts(made) == plain_counts(before + day)
    # ... but not with hashes that go with another certificate, or none
    other_hashes = holdout.LastCertificate(pseudonyms, last.hashes)
    assert _certify_day(tmp_path, before, day, last=other_hashes, name="other-hashes") is None
    no_hashes = holdout.LastCertificate(last.certificate, None)
    assert _certify_day(tmp_path, before, day, last=no_hashes, name="no-hashes") is None
    other = {**last.certificate, "warehouse": "s3://another"}
    other["digest"] = holdout.certificate_digest(other)
    assert (
        _certify_day(
            tmp_path, before, day, last=bound_to(last, other, tmp_path / "o.pq"), name="other"
        )
        is None
    )
    # the last certificate of fewer rows than the catalogue less the day's
    assert _certify_day(tmp_path, before + day, day, last=last, name="more") is None
    # ... or without the counts the day's are added to (another layout)
    uncounted = json.loads(json.dumps(last.certificate))
    del uncounted["catalogue"]["unknown"]
    uncounted["digest"] = holdout.certificate_digest(uncounted)
    bound = bound_to(last, uncounted, tmp_path / "u.pq")
    assert _certify_day(tmp_path, before, day, last=bound, name="uncounted") is None
    monkeypatch.setattr(holdout, "MAX_LISTED", 1)  # (the last lists 1 of each check's 2 or 3)
    capped = last_of(tmp_path / "capped", before)
    assert _certify_day(tmp_path, before, day, last=capped, name="capped-day") is None


def test_value_hashes_of_another_hash_or_out_of_order_mean_a_whole_pass(tmp_path, monkeypatch):
    """Use no hashes file made by another hash function, nor one whose hashes are not sorted."""
    before, day = planted_rows(), DAYS["clean rows of a new patient"]
    last = last_of(tmp_path / "last", before)
    assert last.hashes is not None
    monkeypatch.setattr(holdout, "HASH_FUNCTION", "another-hash")
    assert _certify_day(tmp_path, before, day, last=last, name="another") is None
    monkeypatch.undo()
    about = json.loads(last.hashes.metadata.metadata[b"holdout"])
    backwards = tmp_path / "backwards.parquet"
    with pq.ParquetWriter(backwards, last.hashes.schema_arrow) as writer:
        for number in range(last.hashes.num_row_groups):
            table = last.hashes.read_row_group(number)
            writer.write_table(table.take(pa.array(range(table.num_rows - 1, -1, -1))))
        writer.add_key_value_metadata({b"holdout": json.dumps(about).encode()})
    reordered = holdout.LastCertificate(last.certificate, pq.ParquetFile(backwards))
    assert _certify_day(tmp_path, before, day, last=reordered, name="backwards") is None
    assert not (tmp_path / "backwards" / holdout.HASHES_FILE).exists()  # (no half-written one)


def test_a_daily_batch_carries_the_last_certificate_and_a_replaced_row_checks_every_row(
    local_store, monkeypatch
):
    """Carry a day's certificate from the last one; check every row after a replaced row.

    Both count what a plain count of the catalogue's rows says.
    """
    calls = []
    for name in ("certify", "certify_day"):
        real = getattr(batch_module, name)
        monkeypatch.setattr(
            batch_module,
            name,
            lambda *args, _real=real, _name=name, **kwargs: (
                calls.append(_name) or _real(*args, **kwargs)
            ),
        )
    rows = clean_rows()
    hand_made(local_store, rows)
    assert run_dataprocess(local_store)[0] == 0
    assert calls == ["certify"]  # (the first batch: no certificate to carry)

    def a_day(stamp, added) -> dict:
        """A part of ``added`` rows, then a dataprocess run: its certificate."""
        local_store.write(f"catalogue/images/{stamp}T00-00-00.000000Z.parquet", part(added))
        for item in added:
            local_store.write(item["metadata_key"], metadata_json(item))
        # (a batch is named by the second it is built in: each one its own)
        monkeypatch.setattr(batch_module, "batch_name", lambda now: f"{stamp}T00-00-00Z")
        calls.clear()
        assert run_dataprocess(local_store)[0] == 0
        return certificate_of(local_store)[1]

    listed: list[str] = []  # (the last hashes file's size comes from the listing of its rows/)
    real_list = LocalStorage.list
    monkeypatch.setattr(
        LocalStorage,
        "list",
        lambda self, prefix="": listed.append(prefix) or real_list(self, prefix),
    )
    # a day: P3 (training) files P2's study (both groups, two patients) and P1's content
    day = [row("P3", "training", "S2", "R7", "I7", "sha256:c1")]
    certificate = a_day("2021-03-03", day)
    assert calls == ["certify_day"]
    assert not any(prefix.endswith(holdout.HASHES_FILE) for prefix in listed)
    assert counts(certificate) == plain_counts(rows + day)
    assert certificate["violations"] == 3 and certificate["digest"] == own_digest(certificate)

    # a part that files P3's image again at its key, now under P4: its row is replaced
    again = [{**day[0], "PatientID": "P4", "SOPInstanceUID": "I8", "content_id": "sha256:c8"}]
    certificate = a_day("2021-03-04", again)
    assert calls == ["certify"]
    assert counts(certificate) == plain_counts(rows + again)
