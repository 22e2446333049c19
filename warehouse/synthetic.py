"""Synthetic upload tree: a realistic raw side of the bucket, written to a local directory.

The tree is laid out like the raw side of the warehouse bucket (DESIGN section 2)::

    <out>/config.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/data/<Pseudonym>_data.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/data/<Pseudonym>_status.json
    <out>/raw-<uploader>/<YYYY-MM-DD>/images/<SOPInstanceUID>.dcm   (some .DCM)

It never writes the warehouse side. With ``faults=True`` it also writes every kind of faulty
file the loader must report rather than file (see :data:`IMAGE_FAULTS`,
:data:`CLINICAL_FAULTS`), an uploader whose site is in no list of ``config.json``, a raw
prefix that ``config.json`` does not list, and files of other kinds. The summary returned by
:func:`generate_tree` counts each of them, so a test or a demo can state what to expect.

Everything is derived from one ``random.Random(seed)`` and from UIDs hashed from the seed, so
a given seed always gives a byte-identical tree.

Run ``python -m warehouse.synthetic --help`` for the command line.
"""

import argparse
import hashlib
import io
import json
import math
import random
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

__all__ = [
    "CLINICAL_FAULTS",
    "IMAGE_FAULTS",
    "OTHER_FILES",
    "SOP_CLASS_BY_MODALITY",
    "SITES",
    "Site",
    "build_dicom",
    "clinical_record",
    "generate_tree",
    "main",
]

#: Root of every UID this module makes (pydicom's root; UIDs are hashed below it).
UID_ROOT = PYDICOM_ROOT_UID

#: SOP Class UID per modality (modalities the loader files, and two it must not).
SOP_CLASS_BY_MODALITY = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "US": UltrasoundImageStorage,
    "OT": SecondaryCaptureImageStorage,
}

#: Modalities of well-formed images, and their share of studies.
STUDY_MODALITY_WEIGHTS = {"DX": 40, "CR": 35, "CT": 20, "MR": 5}

#: Faulty image kinds (files named ``*.dcm`` the loader must not file), as summary keys.
IMAGE_FAULTS = (
    "not_dicom_garbage",
    "not_dicom_empty",
    "not_dicom_truncated",
    "missing_patient_id",
    "missing_study_uid",
    "missing_series_uid",
    "missing_modality",
    "unsupported_modality",
    "unsafe_patient_id",
    "unsafe_study_uid",
    "unsafe_series_uid",
    "no_clinical_record",
)

#: Faulty clinical file kinds (``*_data.json`` / ``*_status.json``), as summary keys.
CLINICAL_FAULTS = (
    "invalid_json",
    "not_utf8",
    "json_not_object",
    "no_submitting_centre",
    "unconfigured_site",
    "group_conflict",
)

#: Files of other kinds, as ``(folder under the date folder, file name)``; "" is the date folder.
OTHER_FILES = (("images", "notes.txt"), ("data", "readme.csv"), ("", "upload.log"))

_FIRST_UPLOAD = date(2021, 1, 4)
_UPLOAD_BATCHES = 12
_CLINICAL_START = date(2020, 3, 1)
_CLINICAL_DAYS = 300
_VENDOR_GROUP = 0x0029
_VENDOR_CREATOR = "SYNTHETIC VENDOR HEADER"
_PADDING_GROUP = 0x0033
_PADDING_CREATOR = "SYNTHETIC PADDING"


@dataclass(frozen=True)
class Site:
    """One submitting centre and the uploader prefix it writes under.

    Attributes
    ----------
    centre : str
        The ``SubmittingCentre`` value of its clinical records.
    uploader : str
        Its raw prefix, ``raw-<aws user>``.
    kind : str
        ``split``, ``training`` or ``validation`` (its list in ``config.json``),
        ``unconfigured`` (prefix listed, centre in no list) or ``unlisted`` (centre in
        ``sites.split`` but prefix absent from ``raw_prefixes``, so all its files are ignored).
    hospitals : tuple of str
        Values of the clinical ``Hospital`` field (a mix of short and full names).
    weekday : int
        Day offset of its weekly upload batches from the first Monday.
    """

    centre: str
    uploader: str
    kind: str
    hospitals: tuple[str, ...]
    weekday: int

    def upload_dates(self) -> list[str]:
        """Return the site's weekly upload batch dates, ``YYYY-MM-DD``, oldest first."""
        first = _FIRST_UPLOAD + timedelta(days=self.weekday)
        return [(first + timedelta(weeks=k)).isoformat() for k in range(_UPLOAD_BATCHES)]


#: The synthetic sites: two split, one all-training, one all-validation, one unconfigured,
#: one whose prefix is not listed. Patients are spread over the first four by these weights.
SITES = (
    Site(
        "Imperial College Healthcare NHS Trust",
        "raw-imperial",
        "split",
        ("Hammersmith Hospital", "St Mary's Hospital", "Charing Cross Hospital", "ICHT"),
        0,
    ),
    Site(
        "Cambridge University Hospitals NHS Foundation Trust",
        "raw-cambridge",
        "split",
        ("Addenbrooke's Hospital", "Cambridge University Hospitals NHS Foundation Trust"),
        1,
    ),
    Site(
        "Royal Cornwall Hospitals NHS Trust",
        "raw-cornwall",
        "training",
        ("Royal Cornwall Hospital", "RCHT", "West Cornwall Hospital"),
        2,
    ),
    Site(
        "West Suffolk NHS Foundation Trust",
        "raw-westsuffolk",
        "validation",
        ("West Suffolk Hospital", "West Suffolk NHS Foundation Trust"),
        3,
    ),
    Site(
        "Norfolk and Norwich University Hospitals NHS Foundation Trust",
        "raw-norwich",
        "unconfigured",
        ("Norfolk and Norwich University Hospital", "NNUH"),
        4,
    ),
    Site(
        "Sheffield Children's NHS Foundation Trust",
        "raw-sheffield",
        "unlisted",
        ("Sheffield Children's Hospital",),
        1,
    ),
)
_SITE_WEIGHTS = {"split": 30, "training": 20, "validation": 20}
#: Uploader written with a trailing "/" in raw_prefixes (the loader must ignore it).
_TRAILING_SLASH_UPLOADER = "raw-cambridge"
#: Pseudonyms with known groups at 50 % (DESIGN section 2), given to the first split site.
_KNOWN_PSEUDONYMS = ("Covid1", "Covid14", "Covid20", "Covid149")

