"""What the last loader run learnt about the inputs it could not file.

Faulty uploads are never modified (sites upload corrections as new files), so re-reading them
on every run would only repeat the same verdict. The previous run's whole report
(``latest.json``) lists each unfiled input with its size and modification time from the
listing and the facts its reason depends on; an input listed unchanged is not read again when
its reason still holds:

- a reason that is about the file alone (not DICOM, invalid JSON, ...) always holds;
- "internal error" (a bug met on the input) holds while the product's version is the same;
- "DICOM header too large" and "clinical file too large" hold while the limit is the same (a
  setting), and "DICOM header too complex" while the product's bound on a header's elements is;
- "no patient data for PatientID" holds while that patient still has no group and no new
  clinical file;
- "site not in config" holds while the centre is still in no list of ``config.json`` (and, for
  an image refused for its patient's clinical file, while that patient has no group and no new
  clinical file);
- "group conflict" holds while the patient's filed group still differs from the centre's;
- "pseudonym claimed by another centre" holds once the patient is filed (its binding is then
  fixed); "centre not allowed for this prefix" while ``prefix_sites`` still refuses it;
  "pseudonym differs only in case" while the other patient is filed and this one is not;
- "duplicate image" and "conflicting duplicate" while the copy filed first is in the warehouse;
- "study (series, instance, identical file) filed under another patient" while that other
  patient is filed (a study filed is not unfiled: only an operator who removes the patient
  makes the image be read again);
- "identifying data in the header" while the raw prefix's policy is still ``refuse`` and the
  screen's profile is the same (its digest).

Failed reads and writes, and anything the report does not describe, are processed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from warehouse import __version__
from warehouse.core.config import PipelineConfig
from warehouse.core.errors import ObjectNotFound
from warehouse.core.keys import RawKey
from warehouse.core.patients import UnknownSite, group_for
from warehouse.core.reasons import Reason
from warehouse.core.report import (
    InvalidRunReport,
    RunReport,
    check_previous_report,
    latest_report_key,
)
from warehouse.dicom.reader import MAX_HEADER_ELEMENTS
from warehouse.dicom.screen import profile_digest
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)

#: Reasons that depend on nothing but the file's own content.
FILE_REASONS = frozenset(
    {
        Reason.NOT_DICOM,
        Reason.NO_FILE_META,
        Reason.NOT_AN_IMAGE,
        Reason.MISSING_PIXEL_DATA,
        Reason.TRUNCATED_HEADER,
        Reason.TRUNCATED_PIXEL_DATA,
        Reason.UNREADABLE_HEADER,
        Reason.PSEUDONYM_MISMATCH,
        Reason.MISSING_IDENTIFIER,
        Reason.UNSUPPORTED_MODALITY,
        Reason.UNSAFE_IDENTIFIER,
        Reason.INVALID_JSON,
        Reason.NO_SUBMITTING_CENTRE,
    }
)


def load_previous_report(storage: Storage, graph: str, run: RunReport | None = None) -> dict | None:
    """The previous run report (``reports/<graph>/latest.json``), or None when there is none
    or it cannot be used (then everything is read again).

    A report that exists but cannot be used is a state file gone wrong: with ``run`` (the
    report of the run that reads it) it is reported by name and the run is marked incomplete,
    else it is logged.

    Raises
    ------
    StorageError
        When it cannot be read for another reason than its absence.
    """
    key = latest_report_key(graph)
    try:
        return check_previous_report(storage.read(key))
    except ObjectNotFound:
        return None
    except InvalidRunReport as exc:
        if run is None:
            logger.warning("%s cannot be used (%s)", key, exc)
        else:
            run.skip(key, Reason.INVALID_REPORT, f"{exc}; every input is read again")
            run.fail(f"{key} cannot be used ({exc}): an operator should look at it")
        return None


def problems_of(report: dict | None) -> list[dict] | None:
    """The problems of a report `load_previous_report` returned (None for none)."""
    return None if report is None else report["problems"]


def load_previous_problems(storage: Storage, graph: str) -> list[dict] | None:
    """The problems of the previous run report (`load_previous_report`), or None."""
    return problems_of(load_previous_report(storage, graph))


def memo_of(problems: list[dict] | None) -> dict[str, dict]:
    """The last run's unfiled inputs that carry a listing stamp, by key."""
    return {p["key"]: p for p in problems or () if "modified" in p}


