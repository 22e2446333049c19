"""The batch's two dashboard pages: ``dashboard.html`` (internal, both groups) and
``public.html`` (the public statistics, training only, small counts suppressed).

Both are pure functions of data (the batch's tables, the warehouse's ``config.json``, the last
loader run report): HTML text out, no storage, no bonobo. The figures come from
:mod:`warehouse.dashboard.figures`; each chart is a Vega-Lite specification built with
`altair`, drawn in the browser by Vega, Vega-Lite and Vega-Embed, whose JavaScript
`vl_convert` ships in its Python package and which is inlined in each page together with the
style sheet: a page is one file that needs no network (its Content-Security-Policy forbids any
request). Every chart names its data set after the chart (``view.data(name)`` in the
browser) and shows its numbers on hover.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import jinja2
import pandas as pd
import vl_convert

from warehouse.core.config import PipelineConfig
from warehouse.core.report_page import page_environment
from warehouse.dashboard import figures
from warehouse.dashboard.volumes import series_by_site

__all__ = [
    "Chart",
    "PageInputs",
    "chart_javascript",
    "javascript_cache",
    "dashboard_page",
    "public_page",
]

logger = logging.getLogger(__name__)


GROUP_COLOURS = alt.Scale(domain=list(figures.GROUPS), range=["#1b6ca8", "#d9731f"])
STATUS_COLOURS = alt.Scale(domain=["positive", "negative"], range=["#b5283c", "#6a9f58"])
WIDTH = 640
#: Axes of counts: whole-number ticks only.
COUNT_AXIS = alt.Axis(tickMinStep=1, format=",d")
#: Violations of each hold-out check shown on the internal page (``holdout.json`` lists more).
HOLDOUT_SHOWN = 5


@dataclass(frozen=True)
class PageInputs:
    """What the pages need besides the batch's tables.

    Attributes
    ----------
    warehouse : str
        The warehouse's URL (shown in the header).
    config : PipelineConfig or None
        The warehouse's ``config.json`` (None when it could not be used: see ``config_note``).
    config_note : str
        Why there is no config (shown in place of the split chart).
    loader_report : dict or None
        The last loader run report (``reports/warehouseloader/latest.json``).
    loader_note : str
        Why there is no loader report.
    images : pandas.DataFrame or None
        The image catalogue (one row per filed image), when the batch has one.
    screened : mapping or None
        ``(raw prefix, screen status) -> images`` of the catalogue
        (`catalogue.merge.CatalogueScan.screened`).
    holdout : dict or None
        The batch's hold-out certificate (`catalogue.holdout.certify`): shown at the top of
        the internal page only.
    series : pandas.DataFrame or None
        The series table's counts per group, patient and modality folder
        (`catalogue.series.series_counts`), when the batch has one.
    """

    warehouse: str = ""
    config: PipelineConfig | None = None
    config_note: str = ""
    loader_report: dict | None = None
    loader_note: str = ""
    images: pd.DataFrame | None = None
    screened: Mapping[tuple, int] | None = None
    holdout: dict | None = None
    series: pd.DataFrame | None = None


@dataclass(frozen=True)
class Chart:
    """One chart of a page: its Vega-Lite specification and the text around it.

    Attributes
    ----------
    name : str
        Identifier; also the name of its data set.
    title : str
    caption : str
    spec : dict or None
        The Vega-Lite specification; None when there is nothing to draw (``empty`` says why).
    empty : str
        Shown instead of the chart when ``spec`` is None.
    """

    name: str
    title: str
    caption: str
    spec: dict | None
    empty: str = ""


@functools.cache
def chart_javascript() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script, from `vl_convert` (made once a process).

    `vl_convert` builds the bundle in 3-5 s; it is kept in a cache file named after its
    version (:func:`javascript_cache`), so later processes on the same machine read it instead.
    The text is safe inside a ``<script>`` element (no ``</script``).
    """
    cache = javascript_cache()
    try:
        return cache.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        logger.debug("no chart JavaScript in %s: bundling it", cache)
    # vl_convert's stub makes the snippet required; the library defaults it, as its docs say.
    bundle = vl_convert.javascript_bundle()  # type: ignore[call-arg]
    script = bundle.replace("</script", "<\\/script")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under another name, then renamed: a reader never sees half a file.
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text(script, encoding="utf-8")
        os.replace(partial, cache)
    except OSError as exc:
        logger.info("chart JavaScript not cached (%s): it is bundled again next time", exc)
    return script


