"""The loader's per-file rules: what happens to one clinical file and to one image.

Workers do the reads (`read_clinical`, `read_image`); the decisions (`file_clinical`,
`file_image`) run in the node's own thread, in input order, against the run's state.
"""

from __future__ import annotations

import logging
import threading
from collections import namedtuple
from dataclasses import dataclass, field

from warehouse import __version__
from warehouse.components.clinical import (
    check_clinical_size,
    check_record_pseudonym,
    parse_clinical_record,
    submitting_centre,
)
from warehouse.components.config import PipelineConfig
from warehouse.components.dicom import (
    HeaderRead,
    ImageIdentity,
    header_json,
    image_identity,
    read_header,
)
from warehouse.components.execution import RunState
from warehouse.components.keys import (
    UnsafeIdentifier,
    check_pseudonym,
    clinical_target,
    image_targets,
    is_safe_name,
)
from warehouse.components.lease import LeasedStorage, RunLease
from warehouse.components.listing import WarehouseIndex
from warehouse.components.memo import limit_facts
from warehouse.components.patients import GroupConflict, PatientGroups, UnknownSite, group_for
from warehouse.components.report import Reason
from warehouse.components.storage import Storage, StorageError

logger = logging.getLogger("warehouseloader")

#: One item between the loader's nodes. ``action`` is ``clinical`` or ``image`` (a raw file to
#: process), ``copy`` (copy ``key`` to ``target``), ``metadata`` (``payload`` is the header of
#: image ``key``, to write at ``target``) or ``write`` (``payload`` is the bytes for ``target``).
Task = namedtuple("Task", "action key size target payload")


@dataclass
class LoaderState(RunState):
    """Everything one loader run shares between its nodes (one instance, a bonobo service)."""

    config: PipelineConfig | None = None
    index: WarehouseIndex | None = None
    groups: PatientGroups | None = None
    header_requests: int = 0
    header_bytes: int = 0
    lease: RunLease | None = None
    _claimed: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        """
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

    def count_lease_requests(self) -> None:
        """Count what the lease cost, its release (one DELETE, made once the report is
        written) included."""
        if self.lease is not None and not self.settings.dry_run:
            self.report.count("run lease requests", self.lease.request_count + 1)

    def release_lease(self) -> None:
        """Give the lease back, once the report is written."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def close(self) -> None:
        self.release_lease()
        super().close()

    def skip_extras(self, item, reason: Reason) -> dict:
        """A raw input that failed is reported with its listing stamp, so the next run knows
        it unchanged and does not read it again (memo)."""
        if not isinstance(item, Task) or item.action not in ("clinical", "image"):
            return {}
        if reason is Reason.INTERNAL_ERROR:
            return {"stamp": stamp(item), "facts": {"version": __version__}}
        facts = limit_facts(reason, self.settings)
        return {"stamp": stamp(item), "facts": facts} if facts else {"stamp": stamp(item)}

    def claim(self, key: str) -> bool:
        """Claim a target key for this run; False if another raw file already has it."""
        with self._lock:
            if key in self._claimed:
                return False
            self._claimed.add(key)
            return True


def read_clinical(storage, task: Task, *, max_bytes: int) -> tuple[Task, str]:
    """Worker: read and decode one clinical file, check its ``Pseudonym`` against its file
    name, and take its ``SubmittingCentre``.

    Raises
    ------
    UnsafeIdentifier, ClinicalTooLarge, InvalidClinicalFile, PseudonymMismatch,
    MissingSubmittingCentre, StorageError
        Each with its report reason.
    """
    check_pseudonym(task.payload.pseudonym)
    check_clinical_size(task.size, max_bytes)
    record = parse_clinical_record(storage.read(task.key))
    check_record_pseudonym(record, task.payload.pseudonym)
    return task, submitting_centre(record)


def stamp(task: Task) -> tuple[int, str]:
    """A raw input's size and modification time from the listing (how the next run knows it)."""
    return task.size, task.payload.modified


def file_clinical(state: LoaderState, read: tuple[Task, str]) -> list[Task]:
    """Decide a clinical file's group and return its copy task (or report why not)."""
    task, centre = read
    raw, report = task.payload, state.report
    facts = {"pseudonym": raw.pseudonym, "centre": centre}
    try:
        wanted = group_for(raw.pseudonym, centre, state.config)
        group = state.groups.assign(raw.pseudonym, wanted)
    except UnknownSite:
        detail = f"SubmittingCentre {centre!r}"
        report.skip(task.key, Reason.SITE_NOT_IN_CONFIG, detail, stamp=stamp(task), facts=facts)
        return []
    except GroupConflict as exc:
        report.skip(task.key, Reason.GROUP_CONFLICT, str(exc), stamp=stamp(task), facts=facts)
        return []
    target = clinical_target(group, raw.pseudonym, raw.clinical_kind, raw.upload_date)
    return [Task("copy", task.key, task.size, target, None)]


def read_image(
    storage, task: Task, *, max_header_bytes: int
) -> tuple[Task, HeaderRead, ImageIdentity]:
    """Worker: read one image's header (ranged reads) and take its identity.

    Raises
    ------
    HeaderProblem, UnsafeIdentifier, StorageError
        Each with its report reason.
    """
    if not is_safe_name(task.payload.name):
        raise UnsafeIdentifier(f"unsafe file name {task.payload.name!r}")
    header = read_header(storage, task.key, task.size, max_header_bytes=max_header_bytes)
    return task, header, image_identity(header.dataset)


def file_image(state: LoaderState, read: tuple[Task, HeaderRead, ImageIdentity]) -> list[Task]:
    """Decide where an image goes; return its copy and metadata tasks (those not yet done)."""
    task, header, identity = read
    report = state.report
    state.count_header_read(header.requests, header.bytes_read)
    group = state.groups.get(identity.patient_id)
    if group is None:
        report.skip(
            task.key,
            Reason.NO_PATIENT_DATA,
            f"PatientID {identity.patient_id!r}",
            stamp=stamp(task),
            facts={"patient": identity.patient_id},
        )
        return []
    image_key, metadata_key = image_targets(
        group,
        identity.folder,
        identity.patient_id,
        identity.study_uid,
        identity.series_uid,
        task.payload.name,
    )
    if not state.claim(image_key):
        report.skip(task.key, Reason.DUPLICATE_TARGET, image_key)
        return []
    tasks = []
    if image_key not in state.index.keys:
        tasks.append(Task("copy", task.key, task.size, image_key, None))
    if metadata_key not in state.index.keys:
        tasks.append(Task("metadata", task.key, None, metadata_key, header.dataset))
    if not tasks:
        report.count("images already filed")
    return tasks


def metadata_file(state: LoaderState, task: Task) -> list[Task]:
    """Turn a metadata task's header into the DICOM JSON write task.

    Elements that cannot be converted are left out of the JSON (the image is still filed);
    they are counted and logged with the image's key.
    """
    left_out: list[str] = []
    data = header_json(task.payload, left_out)
    if left_out:
        state.report.count("metadata elements left out (cannot be converted)", len(left_out))
        logger.warning("%s: metadata JSON without %s (cannot be converted)", task.key, left_out)
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
    if task.action == "write":
        state.report.count("metadata files written")
    elif task.target.split("/", 2)[1] == "data":
        state.report.count("clinical files copied")
    else:
        state.report.count("images copied")
    return [task]
