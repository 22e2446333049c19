"""The scale benchmark's builder and stores at a tiny size.

The warehouse the builder (`benchmarks.scale_layout`) builds is consistent (every placeholder
image has its metadata file, its raw upload and a catalogue row; every placeholder patient its
clinical files; a reconcile finds nothing to file), the generated store
(`benchmarks.scale_storage`) lists and reads what the local build writes, and the counting store
counts S3 pages. Timings are the benchmark's, not checked here.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

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
