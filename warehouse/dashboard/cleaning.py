"""Clinical cleaning rules for the patient table of the ``dataprocess`` graph.

One small pure function per rule, each taking one raw value, plus :func:`clean_patient_table`,
which applies them column by column in the documented order, and :func:`fill_from_dicom`, which
fills ``age_update`` and ``sex_update`` from the image tables. The rules are those of
nccid-cleaning as described in ``reference/clinical-data.md`` section 3.

Raw columns are kept; every cleaned value goes into a new column named after the raw one
(:func:`clean_column_name`). A step runs only when its input column exists.

Choices made where the reference leaves room (reviewers: these are deliberate)
-------------------------------------------------------------------------------
- **Master, not the pinned version.** Ethnicity sub-codes (C2, C3, CA-CY, GA-GF, LA-LK, PA-PE,
  SA-SE) are mapped; ``SwabDates`` is parsed into ``swabdates``; ``latest_swab_date`` is only
  computed when both ``SwabDate`` and ``Date of Positive Covid Swab`` exist; numeric extraction
  yields NaN (float64 columns), never None. The sub-code lists follow the NHS Data Dictionary
  ethnic category codes, which skip the letters I and O (so "CI" is Unknown).
- **Pure mappings.** Heuristic ethnicity results ("mixed", "white") are computed per value and
  never stored, so one call cannot change the result of another.
- **Values, not columns.** Every rule works on one value, so a column's other values (or its
  pandas dtype) never change a value's result. In particular dates are parsed element by
  element: pandas >= 2 would infer one format per column.
- **No crash, missing instead.** Absent ``Ethnicity`` / ``Sex`` columns give ``ethnicity`` /
  ``sex`` columns that are all missing (the original raised KeyError). FiO2 values such as
  "2 L", "." or "null" give missing (the original raised AttributeError). A DICOM age of None
  or NaN gives missing. ``PMH h1pertension`` without ``PMH hypertension`` builds
  ``pmh_hypertension`` from the typo column alone. Unhashable values (lists, dicts) are
  treated as unmatched.
- **No trimming**: like the reference, ethnicity and sex codes are matched case-insensitively
  but not trimmed ("A " is Unknown).
- **Sex** values are converted to a string first, so integer 0/1 map to F/M whatever else the
  column holds; a float holding a whole number (1.0, as pandas makes of an integer column with
  gaps) is read as that integer.
- **Pack year history**: only string values are read (first run of digits); numbers give
  missing, as the original does in a mixed column and as section 7 asks for a numbers-only
  column (where the original raised).
- **Age** is floored; non-numeric, boolean and non-finite values give NaN.
- **Dates**: two-digit years are 20xx. ``swabdate`` accepts day-first D/M/Y (separators
  ``/ - .``, month-first when the second number cannot be a month), ISO ``YYYY-MM-DD``,
  ``YYYY/MM/DD``, ``YYYYMMDD`` and "5 April 2020"; a trailing time is ignored; non-strings
  (Excel serials) are NaT.
- **Dtypes**: numeric columns (including ``age``, ``fio2``, ``age_update``) are float64,
  dates datetime64[ns], binary columns pandas ``boolean`` (nullable), text results ``str``.
- ``pmh_diabetes_mellitus_type_2`` is only created when the current column
  ``PMH diabetes mellitus type II`` exists (as in master); "Yes" stays missing.
- ``sex_update`` falls back to the DICOM sex when ``sex`` is "Unknown" **or missing**, and only
  when the chosen image row has a string ``PatientSex``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import numbers
import re
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from warehouse.dicom.values import dicom_age_years

__all__ = [
    "BINARY_COLUMNS",
    "CATEGORY_COLUMNS",
    "CLIP_RANGES",
    "HEADER_FIXES",
    "NUMERIC_COLUMNS",
    "TEST_RESULT_COLUMNS",
    "US_DATE_COLUMNS",
    "age_years",
    "blood_pressure",
    "clean_column_name",
    "clean_ethnicity",
    "clean_patient_table",
    "clean_sex",
    "fill_from_dicom",
    "fio2_percent",
    "h1pertension_flag",
    "pack_years",
    "parse_swab_date",
    "parse_swab_dates",
    "parse_us_date",
    "test_result",
    "to_binary",
    "to_category",
    "to_number",
]

# --------------------------------------------------------------------------------------------
# Field lists (raw names are exact: case, spaces and typos matter)
# --------------------------------------------------------------------------------------------

NUMERIC_COLUMNS = (
    "Duration of symptoms",
    "Respiratory rate on admission",
    "Heart rate on admission",
    "NEWS2 score on arrival",
    "APACHE score on ITU arrival",
    "PaO2",
    "Creatinine on admission",
    "D-dimer on admission",
    "Fibrinogen  if d-dimer not performed",
    "WCC on admission",
    "Lymphocyte count on admission",
    "Platelet count on admission",
    "CRP on admission",
    "Urea on admission",
    "O2 saturation",
    "Temperature on admission",
    "Ferritin",
    "Troponin I",
    "Troponin T",
)

#: Cleaned column -> inclusive kept range; values outside become NaN.
CLIP_RANGES = MappingProxyType(
    {
        "temperature_on_admission": (25.0, 45.0),
        "fibrinogen__if_d-dimer_not_performed": (0.0, 100.0),
        "urea_on_admission": (0.0, 100.0),
        "o2_saturation": (0.0, 100.0),
    }
)

US_DATE_COLUMNS = (
    "Date of Positive Covid Swab",
    "Date of acquisition of 1st RT-PCR",
    "Date of acquisition of 2nd RT-PCR",
    "Date of result of 1st RT-PCR",
    "Date of result of 2nd RT-PCR",
    "Date of admission",
    "Date of ITU admission",
    "Date of intubation",
    "Date of 1st CXR",
    "Date of 2nd CXR",
    "Date last known alive",
    "Date of death",
)

BINARY_COLUMNS = (
    "PMH hypertension",
    "PMH CKD",
    "Current ACEi use",
    "Current Angiotension receptor blocker use",
    "Current NSAID used",
    "ITU admission",
    "Intubation",
    "Death",
)

#: Raw categorical column -> the digit strings kept (the "Unknown" codes are left out).
CATEGORY_COLUMNS = MappingProxyType(
    {
        "Smoking status": frozenset({"0", "1", "2"}),
        "If CKD, stage": frozenset({"2", "3", "4", "5"}),
        "PMH CVS disease": frozenset({"0", "1", "2", "3", "4"}),
        "PMH Lung disease": frozenset({"0", "1", "2", "3", "4", "5"}),
        "CXR severity": frozenset({"1", "2", "3"}),
        "CXR severity 3": frozenset({"1", "2", "3"}),
        "COVID CODE": frozenset({"0", "1", "2", "3"}),
        "COVID CODE 2": frozenset({"0", "1", "2", "3"}),
    }
)

TEST_RESULT_COLUMNS = ("1st RT-PCR result", "2nd RT-PCR result", "Final COVID Status")

#: Header typos fixed after cleaning (cleaned name -> corrected name).
HEADER_FIXES = MappingProxyType({"cxr_severity_3": "cxr_severity_2"})

# --------------------------------------------------------------------------------------------
# Mappings (read-only)
# --------------------------------------------------------------------------------------------


def _ethnicity_mapping() -> dict[str, str]:
    groups = {
        "White": ["A", "B", "C", "C2", "C3", *(f"C{c}" for c in "ABCDEFGHJKLMNPQRSTUVWXY")],
        "Multiple": ["D", "E", "F", "G", *(f"G{c}" for c in "ABCDEF")],
        "Asian": ["H", "J", "K", "L", "R", *(f"L{c}" for c in "ABCDEFGHJK")],
        "Black": ["M", "N", "P", *(f"P{c}" for c in "ABCDE")],
        "Other": ["S", *(f"S{c}" for c in "ABCDE")],
    }
    texts = {
        "Indian": "Asian",
        "Pakistani": "Asian",
        "Chinese": "Asian",
        "Any other Asian background": "Asian",
        "Caribbean": "Black",
        "African": "Black",
        "Any other Black background": "Black",
        "Any other ethnic group": "Other",
    }
    mapping = {code.lower(): group for group, codes in groups.items() for code in codes}
    mapping.update({text.lower(): group for text, group in texts.items()})
    mapping.update({group.lower(): group for group in (*groups, "Unknown")})
    return mapping


_ETHNICITY = MappingProxyType(_ethnicity_mapping())

_SEX = MappingProxyType(
    {"0": "F", "f": "F", "1": "M", "m": "M", "2": "Unknown", "3": "Unknown", "unknown": "Unknown"}
)

# Dict lookup on purpose: 0 == 0.0 == False and 1 == 1.0 == True hash alike, as in the original.
_BINARY = MappingProxyType({0: False, "0": False, "0.0": False, 1: True, "1": True, "1.0": True})

_TEST_RESULT = MappingProxyType(
    {0: "Negative", "0": "Negative", 1: "Positive", "1": "Positive"}
    | {"RNA DETECTED (SARS-CoV-2)": "Positive"}
)

# Litres/min (1-15) and Venturi mask colours to FiO2 %. "7" -> 41 is in the source table (sic).
_FIO2_TABLE = MappingProxyType(
    {
        "1": 25,
        "2": 29,
        "3": 33,
        "4": 37,
        "5": 41,
        "6": 45,
        "7": 41,
        "8": 47,
        "9": 53,
        "10": 60,
        "11": 80,
        "12": 85,
        "13": 90,
        "14": 95,
        "15": 100,
        "blue": 24,
        "white": 28,
        "orange": 31,
        "yellow": 35,
        "red": 40,
        "green": 60,
    }
)

_MONTHS = MappingProxyType(
    {
        name: number
        for number, full in enumerate(
            (
                "january",
                "february",
                "march",
                "april",
                "may",
                "june",
                "july",
                "august",
                "september",
                "october",
                "november",
                "december",
            ),
            start=1,
        )
        for name in (full, full[:3])
    }
    | {"sept": 9}
)

_PLAIN_DECIMAL = re.compile(r"[0-9]*\.?[0-9]*")
_BRACKETED_NUMBER = re.compile(r"\[([0-9]+\.?[0-9]+)\]")
_BRACKETED_BP = re.compile(r"\[([0-9]{2,3})/([0-9]{2,3})\]")
_FIRST_DIGITS = re.compile(r"[0-9]+")
_ALL_DIGITS = re.compile(r"[0-9]+")
_US_TOKEN = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{2,4})")
_ISO_TOKEN = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIME_SUFFIX = (
    r"(?:[ T][0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_SWAB_YEAR_FIRST = re.compile(r"([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})" + _TIME_SUFFIX)
_SWAB_COMPACT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_SWAB_DAY_FIRST = re.compile(r"([0-9]{1,2})([-/.])([0-9]{1,2})\2([0-9]{2}|[0-9]{4})" + _TIME_SUFFIX)
_SWAB_MONTH_NAME = re.compile(r"([0-9]{1,2})[ -]([A-Za-z]+)\.?[ -]([0-9]{4})" + _TIME_SUFFIX)

# Bounds of datetime64[ns], the dtype of the date columns.
_MIN_YEAR, _MAX_YEAR = 1678, 2261

# --------------------------------------------------------------------------------------------
# Per-value rules
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    """Return True for None, NaN, NaT and pandas NA (never raises, unlike ``pd.isna``)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _lookup(mapping: Mapping, value: Any, default: Any = None) -> Any:
    try:
        return mapping.get(value, default)
    except TypeError:  # unhashable (list, dict)
        return default


