"""Elements of a parsed header that more than one part of the package reads: an element's
value representation as pydicom gives it (the dictionary's, or the private dictionary's under
its block's private creator, for one the file does not tell), an identifier's text as the file
holds it, and sequences too large to convert."""

from __future__ import annotations

from pydicom.charset import decode_bytes
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.valuerep import AMBIGUOUS_VR
from pydicom.values import TEXT_VR_DELIMS

from warehouse.core.keys import dicom_identifier

#: A sequence holding more items than this (at any depth) is written without its items:
#: converting each item costs about 0.2 ms, so 100,000 tiny items would hold the run for 20 s.
MAX_SEQUENCE_ITEMS = 20_000
ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")  # little and big endian
VOI_LUT_SEQUENCE = "00283010"
VOI_LUT_TAG = 0x00283010


def raw_vr(raw: RawDataElement, dataset: Dataset | None = None) -> str:
    """The VR pydicom gives a raw element when it converts it (its ``raw_element_vr`` hook),
    decided without its value, so that it holds for a value skipped unread.

    The file's own VR, unless the file has none (implicit VR) or says ``UN``: then a private
    element's is the private dictionary's entry under its block's private creator (the value
    of (gggg,00xx) for (gggg,xxyy), in ``dataset``; a private creator is ``LO``), and a
    public element's the dictionary's (an explicit ``UN`` only below 64 KiB, as pydicom). An
    element no dictionary knows is ``UN`` (a Group Length of an implicit file ``UL``).

    Parameters
    ----------
    raw : RawDataElement
        The element as read (its value may be None or empty: only its length is used).
    dataset : Dataset, optional
        The data set holding it, where its private creator is; without it a private element
        other than a creator is ``UN``.

    Returns
    -------
    str
        The VR; an ambiguous one (``OB or OW``) as the dictionary gives it.
    """
    vr = raw.VR
    if vr is not None and vr != "UN":
        return vr
    tag = int(raw.tag)
    if tag >> 16 & 1:
        return _private_vr(tag, dataset)
    if vr == "UN" and raw.length >= 0xFFFF:
        return "UN"  # pydicom keeps a long UN value of a public tag as it is
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UL" if vr is None and not tag & 0xFFFF else "UN"


def _private_vr(tag: int, dataset: Dataset | None) -> str:
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"  # a private creator
    creator = private_creator(dataset, tag) if dataset is not None and element >> 8 else None
    if not creator:
        return "UN"
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"


def private_creator(dataset: Dataset, tag: int) -> str | None:
    """The private creator of a private element's block (the value of (gggg,00xx) for
    (gggg,xxyy)) as pydicom reads it (less its trailing spaces and NULs), or None when the
    block has none or it is not one value."""
    element = dataset._dict.get((tag & 0xFFFF0000) | (tag >> 8 & 0xFF))  # type: ignore[call-overload]
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        value = value.decode("latin-1")  # (creators are ASCII; only an exact name matches)
    if not isinstance(value, str) or "\\" in value:
        return None
    return value.rstrip("\x00 ")


def skipped_vr(raw: RawDataElement, dataset: Dataset) -> str:
    """The VR pydicom gives an element whose value was not read (`raw_vr`), with an
    ambiguous one (``OB or OW``, ``US or SS``) resolved by pydicom's own rule, as its reading
    does: Overlay Data of an implicit VR file is ``OW``, say. One pydicom cannot resolve (a
    LUT Data without its descriptor) is ``UN``."""
    vr = raw_vr(raw, dataset)
    if vr not in AMBIGUOUS_VR:
        return vr
    element = DataElement(raw.tag, vr, None)
    try:
        resolved = correct_ambiguous_vr_element(element, dataset, raw.is_little_endian).VR
    except Exception:  # noqa: BLE001 - pydicom's rule needs elements a hostile header may lack
        return "UN"
    return "UN" if resolved in AMBIGUOUS_VR else str(resolved)


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


def element_text(dataset: Dataset, tag: int) -> str:
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
    return dicom_identifier(text)


def too_many_items(raw: RawDataElement, dataset: Dataset | None = None) -> bool:
    """Whether a sequence's bytes hold more than `MAX_SEQUENCE_ITEMS` item tags (counted in
    C, an upper bound: a value may hold the same four bytes); ``dataset`` holds it (its
    private creators say whether a private element is a sequence: `raw_vr`)."""
    value = raw.value
    if not isinstance(value, bytes) or len(value) < 8 * MAX_SEQUENCE_ITEMS:
        return False
    tag = ITEM_TAGS[0] if raw.is_little_endian else ITEM_TAGS[1]
    return raw_vr(raw, dataset) == "SQ" and value.count(tag) > MAX_SEQUENCE_ITEMS
