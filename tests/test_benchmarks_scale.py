"""The scale benchmark's builder and stores at a tiny size.

The warehouse the builder (`benchmarks.scale_layout`) builds is consistent (every placeholder
image has its metadata file, its raw upload and a catalogue row; every placeholder patient its
clinical files; a reconcile finds nothing to file), the generated store
(`benchmarks.scale_storage`) lists and reads what the local build writes, the counting store
counts S3 pages, and the S3 Inventory the benchmark writes (`benchmarks.scale_inventory`) lists
what a listing of the warehouse finds, so that a reconcile reads its closed folders from it and
files nothing. Timings are the benchmark's, not checked here.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.scale_inventory import tree_objects, write_inventory
from benchmarks.scale_layout import (
    Contents,
    Layout,
    build_local,
    closed_state,
    configured_sites,
    upload_folders,
    write_parts,
)
from benchmarks.scale_storage import CountingStorage, GeneratedStorage, RequestCounter, write_spec
from tests.builders import run_loader
from warehouse.listing.inventory import bucket_name, open_inventory
from warehouse.storage.local import LocalStorage

SEED = 5
#: Warehouse-side objects the placeholders add (a few patients).
PLACEHOLDER_OBJECTS = 1500
NEWEST = dt.date(2025, 6, 2)


@pytest.fixture(scope="module")
def real_warehouse(tmp_path_factory):
    """A real warehouse: a small synthetic tree (every modality) filed by the loader."""
    from warehouse.synthetic import generate_tree

    root = tmp_path_factory.mktemp("scale") / "real" / "bucket"
    generate_tree(root, patients=6, images=40, seed=SEED, faults=False)
    (root.parent / "bucket-processed").mkdir()
    code, state = run_loader(LocalStorage(root))
    assert code == 0 and state.report.counts["images copied"] == 40
    return root


def copy_of(real: Path, tmp_path: Path) -> Path:
    """A copy of the real warehouse (times kept: raw uploads stay older than their parts)."""
    root = tmp_path / "bucket"
    shutil.copytree(real, root)
    (tmp_path / "bucket-processed").mkdir()
    return root


def placeholders(root: Path):
    config = json.loads((root / "config.json").read_text())
    sites = configured_sites(config)
    contents = Contents.from_warehouse(root, sites, SEED)
    return Layout.for_objects(PLACEHOLDER_OBJECTS, SEED, sites, NEWEST), contents


def build(root: Path) -> Layout:
    """The benchmark's build: placeholders, their parts, every upload folder closed."""
    layout, contents = placeholders(root)
    build_local(root, layout, contents)
    schema = pq.read_schema(next((root / "catalogue/images").glob("*.parquet")))
    write_parts(root, layout, contents, schema, dt.datetime(2019, 1, 1))
    folders = upload_folders(root, [site.prefix for site in layout.sites])
    (root / "state/raw-folders.json").write_bytes(closed_state(folders, dt.datetime.now(dt.UTC)))
    return layout


def catalogue(root: Path) -> dict[str, dict]:
    rows = {}
    for part in (root / "catalogue/images").glob("*.parquet"):
        for row in pq.read_table(part).to_pylist():
            rows[row["warehouse_key"]] = row
    return rows


def test_every_placeholder_image_is_filed_catalogued_and_uploaded(real_warehouse, tmp_path):
    root = copy_of(real_warehouse, tmp_path)
    build(root)
    rows = catalogue(root)
    images = [
        p
        for group in ("training", "validation")
        for folder in ("ct", "xray", "mri")
        for p in (root / group / folder).glob("Scale*/*/*/*.dcm")
    ]
    assert len(images) >= 500
    warehouse = [
        p for g in ("training", "validation") for p in (root / g).rglob("*") if p.is_file()
    ]
    assert len(warehouse) >= PLACEHOLDER_OBJECTS + 80  # the real part's 40 images and more
    studies: dict[Path, list[Path]] = {}
    for image in images:
        group, folder, patient, study, series, name = image.relative_to(root).parts
        key = image.relative_to(root).as_posix()
        metadata = root / group / f"{folder}-metadata" / patient / study / series
        metadata = metadata / (name[: -len(".dcm")] + ".json")
        assert metadata.is_file(), key
        studies.setdefault(metadata.parent.parent, []).append(metadata)
        row = rows[key]
        assert row["metadata_key"] == metadata.relative_to(root).as_posix()
        assert (row["PatientID"], row["StudyInstanceUID"], row["SeriesInstanceUID"]) == (
            patient,
            study,
            series,
        )
        assert row["SOPInstanceUID"] + ".dcm" == name
        assert row["object_size"] == image.stat().st_size
        raw = root / row["raw_key"]
        assert raw.is_file() and raw.stat().st_size == image.stat().st_size
        assert row["raw_key"].split("/")[2:] == ["images", name]
    for study, files in studies.items():  # the file a reader of studies reads names its own
        first = json.loads(min(files, key=lambda p: p.relative_to(study).as_posix()).read_text())
        assert first["00100020"]["Value"] == [study.parent.name]
        assert first["0020000D"]["Value"] == [study.name]


