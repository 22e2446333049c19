"""A run report as a page: ``reports/<graph>/<UTC timestamp>.html`` beside the JSON report.

An operator who gets the run's notice opens one file and sees what the run filed, and what it
did not file, by raw prefix (the uploading site) and reason, down to each key. The page is
built from the JSON report alone (a pure function: the report's dict in, HTML out), holds its
style sheet and no script, and asks the network for nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path

import jinja2

from warehouse.core.keys import top_folder

__all__ = [
    "MAX_LISTED",
    "filed_by_prefix",
    "moment",
    "page_key",
    "refused_by_prefix",
    "run_report_page",
]

#: Inputs not filed listed one by one on the page (the JSON report lists them all).
MAX_LISTED = 5000


def moment(text: object) -> str:
    """An ISO time as people read it: ``2026-12-02 05:36:10 UTC`` (the text when unreadable)."""
    if not isinstance(text, str) or not text:
        return ""
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    if stamp.tzinfo is None:
        return f"{stamp:%Y-%m-%d %H:%M:%S}"
    return f"{stamp.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


#: The page templates (the run report page here, the dashboard pages in `dashboard.pages`).
TEMPLATES = Path(__file__).with_name("page_templates")


def page_environment(**filters: Callable) -> jinja2.Environment:
    """The templates' environment: HTML escaped, undefined names an error, and the filters
    every page uses (``thousands``, ``moment``) plus ``filters``."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["thousands"] = lambda n: f"{int(n):,}"
    environment.filters["moment"] = moment
    environment.filters.update(filters)
    return environment


_ENVIRONMENT = page_environment()


def page_key(json_key: str) -> str:
    """The page's key beside a JSON report's: ``reports/g/<stamp>.json`` -> ``.../<stamp>.html``."""
    return json_key.removesuffix(".json") + ".html"


def refused_by_prefix(report: Mapping) -> list[dict]:
    """The inputs not filed, counted by prefix and reason.

    Returns
    -------
    list of dict
        One per prefix, sorted: ``prefix``, ``inputs`` (its total) and ``reasons`` (records
        ``reason``, ``inputs``; most first, then by reason).
    """
    counts: dict[str, Counter] = defaultdict(Counter)
    for problem in report.get("problems") or ():
        if isinstance(problem, Mapping):
            counts[top_folder(str(problem.get("key", "")))][str(problem.get("reason", ""))] += 1
    return [
        {
            "prefix": prefix,
            "inputs": sum(reasons.values()),
            "reasons": [
                {"reason": reason, "inputs": n}
                for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
            ],
        }
        for prefix, reasons in sorted(counts.items())
    ]


def run_report_page(report: Mapping, *, warehouse: str = "", json_key: str = "") -> str:
    """The HTML page of one run report.

    Parameters
    ----------
    report : mapping
        The JSON run report (``RunReport.as_dict()``): ``graph``, ``run_id``, ``started``,
        ``finished``, ``completed``, ``fatal``, ``counts``, ``not_filed``, ``problems``.
    warehouse : str
        The warehouse's URL (shown).
    json_key : str
        The JSON report's key (named on the page).

    Returns
    -------
    str
        One self-contained HTML document: the run, what it filed (``counts``, and by prefix
        from ``counts_by_prefix``), the inputs not filed by prefix and reason, and each such
        input (key, reason, detail) by prefix, at most :data:`MAX_LISTED`.
    """
    problems = sorted(
        (p for p in report.get("problems") or () if isinstance(p, Mapping)),
        key=lambda p: (str(p.get("key", "")), str(p.get("reason", ""))),
    )
    listed: dict[str, list[Mapping]] = defaultdict(list)
    for problem in problems[:MAX_LISTED]:
        listed[top_folder(str(problem.get("key", "")))].append(problem)
    reasons = sorted(
        ((str(r), int(n)) for r, n in (report.get("not_filed") or {}).items()),
        key=lambda item: (-item[1], item[0]),
    )
    by_prefix = refused_by_prefix(report)
    widest = max((item["inputs"] for row in by_prefix for item in row["reasons"]), default=0)
    page: str = _ENVIRONMENT.get_template("run_report.html").render(
        report=report,
        graph=str(report.get("graph", "")),
        warehouse=warehouse,
        json_key=json_key,
        counts=sorted((str(k), int(v)) for k, v in (report.get("counts") or {}).items()),
        reasons=reasons,
        unfiled=sum(n for _, n in reasons),
        by_prefix=by_prefix,
        widest=widest,
        listed=sorted(listed.items()),
        total_problems=len(problems),
        max_listed=MAX_LISTED,
        filed_by_prefix=filed_by_prefix(report),
    )
    return page


def filed_by_prefix(report: Mapping) -> list[tuple[str, list[tuple[str, int]]]]:
    """What each raw prefix's inputs came to (``counts_by_prefix``), sorted by prefix and
    outcome: ``(prefix, [(outcome, count), ...])``."""
    found = report.get("counts_by_prefix") or {}
    return [
        (str(prefix), sorted((str(k), int(v)) for k, v in counts.items()))
        for prefix, counts in sorted(found.items())
        if isinstance(counts, Mapping)
    ]
