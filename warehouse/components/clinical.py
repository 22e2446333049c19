"""Clinical files: reading one upload's record and the fields the loader needs from it."""

from __future__ import annotations

import json


class InvalidClinicalFile(ValueError):
    """The file is not a UTF-8 JSON object."""


class MissingSubmittingCentre(ValueError):
    """The record has no usable ``SubmittingCentre``."""


def parse_clinical_record(data: bytes) -> dict:
    """Decode a clinical file: UTF-8 JSON whose top level is an object.

    Raises
    ------
    InvalidClinicalFile
        Saying what is wrong (not UTF-8, not JSON, not an object).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidClinicalFile(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidClinicalFile(f"invalid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InvalidClinicalFile(f"a JSON {type(record).__name__}, not an object")
    return record


def submitting_centre(record: dict) -> str:
    """Return the record's ``SubmittingCentre``, as it is: sites are matched exactly.

    Raises
    ------
    MissingSubmittingCentre
        When it is absent, not a string, or empty.
    """
    centre = record.get("SubmittingCentre")
    if not isinstance(centre, str) or not centre.strip():
        raise MissingSubmittingCentre("no SubmittingCentre")
    return centre
