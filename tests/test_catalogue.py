"""The image catalogue the loader writes: one part per run that files images, row for row the
images in the warehouse, whatever stopped a run before; the duplicate rule."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import random
import re
from concurrent.futures import Future

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from tests import builders
from tests.builders import clinical, image, rows_table
from tests.test_dataprocess import catalogue_bytes, catalogue_table, read_batch
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_warehouseloader import SPLIT, sample_tree
from warehouse.catalogue import index, merge, segments
from warehouse.catalogue import run as catalogue_run
from warehouse.catalogue.merge import LastBatch, scan_catalogue
from warehouse.catalogue.rows import (
    COLUMNS,
    PARTS_PREFIX,
    dicom_date,
    image_row,
    is_part_key,
    part_bytes,
    part_key,
    read_part,
)
from warehouse.catalogue.run import combined_catalogue
from warehouse.core.errors import StorageError
from warehouse.core.keys import parse_image_key
from warehouse.core.report import RunReport
from warehouse.dashboard import batch as batch_module
from warehouse.dicom.reader import parse_header
from warehouse.dicom.values import dicom_age_years
from warehouse.loader.shards import shard_of
from warehouse.storage.local import LocalStorage


def part_keys(storage) -> list[str]:
    return sorted(i.key for i in storage.list(PARTS_PREFIX) if is_part_key(i.key))


def part_rows(storage) -> list[dict]:
    """Every row of every part, in part order (duplicates kept)."""
    rows = []
    for key in part_keys(storage):
        rows.extend(read_part(storage.read(key)).to_pylist())
    return rows


# --------------------------------------------------------------------------------------------
# the oracle: a catalogue row from pydicom's own reading of a file and the README's column
# rules ("The image catalogue"), written here independently of warehouse.catalogue.rows

_FOLDERS = ("ct", "xray", "mri")
_AGE_UNITS_A_YEAR = {"D": 365, "W": 52, "M": 12, "Y": 1}
_INT32 = range(-(2**31), 2**31)
#: What pydicom may raise when it converts a malformed value on access.
_MALFORMED = (ValueError, TypeError, KeyError, OverflowError, UnicodeError)


def layout_of(key: str) -> dict | None:
    """Where a filed image is, by the README's layout
    ``<group>/<mod>/<PatientID>/<Study>/<Series>/<name>.dcm``; None for any other key."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] not in ("training", "validation") or parts[1] not in _FOLDERS:
        return None
    if not parts[5].lower().endswith(".dcm"):
        return None
    group, folder, patient, study, series, name = parts
    stem = name[: -len(".dcm")]
    return {
        "warehouse_key": key,
        "metadata_key": f"{group}/{folder}-metadata/{patient}/{study}/{series}/{stem}.json",
        "group": group,
        "modality_folder": folder,
    }


def _value(dataset, keyword):
    """An element's value as pydicom gives it; None when absent or not convertible."""
    if dataset is None:
        return None
    try:
        element = dataset.data_element(keyword)
        return None if element is None else element.value
    except _MALFORMED:
        return None


def _items(value) -> list:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def oracle_text(value) -> str | None:
    """Text without its DICOM padding (spaces, a UID's NUL); empty is null."""
    items = _items(value)
    if not items:
        return None
    text = "\\".join(str(item) for item in items).strip(" \x00")
    return text or None


def oracle_date(value) -> dt.date | None:
    """DA: ``YYYYMMDD`` (or the old ``YYYY.MM.DD``) as a date; anything else is null."""
    text = oracle_text(value) or ""
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})|(\d{4})\.(\d{2})\.(\d{2})", text)
    if match is None:
        return None
    year, month, day = (int(g) for g in match.groups() if g is not None)
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def oracle_age(value) -> float | None:
    """AS: ``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY`` in years, by the clinical cleaning's
    divisors (the NCCID rule: months 12, weeks 52, days 365 a year)."""
    match = re.fullmatch(r"(\d{3})([DWMY])", oracle_text(value) or "")
    if match is None:
        return None
    return int(match.group(1)) / _AGE_UNITS_A_YEAR[match.group(2)]


def oracle_int(value) -> int | None:
    """An integer that an int32 holds; null otherwise."""
    items = _items(value)
    if len(items) != 1:
        return None
    try:
        number = int(str(items[0]).strip())
    except _MALFORMED:
        return None
    return number if number in _INT32 else None


def oracle_float(value) -> float | None:
    items = _items(value)
    if len(items) != 1:
        return None
    try:
        number = float(str(items[0]).strip())
    except _MALFORMED:
        return None
    return number if math.isfinite(number) else None


def oracle_floats(value) -> list[float] | None:
    numbers = [oracle_float(item) for item in _items(value)]
    return numbers if numbers and None not in numbers else None


#: The README's bound on a multi-valued text column (ImageType, ConvolutionKernel).
_MOST_LIST_VALUES = 32


def oracle_texts(value) -> list[str] | None:
    """Multi-valued text: each value without its padding, in order (empty ones kept);
    null when there is none, none is non-empty, or there are more than 32."""
    items = _items(value)
    if not items or len(items) > _MOST_LIST_VALUES:
        return None
    texts = [str(item).strip(" \x00") for item in items]
    return texts if any(texts) else None


def oracle_geometry(value, count: int) -> list[float] | None:
    """Exactly ``count`` finite numbers (a position: 3, an orientation: 6), else null."""
    numbers = oracle_floats(value)
    return numbers if numbers is not None and len(numbers) == count else None


def oracle_series_fields(dataset) -> dict:
    """The columns added for the series table, from pydicom's reading of a data set."""
    return {
        "SeriesDescription": oracle_text(_value(dataset, "SeriesDescription")),
        "StudyDescription": oracle_text(_value(dataset, "StudyDescription")),
        "SeriesNumber": oracle_int(_value(dataset, "SeriesNumber")),
        "InstanceNumber": oracle_int(_value(dataset, "InstanceNumber")),
        "ImagePositionPatient": oracle_geometry(_value(dataset, "ImagePositionPatient"), 3),
        "ImageOrientationPatient": oracle_geometry(_value(dataset, "ImageOrientationPatient"), 6),
        "SliceLocation": oracle_float(_value(dataset, "SliceLocation")),
        "ConvolutionKernel": oracle_texts(_value(dataset, "ConvolutionKernel")),
        "ImageType": oracle_texts(_value(dataset, "ImageType")),
        "KVP": oracle_float(_value(dataset, "KVP")),
        "AcquisitionDate": oracle_date(_value(dataset, "AcquisitionDate")),
    }


def oracle_row(
    data: bytes,
    key: str,
    *,
    size: int,
    raw_key: str | None,
    metadata_size: int | None = None,
    content_id: str | None = None,
    identifying: list[str] | None = None,
) -> dict:
    """The catalogue row of the image ``data`` filed at ``key``, from pydicom's reading (and
    its metadata file's size and its raw file's content id, when they are known)."""
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta = dataset.file_meta

    def text(keyword):
        return oracle_text(_value(dataset, keyword))

    row = {
        **layout_of(key),
        "raw_key": raw_key,
        "upload_date": dt.date.fromisoformat(raw_key.split("/")[1]) if raw_key else None,
        "object_size": size,
        "metadata_size": metadata_size,
        "PatientID": text("PatientID"),
        "StudyInstanceUID": text("StudyInstanceUID"),
        "SeriesInstanceUID": text("SeriesInstanceUID"),
        "SOPInstanceUID": text("SOPInstanceUID")
        or oracle_text(_value(meta, "MediaStorageSOPInstanceUID")),
        "SOPClassUID": text("SOPClassUID") or oracle_text(_value(meta, "MediaStorageSOPClassUID")),
        "Modality": text("Modality"),
        "BodyPartExamined": text("BodyPartExamined"),
        "ViewPosition": text("ViewPosition"),
        "PatientSex": text("PatientSex"),
        "PatientAge": oracle_age(_value(dataset, "PatientAge")),
        "StudyDate": oracle_date(_value(dataset, "StudyDate")),
        "Manufacturer": text("Manufacturer"),
        "ManufacturerModelName": text("ManufacturerModelName"),
        "Rows": oracle_int(_value(dataset, "Rows")),
        "Columns": oracle_int(_value(dataset, "Columns")),
        "PixelSpacing": oracle_floats(_value(dataset, "PixelSpacing")),
        "SliceThickness": oracle_float(_value(dataset, "SliceThickness")),
        "NumberOfFrames": oracle_int(_value(dataset, "NumberOfFrames")),
        "PhotometricInterpretation": text("PhotometricInterpretation"),
        "BitsStored": oracle_int(_value(dataset, "BitsStored")),
        "TransferSyntaxUID": oracle_text(_value(meta, "TransferSyntaxUID")),
        **oracle_series_fields(dataset),
        "content_id": content_id,
        # what the screen flagged: given (the test trees' images are clean: []), null when
        # not screened
        "identifying_attributes": identifying,
    }
    assert sorted(row) == sorted(COLUMNS)  # the README's columns, no more, no fewer
    return row


def oracle_content_id(storage, data: bytes) -> str:
    """The content id of a raw file of bytes ``data`` (the filed copy's): on S3 its ETag (the
    MD5 of a file uploaded in one part) and size, on a local store its SHA-256."""
    if storage.url.startswith("s3://"):
        return f"etag:{hashlib.md5(data).hexdigest()}:{len(data)}"
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def warehouse_rows(storage, raw_of: dict[str, str]) -> dict[str, dict]:
    """The catalogue row each filed image should have, made from the filed copy itself (its
    bytes read by pydicom, its listed size and its metadata file's) and the raw key the test
    tree says it came from."""
    listed = {info.key: info.size for info in storage.list("")}
    return {
        key: oracle_row(
            storage.read(key),
            key,
            size=size,
            raw_key=raw_of.get(key),
            metadata_size=listed.get(layout_of(key)["metadata_key"]),
            content_id=oracle_content_id(storage, storage.read(key)) if raw_of.get(key) else None,
            # a row the loader made from its raw file is screened (the test trees' images are
            # clean); one catalogued from the filed copy's header is not
            identifying=[] if raw_of.get(key) else None,
        )
        for key, size in listed.items()
        if layout_of(key) is not None
    }


