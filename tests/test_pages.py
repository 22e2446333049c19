"""The figures behind each chart, the public statistics' suppression, and the pages as files:
self-contained, escaped, named in ``latest.csv``; the run report page beside its JSON.

Every expected figure here is worked out by hand from a small table built in the test. The
pages in a real browser are in ``test_pages_browser.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import html as html_module
import io
import itertools
import json
import logging
import re
import unicodedata

import numpy as np
import pandas as pd
import pytest

from tests import builders
from warehouse.core import report as report_module
from warehouse.core import report_page
from warehouse.core import run as run_module
from warehouse.core.config import parse_config
from warehouse.core.errors import StorageError
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.dashboard import figures, pages
from warehouse.dashboard.batch import (
    Batch,
    batch_files,
    build_batch,
    read_page_inputs,
    study_image_table,
)
from warehouse.dashboard.tables import storage_table
from warehouse.storage.local import LocalStorage
from warehouse.storage.wrappers import DelegatingStorage

NOW = dt.datetime(2026, 11, 25, 9, 30, tzinfo=dt.UTC)
A, B = "Alpha Trust", "Beta Trust"
HOSTILE = '</script><script>alert("x")</script><b>bold</b>'


def patient_clean(rows) -> pd.DataFrame:
    """A cleaned patient table with the columns the figures read."""
    columns = (
        "Pseudonym",
        "group",
        "SubmittingCentre",
        "filename_earliest_date",
        "filename_covid_status",
        "age_update",
        "sex_update",
    )
    table = pd.DataFrame([dict(zip(columns, row, strict=True)) for row in rows], columns=columns)
    table["filename_earliest_date"] = pd.to_datetime(table["filename_earliest_date"])
    return table


PATIENTS = patient_clean(
    [
        ("P1", "training", A, "2021-01-04", True, 45.0, "M"),
        ("P2", "training", A, "2021-01-04", False, 9.9, "F"),
        ("P3", "training", A, "2021-01-10", False, 10.0, "Unknown"),
        ("P4", "validation", A, "2021-01-05", True, 95.0, "M"),
        ("P5", "training", B, "2021-01-06", False, np.nan, "F"),
        ("P6", "validation", np.nan, "2021-01-07", False, -1.0, "O"),
    ]
)


def study(pseudonym, group, uid, manufacturer="ACME", body="CHEST") -> dict:
    return {
        "Pseudonym": pseudonym,
        "group": group,
        "StudyInstanceUID": uid,
        "Manufacturer": manufacturer,
        "BodyPartExamined": body,
    }


STUDIES = {
    "ct": pd.DataFrame([study("P1", "training", "1.1"), study("P4", "validation", "1.2", "Zeta")]),
    "xray": pd.DataFrame([study("P2", "training", "2.1", "", None)]),
}
IMAGE_COUNTS = {
    ("training", "ct", "P1", "1.1", dt.date(2021, 2, 1)): 3,
    ("training", "ct", "P1", "1.1", dt.date(2021, 2, 3)): 2,
    ("validation", "ct", "P4", "1.2", dt.date(2021, 2, 2)): 4,
    ("training", "xray", "P2", "2.1", dt.date(2021, 2, 1)): 1,
    # A study without a row (its metadata could not be read) and a patient without a record.
    ("training", "xray", "P9", "2.9", dt.date(2021, 2, 5)): 6,
}
STUDY_IMAGES = study_image_table(IMAGE_COUNTS)


# --------------------------------------------------------------------------------------------
# The study_images table
# --------------------------------------------------------------------------------------------


def test_study_image_table_is_sorted_and_typed():
    table = STUDY_IMAGES
    assert list(table.columns) == list(figures.STUDY_IMAGE_COLUMNS)
    assert [tuple(r) for r in table[["modality", "group", "Pseudonym"]].values] == [
        ("ct", "training", "P1"),
        ("ct", "training", "P1"),
        ("ct", "validation", "P4"),
        ("xray", "training", "P2"),
        ("xray", "training", "P9"),
    ]
    assert table["images"].tolist() == [3, 2, 4, 1, 6] and table["images"].dtype == "int64"
    assert table["filed"].dtype == "datetime64[ns]"
    empty = study_image_table({})
    assert list(empty.columns) == list(figures.STUDY_IMAGE_COLUMNS) and len(empty) == 0


# --------------------------------------------------------------------------------------------
# Internal figures
# --------------------------------------------------------------------------------------------


def test_patients_over_time_is_cumulative_per_centre_and_group():
    records = figures.patients_over_time(PATIENTS)
    assert records == [
        {
            "date": "2021-01-07",
            "centre": figures.NO_CENTRE,
            "group": "validation",
            "patients": 1,
            "new": 1,
        },
        {"date": "2021-01-04", "centre": A, "group": "training", "patients": 2, "new": 2},
        {"date": "2021-01-10", "centre": A, "group": "training", "patients": 3, "new": 1},
        {"date": "2021-01-05", "centre": A, "group": "validation", "patients": 1, "new": 1},
        {"date": "2021-01-06", "centre": B, "group": "training", "patients": 1, "new": 1},
    ]


def test_images_over_time_by_filing_date_and_the_patients_centre():
    records = figures.images_over_time(STUDY_IMAGES, PATIENTS)
    assert records == [
        {
            "date": "2021-02-05",
            "centre": figures.NO_CENTRE,
            "group": "training",
            "images": 6,
            "new": 6,
        },
        {"date": "2021-02-01", "centre": A, "group": "training", "images": 4, "new": 4},
        {"date": "2021-02-03", "centre": A, "group": "training", "images": 6, "new": 2},
        {"date": "2021-02-02", "centre": A, "group": "validation", "images": 4, "new": 4},
    ]


def test_images_over_time_by_upload_date_from_the_image_catalogue():
    images = pd.DataFrame(
        {
            "group": ["training", "training", "training", "validation", "training"],
            "PatientID": ["P1", "P1", "P5", "P4", "P9"],
            "upload_date": pd.to_datetime(
                ["2021-01-04", "2021-01-09", "2021-01-04", "2021-01-05", None]
            ),
        }
    )
    records = figures.images_over_time(STUDY_IMAGES, PATIENTS, images)
    assert records == [
        {"date": "2021-01-04", "centre": A, "group": "training", "images": 1, "new": 1},
        {"date": "2021-01-09", "centre": A, "group": "training", "images": 2, "new": 1},
        {"date": "2021-01-05", "centre": A, "group": "validation", "images": 1, "new": 1},
        {"date": "2021-01-04", "centre": B, "group": "training", "images": 1, "new": 1},
    ]
    # an empty catalogue: the filing dates, as before
    assert figures.images_over_time(STUDY_IMAGES, PATIENTS, images[:0]) == (
        figures.images_over_time(STUDY_IMAGES, PATIENTS)
    )


def test_status_by_centre_counts_every_combination():
    # After a CSV round trip the flag is text: read the same way.
    as_text = PATIENTS.assign(filename_covid_status=PATIENTS["filename_covid_status"].astype(str))
    for table in (PATIENTS, as_text):
        counts = {
            (r["centre"], r["group"], r["status"]): r["patients"]
            for r in figures.status_by_centre(table)
        }
        assert len(counts) == 3 * 2 * 2
        assert counts[(A, "training", "positive")] == 1
        assert counts[(A, "training", "negative")] == 2
        assert counts[(A, "validation", "positive")] == 1
        assert counts[(B, "training", "negative")] == 1
        assert counts[(figures.NO_CENTRE, "validation", "negative")] == 1
        assert sum(counts.values()) == len(PATIENTS)


def test_modality_counts_studies_and_images():
    records = figures.modality_counts(STUDIES, STUDY_IMAGES)
    table = {(r["modality"], r["group"]): (r["studies"], r["images"]) for r in records}
    assert table == {
        ("CT", "training"): (1, 5),
        ("CT", "validation"): (1, 4),
        ("X-ray", "training"): (1, 7),
        ("X-ray", "validation"): (0, 0),
        ("MRI", "training"): (0, 0),
        ("MRI", "validation"): (0, 0),
    }


def test_split_shares_against_training_percentage():
    decomposed = unicodedata.normalize("NFD", "Cité Trust")
    assert decomposed != "Cité Trust"
    config = parse_config(
        builders.config(["raw-a"], split=["Cité Trust", "Empty Trust"], training=[B], percentage=70)
    )
    rows = [
        (f"S{n}", "training" if n < 75 else "validation", decomposed, "2021-01-01", False, 1, "M")
        for n in range(100)
    ]
    table = patient_clean([*rows, ("T1", "training", B, "2021-01-01", False, 1, "M")])
    shares = figures.split_shares(table, config)
    assert shares["target"] == 70
    cite, empty = shares["sites"]
    assert (cite["site"], cite["training"], cite["validation"], cite["patients"]) == (
        "Cité Trust",
        75,
        25,
        100,
    )
    assert cite["share"] == 75.0
    spread = 1.96 * (0.7 * 0.3 / 100) ** 0.5 * 100
    assert cite["expected_low"] == round(70 - spread, 2)
    assert cite["expected_high"] == round(70 + spread, 2)
    assert empty == {
        "site": "Empty Trust",
        "training": 0,
        "validation": 0,
        "patients": 0,
        "share": None,
        "expected_low": None,
        "expected_high": None,
    }
    assert figures.split_shares(table, None) is None


def test_age_bands_and_sexes():
    bands = {(r["band"], r["group"]): r["patients"] for r in figures.age_bands(PATIENTS)}
    assert len(bands) == 11 * 2
    assert bands[("0-9", "training")] == 1  # 9.9
    assert bands[("10-19", "training")] == 1  # 10.0
    assert bands[("40-49", "training")] == 1
    assert bands[("90+", "validation")] == 1
    assert bands[("unknown", "training")] == 1  # NaN
    assert bands[("unknown", "validation")] == 1  # negative
    assert sum(bands.values()) == len(PATIENTS)
    assert [r["order"] for r in figures.age_bands(PATIENTS)][::2] == list(range(11))

    sexes = figures.sexes(PATIENTS)
    assert [r["sex"] for r in sexes][::2] == ["M", "F", "Unknown", "O"]
    counts = {(r["sex"], r["group"]): r["patients"] for r in sexes}
    assert counts[("M", "training")] == 1 and counts[("M", "validation")] == 1
    assert counts[("F", "training")] == 2 and counts[("O", "validation")] == 1


def test_equipment_from_the_study_tables_weighs_each_study_by_its_images():
    kit = figures.equipment(STUDIES, STUDY_IMAGES)
    assert kit.source == "studies" and "ViewPosition" not in kit.attributes
    maker = {(r["value"], r["group"]): r["images"] for r in kit.attributes["Manufacturer"]}
    assert maker == {
        ("ACME", "training"): 5,
        ("ACME", "validation"): 0,
        (figures.NOT_GIVEN, "training"): 7,  # "" for P2's study, no row for P9's
        (figures.NOT_GIVEN, "validation"): 0,
        ("Zeta", "training"): 0,
        ("Zeta", "validation"): 4,
    }
    assert [r["value"] for r in kit.attributes["Manufacturer"]][::2] == [
        figures.NOT_GIVEN,
        "ACME",
        "Zeta",
    ]  # most images first
    body = {(r["value"], r["group"]): r["images"] for r in kit.attributes["BodyPartExamined"]}
    assert body[("CHEST", "training")] == 5 and body[("CHEST", "validation")] == 4
    assert body[(figures.NOT_GIVEN, "training")] == 7


def test_equipment_from_the_image_catalogue_keeps_the_top_values():
    images = pd.DataFrame(
        {
            "group": ["training"] * 5 + ["validation"] * 2,
            "Manufacturer": ["A", "A", "B", "B", "C", "A", None],
            "BodyPartExamined": ["CHEST"] * 7,
            "ViewPosition": ["PA", "AP", "PA", "", "PA", "LL", "PA"],
        }
    )
    kit = figures.equipment({}, None, images, top=2)
    assert kit.source == "catalogue"
    maker = {(r["value"], r["group"]): r["images"] for r in kit.attributes["Manufacturer"]}
    assert maker == {
        ("A", "training"): 2,
        ("A", "validation"): 1,
        ("B", "training"): 2,
        ("B", "validation"): 0,
        ("other (2 values)", "training"): 1,  # C and not given
        ("other (2 values)", "validation"): 1,
    }
    view = {(r["value"], r["group"]): r["images"] for r in kit.attributes["ViewPosition"]}
    assert view[("PA", "training")] == 3 and view[("PA", "validation")] == 1


def test_storage_use_and_header_totals():
    storage = storage_table({"training/": 3_000_000_000, "training/ct/": 2_000_000_000})
    records = figures.storage_use(storage)
    assert [r["prefix"] for r in records] == list(storage["prefix"])
    assert records[0] == {
        "prefix": "training/ct/",
        "group": "training",
        "bytes": 2_000_000_000,
        "gigabytes": 2.0,
    }
    totals = figures.header_totals(PATIENTS, STUDIES, STUDY_IMAGES, storage)
    assert totals["patients"] == {"training": 4, "validation": 2, "all": 6}
    assert totals["studies"] == {"training": 2, "validation": 1, "all": 3}
    assert totals["images"] == {"training": 12, "validation": 4, "all": 16}
    assert totals["bytes"] == {"training": 3_000_000_000, "validation": 0, "all": 3_000_000_000}


def test_loader_run_lists_the_most_recent_unfiled_inputs_first():
    report = {
        "run_id": "r1",
        "started": "2026-11-25T09:00:00+00:00",
        "finished": "2026-11-25T09:01:00+00:00",
        "completed": True,
        "fatal": None,
        "counts": {"images copied": 7, "clinical files copied": 2},
        "not_filed": {"invalid JSON": 1, "not a DICOM file": 2, "group conflict": 1},
        "problems": [
            {
                "key": "raw-a/x",
                "reason": "not a DICOM file",
                "modified": "2026-11-20T10:00:00+00:00",
            },
            {
                "key": "raw-a/y",
                "reason": "not a DICOM file",
                "modified": "2026-11-24T10:00:00+00:00",
            },
            {"key": "raw-b/z", "reason": "invalid JSON", "modified": "2026-11-22T10:00:00+01:00"},
            {"key": "raw-a/w", "reason": "group conflict"},
        ],
    }
    run = figures.loader_run(report, recent=3)
    assert [r["key"] for r in run["recent"]] == ["raw-a/y", "raw-b/z", "raw-a/x"]
    assert run["reasons"] == [
        {"reason": "not a DICOM file", "inputs": 2},
        {"reason": "group conflict", "inputs": 1},
        {"reason": "invalid JSON", "inputs": 1},
    ]
    assert run["unfiled"] == 4
    assert run["counts"] == [
        {"outcome": "clinical files copied", "inputs": 2},
        {"outcome": "images copied", "inputs": 7},
    ]
    assert [r["key"] for r in figures.loader_run(report)["recent"]][-1] == "raw-a/w"
    assert figures.loader_run(None) is None


# --------------------------------------------------------------------------------------------
# Public figures: suppression
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "total, cells, expected",
    [
        (30, [20, 10], (False, [False, False])),  # nothing small
        (53, [42, 8, 3], (False, [False, True, True])),  # two small cells adding up to 11
        (18, [4, 14], (False, [True, True])),  # 4 = 18 - 14: hide 14 too
        (55, [45, 3, 2, 5], (False, [False, True, True, True])),  # 3 + 2 = 5 < 10: hide 5 too
        (55, [50, 3, 2], (False, [True, True, True])),  # 3 + 2 < 10 and nothing else smaller
        (9, [5, 4], (True, [True, True])),  # a small total hides everything
        (20, [20, 0], (False, [True, True])),  # zero is a count under 10
        (None, [3, 30], (False, [True, False])),  # no total: cells stand alone
    ],
)
def test_suppression(total, cells, expected):
    assert figures.suppress(total, cells) == expected


STATS = {
    "stats_patients.csv": (
        'Total number of patients with images,"1,204"\n'
        "Positive patients with images,4\n"
        'Negative patients with images,"1,200"\n'
        "New patients added in the last 30 days,12\n"
    ),
    "stats_images.csv": (
        "Total number of image studies,53\n"
        "X-ray image studies,42\n"
        "CT image studies,8\n"
        "MRI image studies,3\n"
    ),
    "stats_storage.csv": (
        '"Total image, image metadata, and clinical data storage",3GB\n'
        "X-ray image storage,2GB\n"
        "CT image storage,0GB\n"
        "MRI image storage,0GB\n"
        "Clinical data and image metadata export,1GB\n"
    ),
    "stats_submittingcentres.csv": "Submitting centres (e.g. NHS trusts),3\n",
    "stats_date.txt": "This information was last updated on 25 November 2026.",
}


def test_public_figures_are_the_files_with_small_counts_hidden():
    sections = {s.file: s for s in figures.public_figures(STATS)}
    patients = sections["stats_patients.csv"].figures
    assert [(f.count, f.suppressed) for f in patients] == [
        (1204, ""),
        (4, "small"),
        (1200, "complement"),  # 1,204 - 1,200 would give the 4 away
        (12, ""),
    ]
    assert [f.shown for f in patients] == ["1,204", "fewer than 10", "suppressed", "12"]
    images = sections["stats_images.csv"].figures
    assert [f.suppressed for f in images] == ["", "", "small", "small"]
    storage = sections["stats_storage.csv"].figures
    assert [f.shown for f in storage] == ["3GB", "2GB", "0GB", "0GB", "1GB"]  # not counts
    assert sections["stats_submittingcentres.csv"].figures[0].suppressed == "small"


def visible_counts(html: str) -> list[str]:
    """The figures of the public page's table, as shown."""
    return re.findall(r'<td class="number[^"]*">([^<]*)</td>', html)


