"""Tests of the synthetic upload tree generator (warehouse.synthetic).

The fault test classifies every file on disk independently of the generator and compares the
result with the summary, so the summary can be trusted as the expected outcome of a load.
"""

import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian

from warehouse.synthetic import (
    CLINICAL_FAULTS,
    IMAGE_FAULTS,
    SOP_CLASS_BY_MODALITY,
    build_dicom,
    clinical_record,
    generate_tree,
)
from warehouse.synthetic import command as synthetic

IDS = {
    "patient_id": "Covid149",
    "study_uid": "1.2.826.0.1.3680043.8.498.1001",
    "series_uid": "1.2.826.0.1.3680043.8.498.1001.1",
    "sop_uid": "1.2.826.0.1.3680043.8.498.1001.1.1",
}
PIXEL_TAG = b"\xe0\x7f\x10\x00OW"
FILED_MODALITIES = {"CT", "MR", "DX", "CR"}
IDENTIFIERS = {
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
}
# Some files carry invalid UIDs on purpose; pydicom warns when it converts those values.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length"),
]


def read(blob: bytes, **kwargs):
    return dcmread(io.BytesIO(blob), **kwargs)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small tree with every fault, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("tree") / "bucket"
    return root, generate_tree(root, patients=12, images=60, seed=7)


# -- build_dicom ------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CT", "MR", "DX", "CR", "US"])
def test_build_dicom_reads_back_with_the_given_identifiers(modality):
    blob = build_dicom(modality=modality, rows=32, columns=48, **IDS)
    ds = read(blob)
    assert blob[128:132] == b"DICM"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == IDS["sop_uid"]
    assert ds.PatientID == IDS["patient_id"] == str(ds.PatientName)
    assert ds.StudyInstanceUID == IDS["study_uid"]
    assert ds.SeriesInstanceUID == IDS["series_uid"]
    assert ds.SOPInstanceUID == IDS["sop_uid"]
    assert ds.Modality == modality
    assert ds.SOPClassUID == SOP_CLASS_BY_MODALITY[modality]
    assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (32, 48, 16)
    assert len(ds.PixelData) == 32 * 48 * 2
    assert ds.PatientAge[:3].isdigit() and ds.PatientAge.endswith("Y")
    assert ds.PatientBirthDate.endswith("0101") and len(ds.StudyDate) == 8
    assert ds.AcquisitionDate == ds.StudyDate and ds.BodyPartExamined and ds.Manufacturer
    # a binary element comes before the pixel data, which is the last element
    assert any(elem.VR == "OB" for elem in ds if elem.tag < 0x7FE00010)
    assert max(ds.keys()) == 0x7FE00010


def test_build_dicom_is_deterministic_and_headers_realistic():
    blobs = [build_dicom(modality="DX", **IDS) for _ in range(2)]
    assert blobs[0] == blobs[1]
    sizes = [
        build_dicom(modality="CT", **dict(IDS, sop_uid=f"1.2.3.{n}")).rfind(PIXEL_TAG)
        for n in range(40)
    ]
    assert all(1500 <= size <= 6144 for size in sizes)


def test_voi_lut_sequence_has_lut_data():
    ds = read(build_dicom(modality="CR", voi_lut=True, **IDS))
    assert ds.VOILUTSequence[0]["LUTData"].VR == "OW"
    assert "VOILUTSequence" not in read(build_dicom(modality="CR", voi_lut=False, **IDS))


def test_extra_none_removes_an_element_and_extra_sets_unchecked_values():
    ds = read(build_dicom(modality="CT", extra={"PatientID": None}, **IDS))
    assert "PatientID" not in ds
    bad = build_dicom(modality="CT", extra={"StudyInstanceUID": "1.2.abc", "Modality": "OT"}, **IDS)
    ds = read(bad)
    assert ds.StudyInstanceUID == "1.2.abc" and ds.Modality == "OT"
    with pytest.raises(ValueError):
        build_dicom(modality="CT", extra={"NoSuchKeyword": 1}, **IDS)


def test_header_padding_puts_the_pixel_data_after_that_many_bytes():
    plain = build_dicom(modality="DX", **IDS)
    padded = build_dicom(modality="DX", header_padding=50_000, **IDS)
    assert padded.rfind(PIXEL_TAG) >= 50_000
    assert padded.rfind(PIXEL_TAG) - plain.rfind(PIXEL_TAG) >= 50_000
    padding = read(padded)[0x00331010]  # private block "SYNTHETIC PADDING", element 0x10
    assert padding.VR == "OB" and len(padding.value) == 50_000


# -- clinical_record --------------------------------------------------------------------------


