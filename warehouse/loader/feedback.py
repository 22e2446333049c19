"""Feedback to the sites: each raw prefix's unfiled inputs, where its uploader can read them.

After each loader run, every raw prefix whose unfiled inputs changed since the last run gets
``feedback/<raw prefix>/latest.json``, the whole list (empty once its problems are all gone),
and ``feedback/<raw prefix>/<UTC timestamp>.json``, what changed since the prefix's timestamped
file before it (`warehouse.core.report.problem_changes` of the site's views), which it names.
An unchanged rerun writes nothing. The uploaders' IAM group may read
``feedback/raw-${aws:username}/*`` only.

A site reads its own keys only, and nothing of what the warehouse knows of other sites or of
the hold-out: no other site's patient (whether it exists, its centre, its group), no patient's
group, no warehouse key. Each reason is read by the sites in one of three ways (`site_view`):

- with its own detail, when the detail is about the file alone or the site's own settings;
- with a neutral detail, when the honest one would name a group, a key or another raw file;
- not at all (operators only), when any line would tell the site that a pseudonym it sent
  belongs to another centre's patient: a record refused as "pseudonym claimed by another
  centre" (and the images behind it) or "pseudonym differs only in case". A record for a
  pseudonym nobody holds is filed, so its feedback is empty too: the two cannot be told apart.

Each file also lists ``flagged``: the site's images this run filed with a remark the site
should hear of (an image whose header carries identifying data, under the ``report`` policy:
`warehouse.dicom.screen`), with the attributes by name; a prefix with such images gets its
files even when its unfiled inputs are unchanged.

An image whose patient the site has no filed record of reads the same whatever the reason:
the patient does not exist, is another centre's (``prefix_sites``), or differs only in case
from a patient (the site's or another's). The one exception is the site's own doing: an image
whose patient's clinical file from the same prefix names a centre in no list of
``config.json`` reads "site not in config", as that file does (`decisions.unconfigured_site`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping

from warehouse.core.keys import parse_raw_key, raw_prefix_of
from warehouse.core.reasons import Reason
from warehouse.core.report import CHANGES_FORM, RunReport, problem_changes, utc_stamp
from warehouse.core.text import quote
from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)

#: Reasons whose every line would tell a site of another centre's patient: left out of the
#: sites' feedback (the run report has them for the operators), except as `IMAGE_NO_PATIENT`.
OPERATORS_ONLY = frozenset({Reason.PSEUDONYM_CLAIMED, Reason.CASE_VARIANT})
#: Reasons an image may have whose site view is "no patient data for PatientID", one text for
#: a patient that does not exist and one that is not the site's to send.
IMAGE_NO_PATIENT = frozenset(
    {Reason.NO_PATIENT_DATA, Reason.CENTRE_NOT_ALLOWED, Reason.CASE_VARIANT}
)

#: Reasons whose honest detail names a group, a warehouse key or another raw file: the site
#: reads this neutral detail instead.
NEUTRAL_DETAILS = {
    Reason.GROUP_CONFLICT: "the patient is already filed from another upload; not copied",
    Reason.DUPLICATE_TARGET: "another raw file is filed at the same place; this one was not copied",
    Reason.DUPLICATE_IMAGE: "this image (its SOPInstanceUID) is filed already from another upload",
    Reason.CONFLICTING_DUPLICATE: (
        "an image with this SOPInstanceUID but other content is filed already from another upload"
    ),
    # the leakage checks: the site learns that the study (series, instance, file) is another
    # patient's, never whose, where it came from, nor any group
    Reason.STUDY_OF_ANOTHER_PATIENT: (
        "this image's study (its StudyInstanceUID) is filed already under another patient; "
        "not filed (the warehouse operators decide)"
    ),
    Reason.SERIES_OF_ANOTHER_PATIENT: (
        "this image's series (its SeriesInstanceUID) is filed already under another patient; "
        "not filed (the warehouse operators decide)"
    ),
    Reason.INSTANCE_OF_ANOTHER_PATIENT: (
        "this image (its SOPInstanceUID) is filed already under another patient; not filed "
        "(the warehouse operators decide)"
    ),
    Reason.CONTENT_OF_ANOTHER_PATIENT: (
        "a file of the same content is filed already under another patient; not filed (the "
        "warehouse operators decide)"
    ),
    Reason.RAW_CHANGED: (
        "this file was filed earlier and has changed since: not filed again (the warehouse "
        "operators decide)"
    ),
    Reason.WRITE_FAILED: "the warehouse could not store it this time; the next run tries again",
    Reason.READ_FAILED: "it could not be read this time; the next run tries again",
    Reason.INTERNAL_ERROR: "an internal error of the warehouse; its operators have the details",
}


def _no_patient_data(problem: dict) -> dict:
    """The one line a site reads for an image whose patient it has no filed record of: the
    same whether the patient does not exist or is another centre's."""
    facts = problem.get("facts") or {}
    patient = facts.get("patient", facts.get("pseudonym"))
    detail = f"no clinical file of this site is filed for PatientID {quote(patient)}"
    return {"key": problem["key"], "reason": Reason.NO_PATIENT_DATA.value, "detail": detail}


def feedback_key(prefix: str, name: str) -> str:
    """``feedback/<raw prefix>/<name>``."""
    return f"feedback/{prefix}/{name}"