@pytest.mark.parametrize(
    "total, cells, expected",
    [
        (27, [9, 9, 9], (True, [True, True, True])),  # sum 27 = 3 x 9: each would be 9
        (18, [9, 9], (True, [True, True])),
        (35, [9, 9, 9, 8], (False, [True, True, True, True])),  # 35 < 36: not all 9
        (37, [10, 9, 9, 9], (False, [True, True, True, True])),  # a 10 among them
    ],
)
def test_suppression_when_the_hidden_cells_could_only_be_the_largest_small_count(
    total, cells, expected
):
    assert figures.suppress(total, cells) == expected


def test_suppression_applied_to_its_own_result_hides_nothing_more():
    rng = np.random.default_rng(7)
    values = [0, 1, 2, 5, 8, 9, 10, 11, 12, 15, 19, 20, 40]
    for _ in range(2000):
        cells = [int(v) for v in rng.choice(values, size=rng.integers(1, 5))]
        total = sum(cells)
        total_hidden, hidden = figures.suppress(total, cells)

        def published(n, h):
            if not h:
                return n
            return figures.Hidden.SMALL if n < 10 else figures.Hidden.COMPLEMENT

        again = figures.suppress(
            published(total, total_hidden),
            [published(n, h) for n, h in zip(cells, hidden, strict=True)],
        )
        assert again == (total_hidden, hidden), (total, cells)