_SCANNERS = {
    "CT": (
        ("SIEMENS", "SOMATOM Definition AS+", "syngo CT VA48A"),
        ("GE MEDICAL SYSTEMS", "Revolution CT", "revo_ct_21a.40"),
        ("TOSHIBA", "Aquilion ONE", "V8.9"),
        ("Philips", "iCT 256", "4.1.6"),
    ),
    "MR": (
        ("SIEMENS", "Avanto_fit", "syngo MR E11"),
        ("GE MEDICAL SYSTEMS", "SIGNA Artist", "27\\LX\\MR Software release:RX27.0"),
        ("Philips Medical Systems", "Ingenia", "5.4.1"),
    ),
    "DX": (
        ("Carestream Health", "DRX-Revolution", "5.7.412.7005"),
        ("Philips Medical Systems", "DigitalDiagnost", "4.3.5"),
        ("SIEMENS", "Ysio Max", "VF10F"),
        ("Agfa", "DX-D 600", "NX 3.0.9200"),
    ),
    "CR": (
        ("FUJIFILM Corporation", "FCR CAPSULA XLII", "A07-08"),
        ("KODAK", "CR 975", "5.3.1"),
        ("Agfa", "CR 85-X", "NX 2.0.8500"),
    ),
    "US": (("GE Healthcare", "LOGIQ E9", "R6.1.2"),),
    "OT": (("Synthetic", "Secondary Capture", "1.0"),),
}
_STUDY_DESCRIPTIONS = {
    "CT": ("CT THORAX WITH CONTRAST", "CT PULMONARY ANGIOGRAM", "CT CHEST HIGH RESOLUTION"),
    "MR": ("MRI HEAD", "MR CARDIAC", "MRI THORAX"),
    "DX": ("XR CHEST", "CHEST PORTABLE", "XR CHEST PA"),
    "CR": ("Chest", "CHEST PA", "XR CHEST AP PORTABLE"),
    "US": ("US THORAX",),
    "OT": ("SCANNED DOCUMENT",),
}
_SERIES_DESCRIPTIONS = {
    "CT": ("Axial 1.0 B70f", "Lung 1.25mm", "Mediastinum 3.0", "Topogram 0.6 T20f"),
    "MR": ("t2_tse_tra", "t1_mprage_sag", "ep2d_diff_b1000", "cine_retro"),
    "DX": ("PA", "AP", "LAT"),
    "CR": ("CHEST PA", "CHEST AP", "Chest"),
    "US": ("Lung B-mode",),
    "OT": ("Secondary capture",),
}
_BODY_PARTS = {
    "CT": ("CHEST", "CHEST", "CHEST", "ABDOMEN"),
    "MR": ("HEAD", "CHEST", "HEART"),
    "DX": ("CHEST",),
    "CR": ("CHEST",),
    "US": ("CHEST",),
    "OT": ("CHEST",),
}


# --------------------------------------------------------------------------------------------
# Small deterministic helpers


def _hash_int(*parts: object) -> int:
    """Return a stable 64-bit integer from ``parts`` (not Python's salted ``hash``)."""
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _pick(options: tuple[Any, ...], *parts: object) -> Any:
    """Pick one of ``options`` by a stable hash of ``parts``."""
    return options[_hash_int(*parts) % len(options)]


def _uid(seed: int, *parts: object) -> str:
    """Return a DICOM UID under :data:`UID_ROOT`, the same for the same ``seed`` and parts."""
    sources = ["warehouse-synthetic", str(seed), *(str(part) for part in parts)]
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=sources))


def _patient_traits(pseudonym: str) -> tuple[str, int]:
    """Return the stable ``(sex "M"/"F", age in years)`` of a pseudonym.

    The clinical record and the DICOM headers of one patient agree on these.
    """
    value = _hash_int("traits", pseudonym)
    return ("M" if value % 2 else "F"), 18 + (value >> 8) % 78


# --------------------------------------------------------------------------------------------
# DICOM


def _study_date(study_uid: str) -> date:
    return _CLINICAL_START + timedelta(days=_hash_int("study-date", study_uid) % _CLINICAL_DAYS)


def _dicom_time(study_uid: str, series_uid: str | None = None) -> str:
    """A TM between 07:00 and 20:00 for the study; a series starts up to 30 minutes later."""
    value = _hash_int("time", study_uid)
    seconds = 7 * 3600 + value % (13 * 3600)
    if series_uid is not None:
        value = _hash_int("time", study_uid, series_uid)
        seconds += value % 1800
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}{rest // 60:02d}{rest % 60:02d}.{(value >> 20) % 1000:03d}000"


@lru_cache(maxsize=16)
def _pixel_base(rows: int, columns: int) -> np.ndarray:
    """Return a smooth 12-bit test pattern (a bright disc on a gradient)."""
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    radius = np.hypot((y - cy) / max(rows, 1), (x - cx) / max(columns, 1))
    pattern = 600 + 1400 * (x / max(columns, 1)) + 1800 * (radius < 0.35)
    return pattern.astype(np.uint16)


def _pixel_data(rows: int, columns: int, sop_uid: str) -> bytes:
    shift = np.uint16(_hash_int("pixels", sop_uid) % 512)
    pixels = (_pixel_base(rows, columns) + shift) & np.uint16(0x0FFF)
    return pixels.astype("<u2").tobytes()


def _voi_lut_sequence(entries: int) -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, 0, 16])  # LUT Descriptor
    item.LUTExplanation = "SYNTHETIC SIGMOID"
    lut = 4095 / (1 + np.exp(-np.linspace(-6, 6, entries)))
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())  # LUT Data
    return Sequence([item])


