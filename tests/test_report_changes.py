"""Reports that do not grow with history.

Each run writes its whole list of inputs not filed once (``latest.json``, the memo) and, at its
timestamped keys, only what changed since the run before, with the keys a reader needs to
rebuild any run's list.
"""

from __future__ import annotations

import html as html_module
import json
import re

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.report import check_previous_report
from warehouse.dashboard import figures
from warehouse.loader import parts as runs
from warehouse.storage.local import LocalStorage

A = "A Trust"
REPORTS = "reports/warehouseloader/"
LATEST = REPORTS + "latest.json"
#: A timestamped key's last part (the form the operations guide gives).
STAMPED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{6}Z\.json")


@pytest.fixture
def store(tmp_path):
    (tmp_path / "bucket").mkdir()
    return LocalStorage(tmp_path / "bucket")


def read(store, key: str) -> dict:
    return json.loads(store.read(key))


def stamped_keys(store, folder: str = REPORTS) -> list[str]:
    """The timestamped JSON files directly in ``folder``, oldest first."""
    return sorted(
        info.key
        for info in store.list(folder)
        if info.key.count("/") == folder.count("/") and STAMPED.fullmatch(info.key.split("/")[-1])
    )


def rebuild(before: list[dict], changes: dict) -> list[dict]:
    """The whole list after a timestamped report, as its reader rebuilds it.

    The list before, without the keys that changed or are resolved, plus the new and changed
    entries.
    """
    gone = set(changes["resolved"]) | {p["key"] for p in changes["changed"]}
    kept = [p for p in before if p["key"] not in gone]
    return sorted(kept + changes["new"] + changes["changed"], key=canonical)


def canonical(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True)


def whole(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=canonical)


def rebuild_chain(store, key: str) -> list[dict]:
    """A run's whole list rebuilt from timestamped reports alone.

    It goes back along ``previous`` to a base, then forward.
    """
    chain = []
    while key is not None:
        report = read(store, key)
        chain.append(report)
        key = report["previous"]
    problems: list[dict] = []
    for report in reversed(chain):
        problems = rebuild(problems, report["changes"])
    return problems


def garbage_tree(count: int) -> dict[str, bytes]:
    """``count`` files that are not DICOM, with names of one length, and one good patient."""
    files = {"config.json": builders.config(["raw-a"], training=[A])}
    files["raw-a/2021-01-01/data/Covid1_data.json"] = clinical("Covid1", A)
    name, data = image("Covid1", "DX")
    files[f"raw-a/2021-01-01/images/{name}"] = data
    for n in range(count):
        files[f"raw-a/2021-01-02/images/bad{n:05d}.dcm"] = b"not an image"
    return files


# (1) a run with nothing new -------------------------------------------------------------------


def _rerun_sizes(root, count: int) -> dict[str, int]:
    root.mkdir()
    store = LocalStorage(root)
    builders.put_tree(store, garbage_tree(count))
    assert builders.run_loader(store, workers=4)[0] == 0
    before = set(stamped_keys(store))
    feedback = {info.key for info in store.list("feedback/")}
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    assert state.report.counts["unfiled inputs not read again (unchanged)"] == count
    assert {info.key for info in store.list("feedback/")} == feedback  # nothing new to say
    (key,) = set(stamped_keys(store)) - before
    changes = read(store, key)["changes"]
    assert changes["new"] == changes["changed"] == changes["resolved"] == []
    assert changes["unchanged"] == changes["total"] == count
    return {
        "report": len(store.read(key)),
        "page": len(store.read(key.removesuffix(".json") + ".html")),
        "memo": len(store.read(LATEST)),
    }


def test_a_run_with_nothing_new_writes_a_report_whose_size_does_not_depend_on_the_memo(
    tmp_path,
):
    few, many = _rerun_sizes(tmp_path / "few", 10), _rerun_sizes(tmp_path / "many", 2000)
    # the whole list is written once, in the memo: it grows with what is remembered ...
    assert many["memo"] > 20 * few["memo"]
    # ... and the run's own report and page do not (only the counts' digits differ)
    assert abs(many["report"] - few["report"]) <= 64, (few, many)
    assert abs(many["page"] - few["page"]) <= 128, (few, many)


# (2), (3) new, changed and resolved; the memo ------------------------------------------------


def _first_run(store) -> tuple[dict, str]:
    files = {
        "config.json": builders.config(["raw-a"], training=[A]),
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", A),
        "raw-a/2021-01-02/images/kept.dcm": b"garbage",
        "raw-a/2021-01-02/images/fixed.dcm": b"garbage",
        "raw-a/2021-01-02/images/changed.dcm": b"garbage",
        "raw-a/2021-01-02/data/Broken_data.json": b"{",
    }
    builders.put_tree(store, files)
    code, state = builders.run_loader(store)
    assert code == 0
    (key,) = stamped_keys(store)
    return state.report.as_dict(), key


