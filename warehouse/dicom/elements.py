"""Elements of a parsed header that more than one part of the package reads: an element's
value representation (the dictionary's for one pydicom could not tell), an identifier's text
as the file holds it, and sequences too large to convert."""

from __future__ import annotations

from pydicom.charset import decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.values import TEXT_VR_DELIMS

from warehouse.core.keys import dicom_identifier

#: A sequence holding more items than this (at any depth) is written without its items:
#: converting each item costs about 0.2 ms, so 100,000 tiny items would hold the run for 20 s.
MAX_SEQUENCE_ITEMS = 20_000
ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")  # little and big endian
VOI_LUT_SEQUENCE = "00283010"
VOI_LUT_TAG = 0x00283010


def raw_vr(raw: RawDataElement) -> str | None:
    if raw.VR not in (None, "UN"):
        return raw.VR
    try:
        return dictionary_VR(raw.tag)
    except KeyError:
        return raw.VR


def character_sets(dataset: Dataset) -> list[str]:
    """Return the Python codecs of a data set's Specific Character Set, as pydicom resolves it.

    Always a list: pydicom gives a data set without (0008,0005) the default repertoire as a
    bare string (``'iso8859'``), which its own decoder would take for a list of one-letter
    codecs.

    Raises
    ------
    LookupError, ValueError
        When pydicom cannot resolve the character set.
    """
    encodings = dataset._character_set
    return [encodings] if isinstance(encodings, str) else list(encodings)


def element_text(dataset: Dataset, tag: int, vr: str) -> str:
    """An element's text as the file holds it, less its DICOM padding (keys.dicom_identifier):
    from the raw bytes when pydicom has not converted them, so nothing else is stripped."""
    # pydicom hints its keys as BaseTag, an int subclass that hashes as the int does.
    element = dataset._dict.get(tag)  # type: ignore[call-overload]
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        if element.value is None:
            return ""
        text = decode_bytes(element.value, character_sets(dataset), TEXT_VR_DELIMS)
    else:
        value = element.value
        if value is None:
            return ""
        text = "\\".join(str(v) for v in value) if element.VM > 1 else str(value)
    return dicom_identifier(text, vr)


def too_many_items(raw: RawDataElement) -> bool:
    """Whether a sequence's bytes hold more than `MAX_SEQUENCE_ITEMS` item tags (counted in
    C, an upper bound: a value may hold the same four bytes)."""
    value = raw.value
    if not isinstance(value, bytes) or len(value) < 8 * MAX_SEQUENCE_ITEMS:
        return False
    tag = ITEM_TAGS[0] if raw.is_little_endian else ITEM_TAGS[1]
    return raw_vr(raw) == "SQ" and value.count(tag) > MAX_SEQUENCE_ITEMS