def _set_unchecked(ds: Dataset, keyword: str, value: Any) -> None:
    """Set (or, for ``None``, delete) an element by keyword without value validation."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    if value is None:
        if tag in ds:
            del ds[tag]
        return
    vr = ds[tag].VR if tag in ds else dictionary_VR(tag).split(" or ")[0]
    ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


def build_dicom(
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str,
    rows: int = 64,
    columns: int = 64,
    header_padding: int = 0,
    extra: dict[str, Any] | None = None,
    study_date: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    voi_lut: bool | None = None,
) -> bytes:
    """Return a DICOM Part 10 file (Explicit VR Little Endian) as bytes.

    The header is realistic for the modality: SOP Class, patient (name = ID, sex, age
    ``"045Y"``, birth date ``YYYY0101``), study and acquisition dates and times, device,
    descriptions, modality-specific acquisition elements and image pixel module, a private
    vendor OB element (0029,1010) of 0.2-3.8 KB so that headers are mostly 1.5-6 KB, and
    sometimes a VOI LUT Sequence (0028,3010) with OW LUT Data. Pixel data is 16-bit
    (12 stored), ``rows * columns * 2`` bytes, and comes last. Every value not given is
    derived from a stable hash of the identifiers, so the same arguments give the same bytes.

    Parameters
    ----------
    patient_id : str
        PatientID (0010,0020); also the PatientName.
    study_uid, series_uid, sop_uid : str
        StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID (also the file meta's
        MediaStorageSOPInstanceUID).
    modality : str
        Modality (0008,0060); selects the SOP Class (CT, MR, DX, CR, US, OT; any other
        value gets Secondary Capture).
    rows, columns : int, optional
        Image size; pixel data is ``rows * columns * 2`` bytes.
    header_padding : int, optional
        Size in bytes of an extra private OB element (block "SYNTHETIC PADDING" in group
        0033) placed before the pixel data, to make a large header. Rounded up to even.
    extra : dict, optional
        ``keyword -> value`` set last, without value validation, so that faulty headers can
        be made (``{"StudyInstanceUID": "1.2.abc"}``); a value of ``None`` deletes the
        element (``{"PatientID": None}``).
    study_date : str, optional
        StudyDate ``YYYYMMDD`` (also used for the other dates); derived from ``study_uid``
        when omitted.
    series_number, instance_number : int, optional
        SeriesNumber and InstanceNumber.
    voi_lut : bool, optional
        Whether to add a VOI LUT Sequence; when omitted, about one DX/CR image in three
        has one (decided by ``sop_uid``).

    Returns
    -------
    bytes
        The complete file: 128-byte preamble, ``DICM``, file meta, data set.

    Examples
    --------
    >>> from pydicom import dcmread
    >>> blob = build_dicom(patient_id="Covid1", study_uid="1.2.3", series_uid="1.2.3.4",
    ...                    sop_uid="1.2.3.4.5", modality="DX")
    >>> dcmread(io.BytesIO(blob)).PatientID
    'Covid1'
    """
    if rows < 1 or columns < 1:
        raise ValueError("rows and columns must be positive")
    if header_padding < 0:
        raise ValueError("header_padding must not be negative")
    sex, age = _patient_traits(patient_id)
    if study_date:
        when = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    else:
        when = _study_date(study_uid)
    day = when.strftime("%Y%m%d")
    sop_class = SOP_CLASS_BY_MODALITY.get(modality, SecondaryCaptureImageStorage)
    manufacturer, model, software = _pick(_SCANNERS.get(modality, _SCANNERS["OT"]), series_uid)
    if voi_lut is None:
        voi_lut = modality in ("DX", "CR") and _hash_int("voi", sop_uid) % 3 == 0

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "WAREHOUSE_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY", "AXIAL"] if modality in ("CT", "MR") else ["ORIGINAL", "PRIMARY"]
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime = _dicom_time(study_uid)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _dicom_time(study_uid, series_uid)
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ReferringPhysicianName = ""
    ds.StationName = f"STN{_hash_int('station', series_uid) % 90 + 10}"
    ds.StudyDescription = _pick(_STUDY_DESCRIPTIONS.get(modality, ("",)), study_uid)
    ds.SeriesDescription = _pick(_SERIES_DESCRIPTIONS.get(modality, ("",)), series_uid)
    ds.ManufacturerModelName = model
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = f"{when.year - age}0101"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "NCCID pseudonymisation; dates offset except Study/Acquisition"
    ds.BodyPartExamined = _pick(_BODY_PARTS.get(modality, ("CHEST",)), study_uid)
    _add_acquisition(ds, modality, series_uid, instance_number)
    ds.SoftwareVersions = software
    ds.DeviceSerialNumber = str(10000 + _hash_int("serial", series_uid) % 90000)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(_hash_int("study-id", study_uid) % 100000)
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number
    if modality in ("CT", "MR"):
        ds.ImagePositionPatient = [-175.0, -175.0, -2.5 * instance_number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = generate_uid(prefix=UID_ROOT, entropy_srcs=["frame", study_uid])
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = -2.5 * instance_number
    else:
        ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    if modality in ("CT", "MR"):
        ds.PixelSpacing = [0.683594, 0.683594]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 40 if modality == "CT" else 2048
    ds.WindowWidth = 400 if modality == "CT" else 4096
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    if voi_lut:
        ds.VOILUTSequence = _voi_lut_sequence(256 + 256 * (_hash_int("lut", sop_uid) % 4))

    vendor_size = 200 + 2 * (_hash_int("vendor", sop_uid) % 1800)
    vendor = ds.private_block(_VENDOR_GROUP, _VENDOR_CREATOR, create=True)
    vendor.add_new(0x01, "LO", f"{manufacturer} {model}"[:64])
    vendor.add_new(0x10, "OB", hashlib.shake_256(sop_uid.encode()).digest(vendor_size))
    if header_padding:
        padding = ds.private_block(_PADDING_GROUP, _PADDING_CREATOR, create=True)
        padding.add_new(0x10, "OB", bytes(header_padding + header_padding % 2))

    ds.add_new(0x7FE00010, "OW", _pixel_data(rows, columns, sop_uid))

    for keyword, value in (extra or {}).items():
        _set_unchecked(ds, keyword, value)

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _add_acquisition(ds: Dataset, modality: str, series_uid: str, instance: int) -> None:
    """Add the acquisition elements a scanner of ``modality`` writes."""
    value = _hash_int("acquisition", series_uid)
    if modality == "CT":
        ds.SliceThickness = _pick(("1.0", "1.25", "2.5", "5.0"), series_uid)
        ds.KVP = _pick(("100", "120", "140"), series_uid)
        ds.DataCollectionDiameter = 500
        ds.ReconstructionDiameter = 350
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150 + value % 40
        ds.RotationDirection = "CW"
        ds.ExposureTime = 500 + value % 500
        ds.XRayTubeCurrent = 80 + value % 300
        ds.Exposure = 10 + value % 200
        ds.ConvolutionKernel = _pick(("B70f", "B31f", "LUNG", "STANDARD"), series_uid)
        ds.PatientPosition = "HFS"
    elif modality == "MR":
        ds.ScanningSequence = ["SE"]
        ds.SequenceVariant = ["SK", "SP"]
        ds.SliceThickness = "5.0"
        ds.RepetitionTime = 400 + value % 4000
        ds.EchoTime = 10 + value % 100
        ds.MagneticFieldStrength = _pick(("1.5", "3.0"), series_uid)
        ds.ImagingFrequency = 63.6
        ds.EchoTrainLength = 1 + value % 16
        ds.FlipAngle = 90
        ds.PatientPosition = "HFS"
    elif modality in ("DX", "CR"):
        ds.KVP = _pick(("90", "110", "125"), series_uid)
        ds.DistanceSourceToDetector = 1800 if instance % 2 else 1000
        ds.ExposureTime = 5 + value % 40
        ds.XRayTubeCurrent = 100 + value % 400
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.ViewPosition = _pick(("PA", "AP", "AP", "LL"), series_uid)
        if modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"


def _truncate(blob: bytes) -> bytes:
    """Cut a DICOM file in the middle of its Manufacturer value, before PatientID.

    pydicom reads such a file without an error and returns a partial data set (no PatientID,
    StudyInstanceUID or SeriesInstanceUID, no pixel data); the declared length of the last
    element is larger than the bytes left, which is how a reader can tell it was cut.
    """
    element = blob.index(b"\x08\x00\x70\x00LO")  # (0008,0070) Manufacturer, explicit VR
    length = int.from_bytes(blob[element + 6 : element + 8], "little")
    return blob[: element + 8 + length // 2]


# --------------------------------------------------------------------------------------------
# Clinical records


def _clinical_day(rng: random.Random) -> date:
    return _CLINICAL_START + timedelta(days=rng.randrange(_CLINICAL_DAYS))


def _us_date(day: date, rng: random.Random) -> Any:
    """A MM/DD/YYYY date, sometimes in one of the messy forms seen in real uploads."""
    roll = rng.random()
    if roll < 0.04:
        return f"{rng.choice(['Admitted', 'Swab', 'Unknown time'])} - {day.isoformat()}"
    if roll < 0.06:
        return (day - date(1899, 12, 30)).days  # Excel serial number
    if roll < 0.09:
        return f"{day.month}/{day.day}/{day.year % 100:02d}"  # M/D/YY
    return day.strftime("%m/%d/%Y")


def _measure(value: float | int, rng: random.Random, day: date) -> Any:
    """A measurement as a number, a string, ``[value] - date`` text, or blank."""
    roll = rng.random()
    if roll < 0.06:
        return f"[{value}] - {day.isoformat()}"
    if roll < 0.09:
        return ""
    if roll < 0.2:
        return str(value)
    return value


def _code(value: int, rng: random.Random, texts: tuple[str, ...] = ()) -> Any:
    """A coded answer as an int, sometimes as a string or a code with free text."""
    roll = rng.random()
    if texts and roll < 0.08:
        return f"{value} - {rng.choice(texts)}"
    if roll < 0.2:
        return str(value)
    return value


def _status_record(pseudonym: str, centre: str, rng: random.Random) -> dict[str, Any]:
    swab = _clinical_day(rng)
    record: dict[str, Any] = {
        "Pseudonym": pseudonym,
        "SubmittingCentre": centre,
        "SwabStatus": rng.choice((0, 0, 0, "0")),
        "SwabDate": swab.strftime("%d/%m/%Y"),
    }
    if rng.random() < 0.15:
        earlier = swab - timedelta(days=rng.randint(2, 20))
        record["SwabDates"] = [
            {"SwabDate": earlier.strftime("%d/%m/%Y"), "SwabStatus": 0},
            {"SwabDate": record["SwabDate"], "SwabStatus": 0},
        ]
    if rng.random() < 0.1:
        record["SpecialFormatTimestamp"] = f"{swab.isoformat()}T09:{rng.randint(10, 59)}:00Z"
    return record


def _data_record(pseudonym: str, centre: str, rng: random.Random) -> dict[str, Any]:
    sex, age = _patient_traits(pseudonym)
    swab = _clinical_day(rng)
    admitted = swab + timedelta(days=rng.randint(-3, 4))
    hospitals = next((s.hospitals for s in SITES if s.centre == centre), (centre,))
    record: dict[str, Any] = {"Pseudonym": pseudonym, "SubmittingCentre": centre}
    record["Hospital"] = rng.choice(hospitals)

    roll = rng.random()
    record["Age"] = (
        round(age + rng.random(), 3) if roll < 0.05 else (str(age) if roll < 0.15 else age)
    )
    roll = rng.random()
    sex_code = 1 if sex == "M" else 0
    record["Sex"] = sex if roll < 0.05 else (2 if roll < 0.07 else sex_code)
    roll = rng.random()
    if roll < 0.08:
        record["Ethnicity"] = rng.choice(("Any other ethnic group", "Unknown", "99", "0", "Indian"))
    else:
        record["Ethnicity"] = rng.choice("AAAAAABCDHJKLMNPRS")

    record["Date of Positive Covid Swab"] = _us_date(swab, rng)
    record["Date of acquisition of 1st RT-PCR"] = _us_date(swab, rng)
    record["Date of result of 1st RT-PCR"] = _us_date(swab + timedelta(days=1), rng)
    record["1st RT-PCR result"] = rng.choice((1, 1, 1, "1", "RNA DETECTED (SARS-CoV-2)"))
    if rng.random() < 0.4:
        second = swab + timedelta(days=rng.randint(3, 10))
        record["Date of acquisition of 2nd RT-PCR"] = _us_date(second, rng)
        record["Date of result of 2nd RT-PCR"] = _us_date(second + timedelta(days=1), rng)
        record["2nd RT-PCR result"] = rng.choice((0, 1, "0", ""))
    record["Final COVID Status"] = rng.choice((1, 1, 1, "1"))
    record["Date of admission"] = _us_date(admitted, rng)
    record["Duration of symptoms"] = _measure(rng.randint(1, 21), rng, admitted)

    smoking = rng.randint(0, 3)
    record["Smoking status"] = _code(smoking, rng)
    if smoking in (1, 2):
        record["Pack year history"] = rng.choice((rng.randint(5, 60), "20-30", "approx 15", ""))
    if rng.random() < 0.06:
        record["PMH h1pertension"] = rng.choice(("1es", 1, 2))
    else:
        record["PMH hypertension"] = _code(rng.choice((0, 0, 1, 1, 2, 3)), rng)
    ckd = rng.choice((0, 0, 0, 1, 2))
    record["PMH CKD"] = _code(ckd, rng)
    if ckd == 1:
        record["If CKD, stage"] = _code(rng.randint(2, 5), rng)
    record["PMH CVS disease"] = _code(rng.randint(0, 4), rng)
    record["PMH Lung disease"] = _code(
        rng.choice((0, 0, 0, 1, 2, 4, 5, 6)), rng, ("Bronchiectasis", "Lung Ca", "OSA")
    )
    if rng.random() < 0.08:
        record["PMH diabetes mellitus TYPE II"] = rng.choice((0, 1, 2, "Yes"))
    else:
        record["PMH diabetes mellitus type II"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current ACEi use"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current Angiotension receptor blocker use"] = _code(rng.choice((0, 0, 1, 2)), rng)
    record["Current NSAID used"] = _code(rng.choice((0, 0, 1, 2)), rng)

    record["Respiratory rate on admission"] = _measure(rng.randint(12, 40), rng, admitted)
    record["Heart rate on admission"] = _measure(rng.randint(55, 140), rng, admitted)
    record["FiO2"] = rng.choice(
        (21, 21, 0.28, 0.4, "0.35", "10L", "2 L", "Blue", "white", 15, "RA")
    )
    record["O2 saturation"] = _measure(rng.randint(82, 100), rng, admitted)
    record["PaO2"] = _measure(round(rng.uniform(6.5, 14.0), 1), rng, admitted)
    systolic, diastolic = rng.randint(95, 175), rng.randint(50, 100)
    if rng.random() < 0.06:
        blood_pressure = f"[{systolic}/{diastolic}] - {admitted.isoformat()}"
        record["Systolic BP"] = record["Diastolic BP"] = blood_pressure
    else:
        record["Systolic BP"] = systolic
        record["Diastolic BP"] = diastolic
    temperature = round(rng.uniform(36.0, 39.8), 1)
    if rng.random() < 0.05:
        temperature = round(temperature * 9 / 5 + 32, 1)  # sent in Fahrenheit
    record["Temperature on admission"] = _measure(temperature, rng, admitted)
    record["NEWS2 score on arrival"] = _measure(rng.randint(0, 12), rng, admitted)
    record["WCC on admission"] = _measure(round(rng.uniform(3.0, 18.0), 1), rng, admitted)
    record["Lymphocyte count on admission"] = _measure(
        round(rng.uniform(0.3, 3.0), 2), rng, admitted
    )
    record["Platelet count on admission"] = _measure(rng.randint(90, 450), rng, admitted)
    record["CRP on admission"] = _measure(rng.randint(2, 350), rng, admitted)
    record["D-dimer on admission"] = _measure(rng.randint(200, 5000), rng, admitted)
    if rng.random() < 0.3:
        record["Fibrinogen  if d-dimer not performed"] = _measure(
            round(rng.uniform(1.5, 7.0), 1), rng, admitted
        )
    record["Ferritin"] = _measure(rng.randint(20, 3000), rng, admitted)
    record["Urea on admission"] = _measure(round(rng.uniform(2.5, 30.0), 1), rng, admitted)
    record["Creatinine on admission"] = _measure(rng.randint(45, 400), rng, admitted)
    if rng.random() < 0.5:
        record["Troponin I"] = _measure(rng.randint(2, 800), rng, admitted)
    else:
        record["Troponin T"] = _measure(rng.randint(3, 500), rng, admitted)

    first_cxr = admitted + timedelta(days=rng.randint(0, 2))
    record["Date of 1st CXR"] = _us_date(first_cxr, rng)
    record["CXR severity"] = _code(rng.randint(1, 3), rng)
    record["COVID CODE"] = f"CVCX{rng.randint(0, 3)}"
    if rng.random() < 0.5:
        record["Date of 2nd CXR"] = _us_date(first_cxr + timedelta(days=rng.randint(2, 14)), rng)
        record["CXR severity 3"] = rng.choice((0, 1, 2, 3, "2", "improving"))
        record["COVID CODE 2"] = f"CVCX{rng.randint(0, 3)}"

    itu = rng.random() < 0.2
    record["ITU admission " if rng.random() < 0.05 else "ITU admission"] = int(itu)
    if itu:
        itu_day = admitted + timedelta(days=rng.randint(0, 5))
        record["Date of ITU admission"] = _us_date(itu_day, rng)
        record["APACHE score on ITU arrival"] = _measure(rng.randint(5, 40), rng, itu_day)
        intubated = rng.random() < 0.6
        record["Intubation"] = int(intubated)
        if intubated:
            record["Date of intubation"] = _us_date(itu_day + timedelta(days=1), rng)
    else:
        record["Intubation"] = 0
    died = rng.random() < 0.15
    record["Death"] = int(died)
    last_seen = admitted + timedelta(days=rng.randint(3, 60))
    if died:
        record["Date of death"] = _us_date(last_seen, rng)
    record["Date last known alive"] = _us_date(last_seen, rng)
    if rng.random() < 0.1:
        record["OtherDataSources"] = {
            "SegmentationData": {"Ethnicity": rng.choice(("CA", "C2", "LA", "PB", "GC"))}
        }
    return record


def clinical_record(pseudonym: str, centre: str, kind: str, rng: random.Random) -> dict[str, Any]:
    """Return a realistic clinical record for one patient upload.

    Parameters
    ----------
    pseudonym : str
        The patient's pseudonym (``Pseudonym`` field; equals DICOM PatientID).
    centre : str
        The ``SubmittingCentre`` value.
    kind : {"data", "status"}
        ``"data"``: a COVID-positive patient's full record (clinical-data.md section 2):
        demographics, swab and RT-PCR dates (MM/DD/YYYY), history, admission measurements,
        outcomes, with some of the messy values real sites send (text-embedded values,
        Excel serial dates, Fahrenheit, header typos, nested ``OtherDataSources``).
        ``"status"``: a negative control: ``Pseudonym``, ``SubmittingCentre``,
        ``SwabStatus``, ``SwabDate`` (DD/MM/YYYY), sometimes ``SwabDates``.
    rng : random.Random
        Source of randomness; the record depends only on it and the arguments.

    Returns
    -------
    dict
        The record, ready for ``json.dumps``. Age and sex agree with the patient's DICOM
        headers made by :func:`build_dicom`.
    """
    if kind == "status":
        return _status_record(pseudonym, centre, rng)
    if kind == "data":
        return _data_record(pseudonym, centre, rng)
    raise ValueError(f"kind must be 'data' or 'status', not {kind!r}")


def _correction(record: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Return a later corrected upload of ``record`` (same patient, same kind)."""
    corrected = dict(record)
    if "SwabDate" in record and "Date of admission" not in record:
        corrected["SwabDates"] = [
            {"SwabDate": record["SwabDate"], "SwabStatus": 0},
            {"SwabDate": _clinical_day(rng).strftime("%d/%m/%Y"), "SwabStatus": 0},
        ]
    else:
        corrected["Death"] = 1
        corrected["Date of death"] = _us_date(_clinical_day(rng) + timedelta(days=30), rng)
        corrected["Ethnicity"] = rng.choice("ABHMR")
    return corrected


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("ascii")