def recall(memo: dict[str, dict], raw: RawKey, size: int) -> dict | None:
    """The remembered problem of ``raw`` if the object is unchanged since, else None."""
    problem = memo.get(raw.key)
    if problem is None or problem.get("size") != size or problem.get("modified") != raw.modified:
        return None
    return problem


#: Reasons that hold while a patient is filed, and the fact that names it: a filed patient's
#: binding (its first filed record) never changes, and a study, series, instance or file
#: filed under another patient stays that patient's.
WHILE_FILED = {
    Reason.PSEUDONYM_CLAIMED: "pseudonym",
    Reason.STUDY_OF_ANOTHER_PATIENT: "other",
    Reason.SERIES_OF_ANOTHER_PATIENT: "other",
    Reason.INSTANCE_OF_ANOTHER_PATIENT: "other",
    Reason.CONTENT_OF_ANOTHER_PATIENT: "other",
}

#: Reasons that depend on a limit, and the limit's name: a setting, or one of `PRODUCT_LIMITS`.
LIMIT_REASONS = {
    Reason.HEADER_TOO_LARGE: "max_header_bytes",
    Reason.CLINICAL_TOO_LARGE: "max_clinical_bytes",
    Reason.HEADER_TOO_COMPLEX: "max_header_elements",
}
#: The limits that are bounds of the product itself, not settings.
PRODUCT_LIMITS = {"max_header_elements": MAX_HEADER_ELEMENTS}


def limit_in_force(name: str, settings):
    """The value of the limit ``name`` in this run (None when it is a setting and there are
    no settings)."""
    if name in PRODUCT_LIMITS:
        return PRODUCT_LIMITS[name]
    return None if settings is None else getattr(settings, name)


def limit_facts(reason: Reason, settings) -> dict:
    """The facts a limit reason depends on: the limit in force (see `still_holds`)."""
    name = LIMIT_REASONS.get(reason)
    return {name: limit_in_force(name, settings)} if name else {}


def still_holds(
    problem: dict,
    config: PipelineConfig,
    index: WarehouseIndex,
    new_patients: set[str],
    settings=None,
    image_filed: Callable[[str], bool] | None = None,
) -> bool:
    """Whether a remembered reason still holds without reading the file again.

    Parameters
    ----------
    problem : dict
        The previous report's entry (reason, facts).
    config : PipelineConfig
        This run's config.
    index : WarehouseIndex
        What the warehouse holds now.
    new_patients : set of str
        Pseudonyms of this run's new clinical files (they may give a patient a group).
    settings : Settings, optional
        This run's settings (a limit reason holds while its limit is the same).
    """
    try:
        reason = Reason(problem.get("reason"))
    except ValueError:
        return False
    facts = problem.get("facts") or {}
    if reason in FILE_REASONS:
        return True
    if reason in LIMIT_REASONS:
        name = LIMIT_REASONS[reason]
        limit = limit_in_force(name, settings)
        return limit is not None and facts.get(name) == limit
    if reason in WHILE_FILED:
        return facts.get(WHILE_FILED[reason]) in index.groups
    if reason in _CONFIG_REASONS:
        return _CONFIG_REASONS[reason](facts, config)
    if reason is Reason.CASE_VARIANT:
        return facts.get("variant") in index.groups and facts.get("pseudonym") not in index.groups
    if reason is Reason.INTERNAL_ERROR:
        # a bug met on this input: read it again once the product has changed
        return facts.get("version") == __version__
    if reason is Reason.NO_PATIENT_DATA:
        patient = facts.get("patient")
        return bool(patient) and patient not in index.groups and patient not in new_patients
    if reason is Reason.SITE_NOT_IN_CONFIG:
        return _site_still_unconfigured(facts, config, index, new_patients)
    if reason in (Reason.DUPLICATE_IMAGE, Reason.CONFLICTING_DUPLICATE):
        # the copy filed first decides while it is in the warehouse (the catalogue says)
        filed = facts.get("filed")
        return isinstance(filed, str) and (
            image_filed(filed) if image_filed is not None else filed in index.keys
        )
    if reason is Reason.GROUP_CONFLICT:
        pseudonym, centre = facts.get("pseudonym"), facts.get("centre")
        existing = index.groups.get(pseudonym)
        if existing is None or not isinstance(centre, str):
            return False
        try:
            return group_for(pseudonym, centre, config) != existing
        except UnknownSite:
            return False
    return False


