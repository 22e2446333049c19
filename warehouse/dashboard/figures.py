"""The figures behind the dashboard pages: a batch's tables in, small tidy tables out.

Each function here computes what one chart (or one line of figures) of the pages shows, as a
list of plain records (``dict`` of ``str``, ``int`` and ``float``) that the chart draws and
shows on hover. They are pure: no storage, no bonobo, no chart library. The pages themselves
are put together in :mod:`warehouse.dashboard.pages`.

Dates are ISO strings (``2021-01-04``). Groups are ``training`` and ``validation``.

Internal figures (both groups): :func:`header_totals`, :func:`patients_over_time`,
:func:`images_over_time`, :func:`status_by_centre`, :func:`modality_counts`,
:func:`split_shares`, :func:`age_bands`, :func:`sexes`, :func:`equipment`,
:func:`storage_use`, :func:`identifying_by_site`, :func:`loader_run`.

Public figures (training only, counts under :data:`SUPPRESSION_THRESHOLD` suppressed, and
the counts that would give one away): :func:`public_sections` decides, once, what the
``stats_*.csv`` files hold; the page reads those files (:func:`public_figures`), so the page and
the files can never disagree.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from warehouse.core import keys
from warehouse.core.config import PipelineConfig, nfc
from warehouse.core.report import report_time

__all__ = [
    "COMPLEMENT_MARK",
    "GROUPS",
    "Hidden",
    "MODALITY_LABELS",
    "NOT_GIVEN",
    "NO_CENTRE",
    "STUDY_IMAGE_COLUMNS",
    "SUPPRESSION_THRESHOLD",
    "PublicFigure",
    "PublicSection",
    "SMALL_MARK",
    "age_bands",
    "equipment",
    "header_totals",
    "identifying_by_site",
    "images_over_time",
    "loader_report_problem",
    "loader_run",
    "modality_counts",
    "patients_over_time",
    "public_figures",
    "public_sections",
    "sexes",
    "split_shares",
    "status_by_centre",
    "storage_use",
    "suppress",
]

GROUPS = keys.GROUPS
#: Study table (modality folder) -> the name the pages show.
MODALITY_LABELS = {"ct": "CT", "xray": "X-ray", "mri": "MRI"}
#: The public page shows no count under this (per cell), see `suppress`.
SUPPRESSION_THRESHOLD = 10
#: Shown for a patient whose record names no centre.
NO_CENTRE = "(no SubmittingCentre)"
#: Shown for an empty or absent DICOM value (manufacturer, body part, view position).
NOT_GIVEN = "(not given)"
#: How many values of a DICOM attribute are charted; the others are summed as one bar.
TOP_VALUES = 12
#: How many unfiled keys of the last loader run are listed.
RECENT_UNFILED = 20
#: Columns of the ``study_images`` table: images filed per study folder and filing date.
STUDY_IMAGE_COLUMNS = ("group", "modality", "Pseudonym", "StudyInstanceUID", "filed", "images")

_AGE_BANDS = (*(f"{low}-{low + 9}" for low in range(0, 90, 10)), "90+")
UNKNOWN = "unknown"


# --------------------------------------------------------------------------------------------
# Reading table values
# --------------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any, missing: str) -> str:
    """A categorical value as text; missing and blank values become ``missing``."""
    if _missing(value):
        return missing
    text = str(value).strip()
    return text or missing


def _day(value: Any) -> str | None:
    """A date-like value as ``YYYY-MM-DD`` (None when missing or unreadable)."""
    if _missing(value):
        return None
    if isinstance(value, dt.datetime | pd.Timestamp):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(stamp) else stamp.date().isoformat()


def _flag(value: Any) -> bool | None:
    """A covid-status flag: bool, or its text after a CSV round trip."""
    if isinstance(value, bool):
        return value
    if _missing(value):
        return None
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    return None


def _column(table: pd.DataFrame | None, name: str) -> list:
    if table is None or name not in table.columns:
        return [None] * (0 if table is None else len(table))
    return table[name].tolist()


def _records(table: pd.DataFrame | None, *names: str) -> Iterable[tuple]:
    return zip(*(_column(table, name) for name in names), strict=True)


def _weights(images: pd.DataFrame) -> list[int]:
    """How many images each row of ``images`` stands for: its ``images`` count, or one."""
    if "images" in images.columns:
        return [int(n) for n in images["images"].tolist()]
    return [1] * len(images)


def _group(value: Any) -> str | None:
    return value if value in GROUPS else None


def _centres(patient_clean: pd.DataFrame) -> dict[str, str]:
    """Pseudonym -> submitting centre, from the patient table."""
    return {
        str(pseudonym): _text(centre, NO_CENTRE)
        for pseudonym, centre in _records(patient_clean, "Pseudonym", "SubmittingCentre")
        if not _missing(pseudonym)
    }


# --------------------------------------------------------------------------------------------
# Internal figures
# --------------------------------------------------------------------------------------------


def header_totals(
    patient_clean: pd.DataFrame,
    studies: Mapping[str, pd.DataFrame],
    study_images: pd.DataFrame | None,
    storage: pd.DataFrame,
) -> dict[str, dict[str, int]]:
    """The totals of the dashboard's header line, per group and overall.

    Parameters
    ----------
    patient_clean : pandas.DataFrame
        The cleaned patient table (``group``).
    studies : mapping
        Modality folder -> study table (``group``); one row per study.
    study_images : pandas.DataFrame or None
        The ``study_images`` table (``group``, ``images``).
    storage : pandas.DataFrame
        ``storage.csv`` (``prefix``, ``storage``).

    Returns
    -------
    dict
        ``patients``, ``studies``, ``images``, ``bytes`` -> ``{"training": n, "validation": n,
        "all": n}``.
    """
    totals: dict[str, dict[str, int]] = {}

    def add(name: str, pairs: Iterable[tuple[Any, int]]) -> None:
        counts = dict.fromkeys(GROUPS, 0)
        for group, n in pairs:
            if _group(group):
                counts[group] += int(n)
        totals[name] = {**counts, "all": sum(counts.values())}

    add("patients", ((group, 1) for group in _column(patient_clean, "group")))
    add(
        "studies",
        ((group, 1) for table in studies.values() for group in _column(table, "group")),
    )
    add("images", _records(study_images, "group", "images"))
    sizes = dict(_records(storage, "prefix", "storage"))
    add("bytes", ((group, sizes.get(f"{group}/", 0) or 0) for group in GROUPS))
    return totals


def _cumulative(events: Counter, value_name: str) -> list[dict]:
    """Per (centre, group) series: the cumulative sum at each date where it changes."""
    series: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for (date, centre, group), n in events.items():
        series[(centre, group)].append((date, n))
    records = []
    for (centre, group), points in sorted(series.items()):
        total = 0
        for date, n in sorted(points):
            total += n
            records.append(
                {"date": date, "centre": centre, "group": group, value_name: total, "new": n}
            )
    return records


def patients_over_time(patient_clean: pd.DataFrame) -> list[dict]:
    """Cumulative patients by first upload date, one series per submitting centre and group.

    A patient counts from ``filename_earliest_date``: the upload folder date of its first
    clinical file.

    Returns
    -------
    list of dict
        ``date``, ``centre``, ``group``, ``patients`` (cumulative in that series, up to and
        including ``date``) and ``new`` (patients first uploaded that day), for each date
        where a series grows; sorted by centre, group and date.
    """
    events: Counter = Counter()
    for date, centre, group in _records(
        patient_clean, "filename_earliest_date", "SubmittingCentre", "group"
    ):
        day = _day(date)
        if day and _group(group):
            events[(day, _text(centre, NO_CENTRE), group)] += 1
    return _cumulative(events, "patients")


def images_over_time(
    study_images: pd.DataFrame | None,
    patient_clean: pd.DataFrame,
    images: pd.DataFrame | None = None,
) -> list[dict]:
    """Cumulative images by date, one series per centre and group.

    With the image catalogue (``images``: one row per filed image, or per combination of
    values with its number of images in an ``images`` column) the date is each image's
    upload date (its raw upload folder; an image whose upload date is not known counts on the
    date it was filed, when ``study_images`` has it, else not at all). Without it, the
    warehouse keeps no upload date for an image: ``filed`` (the date of its metadata file)
    stands for it. An image's centre is its patient's (``NO_CENTRE`` when the patient has no
    row in the patient table).

    Returns
    -------
    list of dict
        ``date``, ``centre``, ``group``, ``images`` (cumulative) and ``new``, as in
        `patients_over_time`.
    """
    centres = _centres(patient_clean)
    events: Counter = Counter()
    if images is not None and len(images):
        for group, patient, uploaded, n in zip(
            _column(images, "group"),
            _column(images, "PatientID"),
            _column(images, "upload_date"),
            _weights(images),
            strict=True,
        ):
            day = _day(uploaded)
            if day and _group(group):
                events[(day, centres.get(str(patient), NO_CENTRE), group)] += n
        return _cumulative(events, "images")
    for group, pseudonym, filed, n in _records(
        study_images, "group", "Pseudonym", "filed", "images"
    ):
        day = _day(filed)
        if day and _group(group):
            events[(day, centres.get(str(pseudonym), NO_CENTRE), group)] += int(n)
    return _cumulative(events, "images")


def status_by_centre(patient_clean: pd.DataFrame) -> list[dict]:
    """Positive and negative patients by submitting centre and group.

    A patient is positive when it has a ``data_`` clinical file (``filename_covid_status``).

    Returns
    -------
    list of dict
        ``centre``, ``group``, ``status`` (``positive`` / ``negative``), ``patients``; every
        combination of a centre present in the table, a group and a status, zeros included;
        sorted by centre.
    """
    counts: Counter = Counter()
    centres = set()
    for centre, group, status in _records(
        patient_clean, "SubmittingCentre", "group", "filename_covid_status"
    ):
        flag = _flag(status)
        if flag is None or not _group(group):
            continue
        centre = _text(centre, NO_CENTRE)
        centres.add(centre)
        counts[(centre, group, "positive" if flag else "negative")] += 1
    return [
        {
            "centre": centre,
            "group": group,
            "status": status,
            "patients": counts[(centre, group, status)],
        }
        for centre in sorted(centres)
        for group in GROUPS
        for status in ("positive", "negative")
    ]


def modality_counts(
    studies: Mapping[str, pd.DataFrame], study_images: pd.DataFrame | None
) -> list[dict]:
    """Studies and images by modality and group.

    Parameters
    ----------
    studies : mapping
        Modality folder (``ct``, ``xray``, ``mri``) -> its study table (one row per study).
    study_images : pandas.DataFrame or None
        The ``study_images`` table.

    Returns
    -------
    list of dict
        ``modality`` (``CT``, ``X-ray``, ``MRI``), ``group``, ``studies``, ``images``: one
        record per modality and group, zeros included.
    """
    study_counts: Counter = Counter()
    for folder, table in studies.items():
        for group in _column(table, "group"):
            if _group(group):
                study_counts[(folder, group)] += 1
    image_counts: Counter = Counter()
    for folder, group, n in _records(study_images, "modality", "group", "images"):
        if _group(group):
            image_counts[(folder, group)] += int(n)
    return [
        {
            "modality": label,
            "group": group,
            "studies": study_counts[(folder, group)],
            "images": image_counts[(folder, group)],
        }
        for folder, label in MODALITY_LABELS.items()
        for group in GROUPS
    ]


def split_shares(patient_clean: pd.DataFrame, config: PipelineConfig | None) -> dict | None:
    """The training share of each split site's patients, against ``training_percentage``.

    Patients are matched to the sites of ``sites.split`` as the loader matches them
    (`PipelineConfig.site_rule`: Unicode NFC, otherwise exact). ``expected_low`` and
    ``expected_high`` bound the share a fair split gives 95 % of the time with that many
    patients (normal approximation of the binomial: target +- 1.96 standard errors, clipped
    to 0..100); a share outside them is worth a look.

    Returns
    -------
    dict or None
        None without a config. Otherwise ``target`` (the percentage) and ``sites``: one record
        per split site of the config, in its order, with ``site``, ``training``,
        ``validation``, ``patients``, ``share`` (training percentage, None without patients),
        ``expected_low`` and ``expected_high`` (None without patients).
    """
    if config is None:
        return None
    target = config.training_percentage
    sites = [name for name, rule in config.site_rules.items() if rule == "split"]
    counts = {site: dict.fromkeys(GROUPS, 0) for site in sites}
    for centre, group in _records(patient_clean, "SubmittingCentre", "group"):
        if not isinstance(centre, str) or config.site_rule(centre) != "split" or not _group(group):
            continue
        counts[nfc(centre)][group] += 1
    records = []
    for site in sites:
        training, validation = counts[site]["training"], counts[site]["validation"]
        patients = training + validation
        record = {
            "site": site,
            "training": training,
            "validation": validation,
            "patients": patients,
            "share": None,
            "expected_low": None,
            "expected_high": None,
        }
        if patients:
            p = target / 100
            spread = 196 * math.sqrt(p * (1 - p) / patients)
            record.update(
                share=round(100 * training / patients, 2),
                expected_low=round(max(0.0, target - spread), 2),
                expected_high=round(min(100.0, target + spread), 2),
            )
        records.append(record)
    return {"target": target, "sites": records}


def _age_band(age: Any) -> str:
    if _missing(age):
        return UNKNOWN
    try:
        years = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if math.isnan(years) or years < 0:
        return UNKNOWN
    return _AGE_BANDS[min(int(years // 10), len(_AGE_BANDS) - 1)]


def age_bands(patient_clean: pd.DataFrame) -> list[dict]:
    """Patients by ten-year age band and group, from ``age_update`` (the cleaned age, filled
    from the images' DICOM age).

    Returns
    -------
    list of dict
        ``band`` (``0-9``, ..., ``80-89``, ``90+``, then ``unknown``), ``order`` (its position),
        ``group``, ``patients``: every band and group, zeros included.
    """
    counts: Counter = Counter()
    for age, group in _records(patient_clean, "age_update", "group"):
        if _group(group):
            counts[(_age_band(age), group)] += 1
    return [
        {"band": band, "order": order, "group": group, "patients": counts[(band, group)]}
        for order, band in enumerate((*_AGE_BANDS, UNKNOWN))
        for group in GROUPS
    ]


def sexes(patient_clean: pd.DataFrame) -> list[dict]:
    """Patients by sex and group, from ``sex_update`` (``M``, ``F``, ``Unknown``, ...).

    Returns
    -------
    list of dict
        ``sex``, ``group``, ``patients``: every value seen (``M``, ``F`` and ``Unknown``
        always, in that order, then others sorted) and group, zeros included.
    """
    counts: Counter = Counter()
    for sex, group in _records(patient_clean, "sex_update", "group"):
        if _group(group):
            counts[(_text(sex, "Unknown"), group)] += 1
    seen = {sex for sex, _ in counts}
    order = ["M", "F", "Unknown", *sorted(seen - {"M", "F", "Unknown"})]
    return [
        {"sex": sex, "group": group, "patients": counts[(sex, group)]}
        for sex in order
        for group in GROUPS
    ]


def _top_values(counts: Counter, top: int) -> list[dict]:
    """Records of the ``top`` values with most images (both groups); the rest as one value."""
    totals: Counter = Counter()
    for (value, _), n in counts.items():
        totals[value] += n
    ranked = sorted(totals, key=lambda value: (-totals[value], value))
    kept = ranked[:top]
    others = ranked[top:]
    records = [
        {"value": value, "group": group, "images": counts[(value, group)]}
        for value in kept
        for group in GROUPS
    ]
    if others:
        label = f"other ({len(others)} values)"
        for group in GROUPS:
            records.append(
                {
                    "value": label,
                    "group": group,
                    "images": sum(counts[(value, group)] for value in others),
                }
            )
    return records


@dataclass
class Equipment:
    """Images by DICOM attribute (see `equipment`).

    Attributes
    ----------
    source : str
        ``catalogue`` (one row per image) or ``studies`` (the study tables).
    attributes : dict
        Attribute name (``Manufacturer``, ``BodyPartExamined``, ``ViewPosition``) -> records
        ``value``, ``group``, ``images``; an attribute the source does not hold is absent.
    """

    source: str
    attributes: dict[str, list[dict]] = field(default_factory=dict)


EQUIPMENT_ATTRIBUTES = ("Manufacturer", "BodyPartExamined", "ViewPosition")


def equipment(
    studies: Mapping[str, pd.DataFrame],
    study_images: pd.DataFrame | None,
    images: pd.DataFrame | None = None,
    top: int = TOP_VALUES,
) -> Equipment:
    """Images by manufacturer, body part and view position, per group.

    From the image catalogue when there is one (``images``: one row per filed image, with
    ``group`` and the attribute columns). Until then from the study tables: each study's
    images (``study_images``) count under the values of the study's row (its first metadata
    file); the study tables hold no ViewPosition, so it is absent. Images of a study without
    a row (its metadata file could not be read) count as ``NOT_GIVEN``.

    Returns
    -------
    Equipment
        The ``top`` values with most images per attribute, the others summed as one value
        (``other (N values)``).
    """
    if images is not None:
        result = Equipment("catalogue")
        for attribute in EQUIPMENT_ATTRIBUTES:
            if attribute not in images.columns:
                continue
            counts: Counter = Counter()
            for value, group, n in zip(
                _column(images, attribute), _column(images, "group"), _weights(images), strict=True
            ):
                if _group(group):
                    counts[(_text(value, NOT_GIVEN), group)] += n
            result.attributes[attribute] = _top_values(counts, top)
        return result

    result = Equipment("studies")
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for table in studies.values():
        for group, pseudonym, study, manufacturer, body in _records(
            table, "group", "Pseudonym", "StudyInstanceUID", "Manufacturer", "BodyPartExamined"
        ):
            key = (group, str(pseudonym), str(study))
            rows.setdefault(
                key,
                {
                    "Manufacturer": _text(manufacturer, NOT_GIVEN),
                    "BodyPartExamined": _text(body, NOT_GIVEN),
                },
            )
    tallies: dict[str, Counter] = {"Manufacturer": Counter(), "BodyPartExamined": Counter()}
    for group, pseudonym, study, n in _records(
        study_images, "group", "Pseudonym", "StudyInstanceUID", "images"
    ):
        if not _group(group):
            continue
        row = rows.get((group, str(pseudonym), str(study)), {})
        for attribute, counter in tallies.items():
            counter[(row.get(attribute, NOT_GIVEN), group)] += int(n)
    for attribute, counter in tallies.items():
        result.attributes[attribute] = _top_values(counter, top)
    return result


def storage_use(storage: pd.DataFrame) -> list[dict]:
    """Bytes under each of the eight storage prefixes (``storage.csv``).

    Returns
    -------
    list of dict
        ``prefix``, ``group``, ``bytes``, ``gigabytes`` (decimal, 3 decimals), in table order.
    """
    return [
        {
            "prefix": prefix,
            "group": prefix.split("/", 1)[0],
            "bytes": int(size),
            "gigabytes": round(int(size) / 1e9, 3),
        }
        for prefix, size in _records(storage, "prefix", "storage")
    ]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "\u2026"


def loader_report_problem(report: Mapping) -> str:
    """Why the pages cannot use a loader run report, or ``""``: every field `loader_run` reads
    must have its type (the report is a file in the warehouse, and may have been edited).

    ``run_id`` and ``fatal`` are text or null; ``started`` and ``finished`` ISO 8601 times or
    null; ``completed`` true, false or null; ``counts`` and ``not_filed`` objects of whole
    numbers (0 or more); ``problems`` a list of objects whose ``key``, ``reason`` and
    ``detail`` are text and ``modified`` an ISO 8601 time or empty. A field may be absent.

    Parameters
    ----------
    report : mapping
        The parsed ``reports/warehouseloader/latest.json``.

    Returns
    -------
    str
        The first problem found (naming the field and its value), or ``""``.
    """
    for name in ("run_id", "fatal"):
        if report.get(name) is not None and not isinstance(report[name], str):
            return f"{name} is {_shown(report[name])}, not text"
    for name in ("started", "finished"):
        if report.get(name) is not None and report_time(report[name]) is None:
            return f"{name} is {_shown(report[name])}, not an ISO 8601 time"
    if report.get("completed") is not None and not isinstance(report["completed"], bool):
        return f"completed is {_shown(report['completed'])}, not true or false"
    for name in ("counts", "not_filed"):
        table = report.get(name)
        if table is None:
            continue
        if not isinstance(table, Mapping):
            return f"{name} is {_shown(table)}, not an object of counts"
        for label, n in table.items():
            if not _is_count(n):
                return f"{name}[{_shown(label)}] is {_shown(n)}, not a count"
    problems = report.get("problems")
    if problems is None:
        return ""
    if not isinstance(problems, list):
        return f"problems is {_shown(problems)}, not a list"
    for index, problem in enumerate(problems):
        if not isinstance(problem, Mapping):
            return f"problems[{index}] is {_shown(problem)}, not an object"
        for name in ("key", "reason", "detail"):
            if problem.get(name) is not None and not isinstance(problem[name], str):
                return f"problems[{index}].{name} is {_shown(problem[name])}, not text"
        modified = problem.get("modified")
        if modified not in (None, "") and report_time(modified) is None:
            return f"problems[{index}].modified is {_shown(modified)}, not an ISO 8601 time"
    return ""


#: Shown for images whose raw upload is not known (catalogued from their header).
UNKNOWN_SITE = "(upload not known)"
#: The identifying-data screen's statuses, in the order the chart stacks them.
SCREEN_STATUSES = ("flagged", "clean", "not screened")


def identifying_by_site(screened: Mapping[tuple, int] | None) -> list[dict]:
    """Images by site (raw prefix) and what the identifying-data screen made of them.

    Parameters
    ----------
    screened : mapping or None
        ``(raw prefix or None, status) -> images`` (`catalogue.merge.CatalogueScan.screened`).

    Returns
    -------
    list of dict
        Records ``site``, ``status`` (`SCREEN_STATUSES`), ``images``, by site then status;
        a site's ``flagged`` record is there even at 0.
    """
    counts: Counter = Counter()
    sites = set()
    for (prefix, status), n in (screened or {}).items():
        site = prefix if isinstance(prefix, str) else UNKNOWN_SITE
        sites.add(site)
        counts[(site, str(status))] += int(n)
    return [
        {"site": site, "status": status, "images": counts[(site, status)]}
        for site in sorted(sites)
        for status in SCREEN_STATUSES
        if counts[(site, status)] or status == "flagged"
    ]


def loader_run(report: Mapping | None, recent: int = RECENT_UNFILED) -> dict | None:
    """The last loader run, from its JSON run report (``reports/warehouseloader/latest.json``).

    Returns
    -------
    dict or None
        None without a report. Otherwise ``run_id``, ``started``, ``finished``, ``completed``,
        ``fatal``, ``counts`` (records ``outcome``, ``inputs``), ``reasons`` (records
        ``reason``, ``inputs``, most first), ``unfiled`` (their sum) and ``recent``: the
        ``recent`` most recently modified unfiled inputs (``key``, ``reason``, ``detail``,
        ``modified``; inputs without a modification time last, then by key).
    """
    if report is None:
        return None
    problems = [p for p in report.get("problems") or () if isinstance(p, Mapping)]

    def newest_first(problem: Mapping) -> tuple:
        stamp = report_time(problem.get("modified"))
        return (stamp is None, -(stamp.timestamp() if stamp else 0), str(problem.get("key")))

    reasons = {str(k): int(v) for k, v in (report.get("not_filed") or {}).items()}
    return {
        "run_id": report.get("run_id"),
        "started": report.get("started"),
        "finished": report.get("finished"),
        "completed": report.get("completed"),
        "fatal": report.get("fatal"),
        "counts": [
            {"outcome": str(k), "inputs": int(v)}
            for k, v in sorted((report.get("counts") or {}).items())
        ],
        "reasons": [
            {"reason": reason, "inputs": n}
            for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        ],
        "unfiled": sum(reasons.values()),
        "recent": [
            {
                "key": str(p.get("key", "")),
                "reason": str(p.get("reason", "")),
                "detail": str(p.get("detail", "")),
                "modified": p.get("modified") or "",
            }
            for p in sorted(problems, key=newest_first)[:recent]
        ],
    }


# --------------------------------------------------------------------------------------------
# Public figures
# --------------------------------------------------------------------------------------------


class Hidden(enum.Enum):
    """A count whose value a published file hides already: what its mark says of it."""

    #: Under the threshold ("fewer than 10").
    SMALL = "small"
    #: The threshold or more, hidden so that a small count cannot be worked out ("suppressed").
    COMPLEMENT = "complement"


#: What the public page and the ``stats_*.csv`` files show for a hidden count.
SMALL_MARK = f"fewer than {SUPPRESSION_THRESHOLD}"
COMPLEMENT_MARK = "suppressed"


def suppress(
    total: int | Hidden | None, cells: list[int | Hidden], threshold: int = SUPPRESSION_THRESHOLD
) -> tuple[bool, list[bool]]:
    """Which counts of one table (``cells`` that add up to ``total``) to hide: the one rule of
    the public statistics, for the files and the page.

    Primary suppression hides every count under ``threshold`` (zero included); a small total
    hides every cell. Secondary suppression then hides more, while the shown figures give a
    hidden count away. A reader knows the hidden cells' sum (the total minus the shown cells)
    and that each hidden one is under ``threshold`` or not (its mark); that gives a count
    away when exactly one cell is hidden (it is the sum), when the sum is under ``threshold``,
    or when every hidden cell is under ``threshold`` and the sum is as large as they can be
    (each is ``threshold - 1``). The next smallest shown cell is hidden, or, when every cell
    is hidden, the total.

    The rule holds for a table it suppressed: given the published figures (hidden counts as
    their `Hidden` mark) it hides nothing more, so the page can apply it to the published
    files and show what they show.

    Parameters
    ----------
    total : int, Hidden or None
        The total of the cells; None when they have none (then only primary suppression
        applies, each cell stands alone).
    cells : list of int or Hidden
        The counts.
    threshold : int
        The smallest count that may be shown.

    Returns
    -------
    tuple
        ``(total hidden, [cell hidden, ...])``.
    """

    def small(n: int | Hidden) -> bool:
        return n is Hidden.SMALL or (not isinstance(n, Hidden) and n < threshold)

    hidden = [isinstance(n, Hidden) or n < threshold for n in cells]
    if total is None:
        return False, hidden
    if isinstance(total, Hidden) or total < threshold:
        return True, [True] * len(cells)

    def gives_away() -> bool:
        count = sum(hidden)
        if count == 0:
            return False
        visible = (n for n, h in zip(cells, hidden, strict=True) if not h)
        rest = total - sum(n for n in visible if not isinstance(n, Hidden))  # (marks are hidden)
        all_small = all(small(n) for n, h in zip(cells, hidden, strict=True) if h)
        return count == 1 or rest < threshold or (all_small and rest >= (threshold - 1) * count)

    while gives_away():
        shown = [i for i, h in enumerate(hidden) if not h]
        if not shown:
            return True, hidden
        hidden[min(shown, key=lambda i: (cells[i], i))] = True
    return False, hidden


@dataclass(frozen=True)
class PublicFigure:
    """One line of the public statistics.

    Attributes
    ----------
    label : str
        As in the ``stats_*.csv`` file.
    text : str
        The value as the figures' source holds it (``1,234``, ``12GB``, or a mark).
    count : int or None
        The value as a number when it is a count (None for storage and for a count the
        source hides already).
    suppressed : str
        ``""`` when shown, ``"small"`` when under the threshold, ``"complement"`` when hidden
        because it would reveal a small count.
    """

    label: str
    text: str
    count: int | None
    suppressed: str = ""

    @property
    def shown(self) -> str:
        """What the page and the published file show: the value, or the suppression mark."""
        if self.suppressed == "small":
            return SMALL_MARK
        if self.suppressed == "complement":
            return COMPLEMENT_MARK
        return self.text


@dataclass(frozen=True)
class PublicSection:
    """The figures of one ``stats_*.csv`` file.

    Attributes
    ----------
    file : str
        ``stats_patients.csv`` and so on.
    title : str
        The section's heading.
    figures : tuple of PublicFigure
    """

    file: str
    title: str
    figures: tuple[PublicFigure, ...]


# file -> (title, rows forming total + cells, rows standing alone, counts or not)
_PUBLIC_FILES: dict[
    str, tuple[str, tuple[int, tuple[int, ...] | None] | None, tuple[int, ...], bool]
] = {
    "stats_patients.csv": ("Patients", (0, (1, 2)), (3,), True),
    "stats_images.csv": ("Image studies", (0, None), (), True),
    "stats_storage.csv": ("Storage", None, (), False),
    "stats_submittingcentres.csv": ("Submitting centres", None, (0,), True),
}


_MARKS = {SMALL_MARK: Hidden.SMALL, COMPLEMENT_MARK: Hidden.COMPLEMENT}


def _count(text: str) -> int | Hidden:
    if text.strip() in _MARKS:
        return _MARKS[text.strip()]
    return int(text.replace(",", "").strip())


def _mark(value: int | Hidden, threshold: int) -> str:
    """Why a hidden count is hidden: ``small`` or ``complement`` (a published file says)."""
    if isinstance(value, Hidden):
        return value.value
    return "small" if value < threshold else "complement"


def public_sections(
    stats_rows: Mapping[str, Sequence[Sequence[str]]], threshold: int = SUPPRESSION_THRESHOLD
) -> list[PublicSection]:
    """The public statistics with small counts hidden (`suppress`): what the ``stats_*.csv``
    files hold and what the public page shows.

    ``stats_patients.csv`` (total, then positive and negative, which add up to it, then new
    patients alone), ``stats_images.csv`` (total, then one row per modality) and
    ``stats_submittingcentres.csv`` are counts: each table goes through `suppress`.
    ``stats_storage.csv`` holds storage in GB, not counts: shown as it is. A value that is
    already a mark (``fewer than 10``, ``suppressed``: a published file) stays hidden.

    Parameters
    ----------
    stats_rows : mapping
        File name -> its rows, ``(label, value)`` each, as ``tables.public_statistics``
        counts them (or as a published file holds them).
    threshold : int
        The smallest count shown.

    Returns
    -------
    list of PublicSection
        In the order above; a file that is absent has no section.

    Raises
    ------
    ValueError
        When a count is neither a whole number nor a mark.
    """
    sections = []
    for name, (title, partition, alone, counts) in _PUBLIC_FILES.items():
        if name not in stats_rows:
            continue
        rows = [row for row in stats_rows[name] if row]
        labels = [row[0] for row in rows]
        texts = [row[1] if len(row) > 1 else "" for row in rows]
        suppressed = [""] * len(rows)
        values: list[int | Hidden | None] = [None] * len(rows)
        if counts:
            counted = [_count(text) for text in texts]
            values = list(counted)
            if partition is not None:
                total_row, cell_rows = partition
                cell_rows = (
                    tuple(range(total_row + 1, len(rows))) if cell_rows is None else cell_rows
                )
                total_hidden, cells_hidden = suppress(
                    counted[total_row], [counted[i] for i in cell_rows], threshold
                )
                if total_hidden:
                    suppressed[total_row] = _mark(counted[total_row], threshold)
                for i, hidden in zip(cell_rows, cells_hidden, strict=True):
                    if hidden:
                        suppressed[i] = _mark(counted[i], threshold)
            for i in alone:
                _, (hidden,) = suppress(None, [counted[i]], threshold)
                if hidden:
                    suppressed[i] = _mark(counted[i], threshold)
        figures = tuple(
            PublicFigure(label, text, None if isinstance(value, Hidden) else value, how)
            for label, text, value, how in zip(labels, texts, values, suppressed, strict=True)
        )
        sections.append(PublicSection(name, title, figures))
    return sections


def public_figures(
    stats_files: Mapping[str, str], threshold: int = SUPPRESSION_THRESHOLD
) -> list[PublicSection]:
    """The public statistics of the ``stats_*.csv`` files (`public_sections` of their rows):
    the published files give back what they show.

    Parameters
    ----------
    stats_files : mapping
        File name -> CSV text (label, value; no header).
    threshold : int
        The smallest count shown.

    Raises
    ------
    ValueError
        When a count is neither a whole number nor a mark.
    """
    rows = {
        name: list(csv.reader(io.StringIO(stats_files[name])))
        for name in _PUBLIC_FILES
        if name in stats_files
    }
    return public_sections(rows, threshold)
