"""The loader's decisions, called directly: `file_clinical` and `file_image` on a run's state
(a real `LoaderState` over a local warehouse, its config, groups and catalogue), with reads
built here (tasks of parsed raw keys, headers parsed by pydicom in memory), and `plan_inputs`
on real listings. Each rule of the README's reason table that these functions decide is
asserted by its reason, its detail and the tasks returned (none for a refused input).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from dataclasses import replace

import pydicom
import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.config import Settings, parse_config
from warehouse.core.keys import parse_raw_key
from warehouse.core.patients import PatientGroups
from warehouse.core.report import RunReport
from warehouse.dicom.identity import ImageIdentity
from warehouse.dicom.reader import HeaderRead
from warehouse.dicom.screen import load_profile
from warehouse.listing.raw import list_raw
from warehouse.listing.warehouse import index_warehouse
from warehouse.loader.decisions import file_clinical, file_image
from warehouse.loader.memo import load_previous_report, memo_of, problems_of
from warehouse.loader.planning import plan_inputs
from warehouse.loader.state import LoaderState
from warehouse.loader.tasks import Task
from warehouse.storage.local import LocalStorage

A, B, SPLIT, VALIDATION = "A Trust", "B Trust", "Split Trust", "Validation Trust"
MODIFIED = "2021-03-05T12:00:00+00:00"  # when the listing saw each raw input


def config_bytes(**overrides) -> bytes:
    doc = {
        "raw_prefixes": ["raw-a", "raw-b"],
        "training_percentage": 50,
        "sites": {"split": [SPLIT], "training": [A, B], "validation": [VALIDATION]},
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def split_group(pseudonym: str, percentage: int = 50) -> str:
    """The README's split rule, written here."""
    number = int(hashlib.sha512(pseudonym.strip().upper().encode()).hexdigest(), 16)
    return "training" if number % 100 < percentage else "validation"


@pytest.fixture
def store(tmp_path) -> LocalStorage:
    (tmp_path / "bucket").mkdir()
    return LocalStorage(tmp_path / "bucket")


def new_state(store: LocalStorage, warehouse: dict[str, bytes] | None = None, **config):
    """A loader run's state over ``store`` holding ``warehouse`` (listed as a run lists it)."""
    builders.put_tree(store, warehouse or {})
    state = LoaderState(
        settings=Settings(bucket=store.url),
        report=RunReport("warehouseloader"),
        config=parse_config(config_bytes(**config)),
        profile=load_profile(),
    )
    state.index = index_warehouse(store, 1, clinical_only=True)
    state.catalogue.load(store)
    state.groups = PatientGroups(state.index.groups, conflicted=state.index.conflicts)
    return state


def clinical_read(key: str, centre, filed_centre: str | None = None, size: int = 120):
    """What the worker hands `file_clinical`: the task, the record's centre and the centre the
    patient is bound to by its first filed record.
    """
    raw = replace(parse_raw_key(key, key.split("/", 1)[0]), modified=MODIFIED)
    return Task("clinical", key, size, None, raw), centre, filed_centre


def image_read(prefix: str, patient: str, *, instance=1, name=None, date="2021-03-02", **kw):
    """What the worker hands `file_image` for one image (a header parsed by pydicom), and the
    image's bytes.
    """
    sop_name, data = image(patient, "DX", "s1", "r1", instance, **kw)
    key = f"{prefix}/{date}/images/{name or sop_name}"
    raw = replace(parse_raw_key(key, prefix), modified=MODIFIED)
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    identity = ImageIdentity(
        patient, dataset.StudyInstanceUID, dataset.SeriesInstanceUID, "DX", "xray"
    )
    task = Task("image", key, len(data), None, raw)
    return (task, HeaderRead(dataset, 1, len(data)), identity, None), data


def image_keys(group: str, read) -> tuple[str, str]:
    """The README's layout: where an image and its metadata file are filed."""
    task, _, identity, _ = read
    tail = f"{identity.patient_id}/{identity.study_uid}/{identity.series_uid}"
    name = task.payload.name
    return f"{group}/xray/{tail}/{name}", f"{group}/xray-metadata/{tail}/{name[:-4]}.json"


def problems(state) -> dict[str, tuple[str, str]]:
    return {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}


# --------------------------------------------------------------------------------------------
# file_clinical


