"""Deterministic choices: every random-looking value of the synthetic tree is hashed from the
seed and names, so a seed always gives a byte-identical tree."""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

from pydicom.uid import (
    PYDICOM_ROOT_UID,
    generate_uid,
)

#: Root of every UID this module makes (pydicom's root; UIDs are hashed below it).
UID_ROOT = PYDICOM_ROOT_UID


def hash_int(*parts: object) -> int:
    """Return a stable 64-bit integer from ``parts`` (not Python's salted ``hash``)."""
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def pick(options: tuple[Any, ...], *parts: object) -> Any:
    """Pick one of ``options`` by a stable hash of ``parts``."""
    return options[hash_int(*parts) % len(options)]


def uid(seed: int, *parts: object) -> str:
    """Return a DICOM UID under :data:`UID_ROOT`, the same for the same ``seed`` and parts."""
    sources = ["warehouse-synthetic", str(seed), *(str(part) for part in parts)]
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=sources))


def patient_traits(pseudonym: str) -> tuple[str, int]:
    """Return the stable ``(sex "M"/"F", age in years)`` of a pseudonym.

    The clinical record and the DICOM headers of one patient agree on these.
    """
    value = hash_int("traits", pseudonym)
    return ("M" if value % 2 else "F"), 18 + (value >> 8) % 78


#: The span of dates of the clinical records and studies.
CLINICAL_START = date(2020, 3, 1)

CLINICAL_DAYS = 300
