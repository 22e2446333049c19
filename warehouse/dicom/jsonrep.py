"""A header as DICOM JSON (PS3.18 F.2) without bulk data: a fast path over the raw elements,
pydicom's own conversion for the rest."""

from __future__ import annotations

import json
import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from warehouse.dicom.elements import (
    VOI_LUT_SEQUENCE,
    character_sets,
    too_many_items,
)

#: The most bytes of one metadata JSON: an element that would take it further is written
#: without its value (at most 30 bytes). A 64 MiB header of text values of control characters,
#: each escaped as six characters, would otherwise make 380 MB of JSON.
MAX_METADATA_JSON_BYTES = 32 * 1024 * 1024
_BINARY_VALUE_KEYS = ("InlineBinary", "BulkDataURI")


def header_json(dataset: Dataset, left_out: list[str] | None = None) -> bytes:
    """The header as DICOM JSON (PS3.18 F.2), without file meta, pixel data or binary values.

    Binary elements, the VOI LUT Sequence and values not fetched for their size are written
    without a value (``{"vr": "OB"}``, ``{"vr": "SQ"}``), so ``pydicom.Dataset.from_json``
    reads the result back as it is. Group Length elements are left out (PS3.18 F.2), and so
    are elements whose value cannot be converted (their tags are appended to ``left_out``),
    rather than failing the image. An element whose JSON would take the document past
    `MAX_METADATA_JSON_BYTES` is written without its value (and appended to ``left_out``):
    the document is written element by element, so it never costs much more than that (the
    elements without a value add at most 30 bytes each).

    Returns
    -------
    bytes
        Compact UTF-8 JSON (the same bytes as ``json.dumps`` of `header_json_dict`'s result
        with compact separators, when no element is over the bound).
    """
    room = MAX_METADATA_JSON_BYTES - 2
    parts = []
    for key, element in _json_elements(dataset, left_out):
        # ASCII (json.dumps escapes the rest): characters are bytes
        part = f'"{key}":{json.dumps(element, separators=(",", ":"))}'.encode("ascii")
        if len(part) + 1 > room:
            part = f'"{key}":{{"vr":"{element["vr"]}"}}'.encode("ascii")
            if left_out is not None:
                left_out.append(key)
        room -= len(part) + 1
        parts.append(part)
    return b"{" + b",".join(parts) + b"}"


def header_json_dict(dataset: Dataset, left_out: list[str] | None = None) -> dict:
    """The DICOM JSON model of a header, as `header_json` writes it (without its bound on the
    document's size).

    Elements are converted straight from the bytes pydicom read where that is proven to give
    pydicom's own result (explicit VR little endian values of the common VRs, one character
    set); everything else (sequences, implicit or ``UN`` VRs, code extensions, values the fast
    path does not cover) goes through pydicom's ``DataElement.to_json_dict``. Deliberate
    differences from pydicom are listed in the README (Group Length left out, empty trailing
    person-name groups left out, readable text that breaks its VR's rules kept).
    """
    return dict(_json_elements(dataset, left_out))


def _json_elements(dataset: Dataset, left_out: list[str] | None):
    """``(key, element)`` of each element of the header's DICOM JSON, in tag order."""
    encoding = _single_encoding(dataset)
    skipped: frozenset[int] = getattr(dataset, "skipped_for_size", frozenset())
    for tag, raw in dataset._dict.items():
        if not tag & 0xFFFF:
            continue  # Group Length (gggg,0000): not part of the JSON model
        key = f"{tag:08X}"
        if key == VOI_LUT_SEQUENCE:
            yield key, {"vr": "SQ"}
            continue
        element = None
        if isinstance(raw, RawDataElement):
            if tag in skipped:
                if raw.VR == "SQ" and left_out is not None:
                    left_out.append(key)  # a sequence too large to keep its items
                yield key, {"vr": raw.VR}  # (its VR resolved when it was skipped)
                continue
            if too_many_items(raw, dataset):
                if left_out is not None:
                    left_out.append(key)
                yield key, {"vr": "SQ"}
                continue
            element = _fast_element(raw, encoding)
        if element is None:
            element = _pydicom_element(dataset, tag)
            if element is None and left_out is not None:
                left_out.append(key)
        if element is not None:
            yield key, element


def _pydicom_element(dataset: Dataset, tag) -> dict | None:
    try:
        return _without_bulk(dataset[tag].to_json_dict(_no_bulk_data, 0))
    except RecursionError:
        return None  # sequences nested too deeply to convert
    except Exception:  # noqa: BLE001 - as pydicom's suppress_invalid_tags: leave the element out
        return None


def _no_bulk_data(element) -> str:
    return ""  # the value is dropped by _without_bulk; nothing is inlined or fetched


def _without_bulk(element: dict) -> dict:
    """An element of pydicom's JSON with binary values, the VOI LUT Sequence and Group Length
    elements removed (at any depth), and empty trailing person-name groups left out."""
    for name in _BINARY_VALUE_KEYS:
        element.pop(name, None)
    vr = element.get("vr")
    if vr == "SQ":
        for item in element.get("Value", ()):
            if not isinstance(item, dict):
                continue
            for tag in list(item):
                if tag == VOI_LUT_SEQUENCE:
                    item[tag] = {"vr": "SQ"}
                elif tag.endswith("0000"):
                    del item[tag]
                else:
                    _without_bulk(item[tag])
    elif vr == "PN":
        element["Value"] = [_trim_name(name) for name in element.get("Value", ())]
        if not element["Value"]:
            del element["Value"]
    return element


def _trim_name(name):
    if not isinstance(name, dict):
        return name
    for group in ("Phonetic", "Ideographic"):
        if name.get(group) == "" and (group == "Phonetic" or "Phonetic" not in name):
            del name[group]
    return name


_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_NUMBER_FORMATS.update({"UV": "Q", "SV": "q"})
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_CHARSET_VRS = frozenset({"SH", "LO", "UC"})
_TEXT_VRS = frozenset({"LT", "ST", "UT"})


def _single_encoding(dataset: Dataset) -> str | None:
    """The Python codec of a single-byte or UTF-8 character set, or None (use pydicom)."""
    try:
        encodings = character_sets(dataset)
    except (AttributeError, LookupError, ValueError):
        return None
    return encodings[0] if len(encodings) == 1 else None


def _fast_element(raw: RawDataElement, encoding: str | None) -> dict | None:
    """One explicit-VR little-endian element as DICOM JSON, or None to let pydicom do it."""
    vr, value = raw.VR, raw.value
    if raw.is_implicit_VR or not raw.is_little_endian or vr in (None, "SQ", "UN"):
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
            names = [_person_name(name) for name in text.split("\\")]
            return None if None in names else {"vr": vr, "Value": names}
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


def _person_name(name: str) -> dict | None:
    groups = name.split("=")
    while groups and not groups[-1]:
        groups.pop()  # PS3.18 F.2.2: empty trailing component groups are left out
    if not groups:
        return None  # an empty name among others: pydicom decides
    json_name = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        json_name["Ideographic"] = groups[1]
    if len(groups) > 2:
        json_name["Phonetic"] = groups[2]
    return json_name
