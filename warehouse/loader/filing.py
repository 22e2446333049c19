"""The loader's per-file rules: what happens to one clinical file and to one image.

Workers do the reads (`read_clinical`, `read_image`); the decisions (`file_clinical`,
`file_image`) run in the node's own thread, in input order, against the run's state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import namedtuple
from dataclasses import dataclass, field

from warehouse import __version__
from warehouse.catalogue.rows import image_row, instance_uid
from warehouse.catalogue.run import LoaderCatalogue
from warehouse.core.clinical import (
    InvalidClinicalFile,
    MissingSubmittingCentre,
    check_clinical_size,
    check_record_pseudonym,
    parse_clinical_record,
    submitting_centre,
)
from warehouse.core.config import PipelineConfig, nfc
from warehouse.core.errors import StorageError
from warehouse.core.keys import (
    ImageKey,
    UnsafeIdentifier,
    check_pseudonym,
    clinical_target,
    image_name_problem,
    image_targets,
    parse_warehouse_key,
    raw_prefix_of,
)
from warehouse.core.lease import RunLease
from warehouse.core.patients import (
    CaseVariant,
    GroupConflict,
    PatientGroups,
    UnknownSite,
    group_for,
)
from warehouse.core.report import Reason
from warehouse.core.run import ByteBudget, RunState
from warehouse.dicom.identity import ImageIdentity, image_identity
from warehouse.dicom.jsonrep import header_json
from warehouse.dicom.reader import HeaderRead, read_header
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.loader.feedback import publish_feedback
from warehouse.loader.memo import limit_facts
from warehouse.loader.shards import Handoff, RunPart, part_of
from warehouse.storage.base import Storage
from warehouse.storage.wrappers import LeasedStorage

logger = logging.getLogger("warehouseloader")

#: One item between the loader's nodes. ``action`` is ``clinical`` or ``image`` (a raw file to
#: process), ``copy`` (copy ``key`` to ``target``), ``metadata`` (``payload`` is the header of
#: image ``key``, to write at ``target``) or ``write`` (``payload`` is the bytes for ``target``).
Task = namedtuple("Task", "action key size target payload")

#: Bytes of clinical files a run holds in memory at once, read and decoded (`ByteBudget`).
CLINICAL_BYTES_IN_FLIGHT = 8 * 1024 * 1024


class Progress:
    """How far a loader run is: clinical files and images done out of those planned, and the
    rate of images, for the progress line of the status lines."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.total = {"clinical": None, "image": None}
        self.done = {"clinical": 0, "image": 0}
        self._first_image: float | None = None

    def plan(self, clinical: int, images: int) -> None:
        """The inputs this run has to read."""
        with self._lock:
            self.total = {"clinical": clinical, "image": images}

    def finished(self, action: str) -> None:
        """One input of ``action`` (``clinical`` or ``image``) is done (filed or reported)."""
        with self._lock:
            if action in self.done:
                self.done[action] += 1
                if action == "image" and self._first_image is None:
                    self._first_image = self._clock()

    def line(self) -> str | None:
        """``progress: images 1,145/8,000 (14%), clinical files 968/968, 52.1 images/s, about
        2 min 11 s left``; None before the inputs are known."""
        with self._lock:
            total, done = dict(self.total), dict(self.done)
            started = self._first_image
        if total["image"] is None:
            return None
        images, all_images = done["image"], total["image"]
        share = f" ({100 * images // all_images}%)" if all_images else ""
        parts = [
            f"images {images:,}/{all_images:,}{share}",
            f"clinical files {done['clinical']:,}/{total['clinical']:,}",
        ]
        elapsed = self._clock() - started if started is not None else 0.0
        if images and elapsed > 0:
            rate = images / elapsed
            parts.append(f"{rate:.1f} images/s")
            if images < all_images:
                parts.append(f"about {_duration((all_images - images) / rate)} left")
        return "progress: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass
