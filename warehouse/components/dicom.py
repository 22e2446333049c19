"""DICOM images: reading the header with ranged reads, the identifiers that file an image, and
the header as DICOM JSON (PS3.18 F.2) without bulk data.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from warehouse.components.keys import (
    MODALITY_FOLDERS,
    UnsafeIdentifier,
    check_pseudonym,
    check_uid,
)

#: First ranged read. Real chest X-ray and CT headers are mostly 1-10 KiB; 64 KiB covers nearly
#: all of them in one request (a larger range costs no extra round trip), and the range doubles
#: for the few with large private blocks.
FIRST_READ_BYTES = 64 * 1024
PIXEL_DATA = 0x7FE00010
VOI_LUT_SEQUENCE = "00283010"
_BINARY_VALUE_KEYS = ("InlineBinary", "BulkDataURI")

# Identifiers are validated here (keys.py), so pydicom's own warnings about invalid values in
# uploaded headers would only be noise in the run's log.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class NotDicom(ValueError):
    """The file is not a readable DICOM file (garbage, empty or truncated)."""


class MissingIdentifier(ValueError):
    """The header lacks an element that decides where the image is filed."""


class UnsupportedModality(ValueError):
    """The image's modality has no warehouse folder."""


@dataclass(frozen=True, slots=True)
class HeaderRead:
    """A parsed header and what it cost: the number of range requests and bytes read."""

    dataset: Dataset
    requests: int
    bytes_read: int


def parse_header(data: bytes, complete: bool) -> Dataset | None:
    """Parse a DICOM header from the first bytes of a file, stopping before the pixel data.

    Parameters
    ----------
    data : bytes
        The start of the file.
    complete : bool
        Whether ``data`` is the whole file.

    Returns
    -------
    Dataset or None
        The header, or None when ``data`` is too short to hold it (read more).

    Raises
    ------
    NotDicom
        When the whole file is not a DICOM file, or ends before its pixel data.
    """
    seen_pixel_data = False

    def at_pixel_data(tag, vr, length) -> bool:
        nonlocal seen_pixel_data
        seen_pixel_data = tag >= PIXEL_DATA
        return seen_pixel_data

    try:
        dataset = read_partial(io.BytesIO(data), stop_when=at_pixel_data)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, IndexError) as exc:
        if not complete:
            return None
        raise NotDicom(_describe(exc, data)) from None
    if seen_pixel_data:
        # pydicom keeps the whole read buffer on the dataset; the header alone is kept, so a
        # queue of headers between nodes costs their elements, not every first range read.
        dataset.buffer = None
        return dataset
    if not complete:
        return None
    # pydicom stops quietly at a cut, so a file that ends before its pixel data is truncated
    # (an image always has pixel data).
    raise NotDicom("truncated DICOM file: it ends before the pixel data")


def _describe(exc: Exception, data: bytes) -> str:
    if not data:
        return "empty file"
    if isinstance(exc, InvalidDicomError):
        return "not a DICOM file (no DICM preamble and file meta)"
    return f"not a readable DICOM file ({type(exc).__name__}: {exc})"


def read_header(storage, key: str, size: int, first: int = FIRST_READ_BYTES) -> HeaderRead:
    """Read an image's header with ranged reads that start small and double until the pixel
    data tag or the end of the file; the pixel data itself is never fetched whole.

    Parameters
    ----------
    storage : Storage
        Where the image is.
    key : str
        The image's key.
    size : int
        The object's size from the listing (no HEAD request is made).
    first : int
        Size of the first range.

    Raises
    ------
    NotDicom
        When the file is not a DICOM file or is truncated.
    """
    data = b""
    requests = 0
    want = first
    at_end = False
    while True:
        end = min(want, size) if size > 0 else want
        if end > len(data):
            chunk = storage.read_range(key, len(data), end)
            requests += 1
            data += chunk
            at_end = len(data) < end  # fewer bytes than asked: the end of the object
        complete = at_end or (size > 0 and len(data) >= size)
        dataset = parse_header(data, complete)
        if dataset is not None:
            return HeaderRead(dataset, requests, len(data))
        want *= 2


@dataclass(frozen=True, slots=True)
class ImageIdentity:
    """The header elements that decide where an image is filed."""

    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    folder: str


def _text(dataset: Dataset, keyword: str) -> str:
    element = dataset.get(keyword)
    value = "" if element is None else element
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip() if value is not None else ""


def image_identity(dataset: Dataset) -> ImageIdentity:
    """Take PatientID, StudyInstanceUID, SeriesInstanceUID and Modality from a header.

    Raises
    ------
    MissingIdentifier
        When one of them is absent or empty.
    UnsafeIdentifier
        When one cannot be used as a key part (not a UID, path characters, too long).
    UnsupportedModality
        When the modality has no warehouse folder.
    """
    values = {}
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        try:
            values[keyword] = _text(dataset, keyword)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise UnsafeIdentifier(f"{keyword} cannot be decoded: {exc}") from None
        if not values[keyword]:
            raise MissingIdentifier(f"no {keyword} in the header")
    patient_id = check_pseudonym(values["PatientID"])
    study = check_uid(values["StudyInstanceUID"], "StudyInstanceUID")
    series = check_uid(values["SeriesInstanceUID"], "SeriesInstanceUID")
    modality = values["Modality"].upper()
    folder = MODALITY_FOLDERS.get(modality)
    if folder is None:
        raise UnsupportedModality(f"modality {values['Modality']!r} is not filed")
    return ImageIdentity(patient_id, study, series, modality, folder)