def counts_input(positive, negative, new, studies, centres):
    """Tables for `public_statistics` with these training counts (and validation patients,
    which no count may include)."""
    rows, xray, ct, mri = [], [], [], []
    imaged = [f"P{i}" for i in range(positive + negative)]
    for i, pseudonym in enumerate(imaged):
        rows.append((pseudonym, "training", i < positive, "2020-01-01"))
    for i in range(new):
        rows.append((f"N{i}", "training", True, "2021-03-15"))
    rows.append(("V1", "validation", True, "2021-03-15"))
    patients = pd.DataFrame(rows, columns=["Pseudonym", "group", "filename_covid_status", "d"])
    patients["filename_earliest_date"] = pd.to_datetime(patients.pop("d"))
    names = [f"Centre {i}" for i in range(max(centres, 1))]
    patients["SubmittingCentre"] = [names[i % len(names)] for i in range(len(patients))]
    if not centres:
        patients.loc[patients["group"] == "training", "SubmittingCentre"] = np.nan
    tables = {"CT": ct, "X-ray": xray, "MRI": mri}
    owners = imaged or ["P0"]
    for name, count in studies.items():
        for i in range(count):
            tables[name].append((owners[i % len(owners)], "training", f"{name}.{i}"))
    # each imaged patient has a study: an X-ray one when the others have none of them
    covered = {p for t in tables.values() for p, _, _ in t}
    for pseudonym in imaged:
        if pseudonym not in covered:
            xray.append((pseudonym, "training", f"X-ray.{pseudonym}"))
    frames = {
        name: pd.DataFrame(t, columns=["Pseudonym", "group", "StudyInstanceUID"])
        for name, t in tables.items()
    }
    for frame in frames.values():
        frame.loc[len(frame)] = ("V1", "validation", "V.1")
    return patients, frames


