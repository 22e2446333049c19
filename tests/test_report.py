"""The run report: counts, inputs not filed, summary text, JSON and where it is stored."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading

from warehouse import __version__
from warehouse.core.reasons import FAILURES, Reason
from warehouse.core.report import RunReport, combine_reports
from warehouse.core.text import MAX_DETAIL_CHARS


def test_counts():
    report = RunReport("warehouseloader")
    report.count("images filed")
    report.count("images filed", 2)
    report.count("already filed", 5)
    assert report.counts == {"images filed": 3, "already filed": 5}
    assert report.completed


def test_skip_records_the_reason_by_key():
    report = RunReport("warehouseloader")
    report.skip("raw-a/2021-01-04/images/x.dcm", Reason.NOT_DICOM, "empty file")
    report.skip("raw-a/2021-01-04/images/y.dcm", Reason.NOT_DICOM)
    report.skip("raw-a/2021-01-04/data/P_data.json", Reason.SITE_NOT_IN_CONFIG, "Elsewhere")
    assert report.reasons == {"not a DICOM file": 2, "site not in config": 1}
    assert report.problems[0] == {
        "key": "raw-a/2021-01-04/images/x.dcm",
        "reason": "not a DICOM file",
        "detail": "empty file",
    }
    assert report.problems[1]["detail"] == ""
    # per-file data problems do not make the run incomplete
    assert report.completed
    assert report.failures == 0


def test_read_and_write_failures_make_the_run_incomplete():
    assert FAILURES == {Reason.READ_FAILED, Reason.WRITE_FAILED}
    report = RunReport("warehouseloader")
    report.skip("training/xray/P/1/2/x.dcm", Reason.WRITE_FAILED, "AccessDenied")
    report.skip("raw-a/2021-01-04/images/y.dcm", Reason.READ_FAILED, "timeout")
    report.skip("raw-a/2021-01-04/images/z.dcm", Reason.GROUP_CONFLICT)
    assert report.failures == 2
    assert not report.completed


def test_fail_keeps_the_first_message():
    report = RunReport("warehouseloader")
    report.fail("no config.json at the root of file:///x")
    report.fail("something later")
    assert report.fatal == "no config.json at the root of file:///x"
    assert not report.completed


def test_summary_text():
    report = RunReport("warehouseloader")
    report.count("images filed", 3)
    report.count("clinical files filed", 2)
    report.skip("a", Reason.GROUP_CONFLICT)
    report.skip("b", Reason.NOT_DICOM)
    report.skip("c", Reason.NOT_DICOM)
    report.skip("d", Reason.INVALID_JSON)
    assert report.summary() == "\n".join(
        [
            "warehouseloader run summary",
            "  clinical files filed: 2",
            "  images filed: 3",
            "  not filed: 4",
            "    not a DICOM file: 2",
            "    group conflict: 1",
            "    invalid JSON: 1",
        ]
    )


def test_summary_names_a_fatal_problem():
    report = RunReport("warehouseloader")
    report.fail("config.json is not valid JSON")
    assert report.summary().splitlines() == [
        "warehouseloader run summary",
        "  run could not complete: config.json is not valid JSON",
        "  not filed: 0",
    ]


def test_as_dict():
    report = RunReport("warehouseloader")
    report.count("images filed")
    report.count("images copied", prefix="raw-a")
    report.count("images copied", 2, prefix="raw-b")
    report.skip("z.dcm", Reason.NOT_DICOM, "garbage")
    report.skip("a.dcm", Reason.UNSUPPORTED_MODALITY, "modality 'US' is not filed")
    report.skip("a.dcm", Reason.MISSING_IDENTIFIER)
    doc = report.as_dict()
    assert set(doc) == {
        "graph",
        "version",
        "run_id",
        "started",
        "finished",
        "completed",
        "fatal",
        "stopped",
        "counts",
        "counts_by_prefix",
        "not_filed",
        "problems",
    }
    assert doc["graph"] == "warehouseloader"
    assert doc["version"] == __version__
    assert doc["run_id"] == report.run_id and report.run_id.startswith(doc["started"][:4])
    assert RunReport("x", "shared-run").run_id == "shared-run"
    assert doc["completed"] is True
    assert doc["fatal"] is None
    assert doc["counts"] == {"images filed": 1, "images copied": 3}
    assert doc["counts_by_prefix"] == {"raw-a": {"images copied": 1}, "raw-b": {"images copied": 2}}
    assert doc["not_filed"] == {
        "missing DICOM identifier": 1,
        "not a DICOM file": 1,
        "unsupported modality": 1,
    }
    assert [(p["key"], p["reason"]) for p in doc["problems"]] == [
        ("a.dcm", "missing DICOM identifier"),
        ("a.dcm", "unsupported modality"),
        ("z.dcm", "not a DICOM file"),
    ]
    started = dt.datetime.fromisoformat(doc["started"])
    finished = dt.datetime.fromisoformat(doc["finished"])
    assert started.utcoffset() == dt.timedelta(0)
    assert started <= finished


def test_notes_are_kept_by_key_bounded_and_joined_across_shards():
    """A remark about an input that did not stop it is in the report, against its key.

    So are the whole report, a shard's, and a sharded run's combined one; the summary has
    none of it.
    """
    report = RunReport("warehouseloader")
    assert "notes" not in report.as_dict()  # (a run without notes has none)
    report.note("raw-a/2021-01-02/images/b.dcm", "pydicom: Unknown encoding 'X'")
    report.note("raw-a/2021-01-02/images/a.dcm", "metadata JSON without ['00091010'] " * 100)
    doc = report.as_dict()
    assert [n["key"] for n in doc["notes"]] == [
        "raw-a/2021-01-02/images/a.dcm",
        "raw-a/2021-01-02/images/b.dcm",
    ]
    assert doc["notes"][1]["note"] == "pydicom: Unknown encoding 'X'"
    assert len(doc["notes"][0]["note"]) == MAX_DETAIL_CHARS
    assert "pydicom" not in report.summary()
    other = RunReport("warehouseloader", report.run_id)
    other.note("raw-b/2021-01-02/images/c.dcm", "pydicom: Unknown encoding 'Y'")
    parts = {
        "p/clinical.json": {**report.as_dict(), "phase": "clinical"},
        "p/shard-1-of-1.json": {**other.as_dict(), "phase": "images", "shard": [1, 1]},
    }
    combined = combine_reports(parts, report.run_id, "warehouseloader")
    assert [n["key"] for n in combined["notes"]] == [
        "raw-a/2021-01-02/images/a.dcm",
        "raw-a/2021-01-02/images/b.dcm",
        "raw-b/2021-01-02/images/c.dcm",
    ]
    assert "notes" not in combine_reports({"p/x.json": other.as_dict() | {"notes": []}}, "r", "g")


def test_to_json_round_trips():
    report = RunReport("dataprocess")
    report.skip("k", Reason.NO_PATIENT_DATA, "Covid\u00e9")
    doc = json.loads(report.to_json().decode("utf-8"))
    assert doc["problems"] == [
        {"key": "k", "reason": "no patient data for PatientID", "detail": "Covid\u00e9"}
    ]
    assert doc["not_filed"] == {"no patient data for PatientID": 1}


def test_key_format():
    report = RunReport("warehouseloader")
    report.started = dt.datetime(2021, 3, 1, 9, 5, 7, 123456, tzinfo=dt.UTC)
    assert report.key() == "reports/warehouseloader/2021-03-01T09-05-07.123456Z.json"


def test_key_of_a_new_report_is_its_utc_start():
    before = dt.datetime.now(dt.UTC)
    report = RunReport("submittingcentres")
    match = re.fullmatch(
        r"reports/submittingcentres/(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{6})Z\.json", report.key()
    )
    assert match
    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%dT%H-%M-%S.%f").replace(tzinfo=dt.UTC)
    assert before - dt.timedelta(seconds=1) <= stamp <= dt.datetime.now(dt.UTC)


def test_reason_values_are_the_report_wording():
    assert str(Reason.NO_SUBMITTING_CENTRE) == "no SubmittingCentre"
    assert Reason.UNSAFE_IDENTIFIER.value == "unsafe identifier"
    assert len({r.value for r in Reason}) == len(Reason)


def test_report_is_thread_safe():
    report = RunReport("warehouseloader")

    def work():
        for n in range(500):
            report.count("images filed")
            report.skip(f"k{n}", Reason.NOT_DICOM)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert report.counts["images filed"] == 4000
    assert report.reasons["not a DICOM file"] == 4000
    assert len(report.problems) == 4000


def test_only_a_run_that_listed_its_inputs_replaces_the_memo(tmp_path):
    from warehouse.core.report import latest_report_key, publish_report
    from warehouse.storage.local import LocalStorage

    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    listed = RunReport("warehouseloader")
    listed.listed = True
    publish_report(store, listed, dry_run=False)
    memo = store.read(latest_report_key("warehouseloader"))
    stopped = RunReport("warehouseloader")
    stopped.fail("cannot list s3://x/raw-a/: timeout")
    assert "report:" in publish_report(store, stopped, dry_run=False)
    assert store.read(stopped.key())  # its own report is written
    assert store.read(latest_report_key("warehouseloader")) == memo  # the memo is kept
    config = RunReport("warehouseloader")
    config.fail("config.json: unknown key")
    config.config_problem = True
    publish_report(store, config, dry_run=False)
    assert b"unknown key" in store.read(config.key())
    assert store.read(latest_report_key("warehouseloader")) == memo


def test_changes_of_a_list_of_problems_by_key():
    from warehouse.core.report import problem_changes

    same = {"key": "raw-a/d/images/same.dcm", "reason": "not a DICOM file", "size": 3}
    two = [
        {"key": "raw-a/d/data/P_data.json", "reason": "invalid JSON"},
        {"key": "raw-a/d/data/P_data.json", "reason": "unsafe identifier"},
    ]
    before = [
        same,
        *two,
        {"key": "raw-a/d/images/edited.dcm", "reason": "not a DICOM file", "size": 3},
        {"key": "raw-a/d/images/gone.dcm", "reason": "not a DICOM file"},
    ]
    edited = {"key": "raw-a/d/images/edited.dcm", "reason": "not a DICOM file", "size": 4}
    new = {"key": "raw-a/d/images/new.dcm", "reason": "unsupported modality"}
    # (the same entries in another order, and as copies: nothing changed for them)
    now = [new, dict(two[1]), edited, dict(same), dict(two[0])]
    changes = problem_changes(before, now)
    assert changes == {
        "new": [new],
        "changed": [edited],
        "resolved": ["raw-a/d/images/gone.dcm"],
        "unchanged": 3,
        "total": 5,
    }
    # a key of two entries changes as a whole: both are written again
    changes = problem_changes(before, [same, two[0]])
    assert changes["changed"] == [two[0]] and changes["unchanged"] == 1
    # no list before: everything is new; a run that did not list all: resolved not known
    assert problem_changes(None, now)["new"] == sorted(now, key=lambda p: (p["key"], p["reason"]))
    assert problem_changes(before, [], complete=False)["resolved"] is None


def test_a_report_is_no_base_of_itself_and_needs_a_known_previous_key():
    from warehouse.core.report import changes_report

    report = RunReport("warehouseloader")
    report.skip("raw-a/d/images/x.dcm", Reason.NOT_DICOM)
    data = report.as_dict() | {"key": report.key()}
    # a memo of an older form names its report by its start
    older = {"run_id": "r0", "started": "2026-01-02T03:04:05.000006+00:00", "problems": []}
    made = changes_report(data, older, complete=True)
    assert made["previous"] == "reports/warehouseloader/2026-01-02T03-04-05.000006Z.json"
    assert [p["key"] for p in made["changes"]["new"]] == ["raw-a/d/images/x.dcm"]
    # a memo that cannot name its report, or this run's own: the report is a base
    for memo in ({"problems": data["problems"]}, data):
        made = changes_report(data, memo, complete=True)
        assert made["previous"] is None and made["changes"]["new"] == data["problems"]