def javascript_cache() -> Path:
    """Where :func:`chart_javascript` keeps the bundle: ``$XDG_CACHE_HOME/warehouse-loader/``
    (``~/.cache/warehouse-loader/`` without it), one file per vl-convert, Vega, Vega-Lite and
    Vega-Embed version."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    versions = "-".join(
        (
            importlib.metadata.version("vl-convert-python"),
            vl_convert.get_vega_version(),
            vl_convert.get_vegalite_versions()[-1],
            vl_convert.get_vega_embed_version(),
        )
    )
    return Path(base) / "warehouse-loader" / f"vega-bundle-{versions}.js"


def human_bytes(size: int | float) -> str:
    """A byte count for people, in decimal units: ``0 B``, ``12.3 kB``, ``4.56 GB``."""
    size = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


_ENVIRONMENT = page_environment(bytes=human_bytes)


def _data(name: str, records: list[dict]) -> alt.InlineData:
    return alt.InlineData(values=records, name=name)


def _spec(chart) -> dict:
    return chart.configure_view(stroke=None).configure_axis(labelLimit=320).to_dict()


def _chart(name, title, caption, records, build, empty="Nothing to show yet.") -> Chart:
    if not records:
        return Chart(name, title, caption, None, empty)
    # Altair checks the spec against Vega-Lite's schema, every data value included (2 s for
    # 20,000 records): the spec is checked without them, then they are put in its data
    spec = _spec(build(alt.Chart(_data(name, []))))
    if spec.get("data") != {"name": name, "values": []}:
        raise ValueError(f"chart {name}: its data is not where the records go")
    spec["data"]["values"] = records
    return Chart(name, title, caption, spec)


def _cumulative_chart(name: str, title: str, caption: str, records, measure: str) -> Chart:
    def build(chart):
        tooltip = [
            alt.Tooltip("date:N", title="date"),  # the ISO text: no time zone to shift it
            alt.Tooltip("centre:N"),
            alt.Tooltip("group:N"),
            alt.Tooltip(f"{measure}:Q", title=f"{measure} (cumulative)", format=","),
            alt.Tooltip("new:Q", title="new that day", format=","),
        ]
        encoding = {
            # Dates are UTC days: drawn in UTC, whatever the reader's time zone.
            "x": alt.X(
                "date:T",
                title=None,
                scale=alt.Scale(type="utc"),
                axis=alt.Axis(format="%Y-%m-%d", formatType="utc", labelAngle=0),
            ),
            "y": alt.Y(f"{measure}:Q", title=f"{measure} (cumulative)", axis=COUNT_AXIS),
            "color": alt.Color(
                "centre:N",
                title="centre",
                legend=alt.Legend(orient="bottom", columns=2, labelLimit=400),
            ),
            "strokeDash": alt.StrokeDash("group:N", sort=list(figures.GROUPS)),
        }
        line = chart.mark_line(interpolate="step-after").encode(**encoding)
        points = chart.mark_point(filled=True, size=24).encode(
            **{k: v for k, v in encoding.items() if k != "strokeDash"},
            tooltip=tooltip,
        )
        return (line + points).properties(width=WIDTH, height=280)

    return _chart(name, title, caption, records, build)


def _grouped_bars(chart, category: str, value: str, *, sort=None, horizontal=False, extra=()):
    tooltip = [
        alt.Tooltip(f"{category}:N"),
        alt.Tooltip("group:N"),
        alt.Tooltip(f"{value}:Q", format=","),
        *extra,
    ]
    colour = alt.Color("group:N", scale=GROUP_COLOURS, title="group")
    if horizontal:
        return chart.mark_bar().encode(
            y=alt.Y(f"{category}:N", sort=sort, title=None),
            yOffset=alt.YOffset("group:N", sort=list(figures.GROUPS)),
            x=alt.X(f"{value}:Q", title=value, axis=COUNT_AXIS),
            color=colour,
            tooltip=tooltip,
        )
    return chart.mark_bar().encode(
        x=alt.X(f"{category}:N", sort=sort, title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("group:N", sort=list(figures.GROUPS)),
        y=alt.Y(f"{value}:Q", title=value, axis=COUNT_AXIS),
        color=colour,
        tooltip=tooltip,
    )


def _split_chart(shares: dict | None, note: str) -> Chart:
    title = "Training share per split site"
    if shares is None:
        return Chart("split_shares", title, "", None, note or "No config.json.")
    target = shares["target"]
    caption = (
        f"Share of each split site's patients in training, against training_percentage "
        f"({target} %, the vertical line) in config.json. The whisker is the range a fair "
        "split gives 95 % of the time with that many patients. Hover for the counts."
    )
    records = [dict(site, target=target) for site in shares["sites"] if site["patients"]]
    if not records:
        return Chart("split_shares", title, caption, None, "No patient of a split site yet.")

    def build(chart):
        tooltip = [
            alt.Tooltip("site:N"),
            alt.Tooltip("training:Q", format=","),
            alt.Tooltip("validation:Q", format=","),
            alt.Tooltip("share:Q", title="training share (%)", format=".1f"),
            alt.Tooltip("expected_low:Q", title="fair split from (%)", format=".1f"),
            alt.Tooltip("expected_high:Q", title="fair split to (%)", format=".1f"),
        ]
        y = alt.Y("site:N", title=None)
        bars = chart.mark_bar(color="#1b6ca8").encode(
            y=y,
            x=alt.X("share:Q", title="training share (%)", scale=alt.Scale(domain=[0, 100])),
            tooltip=tooltip,
        )
        whiskers = chart.mark_rule(color="#222", strokeWidth=2).encode(
            y=y, x="expected_low:Q", x2="expected_high:Q", tooltip=tooltip
        )
        line = chart.mark_rule(color="#b5283c", strokeDash=[4, 3]).encode(x="target:Q")
        return (bars + whiskers + line).properties(width=WIDTH)

    return _chart("split_shares", title, caption, records, build)


def _equipment_charts(kit: figures.Equipment) -> list[Chart]:
    titles = {
        "Manufacturer": "Images by manufacturer",
        "BodyPartExamined": "Images by body part examined",
        "ViewPosition": "Images by view position",
    }
    if kit.source == "catalogue":
        source = "From the image catalogue (one row per filed image)."
    else:
        source = (
            "From the study tables until the batch has an image catalogue: each study's images "
            "count under its first image's header."
        )
    charts = []
    for attribute in figures.EQUIPMENT_ATTRIBUTES:
        name = f"images_by_{attribute.lower()}"
        records = kit.attributes.get(attribute)
        caption = f"{attribute}, the {figures.TOP_VALUES} values with most images. {source}"
        if records is None:
            charts.append(
                Chart(
                    name,
                    titles[attribute],
                    "",
                    None,
                    f"{attribute} is not in the study tables: it is shown once the batch has "
                    "an image catalogue (images/).",
                )
            )
            continue
        charts.append(
            _chart(
                name,
                titles[attribute],
                caption,
                records,
                lambda c, attribute=attribute: (
                    _grouped_bars(c, "value", "images", sort="-x", horizontal=True)
                    .encode(y=alt.Y("value:N", sort="-x", title=attribute))
                    .properties(width=WIDTH)
                ),
            )
        )
    return charts


def _storage_chart(records: list[dict]) -> Chart:
    largest = max((r["bytes"] for r in records), default=0)
    divisor, unit = next(
        ((d, u) for d, u in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB")) if largest >= d),
        (1e3, "kB"),
    )

    def build(chart):
        return (
            chart.transform_calculate(size=f"datum.bytes / {divisor:.0f}")
            .mark_bar()
            .encode(
                y=alt.Y("prefix:N", sort=None, title=None),
                x=alt.X("size:Q", title=unit),
                color=alt.Color("group:N", scale=GROUP_COLOURS),
                tooltip=[
                    "prefix:N",
                    alt.Tooltip("bytes:Q", format=","),
                    alt.Tooltip("size:Q", title=unit, format=",.3f"),
                ],
            )
            .properties(width=WIDTH)
        )

    return _chart(
        "storage_use",
        "Storage by prefix",
        "Bytes stored under each prefix (a group's prefix holds everything of that group: "
        "images, metadata and clinical files).",
        records,
        build,
    )


def _identifying_chart(records: list[dict]) -> Chart:
    def build(chart):
        return (
            chart.mark_bar()
            .encode(
                y=alt.Y("site:N", title=None),
                x=alt.X("images:Q", title="images", axis=COUNT_AXIS),
                color=alt.Color(
                    "status:N",
                    scale=alt.Scale(
                        domain=list(figures.SCREEN_STATUSES),
                        range=["#b5283c", "#6a9f58", "#9a9a9a"],
                    ),
                    title=None,
                ),
                order=alt.Order("status:N", sort="descending"),
                tooltip=["site:N", "status:N", alt.Tooltip("images:Q", format=",")],
            )
            .properties(width=WIDTH)
        )

    flagged = sum(r["images"] for r in records if r["status"] == "flagged")
    return _chart(
        "identifying_by_site",
        "Identifying data in image headers, by site",
        f"Catalogued images by raw prefix (the uploading site): flagged ({flagged:,} in all) "
        "when the header breaks the identifying-data profile (a patient name, a full birth "
        "date, ...: filed under the site's report policy), clean, or not screened (filed "
        "before the screen existed, or catalogued from the header). Blind to text burned "
        "into the pixels and to free-text descriptions.",
        records,
        build,
        empty="No catalogued image yet.",
    )


def dashboard_charts(
    tables: Mapping[str, pd.DataFrame],
    inputs: PageInputs,
) -> list[Chart]:
    """The internal page's charts, in page order.

    Parameters
    ----------
    tables : mapping
        The batch's tables by archive name (``ct``, ``xray``, ``mri`` when they have studies,
        ``patient_clean``, ``storage``, ``study_images``).
    inputs : PageInputs
    """
    patient_clean = tables["patient_clean"]
    studies = {m: tables[m] for m in figures.MODALITY_LABELS if m in tables}
    study_images = tables.get("study_images")
    catalogue = tables.get("images")
    if catalogue is None or not len(catalogue):
        catalogue = inputs.images
    by_upload = catalogue is not None and len(catalogue) > 0
    charts = [
        _cumulative_chart(
            "patients_over_time",
            "Patients over time",
            "Patients by the date of their first upload (the upload folder of their first "
            "clinical file), cumulative, one line per submitting centre and group (solid "
            "training, dashed validation).",
            figures.patients_over_time(patient_clean),
            "patients",
        ),
        _cumulative_chart(
            "images_over_time",
            "Images over time",
            (
                "Images by their upload date (the raw upload folder, from the image "
                "catalogue), cumulative, by their patient's submitting centre and group."
                if by_upload
                else "Images by the date they were filed (the warehouse keeps no upload date "
                "for an image until the batch has an image catalogue), cumulative, by their "
                "patient's submitting centre and group."
            ),
            figures.images_over_time(study_images, patient_clean, catalogue),
            "images",
        ),
        _chart(
            "status_by_centre",
            "Positive and negative patients by centre",
            "Patients with a data_ clinical file are positive, those with status_ files only "
            "negative; by submitting centre, one panel per group.",
            figures.status_by_centre(patient_clean),
            lambda c: (
                c.mark_bar()
                .encode(
                    y=alt.Y("centre:N", title=None),
                    x=alt.X("patients:Q", title="patients"),
                    color=alt.Color("status:N", scale=STATUS_COLOURS),
                    tooltip=[
                        "centre:N",
                        "group:N",
                        "status:N",
                        alt.Tooltip("patients:Q", format=","),
                    ],
                )
                .properties(width=300)
                .facet(column=alt.Column("group:N", sort=list(figures.GROUPS), title=None))
            ),
        ),
        _chart(
            "modality_counts",
            "Studies and images by modality",
            "Studies (one per StudyInstanceUID folder) and the images filed in them, by "
            "modality and group.",
            figures.modality_counts(studies, study_images),
            lambda c: (
                c.transform_fold(["studies", "images"], as_=["measure", "count"])
                .mark_bar()
                .encode(
                    x=alt.X("modality:N", sort=list(figures.MODALITY_LABELS.values()), title=None),
                    xOffset=alt.XOffset("group:N", sort=list(figures.GROUPS)),
                    y=alt.Y("count:Q", title=None),
                    color=alt.Color("group:N", scale=GROUP_COLOURS),
                    tooltip=[
                        "modality:N",
                        "group:N",
                        alt.Tooltip("studies:Q", format=","),
                        alt.Tooltip("images:Q", format=","),
                    ],
                )
                .properties(width=300, height=240)
                .facet(column=alt.Column("measure:N", sort=["studies", "images"], title=None))
                .resolve_scale(y="independent")
            ),
        ),
        _split_chart(figures.split_shares(patient_clean, inputs.config), inputs.config_note),
        _chart(
            "age_bands",
            "Age by group",
            "Patients by ten-year band of age_update (the cleaned age, filled from the images' "
            "DICOM age when the record has none); unknown: no age anywhere.",
            figures.age_bands(patient_clean),
            lambda c: _grouped_bars(
                c, "band", "patients", sort=alt.EncodingSortField("order")
            ).properties(width=WIDTH, height=240),
        ),
        _chart(
            "sexes",
            "Sex by group",
            "Patients by sex_update (the cleaned sex, filled from the images' DICOM sex when "
            "the record has none).",
            figures.sexes(patient_clean),
            lambda c: _grouped_bars(c, "sex", "patients", sort=None).properties(
                width=WIDTH // 2, height=240
            ),
        ),
        *_equipment_charts(figures.equipment(studies, study_images, catalogue)),
        _storage_chart(figures.storage_use(tables["storage"])),
        _identifying_chart(figures.identifying_by_site(inputs.screened)),
    ]
    run = figures.loader_run(inputs.loader_report)
    charts.append(
        _chart(
            "loader_reasons",
            "Last loader run: inputs not filed, by reason",
            "From reports/warehouseloader/latest.json.",
            run["reasons"] if run else [],
            lambda c: (
                c.mark_bar(color="#7b5ea7")
                .encode(
                    y=alt.Y("reason:N", sort="-x", title=None),
                    x=alt.X("inputs:Q", title="inputs not filed", axis=COUNT_AXIS),
                    tooltip=["reason:N", alt.Tooltip("inputs:Q", format=",")],
                )
                .properties(width=WIDTH)
            ),
            empty=(
                inputs.loader_note or "No loader run report."
                if run is None
                else "The last loader run filed every input."
            ),
        )
    )
    return charts


def _render(template: str, **context) -> str:
    return _ENVIRONMENT.get_template(template).render(
        javascript=jinja2.Markup(chart_javascript()), **context
    )


def _specs(charts: list[Chart]) -> dict[str, dict]:
    return {chart.name: chart.spec for chart in charts if chart.spec is not None}


def dashboard_page(
    batch: str,
    now: dt.datetime,
    tables: Mapping[str, pd.DataFrame],
    inputs: PageInputs,
) -> str:
    """The internal page (``dashboard.html``): both groups, every chart, the last loader run.

    Parameters
    ----------
    batch : str
        The batch folder name.
    now : datetime.datetime
        The batch's time.
    tables : mapping
        The batch's tables by archive name (see `dashboard_charts`).
    inputs : PageInputs

    Returns
    -------
    str
        One self-contained HTML document.
    """
    charts = dashboard_charts(tables, inputs)
    studies = {m: tables[m] for m in figures.MODALITY_LABELS if m in tables}
    totals = figures.header_totals(
        tables["patient_clean"], studies, tables.get("study_images"), tables["storage"]
    )
    return _render(
        "dashboard.html",
        batch=batch,
        built=_stamp(now),
        warehouse=inputs.warehouse,
        totals=totals,
        groups=figures.GROUPS,
        charts=charts,
        specs=_specs(charts),
        run=figures.loader_run(inputs.loader_report),
        loader_note=inputs.loader_note,
        holdout=inputs.holdout,
        shown=HOLDOUT_SHOWN,
        series=(
            series_by_site(inputs.series, tables["patient_clean"]).to_dict("records")
            if inputs.series is not None
            else None
        ),
    )


def public_charts(sections: list[figures.PublicSection]) -> list[Chart]:
    """The public page's charts: the shown (not suppressed) figures of each section."""
    by_file = {section.file: section for section in sections}
    charts = []
    specs = (
        ("stats_patients.csv", "patients", "Patients with images", slice(1, 3), "patients"),
        ("stats_images.csv", "studies", "Image studies by modality", slice(1, None), "studies"),
        ("stats_storage.csv", "storage", "Storage", slice(1, None), "GB"),
    )
    for file, name, title, rows, unit in specs:
        section = by_file.get(file)
        if section is None:
            continue
        chosen = section.figures[rows]
        records = [
            {"label": f.label, "value": f.count if f.count is not None else _gigabytes(f.text)}
            for f in chosen
            if not f.suppressed
        ]
        hidden = [f.label for f in chosen if f.suppressed]
        caption = "Training group only."
        if hidden:
            caption += " Not shown (suppressed): " + "; ".join(hidden) + "."
        empty = "Every figure of this chart is suppressed."
        if records and not any(r["value"] for r in records):
            records, empty = [], "Every figure of this chart is 0."
        charts.append(
            _chart(
                f"public_{name}",
                title,
                caption,
                records,
                lambda c, unit=unit: (
                    c.mark_bar(color="#1b6ca8")
                    .encode(
                        y=alt.Y("label:N", sort=None, title=None),
                        x=alt.X("value:Q", title=unit),
                        tooltip=[
                            alt.Tooltip("label:N"),
                            alt.Tooltip("value:Q", title=unit, format=","),
                        ],
                    )
                    .properties(width=WIDTH // 1.5)
                ),
                empty=empty,
            )
        )
    return charts


def _gigabytes(text: str) -> float:
    return float(text.removesuffix("GB").replace(",", ""))


def public_page(stats_files: Mapping[str, str], now: dt.datetime) -> str:
    """The public page (``public.html``): the figures of the ``stats_*`` files, training only.

    Counts under `figures.SUPPRESSION_THRESHOLD`, and counts that would reveal one, are not
    shown (`figures.public_figures`); the page says so.

    Parameters
    ----------
    stats_files : mapping
        The batch's public statistics files (name -> text).
    now : datetime.datetime
        The batch's time.
    """
    sections = figures.public_figures(stats_files)
    charts = public_charts(sections)
    return _render(
        "public.html",
        sections=sections,
        updated=stats_files.get("stats_date.txt", ""),
        threshold=figures.SUPPRESSION_THRESHOLD,
        built=_stamp(now),
        charts=charts,
        specs=_specs(charts),
    )


def _stamp(now: dt.datetime) -> str:
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC)
    return now.strftime("%Y-%m-%d %H:%M UTC")