# --------------------------------------------------------------------------------------------
# The tree


@dataclass
class _Patient:
    pseudonym: str
    site: Site
    positive: bool
    files: list[tuple[str, str]] = field(default_factory=list)  # (upload date, data|status)
    older_status: bool = False
    corrected: bool = False


class _TreeWriter:
    """Write files under one root, counting them; refuses to write one path twice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self.bytes = 0
        self._written: set[str] = set()
        self._dirs: set[Path] = set()

    def write(self, relative: str, data: bytes) -> None:
        if relative in self._written:
            raise RuntimeError(f"synthetic tree would write {relative} twice")
        self._written.add(relative)
        path = self.root / relative
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        with open(path, "wb") as handle:
            handle.write(data)
        self.files += 1
        self.bytes += len(data)


def _pixel_side(image_kb: float | None) -> int:
    """Square image side so that a file is about ``image_kb`` KB (64 when not given)."""
    if image_kb is None:
        return 64
    pixel_bytes = max(image_kb * 1024 - 3500, 128)
    return max(8, round(math.sqrt(pixel_bytes / 2)))


def _split_sizes(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split ``total`` into ``parts`` positive sizes."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    bounds = [0, *cuts, total]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _plan_studies(count: int, rng: random.Random, forced: list[str]) -> list[tuple[str, list[int]]]:
    """Split a patient's ``count`` images into studies: ``(modality, [series sizes])``."""
    studies = []
    remaining = count
    modalities = list(STUDY_MODALITY_WEIGHTS)
    weights = list(STUDY_MODALITY_WEIGHTS.values())
    while remaining:
        modality = forced.pop(0) if forced else rng.choices(modalities, weights)[0]
        low, high = {"DX": (1, 3), "CR": (1, 3), "CT": (3, 24), "MR": (2, 12)}[modality]
        size = min(remaining, rng.randint(low, high))
        max_series = 2 if modality in ("DX", "CR") else 4
        series = rng.randint(1, min(max_series, size))
        studies.append((modality, _split_sizes(size, series, rng)))
        remaining -= size
    return studies


