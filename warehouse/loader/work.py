"""The loader's storage work, done by the run's workers: reading a clinical file or an image's
header, and the writes and copies that file them (with how each finished)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from warehouse.core.clinical import (
    check_clinical_size,
    check_record_pseudonym,
    parse_clinical_record,
    submitting_centre,
)
from warehouse.core.errors import StorageError
from warehouse.core.keys import (
    UnsafeIdentifier,
    check_pseudonym,
    image_name_problem,
    parse_warehouse_key,
    raw_prefix_of,
)
from warehouse.core.reasons import Reason
from warehouse.core.run import ByteBudget, loaded
from warehouse.dicom.identity import ImageIdentity, image_identity
from warehouse.dicom.jsonrep import header_json
from warehouse.dicom.problems import HeaderProblem
from warehouse.dicom.reader import HeaderRead, read_header, with_pydicom_messages
from warehouse.listing.raw import sha256_content_id
from warehouse.loader.state import FiledCentres, LoaderState
from warehouse.loader.tasks import Task
from warehouse.storage.base import Storage


def read_clinical(
    storage: Storage,
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


def read_image(
    storage: Storage,
    task: Task,
    *,
    max_header_bytes: int,
    centre_of: Callable[[str], str | None] | None = None,
) -> tuple[Task, HeaderRead, ImageIdentity, str | None]:
    """Worker: read one image's header (ranged reads) and take its identity (and, when
    ``centre_of`` is given, the centre its patient is bound to).

    Where the listing gave no content id (a local store), the file's SHA-256 is computed here
    and set as its raw key's ``content_id``: the leakage checks need it before the image is
    filed (`decisions.owner_conflict`), and a local read costs no request.

    Raises
    ------
    HeaderProblem, UnsafeIdentifier, StorageError
        Each with its report reason (its detail naming pydicom's messages about the file).
    """
    problem = image_name_problem(task.payload.name)
    if problem:
        raise UnsafeIdentifier(problem)
    header = read_header(storage, task.key, task.size, max_header_bytes=max_header_bytes)
    try:
        identity = image_identity(header.dataset)
    except (HeaderProblem, UnsafeIdentifier) as exc:
        raise with_pydicom_messages(exc, header.messages) from None
    centre = centre_of(identity.patient_id) if centre_of is not None else None
    raw = task.payload
    if not raw.content_id:
        # a local store: the bytes hashed here, where they are read anyway (the S3 listing
        # gave the ETag instead)
        content = sha256_content_id(storage.content_digest(task.key))
        if content:
            task = task._replace(payload=replace(raw, content_id=content))
    return task, header, identity, centre


def metadata_file(state: LoaderState, task: Task) -> list[Task]:
    """Turn a metadata task's header into the DICOM JSON write task.

    Elements that cannot be converted are left out of the JSON (the image is still filed),
    and those over a size bound are written without their value; they are counted, and noted
    in the run report against the image's key (the first ten tags).
    """
    left_out: list[str] = []
    data = header_json(task.payload, left_out)
    if left_out:
        state.report.count("metadata elements left out (cannot be converted)", len(left_out))
        more = f" and {len(left_out) - 10:,} more" if len(left_out) > 10 else ""
        state.report.note(
            task.key,
            f"metadata JSON without {left_out[:10]}{more} (cannot be converted, or over a "
            "size bound)",
        )
    return [Task("write", task.key, len(data), task.target, data)]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write or copy a worker made, and its error if it failed."""

    task: Task
    error: str = ""


def write_object(storage: Storage, task: Task) -> WriteResult:
    """Worker: write ``task.payload`` at ``task.target``."""
    try:
        storage.write(task.target, task.payload)
        return WriteResult(task)
    except StorageError as exc:
        return WriteResult(task, str(exc))


def copy_object(storage: Storage, task: Task) -> WriteResult:
    """Worker: copy ``task.key`` to ``task.target`` (server-side on S3)."""
    try:
        storage.copy(task.key, task.target, task.size)
        return WriteResult(task)
    except StorageError as exc:
        return WriteResult(task, str(exc))


#: What a dry run says instead of each write's outcome: it wrote nothing.
DRY_RUN_OUTCOMES = {
    "metadata files written": "metadata files to write (dry run)",
    "clinical files copied": "clinical files to copy (dry run)",
    "images copied": "images to copy (dry run)",
}


def record_write(state: LoaderState, result: WriteResult) -> list[Task]:
    """Count a finished write or copy (or report its failure); pass the task on if it worked."""
    task = result.task
    if result.error:
        state.report.skip(task.key, Reason.WRITE_FAILED, f"{task.target}: {result.error}")
        return []
    prefix = raw_prefix_of(task.key)  # the raw input's: what each site's uploads came to
    loaded(state.catalogue, "the run's image catalogue").written(
        task.target, task.size if task.action == "write" else None
    )
    if task.action == "write":
        outcome = "metadata files written"
    elif (target := parse_warehouse_key(task.target)) is not None and target.kind == "clinical":
        outcome = "clinical files copied"
    else:
        outcome = "images copied"
    state.report.count(
        DRY_RUN_OUTCOMES[outcome] if state.settings.dry_run else outcome, prefix=prefix
    )
    return [task]