def test_new_changed_and_resolved_inputs_are_the_changes_exactly(store):
    first, first_key = _first_run(store)
    base = read(store, first_key)
    memo = read(store, LATEST)
    # the first run's report is a base: no run before, every input not filed is new
    assert base["previous"] is None and base["previous_run_id"] is None
    assert base["changes"]["resolved"] == [] and base["changes"]["changed"] == []
    assert whole(base["changes"]["new"]) == whole(memo["problems"])
    assert {p["key"] for p in memo["problems"]} == {
        "raw-a/2021-01-02/images/kept.dcm",
        "raw-a/2021-01-02/images/fixed.dcm",
        "raw-a/2021-01-02/images/changed.dcm",
        "raw-a/2021-01-02/data/Broken_data.json",
    }
    assert "problems" not in base and base["memo"] == LATEST and base["key"] == first_key

    # a site fixes one file, uploads a new bad one and replaces another with other garbage
    name, data = image("Covid1", "DX")
    store.write("raw-a/2021-01-02/images/fixed.dcm", data)
    store.write("raw-a/2021-01-03/images/new.dcm", b"more garbage")
    store.write("raw-a/2021-01-02/images/changed.dcm", b"longer garbage than before")
    code, state = builders.run_loader(store)
    assert code == 0
    second_key = (set(stamped_keys(store)) - {first_key}).pop()
    report = read(store, second_key)
    changes = report["changes"]
    assert [p["key"] for p in changes["new"]] == ["raw-a/2021-01-03/images/new.dcm"]
    assert [(p["key"], p["size"]) for p in changes["changed"]] == [
        ("raw-a/2021-01-02/images/changed.dcm", len(b"longer garbage than before"))
    ]
    assert changes["resolved"] == ["raw-a/2021-01-02/images/fixed.dcm"]
    assert changes["unchanged"] == 2 and changes["total"] == 4
    assert report["previous"] == first_key and report["previous_run_id"] == first["run_id"]
    assert report["not_filed"] == {"invalid JSON": 1, "not a DICOM file": 3}
    assert report["not_filed_by_prefix"] == {"raw-a": report["not_filed"]}
    assert report["run_id"] == state.report.run_id and "problems" not in report

    # (3) latest.json is the whole list, in the schema the next run and the dashboard read
    memo = read(store, LATEST)
    assert check_previous_report(store.read(LATEST))["run_id"] == state.report.run_id
    assert figures.loader_report_problem(memo) == ""
    assert figures.loader_run(memo)["unfiled"] == 4
    assert memo["key"] == second_key
    assert {p["key"] for p in memo["problems"]} == {
        "raw-a/2021-01-02/images/kept.dcm",
        "raw-a/2021-01-02/images/changed.dcm",
        "raw-a/2021-01-02/data/Broken_data.json",
        "raw-a/2021-01-03/images/new.dcm",
    }
    # every run's whole list can be rebuilt from the timestamped reports alone
    assert rebuild_chain(store, second_key) == whole(memo["problems"])
    assert rebuild_chain(store, first_key) == whole(first["problems"])

    # the next run reads the memo: nothing is read again, and it says so
    code, third = builders.run_loader(store)
    assert code == 0
    assert third.report.counts["unfiled inputs not read again (unchanged)"] == 4
    third_key = (set(stamped_keys(store)) - {first_key, second_key}).pop()
    assert read(store, third_key)["previous"] == second_key
    assert read(store, third_key)["changes"]["unchanged"] == 4
    assert rebuild_chain(store, third_key) == whole(read(store, LATEST)["problems"])


def test_the_run_page_shows_the_changes_and_totals_and_links_the_whole_list(store):
    _, first_key = _first_run(store)
    store.write("raw-a/2021-01-03/images/<b>new</b>.dcm", b"more garbage")
    assert builders.run_loader(store)[0] == 0
    second_key = (set(stamped_keys(store)) - {first_key}).pop()
    page = store.read(second_key.removesuffix(".json") + ".html").decode()
    text = html_module.unescape(page)
    # the change, escaped, and the totals; not the inputs that did not change
    rows = re.findall(
        r'<tr class="change" data-change="(\w+)"><td>[^<]*</td><td class="key">([^<]*)', page
    )
    assert rows == [("new", "raw-a/2021-01-03/images/&lt;b&gt;new&lt;/b&gt;.dcm")]
    assert "<b>new</b>" not in page
    assert "kept.dcm" not in text and "Broken_data.json" not in text
    assert 'data-total="unfiled" data-value="5"' in page
    assert 'data-total="new" data-value="1"' in page
    assert 'data-total="unchanged" data-value="4"' in page
    assert 'data-prefix="raw-a" data-reason="not a DICOM file"' in page
    # it links the whole list's page and the report before it, beside it
    previous_page = first_key.rsplit("/", 1)[-1].removesuffix(".json") + ".html"
    assert 'href="latest.html"' in page and f'href="{previous_page}"' in page
    # the whole list's page lists every input not filed, and links back to the run's page
    full = html_module.unescape(store.read(REPORTS + "latest.html").decode())
    for problem in read(store, LATEST)["problems"]:
        assert problem["key"] in full
    assert second_key.rsplit("/", 1)[-1].removesuffix(".json") + ".html" in full