def possible_values(total, cells, marks):
    """Every value a reader can give each hidden figure of one table: the total (None when
    hidden), the shown cells, and what the marks say (fewer than 10: 0-9; suppressed: 10 or
    more), found by trying every assignment (the test's own oracle)."""
    hidden = [i for i, m in enumerate(marks) if m]
    totals = range(0, 10) if total is None else [total]
    found = {i: set() for i in hidden}
    found_totals = set()
    top = 10 * (len(cells) + 1) if total is None else total
    ranges = [range(0, 10) if marks[i] == "small" else range(10, top + 1) for i in hidden]
    for t in totals:
        rest = t - sum(c for c in cells if c is not None)
        for values in itertools.product(*ranges):
            if sum(values) == rest:
                found_totals.add(t)
                for i, v in zip(hidden, values, strict=True):
                    found[i].add(v)
    return found_totals, found


def test_public_statistics_publish_no_small_count_and_the_page_shows_the_files():
    from warehouse.dashboard.tables import public_statistics

    rng = np.random.default_rng(11)
    values = [0, 1, 2, 5, 8, 9, 10, 11, 15, 18, 27, 40]
    now = dt.datetime(2021, 3, 20, 12)
    for case in range(120):
        positive, negative, new, ct, mri, extra, centres = (
            int(v) for v in rng.choice(values, size=7)
        )
        studies = {"CT": ct, "MRI": mri, "X-ray": extra}
        patients, frames = counts_input(positive, negative, new, studies, centres)
        files = public_statistics(patients, frames["CT"], frames["X-ray"], frames["MRI"], None, now)
        rows = {
            name: [tuple(r) for r in csv.reader(io.StringIO(text, newline=""))]
            for name, text in files.items()
            if name.endswith(".csv")
        }
        where = (case, positive, negative, new, studies, centres)
        # No count from 1 to 9 (nor 0) is published.
        for name in ("stats_patients.csv", "stats_images.csv", "stats_submittingcentres.csv"):
            for label, value in rows[name]:
                assert value in ("fewer than 10", "suppressed") or (
                    int(value.replace(",", "")) >= 10
                ), (where, label, value)
        # No hidden count can be worked out from the total and the other cells.
        for name, cell_rows in (("stats_patients.csv", (1, 2)), ("stats_images.csv", (1, 2, 3))):
            table = rows[name]

            def number(value):
                return (
                    None
                    if value in ("fewer than 10", "suppressed")
                    else int(value.replace(",", ""))
                )

            marks = [
                {"fewer than 10": "small", "suppressed": "complement"}.get(table[i][1], "")
                for i in cell_rows
            ]
            totals, found = possible_values(
                number(table[0][1]), [number(table[i][1]) for i in cell_rows], marks
            )
            assert totals, where  # the published figures are consistent
            if number(table[0][1]) is None:
                assert len(totals) > 1 or totals.pop() not in range(1, 10), where
            for i, possible in found.items():
                assert len(possible) > 1 or possible.pop() not in range(1, 10), (where, name, i)
        # The page shows exactly the files, cell for cell.
        if case % 6 == 0:
            page = pages.public_page(files, NOW)
            shown = re.findall(
                r'<tr data-file="([^"]*)" data-label="([^"]*)"[^>]*>\s*<td>[^<]*</td>\s*'
                r'<td class="number[^"]*">([^<]*)</td>',
                page,
            )
            assert [(f, html_module.unescape(text), v) for f, text, v in shown] == [
                (name, label, value)
                for name in (
                    "stats_patients.csv",
                    "stats_images.csv",
                    "stats_storage.csv",
                    "stats_submittingcentres.csv",
                )
                for label, value in rows[name]
            ], where


