"""The loader's per-file decisions, made in the node's own thread, in input order, on the run's
state (no storage request): where a clinical file goes (its patient's group) and where an image
goes (or why not)."""

from __future__ import annotations

from collections.abc import Mapping

from warehouse.catalogue.index import key_hash
from warehouse.catalogue.rows import image_row, instance_uid
from warehouse.catalogue.run import FiledCopy, Owner
from warehouse.core.config import nfc
from warehouse.core.keys import (
    ImageKey,
    clinical_target,
    image_targets,
    parse_image_key,
    patient_folder,
)
from warehouse.core.patients import (
    CaseVariant,
    GroupConflict,
    UnknownSite,
    group_for,
)
from warehouse.core.reasons import Reason, problem_of
from warehouse.core.run import loaded
from warehouse.dicom.identity import ImageIdentity
from warehouse.dicom.reader import HeaderRead
from warehouse.dicom.screen import screen_header
from warehouse.loader.state import LoaderState
from warehouse.loader.tasks import Task, input_stamp


def file_clinical(state: LoaderState, read: tuple[Task, str, str | None]) -> list[Task]:
    """Decide a clinical file's group and return its copy task (or report why not).

    In input order: the raw prefix must be allowed to send the record's centre
    (``prefix_sites``); the pseudonym must not be bound to another centre (by its first filed
    record, or by this run's first accepted one); then the site rules and the patient's group
    decide, and the target must not be claimed by another raw file of this run.
    """
    task, centre, filed_centre = read
    raw, report, config = task.payload, state.report, loaded(state.config, "config.json")
    state.progress.finished("clinical")
    facts = {"pseudonym": raw.pseudonym, "centre": centre}

    def refuse(reason: Reason, detail: str, **more: object) -> list[Task]:
        report.skip(task.key, reason, detail, stamp=input_stamp(task), facts={**facts, **more})
        return []

    if not config.centre_allowed(raw.prefix, centre):
        allowed = sorted(config.prefix_sites.get(raw.prefix, ()))
        return refuse(
            Reason.CENTRE_NOT_ALLOWED,
            f"{raw.prefix} may send {allowed}; this record names {centre!r}",
            prefix=raw.prefix,
        )
    bound = filed_centre or state.bound_centres.get(raw.pseudonym)
    if bound is not None and bound != nfc(centre):
        state.refused_claims.add((raw.prefix, raw.pseudonym))
        return refuse(
            Reason.PSEUDONYM_CLAIMED,
            f"{raw.pseudonym} is bound to {bound!r} (its first record); "
            f"this record names {centre!r}",
            bound=bound,
            prefix=raw.prefix,
        )
    try:
        wanted = group_for(raw.pseudonym, centre, config)
        group = loaded(state.groups, "the patients' groups").assign(raw.pseudonym, wanted)
    except UnknownSite as exc:
        state.unconfigured.setdefault((raw.prefix, raw.pseudonym), (centre, task.key))
        return refuse(*problem_of(exc))
    except GroupConflict as exc:
        return refuse(*problem_of(exc))
    except CaseVariant as exc:
        return refuse(*problem_of(exc), variant=exc.known)
    target = clinical_target(group, raw.pseudonym, raw.clinical_kind, raw.upload_date)
    claimant = state.claim(target, task.key)
    if claimant != task.key:
        report.skip(task.key, Reason.DUPLICATE_TARGET, f"{target} is claimed by {claimant}")
        return []
    state.bound_centres.setdefault(raw.pseudonym, nfc(centre))
    return [Task("copy", task.key, task.size, target, None)]


def unconfigured_site(
    refused: Mapping[tuple[str, str], tuple[str, str]], prefix: str, patient: str
) -> tuple[str, dict] | None:
    """Why an image of ``patient`` under raw ``prefix`` whose patient has no group is not
    filed, when that prefix's own clinical file of the patient was refused as "site not in
    config": the detail and facts of that reason (None otherwise: "no patient data").

    Only the prefix's own clinical file counts: what the site reads of its image then tells it
    nothing of another site's patients (`warehouse.loader.feedback`).

    Parameters
    ----------
    refused : mapping
        ``(raw prefix, pseudonym) -> (centre, clinical key)`` of the clinical files refused as
        "site not in config" (this run's, and the memo's that still hold).
    prefix, patient : str
        The image's raw prefix and PatientID.
    """
    found = refused.get((prefix, patient))
    if found is None:
        return None
    centre, clinical = found
    detail = (
        f"PatientID {patient!r}: its clinical file {clinical} names {centre!r}, which is in no "
        "sites list of config.json"
    )
    return detail, {"patient": patient, "centre": centre}