# --------------------------------------------------------------------------------------------
# rows and parts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20200301", dt.date(2020, 3, 1)),
        ("2020.03.01", dt.date(2020, 3, 1)),
        ("20200229", dt.date(2020, 2, 29)),
        ("20210229", None),  # not a day
        ("20201301", None),
        ("2020030", None),
        ("2020-03", None),
        ("", None),
        (None, None),
    ],
)
def test_dates(value, expected):
    assert dicom_date(value) == oracle_date(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("065Y", 65.0),
        ("006M", 0.5),
        ("010W", 10 / 52),
        ("026W", 0.5),
        ("014D", 14 / 365),
        ("000D", 0.0),
        ("065Y ", 65.0),  # padding
        ("65", None),
        ("abcY", None),
        ("065X", None),
        ("", None),
        (None, None),
    ],
)
def test_ages_in_years(value, expected):
    assert dicom_age_years(value) == oracle_age(value) == expected


def _row_of(data: bytes, key: str, raw_key: str | None) -> dict:
    """The product's row of an image in memory (its header parsed as the loader does)."""
    upload = raw_key.split("/")[1] if raw_key else None
    row = image_row(
        parse_header(data), parse_image_key(key), size=len(data), raw_key=raw_key, upload=upload
    )
    return dict(zip(COLUMNS, row, strict=True))