def test_the_public_page_shows_no_small_count_and_says_so():
    html = pages.public_page(STATS, NOW)
    assert visible_counts(html) == [
        "1,204",
        "fewer than 10",
        "suppressed",
        "12",
        "53",
        "42",
        "fewer than 10",
        "fewer than 10",
        "3GB",
        "2GB",
        "0GB",
        "0GB",
        "1GB",
        "fewer than 10",
    ]
    assert "no count under 10 is shown" in html and "<strong>training</strong> group only" in html
    assert "validation" not in html.lower()
    assert "This information was last updated on 25 November 2026." in html
    # The charts hold only the figures shown.
    specs = {chart.name: chart for chart in pages.public_charts(figures.public_figures(STATS))}
    values = {
        name: [r["value"] for r in chart.spec["data"]["values"]]
        for name, chart in specs.items()
        if chart.spec
    }
    assert specs["public_patients"].spec is None  # both cells hidden
    assert values == {"public_studies": [42], "public_storage": [2.0, 0.0, 0.0, 1.0]}


# --------------------------------------------------------------------------------------------
# The pages as files
# --------------------------------------------------------------------------------------------


def tables_for_pages(centre: str = A) -> dict[str, pd.DataFrame]:
    patients = PATIENTS.assign(SubmittingCentre=PATIENTS["SubmittingCentre"].replace(A, centre))
    return {
        **STUDIES,
        "patient_clean": patients,
        "storage": storage_table({"training/": 1000}),
        "study_images": STUDY_IMAGES,
    }