def test_clinical_records():
    rng = random.Random(1)
    status = clinical_record("Covid1", "West Suffolk NHS Foundation Trust", "status", rng)
    assert list(status)[:4] == ["Pseudonym", "SubmittingCentre", "SwabStatus", "SwabDate"]
    day, month, year = status["SwabDate"].split("/")
    assert len(year) == 4 and 1 <= int(month) <= 12 and 1 <= int(day) <= 31
    data = clinical_record("Covid1", "Royal Cornwall Hospitals NHS Trust", "data", rng)
    assert data["Pseudonym"] == "Covid1"
    assert data["SubmittingCentre"] == "Royal Cornwall Hospitals NHS Trust"
    assert {"Age", "Sex", "Ethnicity", "Date of Positive Covid Swab", "CRP on admission"} <= set(
        data
    )
    assert 1000 < len(json.dumps(data)) < 2500  # about 1.5 KB, as real files are
    with pytest.raises(ValueError):
        clinical_record("Covid1", "x", "other", rng)


# -- generate_tree ----------------------------------------------------------------------------


def test_same_seed_gives_a_byte_identical_tree(tmp_path):
    first = generate_tree(tmp_path / "a", patients=6, images=20, seed=3)
    second = generate_tree(tmp_path / "b", patients=6, images=20, seed=3)
    generate_tree(tmp_path / "c", patients=6, images=20, seed=4)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert files_of(tmp_path / "a") != files_of(tmp_path / "c")
    assert {**first, "output": ""} == {**second, "output": ""}


def test_config_is_valid_and_matches_the_prefixes_on_disk(demo):
    root, summary = demo
    config = json.loads((root / "config.json").read_text())
    assert config["training_percentage"] == 50
    listed = [prefix.rstrip("/") for prefix in config["raw_prefixes"]]
    assert any(prefix.endswith("/") for prefix in config["raw_prefixes"])
    on_disk = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert all(name.startswith("raw-") for name in on_disk)
    assert set(listed) < set(on_disk) and len(set(on_disk) - set(listed)) == 1
    sites = config["sites"]
    assert all(sites[kind] for kind in ("split", "training", "validation"))
    configured = {centre for kind in sites.values() for centre in kind}
    assert len(configured) == sum(len(kind) for kind in sites.values())  # one list per site
    for centre, info in summary["sites"].items():
        assert (info["uploader"] in listed) == (info["kind"] != "unlisted")
        assert (centre in configured) == (info["kind"] != "unconfigured")


def split_group(pseudonym: str, percentage: int) -> str:
    digest = int(hashlib.sha512(pseudonym.strip().upper().encode()).hexdigest(), 16)
    return "training" if digest % 100 < percentage else "validation"


def classify(root: Path) -> tuple[Counter, dict[str, set[str]]]:
    """Sort every file of a tree into the summary's kinds, without the generator's help."""
    config = json.loads((root / "config.json").read_text())
    listed = {prefix.rstrip("/") for prefix in config["raw_prefixes"]}
    kind_of_site = {c: kind for kind, centres in config["sites"].items() for c in centres}
    counts: Counter = Counter()
    clinical, images = [], []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if not path.is_file() or parts == ("config.json",):
            continue
        if parts[0] not in listed:
            is_image = path.suffix.lower() == ".dcm"
            counts["unlisted_prefix_images" if is_image else "unlisted_prefix_clinical"] += 1
        elif len(parts) == 4 and parts[2] == "images" and path.suffix.lower() == ".dcm":
            images.append(path)
        elif (
            len(parts) == 4
            and parts[2] == "data"
            and path.name.endswith(("_data.json", "_status.json"))
        ):
            clinical.append((parts[1], path.as_posix(), path))
        else:
            counts["other_files"] += 1

    groups: dict[str, str] = {}
    centres: dict[str, str] = {}
    patients: dict[str, set[str]] = {"positive": set(), "negative": set()}
    for _, _, path in sorted(clinical):  # upload date first, then key order
        pseudonym, kind = path.name.rsplit("_", 1)
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            counts["not_utf8"] += 1
            continue
        except ValueError:
            counts["invalid_json"] += 1
            continue
        if not isinstance(record, dict):
            counts["json_not_object"] += 1
            continue
        centre = record.get("SubmittingCentre")
        if centre is None:
            counts["no_submitting_centre"] += 1
            continue
        centres.setdefault(pseudonym, centre)
        site_kind = kind_of_site.get(centre)
        if site_kind is None:
            counts["unconfigured_site"] += 1
            continue
        group = site_kind if site_kind != "split" else split_group(pseudonym, 50)
        if groups.setdefault(pseudonym, group) != group:
            counts["group_conflict"] += 1
            continue
        counts[kind.removesuffix(".json") + "_files"] += 1
        patients["positive" if kind == "data.json" else "negative"].add(pseudonym)
    patients["negative"] -= patients["positive"]

    owners: dict[tuple[str, str], str] = {}
    for path in images:
        blob = path.read_bytes()
        if not blob:
            counts["not_dicom_empty"] += 1
            continue
        if blob[128:132] != b"DICM":
            counts["not_dicom_garbage"] += 1
            continue
        ds = read(blob)
        if "PixelData" not in ds:
            counts["not_dicom_truncated"] += 1
            continue
        missing = [name for keyword, name in IDENTIFIERS.items() if keyword not in ds]
        if missing:
            counts[f"missing_{missing[0]}"] += 1
        elif "/" in ds.PatientID or ".." in ds.PatientID:
            counts["unsafe_patient_id"] += 1
        elif not UID(ds.StudyInstanceUID).is_valid:
            counts["unsafe_study_uid"] += 1
        elif not UID(ds.SeriesInstanceUID).is_valid:
            counts["unsafe_series_uid"] += 1
        elif ds.Modality not in FILED_MODALITIES:
            counts["unsupported_modality"] += 1
        elif ds.PatientID in groups:
            # (in key order, as the loader: a study or instance filed first is its patient's)
            if owners.get(("study", ds.StudyInstanceUID), ds.PatientID) != ds.PatientID:
                counts["study_of_another_patient"] += 1
            elif owners.get(("sop", ds.SOPInstanceUID), ds.PatientID) != ds.PatientID:
                counts["instance_of_another_patient"] += 1
            else:
                owners[("study", ds.StudyInstanceUID)] = ds.PatientID
                owners[("sop", ds.SOPInstanceUID)] = ds.PatientID
                counts["images"] += 1
                counts[f"modality_{ds.Modality}"] += 1
                assert path.stem == ds.SOPInstanceUID
        elif kind_of_site.get(centres.get(ds.PatientID)) is None and ds.PatientID in centres:
            counts["unconfigured_site_images"] += 1
        else:
            counts["no_clinical_record"] += 1
    return counts, patients


