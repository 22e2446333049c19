"""The loader's own state files, read like uploads: a catalogue part or a run report that cannot
be used is reported by name and never costs the duplicate rule; an image's provenance is never
borrowed from another upload."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq

from tests import builders
from tests.builders import clinical, image
from tests.test_catalogue import _tree, part_keys, part_rows, store_delete
from tests.test_dataprocess import catalogue_bytes, read_batch
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_warehouseloader import SPLIT
from warehouse.catalogue.rows import read_part

LATEST = "reports/warehouseloader/latest.json"


def _problems(state) -> dict[str, tuple[str, str]]:
    return {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}


def test_a_corrupt_part_is_reported_and_its_images_still_known_to_the_duplicate_rule(store):
    builders.put_tree(store, _tree(images=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    (part,) = part_keys(store)
    filed = {r["warehouse_key"]: r["raw_key"] for r in part_rows(store)}
    store.write(part, store.read(part)[:200])  # truncated
    # the same instance as a filed image, uploaded again under another name
    some_image, raw_key = sorted(filed.items())[0]
    store.write("raw-a/2021-03-01/images/again.dcm", store.read(raw_key))
    code, state = builders.run_loader(store, workers=4)
    problems = _problems(state)
    assert code == 1 and state.report.fatal and part in state.report.fatal
    assert problems[part][0] == "invalid catalogue part"
    reason, detail = problems["raw-a/2021-03-01/images/again.dcm"]
    assert reason == "duplicate image" and some_image in detail
    assert json.loads(store.read(LATEST))["catalogue"]["complete"] is False
    # the images the part vouched for are listed again, in this run's parts: catalogued from
    # their headers, then named by the raw files the run found filed at them
    new_parts = [k for k in part_keys(store) if k != part]
    rows = [r for key in new_parts for r in read_part(store.read(key)).to_pylist()]
    assert {r["warehouse_key"] for r in rows} == set(filed)
    assert {r["warehouse_key"]: r["raw_key"] for r in rows} == filed  # (the newest rows)


def test_a_wrong_typed_run_report_is_reported_and_every_input_read_again(store):
    files = _tree(images=3)
    files["raw-a/2021-01-02/images/garbage.dcm"] = b"garbage" * 50
    builders.put_tree(store, files)
    assert builders.run_loader(store, workers=4)[0] == 0
    report = json.loads(store.read(LATEST))
    for problem in report["problems"]:
        problem["size"] = "many"
    report["catalogue"]["cutoff"] = "yesterday"
    store.write(LATEST, json.dumps(report).encode())
    code, state = builders.run_loader(store, workers=4)
    assert code == 1
    reason, detail = _problems(state)[LATEST]
    assert reason == "invalid run report" and "problems/0/size" in detail
    # no memo: the garbage is read again (and reported again), nothing is filed twice
    assert _problems(state)["raw-a/2021-01-02/images/garbage.dcm"][0] == "not a DICOM file"
    assert "unfiled inputs not read again (unchanged)" not in state.report.counts
    assert "images copied" not in state.report.counts
    # the run wrote a good memo: the next one is clean
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["unfiled inputs not read again (unchanged)"] == 1


def test_a_report_with_a_time_that_is_not_a_time_is_refused(store):
    builders.put_tree(store, _tree(images=2))
    assert builders.run_loader(store, workers=4)[0] == 0
    report = json.loads(store.read(LATEST))
    report["catalogue"]["listed_until"] = "yesterday"
    store.write(LATEST, json.dumps(report).encode())
    code, state = builders.run_loader(store, workers=4)
    assert code == 1 and "catalogue/listed_until" in _problems(state)[LATEST][1]


def test_provenance_is_never_borrowed_from_a_file_of_the_same_name_and_size(store):
    """Images in no part get no raw key from a guess: a zero-filled file of the
    same name and size under another prefix is never their source; only a raw file the run
    reads and finds filed at its own target is."""
    files = _tree(images=4)
    files["config.json"] = builders.config(["raw-a", "raw-aaa"], split=[SPLIT])
    builders.put_tree(store, files)
    assert builders.run_loader(store, workers=4)[0] == 0
    rows = part_rows(store)
    source = {r["warehouse_key"]: r["raw_key"] for r in rows}
    for row in rows:  # a decoy before the true source in key order
        name = row["warehouse_key"].rsplit("/", 1)[1]
        store.write(f"raw-aaa/1999-01-01/images/{name}", bytes(row["object_size"]))
    for key in part_keys(store):
        store_delete(store, key)  # as if the run had stopped before its part
    report = json.loads(store.read(LATEST))
    del report["catalogue"]
    store.write(LATEST, json.dumps(report).encode())
    # a daily run files the images again from their own raw files: their true sources
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    assert {r["warehouse_key"]: r["raw_key"] for r in part_rows(store)} == source
    # a warehouse's first run (no folder state, no part) reads the filed images' headers:
    # their raw keys unknown, never the decoy's; then it reads the raw files it lists, and
    # only their own raw files (the decoys are no DICOM) name them
    for key in part_keys(store):
        store_delete(store, key)
    store_delete(store, "state/raw-folders.json")
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    first, then = part_keys(store)
    recovered = read_part(store.read(first)).to_pylist()
    assert len(recovered) == 4
    assert all(r["raw_key"] is None and r["upload_date"] is None for r in recovered)
    named = {r["warehouse_key"]: r["raw_key"] for r in read_part(store.read(then)).to_pylist()}
    assert named == source
    # and dataprocess's catalogue takes the newest rows
    code, state = run_dataprocess(store, workers=4)
    assert code == 0
    _, out = read_batch(store.processed())
    catalogue = pq.read_table(io.BytesIO(catalogue_bytes(out))).to_pylist()
    assert {r["warehouse_key"]: r["raw_key"] for r in catalogue} == source


def test_the_true_source_is_recorded_by_the_run_that_files_the_image(store):
    name, data = image("Covid1", "DX")
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a", "raw-aaa"], split=[SPLIT]),
            "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", SPLIT),
            f"raw-a/2021-01-05/images/{name}": data,
            f"raw-aaa/1999-01-01/images/{name}": bytes(len(data)),
        },
    )
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    (row,) = part_rows(store)
    assert row["raw_key"] == f"raw-a/2021-01-05/images/{name}"


def test_a_same_name_flood_never_makes_a_rerun_read_filed_images(store):
    """Junk files named like filed images (under another prefix) are read once and
    remembered; the filed images are known by their raw keys and never read again."""
    files = _tree(images=6)
    files["config.json"] = builders.config(["raw-a", "raw-b"], split=[SPLIT])
    builders.put_tree(store, files)
    assert builders.run_loader(store, workers=4)[0] == 0
    for key in [k for k in files if "/images/" in k]:
        store.write(f"raw-b/2021-05-01/images/{key.rsplit('/', 1)[1]}", b"junk")
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.reasons["not a DICOM file"] == 6
    assert state.report.counts["images already filed"] == 6
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and "header read requests" not in state.report.counts
    assert state.report.counts["unfiled inputs not read again (unchanged)"] == 6


def test_many_images_of_one_name_are_read_once(store):
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    for n in range(12):
        _, data = image(f"Covid{n % 3 + 1}", "DX", f"s{n}", "r1", n)
        files[f"raw-a/2021-01-{n + 1:02d}/images/x.dcm"] = data
    for p in range(1, 4):
        files[f"raw-a/2021-01-01/data/Covid{p}_data.json"] = clinical(f"Covid{p}", SPLIT)
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["images copied"] == 12
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and "header read requests" not in state.report.counts
    assert state.report.counts["images already filed"] == 12
