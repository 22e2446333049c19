"""Listing once per run: the warehouse index and the classified raw prefixes."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from tests import builders
from warehouse.listing.raw import RawListing, list_raw, pending_images
from warehouse.listing.warehouse import (
    WarehouseIndex,
    changed_since_filed,
    index_warehouse,
    pack_stamp,
)
from warehouse.storage.local import LocalStorage


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    return LocalStorage(root)


def put(storage, *keys):
    for key in keys:
        storage.write(key, b"{}")


def raw_keys(items) -> list[str]:
    return [raw.key for raw, _ in items]


# --------------------------------------------------------------------------------------------
# WarehouseIndex


def test_index_from_keys():
    index = WarehouseIndex()
    for key in [
        "training/data/Covid1/data_2021-01-04.json",
        "training/data/Covid1/status_2021-01-11.json",
        "validation/data/Covid14/status_2021-01-04.json",
        "training/xray/Covid1/1.2/1.2.3/a.dcm",
        "training/xray-metadata/Covid1/1.2/1.2.3/a.json",
        "validation/ct/Covid14/1.4/1.4.5/b.dcm",
        "config.json",  # not warehouse keys: ignored
        "raw-a/2021-01-04/data/Covid1_data.json",
        "reports/warehouseloader/x.json",
        "training/unknown/Covid1/1/2/c.dcm",
    ]:
        index.add(key)
    assert index.groups == {"Covid1": "training", "Covid14": "validation"}
    assert index.conflicts == {}
    assert filed_clinical(index) == {
        ("Covid1", "data_2021-01-04.json"),
        ("Covid1", "status_2021-01-11.json"),
        ("Covid14", "status_2021-01-04.json"),
    }
    assert index.image_names == {"a.dcm", "b.dcm"}
    assert index.metadata_names == {"a.json"}
    assert index.keys == {
        "training/xray/Covid1/1.2/1.2.3/a.dcm",
        "training/xray-metadata/Covid1/1.2/1.2.3/a.json",
        "validation/ct/Covid14/1.4/1.4.5/b.dcm",
    }
    assert index.objects == 6
    assert index.image_done("a.dcm")
    assert not index.image_done("b.dcm")  # no metadata yet
    assert not index.image_done("c.dcm")


def test_index_conflicts():
    index = WarehouseIndex()
    index.add("training/data/Covid1/data_2021-01-04.json")
    index.add("validation/data/Covid1/data_2021-01-11.json")
    index.add("training/data/Covid1/status_2021-01-18.json")
    index.add("validation/data/Covid2/data_2021-01-04.json")
    assert index.conflicts == {"Covid1": {"training", "validation"}}
    assert index.groups["Covid1"] == "training"  # first seen; callers use conflicts
    assert index.groups["Covid2"] == "validation"
    assert ("Covid1", "data_2021-01-11.json") in filed_clinical(index)


def test_image_done_needs_the_metadata_of_the_same_stem():
    index = WarehouseIndex()
    index.add("training/mri/P/1.2/1.2.3/Scan.DCM")
    index.add("training/mri-metadata/P/1.2/1.2.3/Scan.json")
    index.add("training/mri/P/1.2/1.2.3/other.dcm")
    index.add("training/mri-metadata/P/1.2/1.2.3/Other.json")
    assert index.image_done("Scan.DCM")
    assert not index.image_done("other.dcm")  # names are case-sensitive
    assert not index.image_done("Scan.dcm")


def test_index_warehouse_lists_both_groups(store):
    put(
        store,
        "training/data/Covid1/data_2021-01-04.json",
        "validation/data/Covid14/data_2021-01-04.json",
        "validation/xray/Covid14/1.2/1.2.3/x.dcm",
        "validation/xray-metadata/Covid14/1.2/1.2.3/x.json",
        "raw-a/2021-01-04/data/Covid1_data.json",
        "trainingset/data/Covid9/data_2021-01-04.json",
    )
    index = index_warehouse(store, workers=2)
    assert index.groups == {"Covid1": "training", "Covid14": "validation"}
    assert index.image_done("x.dcm")
    assert index.objects == 4


# --------------------------------------------------------------------------------------------
# list_raw


def test_list_raw_classifies_and_sorts(store):
    put(
        store,
        "config.json",
        # clinical: sorted by upload date, then key (not by prefix)
        "raw-b/2021-01-05/data/Covid3_data.json",
        "raw-a/2021-01-11/data/Covid1_status.json",
        "raw-a/2021-01-04/data/Covid2_status.json",
        "raw-a/2021-01-04/data/Covid1_data.json",
        "raw-b/2021-01-04/data/Covid0_data.json",
        # images: sorted by key
        "raw-b/2021-01-05/images/z.dcm",
        "raw-a/2021-01-11/images/b.DCM",
        "raw-a/2021-01-04/images/c.dcm",
        # other kinds of files
        "raw-a/2021-01-04/images/notes.txt",
        "raw-a/2021-01-04/upload.log",
        "raw-a/2021-13-01/data/Covid5_data.json",
        "raw-a/2021-01-04/age-0/data/Covid6_data.json",
        "raw-b/readme.txt",
        # not configured
        "raw-c/2021-01-04/data/Covid7_data.json",
        "raw-d/2021-01-04/images/d.dcm",
        "training/data/Covid1/data_2021-01-04.json",
    )
    listing = list_raw(store, ("raw-a", "raw-b"), workers=3)
    assert raw_keys(listing.clinical) == [
        "raw-a/2021-01-04/data/Covid1_data.json",
        "raw-a/2021-01-04/data/Covid2_status.json",
        "raw-b/2021-01-04/data/Covid0_data.json",
        "raw-b/2021-01-05/data/Covid3_data.json",
        "raw-a/2021-01-11/data/Covid1_status.json",
    ]
    assert [size for _, size in listing.clinical] == [2] * 5
    assert raw_keys(listing.images) == [
        "raw-a/2021-01-04/images/c.dcm",
        "raw-a/2021-01-11/images/b.DCM",
        "raw-b/2021-01-05/images/z.dcm",
    ]
    assert [(raw.key, raw.reason) for raw in listing.other] == [
        ("raw-a/2021-01-04/age-0/data/Covid6_data.json", "not in the raw layout"),
        ("raw-a/2021-01-04/images/notes.txt", "not a .dcm file"),
        ("raw-a/2021-01-04/upload.log", "not in the raw layout"),
        ("raw-a/2021-13-01/data/Covid5_data.json", "not in a YYYY-MM-DD upload folder"),
        ("raw-b/readme.txt", "not in the raw layout"),
    ]
    assert listing.unconfigured == ["raw-c", "raw-d"]
    first = listing.clinical[0][0]
    assert (first.prefix, first.upload_date, first.pseudonym, first.clinical_kind) == (
        "raw-a",
        "2021-01-04",
        "Covid1",
        "data",
    )


def test_list_raw_nothing_configured(store):
    put(store, "raw-a/2021-01-04/data/Covid1_data.json")
    listing = list_raw(store, ())
    assert listing.clinical == listing.images == listing.other == []
    assert listing.unconfigured == ["raw-a"]


def test_list_raw_configured_prefix_missing(store):
    put(store, "config.json")
    listing = list_raw(store, ("raw-a",))
    assert listing == RawListing()


def test_list_raw_prefix_names_must_match_exactly(store):
    put(store, "raw-a/2021-01-04/data/Covid1_data.json", "raw-ab/2021-01-04/data/Covid2_data.json")
    listing = list_raw(store, ("raw-a",))
    assert raw_keys(listing.clinical) == ["raw-a/2021-01-04/data/Covid1_data.json"]
    assert listing.unconfigured == ["raw-ab"]


# --------------------------------------------------------------------------------------------
# pending_images


def test_pending_images(store):
    put(
        store,
        "raw-a/2021-01-04/images/done.dcm",
        "raw-a/2021-01-04/images/no-metadata.dcm",
        "raw-a/2021-01-04/images/new.dcm",
        "raw-a/2021-01-11/images/shared.dcm",
        "raw-a/2021-01-18/images/shared.dcm",
    )
    index = WarehouseIndex()
    for key in [
        "training/xray/P/1.2/1.2.3/done.dcm",
        "training/xray-metadata/P/1.2/1.2.3/done.json",
        "training/xray/P/1.2/1.2.3/no-metadata.dcm",
        "training/ct/Q/1.5/1.5.6/shared.dcm",
        "training/ct-metadata/Q/1.5/1.5.6/shared.json",
    ]:
        index.add(key)
    listing = list_raw(store, ("raw-a",))
    result = [
        (raw.key, size) for raw, size in pending_images(listing, index, lambda raw, size: False)
    ]
    assert result == [
        ("raw-a/2021-01-04/images/done.dcm", None),
        ("raw-a/2021-01-04/images/new.dcm", 2),
        ("raw-a/2021-01-04/images/no-metadata.dcm", 2),
        # two raw files share the name: both are processed, the full target keys decide
        ("raw-a/2021-01-11/images/shared.dcm", 2),
        ("raw-a/2021-01-18/images/shared.dcm", 2),
    ]
    assert listing.image_name_counts()["shared.dcm"] == 2


def test_pending_images_with_an_empty_warehouse(store):
    put(store, "raw-a/2021-01-04/images/a.dcm", "raw-a/2021-01-04/images/b.dcm")
    listing = list_raw(store, ("raw-a",))
    pending = list(pending_images(listing, WarehouseIndex(), lambda raw, size: False))
    assert [(raw.name, size) for raw, size in pending] == [("a.dcm", 2), ("b.dcm", 2)]


# --------------------------------------------------------------------------------------------
# the raw side, whatever its names, depths and times

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def every_key(listing: RawListing) -> list[str]:
    """Every key a listing holds, once per list it is in."""
    return sorted(
        [raw.key for raw, _ in listing.clinical + listing.images]
        + [raw.key for raw in listing.other]
        + listing.links
        + [refusal.key for refusal in listing.refused]
    )


def touch(store: LocalStorage, key: str, when: dt.datetime) -> None:
    os.utime(store.root / key, (when.timestamp(), when.timestamp()))


def test_list_raw_refuses_odd_names_depths_and_times_and_keeps_every_name(store):
    gone = builders.exited_pid()
    deep = "raw-a/" + "d/" * 500 + "x.dcm"
    keys = {
        "raw-a/2021-01-04/data/Covid1_data.json": "clinical",
        f"raw-a/2021-01-04/images/.tmp-{gone}-x.dcm": "image",
        "raw-a/2021-01-04/images/.tmp-99999999999999999999999-x.dcm": "image",
        "raw-a/2021-01-04/images/.tmp-\u00b2-x.dcm": "image",
        "raw-a/2021-01-04/images/new\nline.dcm": "unsafe name",
        "raw-a/2021-01-04/images/future.dcm": "implausible modification time",
        "raw-a/2021-01-04/images/zip-epoch.dcm": "implausible modification time",
        "raw-a/2021-01-04/notes/future.txt": "implausible modification time",
        deep: None,  # below the folder reported in its place
    }
    put(store, *keys)
    now = dt.datetime.now(dt.UTC)
    touch(store, "raw-a/2021-01-04/images/future.dcm", dt.datetime(2300, 1, 1, tzinfo=dt.UTC))
    touch(store, "raw-a/2021-01-04/notes/future.txt", now + dt.timedelta(days=2))
    touch(store, "raw-a/2021-01-04/images/zip-epoch.dcm", dt.datetime(1980, 1, 1, tzinfo=dt.UTC))

    listing = list_raw(store, ("raw-a",), workers=3, now=now)

    sixteenth = "raw-a/" + "d/" * 15  # the folder 16 levels deep: not entered
    refused = {r.key: (r.reason.value, r.detail, r.size, r.modified) for r in listing.refused}
    assert refused == {
        "raw-a/2021-01-04/images/future.dcm": (
            "implausible modification time",
            f"last modified 2300-01-01T00:00:00+00:00, after the listing ({now.isoformat()})",
            2,
            "2300-01-01T00:00:00+00:00",
        ),
        "raw-a/2021-01-04/images/new\nline.dcm": (
            "unsafe name",
            "'new\\nline.dcm' holds U+000A at 3",
            2,
            refused["raw-a/2021-01-04/images/new\nline.dcm"][3],
        ),
        "raw-a/2021-01-04/images/zip-epoch.dcm": (
            "implausible modification time",
            "last modified 1980-01-01T00:00:00+00:00, before 1990-01-01",
            2,
            "1980-01-01T00:00:00+00:00",
        ),
        "raw-a/2021-01-04/notes/future.txt": (
            "implausible modification time",
            refused["raw-a/2021-01-04/notes/future.txt"][1],
            2,
            (now + dt.timedelta(days=2)).isoformat(),
        ),
        sixteenth: (
            "unsafe name",
            "a folder 16 levels deep that holds more: nothing below it is listed",
            0,
            refused[sixteenth][3],
        ),
    }
    assert [raw.name for raw, _ in listing.images] == sorted(
        [".tmp-99999999999999999999999-x.dcm", f".tmp-{gone}-x.dcm", ".tmp-\u00b2-x.dcm"]
    )
    assert raw_keys(listing.clinical) == ["raw-a/2021-01-04/data/Covid1_data.json"]
    expected = sorted([k for k, kind in keys.items() if kind is not None] + [sixteenth])
    assert every_key(listing) == expected  # each listed name in exactly one list
    assert all((store.root / key).read_bytes() == b"{}" for key in keys)  # none removed


def test_list_raw_refuses_odd_names_on_s3(s3_store):
    """S3 lists flat: a key of any depth is listed, and refused by its own name."""
    deep = "raw-a/" + "d/" * 500 + "x.dcm"
    put(
        s3_store,
        "raw-a/2021-01-04/images/ok.dcm",
        deep,
        "raw-a/2021-01-04/images/tab\t.dcm",
        "raw-a/2021-01-04/images/" + "\u00e9" * 501 + ".dcm",
        f"raw-a/2021-01-04/images/.warehouse-partial-{os.getpid()}-" + "0a" * 16,
    )
    listing = list_raw(s3_store, ("raw-a",), workers=2)
    refused = {r.key: (r.reason.value, r.detail) for r in listing.refused}
    assert refused == {
        deep: ("unsafe name", "502 levels (at most 16)"),
        "raw-a/2021-01-04/images/tab\t.dcm": ("unsafe name", "'tab\\t.dcm' holds U+0009 at 3"),
        "raw-a/2021-01-04/images/" + "\u00e9" * 501 + ".dcm": (
            "unsafe name",
            "1,030 bytes long (at most 1,024)",
        ),
    }
    assert raw_keys(listing.images) == ["raw-a/2021-01-04/images/ok.dcm"]
    assert [raw.name for raw in listing.other] == [
        f".warehouse-partial-{os.getpid()}-" + "0a" * 16  # an upload: listed, not hidden
    ]


def test_stamps_of_times_out_of_range_keep_their_size():
    for when in (dt.datetime.max, dt.datetime(2600, 1, 1), dt.datetime(1901, 1, 1)):
        stamp = pack_stamp(7, when.replace(tzinfo=dt.UTC))
        assert not changed_since_filed(stamp, pack_stamp(7, when.replace(tzinfo=dt.UTC)))
        assert changed_since_filed(stamp, pack_stamp(8, when.replace(tzinfo=dt.UTC)))
    early = pack_stamp(7, dt.datetime(1901, 1, 1, tzinfo=dt.UTC))
    assert not changed_since_filed(early, pack_stamp(7, dt.datetime(2021, 1, 1, tzinfo=dt.UTC)))


def test_warehouse_objects_with_implausible_times_have_no_date():
    index = WarehouseIndex(listed_at=NOW)
    when = dt.datetime(2300, 1, 1, tzinfo=dt.UTC)
    index.add("training/data/P/data_2021-01-04.json", 5, when)
    index.add("training/ct/P/1.2/1.2.3/a.dcm", 9, dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    index.add("training/ct-metadata/P/1.2/1.2.3/a.json", 3, when)
    index.add("training/ct-metadata/P/1.3/1.3.4/b.json", 3, NOW)
    index.add("reports/x.json", 3, when)  # not in the layout: not counted
    assert index.implausible_times == 3
    assert [f.last_modified for f in index.clinical_files["P"]] == [None]
    assert index.clinical_stamp("P", "data_2021-01-04.json") is not None
    assert {study.study: study.last_modified for study in index.studies.values()} == {
        "1.2": None,
        "1.3": NOW.date(),
    }
    assert index.images[("training", "ct", "P", "1.2", None)] == 1


def filed_clinical(index) -> set[tuple[str, str]]:
    """``(pseudonym, file name)`` of every clinical file the index holds."""
    return {(p, f.name) for p, files in index.clinical_files.items() for f in files}
