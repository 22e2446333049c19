"""The whole loader over every real-world file pydicom ships (vendor images, big endian,
implicit VR, deflated, compressed, no file meta, waveforms, SR, RT objects, non-DICOM files),
on a local directory and on S3 over HTTP.

Every readable PatientID gets a clinical record, so each file is either filed (its metadata
equal to pydicom's own JSON of it) or reported with its one expected reason (`EXPECTED`, file
by file: a new or changed test file of pydicom's fails here until its outcome is decided); the
run completes with exit 0, and a rerun files nothing and exits 0.
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
from warehouse.storage.local import LocalStorage
from warehouse.synthetic import generate_tree

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SITE = "Real World Trust"
PREFIX = "raw-real/2021-03-01"


def upload_name(path: str) -> str:
    """The name a file of pydicom's test data is uploaded as (its path under the test files,
    folders joined by ``_``, with a ``.dcm`` suffix): the keys of `EXPECTED`.
    """
    relative = os.path.relpath(path, os.path.join(pydicom.data.DATA_ROOT, "test_files"))
    return relative.replace(os.sep, "_").replace(".dcm", "") + ".dcm"


def real_tree() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(files to upload, raw image key -> bytes)`` for every file of pydicom's test data."""
    files = {"config.json": builders.config(["raw-real"], split=[SITE])}
    images = {}
    patients = set()
    for path in sorted(pydicom.data.get_testdata_files()):
        if not os.path.isfile(path):
            continue
        name = upload_name(path)
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


FILED = "filed"
NOT_DICOM = "not a DICOM file"
NO_META = "no DICOM file meta"
NOT_IMAGE = "not an image"
NO_PIXELS = "image without pixel data"
CUT_HEADER = "truncated DICOM header"
CUT_PIXELS = "truncated pixel data"
NO_IDENTIFIER = "missing DICOM identifier"
MODALITY = "unsupported modality"
CONFLICTING = "conflicting duplicate"