def clean_column_name(name: str) -> str:
    """Return the cleaned column name for a raw clinical field name.

    Lower case, spaces replaced by ``_``, commas removed.

    Parameters
    ----------
    name : str
        Raw field name, e.g. ``"If CKD, stage"``.

    Returns
    -------
    str
        Cleaned name, e.g. ``"if_ckd_stage"``.
    """
    return name.lower().replace(" ", "_").replace(",", "")


def clean_ethnicity(value: Any) -> str:
    """Map a raw ethnicity to White, Black, Asian, Multiple, Other or Unknown.

    NHS ethnic category codes (A-S and their two-character sub-codes) and a few text values
    map by table, case-insensitively. Other text containing "white" is White, else text
    containing "mixed" or "multiple" is Multiple; anything else is Unknown.

    Parameters
    ----------
    value : Any
        Raw ``Ethnicity`` value.

    Returns
    -------
    str
        The ethnic group.
    """
    if not isinstance(value, str):
        return "Unknown"
    key = value.lower()
    group = _ETHNICITY.get(key)
    if group is not None:
        return group
    if "white" in key:
        return "White"
    if "mixed" in key or "multiple" in key:
        return "Multiple"
    return "Unknown"


def _as_text(value: Any) -> str:
    """``str(value)``, but a float holding a whole number is written as that integer."""
    if isinstance(value, float | np.floating) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def clean_sex(value: Any) -> str:
    """Map a raw sex code to F, M or Unknown.

    "0"/"f" is F, "1"/"m" is M (case-insensitive, after conversion to a string); everything
    else, including "Male", "U" and missing values, is Unknown.

    Parameters
    ----------
    value : Any
        Raw ``Sex`` value.

    Returns
    -------
    str
        "F", "M" or "Unknown".
    """
    return _SEX.get(_as_text(value).lower(), "Unknown")