@pytest.mark.parametrize("pseudonym", ["Covid1", "Covid14", "Covid20", "Covid149"])
def test_a_split_sites_patient_gets_the_group_of_the_split_rule(store, pseudonym):
    state = new_state(store)
    key = f"raw-a/2021-03-01/data/{pseudonym}_data.json"
    group = split_group(pseudonym)
    tasks = file_clinical(state, clinical_read(key, SPLIT))
    assert tasks == [Task("copy", key, 120, f"{group}/data/{pseudonym}/data_2021-03-01.json", None)]
    assert state.groups.get(pseudonym) == group
    assert state.bound_centres[pseudonym] == SPLIT
    assert state.report.problems == []


def test_the_readmes_split_examples():
    assert [split_group(p) for p in ("Covid1", "Covid14", "Covid20", "Covid149")] == [
        "training",
        "validation",
        "training",
        "validation",
    ]


def test_training_and_validation_sites_send_all_their_patients_there(store):
    state = new_state(store)
    training = file_clinical(state, clinical_read("raw-a/2021-03-01/data/P1_status.json", A))
    validation = file_clinical(
        state, clinical_read("raw-b/2021-03-01/data/P2_data.json", VALIDATION)
    )
    assert [t.target for t in training] == ["training/data/P1/status_2021-03-01.json"]
    assert [t.target for t in validation] == ["validation/data/P2/data_2021-03-01.json"]


def test_a_filed_patients_group_wins_and_the_other_group_is_a_conflict(store):
    """Covid7 was filed in training by Validation Trust (the config has moved the site since):
    a new record would put it in validation.
    """
    state = new_state(store, {"training/data/Covid7/data_2021-01-01.json": b"{}"})
    key = "raw-a/2021-03-01/data/Covid7_status.json"
    assert file_clinical(state, clinical_read(key, VALIDATION, filed_centre=VALIDATION)) == []
    reason, detail = problems(state)[key]
    assert reason == "group conflict" and "Covid7" in detail
    assert state.groups.get("Covid7") == "training"
    assert "Covid7" not in state.bound_centres


def test_a_centre_in_no_list_is_site_not_in_config(store):
    state = new_state(store)
    key = "raw-a/2021-03-01/data/Covid2_data.json"
    assert file_clinical(state, clinical_read(key, "Unknown Trust")) == []
    assert problems(state)[key] == ("site not in config", "SubmittingCentre 'Unknown Trust'")
    assert state.groups.get("Covid2") is None


def test_a_pseudonym_bound_to_another_centre_is_claimed(store):
    """Bound by its first filed record (the read's filed centre), or by this run's first
    accepted record: another centre's record never moves nor adds to the patient, and the
    images under that record's prefix for that patient are refused too.
    """
    state = new_state(store, {"training/data/Covid3/data_2021-01-01.json": b"{}"})
    key = "raw-b/2021-03-01/data/Covid3_data.json"
    assert file_clinical(state, clinical_read(key, B, filed_centre=A)) == []
    reason, detail = problems(state)[key]
    assert reason == "pseudonym claimed by another centre"
    assert detail == "Covid3 is bound to 'A Trust' (its first record); this record names 'B Trust'"
    assert ("raw-b", "Covid3") in state.refused_claims
    read, _ = image_read("raw-b", "Covid3")
    assert file_image(state, read) == []
    assert problems(state)[read[0].key][0] == "pseudonym claimed by another centre"
    # the same patient's image from another prefix is filed
    other, _ = image_read("raw-a", "Covid3", instance=2)
    assert [t.action for t in file_image(state, other)] == ["copy", "metadata"]
    # bound in this run: the first accepted record binds
    first = "raw-a/2021-03-01/data/Covid4_data.json"
    assert len(file_clinical(state, clinical_read(first, A))) == 1
    second = "raw-b/2021-03-02/data/Covid4_status.json"
    assert file_clinical(state, clinical_read(second, B)) == []
    assert problems(state)[second][0] == "pseudonym claimed by another centre"