class LoaderState(RunState):
    """Everything one loader run shares between its nodes (one instance, a bonobo service)."""

    config: PipelineConfig | None = None
    index: WarehouseIndex | None = None
    groups: PatientGroups | None = None
    header_requests: int = 0
    header_bytes: int = 0
    lease: RunLease | None = None
    #: The centre of each patient's first accepted record in this run (NFC).
    bound_centres: dict[str, str] = field(default_factory=dict)
    #: ``(raw prefix, pseudonym)`` whose records this run (or a recent one) refused as
    #: claimed by another centre: images under that prefix for that patient are refused too.
    refused_claims: set[tuple[str, str]] = field(default_factory=set)
    filed_centres: FiledCentres | None = None
    #: The last run's problems (its report), to write only the feedback that changed.
    previous_problems: list[dict] | None = None
    progress: Progress = field(default_factory=Progress)
    clinical_budget: ByteBudget = field(
        default_factory=lambda: ByteBudget(CLINICAL_BYTES_IN_FLIGHT)
    )
    #: The part of a sharded run this process makes (`shards.part_of` its settings), or None.
    part: RunPart | None = None
    #: Pseudonyms of the clinical files this run reads (the clinical phase hands them over).
    new_patients: set[str] = field(default_factory=set)
    #: For an image shard: what its run's clinical phase handed over.
    handoff: Handoff | None = None
    #: The run's image catalogue part (`warehouse.catalogue.run`).
    catalogue: LoaderCatalogue | None = None
    _claimed: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.part is None:
            self.part = part_of(self.settings)
        if self.catalogue is None:
            submit = self.workers.submit if self.workers is not None else None
            self.catalogue = LoaderCatalogue(
                self.report, submit, max_header_bytes=self.settings.max_header_bytes
            )

    def count_header_read(self, requests: int, size: int) -> None:
        """Add one header read's requests and bytes to the run's totals."""
        with self._lock:
            self.header_requests += requests
            self.header_bytes += size

    def take_lease(self, storage: Storage) -> Storage:
        """Take the run lease on the warehouse (or, for a process of a sharded run, join it)
        before anything is read, renewing it while the run lasts; return the store to use,
        whose writes stop if the lease is lost.

        Raises
        ------
        LeaseHeld
            When another run holds the warehouse (exit code 3).
        ClinicalPhaseMissing
            When this image shard's clinical phase did not hand over (exit code 2; checked
            first, so that is what the shard says).
        """
        if self.part is not None and self.part.shard is not None:
            from warehouse.loader.runs import load_handoff

            self.handoff = load_handoff(storage, self.settings, self.report.graph)
        lease = RunLease(
            storage, self.report.run_id, on_lost=lambda exc: self.report.fail(str(exc))
        )
        if self.settings.shard is not None:
            lease.join()
        else:
            lease.acquire()
        lease.start_renewing()
        self.lease = lease
        return LeasedStorage(storage, lease)

    def publish_feedback(self, storage: Storage) -> None:
        """Write each raw prefix's feedback file that changed (see `feedback`); a failed
        write makes the run incomplete."""
        try:
            written = publish_feedback(storage, self.report, self.previous_problems)
        except StorageError as exc:
            self.report.fail(f"feedback not written: {exc}")
            return
        if written:
            self.report.count("feedback files written", written)

    def conclude(self, storage: Storage) -> str:
        """The end of a loader run, before its report is written: count the header reads and
        the lease's requests, write the run's image catalogue part and the feedback files (a
        run that listed its inputs), and the summary; a part of a sharded run writes its part
        report and, when it is the last, ends the run."""
        report = self.report
        if self.header_requests:
            report.count("header read requests", self.header_requests)
        self.count_lease_requests()
        catalogue = self.catalogue.publish(storage, self.settings) if report.listed else ""
        if report.listed and not self.settings.dry_run and self.part is None:
            self.publish_feedback(storage)  # (a sharded run's, once all its parts are done)
        summary = report.summary() + catalogue
        if self.settings.dry_run:
            summary += "\n  (dry run: nothing was written)"
        if self.part is not None:
            from warehouse.loader.runs import end_part  # (runs builds on this module)

            summary += end_part(storage, self, report.graph)
        return summary

    def publishes_report(self) -> bool:
        """A part of a sharded run writes its part report instead (`runs.end_part`); the run's
        report is the parts' combined."""
        return self.part is None

    def count_lease_requests(self) -> None:
        """Count what the lease cost, its release (one DELETE, made once the report is
        written) included."""
        if self.lease is not None and not self.settings.dry_run:
            release = 0 if self.part is not None else 1
            self.report.count("run lease requests", self.lease.request_count + release)

    def release_lease(self) -> None:
        """Give the lease back, once the report is written (`close`); a part of a sharded
        run only stops renewing it (the run's lease outlives its parts: `runs.finish_run`
        releases it)."""
        if self.lease is not None:
            if self.part is None:
                self.lease.release()
            else:
                self.lease.stop()
            self.lease = None

    def close(self) -> None:
        self.release_lease()
        super().close()

    def progress_line(self) -> str | None:
        """The status lines' progress line (see `Progress.line`)."""
        return self.progress.line()

    def item_failed(self, item, exc: BaseException) -> list:
        if isinstance(item, Task):
            self.progress.finished(item.action)
        return super().item_failed(item, exc)

    def skip_extras(self, item, reason: Reason) -> dict:
        """A raw input that failed is reported with its listing stamp, so the next run knows
        it unchanged and does not read it again (memo)."""
        if not isinstance(item, Task) or item.action not in ("clinical", "image"):
            return {}
        if reason is Reason.INTERNAL_ERROR:
            return {"stamp": stamp(item), "facts": {"version": __version__}}
        facts = limit_facts(reason, self.settings)
        return {"stamp": stamp(item), "facts": facts} if facts else {"stamp": stamp(item)}

    def claim(self, target: str, key: str) -> str:
        """Claim a target key for the raw file ``key``; the raw file that has it (``key``
        itself unless another raw file claimed it first in this run)."""
        with self._lock:
            return self._claimed.setdefault(target, key)