def to_number(value: Any) -> float:
    """Read a clinical measurement as a float.

    A plain non-negative decimal is used as it is; otherwise the first bracketed number of at
    least two digits (``"[55] - 2020-03-27"``); otherwise NaN (negatives, exponents, units,
    ``"[5]"``).

    Parameters
    ----------
    value : Any
        Raw value (string or number).

    Returns
    -------
    float
        The number, or NaN.
    """
    text = str(value)
    if _PLAIN_DECIMAL.fullmatch(text) and text not in ("", "."):
        return float(text)
    match = _BRACKETED_NUMBER.search(text)
    if match:
        return float(match.group(1))
    return math.nan


def blood_pressure(value: Any) -> tuple[float, float]:
    """Read a blood pressure value as ``(systolic, diastolic)``.

    A plain number is returned for both parts (the caller takes the part its column holds);
    otherwise a bracketed ``[SSS/DDD]`` pair (2-3 digits each) is split; otherwise NaN. An
    unbracketed "120/80" is NaN.

    Parameters
    ----------
    value : Any
        Raw ``Systolic BP`` or ``Diastolic BP`` value.

    Returns
    -------
    tuple of float
        Systolic and diastolic pressure, NaN where unknown.
    """
    text = str(value)
    if _PLAIN_DECIMAL.fullmatch(text) and text not in ("", "."):
        number = float(text)
        return number, number
    match = _BRACKETED_BP.search(text)
    if match:
        return float(match.group(1)), float(match.group(2))
    return math.nan, math.nan