def test_a_prefix_may_send_only_its_centres(store):
    state = new_state(store, prefix_sites={"raw-a": [A]})
    key = "raw-a/2021-03-01/data/Covid5_data.json"
    assert file_clinical(state, clinical_read(key, B)) == []
    assert problems(state)[key] == (
        "centre not allowed for this prefix",
        "raw-a may send ['A Trust']; this record names 'B Trust'",
    )
    # a prefix prefix_sites does not list may send any centre
    accepted = "raw-b/2021-03-01/data/Covid5_data.json"
    assert len(file_clinical(state, clinical_read(accepted, B))) == 1
    # and raw-a may not send images of a patient of B Trust
    read, _ = image_read("raw-a", "Covid5")
    assert file_image(state, read) == []
    assert problems(state)[read[0].key] == (
        "centre not allowed for this prefix",
        "raw-a may not send images of Covid5, a patient of 'B Trust'",
    )


def test_a_pseudonym_that_differs_only_in_case_is_refused(store):
    state = new_state(store, {"training/data/Covid6/data_2021-01-01.json": b"{}"})
    key = "raw-a/2021-03-01/data/COVID6_data.json"
    assert file_clinical(state, clinical_read(key, A)) == []
    assert problems(state)[key] == (
        "pseudonym differs only in case",
        "'COVID6' differs only in case from the patient 'Covid6'",
    )
    read, _ = image_read("raw-a", "COVID6")
    assert file_image(state, read) == []
    assert problems(state)[read[0].key] == (
        "pseudonym differs only in case",
        "PatientID 'COVID6' differs only in case from the patient 'Covid6'",
    )


def test_two_raw_files_with_one_target_the_first_files_it(store):
    state = new_state(store)
    first = "raw-a/2021-03-01/data/Covid8_data.json"
    second = "raw-b/2021-03-01/data/Covid8_data.json"
    assert [t.target for t in file_clinical(state, clinical_read(first, A))] == [
        "training/data/Covid8/data_2021-03-01.json"
    ]
    assert file_clinical(state, clinical_read(second, A)) == []
    assert problems(state)[second] == (
        "another raw file has the same target",
        f"training/data/Covid8/data_2021-03-01.json is claimed by {first}",
    )


def test_a_refusal_carries_the_listing_stamp(store):
    """The next run knows the input unchanged by its size and time (the memo)."""
    state = new_state(store)
    key = "raw-a/2021-03-01/data/Covid2_data.json"
    file_clinical(state, clinical_read(key, "Unknown Trust", size=321))
    (problem,) = state.report.problems
    assert (problem["size"], problem["modified"]) == (321, MODIFIED)


# --------------------------------------------------------------------------------------------
# file_image


def test_an_image_of_a_patient_without_clinical_data_is_refused(store):
    state = new_state(store)
    read, _ = image_read("raw-a", "Covid9")
    assert file_image(state, read) == []
    assert problems(state)[read[0].key] == ("no patient data for PatientID", "PatientID 'Covid9'")


def test_an_image_goes_to_its_patients_group_with_a_copy_and_a_metadata_task(store):
    state = new_state(store, {"validation/data/Covid10/data_2021-01-01.json": b"{}"})
    read, data = image_read("raw-a", "Covid10")
    task, header, _, _ = read
    image_key, metadata_key = image_keys("validation", read)
    tasks = file_image(state, read)
    assert tasks == [
        Task("copy", task.key, len(data), image_key, None),
        Task("metadata", task.key, None, metadata_key, header.dataset),
    ]
    assert state.report.problems == []
    # its catalogue row joins the part once both objects are written
    assert len(state.catalogue.rows) == 0
    for target in (image_key, metadata_key):
        state.catalogue.written(target)
    (row,) = state.catalogue.rows.table().to_pylist()
    assert row["warehouse_key"] == image_key and row["metadata_key"] == metadata_key
    assert row["raw_key"] == task.key and row["upload_date"] == dt.date(2021, 3, 2)
    assert row["SOPInstanceUID"] == header.dataset.SOPInstanceUID


def test_an_image_the_catalogue_lists_is_counted_and_one_it_does_not_is_written_again(store):
    """What is filed is the catalogue's word (a part is written once both objects are): an
    image a killed run copied but no part lists is written again, whole (idempotent).
    """
    read, data = image_read("raw-a", "Covid11")
    image_key, metadata_key = image_keys("training", read)
    both = {"training/data/Covid11/data_2021-01-01.json": b"{}", image_key: data}
    state = new_state(store, both)
    assert [t.target for t in file_image(state, read)] == [image_key, metadata_key]
    for target in (image_key, metadata_key):
        state.catalogue.written(target)
    state.report.listed = True
    state.catalogue.publish(store, state.settings)
    later = new_state(store)
    assert file_image(later, read) == []
    assert later.report.counts["images already filed"] == 1
    assert later.report.problems == []
    assert later.settled == {read[0].key: (read[0].size, read[0].payload.modified)}