def test_every_faulty_kind_is_on_disk_and_counted(demo):
    root, summary = demo
    counts, patients = classify(root)
    for kind in (*IMAGE_FAULTS, *CLINICAL_FAULTS):
        assert summary["faults"][kind] >= 1, kind
        assert counts[kind] == summary["faults"][kind], kind
    for key in (
        "images",
        "data_files",
        "status_files",
        "unconfigured_site_images",
        "unlisted_prefix_clinical",
        "unlisted_prefix_images",
        "other_files",
    ):
        assert counts[key] == summary[key], key
    assert summary["images"] == 60 and summary["patients"] == 13  # 12 + the conflict patient
    for modality, count in summary["images_by_modality"].items():
        assert counts[f"modality_{modality}"] == count >= 1
    assert len(patients["positive"]) == summary["patients_positive"]
    assert len(patients["negative"]) == summary["patients_negative"]
    assert summary["files"] == sum(1 for p in root.rglob("*") if p.is_file())
    assert summary["images_total"] == sum(1 for p in root.rglob("*") if p.suffix.lower() == ".dcm")
    assert 1 <= summary["images_upper_case_suffix"] <= len(list(root.rglob("*.DCM")))


def test_tree_shows_each_case(demo):
    root, summary = demo
    for key in (
        "patients_uuid_pseudonym",
        "patients_with_images",
        "patients_multi_date",
        "patients_corrected",
        "positives_with_older_status",
    ):
        assert summary[key] >= 1, key
    names = [p.name for p in root.rglob("*.json")]
    assert any(len(name.split("_")[0]) == len("Covid") + 36 for name in names)  # Covid<uuid4>
    assert list(root.glob("raw-imperial/*/data/Covid1_*.json"))  # a known split result
    assert summary["images_upper_case_suffix"] >= 1
    assert list(root.rglob("*.DCM"))


def test_no_faults_tree_has_only_files_to_file(tmp_path):
    root = tmp_path / "bucket"
    summary = generate_tree(root, patients=8, images=30, seed=1, faults=False)
    counts, _ = classify(root)
    assert summary["faulty_images"] == summary["faulty_clinical"] == summary["other_files"] == 0
    assert counts["images"] == summary["images"] == summary["images_total"] == 30
    assert summary["clinical_total"] == summary["data_files"] + summary["status_files"]
    assert set(counts) <= {"images", "data_files", "status_files"} | {
        f"modality_{m}" for m in FILED_MODALITIES
    }
    config = json.loads((root / "config.json").read_text())
    on_disk = {p.name for p in root.iterdir() if p.is_dir()}
    assert {prefix.rstrip("/") for prefix in config["raw_prefixes"]} == on_disk


def test_image_kb_sizes_the_images(tmp_path):
    root = tmp_path / "bucket"
    generate_tree(root, patients=2, images=6, seed=2, faults=False, image_kb=64)
    sizes = [p.stat().st_size for p in root.rglob("*.dcm") if p.stat().st_size < 100_000]
    assert sizes and all(55 * 1024 < size < 72 * 1024 for size in sizes)


def test_refuses_a_non_empty_output_directory(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    (root / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_tree(root, patients=1, images=1)


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    assert "--no-faults" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert synthetic.main(["--output", str(out), "--patients", "3", "--images", "9", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 9 and (out / "config.json").is_file()
    assert synthetic.main(["--output", str(out)]) == 1
    assert "not empty" in capsys.readouterr().err
