"""The dashboard pages' size and load time in headless Chromium: ``python -m benchmarks.pages``.

For a dataprocess batch folder (the newest of ``demo/bucket-processed`` by default) it opens
``dashboard.html`` and ``public.html`` (and, with ``--report``, a run report page) with the
test harness (``tests.browser``: headless Chromium, network disabled) several times and
prints each page's size and its load time: from the start of the navigation until every chart
is drawn, the first (cold) load and the median of the others.

``--compare`` also draws the dashboard's charts, with the same data, with the other candidate
library, plotly (its offline bundle inlined; ``pip install plotly`` first, it is not a
dependency), and measures that page the same way. That is how the chart library was chosen.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tests import browser
from warehouse.dashboard import pages
from warehouse.dashboard.batch import PAGES, read_page_inputs
from warehouse.storage.local import LocalStorage

TABLES = ("ct", "xray", "mri", "patient_clean", "storage", "study_images")


def measure(driver, page: Path, repeat: int) -> dict:
    """Size and load times of one page (``repeat`` loads, the first one apart)."""
    times = []
    for _ in range(repeat):
        loaded = browser.open_page(driver, page)
        if loaded.errors or loaded.charts not in ("drawn", "none"):
            raise RuntimeError(f"{page}: {loaded.charts} {loaded.errors}")
        times.append(loaded.seconds)
    return {
        "page": str(page),
        "bytes": page.stat().st_size,
        "first_load_s": round(times[0], 3),
        "median_load_s": round(statistics.median(times[1:] or times), 3),
    }


def plotly_page(charts: list[pages.Chart]) -> str:
    """The dashboard's charts drawn with plotly, from the same data (a comparable page)."""
    import plotly.graph_objects as go
    import plotly.offline

    figures = []
    for chart in charts:
        if chart.spec is None:
            continue
        records = chart.spec["data"]["values"]
        frame = pd.DataFrame(records)
        figure = go.Figure()
        numbers = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        texts = [c for c in frame.columns if c not in numbers]
        series = "group" if "group" in frame.columns else None
        if "date" in frame.columns:
            for (centre, group), part in frame.groupby(["centre", "group"]):
                figure.add_trace(
                    go.Scatter(
                        x=part["date"], y=part[numbers[0]], mode="lines+markers",
                        line_shape="hv", name=f"{centre} {group}",
                    )
                )  # fmt: skip
        else:
            category = next(c for c in texts if c != series)
            for name, part in frame.groupby(series) if series else [("", frame)]:
                figure.add_trace(go.Bar(x=part[category], y=part[numbers[0]], name=str(name)))
        figure.update_layout(title=chart.title, width=760, height=380)
        figures.append(figure.to_plotly_json())
    body = "".join(f'<div id="p{i}"></div>' for i in range(len(figures)))
    script = (
        f"var figures = {json.dumps(figures, default=str)};"
        "Promise.all(figures.map(function (f, i) {"
        " return Plotly.newPlot('p' + i, f.data, f.layout); }))"
        ".then(function () { document.body.dataset.charts = 'drawn'; });"
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>plotly</title></head>'
        f'<body data-charts="pending">{body}<script>{plotly.offline.get_plotlyjs()}</script>'
        f"<script>{script}</script></body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pages", description=__doc__)
    parser.add_argument("--batch", type=Path, help="a batch folder (default: the demo's newest)")
    parser.add_argument("--report", type=Path, help="a run report page to measure too")
    parser.add_argument("--repeat", type=int, default=6, help="loads per page (default 6)")
    parser.add_argument("--compare", action="store_true", help="also measure a plotly page")
    parser.add_argument("--warehouse", type=Path, help="the batch's warehouse (for --compare)")
    args = parser.parse_args(argv)
    batch = args.batch or sorted(Path("demo/bucket-processed").glob("20*"))[-1]
    targets = [batch / PAGES["dashboard"], batch / PAGES["public"]]
    if args.report:
        targets.append(args.report)
    scratch = Path(tempfile.mkdtemp(prefix="pages-bench-"))
    if args.compare:
        tables = {
            name: pd.read_parquet(batch / f"{name}.parquet")
            for name in TABLES
            if (batch / f"{name}.parquet").exists()
        }
        warehouse = args.warehouse or batch.parent.with_name(
            batch.parent.name.removesuffix("-processed")
        )
        inputs = read_page_inputs(LocalStorage(warehouse))
        charts = pages.dashboard_charts(tables, inputs)
        other = scratch / "dashboard-plotly.html"
        other.write_text(plotly_page(charts))
        targets.append(other)
    session = browser.start_browser()
    try:
        results = [measure(session.driver, page, args.repeat) for page in targets]
    finally:
        session.close()
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    print(f"headless Chromium, {args.repeat} loads a page, {when}")
    print(f"{'page':<60} {'size (bytes)':>13} {'first (s)':>10} {'median (s)':>11}")
    for result in results:
        print(
            f"{Path(result['page']).name:<60} {result['bytes']:>13,} "
            f"{result['first_load_s']:>10.3f} {result['median_load_s']:>11.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