def age_years(value: Any) -> float:
    """Read an age in years and floor it (45.9 -> 45.0); no range check.

    Parameters
    ----------
    value : Any
        Raw ``Age`` value.

    Returns
    -------
    float
        The floored age, or NaN when the value is not a finite number.
    """
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return math.nan
    else:
        return math.nan
    return float(math.floor(number)) if math.isfinite(number) else math.nan


def _timestamp(year: int, month: int, day: int) -> pd.Timestamp:
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        return pd.NaT
    try:
        return pd.Timestamp(dt.date(year, month, day))
    except ValueError:
        return pd.NaT


def _full_year(text: str) -> int:
    year = int(text)
    return 2000 + year if len(text) == 2 else year


def parse_us_date(value: Any) -> pd.Timestamp:
    """Parse a month-first clinical date.

    Only strings are read (Excel serial numbers are NaT). The first ``M/D/Y`` token anywhere
    in the text is read month-first, or day-first when its first number cannot be a month
    ("31/03/2020" -> 2020-03-31); two-digit years are 20xx. Without such a token, the first
    ``YYYY-MM-DD`` token is read ("[Text] - 2020-03-27"). Quirk kept from the reference:
    "2020/03/04" contains the token "20/03/04" and becomes 2004-03-20.

    Parameters
    ----------
    value : Any
        Raw date value.

    Returns
    -------
    pandas.Timestamp
        The date, or NaT.
    """
    if not isinstance(value, str):
        return pd.NaT
    match = _US_TOKEN.search(value)
    if match:
        first, second, year_text = match.groups()
        if len(year_text) == 3:
            return pd.NaT
        first, second = int(first), int(second)
        month, day = (second, first) if first > 12 else (first, second)
        return _timestamp(_full_year(year_text), month, day)
    match = _ISO_TOKEN.search(value)
    if match:
        year, month, day = (int(part) for part in match.groups())
        return _timestamp(year, month, day)
    return pd.NaT