class FiledCentres:
    """The ``SubmittingCentre`` each filed patient is bound to: that of its first filed record
    (earliest upload), read once per patient and run, only when a new record or an image needs
    it (workers call it; thread-safe).
    """

    def __init__(self, storage: Storage, index: WarehouseIndex):
        self.storage = storage
        self.index = index
        self._known: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def __call__(self, pseudonym: str) -> str | None:
        with self._lock:
            if pseudonym in self._known:
                return self._known[pseudonym]
        key = self.index.first_clinical_key(pseudonym)
        centre = None
        if key is not None:
            try:
                centre = nfc(submitting_centre(parse_clinical_record(self.storage.read(key))))
            except (InvalidClinicalFile, MissingSubmittingCentre):
                centre = None  # no binding can be read: the first accepted record binds
        with self._lock:
            self._known[pseudonym] = centre
        return centre

    def known(self) -> dict[str, str | None]:
        """The centres read so far, by pseudonym (None: none could be read)."""
        with self._lock:
            return dict(self._known)

    def seed(self, centres: dict[str, str | None]) -> None:
        """Take centres another process of the run read (the clinical phase's hand-off)."""
        with self._lock:
            for pseudonym, centre in centres.items():
                self._known.setdefault(pseudonym, centre)


def read_clinical(
    storage,
    task: Task,
    *,
    max_bytes: int,
    filed_centre: FiledCentres,
    budget: ByteBudget | None = None,
) -> tuple[Task, str, str | None]:
    """Worker: read and decode one clinical file, check its ``Pseudonym`` against its file
    name, and take its ``SubmittingCentre`` (and, for a patient already filed, the centre
    the patient is bound to). The file's bytes and record are held within ``budget`` (the
    run's bytes of clinical files in memory at once) and dropped before it returns.

    Raises
    ------
    UnsafeIdentifier, ClinicalTooLarge, InvalidClinicalFile, PseudonymMismatch,
    MissingSubmittingCentre, StorageError
        Each with its report reason.
    """
    check_pseudonym(task.payload.pseudonym)
    check_clinical_size(task.size, max_bytes)
    with budget.hold(task.size) if budget is not None else contextlib.nullcontext():
        record = parse_clinical_record(storage.read(task.key))
        check_record_pseudonym(record, task.payload.pseudonym)
        centre = submitting_centre(record)
        del record
    return task, centre, filed_centre(task.payload.pseudonym)


