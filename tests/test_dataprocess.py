"""End-to-end tests of the dataprocess graph on both backends.

A small warehouse is written key by key (clinical files with known names and dates, metadata
JSON in both forms, image bytes of known sizes), so every expected row, value and byte count
is worked out here from the rules, independently of the graph's code. One test builds its
warehouse with the loader instead, to check the two graphs fit together.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from tests import builders
from tests.builders import clinical, image, rows_table, uid
from warehouse import dataprocess
from warehouse.catalogue.rows import image_row, part_bytes, read_part
from warehouse.core.config import Settings
from warehouse.core.errors import StorageError
from warehouse.core.keys import parse_image_key
from warehouse.dashboard import extraction as dataprocess_extraction
from warehouse.dashboard.batch import arrow_ready, batch_name, parquet_bytes
from warehouse.dashboard.figures import loader_run
from warehouse.dashboard.tables import date_column
from warehouse.dicom.jsonrep import header_json
from warehouse.dicom.reader import parse_header
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.wrappers import DelegatingStorage, DryRunStorage

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BATCH = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")

CENTRE_A, CENTRE_B = "Alpha Trust", "Beta Trust"
STUDY = {name: uid("study", name) for name in ("A", "B", "C", "D")}
SERIES = {name: uid("series", name) for name in ("A1", "A2", "B1", "C1", "D1")}


def product_json(patient, modality, study, series, age="045Y", sex="M") -> bytes:
    """Metadata JSON as the loader writes it (valid DICOM JSON) for one image."""
    _, data = image(patient, modality)
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    dataset.StudyInstanceUID = study
    dataset.SeriesInstanceUID = series
    dataset.PatientAge = age
    dataset.PatientSex = sex
    return header_json(dataset)


def original_json(patient, study, series) -> bytes:
    """Metadata JSON in the original loader's form: ``InlineBinary: null``, top-level null."""
    document = {
        "00080060": {"vr": "CS", "Value": ["DX"]},
        "00080070": {"vr": "LO", "Value": ["ACME"]},
        "00100020": {"vr": "LO", "Value": [patient]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "00101010": {"vr": "AS", "Value": ["081Y"]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00283010": None,
        "00291010": {"vr": "OB", "InlineBinary": None},
    }
    return json.dumps(document).encode()


def warehouse_files() -> dict[str, bytes]:
    """The hand-made warehouse side (plus a run report and a raw file, which are not read, and
    the config.json that makes the bucket a warehouse), and the catalogue part of its
    images."""
    files = {
        "config.json": builders.config(["raw-a"], training=[CENTRE_A], validation=[CENTRE_B]),
        # Covid1: positive; a newer status file dates it but is not the record.
        "training/data/Covid1/status_2021-02-15.json": clinical("Covid1", CENTRE_A, Age=99),
        "training/data/Covid1/data_2021-03-01.json": clinical(
            "Covid1",
            CENTRE_A,
            Age="45.9",
            Sex="1",
            Ethnicity="A",
            FiO2="2 L",
            OtherDataSources={"SegmentationData": {"Ethnicity": "CA"}},
        ),
        "training/data/Covid1/status_2021-04-01.json": clinical("Covid1", CENTRE_A),
        # Covid2: negative, two status files; age and sex come from its CT.
        "training/data/Covid2/status_2021-01-10.json": clinical("Covid2", CENTRE_B, Sex=0),
        "training/data/Covid2/status_2021-02-10.json": clinical("Covid2", CENTRE_B, SwabStatus=0),
        # Covid3: its only file is not JSON: reported, no row.
        "training/data/Covid3/data_2021-05-01.json": b'{"Pseudonym": "Covid3", ',
        # Covid4: validation.
        "validation/data/Covid4/status_2021-03-03.json": clinical("Covid4", CENTRE_B, Age=30),
        # CT: study A has two series (one row, from the first key), study B one.
        f"training/ct/Covid1/{STUDY['A']}/{SERIES['A1']}/a.dcm": b"\0" * 1000,
        f"training/ct/Covid1/{STUDY['A']}/{SERIES['A2']}/b.dcm": b"\0" * 2000,
        f"training/ct-metadata/Covid1/{STUDY['A']}/{SERIES['A1']}/a.json": product_json(
            "Covid1", "CT", STUDY["A"], SERIES["A1"]
        ),
        f"training/ct-metadata/Covid1/{STUDY['A']}/{SERIES['A2']}/b.json": product_json(
            "Covid1", "CT", STUDY["A"], SERIES["A2"]
        ),
        f"training/ct/Covid2/{STUDY['B']}/{SERIES['B1']}/c.dcm": b"\0" * 3000,
        f"training/ct-metadata/Covid2/{STUDY['B']}/{SERIES['B1']}/c.json": product_json(
            "Covid2", "CT", STUDY["B"], SERIES["B1"], age="024M", sex="F"
        ),
        # X-ray: the original's metadata form (training) and the product's (validation).
        f"training/xray/Covid1/{STUDY['C']}/{SERIES['C1']}/d.dcm": b"\0" * 400,
        f"training/xray-metadata/Covid1/{STUDY['C']}/{SERIES['C1']}/d.json": original_json(
            "Covid1", STUDY["C"], SERIES["C1"]
        ),
        f"validation/xray/Covid4/{STUDY['D']}/{SERIES['D1']}/e.dcm": b"\0" * 500,
        f"validation/xray-metadata/Covid4/{STUDY['D']}/{SERIES['D1']}/e.json": product_json(
            "Covid4", "DX", STUDY["D"], SERIES["D1"]
        ),
        # Not part of the warehouse side.
        "reports/warehouseloader/2021-01-01T00-00-00.000000Z.json": b"{}",
        "raw-a/2021-01-01/data/Covid9_data.json": clinical("Covid9", CENTRE_A),
    }
    files[CATALOGUE_PART] = catalogue_part(files)
    return files


BAD_CLINICAL = "training/data/Covid3/data_2021-05-01.json"
#: The loader's catalogue part of the hand-made warehouse (its images' rows).
CATALOGUE_PART = "catalogue/images/2021-03-02T00-00-00.000000Z.parquet"
_IMAGE_MODALITY = {"ct": "CT", "xray": "DX"}


def catalogue_part(files: dict[str, bytes]) -> bytes:
    """A catalogue part listing the hand-made warehouse's images (headers of images made for
    their patients and modality; the listed size)."""
    rows = []
    for key in sorted(files):
        where = parse_image_key(key)
        if where is not None:
            _, data = image(where.patient_id, _IMAGE_MODALITY[where.folder])
            rows.append(
                image_row(
                    parse_header(data),
                    where,
                    size=len(files[key]),
                    raw_key=f"raw-a/2021-03-01/images/{where.name}",
                    upload="2021-03-01",
                    metadata_size=len(files[where.metadata_key]),
                )
            )
    return part_bytes(rows_table(rows))


def expected_storage(files: dict[str, bytes]) -> dict[str, int]:
    """Bytes per storage prefix, summed here from the files written."""
    sizes = {}
    for group in ("training", "validation"):
        for folder in ("ct/", "xray/", "mri/", ""):
            prefix = f"{group}/{folder}"
            sizes[prefix] = sum(len(v) for k, v in files.items() if k.startswith(prefix))
    return sizes


def set_dates(store: LocalStorage) -> None:
    """Give every local file the modification date its test expects (noon UTC)."""
    for path in store.root.rglob("*"):
        if path.is_file():
            stamp = dt.datetime(2021, 3, 2, 12, tzinfo=dt.UTC)
            if path.name == "status_2021-02-10.json":
                stamp = dt.datetime(2021, 2, 11, 12, tzinfo=dt.UTC)
            os.utime(path, (stamp.timestamp(), stamp.timestamp()))


class RecordingStorage(DelegatingStorage):
    """A store that records reads, listings and writes (shared with its processed store)."""

    def __init__(self, inner: Storage, log: dict | None = None, fail_reads=(), fail_writes=()):
        self.inner = inner
        self.url = inner.url
        self.log = (
            log if log is not None else {"reads": [], "writes": [], "folders": [], "lists": []}
        )
        self.fail_reads = set(fail_reads)
        self.fail_writes = set(fail_writes)
        self._lock = threading.Lock()

    def _record(self, kind, value):
        with self._lock:
            self.log[kind].append(value)

    def list(self, prefix):
        self._record("lists", prefix)
        return self.inner.list(prefix)

    def list_folders(self, prefix):
        self._record("folders", prefix)
        return self.inner.list_folders(prefix)

    def read(self, key):
        self._record("reads", key)
        if key in self.fail_reads:
            raise StorageError(f"cannot read {key}: simulated")
        return self.inner.read(key)

    def read_range(self, key, start, end):
        return self.inner.read_range(key, start, end)

    def write_file(self, key, path, content_type="application/vnd.apache.parquet"):
        self._record("writes", f"{self.url}/{key}")
        self.inner.write_file(key, path, content_type)

    def write(self, key, data, content_type="application/json"):
        self._record("writes", f"{self.url}/{key}")
        if key.rsplit("/", 1)[-1] in self.fail_writes:
            raise StorageError(f"cannot write {key}: simulated")
        self.inner.write(key, data, content_type)

    def copy(self, source_key, target_key, size=None):
        # (the last batch's catalogue, when no part is new)
        self._record("writes", f"{self.url}/{target_key}")
        self.inner.copy(source_key, target_key, size)

    def processed(self):
        return RecordingStorage(self.inner.processed(), self.log, fail_writes=self.fail_writes)


def run_graph(storage: Storage, **settings):
    services = dataprocess.get_services(
        settings=Settings(bucket=storage.url, **settings), storage=storage
    )
    code = dataprocess.run(services)
    return code, services["state"]


def read_batch(processed: Storage) -> tuple[str, dict[str, bytes]]:
    """``(batch name, file name -> bytes)`` of the batch ``latest.csv`` names."""
    latest = pd.read_csv(io.BytesIO(processed.read("latest.csv")))
    batch = latest["path"].iloc[0].split("/")[0]
    files = {
        info.key.split("/", 1)[1]: processed.read(info.key) for info in processed.list(f"{batch}/")
    }
    return batch, files


def catalogue_table(files: dict[str, bytes]) -> pa.Table:
    """The catalogue of a batch's files (`read_batch`): its segments ``images/*.parquet`` in
    name order, one table; checked against the manifest ``images/_catalogue.json``."""
    names = sorted(k for k in files if k.startswith("images/") and k.endswith(".parquet"))
    tables = [pq.read_table(io.BytesIO(files[name])) for name in names]
    manifest = json.loads(files["images/_catalogue.json"])
    assert [(s["file"], s["size"], s["rows"]) for s in manifest["segments"]] == [
        (name.removeprefix("images/"), len(files[name]), table.num_rows)
        for name, table in zip(names, tables, strict=True)
    ]
    assert names, "a batch with images has at least one segment"
    return pa.concat_tables(tables)


def stored_catalogue(processed: Storage, batch: str) -> pa.Table:
    """The catalogue of the batch folder ``batch`` of ``processed`` (`catalogue_table`)."""
    prefix = f"{batch}/"
    files = {
        info.key.removeprefix(prefix): processed.read(info.key)
        for info in processed.list(f"{batch}/images/")
    }
    return catalogue_table(files)


def replace_segment(processed: Storage, batch: str, table: pa.Table) -> None:
    """Make ``table`` the one segment of the batch ``batch``'s catalogue (and its manifest say
    so), as an older version might have written it."""
    manifest = json.loads(processed.read(f"{batch}/images/_catalogue.json"))
    assert len(manifest["segments"]) == 1
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    processed.write(f"{batch}/images/000000.parquet", buffer.getvalue())
    manifest["segments"][0].update(size=len(buffer.getvalue()), rows=table.num_rows)
    processed.write(f"{batch}/images/_catalogue.json", json.dumps(manifest).encode())


def catalogue_bytes(files: dict[str, bytes]) -> bytes:
    """`catalogue_table` as the bytes of one Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(catalogue_table(files), buffer)
    return buffer.getvalue()


def csv(files, name) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(files[name]), dtype=str, keep_default_na=False)


def check_hand_made_batch(processed: Storage, files: dict[str, bytes]) -> dict[str, bytes]:
    """The checks every backend must pass on the hand-made warehouse's batch."""
    batch, out = read_batch(processed)
    assert BATCH.match(batch)
    tables = ("ct", "xray", "patient", "patient_clean", "storage", "study_images")
    pages = ("dashboard.html", "public.html")
    # the catalogue in Parquet only; the rows and the catalogue's counts the next run may
    # reuse, and the digest of what the batch was built from
    data = (
        "images/000000.parquet",  # the catalogue in one segment (a first batch) ...
        "images/_catalogue.json",  # ... and its manifest
        "series.parquet",
        "rows/patients.parquet",
        "rows/studies.parquet",
        "rows/catalogue-counts.json.gz",
        "rows/clinical-summary.parquet",  # (the next batch tells whose summary changed)
        "rows/inputs.json",
        "rows/holdout-hashes.parquet",  # the hold-out's value hashes, for the next certificate
        "holdout.json",  # the hold-out certificate (tests/test_holdout.py)
    )
    stats = (
        "stats_patients.csv",
        "stats_images.csv",
        "stats_storage.csv",
        "stats_submittingcentres.csv",
        "stats_date.txt",
    )
    assert sorted(out) == sorted(
        [f"{t}.{ext}" for t in tables for ext in ("csv", "parquet")]
        + list(stats)
        + list(pages)
        + list(data)
    )
    latest = processed.read("latest.csv").decode()
    assert latest == (
        "archive,path\r\n"
        + "".join(f"{t},{batch}/{t}.csv\r\n" for t in tables)
        + f"images,{batch}/images/\r\nseries,{batch}/series.parquet\r\n"
        + f"dashboard,{batch}/dashboard.html\r\npublic,{batch}/public.html\r\n"
    )
    for page in pages:
        assert out[page].startswith(b"<!doctype html>")
    assert b"vegaEmbed" in out["dashboard.html"]
    # Every public count of this small warehouse is under 10: no figure, so no chart.
    assert b"fewer than 10" in out["public.html"] and b"vegaEmbed" not in out["public.html"]

    # The image catalogue: the part's rows, joined with each patient's clinical summary.
    catalogue = pd.read_parquet(io.BytesIO(catalogue_bytes(out)))
    part = read_part(files[CATALOGUE_PART]).to_pandas()
    assert list(catalogue["warehouse_key"]) == list(part["warehouse_key"])
    assert list(catalogue.columns) == [
        *part.columns,
        "filed",
        "SubmittingCentre",
        "covid_positive",
        "age",
        "sex",
    ]
    summary = catalogue.drop_duplicates("PatientID").set_index("PatientID")
    assert summary.loc["Covid1", "SubmittingCentre"] == CENTRE_A
    assert bool(summary.loc["Covid1", "covid_positive"]) is True
    assert summary.loc["Covid1", "age"] == 45.0
    assert bool(summary.loc["Covid2", "covid_positive"]) is False
    assert catalogue["upload_date"].astype(str).unique().tolist() == ["2021-03-01"]
    assert list(catalogue["metadata_size"]) == [
        len(files[parse_image_key(key).metadata_key]) for key in catalogue["warehouse_key"]
    ]

    # Images per study folder, from the listing: study A has two metadata files.
    images = csv(out, "study_images.csv")
    assert list(images.columns) == [
        "group",
        "modality",
        "Pseudonym",
        "StudyInstanceUID",
        "filed",
        "images",
    ]
    assert [tuple(row) for row in images[["modality", "Pseudonym", "StudyInstanceUID"]].values] == [
        ("ct", "Covid1", STUDY["A"]),
        ("ct", "Covid2", STUDY["B"]),
        ("xray", "Covid1", STUDY["C"]),
        ("xray", "Covid4", STUDY["D"]),
    ]
    assert list(images["images"]) == ["2", "1", "1", "1"]
    assert list(images["group"]) == ["training", "training", "training", "validation"]

    ct = csv(out, "ct.csv")
    assert list(ct["Pseudonym"]) == ["Covid1", "Covid2"]  # one row per study
    assert list(ct["StudyInstanceUID"]) == [STUDY["A"], STUDY["B"]]
    assert list(ct["SeriesInstanceUID"]) == [SERIES["A1"], SERIES["B1"]]  # first key
    assert list(ct["PatientAge"]) == ["045Y", "024M"]
    assert set(ct["group"]) == {"training"}
    xray = csv(out, "xray.csv")
    assert list(xray["Pseudonym"]) == ["Covid1", "Covid4"]
    assert list(xray["group"]) == ["training", "validation"]
    original = xray.iloc[0]  # read from the original's form
    assert (original["PatientAge"], original["PatientSex"], original["Manufacturer"]) == (
        "081Y",
        "M",
        "ACME",
    )
    assert original["Modality"] == "DX" and original["SeriesInstanceUID"] == SERIES["C1"]

    patient = csv(out, "patient.csv")
    assert list(patient["Pseudonym"]) == ["Covid1", "Covid2", "Covid4"]  # one row per patient
    assert list(patient.columns[:5]) == [
        "filename_earliest_date",
        "filename_covid_status",
        "filename_latest_date",
        "last_modified",
        "group",
    ]
    first = patient.iloc[0]
    assert (first["filename_earliest_date"], first["filename_latest_date"]) == (
        "2021-02-15",
        "2021-04-01",
    )
    assert first["filename_covid_status"] == "True"
    assert first["Ethnicity"] == "CA"  # SegmentationData wins
    assert first["Age"] == "45.9"  # the data file, not the status files
    assert "SegmentationData" in first["OtherDataSources"]
    assert list(patient["group"]) == ["training", "training", "validation"]
    assert patient.iloc[1]["filename_covid_status"] == "False"

    clean = csv(out, "patient_clean.csv")
    assert list(clean["Pseudonym"]) == ["Covid1", "Covid2", "Covid4"]
    assert list(clean["ethnicity"]) == ["White", "Unknown", "Unknown"]
    assert list(clean["age"]) == ["45.0", "", "30.0"]
    assert list(clean["fio2"]) == ["", "", ""]  # "2 L" crashed the original: missing here
    assert list(clean["age_update"]) == ["45.0", "2.0", "30.0"]  # Covid2 from "024M"
    # Covid2 and Covid4 have no Sex in their chosen file: their images say (any group).
    assert list(clean["sex_update"]) == ["M", "F", "M"]

    storage = csv(out, "storage.csv")
    sizes = expected_storage(files)
    assert list(storage["prefix"]) == list(sizes)
    assert [int(v) for v in storage["storage"]] == list(sizes.values())

    for name in tables:
        from_parquet = pd.read_parquet(io.BytesIO(out[f"{name}.parquet"]))
        from_csv = csv(out, f"{name}.csv")
        assert list(from_parquet.columns) == list(from_csv.columns), name
        assert len(from_parquet) == len(from_csv), name
    assert list(pd.read_parquet(io.BytesIO(out["patient.parquet"]))["Pseudonym"]) == [
        "Covid1",
        "Covid2",
        "Covid4",
    ]

    # Training only: Covid1 (positive) and Covid2 (negative) have images (2), 3 training
    # studies (CT 2, X-ray 1), 2 centres: every count is under 10, published as the page
    # shows it.
    small = "fewer than 10\r\n"
    assert out["stats_patients.csv"].decode() == (
        f"Total number of patients with images,{small}"
        f"Positive patients with images,{small}"
        f"Negative patients with images,{small}"
        f"New patients added in the last 30 days,{small}"
    )
    assert out["stats_images.csv"].decode() == (
        f"Total number of image studies,{small}"
        f"CT image studies,{small}"
        f"X-ray image studies,{small}"
        f"MRI image studies,{small}"
    )
    assert out["stats_submittingcentres.csv"].decode() == (
        f"Submitting centres (e.g. NHS trusts),{small}"
    )
    assert (
        out["stats_storage.csv"]
        .decode()
        .startswith('"Total image, image metadata, and clinical data storage",0GB\r\n')
    )
    assert out["stats_date.txt"].decode().startswith("This information was last updated on ")
    return out


def latest_report(storage: Storage) -> dict:
    keys = sorted(i.key for i in storage.list("reports/dataprocess/"))
    assert keys, "no run report written"
    return json.loads(storage.read(keys[-1]))


def test_tables_of_a_hand_made_warehouse(local_store, capsys):
    files = warehouse_files()
    builders.put_tree(local_store, files)
    set_dates(local_store)
    store = RecordingStorage(local_store)

    code, state = run_graph(store)

    assert code == 0
    processed = LocalStorage(local_store.root.parent / "bucket-processed")
    out = check_hand_made_batch(processed, files)
    patient = csv(out, "patient.csv")
    # last_modified: the chosen file's date (Covid2's chosen file is dated 2021-02-11).
    assert list(patient["last_modified"]) == ["2021-03-02", "2021-02-11", "2021-03-02"]
    assert set(csv(out, "ct.csv")["last_modified"]) == {"2021-03-02"}

    report = latest_report(local_store)
    assert report["completed"] is True
    assert [(p["key"], p["reason"]) for p in report["problems"]] == [(BAD_CLINICAL, "invalid JSON")]
    assert report["counts"] == {"ct studies": 2, "patients": 3, "xray studies": 2}

    # Listed once (each group folder split once), each chosen file and study file read once,
    # and for the pages config.json and the loader's latest report (neither is there).
    # Only the clinical folders are listed: the images are the catalogue's.
    # (whole: one request a thousand keys, not one a patient folder)
    assert store.log["folders"] == []
    assert sorted(store.log["lists"]) == ["training/data/", "validation/data/"]
    reads = store.log["reads"]
    # (and the catalogue part, latest.csv: there is no batch yet, and the run's own last
    # report, its changes' base: none yet)
    assert len(reads) == len(set(reads)) == 4 + 4 + 2 + 1 + 1 + 1  # 3 patients + bad file
    assert {"config.json", "reports/warehouseloader/latest.json"} <= set(reads)
    assert reads[-1] == "reports/dataprocess/latest.json"
    assert reads[0] == "config.json"  # before anything else: a bucket without it is refused
    assert set(csv(out, "study_images.csv")["filed"]) == {"2021-03-02"}  # the part's date
    filed = pd.read_parquet(io.BytesIO(catalogue_bytes(out)))["filed"]
    assert set(filed.astype(str)) == {"2021-03-02"}
    assert f"training/ct-metadata/Covid1/{STUDY['A']}/{SERIES['A2']}/b.json" not in reads
    assert "training/data/Covid1/status_2021-04-01.json" not in reads

    # latest.csv is the last write of the batch; the run report (and its whole list,
    # latest.json), then their pages, come after the graph.
    writes = [w.rsplit("/", 1)[-1] for w in store.log["writes"]]
    assert writes[-5] == "latest.csv"
    assert writes[-4].endswith(".json") and "reports/dataprocess/" in store.log["writes"][-4]
    assert store.log["writes"][-3].endswith("reports/dataprocess/latest.json")
    assert store.log["writes"][-2] == store.log["writes"][-4].removesuffix(".json") + ".html"
    assert store.log["writes"][-1].endswith("reports/dataprocess/latest.html")
    # tables, the catalogue and its series, stats, pages, reusable rows and inputs' digest,
    # the hold-out certificate and its hashes, latest; the catalogue's index (and its pointer),
    # before the batch
    assert len(writes) == 12 + 3 + 5 + 2 + 5 + 2 + 1 + 4 + 2
    assert writes.index("latest.json") < writes.index("000000.parquet")
    assert writes.index("000000.parquet") < writes.index("_catalogue.json")

    printed = capsys.readouterr()
    assert "dataprocess run summary" in printed.out
    assert f"{processed.url}/{state.batch}/" in printed.out
    for node in dataprocess.get_graph().nodes:
        assert f"- {node.__name__} in=" in printed.err


def test_a_modality_without_studies_has_no_table(local_store):
    files = {k: v for k, v in warehouse_files().items() if "/xray" not in k}
    builders.put_tree(local_store, files)
    assert run_graph(local_store)[0] == 0
    processed = local_store.processed()
    batch, out = read_batch(processed)
    assert not any(name.startswith(("xray.", "mri.")) for name in out)
    latest = pd.read_csv(io.BytesIO(processed.read("latest.csv")))
    assert list(latest["archive"]) == [
        "ct",
        "patient",
        "patient_clean",
        "storage",
        "study_images",
        "images",
        "series",
        "dashboard",
        "public",
    ]
    assert "X-ray image studies,fewer than 10\r\n" in out["stats_images.csv"].decode()
    # A daily run trusts the catalogue: the X-ray studies' metadata files are not there, so
    # their studies are reported and left out of the study tables (the run is complete) ...
    report = latest_report(local_store)
    assert report["completed"] is True
    gone = sorted(
        p["key"]
        for p in report["problems"]
        if p["reason"] == "catalogued file not in the warehouse"
    )
    assert gone == sorted(k for k in warehouse_files() if "/xray-metadata/" in k)
    images = pd.read_parquet(io.BytesIO(catalogue_bytes(out)))
    assert len(images) == 5
    # ... and a reconcile, which lists the warehouse, leaves their rows out of the catalogue.
    assert run_graph(local_store, reconcile=True)[0] == 0
    batch, out = read_batch(processed)
    images = pd.read_parquet(io.BytesIO(catalogue_bytes(out)))
    assert set(images["modality_folder"]) == {"ct"} and len(images) == 3
    assert (
        latest_report(local_store)["counts"][
            "catalogued images no longer in the warehouse (left out)"
        ]
        == 2
    )


def test_a_warehouse_without_images(local_store):
    files = {k: v for k, v in warehouse_files().items() if "/data/" in k or k == "config.json"}
    builders.put_tree(local_store, files)
    assert run_graph(local_store)[0] == 0
    processed = local_store.processed()
    latest = pd.read_csv(io.BytesIO(processed.read("latest.csv")))
    assert list(latest["archive"]) == ["patient", "patient_clean", "storage", "dashboard", "public"]
    _, out = read_batch(processed)
    clean = csv(out, "patient_clean.csv")
    assert list(clean["sex"]) == ["M", "Unknown", "Unknown"]  # Sex=0 is in an older file
    assert list(clean["sex_update"]) == ["M", "Unknown", "Unknown"]  # no image to fill from
    assert list(clean["age_update"]) == ["45.0", "", "30.0"]


def test_dry_run_writes_nothing(local_store, capsys):
    builders.put_tree(local_store, warehouse_files())
    before = sorted(i.key for i in local_store.list(""))
    code, state = run_graph(DryRunStorage(local_store), dry_run=True)
    assert code == 0
    assert list((local_store.root.parent / "bucket-processed").iterdir()) == []
    assert sorted(i.key for i in local_store.list("")) == before
    out = capsys.readouterr().out
    assert "dry run: nothing was written" in out
    assert state.written[-1] == "latest.csv"


def test_a_failed_read_publishes_nothing(local_store):
    builders.put_tree(local_store, warehouse_files())
    failing = f"training/ct-metadata/Covid2/{STUDY['B']}/{SERIES['B1']}/c.json"
    code, state = run_graph(RecordingStorage(local_store, fail_reads={failing}))
    assert code == 1
    assert list((local_store.root.parent / "bucket-processed").iterdir()) == []
    report = latest_report(local_store)
    assert report["completed"] is False
    problems = {p["key"]: p["reason"] for p in report["problems"]}
    assert problems == {failing: "read failed", BAD_CLINICAL: "invalid JSON"}


def _new_part(store: Storage) -> None:
    """A later catalogue part, with the hand-made warehouse's rows again."""
    store.write(CATALOGUE_PART.replace("2021-03-02", "2021-03-03"), store.read(CATALOGUE_PART))


#: Each input of a batch, changed.
_CHANGES = {
    "a clinical file rewritten": lambda store: store.write(
        "validation/data/Covid4/status_2021-03-03.json",
        clinical("Covid4", CENTRE_B, Age=31, Sex=1),
    ),
    "a new clinical file": lambda store: store.write(
        "validation/data/Covid5/status_2021-03-04.json", clinical("Covid5", CENTRE_B)
    ),
    "config.json": lambda store: store.write(
        "config.json",
        builders.config(["raw-a", "raw-b"], training=[CENTRE_A], validation=[CENTRE_B]),
    ),
    "the loader's report": lambda store: store.write(
        "reports/warehouseloader/latest.json", b'{"counts": {}}'
    ),
    "a catalogue part": _new_part,
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_a_rerun_with_nothing_changed_keeps_the_last_batch_and_a_change_builds_one(
    local_store, capsys, change
):
    builders.put_tree(local_store, warehouse_files())
    assert run_graph(local_store)[0] == 0
    processed = local_store.processed()
    before = {info.key: processed.read(info.key) for info in processed.list("")}

    store = RecordingStorage(local_store)
    code, state = run_graph(store)
    assert code == 0 and state.kept and not state.written
    # no row read again: the digest, the catalogue's counts, config.json and the loader report
    assert not [key for key in store.log["reads"] if key.endswith((".parquet", ".dcm"))]
    assert not [key for key in store.log["reads"] if "-metadata/" in key or "/data/" in key]
    # nothing written but the run's own report (and its page)
    assert [k for k in store.log["writes"] if "/reports/dataprocess/" not in k] == []
    assert {info.key: processed.read(info.key) for info in processed.list("")} == before
    assert (
        latest_report(local_store)["counts"][
            "batches not rebuilt: nothing changed since the last batch"
        ]
        == 1
    )
    batch = pd.read_csv(io.BytesIO(before["latest.csv"]))["path"].iloc[0].split("/")[0]
    assert f"{batch}/ still stands" in capsys.readouterr().out

    _CHANGES[change](local_store)
    store = RecordingStorage(local_store)
    code, state = run_graph(store)
    assert code == 0 and not state.kept
    assert state.written[-1] == "latest.csv" and store.log["writes"][-5].endswith("/latest.csv")


@pytest.mark.parametrize("at_once", [1, 2, 1024])
def test_rows_reused_in_runs_make_the_tables_of_a_run_that_reads_every_file(
    local_store, monkeypatch, at_once
):
    """Rows known from the last batch go between the nodes in runs (`extraction.in_runs`),
    between the files read again: the tables are those of a reconcile, which reads every file.
    """
    builders.put_tree(local_store, warehouse_files())
    assert run_graph(local_store)[0] == 0
    _CHANGES["a clinical file rewritten"](local_store)
    _CHANGES["a new clinical file"](local_store)
    monkeypatch.setattr(dataprocess_extraction, "REUSED_AT_ONCE", at_once)
    store = RecordingStorage(local_store)
    assert run_graph(store)[0] == 0
    # read: the two changed clinical files, and the one that could not be used last time
    assert sorted(key for key in store.log["reads"] if "-metadata/" in key or "/data/" in key) == [
        "training/data/Covid3/data_2021-05-01.json",
        "validation/data/Covid4/status_2021-03-03.json",
        "validation/data/Covid5/status_2021-03-04.json",
    ]
    _, reused = read_batch(local_store.processed())
    assert run_graph(local_store, reconcile=True)[0] == 0
    _, read_again = read_batch(local_store.processed())
    tables = [name for name in read_again if name.endswith((".csv", ".parquet"))]
    assert "patient_clean.csv" in tables and "ct.csv" in tables
    for name in tables:
        if name.endswith(".csv") or not name.startswith(("images/", "rows/", "series", "holdout")):
            assert reused[name] == read_again[name], name
    # (the hold-out's value hashes: the same, beside another certificate's digest)
    hashes = [
        pq.read_table(io.BytesIO(files["rows/holdout-hashes.parquet"]))
        for files in (reused, read_again)
    ]
    assert hashes[0].column("hash").to_pylist() == hashes[1].column("hash").to_pylist()
    assert list(csv(reused, "patient.csv")["Pseudonym"]) == ["Covid1", "Covid2", "Covid4", "Covid5"]


def test_what_a_run_holds_is_kept_out_of_the_cyclic_collector_until_its_end(
    local_store, monkeypatch
):
    """Keep the view and the collected rows out of the cyclic collector's passes while the
    batch is built (`gc.freeze`), and give them back at the end of the run, failed or not."""
    import gc

    from warehouse.dashboard import batch as batch_module

    frozen: list[int] = []
    real_build = batch_module.build_batch

    def recording(*args, **kwargs):
        frozen.append(gc.get_freeze_count())
        return real_build(*args, **kwargs)

    monkeypatch.setattr(batch_module, "build_batch", recording)
    builders.put_tree(local_store, warehouse_files())
    before = gc.get_freeze_count()
    assert run_graph(local_store)[0] == 0
    assert len(frozen) == 1 and frozen[0] > before
    assert gc.get_freeze_count() == before

    def failing(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(batch_module, "build_batch", failing)
    _CHANGES["a new clinical file"](local_store)
    assert run_graph(local_store)[0] != 0
    assert gc.get_freeze_count() == before


def test_a_reused_row_that_cannot_be_made_is_reported_alone():
    """One input of a run of reused rows that fails is reported against itself, the others'
    rows are kept, in order."""
    failed = []

    def make_rows(read):
        if read[0] == "b":
            raise ValueError("no row")
        return [read[1]]

    run = dataprocess_extraction.Reused([("a", 1), ("b", 2), ("c", 3)])
    rows = dataprocess_extraction.reused_rows(make_rows, lambda i, e: failed.append((i, e)), run)
    assert rows == [(1, 3)] and isinstance(rows[0], dataprocess_extraction.Rows)
    assert [(item, str(exc)) for item, exc in failed] == [("b", "no row")]
    runs = list(
        dataprocess_extraction.in_runs(
            [("a", 1), ("b", None), ("c", 3), ("d", 4), ("e", 5), ("f", None)], size=2
        )
    )
    assert runs == [(("a", 1),), ("b", None), (("c", 3), ("d", 4)), (("e", 5),), ("f", None)]
    assert [type(r).__name__ for r in runs] == ["Reused", "tuple", "Reused", "Reused", "tuple"]


def test_a_reconcile_builds_a_batch_though_nothing_changed(local_store):
    builders.put_tree(local_store, warehouse_files())
    assert run_graph(local_store)[0] == 0
    code, state = run_graph(local_store, reconcile=True)
    assert code == 0 and not state.kept and state.written[-1] == "latest.csv"


def test_a_failed_write_leaves_latest_csv_alone(local_store):
    builders.put_tree(local_store, warehouse_files())
    assert run_graph(local_store)[0] == 0
    processed = local_store.processed()
    previous = processed.read("latest.csv")
    # (something new: a run with nothing new writes nothing)
    local_store.write("validation/data/Covid5/status_2021-03-04.json", clinical("Covid5", CENTRE_B))
    code, state = run_graph(RecordingStorage(local_store, fail_writes={"patient.parquet"}))
    assert code == 1
    assert processed.read("latest.csv") == previous
    assert latest_report(local_store)["fatal"].startswith("tables not written")


def test_a_batch_built_in_the_last_batch_s_second_is_named_a_second_later():
    """Two runs in one second never share a batch folder (a batch would copy its catalogue's
    segments onto themselves and read back the clinical summary it had just written)."""
    from warehouse.dashboard.batch import batch_time

    now = dt.datetime(2026, 11, 25, 9, 30, 0, 700_000, tzinfo=dt.UTC)
    assert batch_name(batch_time(now, "2026-11-25T09-30-00Z")) == "2026-11-25T09-30-01Z"
    assert batch_time(now, "2026-11-25T09-29-59Z") == now  # another second: as it is
    assert batch_time(now, None) == now  # no last batch


def test_batch_names_and_parquet_columns():
    stamp = dt.datetime(2026, 11, 25, 10, 30, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert batch_name(stamp) == "2026-11-25T09-30-00Z"
    table = pd.DataFrame(
        {
            "mixed": pd.Series([1, "x", None], dtype="object"),
            "numbers": pd.Series([1, 2.5, None], dtype="object"),
            "nested": pd.Series([{"a": 1}, [1, 2], None], dtype="object"),
        }
    )
    ready = arrow_ready(table)
    assert ready["mixed"].tolist() == ["1", "x", None]
    assert ready["nested"].tolist() == ["{'a': 1}", "[1, 2]", None]
    assert ready["numbers"].tolist()[:2] == [1, 2.5]
    back = pd.read_parquet(io.BytesIO(parquet_bytes(table)))
    assert back["mixed"].tolist()[:2] == ["1", "x"] and pd.isna(back["mixed"][2])


def test_bonobo_run_after_the_loader(tmp_path):
    """Raw uploads -> loader -> ``bonobo run warehouse/dataprocess.py`` on a local directory."""
    (tmp_path / "bucket").mkdir()
    (tmp_path / "bucket-processed").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    raw = {"config.json": builders.config(["raw-a"], training=[CENTRE_A], validation=[CENTRE_B])}
    studies = {"CT": 0, "DX": 0, "MR": 0}
    for n, (pseudonym, centre) in enumerate(
        [("Covid1", CENTRE_A), ("Covid2", CENTRE_A), ("Covid3", CENTRE_B)]
    ):
        kind = "data" if n == 0 else "status"
        raw[f"raw-a/2021-01-0{n + 1}/data/{pseudonym}_{kind}.json"] = clinical(pseudonym, centre)
        for modality, study, series in (("CT", "s1", "r1"), ("CT", "s1", "r2"), ("DX", "s2", "r1")):
            name, data = image(pseudonym, modality, study=study, series=series)
            raw[f"raw-a/2021-01-0{n + 1}/images/{name}"] = data
        studies["CT"] += 1
        studies["DX"] += 1
    builders.put_tree(store, raw)
    assert builders.run_loader(store)[0] == 0

    result = builders.bonobo_run("dataprocess", store.root, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dataprocess run summary" in result.stdout
    for node in (
        "list_clinical_files",
        "load_clinical_files",
        "list_image_metadata_files",
        "load_image_metadata_files",
        "get_storage_stats",
        "DataExtractor",
    ):
        assert f"- {node} in=" in result.stderr
    _, out = read_batch(store.processed())
    assert len(csv(out, "ct.csv")) == studies["CT"]
    assert len(csv(out, "xray.csv")) == studies["DX"]
    assert "mri.csv" not in out
    patient = csv(out, "patient.csv")
    assert list(patient["Pseudonym"]) == ["Covid1", "Covid2", "Covid3"]
    assert list(patient["group"]) == ["training", "training", "validation"]
    assert set(csv(out, "patient_clean.csv")["sex_update"]) <= {"M", "F", "O"}  # from DICOM


def test_python_m_on_s3_over_http(s3_bucket):
    store = S3Storage(s3_bucket, workers=8)
    files = warehouse_files()
    builders.put_tree(store, files)
    result = builders.python_m(
        "dataprocess",
        (),
        builders.graph_env(WAREHOUSE_BUCKET=f"s3://{s3_bucket}", WAREHOUSE_WORKERS="8"),
    )
    assert result.returncode == 0, result.stderr
    assert f"s3://{s3_bucket}-processed/" in result.stdout
    check_hand_made_batch(S3Storage(f"{s3_bucket}-processed", workers=8), files)
    report = latest_report(store)
    assert [p["key"] for p in report["problems"]] == [BAD_CLINICAL]


@pytest.mark.parametrize(
    "env, code, message",
    [
        ({}, 2, "WAREHOUSE_BUCKET"),
        ({"WAREHOUSE_BUCKET": "file:///nonexistent", "WAREHOUSE_WORKERS": "0"}, 2, "WORKERS"),
        ({"WAREHOUSE_BUCKET": "file://{tmp}/missing"}, 2, "missing does not exist"),
    ],
)
def test_bad_settings_and_missing_warehouse(env, code, message, tmp_path):
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    result = builders.python_m("dataprocess", (), builders.graph_env(**env))
    assert result.returncode == code, result.stderr
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "missing-processed").exists()


def test_help_and_inspect_need_no_environment(tmp_path):
    result = builders.python_m("dataprocess", ["--help"], builders.graph_env())
    assert result.returncode == 0
    for name in ("WAREHOUSE_BUCKET", "DRY_RUN", "WAREHOUSE_WORKERS", "latest.csv"):
        assert name in result.stdout
    result = subprocess.run(
        [str(BIN / "bonobo"), "inspect", "--graph", str(REPO / "warehouse/dataprocess.py")],
        cwd=tmp_path,
        env=builders.graph_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "DataExtractor" in result.stdout and "get_storage_stats" in result.stdout


def test_a_bucket_without_config_json_is_not_a_warehouse(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty-processed").mkdir()
    result = builders.python_m(
        "dataprocess", env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{tmp_path}/empty")
    )
    assert result.returncode == 2
    assert "no config.json" in result.stderr
    assert list((tmp_path / "empty-processed").iterdir()) == []
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_metadata_file_that_is_not_dicom_json_is_reported_and_the_rest_published(local_store):
    files = warehouse_files()
    bad = f"training/ct-metadata/Covid2/{STUDY['B']}/{SERIES['B1']}/c.json"
    files[bad] = b"[1, 2]"  # JSON, not a DICOM JSON object
    builders.put_tree(local_store, files)
    code, state = run_graph(local_store)
    assert code == 0
    report = latest_report(local_store)
    problems = {p["key"]: (p["reason"], p.get("detail", "")) for p in report["problems"]}
    assert problems[bad][0] == "invalid JSON"
    assert problems[bad][1].startswith("not DICOM JSON")
    assert state.written[-1] == "latest.csv"


# --------------------------------------------------------------------------------------------
# times and dates out of what a datetime64[ns] column holds (year 2300): kept, left empty


def test_warehouse_times_and_dates_past_pandas_range_leave_dates_empty(local_store):
    """A warehouse object last modified in 2300, an image uploaded in a folder dated 2300
    and a StudyDate of 2300 (or year 1) used to stop every dataprocess run."""
    raw = {"config.json": builders.config(["raw-a"], training=[CENTRE_A])}
    raw["raw-a/2021-01-01/data/Covid1_data.json"] = clinical("Covid1", CENTRE_A)
    late, late_data = image("Covid1", "CT", study="s1", study_date="23000101")
    early, early_data = image("Covid1", "DX", study="s2", study_date="00010101")
    raw[f"raw-a/2300-01-01/images/{late}"] = late_data  # an image's folder date is not checked
    raw[f"raw-a/2021-01-02/images/{early}"] = early_data
    builders.put_tree(local_store, raw)
    assert builders.run_loader(local_store)[0] == 0
    year_2300 = dt.datetime(2300, 1, 1, tzinfo=dt.UTC).timestamp()
    filed = [p for p in local_store.root.glob("training/**/*") if p.is_file()]
    assert len(filed) == 5  # one clinical file, two images and their metadata
    parts = list(local_store.root.glob("catalogue/images/*.parquet"))
    for path in [*filed, *parts]:
        os.utime(path, (year_2300, year_2300))

    code, state = run_graph(local_store)

    assert code == 0
    # (only the clinical folder is listed: images are the catalogue's)
    assert state.report.counts[dataprocess_extraction.IMPLAUSIBLE_TIMES] == 1
    _, out = read_batch(local_store.processed())
    assert list(csv(out, "patient.csv")["last_modified"]) == [""]  # the row is kept
    assert list(csv(out, "ct.csv")["last_modified"]) == [""]  # filed in 2300: left empty
    assert list(csv(out, "study_images.csv")["filed"]) == ["", ""]
    # The catalogue is Parquet dates (no pandas range): kept as they are.
    images = pq.read_table(io.BytesIO(catalogue_bytes(out))).sort_by("Modality")
    assert images.column("Modality").to_pylist() == ["CT", "DX"]
    assert images.column("upload_date").to_pylist() == [dt.date(2300, 1, 1), dt.date(2021, 1, 2)]
    # (year 1 is not a DICOM date the catalogue takes)
    assert images.column("StudyDate").to_pylist() == [dt.date(2300, 1, 1), None]
    assert images.column("filed").to_pylist() == [dt.date(2300, 1, 1)] * 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (dt.date(2021, 3, 2), "2021-03-02"),
        (dt.datetime(2021, 3, 2, 23, 59, tzinfo=dt.UTC), "2021-03-02"),
        ("2021-03-02", "2021-03-02"),
        (dt.date(2262, 4, 11), "2262-04-11"),  # the last day datetime64[ns] holds
        (dt.date(1677, 9, 22), "1677-09-22"),  # and the first
        (dt.date(2262, 4, 12), None),
        (dt.date(1677, 9, 21), None),
        (dt.date(2300, 1, 1), None),
        (dt.datetime.max, None),
        ("2300-01-01", None),
        ("99999-01-01", None),
        ("not a date", None),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
    ],
)
def test_date_column_leaves_what_it_cannot_hold_empty(value, expected):
    column = date_column([value])
    assert str(column.dtype) == "datetime64[ns]"
    shown = None if pd.isna(column.iloc[0]) else column.iloc[0].date().isoformat()
    assert shown == expected


def test_the_report_page_sorts_a_junk_files_year_2300_with_the_others():
    report = {
        "problems": [
            {"key": "a", "reason": "not a DICOM file", "modified": "2021-01-02T00:00:00+00:00"},
            {"key": "b", "reason": "x", "modified": "2300-01-01T00:00:00+00:00"},
            {"key": "c", "reason": "x", "modified": "9999-12-31T23:59:59.999999+00:00"},
            {"key": "d", "reason": "x", "modified": "0001-01-01T00:00:00+00:00"},
            {"key": "e", "reason": "x", "modified": "not a time"},
            {"key": "f", "reason": "x"},
            {"key": "g", "reason": "x", "modified": "2021-01-03T00:00:00"},  # naive: UTC
        ]
    }
    recent = loader_run(report, recent=10)["recent"]
    assert [p["key"] for p in recent] == ["c", "b", "g", "a", "d", "e", "f"]
    assert recent[1]["modified"] == "2300-01-01T00:00:00+00:00"


def test_a_record_with_20000_fields_and_a_15_mib_centre_stays_small(local_store):
    """Only the clinical data dictionary's fields become columns (the others are counted and
    reported); a text cell holds at most 1,000 characters."""
    extra = {f"field {i:05d}": f"value {i}" for i in range(20_000)}
    centre = "=" + "C" * (15 * 2**20)  # 15 MiB, and a formula
    files = {
        "config.json": builders.config(["raw-a"], training=[CENTRE_A, centre]),
        "training/data/Covid1/data_2021-03-01.json": clinical(
            "Covid1",
            CENTRE_A,
            Age=50,
            **extra,
            OtherDataSources={"SegmentationData": {"Ethnicity": "A", "nested extra": 1}},
        ),
        "training/data/Covid2/status_2021-03-01.json": clinical("Covid2", centre, SwabStatus=0),
    }
    builders.put_tree(local_store, files)

    code, state = run_graph(local_store)

    assert code == 0
    _, out = read_batch(LocalStorage(local_store.root.parent / "bucket-processed"))
    for table in ("patient", "patient_clean"):
        columns = list(pd.read_parquet(io.BytesIO(out[f"{table}.parquet"])).columns)
        assert list(csv(out, f"{table}.csv").columns) == columns
        assert not any(c.startswith("field ") for c in columns) and "nested extra" not in columns
        assert {"Age", "Ethnicity", "OtherDataSources", "SwabStatus"} <= set(columns)
    patient = pd.read_parquet(io.BytesIO(out["patient.parquet"])).set_index("Pseudonym")
    assert patient.loc["Covid1", "Ethnicity"] == "A" and patient.loc["Covid1", "Age"] == 50
    bounded = "=" + "C" * 998 + "\u2026"  # 1,000 characters
    assert patient.loc["Covid2", "SubmittingCentre"] == bounded
    assert csv(out, "patient.csv").set_index("Pseudonym").loc["Covid2", "SubmittingCentre"] == (
        "'" + bounded
    )
    assert len(out["patient.csv"]) < 20_000 and len(out["patient_clean.csv"]) < 20_000
    assert "C" * 1000 not in out["dashboard.html"].decode()

    report = latest_report(local_store)
    assert report["counts"]["clinical fields left out of the tables"] == 20_001
    assert [(p["key"], p["reason"]) for p in report["problems"]] == [
        ("training/data/Covid1/data_2021-03-01.json", "fields outside the clinical data dictionary")
    ]
    detail = report["problems"][0]["detail"]
    assert detail.startswith("20,001 fields left out of the tables ('field 00000'")
    assert len(detail) < 300
    assert "fields outside the clinical data dictionary: 1" in state.conclude(local_store)


def test_a_hand_edited_loader_report_is_said_on_the_dashboard_and_the_batch_published(
    local_store,
):
    files = warehouse_files()
    files["reports/warehouseloader/latest.json"] = json.dumps(
        {"run_id": "r1", "started": "yesterday", "counts": {"images copied": "many"}}
    ).encode()
    builders.put_tree(local_store, files)
    set_dates(local_store)

    code, _ = run_graph(local_store)

    assert code == 0
    processed = LocalStorage(local_store.root.parent / "bucket-processed")
    out = check_hand_made_batch(processed, files)
    page = html.unescape(out["dashboard.html"].decode())
    assert (
        "reports/warehouseloader/latest.json cannot be used: "
        "started is 'yesterday', not an ISO 8601 time"
    ) in page
    assert latest_report(local_store)["completed"] is True


#: The types the README gives the columns of a batch's ``images.parquet`` (those that an
#: older dataprocess wrote otherwise, and the series table's).
README_TYPES = {
    "upload_date": pa.date32(),
    "StudyDate": pa.date32(),
    "AcquisitionDate": pa.date32(),
    "filed": pa.date32(),
    "Rows": pa.int32(),
    "Columns": pa.int32(),
    "NumberOfFrames": pa.int32(),
    "BitsStored": pa.int32(),
    "SeriesNumber": pa.int32(),
    "InstanceNumber": pa.int32(),
    "PatientAge": pa.float64(),
    "KVP": pa.float64(),
    "SliceLocation": pa.float64(),
    "PixelSpacing": pa.list_(pa.float64()),
    "ImagePositionPatient": pa.list_(pa.float64()),
    "ImageOrientationPatient": pa.list_(pa.float64()),
    "ImageType": pa.list_(pa.string()),
    "ConvolutionKernel": pa.list_(pa.string()),
    "SeriesDescription": pa.string(),
}


def _types(data: bytes) -> dict:
    schema = pq.read_schema(io.BytesIO(data))
    return {name: schema.field(name).type for name in README_TYPES}


@pytest.mark.parametrize("layout", ["segment", "one file"])
def test_images_parquet_has_the_readme_types_even_after_an_older_batch(local_store, layout):
    """A batch's catalogue has the README's types; a last batch written by an older
    version (timestamps for dates, int64 for counts, no series columns; with ``one file``, an
    ``images.parquet`` as batches had before segments) is never copied as it is: the next
    batch writes its rows again with the types and columns of this version."""
    builders.put_tree(local_store, warehouse_files())
    assert run_graph(local_store)[0] == 0
    processed = local_store.processed()
    batch, out = read_batch(processed)
    assert _types(catalogue_bytes(out)) == README_TYPES

    older = pq.read_table(io.BytesIO(catalogue_bytes(out)))
    older = older.drop_columns([n for n in README_TYPES if n in ("AcquisitionDate", "KVP")])
    for name in ("upload_date", "StudyDate", "filed"):
        index = older.schema.get_field_index(name)
        older = older.set_column(index, name, older.column(name).cast(pa.timestamp("ns")))
    for name in ("Rows", "Columns", "NumberOfFrames", "BitsStored"):
        index = older.schema.get_field_index(name)
        older = older.set_column(index, name, older.column(name).cast(pa.int64()))
    if layout == "segment":
        replace_segment(processed, batch, older)
    else:  # (an older batch's one file: the part it covers in its footer)
        buffer = io.BytesIO()
        through = json.dumps(json.loads(out["images/_catalogue.json"])["through"]).encode()
        pq.write_table(older.replace_schema_metadata({b"through": through}), buffer)
        processed.write(f"{batch}/images.parquet", buffer.getvalue())
        for name in ("000000.parquet", "_catalogue.json"):
            (processed.root / batch / "images" / name).unlink()
        latest = processed.read("latest.csv").replace(b"/images/\r\n", b"/images.parquet\r\n")
        processed.write("latest.csv", latest)
    _CHANGES["the loader's report"](local_store)  # (a new batch, no new part)
    code, state = run_graph(local_store)
    assert code == 0 and not state.kept
    _, again = read_batch(processed)
    assert _types(catalogue_bytes(again)) == README_TYPES
    rows = pq.read_table(io.BytesIO(catalogue_bytes(again))).to_pylist()
    first = pq.read_table(io.BytesIO(catalogue_bytes(out))).to_pylist()
    assert [r["StudyDate"] for r in rows] == [r["StudyDate"] for r in first]
    assert [r["Rows"] for r in rows] == [r["Rows"] for r in first]
    assert {r["KVP"] for r in rows} == {None}  # (what the older file lacked: null)