def test_a_run_that_did_not_list_keeps_the_memo_and_says_resolved_is_not_known(store):
    _, first_key = _first_run(store)
    memo = store.read(LATEST)
    store.write("config.json", b"{ not json")
    code, state = builders.run_loader(store)
    assert code == 2
    assert store.read(LATEST) == memo  # still the last run that listed
    second_key = (set(stamped_keys(store)) - {first_key}).pop()
    report = read(store, second_key)
    assert report["previous"] == first_key and report["fatal"]
    assert report["changes"]["resolved"] is None  # it met nothing, which proves nothing
    assert report["changes"]["new"] == report["changes"]["changed"] == []
    page = store.read(second_key.removesuffix(".json") + ".html").decode()
    assert 'data-total="resolved" data-value="">not known' in page


def test_a_memo_written_before_memos_named_their_report_still_links(store):
    """The first run after an upgrade: the memo has no ``key`` nor feedback record.

    The run's report names the memo's report by its start; each prefix's feedback gets a base.
    """
    _, first_key = _first_run(store)
    memo = read(store, LATEST)
    del memo["key"], memo["feedback"]
    store.write(LATEST, json.dumps(memo).encode())
    before = {info.key for info in store.list("feedback/")}
    assert builders.run_loader(store)[0] == 0
    second_key = (set(stamped_keys(store)) - {first_key}).pop()
    assert read(store, second_key)["previous"] == first_key
    written = sorted({info.key for info in store.list("feedback/")} - before)
    assert len(written) == 1 and STAMPED.fullmatch(written[0].split("/")[-1])
    base = read(store, written[0])
    assert base["previous"] is None
    assert whole(base["changes"]["new"]) == whole(
        read(store, "feedback/raw-a/latest.json")["problems"]
    )
    assert read(store, LATEST)["feedback"] == {"raw-a": written[0]}


# Sharded runs ---------------------------------------------------------------------------------


def test_a_sharded_run_writes_the_changes_of_the_whole_run(store):
    _, first_key = _first_run(store)
    store.write("raw-a/2021-01-03/images/new.dcm", b"more garbage")
    name, data = image("Covid1", "DX")
    store.write("raw-a/2021-01-02/images/fixed.dcm", data)
    run = {"workers": 2, "run_id": "sharded-1"}
    assert builders.run_loader(store, phase="clinical", **run)[0] == 0
    assert builders.run_loader(store, phase="images", shard=(0, 2), **run)[0] == 0
    assert builders.run_loader(store, phase="images", shard=(1, 2), **run)[0] == 0
    memo = read(store, LATEST)
    assert memo["run_id"] == "sharded-1" and memo["shards"] == 2
    second_key = memo["key"]
    report = read(store, second_key)
    assert [p["key"] for p in report["changes"]["new"]] == ["raw-a/2021-01-03/images/new.dcm"]
    assert report["changes"]["resolved"] == ["raw-a/2021-01-02/images/fixed.dcm"]
    assert report["changes"]["changed"] == [] and report["changes"]["unchanged"] == 3
    assert report["previous"] == first_key and report["shards"] == 2
    assert rebuild_chain(store, second_key) == whole(memo["problems"])
    feedback = read(store, "feedback/raw-a/latest.json")
    changes = read(store, feedback["key"])["changes"]
    assert [p["key"] for p in changes["new"]] == ["raw-a/2021-01-03/images/new.dcm"]
    assert changes["resolved"] == ["raw-a/2021-01-02/images/fixed.dcm"]

    # a run ended again (an operator forcing it) does not make its report its own base
    ended = runs.finish_run(store, "warehouseloader", "sharded-1", 2, force=True)
    again = read(store, ended.key)
    assert ended.key == second_key and again["previous"] is None
    assert whole(again["changes"]["new"]) == whole(memo["problems"])