#: What becomes of each of pydicom's test files (named as `real_tree` uploads them): filed, or
#: the reason it is not. Found by running the loader, then checked file by file with pydicom
#: (no PatientID, a modality that is not CT/MR/DX/CR, no pixel data, cut short, ...).
EXPECTED = {
    "693_J2KI.dcm": FILED,
    "CT_small.dcm": FILED,
    "ExplVR_BigEnd.dcm": NO_IDENTIFIER,
    "ExplVR_BigEndNoMeta.dcm": NO_META,
    "ExplVR_LitEndNoMeta.dcm": NO_META,
    "GDCMJ2K_TextGBR.dcm": NO_IDENTIFIER,
    "J2K_pixelrep_mismatch.dcm": FILED,
    "JPEG-lossy.dcm": MODALITY,
    "JPEG2000-embedded-sequence-delimiter.dcm": MODALITY,
    "JPEG2000.dcm": MODALITY,
    "JPEGLSNearLossless_08.dcm": NO_IDENTIFIER,
    "JPEGLSNearLossless_16.dcm": NO_IDENTIFIER,
    "JPGExtended.dcm": MODALITY,
    "MR_small.dcm": FILED,
    # MR_small in other transfer syntaxes: the same SOP instance in other bytes
    "MR_small_RLE.dcm": CONFLICTING,
    "MR_small_bigendian.dcm": CONFLICTING,
    "MR_small_expb.dcm": CONFLICTING,
    "MR_small_implicit.dcm": CONFLICTING,
    "MR_small_jp2klossless.dcm": CONFLICTING,
    "MR_small_jpeg_ls_lossless.dcm": CONFLICTING,
    "MR_small_padded.dcm": CONFLICTING,
    "MR_truncated.dcm": CUT_PIXELS,
    "README.txt.dcm": NOT_DICOM,
    "SC_jpeg_no_color_transform.dcm": NO_IDENTIFIER,
    "SC_jpeg_no_color_transform_2.dcm": NO_IDENTIFIER,
    "SC_rgb_dcmtk_+eb+cr.dcm": MODALITY,
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": MODALITY,
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": MODALITY,
    "SC_rgb_dcmtk_+eb+cy+np.dcm": MODALITY,
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": MODALITY,
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": MODALITY,
    "SC_rgb_gdcm_KY.dcm": MODALITY,
    "SC_rgb_jls_lossy_line.dcm": NO_IDENTIFIER,
    "SC_rgb_jls_lossy_sample.dcm": NO_IDENTIFIER,
    "SC_rgb_jpeg.dcm": NO_IDENTIFIER,
    "SC_rgb_jpeg_app14_dcmd.dcm": NO_IDENTIFIER,
    "SC_rgb_jpeg_dcmd.dcm": NO_IDENTIFIER,
    "SC_rgb_jpeg_dcmtk.dcm": MODALITY,
    "SC_rgb_jpeg_gdcm.dcm": MODALITY,
    "SC_rgb_jpeg_lossy_gdcm.dcm": MODALITY,
    "SC_rgb_rle.dcm": MODALITY,
    "SC_rgb_rle_16bit.dcm": MODALITY,
    "SC_rgb_rle_16bit_2frame.dcm": MODALITY,
    "SC_rgb_rle_2frame.dcm": MODALITY,
    "SC_rgb_rle_32bit.dcm": MODALITY,
    "SC_rgb_rle_32bit_2frame.dcm": MODALITY,
    "SC_rgb_small_odd.dcm": MODALITY,
    "SC_rgb_small_odd_big_endian.dcm": MODALITY,
    "SC_rgb_small_odd_jpeg.dcm": MODALITY,
    "SC_ybr_full_422_uncompressed.dcm": MODALITY,
    # its data set has no SOPClassUID: its file meta names CT Image Storage
    "UN_sequence.dcm": NO_PIXELS,
    "badVR.dcm": MODALITY,
    "crayons.icc.dcm": NOT_DICOM,
    "dicomdirtests_77654033_CR1_6154.dcm": FILED,
    "dicomdirtests_77654033_CR2_6247.dcm": FILED,
    "dicomdirtests_77654033_CR3_6278.dcm": FILED,
    "dicomdirtests_77654033_CT2_17106.dcm": FILED,
    "dicomdirtests_77654033_CT2_17136.dcm": FILED,
    "dicomdirtests_77654033_CT2_17166.dcm": FILED,
    "dicomdirtests_77654033_CT2_17196.dcm": FILED,
    "dicomdirtests_98892001_CT2N_6293.dcm": FILED,
    "dicomdirtests_98892001_CT2N_6924.dcm": FILED,
    "dicomdirtests_98892001_CT5N_2062.dcm": FILED,
    "dicomdirtests_98892001_CT5N_2392.dcm": FILED,
    "dicomdirtests_98892001_CT5N_2693.dcm": FILED,
    "dicomdirtests_98892001_CT5N_3023.dcm": FILED,
    "dicomdirtests_98892001_CT5N_3353.dcm": FILED,
    "dicomdirtests_98892003_MR1_15820.dcm": FILED,
    "dicomdirtests_98892003_MR1_4919.dcm": FILED,
    "dicomdirtests_98892003_MR1_5641.dcm": FILED,
    "dicomdirtests_98892003_MR2_15970.dcm": FILED,
    "dicomdirtests_98892003_MR2_4950.dcm": FILED,
    "dicomdirtests_98892003_MR2_4981.dcm": FILED,
    "dicomdirtests_98892003_MR2_5011.dcm": FILED,
    "dicomdirtests_98892003_MR2_6273.dcm": FILED,
    "dicomdirtests_98892003_MR2_6605.dcm": FILED,
    "dicomdirtests_98892003_MR2_6935.dcm": FILED,
    "dicomdirtests_98892003_MR700_4467.dcm": FILED,
    "dicomdirtests_98892003_MR700_4528.dcm": FILED,
    "dicomdirtests_98892003_MR700_4558.dcm": FILED,
    "dicomdirtests_98892003_MR700_4588.dcm": FILED,
    "dicomdirtests_98892003_MR700_4618.dcm": FILED,
    "dicomdirtests_98892003_MR700_4648.dcm": FILED,
    "dicomdirtests_98892003_MR700_4678.dcm": FILED,
    # DICOMDIRs: not images (the class, Media Storage Directory Storage, is the file meta's)
    "dicomdirtests_DICOMDIR-bigEnd.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR-empty.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR-implicit.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR-nooffset.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR-nopatient.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR-reordered.dcm": NOT_IMAGE,
    "dicomdirtests_DICOMDIR.dcm": NOT_IMAGE,
    "dicomdirtests_README.txt.dcm": NOT_DICOM,
    "dicomdirtests_TINY_ALPHA_DICOMDIR.dcm": NOT_IMAGE,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000000.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000001.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000002.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000003.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000004.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000005.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000006.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000007.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000008.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000009.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000A.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000B.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000C.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000D.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000E.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000F.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000G.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000H.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000I.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000J.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000K.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000L.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000M.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000N.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000O.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000P.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000Q.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000R.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000S.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000T.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000U.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000V.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000W.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000X.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000Y.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00000Z.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000010.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000011.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000012.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000013.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000014.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000015.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000016.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000017.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000018.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM000019.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00001A.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00001B.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00001C.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_PT000000_ST000000_SE000000_IM00001D.dcm": NO_PIXELS,
    "dicomdirtests_TINY_ALPHA_README.dcm": NOT_DICOM,
    "empty_charset_LEI.dcm": NOT_IMAGE,
    "examples_jpeg2k.dcm": MODALITY,
    "examples_overlay.dcm": FILED,
    "examples_palette.dcm": MODALITY,
    "examples_rgb_color.dcm": MODALITY,
    "examples_ybr_color.dcm": MODALITY,
    "image_dfl.dcm": NO_IDENTIFIER,
    "liver_1frame.dcm": MODALITY,
    "liver_expb_1frame.dcm": MODALITY,
    "meta_missing_tsyntax.dcm": NO_IDENTIFIER,
    "nested_priv_SQ.dcm": NO_IDENTIFIER,
    # CT_small without file meta, after a stray first byte: pydicom's force=True reads one
    # element of it, so not even a bare data set
    "no_meta.dcm": NOT_DICOM,
    # three elements; its file meta names RT Image Storage
    "no_meta_group_length.dcm": NO_PIXELS,
    # as UN_sequence.dcm: its file meta names MR Image Storage
    "priv_SQ.dcm": NO_PIXELS,
    "reportsi.dcm": NOT_IMAGE,
    "reportsi_with_empty_number_tags.dcm": NOT_IMAGE,
    "rtdose.dcm": MODALITY,
    "rtdose_1frame.dcm": MODALITY,
    "rtdose_expb.dcm": MODALITY,
    "rtdose_expb_1frame.dcm": MODALITY,
    "rtdose_rle.dcm": MODALITY,
    "rtdose_rle_1frame.dcm": MODALITY,
    "rtplan.dcm": NOT_IMAGE,
    "rtplan.dump.dcm": NOT_DICOM,
    "rtplan_truncated.dcm": CUT_HEADER,
    # a bare implicit VR data set (an RT Structure Set): no file meta is decided first
    "rtstruct.dcm": NO_META,
    "rtstruct.dump.dcm": NOT_DICOM,
    "test-SR.dcm": NOT_IMAGE,
    "test1.json.dcm": NOT_DICOM,
    "test_PN.json.dcm": NOT_DICOM,
    "waveform_ecg.dcm": NOT_IMAGE,
    "zipMR.gz.dcm": NOT_DICOM,
}


