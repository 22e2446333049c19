"""The identifiers that file an image: PatientID, StudyInstanceUID, SeriesInstanceUID and
Modality, taken from a parsed header by the one identity rule (`warehouse.core.keys`)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from warehouse.core.keys import (
    MODALITY_FOLDERS,
    UnsafeIdentifier,
    check_pseudonym,
    check_uid,
)
from warehouse.dicom.elements import element_text
from warehouse.dicom.problems import MissingIdentifier, UnsupportedModality


@dataclass(frozen=True, slots=True)
class ImageIdentity:
    """The header elements that decide where an image is filed."""

    patient_id: str
    study_uid: str
    series_uid: str
    modality: str
    folder: str


_IDENTIFIER_TAGS = {
    "PatientID": 0x00100020,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "Modality": 0x00080060,
}


def image_identity(dataset: Dataset) -> ImageIdentity:
    """Take PatientID, StudyInstanceUID, SeriesInstanceUID and Modality from a header.

    Raises
    ------
    MissingIdentifier
        When one of them is absent or empty.
    UnsafeIdentifier
        When one cannot be used as a key part (not a UID, whitespace, control or path
        characters, too long).
    UnsupportedModality
        When the modality has no warehouse folder.
    """
    values = {}
    for keyword, tag in _IDENTIFIER_TAGS.items():
        try:
            values[keyword] = element_text(dataset, tag)
        except (ValueError, TypeError, LookupError) as exc:
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