def stamp(task: Task) -> tuple[int, str]:
    """A raw input's size and modification time from the listing (how the next run knows it)."""
    return task.size, task.payload.modified


def file_clinical(state: LoaderState, read: tuple[Task, str, str | None]) -> list[Task]:
    """Decide a clinical file's group and return its copy task (or report why not).

    In input order: the raw prefix must be allowed to send the record's centre
    (``prefix_sites``); the pseudonym must not be bound to another centre (by its first filed
    record, or by this run's first accepted one); then the site rules and the patient's group
    decide, and the target must not be claimed by another raw file of this run.
    """
    task, centre, filed_centre = read
    raw, report, config = task.payload, state.report, state.config
    state.progress.finished("clinical")
    facts = {"pseudonym": raw.pseudonym, "centre": centre}

    def refuse(reason: Reason, detail: str, **more) -> list[Task]:
        report.skip(task.key, reason, detail, stamp=stamp(task), facts={**facts, **more})
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
        group = state.groups.assign(raw.pseudonym, wanted)
    except UnknownSite:
        return refuse(Reason.SITE_NOT_IN_CONFIG, f"SubmittingCentre {centre!r}")
    except GroupConflict as exc:
        return refuse(Reason.GROUP_CONFLICT, str(exc))
    except CaseVariant as exc:
        return refuse(Reason.CASE_VARIANT, str(exc), variant=exc.known)
    target = clinical_target(group, raw.pseudonym, raw.clinical_kind, raw.upload_date)
    claimant = state.claim(target, task.key)
    if claimant != task.key:
        report.skip(task.key, Reason.DUPLICATE_TARGET, f"{target} is claimed by {claimant}")
        return []
    state.bound_centres.setdefault(raw.pseudonym, nfc(centre))
    return [Task("copy", task.key, task.size, target, None)]


def read_image(
    storage, task: Task, *, max_header_bytes: int, centre_of=None
) -> tuple[Task, HeaderRead, ImageIdentity, str | None]:
    """Worker: read one image's header (ranged reads) and take its identity (and, when
    ``centre_of`` is given, the centre its patient is bound to).

    Raises
    ------
    HeaderProblem, UnsafeIdentifier, StorageError
        Each with its report reason.
    """
    problem = image_name_problem(task.payload.name)
    if problem:
        raise UnsafeIdentifier(problem)
    header = read_header(storage, task.key, task.size, max_header_bytes=max_header_bytes)
    identity = image_identity(header.dataset)
    centre = centre_of(identity.patient_id) if centre_of is not None else None
    return task, header, identity, centre