#: The filed files whose header breaks the identifying-data profile, and the attributes (in
#: the profile's order), read off each file with pydicom: a patient name other than the
#: PatientID, a full birth date, an address, ... (693_J2KI and J2K_pixelrep_mismatch name the
#: patient by its PatientID: clean). In the default policy, report, they are filed all the same.
FLAGGED = {
    "CT_small.dcm": ["PatientName", "OtherPatientIDsSequence"],
    # NameOfPhysiciansReadingStudy and OperatorsName are "----": a value, not an empty one
    "MR_small.dcm": ["PatientName", "NameOfPhysiciansReadingStudy", "OperatorsName"],
    "examples_overlay.dcm": [
        "PatientName",
        "PatientBirthDate",
        "PatientAddress",
        "OperatorsName",
        "InstitutionAddress",
    ],
    **{
        name: ["PatientName"]  # Doe^Archibald, Doe^Peter
        for name, outcome in EXPECTED.items()
        if name.startswith("dicomdirtests_") and outcome == FILED
    },
}


def test_every_real_file_is_filed_exactly_or_reported(store):
    files, images = real_tree()
    assert len(images) == len(EXPECTED)
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=8)
    assert code == 0
    report = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert report["completed"] is True
    reasons = {p["key"]: p["reason"] for p in report["problems"]}
    assert "internal error" not in reasons.values()
    # what pydicom says reading a file is the file's: in its report line, never a log line
    details = {p["key"]: p["detail"] for p in report["problems"]}
    assert details[f"{PREFIX}/images/SC_rgb_jpeg.dcm"] == (
        "no PatientID in the header (pydicom: Expected explicit VR, but found implicit VR - "
        "using implicit VR for reading)"
    )
    assert "notes" not in report  # (no file filed had pydicom say anything)
    # the identifying-data screen: filed (policy report) and flagged, by name only
    flagged = {f["key"].rsplit("/", 1)[1]: f for f in report["flagged"]}
    assert {name: f["detail"] for name, f in flagged.items()} == {
        name: f"{', '.join(names)} (filed: the policy of raw-real is report)"
        for name, names in FLAGGED.items()
    }
    assert {f["reason"] for f in flagged.values()} == {"identifying data in the header"}
    assert "Doe^" not in json.dumps(report) and "Sssssss" not in json.dumps(report)
    catalogued = builders.catalogue_rows(store)
    assert {
        name: attributes
        for name, attributes in (
            (key.rsplit("/", 1)[1], row["identifying_attributes"])
            for key, row in catalogued.items()
        )
        if attributes
    } == FLAGGED
    assert all(row["identifying_attributes"] is not None for row in catalogued.values())
    assert state.report.counts["images filed with identifying data in the header"] == len(FLAGGED)

    warehouse = builders.snapshot(store, "training/") | builders.snapshot(store, "validation/")
    filed = {key.rsplit("/", 1)[1]: key for key in warehouse if key.endswith(".dcm")}
    outcomes = {}
    for raw_key, data in images.items():
        name = raw_key.rsplit("/", 1)[1]
        assert (name in filed) != (raw_key in reasons), raw_key  # filed, or reported: not both
        outcomes[name] = FILED if name in filed else reasons[raw_key]
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
    assert outcomes == EXPECTED
    # pydicom's MR_small in other transfer syntaxes (RLE, big endian, JPEG 2000, ...) is the
    # same SOP instance in other bytes: filed once, the others conflicting duplicates
    conflicts = sorted(k.rsplit("/", 1)[1] for k, r in reasons.items() if "duplicate" in r)
    assert conflicts and all(n.startswith("MR_small_") for n in conflicts), conflicts
    assert {reasons[k] for k in reasons if "MR_small_" in k} <= {"conflicting duplicate"}
    assert len(filed) == list(EXPECTED.values()).count(FILED)
    assert state.report.counts["images copied"] == len(filed)
    assert state.report.counts["metadata files written"] == len(filed)
    assert len(reasons) == len(images) - len(filed)  # (and nothing else is reported)

    again, state = builders.run_loader(store, workers=8)
    assert again == 0
    after = builders.snapshot(store, "training/") | builders.snapshot(store, "validation/")
    assert after == warehouse
    assert "images copied" not in state.report.counts
    second = json.loads(store.read("reports/warehouseloader/latest.json"))
    assert "flagged" not in second  # (nothing filed again, nothing flagged again)
    assert {p["key"]: p["reason"] for p in second["problems"]} == reasons
    assert state.report.counts["unfiled inputs not read again (unchanged)"] == len(
        [key for key in reasons if key.startswith(PREFIX)]
    )


def warnings_logged(root) -> list[str]:
    """Log lines of a loader run on ``root`` other than its INFO and status lines.

    As an operator sees them: `python -m`, plain text logs on standard error.
    """
    result = builders.python_m(
        "warehouseloader", env=builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}")
    )
    assert result.returncode == 0, result.stderr
    assert "images copied" in result.stdout
    lines = result.stderr.splitlines()
    assert any(line.startswith("- process_image") for line in lines)  # (the log was read)
    return [line for line in lines if not line.startswith(("INFO ", "- "))]


def test_a_run_over_pydicom_files_logs_no_warning(tmp_path):
    """A run over pydicom's files, many of them refused, logs no warning.

    Each refusal is in the report; none makes a log line, nor does anything pydicom says
    while reading the files.
    """
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    files, _ = real_tree()
    builders.put_tree(LocalStorage(root), files)
    assert warnings_logged(root) == []


def test_a_run_over_the_demo_tree_logs_no_warning(tmp_path):
    """The demo tree (`make demo`: every faulty kind among 300 images) logs no warning."""
    root = tmp_path / "bucket"
    (tmp_path / "bucket-processed").mkdir(parents=True)
    generate_tree(root, patients=40, images=300)
    assert warnings_logged(root) == []