def assert_self_contained(html: str) -> None:
    """Nothing in the page points outside it (the browser test watches its requests too)."""
    assert "default-src 'none'" in html  # the browser refuses every request
    # The only </script> are those closing the page's own two scripts.
    assert html.lower().count("</script") == 2 * ("vegaEmbed(" in html)
    html = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # the inlined JavaScript
    assert not re.search(
        r"<(script|img|iframe|link|audio|video|source|embed)\b[^>]*\b(src|href)=", html, re.I
    )
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "@import" not in html


def test_the_dashboard_page_is_self_contained_and_escapes_its_data():
    config = parse_config(builders.config(["raw-a"], split=[HOSTILE, B]))
    inputs = pages.PageInputs(warehouse="file:///w<h>", config=config)
    html = pages.dashboard_page("b1", NOW, tables_for_pages(HOSTILE), inputs)
    assert_self_contained(html)
    assert HOSTILE not in html and "<b>bold</b>" not in html
    assert "file:///w&lt;h&gt;" in html
    assert html.count('<section class="chart"') == len(
        pages.dashboard_charts(tables_for_pages(), inputs)
    )
    # The loader report is missing: the page says so instead of drawing a chart.
    assert "No loader run report." in html
    assert 'data-total="images" data-value="16"' in html
    assert 'data-total="patients-validation" data-value="2"' in html


def test_every_chart_names_its_data_after_itself():
    report = {"not_filed": {"invalid JSON": 2}, "problems": [], "counts": {}}
    config = parse_config(builders.config(["raw-a"], split=[A]))
    screened = {("raw-a", "flagged"): 1, ("raw-a", "clean"): 2}
    inputs = pages.PageInputs(config=config, loader_report=report, screened=screened)
    charts = pages.dashboard_charts(tables_for_pages(), inputs)
    names = [c.name for c in charts]
    assert names == [
        "patients_over_time",
        "images_over_time",
        "status_by_centre",
        "modality_counts",
        "split_shares",
        "age_bands",
        "sexes",
        "images_by_manufacturer",
        "images_by_bodypartexamined",
        "images_by_viewposition",
        "storage_use",
        "identifying_by_site",
        "loader_reasons",
    ]
    drawn = {c.name: c for c in charts if c.spec is not None}
    assert set(names) - set(drawn) == {"images_by_viewposition"}  # not in the study tables
    for name, chart in drawn.items():
        assert chart.spec["data"]["name"] == name and chart.spec["data"]["values"]
        assert "tooltip" in json.dumps(chart.spec), name  # numbers on hover
        assert chart.caption
    assert drawn["loader_reasons"].spec["data"]["values"] == [
        {"reason": "invalid JSON", "inputs": 2}
    ]


def test_build_batch_names_the_pages_in_latest_csv(tmp_path):
    row = {
        "Pseudonym": "P1",
        "SubmittingCentre": A,
        "filename_earliest_date": dt.date(2021, 1, 4),
        "filename_covid_status": True,
        "filename_latest_date": dt.date(2021, 1, 4),
        "last_modified": dt.date(2021, 1, 5),
        "group": "training",
    }
    batch = build_batch([row], {}, {"training/": 10}, NOW, study_images={})
    assert set(batch.pages) == {"dashboard", "public"}
    assert "study_images" not in batch.tables  # no image, no table
    latest = batch.latest()
    assert latest.values.tolist()[-2:] == [
        ["dashboard", f"{batch.name}/dashboard.html"],
        ["public", f"{batch.name}/public.html"],
    ]
    files = batch_files(batch)
    assert files[f"{batch.name}/dashboard.html"].decode() == batch.pages["dashboard"]
    assert "Nothing to show yet." in batch.pages["dashboard"]  # no image to chart
    assert Batch("x").latest().values.tolist() == []


