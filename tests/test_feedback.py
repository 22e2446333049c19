"""Feedback to the sites: per raw prefix, only what changed, and nothing of other sites."""

from __future__ import annotations

import json

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.storage import LocalStorage
from warehouse.loader.feedback import by_prefix, site_view

A, B = "A Trust", "B Trust"


@pytest.fixture
def store(tmp_path):
    (tmp_path / "bucket").mkdir()
    return LocalStorage(tmp_path / "bucket")


def feedback(store, prefix):
    return json.loads(store.read(f"feedback/{prefix}/latest.json"))


def test_each_prefix_reads_its_own_refusals_and_nothing_of_the_others(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a", "raw-b"], training=[A], validation=[B]),
            "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
            "raw-b/2021-01-03/data/Covid1_status.json": clinical("Covid1", B),
            "raw-b/2021-01-03/data/Covid2_data.json": b"{",
            "raw-c/2021-01-01/data/Covid3_data.json": clinical("Covid3", A),
        },
    )
    code, state = builders.run_loader(store)
    assert code == 0
    a, b, c = feedback(store, "raw-a"), feedback(store, "raw-b"), feedback(store, "raw-c")
    assert [p["key"] for p in a["problems"]] == ["raw-a/2021-01-02/images/garbage.dcm"]
    assert a["not_filed"] == {"not a DICOM file": 1}
    assert {p["key"]: p["reason"] for p in b["problems"]} == {
        "raw-b/2021-01-03/data/Covid1_status.json": "pseudonym claimed by another centre",
        "raw-b/2021-01-03/data/Covid2_data.json": "invalid JSON",
    }
    text = json.dumps(b)
    assert A not in text and "training" not in text and "raw-a" not in text
    assert c["problems"] == [
        {"key": "raw-c/", "reason": "raw prefix not in config", "detail": "not in raw_prefixes"}
    ]
    assert state.report.counts["feedback files written"] == 6
    stamped = [i.key for i in store.list("feedback/raw-a/") if not i.key.endswith("latest.json")]
    assert len(stamped) == 1 and a["run_id"] == state.report.run_id


def test_an_unchanged_rerun_writes_no_feedback_and_a_fixed_prefix_gets_an_empty_one(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], training=[A]),
            "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
        },
    )
    assert builders.run_loader(store)[0] == 0
    before = sorted(i.key for i in store.list("feedback/"))
    code, state = builders.run_loader(store)
    assert "feedback files written" not in state.report.counts
    assert sorted(i.key for i in store.list("feedback/")) == before
    store.write("raw-a/2021-01-02/images/garbage.dcm", image("Covid1", "DX")[1])
    code, state = builders.run_loader(store)
    assert feedback(store, "raw-a")["problems"] == []
    assert state.report.counts["feedback files written"] == 1  # latest.json only


def test_a_dry_run_writes_no_feedback(store):
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], training=[A]),
            "raw-a/2021-01-02/images/garbage.dcm": b"garbage" * 100,
        },
    )
    assert builders.run_loader(store, dry_run=True)[0] == 0
    assert not any(store.list("feedback/"))


def test_details_that_would_tell_of_other_sites_are_neutral():
    problem = {
        "key": "raw-b/2021-01-01/data/Covid14_data.json",
        "reason": "group conflict",
        "detail": "Covid14 is in validation; this file would put it in training",
        "facts": {"centre": "B"},
    }
    view = site_view(problem)
    assert set(view) == {"key", "reason", "detail"}
    assert "validation" not in view["detail"]
    grouped = by_prefix([problem, {"key": "training/data/x/", "reason": "symbolic link"}])
    assert list(grouped) == ["raw-b"]
