"""Symbolic links in a local store, end to end: the listings report them, the loader never
files anything through one, and the warehouse side never trusts one as filed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.reasons import Reason
from warehouse.dashboard.tables import storage_by_prefix
from warehouse.listing.raw import list_raw
from warehouse.listing.warehouse import index_warehouse
from warehouse.storage.local import LocalStorage

CENTRE = "Train Trust"
STUDY = "1.2.3.4"
SERIES = "1.2.3.4.5"


@pytest.fixture
def store(tmp_path):
    (tmp_path / "bucket").mkdir()
    return LocalStorage(tmp_path / "bucket")


def files_below(folder: Path) -> dict[str, bytes]:
    """Every regular file below ``folder`` (links not followed), path -> content."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def real_uploads(folder: Path, pseudonym: str) -> dict[str, bytes]:
    """One patient's clinical file and image in the raw layout, written below ``folder``."""
    name, data = image(pseudonym, "DX")
    files = {
        f"2021-01-01/data/{pseudonym}_data.json": clinical(pseudonym, CENTRE),
        f"2021-01-01/images/{name}": data,
    }
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return files


def test_symlink_is_a_reason():
    assert Reason.SYMLINK.value == "symbolic link"


# --------------------------------------------------------------------------------------------
# the raw side


def test_linked_raw_prefix_is_reported_and_nothing_outside_is_filed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    real_uploads(outside, "Covid1")
    before_outside = files_below(outside)
    (store.root / "raw-a").symlink_to(outside)
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a", "raw-b"], training=[CENTRE]),
            "raw-b/2021-01-02/data/Covid2_data.json": clinical("Covid2", CENTRE),
        },
    )

    listing = list_raw(store, ("raw-a", "raw-b"))
    assert listing.links == ["raw-a"]
    assert [raw.key for raw, _ in listing.clinical] == ["raw-b/2021-01-02/data/Covid2_data.json"]
    assert listing.images == [] and listing.other == []

    code, _ = builders.run_loader(store)
    assert code == 0
    filed = sorted(i.key for i in store.list("training/")) + list(store.list("validation/"))
    assert filed == ["training/data/Covid2/data_2021-01-02.json"]
    assert files_below(outside) == before_outside


def test_linked_upload_folder_and_linked_files_are_reported_not_listed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    uploads = real_uploads(outside, "Covid1")
    image_name = next(k for k in uploads if "/images/" in k).rsplit("/", 1)[1]
    builders.put_tree(store, {"raw-a/2021-01-02/data/Covid2_data.json": clinical("Covid2", CENTRE)})
    (store.root / "raw-a" / "2021-01-01").symlink_to(outside / "2021-01-01")
    (store.root / "raw-a" / "2021-01-02" / "images").mkdir()
    (store.root / "raw-a" / "2021-01-02" / "images" / "x.dcm").symlink_to(
        outside / "2021-01-01" / "images" / image_name
    )
    (store.root / "raw-a" / "2021-01-02" / "data" / "Covid3_data.json").symlink_to(
        outside / "2021-01-01" / "data" / "Covid1_data.json"
    )
    (store.root / "raw-z").symlink_to(outside)  # not configured: reported too

    listing = list_raw(store, ("raw-a",))
    assert listing.links == [
        "raw-a/2021-01-01",
        "raw-a/2021-01-02/data/Covid3_data.json",
        "raw-a/2021-01-02/images/x.dcm",
        "raw-z",
    ]
    assert [raw.key for raw, _ in listing.clinical] == ["raw-a/2021-01-02/data/Covid2_data.json"]
    assert listing.images == [] and listing.other == [] and listing.unconfigured == []


# --------------------------------------------------------------------------------------------
# the warehouse side


def test_training_link_gets_no_write_outside_the_bucket(store, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store.root / "training").symlink_to(elsewhere)
    builders.put_tree(store, {"config.json": builders.config(["raw-a"], training=[CENTRE])})
    real_uploads(store.root / "raw-a", "Covid1")

    index = index_warehouse(store)
    assert index.links == ["training"] and index.objects == 0 and index.groups == {}

    code, state = builders.run_loader(store)
    assert code != 0  # the run could not file what it had to
    failed = {p["key"]: p for p in state.report.problems if p["reason"] == "write failed"}
    assert sorted(failed) == sorted(i.key for i in store.list("raw-a/"))
    assert all("training is a symbolic link" in p["detail"] for p in failed.values())
    assert list(elsewhere.iterdir()) == []
    assert (store.root / "training").is_symlink()


def test_warehouse_links_are_not_trusted_as_filed(store, tmp_path):
    outside = tmp_path / "outside"
    (outside / "Covid9").mkdir(parents=True)
    (outside / "Covid9" / "data_2021-01-01.json").write_bytes(clinical("Covid9", CENTRE))
    store.write("training/data/Covid1/data_2021-01-01.json", clinical("Covid1", CENTRE))
    metadata = f"training/xray-metadata/Covid1/{STUDY}/{SERIES}/a.json"
    store.write(metadata, b"{}")
    (store.root / "training" / "data" / "Covid9").symlink_to(outside / "Covid9")
    (store.root / "training" / "data" / "Covid1" / "data_2021-02-01.json").symlink_to(
        outside / "Covid9" / "data_2021-01-01.json"
    )
    (store.root / "training" / "xray" / "Covid1" / STUDY / SERIES).mkdir(parents=True)
    (store.root / "training" / "xray" / "Covid1" / STUDY / SERIES / "a.dcm").symlink_to(
        outside / "Covid9" / "data_2021-01-01.json"
    )
    (store.root / "validation").symlink_to(outside)
    links = [
        "training/data/Covid1/data_2021-02-01.json",
        "training/data/Covid9",
        f"training/xray/Covid1/{STUDY}/{SERIES}/a.dcm",
        "validation",
    ]

    index = index_warehouse(store, workers=3)
    assert index.links == links
    assert index.groups == {"Covid1": "training"}
    assert {(p, f.name) for p, files in index.clinical_files.items() for f in files} == {
        ("Covid1", "data_2021-01-01.json")
    }
    assert index.image_names == set() and not index.image_done("a.dcm")
    assert index.objects == 2

    contents = index_warehouse(store, workers=3)  # as dataprocess lists it too
    assert contents.links == links
    assert sorted(contents.clinical_files) == ["Covid1"]
    assert [f.name for f in contents.clinical_files["Covid1"]] == ["data_2021-01-01.json"]
    assert [s.key for s in contents.studies.values()] == [metadata]
    assert contents.objects == 2
    sizes = storage_by_prefix(contents.stored_bytes())
    assert sum(sizes.values()) == len(clinical("Covid1", CENTRE)) + 2