def test_read_page_inputs(tmp_path):
    store = LocalStorage(tmp_path)
    inputs = read_page_inputs(store)
    assert inputs.config is None and "No config.json" in inputs.config_note
    assert inputs.loader_report is None and "No loader run report yet" in inputs.loader_note
    assert inputs.warehouse == store.url

    store.write("config.json", b'{"raw_prefixes": ["raw-a"]}')
    store.write("reports/warehouseloader/latest.json", b"{not json")
    inputs = read_page_inputs(store)
    assert (
        "config.json cannot be used" in inputs.config_note
        and "training_percentage" in inputs.config_note
    )
    assert "is not valid JSON" in inputs.loader_note

    store.write("config.json", builders.config(["raw-a"], split=[A], percentage=40))
    store.write("reports/warehouseloader/latest.json", b'{"run_id": "r"}')
    inputs = read_page_inputs(store)
    assert inputs.config.training_percentage == 40 and inputs.loader_report == {"run_id": "r"}

    class Failing(DelegatingStorage):
        def read(self, key):
            raise StorageError(f"cannot read {key}: simulated")

    with pytest.raises(StorageError, match="simulated"):
        read_page_inputs(Failing(store))


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("counts", {"images copied": "many"}, "counts['images copied'] is 'many', not a count"),
        ("counts", {"images copied": True}, "counts['images copied'] is True, not a count"),
        ("counts", [1, 2], "counts is [1, 2], not an object of counts"),
        ("not_filed", {"invalid JSON": -1}, "not_filed['invalid JSON'] is -1, not a count"),
        ("not_filed", {"invalid JSON": 2.5}, "not_filed['invalid JSON'] is 2.5, not a count"),
        ("started", "yesterday", "started is 'yesterday', not an ISO 8601 time"),
        ("finished", 1700000000, "finished is 1700000000, not an ISO 8601 time"),
        ("completed", "yes", "completed is 'yes', not true or false"),
        ("run_id", {"a": 1}, "run_id is {'a': 1}, not text"),
        ("fatal", 3, "fatal is 3, not text"),
        ("problems", {"k": 1}, "problems is {'k': 1}, not a list"),
        ("problems", ["x"], "problems[0] is 'x', not an object"),
        ("problems", [{"key": 1}], "problems[0].key is 1, not text"),
        (
            "problems",
            [{"key": "k", "modified": "yesterday"}],
            "problems[0].modified is 'yesterday', not an ISO 8601 time",
        ),
        ("counts", {"x": "9" * 200}, "counts['x'] is '" + "9" * 58 + "\u2026, not a count"),
    ],
)
def test_a_loader_report_with_a_wrong_type_is_not_used_and_the_page_says_why(
    tmp_path, field, value, said
):
    store = LocalStorage(tmp_path)
    report = sample_report().as_dict()
    report[field] = value
    store.write("reports/warehouseloader/latest.json", json.dumps(report).encode())
    inputs = read_page_inputs(store)
    assert inputs.loader_report is None
    assert inputs.loader_note == f"reports/warehouseloader/latest.json cannot be used: {said}"
    html = pages.dashboard_page("b1", NOW, tables_for_pages(), inputs)
    assert inputs.loader_note in html_module.unescape(html)


def test_a_loader_report_as_the_loader_writes_it_is_used(tmp_path):
    store = LocalStorage(tmp_path)
    report = sample_report()
    report.skip("raw-a/2021-01-03/images/w.dcm", Reason.NOT_DICOM, stamp=(5, NOW.isoformat()))
    report.fail("stopped")
    data = report.to_json()
    store.write("reports/warehouseloader/latest.json", data)
    inputs = read_page_inputs(store)
    assert inputs.loader_note == "" and inputs.loader_report == json.loads(data)
    run = figures.loader_run(inputs.loader_report)
    assert run["recent"][0]["key"] == "raw-a/2021-01-03/images/w.dcm"  # the one with a time
    assert run["unfiled"] == 5 and run["completed"] is False


def test_human_units():
    assert pages.human_bytes(0) == "0 B"
    assert pages.human_bytes(12_345) == "12.3 kB"
    assert pages.human_bytes(4_560_000_000) == "4.56 GB"
    assert report_page.moment("2026-11-25T10:30:00.123+01:00") == "2026-11-25 09:30:00 UTC"
    assert report_page.moment("") == "" and report_page.moment("soon") == "soon"


# --------------------------------------------------------------------------------------------
# The run report page
# --------------------------------------------------------------------------------------------


def sample_report() -> RunReport:
    report = RunReport("warehouseloader")
    report.count("images copied", 5)
    report.count("clinical files copied", 2)
    report.skip("raw-a/2021-01-01/images/x.dcm", Reason.NOT_DICOM, "empty file")
    report.skip("raw-a/2021-01-01/images/y.dcm", Reason.NOT_DICOM, "garbage")
    report.skip("raw-a/2021-01-01/data/P_data.json", Reason.INVALID_JSON, HOSTILE)
    report.skip("raw-b/2021-01-02/images/z.dcm", Reason.NO_PATIENT_DATA, "PatientID 'P9'")
    return report


def test_refused_by_prefix_and_reason():
    assert report_page.refused_by_prefix(sample_report().as_dict()) == [
        {
            "prefix": "raw-a",
            "inputs": 3,
            "reasons": [
                {"reason": "not a DICOM file", "inputs": 2},
                {"reason": "invalid JSON", "inputs": 1},
            ],
        },
        {
            "prefix": "raw-b",
            "inputs": 1,
            "reasons": [{"reason": "no patient data for PatientID", "inputs": 1}],
        },
    ]


def test_the_run_report_page_lists_every_unfiled_input(monkeypatch):
    data = sample_report().as_dict()
    html = report_page.run_report_page(data, warehouse="s3://w", json_key="reports/x.json")
    assert_self_contained(html)
    assert "<script" not in html
    assert HOSTILE not in html and "&lt;/script&gt;" in html
    for problem in data["problems"]:
        assert problem["key"] in html
    assert html.count('<tr class="problem">') == 4
    assert 'data-prefix="raw-a" data-reason="not a DICOM file"' in html
    assert 'data-outcome="images copied"' in html and "reports/x.json" in html

    monkeypatch.setattr(report_page, "MAX_LISTED", 2)
    html = report_page.run_report_page(data)
    assert html.count('<tr class="problem">') == 2 and "The first 2 of 4 inputs" in html