def test_row_of_a_header_is_typed_and_missing_values_are_null():
    name, data = image("Covid1", "CT", extra={"ViewPosition": "", "PatientAge": "0x5Y"})
    key = f"training/ct/Covid1/1.2/1.3/{name}"
    raw_key = "raw-a/2021-01-01/images/" + name
    row = _row_of(data, key, raw_key)
    assert row == oracle_row(data, key, size=len(data), raw_key=raw_key)
    assert row["warehouse_key"] == key and row["raw_key"] == raw_key
    assert row["metadata_key"] == f"training/ct-metadata/Covid1/1.2/1.3/{name[:-4]}.json"
    assert row["group"] == "training" and row["modality_folder"] == "ct"
    assert row["upload_date"] == dt.date(2021, 1, 1) and row["object_size"] == len(data)
    assert row["Modality"] == "CT" and row["SOPInstanceUID"] == name[:-4]
    assert row["PatientID"] == "Covid1" and row["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert row["ViewPosition"] is None and row["PatientAge"] is None
    assert isinstance(row["StudyDate"], dt.date)
    assert row["Rows"] == 64 and row["Columns"] == 64 and row["BitsStored"] == 12
    assert row["PixelSpacing"] == [0.683594, 0.683594]
    assert row["NumberOfFrames"] is None  # absent
    assert row["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    table = read_part(part_bytes(rows_table([tuple(row.values())])))
    assert table.schema.field("StudyDate").type == pa.date32()
    assert table.schema.field("PixelSpacing").type == pa.list_(pa.float64())
    assert table.to_pylist() == [row]


def image_with_raw_values(values: dict[str, tuple[int, str, bytes]], **kwargs) -> tuple:
    """``(name, bytes)`` of an image whose elements ``keyword: (tag, VR, value bytes)`` hold
    exactly those bytes (pydicom refuses to write a malformed number): each is written first
    as a placeholder of the same length, whose bytes are then replaced."""
    extra, patches = dict(kwargs.pop("extra", {})), []
    for keyword, (tag, vr, value) in values.items():
        value += b" " * (len(value) % 2)
        placeholder = "9" * len(value)
        extra[keyword] = placeholder
        head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
        patches.append((head + vr.encode() + len(value).to_bytes(2, "little"), placeholder, value))
    name, data = image("Covid1", "CT", extra=extra, **kwargs)
    for head, placeholder, value in patches:
        assert data.count(head + placeholder.encode()) == 1
        data = data.replace(head + placeholder.encode(), head + value)
    return name, data


_FRAMES, _THICKNESS, _SPACING = (0x00280008, "IS"), (0x00180050, "DS"), (0x00280030, "DS")


@pytest.mark.parametrize(
    ("extra", "raw", "expected"),
    [
        # padding stripped (the identifiers' DICOM padding, text values' trailing spaces)
        ({"Manufacturer": "ACME  ", "BodyPartExamined": "CHEST "}, {}, {"Manufacturer": "ACME"}),
        # dates, ages, numbers in their other valid forms
        (
            {"StudyDate": "2020.03.01", "PatientAge": "010W"},
            {},
            {"PatientAge": 10 / 52},
        ),
        ({"NumberOfFrames": "12", "SliceThickness": "2.5"}, {}, {"NumberOfFrames": 12}),
        ({"PixelSpacing": ["0.5", "0.25"]}, {}, {"PixelSpacing": [0.5, 0.25]}),
        # malformed: null, never an error
        (
            {"StudyDate": "20201301", "PatientAge": "45 Y"},
            {},
            {"StudyDate": None, "PatientAge": None},
        ),
        ({}, {"NumberOfFrames": (*_FRAMES, b"twelve")}, {"NumberOfFrames": None}),
        ({}, {"SliceThickness": (*_THICKNESS, b"thin")}, {"SliceThickness": None}),
        ({}, {"NumberOfFrames": (*_FRAMES, b"3000000000")}, {"NumberOfFrames": None}),  # int32
        ({}, {"SliceThickness": (*_THICKNESS, b"NaN")}, {"SliceThickness": None}),
        ({}, {"PixelSpacing": (*_SPACING, b"0.5\\x")}, {"PixelSpacing": None}),
        # absent or empty
        ({"Manufacturer": None, "PatientSex": ""}, {}, {"Manufacturer": None, "PatientSex": None}),
        ({"PixelSpacing": None, "Rows": None}, {}, {"PixelSpacing": None, "Rows": None}),
        # no SOPInstanceUID in the data set: the file meta's MediaStorageSOPInstanceUID
        ({"SOPInstanceUID": None}, {}, {}),
        # the series table's columns: multi-valued text as lists, geometry of its count
        (
            {"ImageType": ["DERIVED", "SECONDARY", "", "MPR "], "ConvolutionKernel": "B30f"},
            {},
            {"ImageType": ["DERIVED", "SECONDARY", "", "MPR"], "ConvolutionKernel": ["B30f"]},
        ),
        (
            {"ConvolutionKernel": ["FC08", "FC51"], "KVP": "120", "SeriesNumber": "7"},
            {},
            {"ConvolutionKernel": ["FC08", "FC51"], "KVP": 120.0, "SeriesNumber": 7},
        ),
        ({"ImageType": ["X"] * 33}, {}, {"ImageType": None}),  # more than 32 values
        ({"ImageType": ["X"] * 32}, {}, {"ImageType": ["X"] * 32}),
        (
            {"ImagePositionPatient": ["1.5", "-2", "3e1"], "AcquisitionDate": "20200229"},
            {},
            {"ImagePositionPatient": [1.5, -2.0, 30.0], "AcquisitionDate": dt.date(2020, 2, 29)},
        ),
        ({}, {"ImagePositionPatient": (0x00200032, "DS", b"1\\2")}, {"ImagePositionPatient": None}),
        (
            {},
            {"ImageOrientationPatient": (0x00200037, "DS", b"1\\0\\0\\0\\1\\x")},
            {"ImageOrientationPatient": None},
        ),
        ({}, {"InstanceNumber": (0x00200013, "IS", b"one")}, {"InstanceNumber": None}),
        ({}, {"KVP": (0x00180060, "DS", b"Inf")}, {"KVP": None}),
        (
            {"AcquisitionDate": "20201301", "SeriesDescription": " AX  ", "SliceLocation": None},
            {},
            {"AcquisitionDate": None, "SeriesDescription": "AX", "SliceLocation": None},
        ),
    ],
)
def test_rows_follow_the_column_rules(extra, raw, expected):
    """The product's row of a header equals the oracle's, whatever its values."""
    name, data = image_with_raw_values(raw, extra=extra)
    key = f"validation/ct/Covid1/1.2/1.3/{name}"
    row = _row_of(data, key, None)
    assert row == oracle_row(data, key, size=len(data), raw_key=None)
    assert {column: row[column] for column in expected} == expected
    assert row["SOPInstanceUID"] == name[:-4]  # (from the data set, or the file meta)
    assert row["raw_key"] is None and row["upload_date"] is None


def test_part_keys_and_merge_keeps_the_newest_row_of_a_key(local_store, tmp_path):
    now = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)
    assert part_key(now) == "catalogue/images/2026-11-25T09-30-00.000000Z.parquet"
    assert part_key(now, (1, 4)).endswith("00.000000Z-shard-1-of-4.parquet")
    assert is_part_key(part_key(now)) and not is_part_key("catalogue/images/x/y.parquet")
    name, data = image("Covid1", "DX")
    where = parse_image_key(f"training/xray/Covid1/1.2/1.3/{name}")
    old = image_row(parse_header(data), where, size=1, raw_key=None, upload=None)
    new = image_row(parse_header(data), where, size=2, raw_key=None, upload=None)
    local_store.write(part_key(now), part_bytes(rows_table([old])))
    local_store.write(part_key(now + dt.timedelta(seconds=1)), part_bytes(rows_table([new])))
    scan = scan_catalogue(
        local_store,
        local_store.processed(),
        LastBatch(),
        _submit_now,
        RunReport("dataprocess"),
        str(tmp_path / "merged.parquet"),
        now=now + dt.timedelta(hours=1),
    )
    merged = pq.read_table(scan.path)
    assert merged.column("object_size").to_pylist() == [2] and scan.rows == 1


def _submit_now(work, *args):
    """A pool's submit, run at once (the merge's reads in the test's thread)."""
    future: Future = Future()
    future.set_result(work(*args))
    return future


# --------------------------------------------------------------------------------------------
# the loader's parts


def test_catalogue_after_a_run_is_the_warehouse_row_for_row(store):
    files, expected, _ = sample_tree()
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    parts = part_keys(store)
    assert len(parts) == 1
    rows = part_rows(store)
    assert [r["warehouse_key"] for r in rows] == sorted(r["warehouse_key"] for r in rows)
    assert {r["warehouse_key"]: r for r in rows} == warehouse_rows(store, expected)
    assert len(rows) == state.report.counts["images catalogued"]
    # a rerun files nothing and adds no part
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and part_keys(store) == parts
    assert "images catalogued" not in state.report.counts


def _tree(patients=6, images=24, date="2021-01-01", first=0, **kwargs):
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    for n in range(first, first + images):
        name, data = image(f"Covid{n % patients + 1}", "DX", f"s{n % 3}", "r1", n, **kwargs)
        files[f"raw-a/{date}/images/{name}"] = data
    for p in range(1, patients + 1):
        files[f"raw-a/2021-01-01/data/Covid{p}_data.json"] = clinical(f"Covid{p}", SPLIT)
    return files


def _raw_of(storage) -> dict[str, str]:
    """Filed image key -> raw key, by file name (every raw name is unique in these trees)."""
    raw = {i.key.rsplit("/", 1)[1]: i.key for i in storage.list("raw-a/") if "/images/" in i.key}
    return {
        i.key: raw[i.key.rsplit("/", 1)[1]]
        for i in storage.list("")
        if layout_of(i.key) is not None
    }


def test_a_run_stopped_before_its_part_is_filed_again_by_the_next(store):
    """What a run stopped before its last part filed is in no part: the next run, whose raw
    listing shows those raw files unknown to the catalogue, files them again (the same
    objects, written again) and lists them, each once, with their raw keys."""
    builders.put_tree(store, _tree(images=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    first = part_keys(store)
    # A run files 12 more images and stops before its part (and, for three images, before
    # their metadata files): what a kill at that moment leaves.
    builders.put_tree(store, _tree(images=12, date="2021-02-01", first=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    (stopped,) = [k for k in part_keys(store) if k not in first]
    store_delete(store, stopped)
    listed = {r["metadata_key"] for r in part_rows(store)}
    unwritten = sorted(set(_all_metadata(store)) - listed)[:3]
    for key in unwritten:
        store_delete(store, key)
    copies = {i.key: store.read(i.key) for i in store.list("") if layout_of(i.key)}
    # the next run (with new uploads too) files all of them again and lists them, each once
    builders.put_tree(store, _tree(images=6, date="2021-03-01", first=24))
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    assert state.report.counts["metadata files written"] == 12 + 6
    assert state.report.counts["images copied"] == 12 + 6
    assert all(store.read(key) == data for key, data in copies.items())
    rows = part_rows(store)
    keys = [r["warehouse_key"] for r in rows]
    assert len(keys) == len(set(keys)) == 30
    assert {r["warehouse_key"]: r for r in rows} == warehouse_rows(store, _raw_of(store))


@pytest.mark.parametrize("processes", ["one process", "a shard"])
def test_a_run_writes_its_parts_while_it_files(local_store, monkeypatch, processes):
    """Every `FLUSH_ROWS` rows a part is written, by a whole run and by an image shard alike,
    so a stop leaves in no part only the images filed since the last one."""
    monkeypatch.setattr(catalogue_run, "FLUSH_ROWS", 4)
    builders.put_tree(local_store, _tree(images=12))
    if processes == "one process":
        assert builders.run_loader(local_store, workers=2)[0] == 0
    else:
        settings = {"workers": 2, "run_id": "run-1"}
        assert builders.run_loader(local_store, phase="clinical", **settings)[0] == 0
        assert builders.run_loader(local_store, shard=(0, 1), **settings)[0] == 0
    assert len(part_keys(local_store)) == 3
    rows = [r["warehouse_key"] for r in part_rows(local_store)]
    assert sorted(rows) == sorted(_raw_of(local_store))


def _latest(storage) -> dict:
    return json.loads(storage.read("reports/warehouseloader/latest.json"))


def test_each_run_records_its_catalogue_parts(store):
    builders.put_tree(store, _tree(images=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    (part,) = part_keys(store)
    assert _latest(store)["catalogue"] == {"complete": True, "parts": [part]}
    builders.put_tree(store, _tree(images=3, date="2021-02-01", first=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    record = _latest(store)["catalogue"]
    assert record["complete"] and len(record["parts"]) == 1 and record["parts"][0] != part
    assert builders.run_loader(store, workers=4)[0] == 0  # nothing new: no part
    assert _latest(store)["catalogue"] == {"complete": True, "parts": []}


def test_a_sharded_runs_catalogue_record_is_complete_only_with_every_part():
    clinical_part = {"phase": "clinical", "catalogue": {"complete": True, "parts": ["p0"]}}
    shard = {"phase": "images", "catalogue": {"complete": True, "parts": ["p1"]}}
    empty = {"phase": "images", "catalogue": {"complete": True, "parts": []}}
    assert combined_catalogue([clinical_part, shard, empty]) == {
        "complete": True,
        "parts": ["p0", "p1"],
    }
    assert combined_catalogue([clinical_part, shard, None])["complete"] is False
    stopped = {"phase": "images", "catalogue": {"complete": False, "parts": []}}
    assert combined_catalogue([clinical_part, stopped])["complete"] is False
    assert combined_catalogue([None, shard]) == {"complete": False, "parts": ["p1"]}


def newest_rows(storage) -> dict[str, dict]:
    """The newest row of each image (the last part's that lists it), checking that no part
    lists an image twice."""
    newest = {}
    for key in part_keys(storage):
        rows = read_part(storage.read(key)).to_pylist()
        assert len({r["warehouse_key"] for r in rows}) == len(rows), key
        newest.update((r["warehouse_key"], r) for r in rows)
    return newest


@pytest.mark.parametrize("before", ["stopped run", "no catalogue"])
def test_an_image_in_no_part_is_catalogued_and_known_to_the_duplicate_rule(store, before):
    """Images filed by a run stopped before its part (filed again by the next run, which sees
    their raw files unknown to the catalogue), or before the catalogue existed (the warehouse's
    first run looks at everything: their headers are read, their raw keys unknown until it
    reads a raw file and finds it filed at that raw file's target): the next run lists them in
    its parts, and a later copy of one is a duplicate."""
    builders.put_tree(store, _tree(images=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    builders.put_tree(store, _tree(images=6, date="2021-02-01", first=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    raw_of = _raw_of(store)
    parts = part_keys(store)
    if before == "stopped run":
        store_delete(store, parts[-1])  # what a stop before the part leaves
    else:
        for key in parts:
            store_delete(store, key)
        report = _latest(store)
        del report["catalogue"]  # a report of a version before the catalogue
        store.write("reports/warehouseloader/latest.json", json.dumps(report).encode())
        store_delete(store, "state/raw-folders.json")  # (nor the folder state)
        # an image whose raw file is gone: no guess of where it came from, its raw key unknown
        gone = next(key for key in sorted(raw_of) if "Covid1/" in key)
        store_delete(store, raw_of[gone])
        raw_of[gone] = None
    name = image("Covid3", "DX", "s2", "r1", 8)[0]  # one of the second run's images
    (orphan,) = [k for k in raw_of if k.endswith("/" + name)]
    store.write("raw-a/2021-03-01/images/again.dcm", store.read(orphan))
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    reason, detail = _problems(state)["raw-a/2021-03-01/images/again.dcm"]
    assert reason == "duplicate image" and orphan in detail
    rows = newest_rows(store)
    assert len(rows) == 12
    assert rows == warehouse_rows(store, raw_of)
    # the record is complete again: the next run files nothing, reads no image
    parts = part_keys(store)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and _latest(store)["catalogue"]["complete"]
    assert part_keys(store) == parts and "header read requests" not in state.report.counts


def _copy_name_in_another_shard(name: str, count: int) -> str:
    """A file name that falls in another shard than ``name`` (the run's shard rule decides;
    the test only needs one that does not share the shard)."""
    for n in range(100):
        candidate = f"again-{n}.dcm"
        if shard_of(candidate, count) != shard_of(name, count):
            return candidate
    raise AssertionError("no name in another shard")


@pytest.mark.parametrize("processes", ["one process", "2 shards"])
def test_an_image_recovered_by_a_full_run_is_known_to_its_shards(local_store, processes):
    """A run killed before its part leaves filed images no part lists; a full run recovers
    them from their headers before deciding anything. A copy of one, uploaded under another
    name, is a duplicate whether one process or the shards of a sharded run decide it (the
    shards know the instances their clinical phase recovered)."""
    store = local_store
    builders.put_tree(store, _tree(images=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    builders.put_tree(store, _tree(images=6, date="2021-02-01", first=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    store_delete(store, part_keys(store)[-1])  # what a kill before the part leaves
    name = image("Covid3", "DX", "s2", "r1", 8)[0]  # one of the second run's images
    (filed,) = [k for k in _raw_of(store) if k.endswith("/" + name)]
    copy = "raw-a/2021-03-01/images/" + _copy_name_in_another_shard(name, 2)
    store.write(copy, store.read(filed))
    if processes == "one process":
        code, state = builders.run_loader(store, workers=4, reconcile=True)
        assert code == 0
    else:
        code, state = builders.run_loader(
            store, workers=2, reconcile=True, phase="clinical", run_id="run-1"
        )
        assert code == 0
        for shard in range(2):
            code, _ = builders.run_loader(store, workers=2, shard=(shard, 2), run_id="run-1")
            assert code == 0
    assert state.report.counts["filed images in no part catalogued"] == 6
    problems = {p["key"]: p for p in _latest(store)["problems"]}
    assert problems[copy]["reason"] == "duplicate image"
    assert filed in problems[copy]["detail"]
    filed_names = [k.rsplit("/", 1)[1] for k in _raw_of(store)]
    assert copy.rsplit("/", 1)[1] not in filed_names and len(filed_names) == 12


def _all_metadata(storage) -> list[str]:
    return [i.key for i in storage.list("") if "-metadata/" in i.key]


def store_delete(storage, key: str) -> None:
    """Delete one object (tests only: the product's store never deletes warehouse objects)."""
    if isinstance(storage, LocalStorage):
        (storage.root / key).unlink()
    else:
        storage.client.delete_object(Bucket=storage.bucket, Key=key)


def test_sigkilled_run_then_rerun_lists_every_image_once(tmp_path):
    """SIGKILL a real run half-way (after a first complete one); the rerun's part lists what
    it filed and what the killed run filed."""
    (tmp_path / "bucket").mkdir()
    storage = LocalStorage(tmp_path / "bucket")
    builders.put_tree(storage, _tree(patients=12, images=12))
    assert builders.run_loader(storage, workers=4)[0] == 0
    files = _tree(patients=12, images=120, date="2021-02-01", first=12, rows=128, columns=128)
    builders.put_tree(storage, {k: v for k, v in files.items() if "/images/" in k})
    builders.kill_loader_when(storage.root, lambda: len(_all_metadata(storage)) >= 40)
    assert len(part_keys(storage)) == 1
    assert 12 < len(_all_metadata(storage)) < 132
    # what the killed run filed is in no part: the rerun files it again from its raw files
    assert builders.run_loader(storage, workers=4)[0] == 0
    rows = part_rows(storage)
    keys = [r["warehouse_key"] for r in rows]
    assert len(keys) == len(set(keys)) == 132
    assert {r["warehouse_key"]: r for r in rows} == warehouse_rows(storage, _raw_of(storage))


# --------------------------------------------------------------------------------------------
# duplicates


def _problems(state) -> dict[str, tuple[str, str]]:
    return {p["key"]: (p["reason"], p["detail"]) for p in state.report.problems}


def test_same_instance_twice_in_one_run_is_filed_once(store):
    files = _tree(patients=1, images=1)
    (raw,) = [k for k in files if "/images/" in k]
    files["raw-a/2021-02-01/images/copy.dcm"] = files[raw]  # another name, another date
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    (filed,) = [r["warehouse_key"] for r in part_rows(store)]
    assert filed.endswith(raw.rsplit("/", 1)[1])
    reason, detail = _problems(state)["raw-a/2021-02-01/images/copy.dcm"]
    assert reason == "duplicate image" and filed in detail
    assert not [i.key for i in store.list("training/") if i.key.endswith("copy.dcm")]


def test_later_uploads_of_a_filed_instance_are_duplicates_or_conflicts(store):
    builders.put_tree(store, _tree(patients=1, images=2))
    assert builders.run_loader(store, workers=4)[0] == 0
    other_name, other = image("Covid1", "DX", "s1", "r1", 1, rows=32, columns=32)
    (second,) = [
        r["warehouse_key"] for r in part_rows(store) if r["warehouse_key"].endswith(other_name)
    ]
    (first,) = [r["warehouse_key"] for r in part_rows(store) if r["warehouse_key"] != second]
    same = store.read(first)
    assert len(other) != len(store.read(second))
    store.write("raw-a/2021-03-01/images/again.dcm", same)
    store.write("raw-a/2021-03-01/images/changed.dcm", other)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    problems = _problems(state)
    reason, detail = problems["raw-a/2021-03-01/images/again.dcm"]
    assert reason == "duplicate image" and first in detail
    reason, detail = problems["raw-a/2021-03-01/images/changed.dcm"]
    assert reason == "conflicting duplicate"
    assert second in detail and "raw-a/2021-03-01/images/changed.dcm" in detail
    assert len(part_keys(store)) == 1  # nothing filed: no part
    # unchanged, they are not read again: the reason holds while the first copy is filed
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["unfiled inputs not read again (unchanged)"] == 2
    assert {k: v[0] for k, v in _problems(state).items()} == {
        "raw-a/2021-03-01/images/again.dcm": "duplicate image",
        "raw-a/2021-03-01/images/changed.dcm": "conflicting duplicate",
    }


# --------------------------------------------------------------------------------------------
# dataprocess: the whole catalogue, merged a day at a time; a reconcile catalogues what no
# part lists


def _images(storage) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(catalogue_bytes(read_batch(storage.processed())[1])))


def _oracle_frame(storage, raw_of: dict[str, str]) -> pd.DataFrame:
    """The catalogue columns of every filed image, as the oracle makes them, by key."""
    rows = warehouse_rows(storage, raw_of)
    return pd.DataFrame([rows[key] for key in sorted(rows)], columns=list(COLUMNS))


def _catalogue_columns(images: pd.DataFrame) -> pd.DataFrame:
    table = images.sort_values("warehouse_key", ignore_index=True)[list(COLUMNS)]
    return table.astype(object).where(table.notna(), None)


def test_dataprocess_merges_only_the_new_parts_and_a_reconcile_catalogues_what_none_lists(
    store, monkeypatch
):
    # (parts count as settled at once: the index and the merged catalogue may cover them)
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    builders.put_tree(store, _tree(images=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    builders.put_tree(store, _tree(images=6, date="2021-02-01", first=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    assert len(part_keys(store)) == 2
    code, state = run_dataprocess(store, workers=4)
    assert code == 0
    first = _images(store)
    assert len(first) == 18 and first["warehouse_key"].is_unique
    assert set(first["SubmittingCentre"]) == {SPLIT}
    assert first["covid_positive"].all()
    expected = _oracle_frame(store, _raw_of(store))
    pd.testing.assert_frame_equal(_catalogue_columns(first), _catalogue_columns(expected))

    # A day later: one more loader run, one more part; the merge reads that part only.
    builders.put_tree(store, _tree(images=6, date="2021-03-01", first=18))
    assert builders.run_loader(store, workers=4)[0] == 0
    reads = []
    monkeypatch.setattr(merge, "read_in_order", _recording(merge.read_in_order, reads))
    code, state = run_dataprocess(store, workers=4)
    assert code == 0 and reads == [part_keys(store)[-1]]
    second = _images(store)
    expected = _oracle_frame(store, _raw_of(store))
    assert len(second) == 24
    pd.testing.assert_frame_equal(_catalogue_columns(second), _catalogue_columns(expected))

    # The same warehouse without its parts (as filed before the catalogue existed), and one
    # raw file gone: a reconcile run of the loader reads every filed image's header once and
    # catalogues it, where it came from unknown (never guessed), then finds each raw file it
    # lists filed at that raw file's target, which becomes its image's source; dataprocess
    # then gives the same rows, the image of the raw file gone without a source.
    for key in [*part_keys(store), *(i.key for i in store.list("catalogue/index/"))]:
        store_delete(store, key)
    gone = expected.warehouse_key[0]
    store_delete(store, expected.raw_key[0])
    code, state = builders.run_loader(store, workers=4, reconcile=True)
    assert code == 0 and state.report.counts["filed images in no part catalogued"] == 24
    code, state = run_dataprocess(store, workers=4, reconcile=True)
    assert code == 0
    recovered = _catalogue_columns(_images(store))
    # (nor the content of its raw file, gone; catalogued from the filed copy's header: never
    # screened)
    expected.loc[expected.warehouse_key == gone, ["raw_key", "upload_date", "content_id"]] = None
    expected.loc[expected.warehouse_key == gone, "identifying_attributes"] = None
    pd.testing.assert_frame_equal(recovered, _catalogue_columns(expected))


def _recording(read_in_order, reads: list):
    """Record the keys of the parts ``read_in_order`` reads from the store."""

    def recorded(storage, keys, *args, **kwargs):
        keys = list(keys)
        reads.extend(keys)
        return read_in_order(storage, keys, *args, **kwargs)

    return recorded


@pytest.mark.parametrize("settled", [True, False], ids=["parts settled", "parts just written"])
def test_a_dataprocess_rerun_with_nothing_new_copies_the_catalogue_and_its_counts(
    local_store, monkeypatch, settled
):
    """No part since the last batch (but a new loader report): its catalogue's segments are
    copied and its counts stand.

    No part nor catalogue row is read; a patient's changed clinical file makes the next batch
    join the new value again (the segment that holds their rows is written again).
    """
    store = local_store
    # (just written: the parts are merged again by each run until they settle, and the rows
    # of the same parts stand as they are)
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0 if settled else 1))
    builders.put_tree(store, _tree(images=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0
    first_batch, first = read_batch(store.processed())

    copies, joined, parts_read = [], [], []
    monkeypatch.setattr(merge, "read_in_order", _recording(merge.read_in_order, parts_read))
    real_copy = type(store.processed()).copy

    def recording_copy(self, source, target, size=None):
        copies.append((source, target))
        return real_copy(self, source, target, size)

    monkeypatch.setattr(type(store.processed()), "copy", recording_copy)
    real_write_segments = batch_module.write_segments

    def recording_write_segments(*args, **kwargs):
        plans = real_write_segments(*args, **kwargs)
        joined.extend(plan.rows for plan in plans if plan.path is not None)
        return plans

    monkeypatch.setattr(batch_module, "write_segments", recording_write_segments)
    # a loader run with nothing new: no part, but a new loader report for the dashboard
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0
    second_batch, second = read_batch(store.processed())

    # (and its series table: the same rows make the same series)
    assert copies == [
        (f"{first_batch}/series.parquet", f"{second_batch}/series.parquet"),
        (f"{first_batch}/images/000000.parquet", f"{second_batch}/images/000000.parquet"),
    ]
    assert joined == [] and parts_read == []
    assert second["images/000000.parquet"] == first["images/000000.parquet"]
    assert second["series.parquet"] == first["series.parquet"]
    for name in ("study_images.csv", "storage.csv", "xray.csv", "stats_images.csv"):
        assert second[name] == first[name], name

    # Covid1's clinical file gives an age: its images' ``age`` is joined again.
    filed = next(i.key for i in store.list("training/data/Covid1/"))
    record = json.loads(store.read(filed))
    store.write(filed, json.dumps({**record, "Age": 77}).encode())
    assert run_dataprocess(store, workers=4)[0] == 0
    third_batch, third = read_batch(store.processed())
    assert joined == [12]  # (its one segment, written again)
    assert copies[2:] == [(f"{second_batch}/series.parquet", f"{third_batch}/series.parquet")]
    images = pd.read_parquet(io.BytesIO(catalogue_bytes(third)))
    assert set(images.loc[images["PatientID"] == "Covid1", "age"]) == {77.0}
    before = pd.read_parquet(io.BytesIO(catalogue_bytes(second)))
    assert set(before.loc[before["PatientID"] == "Covid1", "age"]) != {77.0}
    assert len(images) == len(before) == 12


def _random_index_rows(rng: random.Random) -> dict[str, list[tuple]]:
    """Random rows of an old index of 3 parts and a new one of 2: ``_index_of``'s tuples."""
    return {
        side: [
            (rng.randrange(1, 30), rng.randrange(1, 9), rng.randrange(parts))
            + tuple(rng.randrange(1, 30) for _ in range(4))
            + (rng.choice([0, 18000, 18001, 18005]),)
            for _ in range(rng.randrange(0, 25))
        ]
        for side, parts in (("old", 3), ("new", 2))
    }


def _old_then_new(rows: dict[str, list[tuple]]) -> list[tuple]:
    """The old rows then the new ones, the new ones' part numbers after the old three."""
    return [
        *rows["old"],
        *((s, z, p + 3, t, r, rz, rt, d) for s, z, p, t, r, rz, rt, d in rows["new"]),
    ]


def _check_sorted_rows(got: index.IndexArrays, every: list[tuple]) -> None:
    """Each array of ``got`` is a stable sort of ``every`` by its hash (the raw arrays by
    upload day, then hash), with Python's sorted as the oracle."""
    by_sop = sorted(every, key=lambda row: row[0])
    by_raw = sorted(every, key=lambda row: (row[7], row[4]))
    assert got.sop.tolist() == [row[0] for row in by_sop]
    assert got.sop_size.tolist() == [row[1] for row in by_sop]
    assert got.sop_part.tolist() == [row[2] for row in by_sop]
    assert got.target.tolist() == sorted(row[3] for row in every)
    assert got.raw_day.tolist() == [row[7] for row in by_raw]
    assert got.raw.tolist() == [row[4] for row in by_raw]
    assert got.raw_size.tolist() == [row[5] for row in by_raw]
    assert got.raw_time.tolist() == [row[6] for row in by_raw]
    assert got.parts == ["o0", "o1", "o2", "n0", "n1"]


def test_combining_two_indexes_keeps_every_row_in_hash_order_old_before_new():
    """`index.combined` inserts the new index's rows into the old one's order: each array
    equals a stable sort, by its hash (the raw arrays by upload day, then hash), of the old
    rows then the new ones (oracle: Python's sorted)."""
    rng = random.Random(7)
    for _ in range(100):
        rows = _random_index_rows(rng)
        made = {side: _index_of(rows[side], parts) for side, parts in (("old", 3), ("new", 2))}
        got = index.combined(made["old"], made["new"])
        every = _old_then_new(rows)
        _check_sorted_rows(got, every)
        # consuming the old index gives the same, and lets go of its buffers (no view kept)
        consumed = index.combined(_index_of(rows["old"], 3), made["new"], consume=True)
        assert consumed.raw.tolist() == got.raw.tolist()
        assert consumed.sop.tolist() == got.sop.tolist()
    old = _index_of([(1, 1, 0, 1, 1, 1, 1, 1)] * 10, 3)
    index.combined(old, _index_of([(2, 1, 0, 2, 2, 1, 1, 1)], 2), consume=True)
    for name in ("sop", "sop_size", "sop_part", "target", "raw_day", "raw", "raw_size"):
        array = getattr(old, name)
        assert len(array) == 0 and array.base is None, name


def test_combining_a_stored_index_an_array_at_a_time_gives_every_row_in_order(
    local_store, tmp_path, monkeypatch
):
    """A stored index combined an array at a time holds every row in order.

    `index.combine_saved` (the old index read from the store a column at a time, the result
    written from spilled arrays) holds what a stable sort of the old rows then the new ones
    gives (oracle: Python's sorted), its owner pairs the distinct (hash, patient) pairs of
    both sides, over several row groups and the owner columns' padding.
    """
    monkeypatch.setattr(index, "ROW_GROUP", 4)
    rng = random.Random(13)
    for trial in range(30):
        rows = _random_index_rows(rng)
        made = {side: _index_of(rows[side], parts) for side, parts in (("old", 3), ("new", 2))}
        pairs = {}
        for side, built in made.items():
            for kind in index.OWNER_KINDS:
                # at most one pair an image: owner arrays never longer than the index
                count = rng.randrange(0, len(built) + 1)
                found = sorted({(rng.randrange(1, 9), rng.randrange(1, 4)) for _ in range(count)})
                pairs[side, kind] = found
                setattr(built, kind, np.array([h for h, _ in found], dtype=np.uint64))
                setattr(built, f"{kind}_patient", np.array([p for _, p in found], np.uint64))
        key = index.write_index(local_store, made["old"], dt.datetime(2026, 1, 1, 0, 0, trial))
        size = next(i.size for i in local_store.list(key) if i.key == key)
        saved = index.combine_saved(
            local_store, key, size, made["new"], str(tmp_path / f"combined-{trial}.parquet")
        )
        every = _old_then_new(rows)
        assert saved.images == len(every)
        assert saved.through == "o2"  # (the newest part key: "o2" > "n1")
        local_store.write_file("catalogue/index/combined.parquet", saved.path)
        got = index.read_index(
            local_store,
            "catalogue/index/combined.parquet",
            os.path.getsize(saved.path),
            with_raw=True,
        )
        _check_sorted_rows(got, every)
        for kind in index.OWNER_KINDS:
            expected = sorted(set(pairs["old", kind]) | set(pairs["new", kind]))
            hashes, patients = got.owners(kind)
            assert list(zip(hashes.tolist(), patients.tolist(), strict=True)) == expected


def _index_of(rows: list[tuple], parts: int) -> index.IndexArrays:
    """An index of ``rows`` (sop, size, part, target, raw, raw size, raw time, raw day), each
    array sorted stably with Python's sorted (the raw ones by day, then hash)."""
    by_sop = sorted(rows, key=lambda row: row[0])
    by_raw = sorted(rows, key=lambda row: (row[7], row[4]))
    prefix = "o" if parts == 3 else "n"

    def array(values, dtype):
        return np.array(list(values), dtype=dtype)

    return index.IndexArrays(
        sop=array((r[0] for r in by_sop), np.uint64),
        sop_size=array((r[1] for r in by_sop), np.int64),
        sop_part=array((r[2] for r in by_sop), np.uint32),
        target=array(sorted(r[3] for r in rows), np.uint64),
        raw_day=array((r[7] for r in by_raw), np.int32),
        raw=array((r[4] for r in by_raw), np.uint64),
        raw_size=array((r[5] for r in by_raw), np.int64),
        raw_time=array((r[6] for r in by_raw), np.int64),
        parts=[f"{prefix}{n}" for n in range(parts)],
    )


def test_raw_lookups_by_day_and_hash_agree_with_a_sorted_list():
    """`index.raw_positions` and `raw_matches` on (day, hash) sorted arrays: the positions
    Python's bisect gives on the sorted list of pairs, found exactly where the pair is there."""
    import bisect

    rng = random.Random(11)
    for _ in range(200):
        pairs = sorted(
            (rng.choice([0, 5, 6, 9]), rng.randrange(1, 40)) for _ in range(rng.randrange(0, 30))
        )
        wanted = [(rng.choice([0, 3, 5, 6, 9, 12]), rng.randrange(1, 40)) for _ in range(20)]
        days = np.array([d for d, _ in pairs], dtype=np.int32)
        hashes = np.array([h for _, h in pairs], dtype=np.uint64)
        w_days = np.array([d for d, _ in wanted], dtype=np.int32)
        w_hashes = np.array([h for _, h in wanted], dtype=np.uint64)
        for side, search in (("left", bisect.bisect_left), ("right", bisect.bisect_right)):
            got = index.raw_positions(days, hashes, w_days, w_hashes, side=side)
            assert got.tolist() == [search(pairs, pair) for pair in wanted]
        found, at = index.raw_matches(days, hashes, w_days, w_hashes)
        assert found.tolist() == [pair in pairs for pair in wanted]
        assert all(pairs[a] == pair for a, pair, f in zip(at, wanted, found, strict=True) if f)


def test_owner_arrays_are_read_without_their_row_groups_of_padding(local_store, monkeypatch):
    """The owner arrays fill the end of the index's rows (zeros before): `read_index` reads
    only the row groups that hold pairs (their statistics say so), and a daily run none of the
    contents'; what it reads is what was written (oracle: the pairs as made here)."""
    monkeypatch.setattr(index, "ROW_GROUP", 50)
    rng = random.Random(5)
    rows = [(n, 10, 0, n, rng.randrange(1, 1 << 60), 100, 1_000, 18000) for n in range(400)]
    made = _index_of(rows, 3)

    def pairs(count):
        hashes = sorted(rng.randrange(1, 1 << 60) for _ in range(count))
        return np.array(hashes, np.uint64), np.array(
            [rng.randrange(1, 1 << 60) for _ in hashes], np.uint64
        )

    owners = {"study": pairs(30), "series": pairs(70), "content": pairs(400)}
    for kind, (hashes, patients) in owners.items():
        setattr(made, kind, hashes)
        setattr(made, f"{kind}_patient", patients)
    key = index.write_index(local_store, made, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    size = len(local_store.read(key))
    read: list[tuple[int, tuple]] = []
    real_open = index._open

    def recording_open(storage, name, length):
        file, handle = real_open(storage, name, length)
        real_read = file.read_row_group

        def read_row_group(group, columns=None, **kwargs):
            read.append((group, tuple(columns or ())))
            return real_read(group, columns=columns, **kwargs)

        file.read_row_group = read_row_group
        return file, handle

    monkeypatch.setattr(index, "_open", recording_open)
    daily = index.read_index(local_store, key, size)
    for kind in ("study", "series"):
        hashes, patients = owners[kind]
        assert daily.owners(kind)[0].tolist() == hashes.tolist()
        assert daily.owners(kind)[1].tolist() == patients.tolist()
        groups = sorted(g for g, columns in read if columns[:1] == (kind,))
        assert groups == list(range(8 - -(-len(hashes) // 50), 8)), kind  # (8 of 50 rows)
    assert len(daily.content) == 0 and not [g for g, c in read if c[:1] == ("content",)]
    full = index.read_index(local_store, key, size, with_raw=True)
    assert full.owners("content")[0].tolist() == owners["content"][0].tolist()


def test_a_daily_run_reads_only_the_index_row_groups_of_the_dates_it_asks_about(
    local_store, monkeypatch
):
    """`index.raw_keys_filed` skips every row group whose upload dates (its statistics) hold
    none asked about, and answers as a whole read would (oracle: Python sets)."""
    monkeypatch.setattr(index, "ROW_GROUP", 50)
    rng = random.Random(3)
    rows = [
        (n, 10, 0, n, rng.randrange(1, 1 << 60), 100 + n % 7, 1_000 + n, 18000 + n // 40)
        for n in range(400)  # 10 days of 40 raw files
    ]
    made = _index_of(rows, 3)
    key = index.write_index(local_store, made, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    size = len(local_store.read(key))
    read_groups = []
    real_open = index._open

    def recording_open(storage, name, length):
        file, handle = real_open(storage, name, length)
        real_read = file.read_row_group

        def read_row_group(group, *args, **kwargs):
            read_groups.append(group)
            return real_read(group, *args, **kwargs)

        file.read_row_group = read_row_group
        return file, handle

    monkeypatch.setattr(index, "_open", recording_open)
    # the last day's 40 files (two changed) and 5 files never filed, of that day
    asked = [r for r in rows if r[7] == 18009]
    sizes = [r[5] + (1 if n < 2 else 0) for n, r in enumerate(asked)] + [1] * 5
    hashes = [r[4] for r in asked] + [rng.randrange(1, 1 << 60) for _ in range(5)]
    days = [18009] * 45
    times = [r[6] for r in asked] + [0] * 5
    present, same = index.raw_keys_filed(
        local_store,
        key,
        size,
        (np.array(days, dtype=np.int32), np.array(hashes, dtype=np.uint64)),
        np.array(sizes, dtype=np.int64),
        np.array(times, dtype=np.int64),
    )
    assert present.tolist() == [True] * 40 + [False] * 5
    assert same.tolist() == [False, False] + [True] * 38 + [False] * 5
    # 400 rows in row groups of 50 sorted by day: the last day is in the last row group only
    assert read_groups == [7]


def test_a_pointer_to_an_index_of_another_layout_names_no_index(local_store):
    """An index written in another layout (a pointer without this version's format) is not
    used: the runs do without one, as before the first, and are not failed for it."""
    pointer = {"index": "catalogue/index/2026-01-01T00-00-00.000000Z.parquet", "size": 10}
    local_store.write(index.POINTER_KEY, json.dumps(pointer).encode())
    assert index.read_pointer(local_store) is None
    local_store.write(
        index.POINTER_KEY, json.dumps({**pointer, "format": index.INDEX_FORMAT}).encode()
    )
    assert index.read_pointer(local_store)["index"] == pointer["index"]


def test_a_merge_with_no_settled_part_writes_no_index(local_store, monkeypatch):
    """The first merge, whose parts are all too new to be covered, writes no index (one that
    would say nothing); the loader and the next merge do without one, and the first merge
    with a settled part writes one that covers it."""
    store = local_store
    builders.put_tree(store, _tree(images=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    code, _ = run_dataprocess(store, workers=4)
    assert code == 0 and len(_images(store)) == 6
    assert [i.key for i in store.list("catalogue/index/")] == []
    builders.put_tree(store, _tree(images=3, date="2021-02-01", first=6))
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.report.counts["images copied"] == 3
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    code, _ = run_dataprocess(store, workers=4)
    assert code == 0 and len(_images(store)) == 9
    pointer = json.loads(store.read("catalogue/index/latest.json"))
    assert pointer["through"] == part_keys(store)[-1] and pointer["images"] == 9


def test_the_index_is_rewritten_once_it_lacks_enough_parts_or_by_a_reconcile(
    local_store, monkeypatch
):
    """A merge leaves the index as it is while it lacks fewer than `INDEX_AFTER_PARTS` settled
    parts (the loader reads those), rewrites it once it lacks that many, and a reconcile
    rewrites it whatever it lacks; a loader run between still refuses a copy of an image
    only a part after the index lists."""
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    monkeypatch.setattr(merge, "INDEX_AFTER_PARTS", 2)
    store = local_store

    def pointer():
        return json.loads(store.read("catalogue/index/latest.json"))

    def day(n: int) -> None:
        builders.put_tree(store, _tree(images=2, date=f"2021-02-0{n}", first=10 * n))
        assert builders.run_loader(store, workers=4)[0] == 0

    builders.put_tree(store, _tree(images=4))
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0
    first = pointer()
    assert first["images"] == 4 and first["through"] == part_keys(store)[-1]

    day(1)  # one part the index lacks: left as it is
    assert run_dataprocess(store, workers=4)[0] == 0
    assert pointer() == first and len(_images(store)) == 6
    # the loader knows the image of that part: a copy under another name is refused
    name, data = image("Covid5", "DX", "s1", "r1", 10)  # (the day's first image, as _tree)
    store.write(f"raw-a/2021-02-01/images/copy-{name}", data)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0
    refused = {p["key"]: p["reason"] for p in state.report.problems}
    assert refused[f"raw-a/2021-02-01/images/copy-{name}"] == "duplicate image"

    day(2)  # two parts lacking: rewritten, covering both
    assert run_dataprocess(store, workers=4)[0] == 0
    second = pointer()
    assert second["index"] != first["index"]
    assert second["images"] == 8 and second["through"] == part_keys(store)[-1]

    day(3)  # one lacking again, but a reconcile rewrites it
    assert run_dataprocess(store, workers=4, reconcile=True)[0] == 0
    third = pointer()
    assert third["index"] != second["index"]
    assert third["images"] == 10 and third["through"] == part_keys(store)[-1]


def _batch_contents(store) -> dict[str, object]:
    """A batch's files as comparable values: tables sorted, the saved counts decoded and
    sorted; what names the batch or its time (pages, dates, the certificate) left out."""
    import gzip

    _, files = read_batch(store.processed())
    out: dict[str, object] = {}
    # (the catalogue as one table: how its rows fall into segments is not the same)
    files["images"] = catalogue_bytes(files)
    manifest = json.loads(files.pop("images/_catalogue.json"))
    out["images/_catalogue.json"] = (manifest["through"], manifest["rows"])
    for name, data in files.items():
        if name.endswith(".html") or name in ("stats_date.txt", "holdout.json"):
            continue
        if name.startswith("images/"):
            continue
        if name.endswith(".parquet") or name == "images":
            frame = pd.read_parquet(io.BytesIO(data))
            frame = frame.astype(str).sort_values(list(frame.columns), ignore_index=True)
            out[name] = frame.to_dict("list")
        elif name.endswith(".gz"):
            head, body = gzip.decompress(data).decode().split("\n")
            out[name] = [
                {
                    k: sorted(map(json.dumps, v)) if isinstance(v, list) else v
                    for k, v in doc.items()
                }
                for doc in (json.loads(head), json.loads(body))
            ]
        else:
            out[name] = data
    return out


@pytest.mark.parametrize("settled", [False, True], ids=["parts-merged-again", "settled"])
def test_a_day_s_parts_counted_in_layers_make_the_batch_a_full_merge_makes(
    tmp_path, monkeypatch, settled
):
    """A batch counted in layers is the batch a full merge of the same warehouse makes.

    Its merge adds the day's parts to the last batch's counts (`_layered_scan`: the replaced
    rows counted out, the new ones in, the catalogue left in layers); the oracle is the same
    run on a copy of the warehouse with the layers turned off, file by file: over new images
    and patients, a run's rows written again in a newer part (they replace the batch's), and
    parts merged again while they settle.
    """
    import shutil

    if settled:
        monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0))
    (tmp_path / "a" / "bucket").mkdir(parents=True)
    (tmp_path / "a" / "bucket-processed").mkdir()
    store = LocalStorage(tmp_path / "a" / "bucket")
    layered = []
    real_layered = merge._layered_scan

    def recording(*args, **kwargs):
        scan = real_layered(*args, **kwargs)
        layered.append(scan is not None)
        return scan

    monkeypatch.setattr(merge, "_layered_scan", recording)
    builders.put_tree(store, _tree(images=12))
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0
    assert layered == []  # (a first batch is merged in full)
    first_part = part_keys(store)[0]

    days = [
        _tree(patients=8, images=6, date="2021-02-01", first=12),
        _tree(patients=8, images=4, date="2021-02-02", first=30),
    ]
    for number, uploads in enumerate(days):
        builders.put_tree(store, uploads)
        code, state = builders.run_loader(store, workers=4)
        assert code == 0 and state.report.counts["images copied"] == len(uploads) - 9
        if number == 1:
            # the first run's rows written again in a newer part, two days later (as a run
            # that files them again after a crash): they replace the rows the batch holds,
            # each study's first image filed on another day
            now = dt.datetime.now(dt.UTC)
            rows = read_part(store.read(first_part))
            again = part_bytes(rows, written=now + dt.timedelta(days=2))
            store.write(part_key(now - dt.timedelta(seconds=1)), again)
        copy = tmp_path / f"copy{number}"
        shutil.copytree(tmp_path / "a", copy)
        assert run_dataprocess(store, workers=4)[0] == 0
        assert layered[-1] is True
        with monkeypatch.context() as off:
            off.setattr(merge, "_layered_scan", lambda *args, **kwargs: None)
            full = LocalStorage(copy / "bucket")
            assert run_dataprocess(full, workers=4)[0] == 0
        got, want = _batch_contents(store), _batch_contents(full)
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name] == want[name], (number, name)
    assert len(_images(store)) == 12 + 6 + 4


def _segment_files(files: dict[str, bytes]) -> list[bytes]:
    return [files[k] for k in sorted(files) if k.startswith("images/") and k.endswith(".parquet")]


@pytest.mark.parametrize("settled", [True, False], ids=["parts settled", "parts just written"])
def test_a_batch_writes_only_the_catalogue_segments_that_change(tmp_path, monkeypatch, settled):
    """A batch copies the last batch's segments that the day leaves as they are, writes the
    day's rows as a new segment, writes again a segment that holds a patient whose clinical
    summary changed, and merges its newest segments by `merged_tail`; the catalogue is, row
    for row, what a full merge of a copy of the same warehouse makes.

    Parts merged again while they settle (``parts just written``) change no segment: their
    rows are in the last batch's catalogue as they are.
    """
    import shutil

    monkeypatch.setattr(segments, "SMALL_SEGMENT_ROWS", 1)  # (sizes alone decide)
    monkeypatch.setattr(index, "PART_SETTLE", dt.timedelta(0 if settled else 1))
    (tmp_path / "a" / "bucket").mkdir(parents=True)
    (tmp_path / "a" / "bucket-processed").mkdir()
    store = LocalStorage(tmp_path / "a" / "bucket")
    copied: list[list[bool]] = []  # each batch's segments: copied (True) or written
    real_write_segments = batch_module.write_segments

    def recording(scan, *args, **kwargs):
        plans = real_write_segments(scan, *args, **kwargs)
        if scan.layers is not None or scan.reused is not None:  # (not the oracle's)
            copied.append([plan.copy_from is not None for plan in plans])
        return plans

    monkeypatch.setattr(batch_module, "write_segments", recording)
    looked: list[tuple[list, list]] = []  # the keys and series looked for in a segment
    real_rows_of = merge._rows_of

    def recording_rows_of(file, keys, series):
        looked.append((keys.to_pylist(), series.to_pylist()))
        return real_rows_of(file, keys, series)

    monkeypatch.setattr(merge, "_rows_of", recording_rows_of)
    series_copies: list[str] = []  # the last batch's series table, copied to a local file
    segment_copies: list[str] = []  # ... and its catalogue's segments
    real_copy_to_file = merge.copy_to_file

    def recording_copy_to_file(storage, key, size, path):
        if key.endswith("/series.parquet"):
            series_copies.append(f"{storage.url}/{key}")
        if "/images/" in key:
            segment_copies.append(f"{storage.url}/{key}")
        return real_copy_to_file(storage, key, size, path)

    for module in (merge, batch_module):
        monkeypatch.setattr(module, "copy_to_file", recording_copy_to_file)

    def day_then_oracle(uploads, name):
        builders.put_tree(store, uploads)
        assert builders.run_loader(store, workers=4)[0] == 0
        shutil.copytree(tmp_path / "a", tmp_path / name)
        assert run_dataprocess(store, workers=4)[0] == 0
        with monkeypatch.context() as off:  # the oracle: the same warehouse merged in full
            off.setattr(merge, "_layered_scan", lambda *args, **kwargs: None)
            full = LocalStorage(tmp_path / name / "bucket")
            assert run_dataprocess(full, workers=4)[0] == 0
        assert len(_segment_files(read_batch(full.processed())[1])) == 1
        assert _batch_contents(store) == _batch_contents(full)
        return read_batch(store.processed())[1]

    builders.put_tree(store, _tree(images=12))  # Covid1 to Covid6
    assert builders.run_loader(store, workers=4)[0] == 0
    assert run_dataprocess(store, workers=4)[0] == 0
    first_batch, first = read_batch(store.processed())
    assert len(_segment_files(first)) == 1
    first_part = part_keys(store)[0]

    # three images (of Covid5, Covid6 and a new patient, Covid7): a segment of their own,
    # the last batch's copied as it is (3 is less than half of 12)
    second = day_then_oracle(_tree(patients=8, images=3, date="2021-02-01", first=12), "b")
    assert _segment_files(second)[0] == _segment_files(first)[0]
    assert copied[-1] == [True, False]
    assert pq.read_table(io.BytesIO(_segment_files(second)[1])).num_rows == 3
    # (new studies only: no key of the day can be in the segment, nor a series (parts merged
    # again bring none: their rows are in it as they are): the segment is not looked at, nor
    # copied (it is carried; the new patient is looked for in its statistics or a column)
    assert looked == [] and segment_copies == []
    # (the last series table, read by the merge to narrow the series, is not read again to
    # bring it up to date: one copy in the day's run; the oracle's, a full merge, copies it
    # once too, to bring it up to date)
    assert series_copies == [
        f"{store.processed().url}/{first_batch}/series.parquet",
        f"{LocalStorage(tmp_path / 'b' / 'bucket').processed().url}/{first_batch}/series.parquet",
    ]

    # Covid1's age changes: the segment that holds Covid1 is written again (copied locally to be
    # read whole), the other copied as it is
    second_batch = read_batch(store.processed())[0]
    filed = next(i.key for i in store.list("training/data/Covid1/"))
    store.write(filed, json.dumps({**json.loads(store.read(filed)), "Age": 77}).encode())
    assert run_dataprocess(store, workers=4)[0] == 0
    third = read_batch(store.processed())[1]
    assert copied[-1] == [False, True]
    assert segment_copies == [f"{store.processed().url}/{second_batch}/images/000000.parquet"]
    assert _segment_files(third)[1] == _segment_files(second)[1]
    assert _segment_files(third)[0] != _segment_files(second)[0]
    rows = pq.read_table(io.BytesIO(_segment_files(third)[0])).to_pylist()
    assert {r["age"] for r in rows if r["PatientID"] == "Covid1"} == {77.0}
    assert {r["age"] for r in rows if r["PatientID"] == "Covid2"} != {77.0}

    # one image of the first day filed again (a newer part holds its row): the segment that
    # holds its older row is written again without it, the day's segment holds the new one
    now = dt.datetime.now(dt.UTC)
    again = part_bytes(read_part(store.read(first_part)).slice(0, 1), written=now)
    store.write(part_key(now - dt.timedelta(seconds=1)), again)
    looked.clear()
    fourth = day_then_oracle({}, "c")
    (refiled,) = read_part(again).column("warehouse_key").to_pylist()
    assert looked and all(keys == [refiled] for keys, _ in looked)
    assert copied[-1] == [False, True, False]
    assert [pq.read_table(io.BytesIO(f)).num_rows for f in _segment_files(fourth)] == [11, 3, 1]

    # six more: 1 and 6 merge, then 3, then 11: one segment again
    fifth = day_then_oracle(_tree(patients=8, images=6, date="2021-02-02", first=15), "d")
    assert copied[-1] == [False] and len(_segment_files(fifth)) == 1
    assert catalogue_table(fifth).num_rows == 12 + 3 + 6


def test_a_segment_is_looked_at_only_where_its_statistics_allow_a_patient(tmp_path):
    """Tell whether a segment holds one of some patients, reading only the row groups whose
    statistics allow one: the same answer as a plain look at every row."""
    from warehouse.catalogue import publish

    patients = [f"Covid{n:03d}" for n in range(0, 60, 3)]  # sorted, as warehouse keys sort them
    path = tmp_path / "segment.parquet"
    pq.write_table(pa.table({"PatientID": patients}), path, row_group_size=4)
    reads: list[int] = []
    file = pq.ParquetFile(path)
    real_read = file.read_row_group

    def recording(group, *args, **kwargs):
        reads.append(group)
        return real_read(group, *args, **kwargs)

    file.read_row_group = recording  # type: ignore[method-assign]
    for wanted in (["Covid003"], ["Covid004"], ["Covid999", "Covid001"], ["Covid057", "A"], []):
        reads.clear()
        found = publish._holds(file, "PatientID", pa.array(wanted, pa.string()))
        assert found == any(w in patients for w in wanted), wanted
        # (a value between two row groups' ranges, or outside them all, reads none)
        assert len(reads) <= sum(1 for w in wanted if "Covid000" <= w <= "Covid057"), wanted


@pytest.mark.parametrize(
    ("rows", "small", "merged"),
    [
        ([], 1, 0),
        ([5], 1, 1),
        ([1_000_000, 1_000], 1, 1),  # the day's rows: a segment of their own
        ([1_000_000, 40_000, 40_000], 1, 2),  # 40k and 40k, then 80k is less than 500k
        ([1_000_000, 400_000, 200_000], 1, 3),  # 200k is half of 400k; 600k, more than 500k
        ([1_000_000, 20_000, 1_000], 30_000, 2),  # 20k is small: merged whatever the sizes
        ([10, 10, 10], 1, 3),
        ([10, 30, 1], 1, 1),
    ],
)
def test_merged_tail_merges_the_newest_segments_by_their_sizes(rows, small, merged):
    assert segments.merged_tail(rows, small) == merged


def test_daily_segments_stay_few_and_each_row_is_written_a_few_times():
    """A thousand days of a thousand rows over a million: at most about log2(days) segments
    at any time, and the rows written in all stay within a small multiple of the rows added
    (the binary counter's bound), far from a catalogue written in full every day."""
    sizes, written, added = [1_000_000], 0, 0
    most = 0
    for _ in range(1_000):
        sizes.append(1_000)
        added += 1_000
        tail = segments.merged_tail(sizes, small=1)
        if tail > 1:
            merged = sum(sizes[-tail:])
            sizes[-tail:] = [merged]
        written += sizes[-1]  # (the newest segment is written: the day's or a merge)
        most = max(most, len(sizes))
    assert sum(sizes) == 1_000_000 + added
    assert most <= 2 + math.ceil(math.log2(1_000))
    assert written <= 12 * added  # (a full rewrite a day: 1,000 times 1.5 million rows)


def test_a_manifest_that_is_not_one_is_refused(local_store):
    processed = local_store.processed()
    good = segments.manifest_bytes("b/images/", [("000000.parquet", 10, 2)], "catalogue/x")
    processed.write("b/images/_catalogue.json", good)
    manifest = segments.read_manifest(processed, "b/images/")
    assert manifest.segments == (segments.Segment("b/images/000000.parquet", 10, 2),)
    assert manifest.through == "catalogue/x" and manifest.rows == 2
    document = json.loads(good)
    for bad, why in [
        (b"{not json", "not a catalogue manifest"),
        (json.dumps({**document, "format": 99}).encode(), "format 99"),
        (json.dumps({**document, "through": 3}).encode(), "through is not a part key"),
        (
            json.dumps({**document, "segments": [{"file": "../x.parquet", "size": 1, "rows": 1}]}),
            "is not a segment's file name",
        ),
        (
            json.dumps({**document, "segments": [{"file": "a.parquet", "size": -1, "rows": 1}]}),
            "size and rows are counts",
        ),
        (b" " * (segments.MANIFEST_MAX_BYTES + 1), "longer than"),
    ]:
        processed.write("b/images/_catalogue.json", bad if isinstance(bad, bytes) else bad.encode())
        with pytest.raises(segments.InvalidManifest, match=re.escape(why)):
            segments.read_manifest(processed, "b/images/")
    with pytest.raises(segments.InvalidManifest, match="is missing"):
        segments.read_manifest(processed, "c/images/")


def test_saved_counts_are_decoded_when_first_asked_for_and_a_bad_entry_is_said():
    """`merge.counted_scan` decodes the studies, images per study and summary only when asked
    (a run whose last batch stands never asks), and an entry it cannot decode then fails with
    what to do, never a traceback."""
    import gzip

    def saved(studies):
        document = {
            "rows": 3,
            "through": "catalogue/images/2026-01-01T00-00-00.000000Z.parquet",
            "beyond": [],
            "unsized_metadata": 0,
            "studies": studies,
            "study_images": [["training", "ct", "P1", "S1", "2026-01-01", 3]],
            "image_bytes": [["training", "ct", 30]],
            "metadata_bytes": [["training", "ct", 9]],
            "summary": [],
            "screened": [["raw-a", "clean", 3]],
        }
        return gzip.compress(json.dumps(document).encode())

    scan = merge.counted_scan(
        saved([["training", "ct", "P1", "S1", "k.json", "2026-01-01"]]), "/x", "b/images.parquet"
    )
    assert scan.rows == 3 and scan.image_bytes[("training", "ct")] == 30
    assert scan.screened == {("raw-a", "clean"): 3}
    assert scan.studies == {("training", "ct", "P1", "S1"): ("k.json", dt.date(2026, 1, 1))}
    assert scan.study_images[("training", "ct", "P1", "S1", dt.date(2026, 1, 1))] == 3

    bad = merge.counted_scan(
        saved([["training", "ct", "P1", "S1", "k.json", "not a date"]]), "/x", "b/images.parquet"
    )
    assert bad.image_bytes[("training", "ct")] == 30  # (what the storage table needs: decoded)
    with pytest.raises(merge.InvalidCounts, match="WAREHOUSE_RECONCILE=true"):
        _ = bad.studies


def test_saved_counts_head_is_read_without_the_body():
    """The counts a batch saves are a head line (what deciding that the last batch stands
    needs) and a body line: a run that only reads the head never parses the body, so a body
    that is not even JSON is said only when the studies are asked for."""
    import gzip

    head = {
        "rows": 5,
        "through": "catalogue/images/2026-01-01T00-00-00.000000Z.parquet",
        "beyond": ["catalogue/images/2026-01-02T00-00-00.000000Z.parquet"],
        "unsized_metadata": 1,
        "image_bytes": [["validation", "xray", 70]],
        "metadata_bytes": [["validation", "xray", 7]],
        "study_count": 2,
        "screened": [["raw-a", "flagged", 1]],
    }
    body = {
        "studies": [
            ["validation", "xray", "P1", "S1", "a.json", "2026-01-01"],
            ["validation", "xray", "P2", "S2", "b.json", None],
        ],
        "study_images": [],
        "summary": [],
    }
    good = gzip.compress((json.dumps(head) + "\n" + json.dumps(body)).encode())
    scan = merge.counted_scan(good, "/x", "b/images.parquet")
    assert (scan.rows, scan.unsized_metadata, scan.study_count) == (5, 1, 2)
    assert scan.beyond == head["beyond"] and scan.metadata_bytes[("validation", "xray")] == 7
    assert scan.screened == {("raw-a", "flagged"): 1}
    assert scan.studies[("validation", "xray", "P2", "S2")] == ("b.json", None)

    broken = gzip.compress((json.dumps(head) + "\n{not json").encode())
    scan = merge.counted_scan(broken, "/x", "b/images.parquet")
    assert scan.study_count == 2 and scan.image_bytes[("validation", "xray")] == 70
    with pytest.raises(merge.InvalidCounts, match="WAREHOUSE_RECONCILE=true"):
        _ = scan.summary

    no_count = gzip.compress(
        (json.dumps({k: v for k, v in head.items() if k != "study_count"}) + "\n{}").encode()
    )
    with pytest.raises(ValueError, match="not the counts of a catalogue"):
        merge.counted_scan(no_count, "/x", "b/images.parquet")


# --------------------------------------------------------------------------------------------
# the series columns: every one against pydicom's reading, over pydicom's real files too;
# older parts filled once by a reconcile


def test_series_columns_of_pydicom_real_files_equal_pydicom_s_reading():
    """Every real test file pydicom ships that the loader can parse: its row's series columns
    equal pydicom's own reading of the file, and so do those the reconcile fills from the
    metadata JSON the loader writes for it."""
    from pydicom.data import get_testdata_files

    from warehouse.catalogue.backfill import metadata_fields
    from warehouse.dicom.jsonrep import header_json
    from warehouse.dicom.problems import HeaderProblem

    checked = 0
    for path in sorted(get_testdata_files()):
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            header = parse_header(data)
        except HeaderProblem:
            continue
        expected = oracle_series_fields(pydicom.dcmread(io.BytesIO(data), force=True))
        got = _row_of(data, "training/ct/P/1.2/1.3/x.dcm", None)
        assert {name: got[name] for name in expected} == expected, path
        assert metadata_fields(header_json(header)) == expected, path
        checked += 1
    assert checked >= 40  # (pydicom ships about sixty images)


def test_metadata_fields_of_what_is_not_dicom_json():
    from warehouse.catalogue.backfill import metadata_fields

    assert metadata_fields(b"not json") is None
    assert metadata_fields(b"[1, 2]") is None
    nothing = metadata_fields(b"{}")
    assert nothing is not None and set(nothing.values()) == {None}
    # one element that cannot be read is null; the others stand
    document = {
        "00200013": {"vr": "IS", "Value": ["one"]},
        "00180060": {"vr": "DS", "Value": [120]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]},
        "00200032": {"vr": "DS", "Value": [1, 2]},
    }
    fields = metadata_fields(json.dumps(document).encode())
    assert fields["InstanceNumber"] is None and fields["KVP"] == 120.0
    assert fields["ImageType"] == ["ORIGINAL", "PRIMARY"]
    assert fields["ImagePositionPatient"] is None  # two numbers are not a position


class MetadataReads(LocalStorage):
    """The local store, recording the metadata files read (ranged) and failing the read of
    those in ``fail``."""

    def __init__(self, root, fail=()):
        super().__init__(root)
        self.fail, self.metadata_reads = set(fail), []

    def read_range(self, key, start, end):
        if "-metadata/" in key:
            self.metadata_reads.append(key)
            if key in self.fail:
                raise StorageError(f"cannot read {key}: simulated")
        return super().read_range(key, start, end)


#: The columns the reconcile fills (the README's order).
_SERIES = (
    "SeriesDescription",
    "StudyDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "ConvolutionKernel",
    "ImageType",
    "KVP",
    "AcquisitionDate",
)
_OLD_TIMES = [dt.datetime(2021, 3, 2, h, tzinfo=dt.UTC) for h in (1, 2, 3)]


def _as_older_parts(store) -> list[list[str]]:
    """Write the loader's rows again as an older version wrote them: without the series
    columns, in three parts of 2021-03-02 (and no index); each part's warehouse keys."""
    rows = pd.concat([pd.read_parquet(io.BytesIO(store.read(k))) for k in part_keys(store)])
    for info in list(store.list("catalogue/")):
        (store.root / info.key).unlink()
    rows = rows.drop(columns=list(_SERIES)).sort_values("warehouse_key")
    keys = []
    for number, chunk in enumerate(np.array_split(np.arange(len(rows)), 3)):
        table = pa.Table.from_pandas(rows.iloc[chunk], preserve_index=False)
        key = part_key(_OLD_TIMES[number])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        store.write(key, buffer.getvalue())
        when = _OLD_TIMES[number].timestamp()
        os.utime(store.root / key, (when, when))
        keys.append(list(table.column("warehouse_key").to_pylist()))
    return keys


def _series_tree() -> dict[str, bytes]:
    files = {
        "config.json": builders.config(["raw-a"], training=["Alpha Trust"]),
        "raw-a/2021-03-01/data/Covid1_data.json": clinical("Covid1", "Alpha Trust"),
    }
    for number in range(1, 7):
        name, data = image(
            "Covid1",
            "CT" if number < 5 else "DX",
            "s1",
            "r1" if number < 5 else "x1",
            number,
            instance_number=number,
            extra={"ConvolutionKernel": ["FC08", "FC51"]} if number == 2 else {},
        )
        files[f"raw-a/2021-03-01/images/{name}"] = data
    return files


def test_a_reconcile_fills_older_parts_once_and_a_stop_half_way_loses_nothing(tmp_path, caplog):
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    store = MetadataReads(root)
    builders.put_tree(store, _series_tree())
    assert builders.run_loader(store, workers=2)[0] == 0
    parts = _as_older_parts(store)
    metadata_of = {key: parse_image_key(key).metadata_key for part in parts for key in part}

    def expected(key):
        return oracle_series_fields(pydicom.dcmread(io.BytesIO(store.read(key))))

    # a daily run takes the older parts as they are: the columns null
    assert run_dataprocess(store)[0] == 0
    _, files = read_batch(store.processed())
    images = pq.read_table(io.BytesIO(catalogue_bytes(files)))
    assert all(images.column(name).null_count == images.num_rows for name in _SERIES)
    assert store.metadata_reads == []

    # a reconcile stopped by a failed read in the second part: the first is filled, written
    # again (its first time kept), the others are as they were; no batch
    failing = MetadataReads(root, fail={metadata_of[parts[1][0]]})
    code, _ = run_dataprocess(failing, reconcile=True, workers=1)
    assert code == 1
    first = pq.ParquetFile(root / part_key(_OLD_TIMES[0]))
    assert set(_SERIES) <= set(first.schema_arrow.names)
    for key in part_keys(store)[1:]:
        assert not set(_SERIES) & set(pq.read_schema(root / key).names)
    assert {
        r["warehouse_key"]: {n: r[n] for n in _SERIES}
        for r in read_part(store.read(part_key(_OLD_TIMES[0]))).to_pylist()
    } == {k: expected(k) for k in parts[0]}

    # the rerun reads the metadata of the parts not filled only, and fills them
    rerun = MetadataReads(root)
    caplog.set_level(logging.INFO, logger="dataprocess")
    code, state = run_dataprocess(rerun, reconcile=True)
    assert code == 0
    assert sorted(rerun.metadata_reads) == sorted(metadata_of[k] for k in parts[1] + parts[2])
    assert state.report.counts["catalogue rows filled with the series columns"] == len(
        parts[1]
    ) + len(parts[2])
    assert any("filling older parts' series columns: parts 3/3" in m for m in caplog.messages)
    _, files = read_batch(store.processed())
    images = pq.read_table(io.BytesIO(catalogue_bytes(files))).to_pylist()
    assert {r["warehouse_key"]: {n: r[n] for n in _SERIES} for r in images} == {
        key: expected(key) for key in metadata_of
    }
    assert {r["filed"] for r in images} == {dt.date(2021, 3, 2)}  # (filed when first written)
    assert [
        r["ConvolutionKernel"]
        for r in images
        if r["ConvolutionKernel"] and len(r["ConvolutionKernel"]) == 2
    ] == [["FC08", "FC51"]]

    # filled once: the next reconcile reads no metadata file
    again = MetadataReads(root)
    assert run_dataprocess(again, reconcile=True)[0] == 0
    assert again.metadata_reads == []