def _strip_bulk(elements: dict) -> dict:
    """Make binary elements and the VOI LUT Sequence elements without a value, at any depth."""
    for tag, element in elements.items():
        if tag == VOI_LUT_SEQUENCE:
            elements[tag] = {"vr": "SQ"}
            continue
        for name in _BINARY_VALUE_KEYS:
            element.pop(name, None)
        if element.get("vr") == "SQ":
            for item in element.get("Value", ()):
                if isinstance(item, dict):
                    _strip_bulk(item)
    return elements


def _no_bulk_data(element) -> str:
    return ""  # the value is dropped by _strip_bulk; nothing is inlined or fetched


def header_json(dataset: Dataset) -> bytes:
    """The header as DICOM JSON (PS3.18 F.2), without file meta, pixel data or binary values.

    Binary elements and the VOI LUT Sequence are written without a value (``{"vr": "OB"}``,
    ``{"vr": "SQ"}``), so ``pydicom.Dataset.from_json`` reads the result back as it is. Elements
    whose value cannot be converted are left out rather than failing the image.

    Returns
    -------
    bytes
        Compact UTF-8 JSON.
    """
    return json.dumps(header_json_dict(dataset), separators=(",", ":")).encode("utf-8")


def header_json_dict(dataset: Dataset) -> dict:
    """The DICOM JSON model of a header, as `header_json` writes it.

    The elements of a header are converted straight from the bytes pydicom read, which is several
    times faster than pydicom's ``Dataset.to_json_dict`` (the loader's largest CPU cost per
    image); anything that fast path does not cover (sequences, implicit or ambiguous VRs,
    multi-byte character sets, values it cannot read) goes through pydicom, and a test checks
    that both give the same JSON. One difference is deliberate: readable text that breaks its
    VR's rules (a UID with letters) is kept as the file says, where pydicom leaves it out.
    """
    encoding = _single_encoding(dataset)
    elements = {}
    for tag, raw in dataset._dict.items():
        key = f"{tag:08X}"
        if key == VOI_LUT_SEQUENCE:
            elements[key] = {"vr": "SQ"}
            continue
        element = _fast_element(raw, encoding) if isinstance(raw, RawDataElement) else None
        if element is None:
            element = _pydicom_element(dataset, tag)
        if element is not None:
            elements[key] = element
    return elements


def _pydicom_element(dataset: Dataset, tag) -> dict | None:
    try:
        element = dataset[tag].to_json_dict(_no_bulk_data, 0)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, struct.error):
        return None  # as pydicom's suppress_invalid_tags: leave out what cannot be converted
    return _strip_bulk({"x": element})["x"]


_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_NUMBER_FORMATS.update({"UV": "Q", "SV": "q"})
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC"})
_TEXT_VRS = frozenset({"LT", "ST", "UT"})


def _single_encoding(dataset: Dataset) -> str | None:
    """The Python codec of a single-byte or UTF-8 character set, or None (use pydicom)."""
    try:
        encodings = dataset._character_set
    except (AttributeError, LookupError, ValueError):
        return None
    return encodings[0] if len(encodings) == 1 else None


def _fast_element(raw: RawDataElement, encoding: str | None) -> dict | None:
    """One explicit-VR little-endian element as DICOM JSON, or None to let pydicom do it."""
    vr, value = raw.VR, raw.value
    if raw.is_implicit_VR or not raw.is_little_endian or vr is None or vr == "SQ":
        return None
    if vr in _BINARY_VRS:
        return {"vr": vr}
    if not value:
        return {"vr": vr} if vr in _NUMBER_FORMATS or vr in _ASCII_VRS or encoding else None
    try:
        if vr in _NUMBER_FORMATS:
            code = _NUMBER_FORMATS[vr]
            count, rest = divmod(len(value), struct.calcsize(code))
            if rest:
                return None
            return {"vr": vr, "Value": list(struct.unpack(f"<{count}{code}", value))}
        if vr == "AT":
            if len(value) % 4:
                return None
            pairs = struct.unpack(f"<{len(value) // 2}H", value)
            tags = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
            return {"vr": vr, "Value": tags}
        if vr in ("DS", "IS"):
            items = value.decode("ascii").rstrip(" \x00").split("\\")
            if items == [""]:
                return {"vr": vr}
            return {"vr": vr, "Value": [_number(item, vr) for item in items]}
        if vr in _ASCII_VRS:
            items = value.decode("latin-1").rstrip(" \x00").split("\\")
            return {"vr": vr, "Value": items} if items != [""] else {"vr": vr}
        if encoding is None or b"\x1b" in value:
            return None
        if vr in _CHARSET_VRS:
            items = [item.rstrip("\x00 ") for item in value.decode(encoding).split("\\")]
            return {"vr": vr, "Value": items} if items != [""] else {"vr": vr}
        if vr in _TEXT_VRS:
            text = value.decode(encoding).rstrip("\x00 ")
            return {"vr": vr, "Value": [text]} if text else {"vr": vr}
        if vr == "PN":
            text = value.rstrip(b"\x00 ").decode(encoding)
            if not text:
                return {"vr": vr}
            return {"vr": vr, "Value": [_person_name(name) for name in text.split("\\")]}
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return None


def _number(item: str, vr: str) -> int | float:
    text = item.strip(" ")
    if not text:
        raise ValueError("empty value in a multi-valued number")
    if vr == "IS":
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"IS value {item!r} is not an integer")
        return int(number)
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("DS value is not finite")
    return number


def _person_name(name: str) -> dict:
    groups = name.split("=")
    json_name = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        json_name["Ideographic"] = groups[1]
    if len(groups) > 2:
        json_name["Phonetic"] = groups[2]
    return json_name