def _changes_document(new: list[dict], resolved: list[str], **fields) -> dict:
    """A timestamped report as `report.changes_report` writes it, made by hand."""
    data = sample_report().as_dict()
    data.pop("problems")
    return data | {
        "form": "changes",
        "memo": "reports/warehouseloader/latest.json",
        "previous": "reports/warehouseloader/2026-01-01T00-00-00.000000Z.json",
        "previous_run_id": "r0",
        "not_filed_by_prefix": {"raw-a": {"not a DICOM file": 2, "invalid JSON": 1}},
        "changes": {
            "new": new,
            "changed": [],
            "resolved": resolved,
            "unchanged": 3,
            "total": 3 + len(new),
        },
        **fields,
    }


def test_the_run_page_of_a_timestamped_report_shows_its_changes_escaped():
    new = [
        {"key": f"raw-a/d/images/{HOSTILE}.dcm", "reason": "not a DICOM file", "detail": HOSTILE}
    ]
    data = _changes_document(new, ["raw-a/d/images/gone.dcm"])
    html = report_page.run_report_page(data, json_key="reports/warehouseloader/x.json")
    assert_self_contained(html)
    assert "<script" not in html and HOSTILE not in html
    assert html.count('<tr class="change" data-change="new">') == 1
    assert html.count('<tr class="change" data-change="resolved">') == 1
    assert "raw-a/d/images/gone.dcm" in html and '<tr class="problem">' not in html
    # the totals come from the report's counts, not from a list it does not hold
    assert 'data-prefix="raw-a" data-reason="not a DICOM file"' in html
    assert 'data-total="unchanged" data-value="3"' in html
    assert 'href="latest.html"' in html and 'href="2026-01-01T00-00-00.000000Z.html"' in html


def test_the_run_page_links_only_report_keys_and_lists_at_most_max_listed(monkeypatch):
    data = _changes_document([], [], previous='javascript:alert(1)//"><b>x</b>.json')
    html = report_page.run_report_page(data)
    assert 'href="javascript' not in html and "<b>x</b>" not in html
    assert "Nothing changed" in html
    new = [{"key": f"raw-a/d/images/{n}.dcm", "reason": "not a DICOM file"} for n in range(3)]
    monkeypatch.setattr(report_page, "MAX_LISTED", 2)
    html = report_page.run_report_page(_changes_document(new, ["raw-a/d/images/gone.dcm"]))
    assert html.count('<tr class="change"') == 2 and "The first 2 of 4 changes" in html


def test_publish_report_writes_the_page_beside_the_json(tmp_path, capsys):
    store = LocalStorage(tmp_path)
    report = sample_report()
    lines = report_module.publish_report(store, report, dry_run=False)
    page = report.key().removesuffix(".json") + ".html"
    assert report_page.page_key(report.key()) == page
    assert f"report page: {store.url}/{page}" in lines
    html = store.read(page).decode()
    assert report.run_id in html and "raw-b" in html
    assert json.loads(store.read(report.key()))["run_id"] == report.run_id

    dry = RunReport("warehouseloader")
    assert report_module.publish_report(store, dry, dry_run=True) == ""
    assert not (tmp_path / report_page.page_key(dry.key())).exists()
    assert dry.run_id in capsys.readouterr().out


def test_a_page_that_cannot_be_written_costs_nothing_else(tmp_path, caplog):
    class NoHtml(DelegatingStorage):
        def write(self, key, data, content_type="application/json"):
            if key.endswith(".html"):
                raise StorageError(f"cannot write {key}: simulated")
            self.inner.write(key, data, content_type)

    store = NoHtml(LocalStorage(tmp_path))
    report = sample_report()
    report.listed = True  # a run that listed its inputs: its report becomes the memo too
    lines = report_module.publish_report(store, report, dry_run=False)
    assert "report page not written: cannot write" in lines
    assert report.completed and run_module.exit_code(report) == 0
    assert json.loads(store.read(report.latest_key()))["run_id"] == report.run_id
    assert "could not write the run report page" in caplog.text


# --------------------------------------------------------------------------------------------
# The chart JavaScript
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_javascript(monkeypatch, tmp_path):
    """`chart_javascript` with an empty cache under ``tmp_path`` and a counted fake bundler."""
    calls = []

    def bundle():
        calls.append(1)
        return "var a = '</script><b>';"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pages.vl_convert, "javascript_bundle", bundle)
    pages.chart_javascript.cache_clear()
    yield calls
    pages.chart_javascript.cache_clear()  # the next test gets the real bundle


def test_the_chart_javascript_is_bundled_once_per_machine(fresh_javascript, tmp_path):
    script = pages.chart_javascript()
    assert script == "var a = '<\\/script><b>';" and fresh_javascript == [1]
    cache = pages.javascript_cache()
    assert cache.parent == tmp_path / "cache" / "warehouse-loader"
    assert cache.name.startswith("vega-bundle-1.9.0") and cache.read_text() == script
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left

    pages.chart_javascript.cache_clear()  # another process
    assert pages.chart_javascript() == script and fresh_javascript == [1]


def test_an_unwritable_cache_only_costs_time(fresh_javascript, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=pages.__name__)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert pages.chart_javascript() == "var a = '<\\/script><b>';"
    assert "chart JavaScript not cached" in caplog.text
    pages.chart_javascript.cache_clear()
    pages.chart_javascript()
    assert fresh_javascript == [1, 1]


def test_the_real_bundle_holds_vega_lite_and_no_script_end():
    script = pages.chart_javascript()
    assert "vegaEmbed" in script and "vegaLite" in script and len(script) > 500_000
    assert "</script" not in script.lower()