def site_view(problem: dict) -> dict | None:
    """What a site may read of one problem: its key, reason and a detail that says nothing of
    other sites, the hold-out or the warehouse's keys; None when the site may not read it
    (`OPERATORS_ONLY`)."""
    try:
        reason = Reason(problem.get("reason", ""))
    except ValueError:
        return None  # not a reason this version knows: nothing to say safely
    is_image = parse_raw_key(problem["key"], raw_prefix_of(problem["key"]) or "").kind == "image"
    if reason is Reason.NO_PATIENT_DATA or (is_image and reason in IMAGE_NO_PATIENT):
        return _no_patient_data(problem)
    if reason in OPERATORS_ONLY:
        return None
    detail = NEUTRAL_DETAILS.get(reason, problem.get("detail", ""))
    return {"key": problem["key"], "reason": reason.value, "detail": detail}


def by_prefix(problems: Iterable[dict]) -> dict[str, list[dict]]:
    """The site views of ``problems``, grouped by raw prefix and sorted by key."""
    grouped: dict[str, list[dict]] = {}
    for problem in problems:
        prefix = raw_prefix_of(problem.get("key", ""))
        view = site_view(problem) if prefix is not None else None
        if prefix is not None and view is not None:
            grouped.setdefault(prefix, []).append(view)
    for entries in grouped.values():
        entries.sort(key=lambda p: (p["key"], p["reason"] or ""))
    return grouped


def flags_by_prefix(flagged: Iterable[dict]) -> dict[str, list[dict]]:
    """The run's flagged inputs (`RunReport.flag`: filed, with a remark for the site),
    grouped by raw prefix and sorted by key; each says only what its detail says of the file."""
    grouped: dict[str, list[dict]] = {}
    for flag in flagged:
        prefix = raw_prefix_of(flag.get("key", ""))
        if prefix is not None:
            entry = {"key": flag["key"], "reason": flag["reason"], "detail": flag["detail"]}
            grouped.setdefault(prefix, []).append(entry)
    for entries in grouped.values():
        entries.sort(key=lambda f: (f["key"], f["reason"]))
    return grouped


def feedback_record(previous: Mapping | None) -> dict[str, str]:
    """Each raw prefix's newest timestamped feedback file, as the memo ``previous`` (the last
    run's whole report) keeps it: only keys under that prefix's own folder."""
    found = (previous or {}).get("feedback")
    if not isinstance(found, Mapping):
        return {}
    return {
        prefix: key
        for prefix, key in found.items()
        if isinstance(prefix, str)
        and isinstance(key, str)
        and key.startswith(feedback_key(prefix, ""))
        and key != feedback_key(prefix, "latest.json")
    }


def _document(prefix: str, report: RunReport, entries: list[dict]) -> dict:
    """What the two feedback files of ``prefix`` share: the prefix, the run and the whole
    list's counts by reason."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["reason"]] = counts.get(entry["reason"], 0) + 1
    return {
        "prefix": prefix,
        "run_id": report.run_id,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "not_filed": dict(sorted(counts.items())),
    }


def publish_feedback(storage: Storage, report: RunReport, previous: Mapping | None) -> int:
    """Write the feedback files of the prefixes whose problems changed since ``previous`` (the
    last run's whole report, the memo); the number of files written.

    Each such prefix gets ``latest.json`` (the whole list: ``problems``, and ``key``, its
    timestamped twin) and ``<UTC timestamp>.json`` (``form`` "changes", ``latest``,
    ``previous``: the prefix's timestamped file before, or null for a base whose
    ``changes.new`` is the whole list, and ``changes``); both list ``flagged``, the prefix's
    images this run filed with a remark (`flags_by_prefix`). A prefix the memo names no
    timestamped file of (an older memo, a write that failed) gets a base even when its list is
    unchanged, so that each prefix's chain of files can always be followed.
    ``report.feedback`` is set to each prefix's newest timestamped file (for the memo), as the
    files are written.

    Raises
    ------
    StorageError
        When a write fails (the run is then incomplete; that prefix, and those not reached,
        get a base next time).
    """
    now = by_prefix(report.problems)
    flagged = flags_by_prefix(report.flagged)
    before = by_prefix((previous or {}).get("problems") or ())
    record = feedback_record(previous)
    report.feedback = record
    stamp = utc_stamp(report.started)
    written = 0
    for prefix in sorted(set(now) | set(before) | set(flagged)):
        entries = now.get(prefix, [])
        if entries == before.get(prefix, []) and prefix not in flagged and prefix in record:
            continue
        earlier = record.pop(prefix, None)
        key, latest = feedback_key(prefix, f"{stamp}.json"), feedback_key(prefix, "latest.json")
        shared = _document(prefix, report, entries) | {"flagged": flagged.get(prefix, [])}
        changes = shared | {
            "form": CHANGES_FORM,
            "latest": latest,
            "previous": earlier,
            "changes": problem_changes(before.get(prefix, []) if earlier else None, entries),
        }
        storage.write(key, json.dumps(changes, indent=2).encode("utf-8"))
        written += 1
        whole = shared | {"key": key, "problems": entries}
        storage.write(latest, json.dumps(whole, indent=2).encode("utf-8"))
        written += 1
        record[prefix] = key
    return written