def _pseudonyms(rng: random.Random, count: int) -> list[str]:
    """Unique pseudonyms: ``Covid<N>`` (N >= 150, so never one of :data:`_KNOWN_PSEUDONYMS`)
    and, about one in twenty (always the second), ``Covid<uuid4>``."""
    numbers = rng.sample(range(150, 150 + max(20 * count, 1000)), count)
    names = []
    for index, number in enumerate(numbers):
        if rng.random() < 0.05 or index == 1:
            names.append(f"Covid{uuid.UUID(int=rng.getrandbits(128), version=4)}")
        else:
            names.append(f"Covid{number}")
    return names


def _config(faults: bool) -> dict[str, Any]:
    listed = [s for s in SITES if s.kind != "unlisted" and (faults or s.kind != "unconfigured")]
    prefixes = [
        s.uploader + ("/" if s.uploader == _TRAILING_SLASH_UPLOADER else "") for s in listed
    ]
    return {
        "raw_prefixes": prefixes,
        "training_percentage": 50,
        "sites": {
            "split": [s.centre for s in SITES if s.kind in ("split", "unlisted")],
            "training": [s.centre for s in SITES if s.kind == "training"],
            "validation": [s.centre for s in SITES if s.kind == "validation"],
        },
    }


def _empty_summary(out: Path, seed: int, faults: bool) -> dict[str, Any]:
    return {
        "output": str(out),
        "seed": seed,
        "faults_included": faults,
        "files": 0,
        "bytes": 0,
        "patients": 0,
        "patients_positive": 0,
        "patients_negative": 0,
        "patients_uuid_pseudonym": 0,
        "patients_with_images": 0,
        "patients_multi_date": 0,
        "patients_corrected": 0,
        "positives_with_older_status": 0,
        "data_files": 0,
        "status_files": 0,
        "images": 0,
        "images_by_modality": {modality: 0 for modality in STUDY_MODALITY_WEIGHTS},
        "studies": 0,
        "series": 0,
        "images_upper_case_suffix": 0,
        "images_large_header": 0,
        "images_voi_lut": 0,
        "faults": {kind: 0 for kind in (*IMAGE_FAULTS, *CLINICAL_FAULTS)},
        "faulty_images": 0,
        "faulty_clinical": 0,
        "unconfigured_site_images": 0,
        "unlisted_prefix_clinical": 0,
        "unlisted_prefix_images": 0,
        "other_files": 0,
        "clinical_total": 0,
        "images_total": 0,
        "sites": {
            s.centre: {"uploader": s.uploader, "kind": s.kind, "patients": 0, "images": 0}
            for s in SITES
        },
    }