def parse_swab_date(value: Any) -> pd.Timestamp:
    """Parse a day-first ``SwabDate`` value, on its own.

    Accepted (whole string, surrounding spaces ignored, any trailing time ignored):
    ``D/M/Y`` with ``/``, ``-`` or ``.`` separators, read day-first, or month-first when the
    second number cannot be a month ("05/16/2020" -> 2020-05-16); year-first ``YYYY-MM-DD``
    (also with ``/`` or ``.``); ``YYYYMMDD``; and "5 April 2020" / "5-Apr-2020".
    Two-digit years are 20xx. Anything else, including non-strings, is NaT.

    Parameters
    ----------
    value : Any
        Raw ``SwabDate`` value.

    Returns
    -------
    pandas.Timestamp
        The date, or NaT.
    """
    if not isinstance(value, str):
        return pd.NaT
    text = value.strip()
    match = _SWAB_YEAR_FIRST.fullmatch(text)
    if match:
        return _timestamp(int(match.group(1)), int(match.group(3)), int(match.group(4)))
    match = _SWAB_COMPACT.fullmatch(text)
    if match:
        year, month, day = (int(part) for part in match.groups())
        return _timestamp(year, month, day)
    match = _SWAB_DAY_FIRST.fullmatch(text)
    if match:
        day, month = int(match.group(1)), int(match.group(3))
        if month > 12 and day <= 12:
            day, month = month, day
        return _timestamp(_full_year(match.group(4)), month, day)
    match = _SWAB_MONTH_NAME.fullmatch(text)
    if match:
        named = _MONTHS.get(match.group(2).lower())
        if named is None:
            return pd.NaT
        return _timestamp(int(match.group(3)), named, int(match.group(1)))
    return pd.NaT


def parse_swab_dates(value: Any) -> list[dict[str, Any]]:
    """Parse a ``SwabDates`` list of ``{"SwabDate": ..., "SwabStatus": ...}`` objects.

    Parameters
    ----------
    value : Any
        Raw ``SwabDates`` value.

    Returns
    -------
    list of dict
        One ``{"SwabDate": Timestamp or NaT, "SwabStatus": raw status}`` per element (an
        element that is not an object gives NaT and None); ``[]`` when the value is not a list.
    """
    if not isinstance(value, list | tuple | np.ndarray):
        return []
    parsed = []
    for item in value:
        item = item if isinstance(item, Mapping) else {}
        parsed.append(
            {
                "SwabDate": parse_swab_date(item.get("SwabDate")),
                "SwabStatus": item.get("SwabStatus"),
            }
        )
    return parsed


def to_binary(value: Any) -> bool | None:
    """Map a No/Yes code to a bool.

    0, "0", "0.0", 0.0 and False are False; 1, "1", "1.0", 1.0 and True are True; everything
    else (2 = Unknown, "Yes", blanks) is missing.

    Parameters
    ----------
    value : Any
        Raw value.

    Returns
    -------
    bool or None
        The flag, or None when missing.
    """
    return _lookup(_BINARY, value)


def h1pertension_flag(value: Any) -> bool | None:
    """Read the ``PMH h1pertension`` typo column: the strings "1" and "1es" are True.

    Parameters
    ----------
    value : Any
        Raw value (the integer 1 is not matched, as in the reference).

    Returns
    -------
    bool or None
        True, or None when the value says nothing.
    """
    return True if isinstance(value, str) and value in ("1", "1es") else None