def test_every_placeholder_patient_has_its_clinical_files(real_warehouse, tmp_path):
    root = copy_of(real_warehouse, tmp_path)
    layout = build(root)
    patients = {
        p.name for g in ("training", "validation") for p in (root / g / "data").glob("Scale*")
    }
    assert patients == {p.name for p in layout.patients}
    uploads = sorted(root.glob("raw-*/*/data/Scale*.json"))
    assert len(uploads) == len(patients)
    for upload in uploads:
        name, kind = upload.name[: -len(".json")].split("_")
        record = json.loads(upload.read_text())
        assert record["Pseudonym"] == name
        (filed,) = [
            f for g in ("training", "validation") for f in (root / g / "data" / name).glob("*")
        ]
        assert filed.name == f"{kind}_{upload.parent.parent.name}.json"
        assert filed.read_bytes() == upload.read_bytes()


def test_a_reconcile_of_the_built_warehouse_files_nothing(real_warehouse, tmp_path):
    root = copy_of(real_warehouse, tmp_path)
    build(root)
    code, state = run_loader(LocalStorage(root), reconcile=True)
    assert code == 0
    counts = state.report.counts
    assert counts.get("images copied", 0) == 0 and counts.get("clinical files copied", 0) == 0
    assert counts.get("filed images in no part catalogued", 0) == 0
    assert state.report.problems == []


def test_the_generated_store_serves_what_the_local_build_writes(real_warehouse, tmp_path):
    built = copy_of(real_warehouse, tmp_path / "local")
    layout = build(built)
    overlay = copy_of(real_warehouse, tmp_path / "generated")
    _, contents = placeholders(overlay)
    spec = tmp_path / "spec.json"
    modified = dt.datetime(2025, 6, 3, tzinfo=dt.UTC)
    write_spec(spec, layout, contents, modified)
    generated = GeneratedStorage.from_spec(spec, overlay)
    local = LocalStorage(built)
    for prefix in ("", "training/", "training/data/", "validation/ct-metadata/", "raw-cornwall/"):
        expected = [(i.key, i.size) for i in local.list(prefix) if _placeholder(i.key)]
        found = [(i.key, i.size) for i in generated.list(prefix) if _placeholder(i.key)]
        assert found == expected, prefix
    everything = [i.key for i in generated.list("")]
    assert everything == sorted(everything) and len(everything) == len(set(everything))
    folders, _ = generated.list_folders("training/data/")
    assert folders == sorted(
        f"training/data/{p.name}/" for p in (built / "training/data").iterdir()
    )
    for info in local.list("validation/"):
        if _placeholder(info.key):
            assert generated.read(info.key) == local.read(info.key), info.key
    some = next(
        i.key for i in local.list("raw-imperial/") if i.key.endswith(".dcm") and _placeholder(i.key)
    )
    assert generated.read_range(some, 0, 132)[128:132] == b"DICM"


def _placeholder(key: str) -> bool:
    return "Scale" in key or "/1.2.826.0.1.3680043.10.1154." in key


def test_the_counting_store_counts_pages_of_a_thousand_keys(local_store):
    for n in range(2500):
        local_store.write(f"training/data/P{n:05d}/data_2021-01-04.json", b"{}")
    counter = RequestCounter()
    store = CountingStorage(local_store, counter)
    assert len(list(store.list("training/data/"))) == 2500
    folders, _ = store.list_folders("training/data/")
    assert len(folders) == 2500
    store.read("training/data/P00001/data_2021-01-04.json")
    store.processed().write("x.json", b"{}")
    found = counter.as_dict()
    assert found["kinds"] == {"LIST": 3 + 3, "GET": 1, "PUT": 1}
    assert found["areas"]["processed"] == {"PUT": 1}
    assert found["listed_keys"] == 5000


def inventory_of(real: Path, root: Path, layout: Layout, folder: Path, created: dt.datetime):
    """The benchmark's inventory of a built warehouse: the real part's files, the placeholders."""
    _, contents = placeholders(real)  # (the real part's templates, as before the build)
    placed = created - dt.timedelta(hours=1)
    generated = GeneratedStorage(LocalStorage(root), layout, contents, placed)
    objects = itertools.chain(tree_objects(real), generated.placeholder_objects())
    return write_inventory(
        folder, root.name, objects, created, rows_per_file=700, row_group_rows=200
    )


