"""Pure table builders of the ``dataprocess`` graph: no storage, no bonobo.

From values the graph has already read (file names, JSON documents, listing entries) these
functions build the dashboard tables of ``reference/clinical-data.md`` section 4 and the public
statistics of section 4.1:

- choosing each patient's clinical record (:func:`choose_patient_file`,
  :func:`flatten_clinical_record`) and the patient table (:func:`patient_table`);
- the per-study image tables (:func:`metadata_row`, :func:`study_table`);
- storage per prefix (:func:`storage_by_prefix`, :func:`storage_table`);
- the public statistics (:func:`public_counts`) and their files, small counts suppressed as
  the public page suppresses them (:func:`public_statistics`).

Cleaning the patient table is in :mod:`warehouse.dashboard.cleaning`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from warehouse.core import keys
from warehouse.dashboard.cells import csv_text
from warehouse.dashboard.cleaning import (
    BINARY_COLUMNS,
    CATEGORY_COLUMNS,
    NUMERIC_COLUMNS,
    TEST_RESULT_COLUMNS,
    US_DATE_COLUMNS,
)
from warehouse.dashboard.figures import public_sections

__all__ = [
    "CLINICAL_FIELDS",
    "DICOM_FIELDS",
    "PATIENT_ID_TAG",
    "PATIENT_META_COLUMNS",
    "STORAGE_PREFIXES",
    "STUDY_COLUMNS",
    "choose_patient_file",
    "dictionary_fields",
    "flatten_clinical_record",
    "metadata_row",
    "patient_table",
    "public_counts",
    "public_statistics",
    "storage_by_prefix",
    "storage_table",
    "study_table",
]

GROUPS = keys.GROUPS
MODALITIES = keys.IMAGE_FOLDERS

#: The eight storage prefixes, in the order of ``storage.csv``.
STORAGE_PREFIXES = tuple(
    prefix
    for group in GROUPS
    for prefix in (*(f"{group}/{modality}/" for modality in MODALITIES), f"{group}/")
)

#: Patient table columns that come before the clinical JSON keys.
PATIENT_META_COLUMNS = (
    "filename_earliest_date",
    "filename_covid_status",
    "filename_latest_date",
    "last_modified",
    "group",
)

#: The clinical data dictionary (reference/clinical-data.md section 2, the fields the cleaning
#: rules read among them): the fields of a record that become patient table columns, exactly
#: as spelt (with the variants seen in uploads). Any other field is counted, not tabled.
CLINICAL_FIELDS = frozenset(
    {
        # 2.1 identity, administration and nesting
        "Pseudonym",
        "SubmittingCentre",
        "Hospital",
        "SwabStatus",
        "SwabDate",
        "SwabDates",
        "OtherDataSources",
        "SpecialFormatTimestamp",  # written by one site's uploader (2.1)
        # 2.2 demographics
        "Age",
        "Sex",
        "Ethnicity",
        # 2.3 dates
        *US_DATE_COLUMNS,
        # 2.4 medical history
        "Smoking status",
        "Pack year history",
        "Pack year History",
        "PMH hypertension",
        "PMH h1pertension",
        "PMH CKD",
        "If CKD, stage",
        "PMH CVS disease",
        "PMH Lung disease",
        "PMH diabetes mellitus type II",
        "PMH diabetes mellitus TYPE II",
        "PMH diabetes mellitus TYPE I",
        "Current ACEi use",
        "Current Angiotension receptor blocker use",
        "Current NSAID used",
        # 2.5 admission measurements
        *NUMERIC_COLUMNS,
        "FiO2",
        "Any supplemental oxygen: FiO2",
        "Pa02",
        "Systolic BP",
        "Diastolic BP",
        # 2.6 outcomes
        *TEST_RESULT_COLUMNS,
        "CXR severity",
        "CXR severity 3",
        "COVID CODE",
        "COVID CODE 2",
        "ITU admission",
        "ITU admission ",
        "Intubation",
        "Death",
        # what the cleaning rules read
        *BINARY_COLUMNS,
        *CATEGORY_COLUMNS,
    }
)

#: Study-table DICOM fields and their tags (DICOM JSON keys), in column order.
DICOM_FIELDS = {
    "PatientSex": "00100040",
    "PatientAge": "00101010",
    "StudyDate": "00080020",
    "AcquisitionDate": "00080022",
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "BodyPartExamined": "00180015",
    "Manufacturer": "00080070",
    "ManufacturerModelName": "00081090",
    "Modality": "00080060",
}
PATIENT_ID_TAG = "00100020"

STUDY_COLUMNS = ("Pseudonym", "group", "last_modified", *DICOM_FIELDS)


# --------------------------------------------------------------------------------------------
# Patient table
# --------------------------------------------------------------------------------------------


def choose_patient_file(names: list[str]) -> tuple[str, dt.date, dt.date, bool]:
    """Choose which of a patient's processed clinical files to load.

    The patient is positive if any file is a ``data_<date>.json``; then the latest ``data_``
    file is chosen, otherwise the latest ``status_`` file. The dates span **all** files.

    Parameters
    ----------
    names : list of str
        The patient's processed file names (``data_2021-03-01.json``,
        ``status_2021-02-15.json``); full keys are accepted too, their last part is read.
        Names of another shape are ignored.

    Returns
    -------
    tuple
        ``(chosen_name, earliest_date, latest_date, covid_positive)``; ``chosen_name`` is
        returned as given.

    Raises
    ------
    ValueError
        When no name has the expected shape.
    """
    parsed = []
    for name in names:
        found = keys.parse_clinical_name(name.rsplit("/", 1)[-1])
        if found is not None:
            parsed.append((*found, name))
    if not parsed:
        raise ValueError(f"no clinical file name of the form data_/status_<date>.json: {names}")
    positive = any(kind == "data" for kind, _, _ in parsed)
    wanted = "data" if positive else "status"
    chosen = max(name.rsplit("/", 1)[-1] for kind, _, name in parsed if kind == wanted)
    chosen_name = next(name for _, _, name in parsed if name.rsplit("/", 1)[-1] == chosen)
    dates = [date for _, date, _ in parsed]
    return chosen_name, min(dates), max(dates), positive


def flatten_clinical_record(record: dict) -> dict:
    """Merge ``OtherDataSources.SegmentationData`` into the top level of a clinical record.

    Nested values win over same-named top-level ones; ``OtherDataSources`` itself is kept.
    The input is not modified.

    Parameters
    ----------
    record : dict
        One parsed clinical JSON document.

    Returns
    -------
    dict
        The flattened record (top-level keys first, then new nested keys).
    """
    flat = dict(record)
    other = record.get("OtherDataSources")
    segmentation = other.get("SegmentationData") if isinstance(other, Mapping) else None
    if isinstance(segmentation, Mapping):
        flat.update(segmentation)
    return flat


#: The first and last days a datetime64[ns] column holds.
_FIRST_DAY = (pd.Timestamp.min + pd.Timedelta(days=1)).date()
_LAST_DAY = pd.Timestamp.max.date()


def dictionary_fields(record: Mapping) -> tuple[dict, list[str]]:
    """Split a flattened clinical record into the fields that become patient table columns
    (those of :data:`CLINICAL_FIELDS`) and the names of the others.

    Parameters
    ----------
    record : mapping
        A flattened clinical record (:func:`flatten_clinical_record`).

    Returns
    -------
    tuple
        ``(fields, left_out)``: the dictionary's fields with their values, in the record's
        order, and the other field names, in the record's order.
    """
    fields = {}
    left_out = []
    for name, value in record.items():
        if name in CLINICAL_FIELDS:
            fields[name] = value
        else:
            left_out.append(name)
    return fields, left_out


def _as_date(value: Any) -> Any:
    """A date-like value as a ``datetime.date`` (timezones dropped), or None: also for a day
    that a datetime64[ns] column cannot hold (a junk file's year 2300, a StudyDate of 0001)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, dt.datetime):
        day = value.date()
    elif isinstance(value, dt.date):
        day = value
    else:
        try:
            stamp = pd.Timestamp(value)
        except (ValueError, TypeError):
            return None
        if pd.isna(stamp):
            return None
        day = stamp.date()
    return day if _FIRST_DAY <= day <= _LAST_DAY else None


def date_column(values: Iterable) -> pd.Series:
    """Date-like values as a datetime64[ns] column (midnight); a value that is no date, or a
    day out of the column's range, is missing (NaT)."""
    dates = [_as_date(value) for value in values]
    return pd.Series(pd.to_datetime(dates), dtype="datetime64[ns]")


def patient_table(rows: list[dict]) -> pd.DataFrame:
    """Build ``patient.csv``: one row per patient.

    Parameters
    ----------
    rows : list of dict
        Each a flattened clinical record (:func:`flatten_clinical_record`) plus
        ``filename_earliest_date``, ``filename_covid_status``, ``filename_latest_date``,
        ``last_modified`` (S3 LastModified, any date or datetime) and ``group``.

    Returns
    -------
    pandas.DataFrame
        Columns: the five metadata columns (dates as datetime64[ns] at midnight, status as
        bool, group as str), then the union of the records' keys in first-seen order. The JSON
        columns have object dtype and hold the values exactly as parsed (an integer stays an
        integer, ``OtherDataSources`` stays a dict); a key absent from a record is NaN. When a
        record has a key named like a metadata column, the metadata value wins.
    """
    json_columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in PATIENT_META_COLUMNS:
                json_columns.setdefault(key, None)

    data: dict[str, pd.Series] = {
        "filename_earliest_date": date_column([r.get("filename_earliest_date") for r in rows]),
        "filename_covid_status": pd.Series(
            [bool(r.get("filename_covid_status")) for r in rows], dtype="bool"
        ),
        "filename_latest_date": date_column([r.get("filename_latest_date") for r in rows]),
        "last_modified": date_column([r.get("last_modified") for r in rows]),
        "group": pd.Series([r.get("group") for r in rows], dtype="str"),
    }
    # (pandas reads the records a row at a time, each dict once: six times faster than a
    # column at a time over tens of thousands of dicts; object dtype keeps every value as it
    # is, a key a record lacks is NaN)
    records = pd.DataFrame(rows, columns=list(json_columns), dtype="object")
    return pd.concat([pd.DataFrame(data, columns=list(PATIENT_META_COLUMNS)), records], axis=1)


# --------------------------------------------------------------------------------------------
# Image study tables
# --------------------------------------------------------------------------------------------


def _element_text(element: Any) -> str | None:
    """The raw string of one DICOM JSON element; multiple values joined with a backslash.

    A present element without a value is ""; a malformed one (top-level null, a non-list
    ``Value``, a non-string item) is None.
    """
    if not isinstance(element, Mapping):
        return None
    if "Value" not in element:
        return None if ("InlineBinary" in element or "BulkDataURI" in element) else ""
    values = element["Value"]
    if not isinstance(values, list):
        return None
    parts = []
    for item in values:
        if item is None:
            parts.append("")
        elif isinstance(item, str):
            parts.append(item.strip())
        else:
            return None
    return "\\".join(parts)


def _element(dicom_json: Mapping, tag: str) -> Any:
    if tag in dicom_json:
        return dicom_json[tag]
    return dicom_json.get(tag.lower())


def metadata_row(dicom_json: object) -> dict:
    """Read the study-table fields from one DICOM JSON metadata file.

    Reads the tags directly, so both forms are accepted: valid DICOM JSON (PS3.18 F.2, binary
    elements without a value) and the original's ``"InlineBinary": null`` / top-level ``null``
    form. Elements outside the eleven tags read here are never looked at.

    Parameters
    ----------
    dicom_json : dict
        The parsed JSON document (tags as 8 hex digits, upper or lower case).

    Returns
    -------
    dict
        ``Pseudonym`` (from PatientID (0010,0020)) and the fields of :data:`DICOM_FIELDS`, as
        raw DICOM strings (e.g. ``"045Y"``, ``"20200401"``). An absent or malformed element is
        None; a present element without a value is "".

    Raises
    ------
    TypeError
        When ``dicom_json`` is not a JSON object.
    """
    if not isinstance(dicom_json, Mapping):
        raise TypeError(f"DICOM JSON must be an object, not {type(dicom_json).__name__}")
    row = {"Pseudonym": _element_text(_element(dicom_json, PATIENT_ID_TAG))}
    for field, tag in DICOM_FIELDS.items():
        row[field] = _element_text(_element(dicom_json, tag))
    return row


def study_table(rows: list[dict]) -> pd.DataFrame:
    """Build one modality's study table (``ct.csv``, ``xray.csv`` or ``mri.csv``).

    Parameters
    ----------
    rows : list of dict
        One per study: :func:`metadata_row` output plus ``group`` and ``last_modified``.
        Rows repeating a (group, Pseudonym, StudyInstanceUID) already seen are dropped.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`STUDY_COLUMNS`: ``Pseudonym``, ``group``, ``last_modified``
        (datetime64[ns] date), then the DICOM fields as ``str`` (missing as NaN).
    """
    seen = set()
    kept = []
    for row in rows:
        uid = row.get("StudyInstanceUID")
        if uid:
            key = (row.get("group"), row.get("Pseudonym"), uid)
            if key in seen:
                continue
            seen.add(key)
        kept.append(row)

    data: dict[str, pd.Series] = {}
    for column in STUDY_COLUMNS:
        values = [row.get(column) for row in kept]
        if column == "last_modified":
            data[column] = date_column(values)
        else:
            texts = [value if isinstance(value, str) else None for value in values]
            data[column] = pd.Series(texts, dtype="str")
    return pd.DataFrame(data, columns=list(STUDY_COLUMNS))


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def storage_by_prefix(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum object sizes by the eight storage prefixes, in one pass.

    A key counts towards its group prefix (``training/``) and, when it sits under a modality
    image folder, towards that too (``training/ct/``; ``training/ct-metadata/`` is not
    ``training/ct/``).

    Parameters
    ----------
    items : iterable of (str, int)
        ``(key, size in bytes)`` pairs, e.g. from the S3 inventory.

    Returns
    -------
    dict
        Every prefix of :data:`STORAGE_PREFIXES` (in that order) to its total bytes.
    """
    totals = dict.fromkeys(STORAGE_PREFIXES, 0)
    for key, size in items:
        group, sep, rest = key.partition("/")
        if not sep or group not in GROUPS:
            continue
        size = int(size or 0)
        totals[f"{group}/"] += size
        modality, sep, _ = rest.partition("/")
        if sep and modality in MODALITIES:
            totals[f"{group}/{modality}/"] += size
    return totals


def storage_table(sizes: Mapping[str, int]) -> pd.DataFrame:
    """Build ``storage.csv``: the eight prefixes and their total bytes.

    Parameters
    ----------
    sizes : mapping of str to int
        Prefix to bytes (e.g. :func:`storage_by_prefix`); a missing prefix counts 0 and other
        keys are ignored.

    Returns
    -------
    pandas.DataFrame
        Columns ``prefix`` (str) and ``storage`` (int64), one row per prefix in
        :data:`STORAGE_PREFIXES` order.
    """
    return pd.DataFrame(
        {
            "prefix": pd.Series(STORAGE_PREFIXES, dtype="str"),
            "storage": pd.Series(
                [int(sizes.get(prefix, 0) or 0) for prefix in STORAGE_PREFIXES], dtype="int64"
            ),
        }
    )


# --------------------------------------------------------------------------------------------
# Public statistics (docs/public/data)
# --------------------------------------------------------------------------------------------

_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _training(table: pd.DataFrame | None) -> pd.DataFrame:
    if table is None or "group" not in table.columns:
        return pd.DataFrame()
    return table[table["group"].astype("object") == "training"]


def _column_values(table: pd.DataFrame, column: str) -> list:
    return table[column].tolist() if column in table.columns else []


def _is_true(value: Any) -> bool | None:
    """Read a covid-status flag (bool, or its text after a CSV round trip)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        return None
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    return None


def _distinct(values: Iterable) -> set:
    """Distinct non-missing, non-empty values (any type: a CSV round trip may make numbers)."""
    return {
        value
        for value in values
        if value is not None and value == value and value is not pd.NA and value != ""
    }


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _gigabytes(value: float) -> str:
    return f"{value:,.0f}GB"


def _by_size_descending(items: Mapping[str, float]) -> list[tuple[str, float]]:
    # Stable: equal values keep the dict's order (CT, MRI, X-ray), as in the original script.
    return sorted(items.items(), key=lambda item: item[1], reverse=True)


def public_counts(
    patient_clean: pd.DataFrame,
    ct: pd.DataFrame | None,
    xray: pd.DataFrame | None,
    mri: pd.DataFrame | None,
    storage: pd.DataFrame | Mapping[str, int] | None,
    now: dt.datetime,
) -> dict[str, list[tuple[str, str]]]:
    """Count the public statistics, for the training group only, before any suppression.

    Parameters are those of :func:`public_statistics`.

    Returns
    -------
    dict
        File name (``stats_patients.csv``, ``stats_images.csv``, ``stats_storage.csv``,
        ``stats_submittingcentres.csv``) -> its rows, ``(label, value)``: counts with
        thousands separators, storage in decimal GB (``3,309GB``).
    """
    patients = _training(patient_clean)
    studies = {
        name: _training(table) for name, table in (("CT", ct), ("MRI", mri), ("X-ray", xray))
    }

    # Patients
    imaged = set().union(*(_distinct(_column_values(t, "Pseudonym")) for t in studies.values()))
    positive, negative = set(), set()
    for pseudonym, status in zip(
        _column_values(patients, "Pseudonym"),
        _column_values(patients, "filename_covid_status"),
        strict=True,
    ):
        flag = _is_true(status)
        if flag is True:
            positive.add(pseudonym)
        elif flag is False:
            negative.add(pseudonym)
    positive_imaged = len(positive & imaged)
    negative_imaged = len(negative & imaged)

    cutoff = pd.Timestamp(now.replace(tzinfo=None) - dt.timedelta(days=30))
    # utc=True so that naive and aware values mix; naive ones keep their wall time.
    earliest = pd.to_datetime(
        pd.Series(_column_values(patients, "filename_earliest_date"), dtype="object"),
        errors="coerce",
        utc=True,
    ).dt.tz_localize(None)
    recent = int((earliest >= cutoff).sum())

    stats_patients = [
        ("Total number of patients with images", _count(positive_imaged + negative_imaged)),
        ("Positive patients with images", _count(positive_imaged)),
        ("Negative patients with images", _count(negative_imaged)),
        ("New patients added in the last 30 days", _count(recent)),
    ]

    # Images
    study_counts = {
        f"{name} image studies": len(_distinct(_column_values(table, "StudyInstanceUID")))
        for name, table in studies.items()
    }
    stats_images = [("Total number of image studies", _count(sum(study_counts.values())))] + [
        (label, _count(n)) for label, n in _by_size_descending(study_counts)
    ]

    # Storage (decimal GB)
    if storage is None:
        sizes: dict[str, float] = {}
    elif isinstance(storage, pd.DataFrame):
        sizes = dict(
            zip(_column_values(storage, "prefix"), _column_values(storage, "storage"), strict=True)
        )
    else:
        sizes = dict(storage)
    sizes = {
        prefix: float(size or 0)
        for prefix, size in sizes.items()
        if isinstance(prefix, str) and "training" in prefix
    }
    total = sizes.get("training/", 0.0) / 1e9
    modality_storage = {
        "CT image storage": sizes.get("training/ct/", 0.0) / 1e9,
        "MRI image storage": sizes.get("training/mri/", 0.0) / 1e9,
        "X-ray image storage": sizes.get("training/xray/", 0.0) / 1e9,
    }
    stats_storage = (
        [("Total image, image metadata, and clinical data storage", _gigabytes(total))]
        + [(label, _gigabytes(gb)) for label, gb in _by_size_descending(modality_storage)]
        + [
            (
                "Clinical data and image metadata export",
                _gigabytes(total - sum(modality_storage.values())),
            )
        ]
    )

    # Submitting centres
    centres = len(_distinct(_column_values(patients, "SubmittingCentre")))
    stats_centres = [("Submitting centres (e.g. NHS trusts)", _count(centres))]

    return {
        "stats_patients.csv": stats_patients,
        "stats_images.csv": stats_images,
        "stats_storage.csv": stats_storage,
        "stats_submittingcentres.csv": stats_centres,
    }


def public_statistics(
    patient_clean: pd.DataFrame,
    ct: pd.DataFrame | None,
    xray: pd.DataFrame | None,
    mri: pd.DataFrame | None,
    storage: pd.DataFrame | Mapping[str, int] | None,
    now: dt.datetime,
) -> dict[str, str]:
    """Compute the public statistics files, for the training group only.

    Parameters
    ----------
    patient_clean : pandas.DataFrame
        The cleaned patient table (``Pseudonym``, ``group``, ``filename_covid_status``,
        ``filename_earliest_date``, ``SubmittingCentre``).
    ct, xray, mri : pandas.DataFrame or None
        Study tables (``Pseudonym``, ``group``, ``StudyInstanceUID``); None or empty when the
        warehouse has no study of that modality.
    storage : pandas.DataFrame or mapping or None
        ``storage.csv`` as a frame (``prefix``, ``storage``) or a prefix -> bytes mapping. Only
        prefixes containing "training" are used.
    now : datetime.datetime
        The time of the run: "new patients" are those whose ``filename_earliest_date`` is at
        or after ``now`` minus 30 days; the date line shows ``now``'s date. A timezone, if
        any, is dropped (clinical dates are naive).

    Returns
    -------
    dict of str to str
        File name to content for ``stats_patients.csv``, ``stats_images.csv``,
        ``stats_storage.csv``, ``stats_submittingcentres.csv`` (CSV written by
        `cells.csv_text`: no header, thousands separators, quoted only when needed) and
        ``stats_date.txt`` (one sentence, no newline). The counts are published as the public
        page shows them (`figures.public_sections`): a count under 10, and a count from which
        one could be worked out, reads ``fewer than 10`` or ``suppressed``.
    """
    counted = public_counts(patient_clean, ct, xray, mri, storage, now)
    # Published as the public page shows them: small counts, and those that give one away,
    # hidden (the page's rule, `figures.public_sections`).
    files = {
        section.file: csv_text(
            pd.DataFrame([(f.label, f.shown) for f in section.figures], dtype="object"),
            header=False,
        )
        for section in public_sections(counted)
    }
    stats_date = (
        f"This information was last updated on {now.day} {_MONTH_NAMES[now.month - 1]} {now.year}."
    )
    return {**files, "stats_date.txt": stats_date}