def retold(state: LoaderState, problem: dict) -> dict:
    """Tell a remembered problem of an image as this version does.

    "no patient data" becomes "site not in config" when the image's own prefix sent the
    patient's clinical file from an unconfigured site (`unconfigured_site`); anything else
    stays as it was.
    """
    if problem.get("reason") != Reason.NO_PATIENT_DATA.value:
        return problem
    patient = (problem.get("facts") or {}).get("patient")
    prefix = problem["key"].partition("/")[0]
    found = unconfigured_site(state.unconfigured, prefix, patient) if patient else None
    if found is None:
        return problem
    detail, facts = found
    return {**problem, "reason": Reason.SITE_NOT_IN_CONFIG.value, "detail": detail, "facts": facts}


def screen_image(
    state: LoaderState, task: Task, header: HeaderRead, patient: str
) -> list[str] | None:
    """Screen an image's header for identifying data (`warehouse.dicom.screen`).

    Returns the keywords of the attributes its header breaks (empty: none), or None when its
    raw prefix's policy (``identifying_data`` in ``config.json``) refuses it: reported here,
    with the attributes by name (never their values) and what the refusal depends on (the
    policy and the profile), so that the next run reads it again once either changes.
    """
    profile = loaded(state.profile, "the identifying-data profile")
    broken = screen_header(header.dataset, profile, patient)
    prefix = task.payload.prefix
    if broken and loaded(state.config, "config.json").screen_policy(prefix) == "refuse":
        state.report.skip(
            task.key,
            Reason.IDENTIFYING_DATA,
            ", ".join(broken),
            stamp=input_stamp(task),
            facts={"attributes": broken, "prefix": prefix, "profile": profile.digest},
        )
        return None
    return broken


def flag_identifying(state: LoaderState, task: Task, broken: list[str]) -> None:
    """Report an image filed although its header breaks the profile (the "report" policy).

    It is counted under its raw prefix, and flagged with the attributes by name; nothing is
    reported when ``broken`` is empty.
    """
    if not broken:
        return
    prefix = task.payload.prefix
    state.report.count("images filed with identifying data in the header", prefix=prefix)
    state.report.flag(
        task.key,
        Reason.IDENTIFYING_DATA,
        f"{', '.join(broken)} (filed: the policy of {prefix} is report)",
    )


#: What the leakage checks look at, in their order (`owner_conflict`): each kind of the
#: catalogue's owner arrays, its reason and what the run report calls it.
OWNER_CHECKS = (
    ("study", Reason.STUDY_OF_ANOTHER_PATIENT, "StudyInstanceUID"),
    ("series", Reason.SERIES_OF_ANOTHER_PATIENT, "SeriesInstanceUID"),
    ("content", Reason.CONTENT_OF_ANOTHER_PATIENT, "a file of the same content"),
)


def owner_conflict(
    state: LoaderState, values: dict[str, str | None], patient: str, group: str
) -> tuple[Reason, str, dict] | None:
    """Why an image of ``patient`` (in ``group``) may not be filed because of whose its
    study, series or content is: the first of `OWNER_CHECKS` filed already, or earlier in
    this run, under another patient (its reason, detail and facts); None when none is.

    A study has one patient, whatever the groups: the same study under a second pseudonym
    (a site that pseudonymised a patient again, or a patient who moved between sites) would
    put one patient on both sides of the hold-out. ``values`` gives the image's UIDs and
    content id by kind. No request: the catalogue answers from its arrays.
    """
    catalogue = loaded(state.catalogue, "the run's image catalogue")
    for kind, reason, label in OWNER_CHECKS:
        owner = catalogue.other_owner(kind, values.get(kind), patient)
        if owner is not None:
            return another_patient(state, reason, f"{label} {owner.value}", owner, patient, group)
    return None


