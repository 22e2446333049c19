"""The pages in a real browser: headless Chromium opens each from disk with the network
disabled. No console error, every chart drawn, the figures on the page equal to the tables
of the same batch (worked out here from the CSV files with pandas), the public page free of
validation figures and of small counts, numbers on hover.

The warehouse is the synthetic demo tree, loaded by the loader and processed by dataprocess
in this process. No test here is skipped: without Chromium the fixture fails (``make test``
installs it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from tests import browser, builders
from warehouse import dataprocess, synthetic
from warehouse.core.config import Settings
from warehouse.dashboard.figures import NOT_GIVEN, SUPPRESSION_THRESHOLD
from warehouse.storage.local import LocalStorage

GROUPS = ("training", "validation")
MODALITIES = {"ct": "CT", "xray": "X-ray", "mri": "MRI"}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    """The demo tree, loaded, then one dataprocess batch: paths of the pages and tables."""
    root = tmp_path_factory.mktemp("pages") / "bucket"
    synthetic.generate_tree(root, patients=40, images=300, seed=0)
    (root.parent / "bucket-processed").mkdir()
    store = LocalStorage(root)
    code, _ = builders.run_loader(store)
    assert code == 0
    services = dataprocess.get_services(settings=Settings(bucket=store.url), storage=store)
    assert dataprocess.run(services) == 0
    processed = root.parent / "bucket-processed"
    latest = pd.read_csv(processed / "latest.csv")
    paths = {row.archive: processed / row.path for row in latest.itertuples()}
    reports = sorted((root / "reports" / "warehouseloader").glob("20*.html"))
    assert len(reports) == 1
    return {
        "root": root,
        "batch": paths["patient"].parent,
        "paths": paths,
        "report_page": reports[0],
        "report": json.loads(reports[0].with_suffix(".json").read_text()),
        "memo": json.loads((reports[0].parent / "latest.json").read_text()),
        "config": json.loads((root / "config.json").read_text()),
    }


@pytest.fixture(scope="module")
def chromium():
    session = browser.start_browser()
    yield session.driver
    session.close()


def table(warehouse, name: str) -> pd.DataFrame:
    path = warehouse["paths"].get(name)
    if path is None:
        return pd.DataFrame()
    if name == "images" or str(path).endswith(".parquet"):  # (the catalogue: Parquet only)
        frame = pd.read_parquet(path)  # (its folder of segments, as any reader reads it)
        return frame.astype(object).where(frame.notna(), "").astype(str)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def open_checked(chromium, page: Path, charts: str = "drawn") -> browser.LoadedPage:
    """Open ``page``: no console error, no request, its charts in state ``charts``."""
    loaded = browser.open_page(chromium, page)
    assert loaded.errors == [], loaded.errors
    assert browser.requested_urls(chromium) == []
    assert loaded.charts == charts
    return loaded


def rows(records: list[dict], *keys: str) -> set[tuple]:
    return {tuple(record[key] for key in keys) for record in records}


# --------------------------------------------------------------------------------------------
# The harness itself: what it would catch
# --------------------------------------------------------------------------------------------


def test_the_harness_sees_console_errors_and_refused_requests(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><body data-charts="none"><img src="http://127.0.0.1:9/x.png">'
        '<script>fetch("https://example.org/x").catch(e => console.error("no fetch:", String(e)));'
        "undefinedFunction();</script></body>"
    )
    loaded = browser.open_page(chromium, page)
    messages = " ".join(entry["message"] for entry in loaded.errors)
    assert "undefinedFunction" in messages
    assert "Failed to fetch" in messages  # the network is off
    # Every request the page tried is seen (the pages' own tests require there are none).
    assert set(browser.requested_urls(chromium)) == {
        "http://127.0.0.1:9/x.png",
        "https://example.org/x",
    }


def test_a_missing_chromium_fails_instead_of_skipping(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(browser.BrowserMissing, match="apt-get install"):
        browser.start_browser()


# --------------------------------------------------------------------------------------------
# The internal dashboard
# --------------------------------------------------------------------------------------------


def test_the_dashboard_draws_every_chart_offline(chromium, warehouse):
    loaded = open_checked(chromium, warehouse["paths"]["dashboard"])
    assert loaded.seconds > 0
    states = browser.chart_states(chromium)
    drawn = {name for name, state in states.items() if state["view"]}
    assert drawn == set(chromium.execute_script("return Object.keys(window.warehouseCharts)"))
    # The batch has an image catalogue: the view position is drawn too.
    assert set(states) == drawn and "images_by_viewposition" in drawn
    for name in drawn:
        state = states[name]
        assert state["svg"] and state["marks"] > 0, name
        assert state["width"] > 100 and state["height"] > 50, name


def test_the_dashboard_header_equals_the_tables(chromium, warehouse):
    open_checked(chromium, warehouse["paths"]["dashboard"])
    values = browser.values_by(chromium, "[data-total]", "total")
    patients = table(warehouse, "patient_clean")
    studies = pd.concat([table(warehouse, m) for m in MODALITIES], ignore_index=True)
    images = table(warehouse, "study_images")
    storage = table(warehouse, "storage").set_index("prefix")["storage"].astype(int)
    for group in GROUPS:
        assert values[f"patients-{group}"] == (patients["group"] == group).sum()
        assert values[f"studies-{group}"] == (studies["group"] == group).sum()
        assert (
            values[f"images-{group}"]
            == images[images["group"] == group]["images"].astype(int).sum()
        )
    assert values["patients"] == len(patients) and values["studies"] == len(studies)
    assert values["bytes"] == storage["training/"] + storage["validation/"]
    header = chromium.execute_script("return document.querySelector('header').innerText")
    assert warehouse["batch"].name in header and warehouse["root"].as_uri() in header


def test_the_dashboard_figures_equal_the_tables(chromium, warehouse):
    open_checked(chromium, warehouse["paths"]["dashboard"])
    data = {
        name: browser.chart_data(chromium, name)
        for name in chromium.execute_script("return Object.keys(window.warehouseCharts)")
    }
    patients = table(warehouse, "patient_clean")
    centre = dict(zip(patients["Pseudonym"], patients["SubmittingCentre"], strict=True))
    images = table(warehouse, "study_images").assign(
        images=lambda t: t["images"].astype(int),
        centre=lambda t: t["Pseudonym"].map(centre),
    )

    # Cumulative series: at each date of a series, everything up to that date.
    def cumulative(frame, date, value=None):
        out = set()
        for (c, g), part in frame.groupby(["centre", "group"]):
            weights = part[value] if value else pd.Series(1, index=part.index)
            for day in sorted(set(part[date])):
                out.add((day, c, g, int(weights[part[date] <= day].sum())))
        return out

    patients_by_day = patients.assign(centre=patients["SubmittingCentre"])
    assert rows(data["patients_over_time"], "date", "centre", "group", "patients") == cumulative(
        patients_by_day, "filename_earliest_date"
    )
    # images by upload date, from the image catalogue (images/)
    catalogue = table(warehouse, "images")
    catalogue = catalogue.assign(
        centre=catalogue["PatientID"].map(centre), day=catalogue["upload_date"].str[:10]
    )
    assert len(catalogue) == images["images"].sum()
    assert rows(data["images_over_time"], "date", "centre", "group", "images") == cumulative(
        catalogue, "day"
    )

    expected = patients.groupby(["SubmittingCentre", "group", "filename_covid_status"]).size()
    shown = {
        (r["centre"], r["group"], "True" if r["status"] == "positive" else "False"): r["patients"]
        for r in data["status_by_centre"]
    }
    assert {k: v for k, v in shown.items() if v} == expected.to_dict()

    modality = {
        (r["modality"], r["group"]): (r["studies"], r["images"]) for r in data["modality_counts"]
    }
    for folder, label in MODALITIES.items():
        studies = table(warehouse, folder)
        for group in GROUPS:
            count = int((studies["group"] == group).sum()) if len(studies) else 0
            filed = images[(images["modality"] == folder) & (images["group"] == group)][
                "images"
            ].sum()
            assert modality[(label, group)] == (count, int(filed)), (label, group)

    split = warehouse["config"]["sites"]["split"]
    target = warehouse["config"]["training_percentage"]
    expected_sites = {}
    for site in split:
        of_site = patients[patients["SubmittingCentre"] == site]
        if len(of_site):
            training = int((of_site["group"] == "training").sum())
            expected_sites[site] = (
                training,
                len(of_site) - training,
                round(100 * training / len(of_site), 2),
            )
    assert {
        r["site"]: (r["training"], r["validation"], r["share"]) for r in data["split_shares"]
    } == expected_sites
    assert {r["target"] for r in data["split_shares"]} == {target}
    assert len(expected_sites) >= 2  # the demo has split sites with patients

    def band(age: str) -> str:
        if not age or float(age) < 0:
            return "unknown"
        return (
            "90+"
            if float(age) >= 90
            else f"{int(float(age) // 10) * 10}-{int(float(age) // 10) * 10 + 9}"
        )

    ages = patients.assign(band=patients["age_update"].map(band)).groupby(["band", "group"]).size()
    assert {
        (r["band"], r["group"]): r["patients"] for r in data["age_bands"] if r["patients"]
    } == ages.to_dict()
    sexes = patients.groupby(["sex_update", "group"]).size()
    assert {
        (r["sex"], r["group"]): r["patients"] for r in data["sexes"] if r["patients"]
    } == sexes.to_dict()

    # Images by manufacturer, body part and view position: one per image of the catalogue.
    for attribute in ("Manufacturer", "BodyPartExamined", "ViewPosition"):
        values = catalogue[attribute].replace("", NOT_GIVEN)
        expected = catalogue.assign(value=values).groupby(["value", "group"]).size()
        assert values.nunique() <= 12  # the demo's values all fit: no "other"
        shown = {
            (r["value"], r["group"]): r["images"] for r in data[f"images_by_{attribute.lower()}"]
        }
        assert {k: v for k, v in shown.items() if v} == expected.to_dict(), attribute

    storage = table(warehouse, "storage")
    assert [(r["prefix"], r["bytes"]) for r in data["storage_use"]] == [
        (p, int(s)) for p, s in zip(storage["prefix"], storage["storage"], strict=True)
    ]

    report = warehouse["memo"]  # (the dashboard reads the whole list)
    assert {r["reason"]: r["inputs"] for r in data["loader_reasons"]} == report["not_filed"]
    listed = browser.texts(chromium, "#recent-unfiled td.key")
    newest = sorted(
        (p for p in report["problems"] if p.get("modified")),
        key=lambda p: p["modified"],
        reverse=True,
    )
    assert listed[:5] == [p["key"] for p in newest[:5]]
    assert browser.values_by(chromium, "#loader-run [data-outcome]", "outcome") == report["counts"]


def test_the_dashboard_shows_numbers_on_hover(chromium, warehouse):
    open_checked(chromium, warehouse["paths"]["dashboard"])
    text = browser.hover_tooltip(chromium, "status_by_centre")
    assert "patients" in text and "status" in text and "centre" in text
    counts = {r["patients"] for r in browser.chart_data(chromium, "status_by_centre")}
    shown = int(re.search(r"patients\s+(\d+)", text).group(1))
    assert shown in counts and shown > 0
    text = browser.hover_tooltip(chromium, "storage_use")
    assert "bytes" in text and re.search(r"\d{1,3}(,\d{3})+", text)  # the exact byte count


# --------------------------------------------------------------------------------------------
# The public page
# --------------------------------------------------------------------------------------------


def stats(warehouse) -> dict[str, list[tuple[str, str]]]:
    return {
        path.name: [tuple(row) for row in csv.reader(io.StringIO(path.read_text())) if row]
        for path in warehouse["batch"].glob("stats_*.csv")
    }


def count_of(text: str) -> int | None:
    text = text.replace(",", "")
    return int(text) if text.isdigit() else None


def test_the_public_page_equals_the_statistics_files(chromium, warehouse):
    open_checked(chromium, warehouse["paths"]["public"])
    shown = chromium.execute_script(
        "return Array.from(document.querySelectorAll('#figures tr[data-file]')).map(function (r) {"
        "return [r.dataset.file, r.dataset.label, r.dataset.suppressed,"
        " r.querySelector('td.number').innerText]; });"
    )
    files = stats(warehouse)
    assert [(f, label) for f, label, _, _ in shown] == [
        (f, label)
        for f in (
            "stats_patients.csv",
            "stats_images.csv",
            "stats_storage.csv",
            "stats_submittingcentres.csv",
        )
        for label, _ in files[f]
    ]
    values = {(f, label): value for f, rows_ in files.items() for label, value in rows_}
    kinds = set()
    for file, label, suppressed, text in shown:
        value = values[(file, label)]
        assert text == value  # the file holds what the page shows
        if file == "stats_storage.csv":
            assert not suppressed  # storage in GB is not a count
        elif suppressed == "small":
            assert value == f"fewer than {SUPPRESSION_THRESHOLD}"
        elif suppressed == "complement":
            assert value == "suppressed"  # hidden so that a small one cannot be worked out
            assert any(
                v == f"fewer than {SUPPRESSION_THRESHOLD}"
                for (f, _), v in values.items()
                if f == file
            ), (file, label)
        else:
            assert count_of(value) >= SUPPRESSION_THRESHOLD
        kinds.add(suppressed)
    assert kinds == {"", "small", "complement"}  # the demo has all three
    date = (warehouse["batch"] / "stats_date.txt").read_text()
    assert (
        chromium.execute_script("return document.querySelector('[data-header=updated]').innerText")
        == date
    )


def test_the_public_page_has_no_validation_figure_and_no_small_count(chromium, warehouse):
    open_checked(chromium, warehouse["paths"]["public"])
    text = chromium.execute_script("return document.body.innerText")
    assert "validation" not in text.lower()
    assert f"no count under {SUPPRESSION_THRESHOLD} is shown" in text
    names = chromium.execute_script("return Object.keys(window.warehouseCharts || {})")
    assert names, "the demo's public page has charts"
    states = browser.chart_states(chromium)
    charted = []
    for name in names:
        assert states[name]["svg"] and states[name]["marks"] > 0
        charted += browser.chart_data(chromium, name)
    files = stats(warehouse)
    training = {label: value for rows_ in files.values() for label, value in rows_}
    for record in charted:
        assert "validation" not in json.dumps(record).lower()
        value = training[record["label"]]
        if record["label"].endswith("storage") or "export" in record["label"]:
            assert math.isclose(record["value"], float(value.removesuffix("GB").replace(",", "")))
        else:
            assert record["value"] == count_of(value) >= SUPPRESSION_THRESHOLD
    # Every number on the page that is a count is at least the threshold (dates aside).
    figures = browser.texts(chromium, "#figures td.number")
    for figure in figures:
        count = count_of(figure)
        assert count is None or count >= SUPPRESSION_THRESHOLD, figure
    # The validation group's own figures differ from the training ones shown.
    patients = table(warehouse, "patient_clean")
    validation_only = set(patients[patients["group"] == "validation"]["Pseudonym"])
    assert validation_only and not any(p in text for p in validation_only)


# --------------------------------------------------------------------------------------------
# The loader's run report page
# --------------------------------------------------------------------------------------------


def test_the_run_report_page_shows_what_was_refused_by_site_and_reason(chromium, warehouse):
    open_checked(chromium, warehouse["report_page"], charts="none")
    report, memo = warehouse["report"], warehouse["memo"]
    cells = browser.values_by(chromium, "#by-prefix tr[data-prefix]", "prefix", "reason")
    expected: dict[tuple[str, str], int] = {}
    for problem in memo["problems"]:
        key = (problem["key"].split("/", 1)[0], problem["reason"])
        expected[key] = expected.get(key, 0) + 1
    assert cells == expected
    assert {prefix for prefix, _ in expected} >= {"raw-cambridge", "raw-sheffield"}
    # the run's page lists its changes: a first run's, every input not filed is new
    keys = browser.texts(chromium, "#changes tr.change[data-change=new] td.key")
    assert sorted(keys) == sorted(p["key"] for p in memo["problems"])
    assert browser.texts(chromium, "#inputs tr.problem") == []
    filed = browser.values_by(chromium, "#filed [data-outcome]", "outcome")
    assert filed == report["counts"] and filed["images copied"] > 0
    # What each site's uploads came to: its raw images now in the warehouse, counted apart.
    by_site = browser.values_by(chromium, "#filed-by-prefix tr[data-prefix]", "prefix", "outcome")
    root = warehouse["root"]
    filed_names = {
        path.name
        for path in root.glob("*/*/*/*/*/*")
        if path.parts[-6] in ("training", "validation") and not path.parts[-5].endswith("metadata")
    }
    # (a raw image refused, such as one re-sent for another patient, may share a filed name)
    refused = {p["key"] for p in memo["problems"]}
    for prefix in sorted({p for p, _ in by_site}):
        raw_images = [
            path.name
            for path in (root / prefix).glob("*/images/*")
            if path.relative_to(root).as_posix() not in refused
        ]
        filed_here = sum(1 for name in raw_images if name in filed_names)
        assert by_site[(prefix, "images copied")] == filed_here, prefix
    assert sum(n for (_, o), n in by_site.items() if o == "images copied") == filed["images copied"]
    header = chromium.execute_script("return document.querySelector('header').innerText")
    assert report["run_id"] in header and "The run completed." in header
    # the whole list's page, which the run's page links, lists every input not filed
    full = warehouse["report_page"].parent / "latest.html"
    assert browser.texts(chromium, '#links a[href="latest.html"]') == ["latest.html"]
    open_checked(chromium, full, charts="none")
    keys = browser.texts(chromium, "#inputs tr.problem td.key")
    assert sorted(keys) == sorted(p["key"] for p in memo["problems"])


def test_screenshots_of_the_pages(chromium, warehouse, tmp_path):
    for name, page in (
        ("dashboard", warehouse["paths"]["dashboard"]),
        ("public", warehouse["paths"]["public"]),
        ("report", warehouse["report_page"]),
    ):
        png = browser.screenshot(chromium, page, tmp_path / f"{name}.png")
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == 1100 and height > 600, (name, width, height)