class _TreeBuilder:
    """The state of one :func:`generate_tree` run."""

    def __init__(
        self, out: Path, seed: int, faults: bool, image_kb: float | None, rng: random.Random
    ) -> None:
        self.writer = _TreeWriter(out)
        self.seed = seed
        self.rng = rng
        self.side = _pixel_side(image_kb)
        self.summary = _empty_summary(out, seed, faults)
        self.site_dates = {s.uploader: s.upload_dates() for s in SITES}
        self.study_counter = 0

    # -- clinical ------------------------------------------------------------------------
    def clinical_file(self, site: Site, day: str, pseudonym: str, kind: str, data: bytes) -> None:
        self.writer.write(f"{site.uploader}/{day}/data/{pseudonym}_{kind}.json", data)
        self.summary["clinical_total"] += 1

    def patient_files(self, patient: _Patient) -> None:
        rng, site = self.rng, patient.site
        dates = self.site_dates[site.uploader]
        first = rng.randrange(len(dates) - 3)
        kind = "data" if patient.positive else "status"
        uploads: list[tuple[str, str, dict[str, Any]]] = []
        if patient.older_status:
            status = clinical_record(patient.pseudonym, site.centre, "status", rng)
            uploads.append((dates[first], "status", status))
            first += 1
        record = clinical_record(patient.pseudonym, site.centre, kind, rng)
        uploads.append((dates[first], kind, record))
        if patient.corrected:
            later = dates[rng.randint(first + 1, len(dates) - 1)]
            uploads.append((later, kind, _correction(record, rng)))
        for day, file_kind, content in uploads:
            self.clinical_file(site, day, patient.pseudonym, file_kind, _json_bytes(content))
        patient.files = [(day, file_kind) for day, file_kind, _ in uploads]

    # -- images --------------------------------------------------------------------------
    def image(self, site: Site, day: str, sop_uid: str, blob: bytes, upper: bool = False) -> None:
        suffix = ".DCM" if upper else ".dcm"
        self.writer.write(f"{site.uploader}/{day}/images/{sop_uid}{suffix}", blob)
        self.summary["images_total"] += 1

    def patient_images(self, patient: _Patient, count: int, forced: list[str]) -> None:
        """Write ``count`` well-formed images of ``patient`` (``forced``: first modalities)."""
        rng, seed = self.rng, self.seed
        for modality, series_sizes in _plan_studies(count, rng, forced):
            self.study_counter += 1
            study_uid = _uid(seed, "study", patient.pseudonym, self.study_counter)
            day = rng.choice(patient.files)[0]
            study_date = (_CLINICAL_START + timedelta(days=rng.randrange(_CLINICAL_DAYS))).strftime(
                "%Y%m%d"
            )
            for series_number, size in enumerate(series_sizes, start=1):
                series_uid = _uid(seed, "series", study_uid, series_number)
                for instance in range(1, size + 1):
                    sop_uid = _uid(seed, "image", series_uid, instance)
                    padding = rng.randint(20, 200) * 1024 if rng.random() < 0.03 else 0
                    voi_lut = modality in ("DX", "CR") and rng.random() < 0.3
                    upper = rng.random() < 0.05
                    blob = build_dicom(
                        patient_id=patient.pseudonym,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        sop_uid=sop_uid,
                        modality=modality,
                        rows=self.side,
                        columns=self.side,
                        header_padding=padding,
                        study_date=study_date,
                        series_number=series_number,
                        instance_number=instance,
                        voi_lut=voi_lut,
                    )
                    self.image(patient.site, day, sop_uid, blob, upper)
                    if patient.site.kind in _SITE_WEIGHTS:
                        self.summary["images"] += 1
                        self.summary["images_by_modality"][modality] += 1
                        self.summary["images_large_header"] += bool(padding)
                        self.summary["images_voi_lut"] += voi_lut
                        self.summary["images_upper_case_suffix"] += upper
                    self.summary["sites"][patient.site.centre]["images"] += 1
                if patient.site.kind in _SITE_WEIGHTS:
                    self.summary["series"] += 1
            if patient.site.kind in _SITE_WEIGHTS:
                self.summary["studies"] += 1


def _site(kind: str) -> Site:
    return next(s for s in SITES if s.kind == kind)