def another_patient(
    state: LoaderState, reason: Reason, what: str, owner: Owner, patient: str, group: str
) -> tuple[Reason, str, dict]:
    """Return the run report's line of an image refused as another patient's.

    ``what`` is filed under another patient (``owner``): the detail names both pseudonyms
    and groups, for the operators (the site reads a neutral line: `warehouse.loader.feedback`).
    """
    other = owner.patient or state.pseudonym_of(owner.hashed)
    groups = loaded(state.groups, "the patients' groups")
    other_group = groups.get(other) if other is not None else None
    named = (
        f"patient {other!r} ({other_group or 'no group'})"
        if other is not None
        else f"another patient (hash {owner.hashed:016x}, not among the filed patients)"
    )
    where = f" as {owner.key}" if owner.key else ""
    detail = f"{what} is filed under {named}{where}; this image is of {patient!r} ({group})"
    facts = {
        "patient": patient,
        "group": group,
        "other": other,
        "other_group": other_group,
        "value": owner.value,
        "filed": owner.key,
    }
    return reason, detail, facts


def report_shared_owners(state: LoaderState) -> int:
    """Report what the catalogue holds filed under two patients already
    (`LoaderCatalogue.shared_owners`: what a race of two shards let through), one line for
    each owner after the first, against its image's key (or, known only by the index's
    hashes, its patient's folder); return how many lines.

    The images stay filed: an operator decides which patient a study is. Each run that sees
    them (the next run reads the shards' parts; a full run reads the whole index) says so.
    """
    catalogue = loaded(state.catalogue, "the run's image catalogue")
    groups = loaded(state.groups, "the patients' groups")
    labels = {kind: label for kind, _, label in OWNER_CHECKS}
    lines = 0
    for kind, owners in catalogue.shared_owners():
        named = []
        for owner in owners:
            patient = owner.patient or state.pseudonym_of(owner.hashed)
            group = groups.get(patient) if patient is not None else None
            named.append((owner, patient, group))
        said = "; ".join(
            f"{patient!r} ({group or 'no group'})" + (f" as {owner.key}" if owner.key else "")
            if patient is not None
            else f"a patient not among the filed ones (hash {owner.hashed:016x})"
            for owner, patient, group in named
        )
        value = next((owner.value for owner in owners if owner.value), None)
        what = f"{labels[kind]} {value or '(known by its hash only)'}"
        detail = (
            f"{what} is filed under {len(owners)} patients: {said}; filed by runs that could "
            "not see each other (the shards of one run): an operator decides whose it is"
        )
        for owner, patient, group in named[1:]:
            key = owner.key or (
                patient_folder(group, patient) if patient and group else "catalogue/index/"
            )
            state.report.skip(key, Reason.FILED_UNDER_TWO_PATIENTS, detail)
            lines += 1
    return lines


def duplicate_problem(
    state: LoaderState, filed: FiledCopy, sop: str | None, task: Task, patient: str, group: str
) -> tuple[Reason, str, dict]:
    """Why an image of ``patient`` (in ``group``) whose SOP instance ``sop`` is filed as
    ``filed`` already is not filed: "instance filed under another patient" when that copy is
    another patient's, else "duplicate image" (the same size) or "conflicting duplicate"."""
    elsewhere = parse_image_key(filed.key)
    if elsewhere is not None and elsewhere.patient_id != patient:
        owner = Owner(key_hash(elsewhere.patient_id), elsewhere.patient_id, filed.key, sop)
        what = f"SOPInstanceUID {sop}"
        return another_patient(
            state, Reason.INSTANCE_OF_ANOTHER_PATIENT, what, owner, patient, group
        )
    facts = {"filed": filed.key, "sop": sop}
    if filed.size == task.size:
        return Reason.DUPLICATE_IMAGE, f"SOPInstanceUID {sop} is filed as {filed.key}", facts
    detail = (
        f"SOPInstanceUID {sop} is filed as {filed.key} ({filed.size:,} bytes); "
        f"{task.key} has {task.size:,} bytes"
    )
    return Reason.CONFLICTING_DUPLICATE, detail, facts


