"""A run report as a page: ``reports/<graph>/<UTC timestamp>.html`` beside the JSON report.

An operator who gets the run's notice opens one file and sees what the run filed, and what it
did not file, by raw prefix (the uploading site) and reason, and which inputs are newly not
filed, changed or no longer refused since the previous run (the timestamped report holds the
changes, `report.changes_report`); ``latest.html``, beside ``latest.json``, lists every input
the newest run did not file, down to each key. The page is built from the JSON report alone (a
pure function: the report's dict in, HTML out), holds its style sheet and no script, and asks
the network for nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2

from warehouse.core.keys import top_folder

__all__ = [
    "MAX_LISTED",
    "filed_by_prefix",
    "moment",
    "page_key",
    "refused_by_prefix",
    "run_report_page",
    "unfiled_by_prefix",
]

#: Inputs not filed (or changes) listed one by one on a page (the JSON report lists them all).
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


def unfiled_by_prefix(problems: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """Inputs not filed counted by prefix (the key's first part) and reason, both sorted: the
    report's ``not_filed_by_prefix``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for problem in problems:
        if isinstance(problem, Mapping):
            counts[top_folder(str(problem.get("key", "")))][str(problem.get("reason", ""))] += 1
    return {prefix: dict(sorted(counts[prefix].items())) for prefix in sorted(counts)}


def refused_by_prefix(report: Mapping) -> list[dict]:
    """The inputs not filed, counted by prefix and reason: the report's ``not_filed_by_prefix``
    (a timestamped report), else counted from its ``problems`` (`unfiled_by_prefix`).

    Returns
    -------
    list of dict
        One per prefix, sorted: ``prefix``, ``inputs`` (its total) and ``reasons`` (records
        ``reason``, ``inputs``; most first, then by reason).
    """
    counted = report.get("not_filed_by_prefix")
    if not isinstance(counted, Mapping):
        counted = unfiled_by_prefix(report.get("problems") or ())
    rows = []
    for prefix, reasons in sorted(counted.items()):
        if not isinstance(reasons, Mapping):
            continue
        found = [(str(reason), int(n)) for reason, n in reasons.items()]
        rows.append(
            {
                "prefix": str(prefix),
                "inputs": sum(n for _, n in found),
                "reasons": [
                    {"reason": reason, "inputs": n}
                    for reason, n in sorted(found, key=lambda item: (-item[1], item[0]))
                ],
            }
        )
    return rows


#: A key's last part that a page may link to as a file beside it.
_LINKABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.json")


def _sibling_page(key: Any) -> str | None:
    """The relative link to the page of the report at ``key`` (beside this page), or None when
    ``key`` is no report key a page may link to."""
    if not isinstance(key, str):
        return None
    name = key.rsplit("/", 1)[-1]
    return page_key(name) if _LINKABLE.fullmatch(name) else None


def _change_rows(changes: Mapping) -> list[dict]:
    """The rows of a timestamped report's changes: new, changed, then resolved (a key)."""
    rows: list[dict] = []
    for kind in ("new", "changed"):
        for problem in changes.get(kind) or ():
            if isinstance(problem, Mapping):
                rows.append({**problem, "change": kind})
    for key in changes.get("resolved") or ():
        rows.append({"change": "resolved", "key": str(key)})
    return rows


def run_report_page(report: Mapping, *, warehouse: str = "", json_key: str = "") -> str:
    """The HTML page of one run report.

    Parameters
    ----------
    report : mapping
        The JSON run report: the whole one (``RunReport.as_dict()``, ``latest.json``:
        ``graph``, ``run_id``, ``started``, ``finished``, ``completed``, ``fatal``, ``counts``,
        ``not_filed``, ``problems``) or a timestamped one (`report.changes_report`: the same
        without ``problems``, with ``not_filed_by_prefix``, ``changes``, ``memo`` and
        ``previous``).
    warehouse : str
        The warehouse's URL (shown).
    json_key : str
        The JSON report's key (named on the page).

    Returns
    -------
    str
        One self-contained HTML document: the run, what it filed (``counts``, and by prefix
        from ``counts_by_prefix``), the inputs not filed by prefix and reason, then either
        what changed since the previous run (each new or changed input: key, reason, detail;
        each key no longer refused), linking the whole list's page (``latest.html``) and the
        previous report's, or each input not filed (key, reason, detail) by prefix; at most
        :data:`MAX_LISTED` rows.
    """
    changes = report.get("changes")
    changes = changes if isinstance(changes, Mapping) else None
    problems = sorted(
        (p for p in report.get("problems") or () if isinstance(p, Mapping)),
        key=lambda p: (str(p.get("key", "")), str(p.get("reason", ""))),
    )
    listed: dict[str, list[Mapping]] = defaultdict(list)
    for problem in problems[:MAX_LISTED]:
        listed[top_folder(str(problem.get("key", "")))].append(problem)
    change_rows = _change_rows(changes) if changes is not None else []
    changed: dict[str, list[Mapping]] = defaultdict(list)
    for row in change_rows[:MAX_LISTED]:
        changed[top_folder(str(row.get("key", "")))].append(row)
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
        changes=changes,
        change_counts=_change_counts(changes) if changes is not None else None,
        changed=sorted(changed.items()),
        total_changes=len(change_rows),
        memo_page=_sibling_page(report.get("memo")),
        previous_page=_sibling_page(report.get("previous")),
        changes_page=_sibling_page(report.get("key")) if changes is None else None,
    )
    return page


def _change_counts(changes: Mapping) -> dict[str, int | None]:
    """How many inputs are new, changed, unchanged and no longer refused (None: not known)."""
    resolved = changes.get("resolved")
    return {
        "new": len(changes.get("new") or ()),
        "changed": len(changes.get("changed") or ()),
        "unchanged": int(changes.get("unchanged") or 0),
        "resolved": len(resolved) if isinstance(resolved, list) else None,
    }


def filed_by_prefix(report: Mapping) -> list[tuple[str, list[tuple[str, int]]]]:
    """What each raw prefix's inputs came to (``counts_by_prefix``), sorted by prefix and
    outcome: ``(prefix, [(outcome, count), ...])``."""
    found = report.get("counts_by_prefix") or {}
    return [
        (str(prefix), sorted((str(k), int(v)) for k, v in counts.items()))
        for prefix, counts in sorted(found.items())
        if isinstance(counts, Mapping)
    ]