def test_the_same_instance_again_is_a_duplicate_or_a_conflicting_duplicate(store):
    state = new_state(store, {"training/data/Covid12/data_2021-01-01.json": b"{}"})
    first, _ = image_read("raw-a", "Covid12")
    image_key, _ = image_keys("training", first)
    assert len(file_image(state, first)) == 2
    same, data = image_read("raw-a", "Covid12", name="again.dcm", date="2021-03-03")
    assert file_image(state, same) == []
    sop = same[1].dataset.SOPInstanceUID
    assert problems(state)[same[0].key] == (
        "duplicate image",
        f"SOPInstanceUID {sop} is filed as {image_key}",
    )
    other, other_data = image_read("raw-a", "Covid12", name="other.dcm", rows=32, columns=32)
    assert len(other_data) != len(data)
    assert file_image(state, other) == []
    assert problems(state)[other[0].key] == (
        "conflicting duplicate",
        f"SOPInstanceUID {sop} is filed as {image_key} ({len(data):,} bytes); "
        f"{other[0].key} has {len(other_data):,} bytes",
    )


def test_an_instance_an_earlier_run_catalogued_is_a_duplicate(store):
    """An earlier run files an image and writes its catalogue part; a later run's copy of the
    instance under another name is refused, naming the filed key.
    """
    earlier = new_state(store, {"training/data/Covid13/data_2021-01-01.json": b"{}"})
    read, data = image_read("raw-a", "Covid13")
    for task in file_image(earlier, read):
        store.write(task.target, data if task.action == "copy" else b"{}")
        earlier.catalogue.written(task.target)
    earlier.report.listed = True
    earlier.catalogue.publish(store, earlier.settings)
    (part,) = earlier.report.catalogue["parts"]
    assert part.startswith("catalogue/images/")
    image_key, _ = image_keys("training", read)
    later = new_state(store)
    again, _ = image_read("raw-b", "Covid13", name="renamed.dcm", date="2021-04-01")
    assert file_image(later, again) == []
    reason, detail = problems(later)[again[0].key]
    assert reason == "duplicate image" and detail.endswith(f"is filed as {image_key}")


def test_two_raw_images_with_one_target_the_first_files_it(store):
    state = new_state(store, {"training/data/Covid15/data_2021-01-01.json": b"{}"})
    first, _ = image_read("raw-a", "Covid15")
    second, _ = image_read("raw-b", "Covid15")  # the same file name under another prefix
    image_key, _ = image_keys("training", first)
    assert len(file_image(state, first)) == 2
    assert file_image(state, second) == []
    assert problems(state)[second[0].key] == (
        "another raw file has the same target",
        f"{image_key} is claimed by {first[0].key}",
    )


def test_an_image_filed_in_the_run_that_assigned_its_patient(store):
    """A clinical file decided earlier in the run gives its image the group."""
    state = new_state(store)
    file_clinical(state, clinical_read("raw-a/2021-03-01/data/Covid16_data.json", SPLIT))
    read, _ = image_read("raw-a", "Covid16")
    image_key, _ = image_keys(split_group("Covid16"), read)
    assert [t.target for t in file_image(state, read)][0] == image_key


# --------------------------------------------------------------------------------------------
# plan_inputs


def plan(store, memo=None, **config):
    parsed = parse_config(config_bytes(**config))
    listing = list_raw(store, parsed.raw_prefixes, 1)
    index = index_warehouse(store, 1)
    report = RunReport("warehouseloader")
    clinical_files, images = plan_inputs(
        listing, index, memo or {}, parsed, Settings(bucket=store.url), report
    )
    return [raw.key for raw, _ in clinical_files], [raw.key for raw, _ in images], report