def to_category(value: Any, allowed: Collection[str]) -> str | None:
    """Read a categorical code: the first run of digits, kept only if allowed.

    "5 - Lung Ca" -> "5", "CVCX2" -> "2", "2a" -> "2", 1.0 -> "1".

    Parameters
    ----------
    value : Any
        Raw value, converted to a string first.
    allowed : collection of str
        The digit strings to keep.

    Returns
    -------
    str or None
        The code as a digit string, or None.
    """
    match = _FIRST_DIGITS.search(str(value))
    if match and match.group() in allowed:
        return match.group()
    return None


def pack_years(value: Any) -> str | None:
    """Read ``Pack year history``: the first run of digits of a string, no range check.

    "20-30" -> "20", "approx 15" -> "15". Non-string values are missing.

    Parameters
    ----------
    value : Any
        Raw value.

    Returns
    -------
    str or None
        The digits, or None.
    """
    if not isinstance(value, str):
        return None
    match = _FIRST_DIGITS.search(value)
    return match.group() if match else None


def test_result(value: Any) -> str | None:
    """Map an RT-PCR or final COVID result to "Positive" / "Negative".

    0/"0" is Negative; 1/"1" and "RNA DETECTED (SARS-CoV-2)" are Positive; anything else
    (including "Positive", "1.0" and blanks) is missing.

    Parameters
    ----------
    value : Any
        Raw value.

    Returns
    -------
    str or None
        "Positive", "Negative" or None.
    """
    return _lookup(_TEST_RESULT, value)


# Not a pytest test, despite its name (mypy knows no attributes of a function: hence the ignore).
test_result.__test__ = False  # type: ignore[attr-defined]


def fio2_percent(value: Any) -> int | None:
    """Convert a FiO2 value to an integer percentage.

    The first matching branch applies to ``s = str(value)``:

    1. ``s`` contains "." : a fraction, ``round(float(s) * 100)`` ("0.28" -> 28,
       "0.215" -> 22, "28.0" -> 2800 which is then rejected);
    2. ``s`` contains "l" or "L": litres/min or a mask colour, looked up after lower-casing
       and stripping trailing "l"s ("10L" -> 60, "Blue" -> 24);
    3. ``s`` is exactly a table key, case-sensitive ("7" -> 41, "white" -> 28, "White" -> None);
    4. otherwise ``s`` itself.

    The result is kept only if it is all digits and between 0 and 100.

    Parameters
    ----------
    value : Any
        Raw ``FiO2`` value.

    Returns
    -------
    int or None
        The percentage, or None (including for "2 L", "." and "null", which crash the original).
    """
    text = str(value)
    if "." in text:
        try:
            result = str(round(float(text) * 100))
        except (ValueError, OverflowError):
            return None
    elif "l" in text.lower():
        percent = _FIO2_TABLE.get(text.lower().rstrip("l"))
        if percent is None:
            return None
        result = str(percent)
    else:
        result = str(_FIO2_TABLE.get(text, text))
    if _ALL_DIGITS.fullmatch(result) and 0 <= int(result) <= 100:
        return int(result)
    return None


# --------------------------------------------------------------------------------------------
# Table pipeline
# --------------------------------------------------------------------------------------------


def _per_value(column: pd.Series, rule: Callable[[Any], Any], dtype: str) -> pd.Series:
    # A rule is a function of the value alone, and a column repeats a few values (dates,
    # "Yes"/"No", units) over many patients: each distinct value is cleaned once. Keyed by
    # type too (1, 1.0 and True are equal keys); a dict or list is cleaned where it is.
    done: dict[tuple[type, Any], Any] = {}
    values = []
    for value in column.tolist():
        key = (type(value), value)
        try:
            hash(key)
        except TypeError:  # (a dict or a list)
            values.append(rule(value))
            continue
        if key not in done:
            done[key] = rule(value)
        values.append(done[key])
    return pd.Series(values, index=column.index, dtype=dtype)


def _missing(index: pd.Index, dtype: str) -> pd.Series:
    return pd.Series(np.nan, index=index, dtype=dtype)


