"""DICOM values read the same way wherever a table holds them: a DICOM Age String in years,
by the clinical cleaning rules (months / 12, weeks / 52, days / 365: the rule of the NCCID
cleaning the dashboards follow, used by the image catalogue too, so ``PatientAge`` and ``age``
agree in every row)."""

from __future__ import annotations

import re
from typing import Any

#: A DICOM age's unit and its count per year.
_AGE_UNITS = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}
_DIGITS = re.compile(r"[0-9]+")


def dicom_age_years(value: Any) -> float | None:
    """Convert a DICOM Age String (AS, ``nnnY``/``M``/``W``/``D``) to years.

    "024M" -> 2.0, "026W" -> 0.5, "073D" -> 0.2, "111Y" -> 111.0. No unit ("81"), a bad unit
    or number ("XXXY"), "", None and NaN give None. Surrounding spaces (DICOM padding) are
    ignored.

    Parameters
    ----------
    value : Any
        The ``PatientAge`` value.

    Returns
    -------
    float or None
        Age in years, not floored, or None.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) < 2 or not _DIGITS.fullmatch(text[:-1]):
        return None
    divisor = _AGE_UNITS.get(text[-1])
    if divisor is None:
        return None
    return int(text[:-1]) / divisor
