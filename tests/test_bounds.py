"""Bounds on what an uploader controls: long identifiers and centres are refused before they are
kept, report lines stay short, and many large clinical files are never all in memory at once."""

from __future__ import annotations

import json
import threading
import time

from tests import builders
from tests.builders import clinical
from tests.test_warehouseloader import SPLIT
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.core.run import ByteBudget
from warehouse.core.text import MAX_DETAIL_CHARS, bounded, quote

LONG = "K" * 3_000_000


def test_a_report_line_keeps_at_most_its_cap_of_any_detail_and_fact():
    report = RunReport("warehouseloader")
    report.skip("raw-a/x", Reason.SITE_NOT_IN_CONFIG, f"SubmittingCentre {LONG}", facts={"c": LONG})
    (problem,) = report.problems
    assert len(problem["detail"]) == MAX_DETAIL_CHARS and problem["detail"].endswith("\u2026")
    assert len(problem["facts"]["c"]) == MAX_DETAIL_CHARS
    assert bounded("short") == "short"
    assert len(quote(LONG)) < 130 and quote("a'b") == repr("a'b")


def test_a_huge_centre_or_pseudonym_is_refused_and_the_reports_stay_small(store):
    files = {
        "config.json": builders.config(["raw-a"], split=[SPLIT]),
        # a centre far longer than any trust's name, and a record whose Pseudonym is huge
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", LONG[:900_000]),
        "raw-a/2021-01-01/data/Covid2_data.json": json.dumps(
            {"Pseudonym": LONG[:900_000], "SubmittingCentre": SPLIT}
        ).encode(),
        "raw-a/2021-01-01/data/Covid3_data.json": clinical("Covid3", SPLIT),
    }
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["clinical files copied"] == 1
    problems = {p["key"].rsplit("/", 1)[1]: p for p in state.report.problems}
    assert problems["Covid1_data.json"]["reason"] == "unsafe identifier"
    assert (
        "SubmittingCentre of 900,000 characters (at most 256)"
        in problems["Covid1_data.json"]["detail"]
    )
    assert problems["Covid2_data.json"]["reason"] == "pseudonym differs from the file name"
    for key in ["reports/warehouseloader/latest.json", "feedback/raw-a/latest.json"]:
        assert len(store.read(key)) < 20_000
    page = [i for i in store.list("reports/warehouseloader/") if i.key.endswith(".html")]
    assert page and all(i.size < 200_000 for i in page)


def test_a_clinical_file_over_the_default_limit_is_reported_unread(store):
    big = clinical("Covid1", SPLIT, Notes="x" * (1024 * 1024))
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], split=[SPLIT]),
            "raw-a/2021-01-01/data/Covid1_data.json": big,
        },
    )
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    (problem,) = state.report.problems
    assert problem["reason"] == "clinical file too large"
    assert problem["facts"] == {"max_clinical_bytes": 1024 * 1024}


def test_a_byte_budget_never_lets_its_holders_hold_more_than_its_limit():
    budget = ByteBudget(100)
    held, peak, lock = [0], [0], threading.Lock()
    inside = threading.Semaphore(0)
    release = threading.Event()

    def hold(size):
        with budget.hold(size):
            with lock:
                held[0] += min(size, 100)
                peak[0] = max(peak[0], held[0])
            inside.release()
            release.wait()
            with lock:
                held[0] -= min(size, 100)

    first = [threading.Thread(target=hold, args=(size,)) for size in (60, 30, 10)]
    for thread in first:
        thread.start()
    for _ in first:
        assert inside.acquire(timeout=10)
    assert held[0] == 100
    # the budget is full: 50 and 500 (held alone, as 100) wait for room
    later = [threading.Thread(target=hold, args=(size,)) for size in (50, 500)]
    for thread in later:
        thread.start()
    deadline = time.monotonic() + 10
    while budget.waiting < 2 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert budget.waiting == 2 and held[0] == 100
    release.set()
    for _ in later:
        assert inside.acquire(timeout=10)
    for thread in first + later:
        thread.join(timeout=10)
    assert peak[0] <= 100 and held[0] == 0


def test_a_lone_surrogate_escape_is_invalid_json_and_a_pair_is_text():
    import pytest

    from warehouse.core.clinical import InvalidClinicalFile, parse_json_document

    with pytest.raises(InvalidClinicalFile, match="lone surrogate"):
        parse_json_document(b'{"SubmittingCentre": "A\\ud800"}')
    with pytest.raises(InvalidClinicalFile, match="lone surrogate"):
        parse_json_document(b'{"x": [{"\\udfff": 1}]}')
    assert parse_json_document(b'{"x": "\\ud83d\\ude00"}') == {"x": "\U0001f600"}


def test_dataprocess_reports_a_record_with_a_lone_surrogate_and_publishes(local_store):
    from tests.test_dataprocess import run_graph as run_dataprocess

    builders.put_tree(
        local_store,
        {
            "config.json": builders.config(["raw-a"], training=[SPLIT]),
            "training/data/Covid1/data_2021-03-01.json": clinical("Covid1", SPLIT),
            "training/data/Covid2/data_2021-03-01.json": b'{"Pseudonym": "Covid2\\udc00"}',
        },
    )
    code, state = run_dataprocess(local_store)
    assert code == 0
    assert [p["reason"] for p in state.report.problems] == ["invalid JSON"]
