"""Synthetic DICOM images: realistic headers of the warehouse's modalities (and of others),
vendor private blocks, padding, pixel data, and files cut short."""

from __future__ import annotations

import hashlib
import io
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from warehouse.synthetic.choices import (
    CLINICAL_DAYS,
    CLINICAL_START,
    UID_ROOT,
    hash_int,
    patient_traits,
    pick,
)

#: SOP Class UID per modality (modalities the loader files, and two it must not).
SOP_CLASS_BY_MODALITY = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "US": UltrasoundImageStorage,
    "OT": SecondaryCaptureImageStorage,
}

_VENDOR_GROUP = 0x0029

_VENDOR_CREATOR = "SYNTHETIC VENDOR HEADER"

_PADDING_GROUP = 0x0033

_PADDING_CREATOR = "SYNTHETIC PADDING"

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


def _study_date(study_uid: str) -> date:
    return CLINICAL_START + timedelta(days=hash_int("study-date", study_uid) % CLINICAL_DAYS)


def _dicom_time(study_uid: str, series_uid: str | None = None) -> str:
    """A TM between 07:00 and 20:00 for the study; a series starts up to 30 minutes later."""
    value = hash_int("time", study_uid)
    seconds = 7 * 3600 + value % (13 * 3600)
    if series_uid is not None:
        value = hash_int("time", study_uid, series_uid)
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
    shift = np.uint16(hash_int("pixels", sop_uid) % 512)
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
    sex, age = patient_traits(patient_id)
    if study_date:
        when = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:8]))
    else:
        when = _study_date(study_uid)
    day = when.strftime("%Y%m%d")
    sop_class = SOP_CLASS_BY_MODALITY.get(modality, SecondaryCaptureImageStorage)
    manufacturer, model, software = pick(_SCANNERS.get(modality, _SCANNERS["OT"]), series_uid)
    if voi_lut is None:
        voi_lut = modality in ("DX", "CR") and hash_int("voi", sop_uid) % 3 == 0

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid  # type: ignore[assignment]  # pydicom takes a str
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
    ds.StationName = f"STN{hash_int('station', series_uid) % 90 + 10}"
    ds.StudyDescription = pick(_STUDY_DESCRIPTIONS.get(modality, ("",)), study_uid)
    ds.SeriesDescription = pick(_SERIES_DESCRIPTIONS.get(modality, ("",)), series_uid)
    ds.ManufacturerModelName = model
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = f"{when.year - age}0101"
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "NCCID pseudonymisation; dates offset except Study/Acquisition"
    ds.BodyPartExamined = pick(_BODY_PARTS.get(modality, ("CHEST",)), study_uid)
    _add_acquisition(ds, modality, series_uid, instance_number)
    ds.SoftwareVersions = software
    ds.DeviceSerialNumber = str(10000 + hash_int("serial", series_uid) % 90000)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(hash_int("study-id", study_uid) % 100000)
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
        ds.VOILUTSequence = _voi_lut_sequence(256 + 256 * (hash_int("lut", sop_uid) % 4))

    vendor_size = 200 + 2 * (hash_int("vendor", sop_uid) % 1800)
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
    value = hash_int("acquisition", series_uid)
    if modality == "CT":
        ds.SliceThickness = pick(("1.0", "1.25", "2.5", "5.0"), series_uid)
        ds.KVP = pick(("100", "120", "140"), series_uid)
        ds.DataCollectionDiameter = 500
        ds.ReconstructionDiameter = 350
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150 + value % 40
        ds.RotationDirection = "CW"
        ds.ExposureTime = 500 + value % 500
        ds.XRayTubeCurrent = 80 + value % 300
        ds.Exposure = 10 + value % 200
        ds.ConvolutionKernel = pick(("B70f", "B31f", "LUNG", "STANDARD"), series_uid)
        ds.PatientPosition = "HFS"
    elif modality == "MR":
        ds.ScanningSequence = ["SE"]
        ds.SequenceVariant = ["SK", "SP"]
        ds.SliceThickness = "5.0"
        ds.RepetitionTime = 400 + value % 4000
        ds.EchoTime = 10 + value % 100
        ds.MagneticFieldStrength = pick(("1.5", "3.0"), series_uid)
        ds.ImagingFrequency = 63.6
        ds.EchoTrainLength = 1 + value % 16
        ds.FlipAngle = 90
        ds.PatientPosition = "HFS"
    elif modality in ("DX", "CR"):
        ds.KVP = pick(("90", "110", "125"), series_uid)
        ds.DistanceSourceToDetector = 1800 if instance % 2 else 1000
        ds.ExposureTime = 5 + value % 40
        ds.XRayTubeCurrent = 100 + value % 400
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.ViewPosition = pick(("PA", "AP", "AP", "LL"), series_uid)
        if modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"


def truncate(blob: bytes) -> bytes:
    """Cut a DICOM file in the middle of its Manufacturer value, before PatientID.

    pydicom reads such a file without an error and returns a partial data set (no PatientID,
    StudyInstanceUID or SeriesInstanceUID, no pixel data); the declared length of the last
    element is larger than the bytes left, which is how a reader can tell it was cut.
    """
    element = blob.index(b"\x08\x00\x70\x00LO")  # (0008,0070) Manufacturer, explicit VR
    length = int.from_bytes(blob[element + 6 : element + 8], "little")
    return blob[: element + 8 + length // 2]