def file_image(
    state: LoaderState, read: tuple[Task, HeaderRead, ImageIdentity, str | None]
) -> list[Task]:
    """Decide where an image goes; return its copy and metadata tasks (those not yet done)."""
    task, header, identity, filed_centre = read
    report, raw, patient = state.report, task.payload, identity.patient_id
    state.progress.finished("image")
    state.count_header_read(header.requests, header.bytes_read)

    def refuse(reason: Reason, detail: str, **facts) -> list[Task]:
        report.skip(task.key, reason, detail, stamp=stamp(task), facts=facts or None)
        return []

    group = state.groups.get(patient)
    if group is None:
        known = state.groups.case_variant(patient)
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
    if raw.prefix in state.config.prefix_sites:
        centre = state.bound_centres.get(patient) or filed_centre
        if centre is not None and not state.config.centre_allowed(raw.prefix, centre):
            return refuse(
                Reason.CENTRE_NOT_ALLOWED,
                f"{raw.prefix} may not send images of {patient}, a patient of {centre!r}",
                prefix=raw.prefix,
                centre=centre,
                patient=patient,
            )
    image_key, metadata_key = image_targets(
        group, identity.folder, patient, identity.study_uid, identity.series_uid, raw.name
    )
    # A duplicate of an instance filed under another key is refused before it claims its own
    # target: a refused file holds no claim, so the reasons of the files behind it do not
    # depend on whether it was read in this run or remembered from the last.
    catalogue, sop = state.catalogue, instance_uid(header.dataset)
    filed = catalogue.filed_copy(sop, image_key)
    if filed is None:
        claimant = state.claim(image_key, task.key)
        if claimant != task.key:
            report.skip(task.key, Reason.DUPLICATE_TARGET, f"{image_key} is claimed by {claimant}")
            return []
    else:
        facts = {"filed": filed.key, "sop": sop}
        if filed.size == task.size:
            detail = f"SOPInstanceUID {sop} is filed as {filed.key}"
            return refuse(Reason.DUPLICATE_IMAGE, detail, **facts)
        detail = (
            f"SOPInstanceUID {sop} is filed as {filed.key} ({filed.size:,} bytes); "
            f"{task.key} has {task.size:,} bytes"
        )
        return refuse(Reason.CONFLICTING_DUPLICATE, detail, **facts)
    catalogue.claim_instance(sop, image_key, task.size)

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
            header.dataset, where, size=task.size, raw_key=task.key, upload=raw.upload_date
        )

    tasks = []
    if not state.index.filed(image_key):
        tasks.append(Task("copy", task.key, task.size, image_key, None))
    if not state.index.filed(metadata_key):
        tasks.append(Task("metadata", task.key, None, metadata_key, header.dataset))
    if not tasks:
        report.count("images already filed", prefix=raw.prefix)
        catalogue.already_filed(image_key, row)
    else:
        catalogue.expect(row(), [t.target for t in tasks])
    return tasks


def metadata_file(state: LoaderState, task: Task) -> list[Task]:
    """Turn a metadata task's header into the DICOM JSON write task.

    Elements that cannot be converted are left out of the JSON (the image is still filed),
    and those over a size bound are written without their value; they are counted and logged
    with the image's key (the first ten tags).
    """
    left_out: list[str] = []
    data = header_json(task.payload, left_out)
    if left_out:
        state.report.count("metadata elements left out (cannot be converted)", len(left_out))
        more = f" and {len(left_out) - 10:,} more" if len(left_out) > 10 else ""
        logger.warning(
            "%s: metadata JSON without %s%s (cannot be converted, or over a size bound)",
            task.key,
            left_out[:10],
            more,
        )
    return [Task("write", task.key, len(data), task.target, data)]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write or copy a worker made, and its error if it failed."""

    task: Task
    error: str = ""


def write_object(storage, task: Task) -> WriteResult:
    """Worker: write ``task.payload`` at ``task.target``."""
    try:
        storage.write(task.target, task.payload)
        return WriteResult(task)
    except StorageError as exc:
        return WriteResult(task, str(exc))


def copy_object(storage, task: Task) -> WriteResult:
    """Worker: copy ``task.key`` to ``task.target`` (server-side on S3)."""
    try:
        storage.copy(task.key, task.target, task.size)
        return WriteResult(task)
    except StorageError as exc:
        return WriteResult(task, str(exc))


def record_write(state: LoaderState, result: WriteResult) -> list[Task]:
    """Count a finished write or copy (or report its failure); pass the task on if it worked."""
    task = result.task
    if result.error:
        state.report.skip(task.key, Reason.WRITE_FAILED, f"{task.target}: {result.error}")
        return []
    prefix = raw_prefix_of(task.key)  # the raw input's: what each site's uploads came to
    state.catalogue.written(task.target)
    if task.action == "write":
        state.report.count("metadata files written", prefix=prefix)
    elif parse_warehouse_key(task.target).kind == "clinical":
        state.report.count("clinical files copied", prefix=prefix)
    else:
        state.report.count("images copied", prefix=prefix)
    return [task]
