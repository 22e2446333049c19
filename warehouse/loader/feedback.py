"""Feedback to the sites: each raw prefix's unfiled inputs, where its uploader can read them.

After each loader run, every raw prefix whose unfiled inputs changed since the last run gets
``feedback/<raw prefix>/<UTC timestamp>.json`` and ``feedback/<raw prefix>/latest.json``; a
prefix whose problems are all gone gets an empty ``latest.json``. An unchanged rerun writes
nothing. The uploaders' IAM group may read ``feedback/raw-${aws:username}/*`` only.

A site sees its own keys only, and never what the warehouse knows of other sites: the details
of reasons that would tell it (which group a patient is in, which other centre or raw file
holds a pseudonym or a target) are replaced by a neutral wording.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from warehouse.core.keys import raw_prefix_of
from warehouse.core.report import Reason, RunReport

logger = logging.getLogger(__name__)

#: Details that would tell a site something of another site or of the hold-out.
NEUTRAL_DETAILS = {
    Reason.GROUP_CONFLICT: "the patient is already filed from another upload; not copied",
    Reason.PSEUDONYM_CLAIMED: "this pseudonym belongs to a patient of another centre",
    Reason.CASE_VARIANT: "another patient's pseudonym differs from this one only in case",
    Reason.DUPLICATE_TARGET: "another raw file is filed at the same place; this one was not copied",
}


def feedback_key(prefix: str, name: str) -> str:
    """``feedback/<raw prefix>/<name>``."""
    return f"feedback/{prefix}/{name}"


def site_view(problem: dict) -> dict:
    """What a site may read of one problem: its key, reason and a detail that says nothing of
    other sites."""
    try:
        reason = Reason(problem.get("reason"))
    except ValueError:
        reason = None
    detail = NEUTRAL_DETAILS.get(reason, problem.get("detail", ""))
    return {"key": problem["key"], "reason": problem.get("reason"), "detail": detail}


def by_prefix(problems) -> dict[str, list[dict]]:
    """The site views of ``problems``, grouped by raw prefix and sorted by key."""
    grouped: dict[str, list[dict]] = {}
    for problem in problems:
        prefix = raw_prefix_of(problem.get("key", ""))
        if prefix is not None:
            grouped.setdefault(prefix, []).append(site_view(problem))
    for entries in grouped.values():
        entries.sort(key=lambda p: (p["key"], p["reason"] or ""))
    return grouped


def publish_feedback(storage, report: RunReport, previous: list[dict] | None) -> int:
    """Write the feedback files of the prefixes whose problems changed since ``previous`` (the
    last run's problems); the number of files written.

    Raises
    ------
    StorageError
        When a write fails (the run is then incomplete).
    """
    now = by_prefix(report.problems)
    before = by_prefix(previous or ())
    stamp = report.started.strftime("%Y-%m-%dT%H-%M-%S.%fZ")
    written = 0
    for prefix in sorted(set(now) | set(before)):
        entries = now.get(prefix, [])
        if entries == before.get(prefix, []):
            continue
        counts: dict[str, int] = {}
        for entry in entries:
            counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
        document = {
            "prefix": prefix,
            "run_id": report.run_id,
            "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "not_filed": dict(sorted(counts.items())),
            "problems": entries,
        }
        data = json.dumps(document, indent=2).encode("utf-8")
        if entries:
            storage.write(feedback_key(prefix, f"{stamp}.json"), data)
            written += 1
        storage.write(feedback_key(prefix, "latest.json"), data)
        written += 1
    return written