def test_the_inventory_lists_what_a_listing_of_the_warehouse_finds(real_warehouse, tmp_path):
    root = copy_of(real_warehouse, tmp_path)
    layout = build(root)
    created = dt.datetime(2025, 7, 1, 0, 0, tzinfo=dt.UTC)
    written = inventory_of(real_warehouse, root, layout, tmp_path / "inventory", created)

    store = LocalStorage(root)
    prefixes = [f"{site.prefix}/" for site in layout.sites] + ["training/", "validation/"]
    report = open_inventory(written.url, bucket_name(store))
    assert report.day == "2025-07-01"
    found = list(report.records(prefixes))
    keys = [info.key for info in found]
    assert len(keys) == len(set(keys))
    listed = {info.key: info for prefix in prefixes for info in store.list(prefix)}
    assert len(listed) > PLACEHOLDER_OBJECTS and sum(k.startswith("raw-") for k in listed) > 500
    assert {(i.key, i.size) for i in found} == {(i.key, i.size) for i in listed.values()}
    for info in found:
        if _placeholder(info.key):  # the placeholders' time: before the report was made
            assert info.last_modified == created - dt.timedelta(hours=1), info.key
        else:  # the real part's: the files' own, to the second as S3 gives it
            expected = listed[info.key].last_modified.replace(microsecond=0)
            assert info.last_modified == expected, info.key
    # written as S3 splits a report: data files of at most 700 rows, row groups of 200
    assert written.files == len(report.files) == -(-written.rows // 700) > 2
    for path in (tmp_path / "inventory" / root.name).glob("*/data/*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        assert metadata.num_rows <= 700
        assert all(metadata.row_group(n).num_rows <= 200 for n in range(metadata.num_row_groups))
    # a generated warehouse is named as its overlay: the inventory's source bucket there too
    _, contents = placeholders(real_warehouse)
    generated = GeneratedStorage(LocalStorage(root), layout, contents, created)
    assert bucket_name(CountingStorage(generated, RequestCounter())) == root.name


class RecordingStorage(CountingStorage):
    """The counting store, recording the prefixes it lists (thread-safe: appends)."""

    def __init__(self, inner, counter):
        super().__init__(inner, counter)
        self.prefixes: list[str] = []

    def list(self, prefix):
        self.prefixes.append(prefix)
        return super().list(prefix)

    def list_after(self, prefix, start_after):
        self.prefixes.append(prefix)
        return super().list_after(prefix, start_after)

    def list_folders(self, prefix):
        self.prefixes.append(prefix)
        return super().list_folders(prefix)


def test_a_reconcile_from_the_inventory_lists_no_folder_it_covers_and_files_nothing(
    real_warehouse, tmp_path
):
    root = copy_of(real_warehouse, tmp_path)
    layout = build(root)
    today = dt.datetime.now(dt.UTC).date()
    created = dt.datetime.combine(today - dt.timedelta(days=2), dt.time(), dt.UTC)
    written = inventory_of(real_warehouse, root, layout, tmp_path / "inventory", created)
    covered = [
        f"{prefix}/{date}/"
        for prefix, dates in upload_folders(root, [site.prefix for site in layout.sites]).items()
        for date in dates
    ]
    # after the report: a new upload folder (a real patient's clinical file, uploaded again)
    upload = next(root.glob("raw-*/*/data/*_data.json"))
    site = upload.relative_to(root).parts[0]
    new = f"{site}/{(today - dt.timedelta(days=1)).isoformat()}/"
    (root / new / "data").mkdir(parents=True)
    shutil.copyfile(upload, root / new / "data" / upload.name)

    counter = RequestCounter()
    store = RecordingStorage(LocalStorage(root), counter)
    code, state = run_loader(store, reconcile=True, inventory=written.url)

    assert code == 0
    counts = state.report.counts
    assert "S3 inventory not used (the bucket is listed)" not in counts
    assert counts.get("images copied", 0) == 0 and counts.get("clinical files copied", 0) == 1
    assert state.report.problems == []
    # the raw side: each prefix's top (its folders) and the new folder, none it covers; the
    # warehouse side's images and metadata files come from the inventory too
    assert len(covered) > 10
    raw = {prefix for prefix in store.prefixes if prefix.startswith("raw-")}
    assert {f"{s.prefix}/" for s in layout.sites} <= raw
    assert new in raw or f"{new}data/" in raw
    assert not [p for p in raw if any(p.startswith(folder) for folder in covered)]
    areas = counter.as_dict()["areas"]
    assert areas["raw"]["LIST"] <= len(layout.sites) + 2 < len(covered)
    for area in ("images", "metadata"):
        assert "LIST" not in areas.get(area, {}), area
