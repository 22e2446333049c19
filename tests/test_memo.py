"""The last run's verdicts on unfiled inputs: when they still hold without a read."""

from __future__ import annotations

import json

import pytest

from warehouse.core.config import PipelineConfig
from warehouse.core.keys import parse_raw_key
from warehouse.core.reasons import Reason
from warehouse.dicom.reader import MAX_HEADER_ELEMENTS
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.loader.memo import limit_facts, load_previous_problems, memo_of, recall, still_holds
from warehouse.storage.local import LocalStorage


def load_memo(storage, graph):
    """The last run's unfiled inputs by key, as a run reads them."""
    return memo_of(load_previous_problems(storage, graph))


CONFIG = PipelineConfig(("raw-a",), 50, {"Split": "split", "Train": "training"})


def _raw(key="raw-a/2021-01-01/images/x.dcm", modified="2021-01-01T00:00:00+00:00"):
    from dataclasses import replace

    return replace(parse_raw_key(key, "raw-a"), modified=modified)


def test_load_memo_reads_the_latest_report_copy(tmp_path):
    (tmp_path / "b").mkdir()
    store = LocalStorage(tmp_path / "b")
    assert load_memo(store, "warehouseloader") == {}
    problems = [
        {"key": "k1", "reason": "not a DICOM file", "size": 3, "modified": "m"},
        {"key": "k2", "reason": "group conflict"},  # no stamp: not usable
    ]
    store.write("reports/warehouseloader/latest.json", json.dumps({"problems": problems}).encode())
    assert list(load_memo(store, "warehouseloader")) == ["k1"]


def test_load_memo_ignores_a_broken_report(tmp_path):
    (tmp_path / "b").mkdir()
    store = LocalStorage(tmp_path / "b")
    store.write("reports/warehouseloader/latest.json", b"{not json")
    assert load_memo(store, "warehouseloader") == {}


def test_recall_needs_the_same_size_and_time():
    raw = _raw()
    memo = {raw.key: {"key": raw.key, "size": 10, "modified": raw.modified}}
    assert recall(memo, raw, 10) is memo[raw.key]
    assert recall(memo, raw, 11) is None
    assert recall(memo, _raw(modified="2022-01-01T00:00:00+00:00"), 10) is None
    assert recall({}, raw, 10) is None


@pytest.mark.parametrize(
    "reason",
    ["not a DICOM file", "missing DICOM identifier", "unsafe identifier", "invalid JSON"],
)
def test_file_reasons_always_hold(reason):
    assert still_holds({"reason": reason}, CONFIG, WarehouseIndex(), set())


def test_no_patient_data_holds_until_the_patient_has_data():
    problem = {"reason": "no patient data for PatientID", "facts": {"patient": "Covid9"}}
    assert still_holds(problem, CONFIG, WarehouseIndex(), set())
    assert not still_holds(problem, CONFIG, WarehouseIndex(), {"Covid9"})
    index = WarehouseIndex()
    index.add("training/data/Covid9/data_2021-01-01.json")
    assert not still_holds(problem, CONFIG, index, set())


def test_site_not_in_config_holds_until_the_site_is_configured():
    problem = {"reason": "site not in config", "facts": {"centre": "Elsewhere"}}
    assert still_holds(problem, CONFIG, WarehouseIndex(), set())
    configured = PipelineConfig(("raw-a",), 50, {"Elsewhere": "training"})
    assert not still_holds(problem, configured, WarehouseIndex(), set())


def test_group_conflict_holds_while_the_groups_differ():
    problem = {"reason": "group conflict", "facts": {"pseudonym": "Covid14", "centre": "Train"}}
    index = WarehouseIndex()
    assert not still_holds(problem, CONFIG, index, set())  # the patient has no group yet
    index.add("validation/data/Covid14/status_2021-01-01.json")
    assert still_holds(problem, CONFIG, index, set())  # Train says training
    index = WarehouseIndex()
    index.add("training/data/Covid14/status_2021-01-01.json")
    assert not still_holds(problem, CONFIG, index, set())


@pytest.mark.parametrize("reason", ["read failed", "write failed", "something new", None])
def test_failures_and_unknown_reasons_are_processed_again(reason):
    assert not still_holds({"reason": reason}, CONFIG, WarehouseIndex(), set())


def test_a_problem_recorded_again_keeps_its_stamp_and_facts():
    from warehouse.core.report import RunReport

    problem = {
        "key": "k",
        "reason": "site not in config",
        "detail": "SubmittingCentre 'X'",
        "size": 3,
        "modified": "m",
        "facts": {"centre": "X"},
    }
    report = RunReport("warehouseloader")
    report.skip_again(problem)
    assert report.problems == [problem] and report.problems[0] is not problem
    assert report.reasons["site not in config"] == 1
    assert report.counts["unfiled inputs not read again (unchanged)"] == 1


def test_a_header_too_complex_holds_while_the_bound_on_elements_does():
    """The bound is the product's, not a setting: its value is the fact the verdict keeps."""
    facts = limit_facts(Reason.HEADER_TOO_COMPLEX, None)
    assert facts == {"max_header_elements": MAX_HEADER_ELEMENTS}
    problem = {"reason": "DICOM header too complex", "facts": facts}
    assert still_holds(problem, CONFIG, WarehouseIndex(), set())
    moved = {"reason": "DICOM header too complex", "facts": {"max_header_elements": 20_000}}
    assert not still_holds(moved, CONFIG, WarehouseIndex(), set())
    assert not still_holds({"reason": "DICOM header too complex"}, CONFIG, WarehouseIndex(), set())