def clean_patient_table(df: pd.DataFrame) -> pd.DataFrame:
    """Apply the clinical cleaning pipeline to a raw patient table.

    Order: ethnicity, sex, numeric coercion (measurements, blood pressure, age), clipping,
    dates, binary fields, categorical fields, test results, FiO2, header fix. Raw columns are
    kept; cleaned columns are appended with the names of :func:`clean_column_name` (plus
    ``latest_swab_date``, ``pmh_diabetes_mellitus_type_2`` and ``fio2``). Each step runs only
    when its input column exists, except ``ethnicity`` and ``sex``, which are always created
    (all missing when the raw column is absent). The input frame is not modified.

    Parameters
    ----------
    df : pandas.DataFrame
        Raw patient table, one row per patient (see ``tables.patient_table``). Columns holding
        raw JSON values as Python objects give the exact reference results; in a float64
        column an integer FiO2 such as 21 reads as "21.0" (-> None), as it did in the original.

    Returns
    -------
    pandas.DataFrame
        A new frame: the raw columns followed by the cleaned ones.
    """
    index = df.index
    out: dict[str, pd.Series] = {}

    def present(name: str) -> bool:
        return name in df.columns

    # Ethnicity and sex
    out["ethnicity"] = (
        _per_value(df["Ethnicity"], clean_ethnicity, "str")
        if present("Ethnicity")
        else _missing(index, "str")
    )
    out["sex"] = (
        _per_value(df["Sex"], clean_sex, "str") if present("Sex") else _missing(index, "str")
    )

    # Numeric coercion
    for name in NUMERIC_COLUMNS:
        if present(name):
            out[clean_column_name(name)] = _per_value(df[name], to_number, "float64")
    if present("Systolic BP"):
        out["systolic_bp"] = _per_value(
            df["Systolic BP"], lambda v: blood_pressure(v)[0], "float64"
        )
    if present("Diastolic BP"):
        out["diastolic_bp"] = _per_value(
            df["Diastolic BP"], lambda v: blood_pressure(v)[1], "float64"
        )
    if present("Age"):
        out["age"] = _per_value(df["Age"], age_years, "float64")

    # Clipping (vectorised: the columns are float64 by now)
    for name, (low, high) in CLIP_RANGES.items():
        if name in out:
            out[name] = out[name].where(out[name].between(low, high))

    # Dates
    for name in US_DATE_COLUMNS:
        if present(name):
            out[clean_column_name(name)] = _per_value(df[name], parse_us_date, "datetime64[ns]")
    if present("SwabDate"):
        out["swabdate"] = _per_value(df["SwabDate"], parse_swab_date, "datetime64[ns]")
        if "date_of_positive_covid_swab" in out:
            both = pd.concat([out["date_of_positive_covid_swab"], out["swabdate"]], axis=1)
            out["latest_swab_date"] = both.max(axis=1, skipna=True).astype("datetime64[ns]")
    if present("SwabDates"):
        out["swabdates"] = _per_value(df["SwabDates"], parse_swab_dates, "object")

    # Binary fields
    for name in BINARY_COLUMNS:
        if present(name):
            out[clean_column_name(name)] = _per_value(df[name], to_binary, "boolean")
    if present("PMH h1pertension"):
        typo = _per_value(df["PMH h1pertension"], h1pertension_flag, "boolean")
        current = out.get("pmh_hypertension", _missing(index, "boolean"))
        out["pmh_hypertension"] = current.fillna(typo)
    if present("PMH diabetes mellitus type II"):
        diabetes = df["PMH diabetes mellitus type II"].astype("object")
        if present("PMH diabetes mellitus TYPE II"):
            old = df["PMH diabetes mellitus TYPE II"].astype("object")
            diabetes = diabetes.where(diabetes.notna(), old)
        out["pmh_diabetes_mellitus_type_2"] = _per_value(diabetes, to_binary, "boolean")

    # Categorical fields
    if present("Pack year history"):
        out["pack_year_history"] = _per_value(df["Pack year history"], pack_years, "str")
    for name, allowed in CATEGORY_COLUMNS.items():
        if present(name):
            out[clean_column_name(name)] = _per_value(
                df[name], functools.partial(to_category, allowed=allowed), "str"
            )

    # Test results
    for name in TEST_RESULT_COLUMNS:
        if present(name):
            out[clean_column_name(name)] = _per_value(df[name], test_result, "str")

    # FiO2
    if present("FiO2"):
        out["fio2"] = _per_value(df["FiO2"], fio2_percent, "float64")

    # Header fix (last, keeping the column's position)
    out = {HEADER_FIXES.get(name, name): column for name, column in out.items()}

    raw = df.drop(columns=[name for name in out if name in df.columns])
    return pd.concat([raw, pd.DataFrame(out, index=index)], axis=1)


