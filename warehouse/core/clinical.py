"""Clinical files: reading one upload's record and the fields the loader needs from it."""

from __future__ import annotations

import json
import re

from warehouse.core.keys import UnsafeIdentifier, identifier_problem
from warehouse.core.reasons import Reason
from warehouse.core.text import quote

#: The most characters a ``SubmittingCentre`` may have (NHS trust names have under 80): a
#: longer one is refused before it is kept, compared or reported.
MAX_CENTRE_LENGTH = 256


_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidClinicalFile(ValueError):
    """The file is not a UTF-8 JSON object (or one too deep or with a number too long)."""

    reason = Reason.INVALID_JSON


class MissingSubmittingCentre(ValueError):
    """The record has no usable ``SubmittingCentre``."""

    reason = Reason.NO_SUBMITTING_CENTRE


class ClinicalTooLarge(ValueError):
    """The file is larger than the clinical-file limit: reported unread."""

    reason = Reason.CLINICAL_TOO_LARGE


def check_clinical_size(size: int | None, limit: int) -> None:
    """Refuse a clinical file larger than ``limit`` bytes before it is read.

    Raises
    ------
    ClinicalTooLarge
        Naming the size and the limit (``WAREHOUSE_MAX_CLINICAL_BYTES``).
    """
    if size is not None and size > limit:
        raise ClinicalTooLarge(
            f"{size:,} bytes; clinical files are read up to {limit:,} bytes "
            "(WAREHOUSE_MAX_CLINICAL_BYTES)"
        )


class PseudonymMismatch(ValueError):
    """The record's ``Pseudonym`` is not the one its file name gives."""

    reason = Reason.PSEUDONYM_MISMATCH


def parse_json_document(data: bytes) -> object:
    """Decode UTF-8 JSON from an upload or the warehouse, whatever its bytes.

    Raises
    ------
    InvalidClinicalFile
        Saying what is wrong: not UTF-8, not JSON, nested too deeply to decode, or a number
        with more digits than Python converts.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidClinicalFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidClinicalFile(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidClinicalFile("invalid JSON: nested too deeply to decode") from None
    except ValueError as exc:  # an integer past Python's int-string conversion limit
        raise InvalidClinicalFile(f"invalid JSON: {exc}") from None
    if _has_lone_surrogate(document):
        # (a \ud800 escape decodes to no character: no table, page or file could hold it)
        raise InvalidClinicalFile("invalid JSON: a \\u escape of a lone surrogate is not text")
    return document


def _has_lone_surrogate(document: object) -> bool:
    """Whether any text of a decoded JSON document (keys included) holds a lone surrogate."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and _SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def parse_clinical_record(data: bytes) -> dict:
    """Decode a clinical file: UTF-8 JSON whose top level is an object.

    Raises
    ------
    InvalidClinicalFile
        Saying what is wrong (not UTF-8, not JSON, too deep, not an object).
    """
    record = parse_json_document(data)
    if not isinstance(record, dict):
        raise InvalidClinicalFile(f"a JSON {type(record).__name__}, not an object")
    return record


def submitting_centre(record: dict) -> str:
    """Return the record's ``SubmittingCentre``, as it is: sites are matched exactly.

    Raises
    ------
    MissingSubmittingCentre
        When it is absent, not a string, or empty.
    UnsafeIdentifier
        When it is longer than `MAX_CENTRE_LENGTH` characters.
    """
    centre = record.get("SubmittingCentre")
    if not isinstance(centre, str) or not centre.strip():
        raise MissingSubmittingCentre("no SubmittingCentre")
    if len(centre) > MAX_CENTRE_LENGTH:
        raise UnsafeIdentifier(
            f"SubmittingCentre of {len(centre):,} characters (at most {MAX_CENTRE_LENGTH}): "
            f"{quote(centre)}"
        )
    return centre


def check_record_pseudonym(record: dict, file_pseudonym: str) -> None:
    """Check that a record's ``Pseudonym`` (when it has one) is its file name's pseudonym.

    The two are compared as they are, by the one identity rule (`keys.identifier_problem`):
    nothing is stripped or case-folded.

    Raises
    ------
    PseudonymMismatch
        With both values.
    """
    if "Pseudonym" not in record:
        return
    value = record["Pseudonym"]
    if value != file_pseudonym or identifier_problem(value) is not None:
        raise PseudonymMismatch(
            f"the record's Pseudonym is {quote(value)}; the file name's is {quote(file_pseudonym)}"
        )