def test_new_clinical_files_come_first_in_upload_order_and_filed_ones_are_counted(store):
    builders.put_tree(
        store,
        {
            "raw-b/2021-01-02/data/Covid2_data.json": clinical("Covid2", A),
            "raw-a/2021-01-03/data/Covid3_data.json": clinical("Covid3", A),
            "raw-b/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
            "raw-a/2021-01-01/data/Covid9_status.json": clinical("Covid9", A),
        },
    )
    builders.age_objects(store, 10)  # uploaded before the copy below was made
    store.write("training/data/Covid9/status_2021-01-01.json", clinical("Covid9", A))
    clinical_files, images, report = plan(store)
    assert clinical_files == [
        "raw-b/2021-01-01/data/Covid1_data.json",
        "raw-b/2021-01-02/data/Covid2_data.json",
        "raw-a/2021-01-03/data/Covid3_data.json",
    ]
    assert images == [] and report.problems == []
    assert report.counts["clinical files already filed"] == 1


def test_an_implausible_upload_date_is_reported_unread(store):
    """A folder dated after its object's modification time (past a day), or longer before it
    than max_upload_delay_days.
    """
    now = dt.datetime.now(dt.UTC)
    future = f"{now + dt.timedelta(days=3):%Y-%m-%d}"
    old = f"{now - dt.timedelta(days=40):%Y-%m-%d}"
    recent = f"{now - dt.timedelta(days=2):%Y-%m-%d}"
    builders.put_tree(
        store,
        {
            f"raw-a/{future}/data/Covid1_data.json": clinical("Covid1", A),
            f"raw-a/{old}/data/Covid2_data.json": clinical("Covid2", A),
            f"raw-a/{recent}/data/Covid3_data.json": clinical("Covid3", A),
        },
    )
    clinical_files, _, report = plan(store, max_upload_delay_days=30)
    assert clinical_files == [f"raw-a/{recent}/data/Covid3_data.json"]
    found = {p["key"]: p for p in report.problems}
    assert set(found) == {
        f"raw-a/{future}/data/Covid1_data.json",
        f"raw-a/{old}/data/Covid2_data.json",
    }
    for problem in found.values():
        assert problem["reason"] == "implausible upload date" and "size" in problem
    # without a delay limit, only the folder dated in the future is implausible
    clinical_files, _, report = plan(store)
    assert f"raw-a/{old}/data/Covid2_data.json" in clinical_files
    assert [p["key"] for p in report.problems] == [f"raw-a/{future}/data/Covid1_data.json"]


def test_a_known_problem_is_not_read_again_until_its_input_changes(store):
    builders.put_tree(
        store,
        {
            "config.json": config_bytes(),
            "raw-a/2021-01-01/data/Covid1_data.json": b"{not json",
            "raw-a/2021-01-01/data/Covid2_data.json": clinical("Covid2", A),
        },
    )
    assert builders.run_loader(store, workers=2)[0] == 0
    memo = memo_of(problems_of(load_previous_report(store, "warehouseloader")))
    assert memo["raw-a/2021-01-01/data/Covid1_data.json"]["reason"] == "invalid JSON"
    clinical_files, _, report = plan(store, memo)
    assert clinical_files == []  # one filed, one known unchanged
    assert report.counts["unfiled inputs not read again (unchanged)"] == 1
    assert [(p["key"], p["reason"]) for p in report.problems] == [
        ("raw-a/2021-01-01/data/Covid1_data.json", "invalid JSON")
    ]
    store.write("raw-a/2021-01-01/data/Covid1_data.json", clinical("Covid1", A))  # fixed
    clinical_files, _, report = plan(store, memo)
    assert clinical_files == ["raw-a/2021-01-01/data/Covid1_data.json"]
    assert report.problems == []


def test_images_not_filed_are_planned_in_key_order(store):
    names = {}
    for n, prefix in ((3, "raw-b"), (1, "raw-a"), (2, "raw-a")):
        name, data = image(f"Covid{n}", "DX", instance=n)
        names[n] = f"{prefix}/2021-01-02/images/{name}"
        store.write(names[n], data)
    builders.age_objects(store, 10)
    filed, data = image("Covid1", "DX", instance=1)
    store.write(f"training/xray/Covid1/1.2/1.3/{filed}", data)
    store.write(f"training/xray-metadata/Covid1/1.2/1.3/{filed[:-4]}.json", b"{}")
    clinical_files, images, report = plan(store)
    assert clinical_files == [] and report.problems == []
    assert images == sorted([names[2], names[3]])
    assert report.counts["images already filed"] == 1