def file_image(
    state: LoaderState, read: tuple[Task, HeaderRead, ImageIdentity, str | None]
) -> list[Task]:
    """Decide where an image goes; return its copy and metadata tasks (those not yet done)."""
    task, header, identity, filed_centre = read
    report, raw, patient = state.report, task.payload, identity.patient_id
    config = loaded(state.config, "config.json")
    groups = loaded(state.groups, "the patients' groups")
    catalogue = loaded(state.catalogue, "the run's image catalogue")
    state.progress.finished("image")
    state.count_header_read(header.requests, header.bytes_read)
    if header.messages:  # the file's, for the operators: never a log line per image
        report.count("image headers pydicom warned about (see the report's notes)")
        report.note(task.key, "pydicom: " + "; ".join(header.messages))

    def refuse(reason: Reason, detail: str, **facts: object) -> list[Task]:
        report.skip(task.key, reason, detail, stamp=input_stamp(task), facts=facts or None)
        return []

    group = groups.get(patient)
    if group is None:
        unconfigured = unconfigured_site(state.unconfigured, raw.prefix, patient)
        if unconfigured is not None:
            detail, facts = unconfigured
            return refuse(Reason.SITE_NOT_IN_CONFIG, detail, **facts)
        known = groups.case_variant(patient)
        if known is not None:
            detail = f"PatientID {patient!r} differs only in case from the patient {known!r}"
            return refuse(Reason.CASE_VARIANT, detail, pseudonym=patient, variant=known)
        return refuse(Reason.NO_PATIENT_DATA, f"PatientID {patient!r}", patient=patient)
    if (raw.prefix, patient) in state.refused_claims:
        return refuse(
            Reason.PSEUDONYM_CLAIMED,
            f"{raw.prefix} sent a record for {patient} naming another centre than the one "
            "the patient is bound to",
            pseudonym=patient,
            prefix=raw.prefix,
        )
    if raw.prefix in config.prefix_sites:
        centre = state.bound_centres.get(patient) or filed_centre
        if centre is not None and not config.centre_allowed(raw.prefix, centre):
            return refuse(
                Reason.CENTRE_NOT_ALLOWED,
                f"{raw.prefix} may not send images of {patient}, a patient of {centre!r}",
                prefix=raw.prefix,
                centre=centre,
                patient=patient,
            )
    identifying = screen_image(state, task, header, patient)
    if identifying is None:
        return []
    image_key, metadata_key = image_targets(
        group, identity.folder, patient, identity.study_uid, identity.series_uid, raw.name
    )
    owned = {
        "study": identity.study_uid,
        "series": identity.series_uid,
        "content": raw.content_id or None,
    }
    conflict = owner_conflict(state, owned, patient, group)
    if conflict is not None:
        reason, detail, facts = conflict
        return refuse(reason, detail, **facts)
    # A duplicate of an instance filed under another key is refused before it claims its own
    # target: a refused file holds no claim, so the reasons of the files behind it do not
    # depend on whether it was read in this run or remembered from the last.
    sop = instance_uid(header.dataset)
    filed = catalogue.filed_copy(sop, image_key)
    if filed is None:
        claimant = state.claim(image_key, task.key)
        if claimant != task.key:
            report.skip(task.key, Reason.DUPLICATE_TARGET, f"{image_key} is claimed by {claimant}")
            return []
    else:
        reason, detail, facts = duplicate_problem(state, filed, sop, task, patient, group)
        return refuse(reason, detail, **facts)

    def row() -> tuple:
        where = ImageKey(
            image_key,
            group,
            identity.folder,
            patient,
            identity.study_uid,
            identity.series_uid,
            raw.name,
        )
        return image_row(
            header.dataset,
            where,
            size=task.size,
            raw_key=task.key,
            upload=raw.upload_date,
            identifying=identifying,
            content_id=raw.content_id or None,
        )

    if catalogue.target_filed(image_key):
        # filed from another raw file (the same name, patient, study and series), or catalogued
        # from its header (then this raw file becomes its row's source): known from now on, so
        # not read again while its folder is open
        report.count("images already filed", prefix=raw.prefix)
        state.settle(task)
        catalogue.source_found(row())
        catalogue.claim_instance(sop, image_key, task.size, sourced=False)
        catalogue.claim_owners(owned, patient, image_key)
        return []
    catalogue.claim_instance(sop, image_key, task.size)
    flag_identifying(state, task, identifying)
    catalogue.claim_owners(owned, patient, image_key)
    tasks = [
        Task("copy", task.key, task.size, image_key, None),
        Task("metadata", task.key, None, metadata_key, header.dataset),
    ]
    catalogue.expect(row(), [t.target for t in tasks])
    return tasks
