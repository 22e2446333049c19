"""The whole loader over every real-world file pydicom ships (vendor images, big endian,
implicit VR, deflated, compressed, no file meta, waveforms, SR, RT objects, non-DICOM files),
on a local directory and on S3 over HTTP.

Every readable PatientID gets a clinical record, so each file is either filed (its metadata
equal to pydicom's own JSON of it) or reported with a reason; the run completes with exit 0,
and a rerun files nothing and exits 0.
"""

from __future__ import annotations

import io
import json
import os

import pydicom
import pydicom.data
import pytest
from pydicom.errors import InvalidDicomError

from tests import builders
from tests.dicom_oracle import expected_json
from warehouse.core.keys import identifier_problem

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SITE = "Real World Trust"
PREFIX = "raw-real/2021-03-01"


def real_tree() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(files to upload, raw image key -> bytes)`` for every file of pydicom's test data."""
    files = {"config.json": builders.config(["raw-real"], split=[SITE])}
    images = {}
    patients = set()
    for path in sorted(pydicom.data.get_testdata_files()):
        if not os.path.isfile(path):
            continue
        relative = os.path.relpath(path, os.path.join(pydicom.data.DATA_ROOT, "test_files"))
        name = relative.replace(os.sep, "_").replace(".dcm", "") + ".dcm"
        with open(path, "rb") as handle:
            data = handle.read()
        images[f"{PREFIX}/images/{name}"] = data
        try:
            patient = pydicom.dcmread(io.BytesIO(data), force=True).get("PatientID")
        except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        if isinstance(patient, str) and identifier_problem(patient) is None:
            patients.add(patient)
    for patient in sorted(patients):
        files[f"{PREFIX}/data/{patient}_data.json"] = builders.clinical(patient, SITE)
    files.update(images)
    return files, images


def test_every_real_file_is_filed_exactly_or_reported(store):
    files, images = real_tree()
    assert len(images) > 170
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=8)
    assert code == 0
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert report["completed"] is True
    reasons = {p["key"]: p["reason"] for p in report["problems"]}
    assert "internal error" not in reasons.values()

    warehouse = builders.snapshot(store, "training/") | builders.snapshot(store, "validation/")
    filed = {key.rsplit("/", 1)[1]: key for key in warehouse if key.endswith(".dcm")}
    for raw_key, data in images.items():
        name = raw_key.rsplit("/", 1)[1]
        assert (name in filed) != (raw_key in reasons), raw_key  # filed, or reported: not both
        if name not in filed:
            continue
        image_key = filed[name]
        assert warehouse[image_key] == data
        group, folder, tail = image_key.split("/", 2)
        metadata_key = f"{group}/{folder}-metadata/{tail[: -len('.dcm')]}.json"
        metadata = json.loads(warehouse[metadata_key])
        assert metadata == expected_json(data), raw_key
        back = pydicom.Dataset.from_json(metadata)
        assert image_key.split("/")[2] == back.PatientID
    # pydicom's MR_small in other transfer syntaxes (RLE, big endian, JPEG 2000, ...) is the
    # same SOP instance in other bytes: filed once, the others conflicting duplicates
    conflicts = sorted(k.rsplit("/", 1)[1] for k, r in reasons.items() if "duplicate" in r)
    assert conflicts and all(n.startswith("MR_small_") for n in conflicts), conflicts
    assert {reasons[k] for k in reasons if "MR_small_" in k} <= {"conflicting duplicate"}
    assert len(filed) >= 35
    assert state.report.counts["images copied"] == len(filed)
    assert state.report.counts["metadata files written"] == len(filed)

    again, state = builders.run_loader(store, workers=8)
    assert again == 0
    after = builders.snapshot(store, "training/") | builders.snapshot(store, "validation/")
    assert after == warehouse
    assert "images copied" not in state.report.counts
    second = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert {p["key"]: p["reason"] for p in second["problems"]} == reasons
    assert state.report.counts["unfiled inputs not read again (unchanged)"] == len(
        [key for key in reasons if key.startswith(PREFIX)]
    )