def fill_from_dicom(clean_df: pd.DataFrame, image_rows_df: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``age_update`` and ``sex_update``, filling gaps from the DICOM image tables.

    For each patient one image row is chosen: rows sorted by parsed ``PatientAge``
    (:func:`dicom_age_years`) ascending with missing ages last, the last one kept. That is the
    oldest age, unless one of the patient's images has no parseable age, in which case a row
    without an age is chosen (as in the reference).

    - ``age_update`` = ``age`` when present, else the chosen row's parsed age (not floored).
    - ``sex_update`` = ``sex`` unless it is "Unknown" or missing, else the chosen row's raw
      ``PatientSex`` ("M", "F", "O", "") when that is a string; unchanged without an image.

    Parameters
    ----------
    clean_df : pandas.DataFrame
        Output of :func:`clean_patient_table` (uses ``Pseudonym``, ``age``, ``sex``).
    image_rows_df : pandas.DataFrame or None
        Image study rows of all modalities with ``Pseudonym``, ``PatientSex`` and
        ``PatientAge`` (missing columns are treated as empty).

    Returns
    -------
    pandas.DataFrame
        A new frame with ``age_update`` (float64) and ``sex_update`` (str) appended.
    """
    index = clean_df.index
    age = (
        clean_df["age"].astype("float64")
        if "age" in clean_df.columns
        else _missing(index, "float64")
    )
    sex = (
        clean_df["sex"].astype("object") if "sex" in clean_df.columns else _missing(index, "object")
    )

    chosen_age: dict[Any, float | None] = {}
    chosen_sex: dict[Any, Any] = {}
    if (
        image_rows_df is not None
        and len(image_rows_df)
        and "Pseudonym" in image_rows_df.columns
        and "Pseudonym" in clean_df.columns
    ):
        n = len(image_rows_df)

        def column(name: str) -> list:
            return image_rows_df[name].tolist() if name in image_rows_df.columns else [None] * n

        demo = pd.DataFrame(
            {
                "Pseudonym": pd.Series(column("Pseudonym"), dtype="object"),
                "PatientSex": pd.Series(column("PatientSex"), dtype="object"),
                "parsed_age": pd.Series(
                    [dicom_age_years(v) for v in column("PatientAge")], dtype="float64"
                ),
            }
        )
        chosen = (
            demo.sort_values("parsed_age", ascending=True, na_position="last", kind="stable")
            .drop_duplicates(subset="Pseudonym", keep="last")
            .set_index("Pseudonym")
        )
        chosen_age = chosen["parsed_age"].to_dict()
        chosen_sex = chosen["PatientSex"].to_dict()

    pseudonyms = (
        clean_df["Pseudonym"].tolist() if "Pseudonym" in clean_df.columns else [None] * len(index)
    )
    age_update = [
        a if not _is_missing(a) else _lookup(chosen_age, p)
        for a, p in zip(age.tolist(), pseudonyms, strict=True)
    ]
    sex_update = []
    for s, p in zip(sex.tolist(), pseudonyms, strict=True):
        if _is_missing(s) or s == "Unknown":
            dicom_sex = _lookup(chosen_sex, p)
            if isinstance(dicom_sex, str):
                s = dicom_sex
        sex_update.append(s)

    result = clean_df.drop(columns=[c for c in ("age_update", "sex_update") if c in clean_df])
    return result.assign(
        age_update=pd.Series(age_update, index=index, dtype="float64"),
        sex_update=pd.Series(sex_update, index=index, dtype="str"),
    )