def _centre_still_refused(facts: dict, config: PipelineConfig) -> bool:
    """Whether "centre not allowed for this prefix" holds: ``prefix_sites`` still refuses."""
    prefix, centre = facts.get("prefix"), facts.get("centre")
    if not isinstance(prefix, str) or not isinstance(centre, str):
        return False
    return not config.centre_allowed(prefix, centre)


def _identifying_still_refused(facts: dict, config: PipelineConfig) -> bool:
    """Whether "identifying data in the header" holds: the raw prefix's policy is still
    ``refuse`` and the screen's profile is the one the image was refused by."""
    prefix = facts.get("prefix")
    return (
        isinstance(prefix, str)
        and config.screen_policy(prefix) == "refuse"
        and facts.get("profile") == profile_digest()
    )


#: Reasons that hold while ``config.json`` says what it said, and the rule of each.
_CONFIG_REASONS: dict[Reason, Callable[[dict, PipelineConfig], bool]] = {
    Reason.CENTRE_NOT_ALLOWED: _centre_still_refused,
    Reason.IDENTIFYING_DATA: _identifying_still_refused,
}


def _site_still_unconfigured(
    facts: dict, config: PipelineConfig, index: WarehouseIndex, new_patients: set[str]
) -> bool:
    """Whether "site not in config" holds: the centre is in no list of ``config.json`` (and,
    for an image refused for its patient's clinical file, the patient has no group and no new
    clinical file)."""
    centre, patient = facts.get("centre"), facts.get("patient")
    if patient is not None and (patient in index.groups or patient in new_patients):
        return False
    return isinstance(centre, str) and config.site_rule(centre) is None


def refused_claims(memo: dict[str, dict]) -> set[tuple[str, str]]:
    """``(raw prefix, pseudonym)`` of the records the last run refused as claimed by another
    centre: images under that prefix for that patient are refused too."""
    claims = set()
    for problem in memo.values():
        facts = problem.get("facts") or {}
        if problem.get("reason") == Reason.PSEUDONYM_CLAIMED.value:
            prefix, pseudonym = facts.get("prefix"), facts.get("pseudonym")
            if isinstance(prefix, str) and isinstance(pseudonym, str):
                claims.add((prefix, pseudonym))
    return claims


def unconfigured_patients(
    memo: dict[str, dict], config: PipelineConfig
) -> dict[tuple[str, str], tuple[str, str]]:
    """``(raw prefix, pseudonym) -> (centre, clinical key)`` of the clinical files the last run
    refused as "site not in config" whose centre is still in no list of ``config.json`` (they
    are not read again: their prefix's images of the patient are refused for the same
    reason)."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for key, problem in sorted(memo.items()):
        facts = problem.get("facts") or {}
        pseudonym, centre = facts.get("pseudonym"), facts.get("centre")
        if (
            problem.get("reason") == Reason.SITE_NOT_IN_CONFIG.value
            and isinstance(pseudonym, str)
            and isinstance(centre, str)
            and config.site_rule(centre) is None
        ):
            found.setdefault((key.partition("/")[0], pseudonym), (centre, key))
    return found


def known_problem(
    memo: dict[str, dict],
    raw: RawKey,
    size: int,
    config: PipelineConfig,
    index: WarehouseIndex,
    new_patients: set[str],
    settings=None,
    image_filed: Callable[[str], bool] | None = None,
) -> dict | None:
    """The last run's problem with ``raw`` if the input is unchanged and the reason still
    holds (so it need not be read again), else None."""
    problem = recall(memo, raw, size)
    if problem is None or not still_holds(
        problem, config, index, new_patients, settings, image_filed
    ):
        return None
    return problem