def generate_tree(
    out: str | Path,
    *,
    patients: int = 60,
    images: int | None = None,
    seed: int = 0,
    faults: bool = True,
    image_kb: float | None = None,
) -> dict[str, Any]:
    """Write a synthetic raw upload tree (and ``config.json``) into a local directory.

    Parameters
    ----------
    out : str or Path
        Directory to write; created if missing, and it must be empty (a stale file from an
        earlier tree would make the summary wrong).
    patients : int, optional
        Patients with a valid clinical record at a configured site (split, all-training or
        all-validation); about a third are positive (``_data.json``), the rest negative
        (``_status.json``). Fault, unconfigured-site and unlisted-prefix patients come on top.
    images : int, optional
        Well-formed images of those patients (CT, MR, DX, CR), spread unevenly (some
        patients have none); about 10 per patient when omitted. Faulty images and the
        images of the unconfigured site and the unlisted prefix come on top.
    seed : int, optional
        Seed of the tree; the same seed and arguments give byte-identical files.
    faults : bool, optional
        Also write every faulty kind (:data:`IMAGE_FAULTS`, :data:`CLINICAL_FAULTS`), the
        unconfigured site's uploads, the unlisted prefix and the :data:`OTHER_FILES`. When
        ``False`` every clinical file and image written is expected to be filed.
    image_kb : float, optional
        Approximate size of each well-formed image in KB (pixel data is sized to match);
        64 x 64 pixels (about 10-14 KB a file) when omitted.

    Returns
    -------
    dict
        What was written, as counts:

        - to be filed by the loader: ``patients`` (with faults, this includes the
          group-conflict patient, whose first record is valid), ``patients_positive``,
          ``patients_negative``, ``data_files``, ``status_files``, ``images``,
          ``images_by_modality``, ``studies``, ``series``;
        - details of those: ``patients_uuid_pseudonym``, ``patients_with_images``,
          ``patients_multi_date``, ``patients_corrected``, ``positives_with_older_status``,
          ``images_upper_case_suffix``, ``images_large_header``, ``images_voi_lut``;
        - not to be filed: ``faults`` (each of :data:`IMAGE_FAULTS` and
          :data:`CLINICAL_FAULTS`), their totals ``faulty_images`` and ``faulty_clinical``,
          ``unconfigured_site_images``, ``unlisted_prefix_clinical``,
          ``unlisted_prefix_images``, ``other_files``;
        - everything: ``clinical_total`` and ``images_total`` (every clinical-named file and
          every ``.dcm``, anywhere), ``files`` (including ``config.json``) and ``bytes``;
        - ``sites``: per ``SubmittingCentre``, its ``uploader``, ``kind``, ``patients`` and
          ``images``; plus ``output``, ``seed`` and ``faults_included``.

    Raises
    ------
    FileExistsError
        If ``out`` exists and is not an empty directory.
    ValueError
        If a count is negative, or images are asked for without patients.
    """
    if patients < 0 or (images is not None and images < 0):
        raise ValueError("patients and images must not be negative")
    if images and not patients:
        raise ValueError("images need patients: give patients > 0")
    if image_kb is not None and image_kb <= 0:
        raise ValueError("image_kb must be positive")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"output directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = 10 * patients

    rng = random.Random(seed)
    tree = _TreeBuilder(out, seed, faults, image_kb, rng)
    summary = tree.summary
    tree.writer.write("config.json", json.dumps(_config(faults), indent=2).encode() + b"\n")

    configured = [s for s in SITES if s.kind in _SITE_WEIGHTS]
    names = _pseudonyms(rng, patients + 16)
    known = list(_KNOWN_PSEUDONYMS[: min(len(_KNOWN_PSEUDONYMS), patients // 10)])
    ordinary = (known + names)[:patients]
    spare = names[patients - len(known) :]

    # Well-formed patients at configured sites.
    cohort: list[_Patient] = []
    for index, pseudonym in enumerate(ordinary):
        if pseudonym in _KNOWN_PSEUDONYMS:
            site = configured[0]
        elif index < len(configured):
            site = configured[index]
        else:
            site = rng.choices(configured, [_SITE_WEIGHTS[s.kind] for s in configured])[0]
        positive = rng.random() < 0.35
        patient = _Patient(pseudonym, site, positive)
        patient.older_status = positive and rng.random() < 0.2
        patient.corrected = rng.random() < 0.12
        cohort.append(patient)
    # However small the tree, show each case at least once.
    showcase = [p for p in cohort if p.pseudonym not in _KNOWN_PSEUDONYMS]
    if len(showcase) >= 3:
        showcase[0].positive = showcase[0].older_status = True
        showcase[1].positive = showcase[1].corrected = True
        showcase[2].positive, showcase[2].corrected = False, True
    if faults:
        conflict = _Patient(spare.pop(0), _site("training"), positive=True)
        cohort.append(conflict)
    for patient in cohort:
        tree.patient_files(patient)
        summary["sites"][patient.site.centre]["patients"] += 1
        summary["patients"] += 1
        summary["patients_positive" if patient.positive else "patients_negative"] += 1
        summary["patients_uuid_pseudonym"] += "-" in patient.pseudonym
        summary["patients_multi_date"] += len({day for day, _ in patient.files}) > 1
        summary["patients_corrected"] += patient.corrected
        summary["positives_with_older_status"] += patient.older_status
        for _, kind in patient.files:
            summary[f"{kind}_files"] += 1

    # Images of the ordinary patients: about 85 % have some, unevenly.
    imaged = [p for p in cohort[: len(ordinary)] if rng.random() < 0.85] or cohort[: len(ordinary)]
    per_patient = dict.fromkeys(range(len(imaged)), 0)
    if images and imaged:
        weights = [rng.lognormvariate(0, 0.8) for _ in imaged]
        for index in rng.choices(range(len(imaged)), weights, k=images):
            per_patient[index] += 1
    forced = list(STUDY_MODALITY_WEIGHTS)  # make sure every modality appears
    for index, patient in enumerate(imaged):
        if per_patient[index]:
            tree.patient_images(patient, per_patient[index], forced)
            summary["patients_with_images"] += 1

    if faults:
        _write_faults(tree, cohort, spare)
    summary["faulty_images"] = sum(summary["faults"][kind] for kind in IMAGE_FAULTS)
    summary["faulty_clinical"] = sum(summary["faults"][kind] for kind in CLINICAL_FAULTS)
    summary["files"] = tree.writer.files
    summary["bytes"] = tree.writer.bytes
    return summary


def _write_faults(tree: _TreeBuilder, cohort: list[_Patient], spare: list[str]) -> None:
    """Write every faulty kind once or twice, the unconfigured site and the unlisted prefix."""
    rng, seed, summary = tree.rng, tree.seed, tree.summary
    faults = summary["faults"]
    configured = [s for s in SITES if s.kind in _SITE_WEIGHTS]
    validation = _site("validation")
    conflict = cohort[-1]  # the patient first sent by the all-training site
    owners = cohort[:-1] or cohort  # real patients whose faulty images carry a valid PatientID

    def where(index: int) -> tuple[Site, str]:
        site = configured[index % len(configured)]
        return site, tree.site_dates[site.uploader][index % _UPLOAD_BATCHES]

    def faulty_image(index: int, kind: str, blob: bytes) -> None:
        site, day = where(index)
        tree.image(site, day, _uid(seed, "fault-file", kind, index), blob)
        faults[kind] += 1

    def faulty_dicom(index: int, kind: str, modality: str = "DX", **changes: Any) -> bytes:
        """A DICOM of a real patient, uploaded by that patient's site, with ``changes``."""
        owner = owners[index % len(owners)]
        blob = build_dicom(
            patient_id=owner.pseudonym,
            study_uid=_uid(seed, "fault-study", kind, index),
            series_uid=_uid(seed, "fault-series", kind, index),
            sop_uid=_uid(seed, "fault-image", kind, index),
            modality=modality,
            extra=changes,
        )
        if kind == "not_dicom_truncated":
            blob = _truncate(blob)
        day = owner.files[index % len(owner.files)][0]
        tree.image(owner.site, day, _uid(seed, "fault-file", kind, index), blob)
        faults[kind] += 1
        return blob

    faulty_image(0, "not_dicom_garbage", _garbage(rng))
    faulty_image(1, "not_dicom_empty", b"")
    faulty_dicom(2, "not_dicom_truncated", "CT")
    faulty_dicom(3, "missing_patient_id", PatientID=None)
    faulty_dicom(4, "missing_study_uid", StudyInstanceUID=None)
    faulty_dicom(5, "missing_series_uid", SeriesInstanceUID=None)
    faulty_dicom(6, "missing_modality", "CR", Modality=None)
    faulty_dicom(7, "unsupported_modality", "US")
    faulty_dicom(8, "unsupported_modality", "OT")
    pseudonym = owners[0].pseudonym
    faulty_dicom(9, "unsafe_patient_id", PatientID=f"../{pseudonym}")
    faulty_dicom(10, "unsafe_patient_id", PatientID=f"{owners[0].site.uploader}/{pseudonym}")
    faulty_dicom(11, "unsafe_study_uid", StudyInstanceUID="1.2.826.0.abc.7")
    faulty_dicom(12, "unsafe_study_uid", StudyInstanceUID="1.2." + "9" * 66)
    faulty_dicom(13, "unsafe_series_uid", SeriesInstanceUID="1.2.826.0.1\x01.5")
    faulty_dicom(14, "no_clinical_record", PatientID=spare.pop(0))

    # Clinical faults, each for a pseudonym of its own (those patients have no images).
    for index, kind in enumerate(CLINICAL_FAULTS[:4]):
        site, day = where(index)
        pseudonym = spare.pop(0)
        file_kind = "status" if kind == "json_not_object" else "data"
        record = clinical_record(pseudonym, site.centre, file_kind, rng)
        if kind == "invalid_json":
            blob = _json_bytes(record)[:-40]
        elif kind == "not_utf8":
            record["Hospital"] = f"{site.hospitals[0]} – main site"
            record["PMH Lung disease"] = "5 – bronchiectasis"
            blob = json.dumps(record, ensure_ascii=False).encode("cp1252")
        elif kind == "json_not_object":
            blob = _json_bytes([record])
        else:
            del record["SubmittingCentre"]
            blob = _json_bytes(record)
        tree.clinical_file(site, day, pseudonym, file_kind, blob)
        faults[kind] += 1

    # The same patient sent later by the all-validation site: a group conflict.
    first_upload = max(day for day, _ in conflict.files)
    later = next(d for d in tree.site_dates[validation.uploader] if d > first_upload)
    record = clinical_record(conflict.pseudonym, validation.centre, "data", rng)
    tree.clinical_file(validation, later, conflict.pseudonym, "data", _json_bytes(record))
    faults["group_conflict"] += 1

    # A site in no list of config.json, uploading under a listed prefix; and a prefix that
    # config.json does not list (its site is configured, so filing its files would show).
    for site in (_site("unconfigured"), _site("unlisted")):
        for positive in (True, False):
            patient = _Patient(spare.pop(0), site, positive)
            tree.patient_files(patient)
            summary["sites"][site.centre]["patients"] += 1
            tree.patient_images(patient, rng.randint(2, 4), [])
            if site.kind == "unconfigured":
                faults["unconfigured_site"] += len(patient.files)
            else:
                summary["unlisted_prefix_clinical"] += len(patient.files)
    summary["unconfigured_site_images"] = summary["sites"][_site("unconfigured").centre]["images"]
    summary["unlisted_prefix_images"] = summary["sites"][_site("unlisted").centre]["images"]

    for index, (folder, name) in enumerate(OTHER_FILES):
        site, day = where(index)
        relative = (
            f"{site.uploader}/{day}/{folder}/{name}" if folder else f"{site.uploader}/{day}/{name}"
        )
        tree.writer.write(relative, _other_file(name))
        summary["other_files"] += 1


def _garbage(rng: random.Random) -> bytes:
    """Random bytes that are certainly not DICOM (no ``DICM`` at offset 128)."""
    blob = bytearray(rng.randbytes(rng.randint(2048, 8192)))
    blob[128:132] = b"JUNK"
    return bytes(blob)


def _other_file(name: str) -> bytes:
    if name.endswith(".csv"):
        return b"Pseudonym,SubmittingCentre,Notes\nCovid1,Imperial,see data folder\n"
    if name.endswith(".log"):
        return b"2021-01-04T09:12:44Z upload started\n2021-01-04T09:20:02Z upload finished\n"
    return b"Images for this batch were exported from PACS on the upload date.\n"


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m warehouse.synthetic",
        description=(
            "Write a synthetic raw upload tree (config.json, raw-<uploader>/<date>/data and "
            "images) into a local directory laid out like the warehouse bucket. With no size "
            "option it writes the compact demo tree (40 patients, 300 images, every faulty "
            "kind)."
        ),
        epilog=(
            "Then load it with: bonobo run warehouse/warehouseloader.py "
            "--env WAREHOUSE_BUCKET=file://<output>"
        ),
    )
    parser.add_argument(
        "--output",
        "-o",
        default="demo/bucket",
        help="directory to write; must be missing or empty (default: %(default)s)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="compact tree that shows everything: 40 patients, 300 images (the default)",
    )
    parser.add_argument("--patients", type=int, help="patients at configured sites (demo: 40)")
    parser.add_argument(
        "--images", type=int, help="well-formed images (default: about 10 per patient)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--no-faults",
        dest="faults",
        action="store_false",
        help="leave out faulty files, the unconfigured site, the unlisted prefix and other files",
    )
    parser.add_argument(
        "--image-kb", type=float, help="approximate size of each image in KB (default: ~12)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of text"
    )
    return parser


def _describe(summary: dict[str, Any], seconds: float) -> str:
    faults = summary["faults"]
    lines = [
        f"Wrote {summary['files']} files ({summary['bytes'] / 1e6:.1f} MB) to "
        f"{summary['output']} in {seconds:.1f} s (seed {summary['seed']}).",
        f"  to file: {summary['patients']} patients ({summary['patients_positive']} positive, "
        f"{summary['patients_negative']} negative), {summary['data_files']} data and "
        f"{summary['status_files']} status files, {summary['images']} images "
        f"({', '.join(f'{m} {n}' for m, n in summary['images_by_modality'].items())}) in "
        f"{summary['studies']} studies and {summary['series']} series",
    ]
    if summary["faults_included"]:
        lines += [
            f"  not to file: {summary['faulty_images']} faulty images, "
            f"{summary['faulty_clinical']} faulty clinical files, "
            f"{summary['unconfigured_site_images']} images of the unconfigured site, "
            f"{summary['unlisted_prefix_clinical'] + summary['unlisted_prefix_images']} files "
            f"under the unlisted prefix, {summary['other_files']} other files",
            "  faults: " + ", ".join(f"{kind} {n}" for kind, n in faults.items()),
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (``sys.argv[1:]`` when omitted).

    Returns
    -------
    int
        0 on success, 1 when the output directory is not empty, 2 on bad arguments.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    patients = args.patients
    images = args.images
    if patients is None and images is None:
        patients, images = 40, 300
    elif patients is None:
        patients = max(1, images // 10)
    for name, value in (("--patients", patients), ("--images", images)):
        if value is not None and value < 0:
            parser.error(f"{name} must not be negative")
    started = time.perf_counter()
    try:
        summary = generate_tree(
            args.output,
            patients=patients,
            images=images,
            seed=args.seed,
            faults=args.faults,
            image_kb=args.image_kb,
        )
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(json.dumps(summary, indent=2) if args.json else _describe(summary, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
