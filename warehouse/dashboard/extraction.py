"""The ``dataprocess`` graph's per-file rules: which clinical file stands for a patient, and
turning that file, or a study's metadata file, into a table row.

Workers do the reads (:func:`read_patient_record`, :func:`read_study_row`); the decisions
(:func:`patient_row`, :func:`study_row`) run in the node's own thread, in input order, and
report what cannot be used. :class:`Collected` is what the join node keeps.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from warehouse.core.clinical import (
    parse_clinical_record,
    parse_json_document,
)
from warehouse.core.config import PipelineConfig
from warehouse.core.errors import ExpectedError, ObjectNotFound
from warehouse.core.keys import IMAGE_FOLDERS, patient_folder
from warehouse.core.lease import RunLease, graph_lease
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.core.run import RunState
from warehouse.dashboard.cells import bounded_text
from warehouse.dashboard.tables import (
    choose_patient_file,
    dictionary_fields,
    flatten_clinical_record,
    metadata_row,
)
from warehouse.dashboard.view import DataprocessView, SharedView, saved_row
from warehouse.listing.raw import report_links
from warehouse.listing.warehouse import StudyFile, WarehouseIndex
from warehouse.storage.base import Storage
from warehouse.storage.wrappers import LeasedStorage

logger = logging.getLogger("dataprocess")

#: A patient's chosen clinical file, with what the file names say (clinical-data.md 1.2).
PatientFile = namedtuple(
    "PatientFile", "pseudonym group key last_modified earliest latest positive stamp"
)
#: Items for the join node: a patient (``row`` of the patient table, and the file and
#: flattened record it came from), a study (``modality``, the study table's ``row``, and the
#: `StudyFile` and fields it came from), or the storage sums (``sizes``, prefix -> bytes).
PatientRow = namedtuple("PatientRow", "row patient record")
StudyRow = namedtuple("StudyRow", "modality row study found")
StorageSizes = namedtuple("StorageSizes", "sizes")
#: Inputs known from the last batch (no file to read) go from node to node this many at a
#: time: one item each would cost the graph's queues and threads more than its row does.
REUSED_AT_ONCE = 1024


class Reused(tuple):
    """Consecutive inputs known from the last batch, ``(input, what was read)`` each: one item
    between the nodes (`in_runs`)."""


class Rows(tuple):
    """Rows for the join node (`PatientRow` or `StudyRow`), several in one item: those of a
    `Reused` run."""


#: The count of warehouse objects listed with a time before 1990 or in the future.
IMPLAUSIBLE_TIMES = "warehouse objects with an implausible modification time (dates left empty)"


@dataclass
class DataprocessState(RunState):
    """What one dataprocess run shares between its nodes (one instance, a bonobo service).

    Attributes
    ----------
    batch : str or None
        The batch folder written (or that would be, in a dry run).
    written : list of str
        Keys written to the processed store, ``latest.csv`` last.
    processed_url : str
        The processed store.
    config : PipelineConfig or None
        The warehouse's ``config.json`` (a bucket without one is not a warehouse).
    kept : bool
        Nothing changed since the last batch (``batch``): no new one was written.
    lease : RunLease or None
        The run lease it holds while it runs: no loader run files meanwhile, so no batch
        mixes a half-filed run (`take_lease`).

    The settings, the report, the workers and the exit code are `RunState`'s.
    """

    batch: str | None = None
    written: list[str] = field(default_factory=list)
    processed_url: str = ""
    config: PipelineConfig | None = None
    kept: bool = False
    lease: RunLease | None = None

    def take_lease(self, storage: Storage) -> Storage:
        """Take the warehouse's run lease (the loader's) before anything is read, renewing it
        while the run lasts; return the store to use, whose writes stop if the lease is lost.

        Raises
        ------
        LeaseHeld
            When a loader run (or another dataprocess run) holds the warehouse: exit code 3,
            the message names it.
        """
        lease = graph_lease(
            self.report.graph,
            storage,
            self.report.run_id,
            on_lost=lambda exc: self.report.fail(str(exc)),
        )
        lease.acquire()
        lease.start_renewing()
        self.lease = lease
        return LeasedStorage(storage, lease)

    def release_lease(self) -> None:
        """Give the lease back (the run's end, however it ended)."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def close(self) -> None:
        """Give the lease back, then the workers."""
        self.release_lease()
        super().close()

    def give_back_at_once(self) -> None:
        """The lease of a run ended at once (`warehouse.core.run.end_at_once`)."""
        self.release_lease()

    def view(self, shared: SharedView) -> DataprocessView:
        """What the run reads its tables from (built once, shared by the branches); a failure
        fails the run.

        Raises
        ------
        ExpectedError
            When a listing or a read fails.
        """
        try:
            view = shared.view()
        except ExpectedError as exc:
            self.report.fail(f"cannot list the warehouse: {exc}")
            raise
        self.report.listed = True
        return view

    def conclude(self, storage: Storage) -> str:
        """The summary, with where the tables went."""
        summary = self.report.summary()
        if self.kept:
            summary += (
                f"\n  tables: {self.processed_url}/{self.batch}/ still stands (nothing changed "
                "since it was built: no new batch, latest.csv unchanged)"
            )
        if self.written:
            where = f"{self.processed_url}/{self.batch}/"
            if self.settings.dry_run:
                summary += f"\n  tables: {where} (dry run: nothing was written)"
            else:
                files = len(self.written) - 1
                summary += f"\n  tables: {where} ({files} files; latest.csv updated)"
        return summary

    def publishes_report(self) -> bool:
        """A run that could not list the warehouse writes no report (printed in a dry run)."""
        if self.settings.dry_run or self.report.listed:
            return True
        logger.warning("the warehouse could not be listed: no run report written")
        return False


class NotDicomJson(ValueError):
    """A metadata file that is JSON but not DICOM JSON (nor the original's form)."""

    reason = Reason.INVALID_JSON


class NotInWarehouse(ValueError):
    """A catalogued image's metadata file that is not in the warehouse (deleted since)."""

    reason = Reason.NOT_IN_WAREHOUSE


def patient_files(index: WarehouseIndex, report: RunReport) -> Iterator[PatientFile]:
    """Each patient's chosen clinical file, by pseudonym, from the listed names alone.

    A patient found in both groups (an inconsistency the loader never creates) is reported and
    kept once, in the group of the chosen file; a patient with no ``data_``/``status_`` file
    name of the layout is reported and left out.
    """
    for pseudonym in sorted(index.clinical_files):
        files = sorted(index.clinical_files[pseudonym], key=lambda f: (f.name, f.group))
        groups = sorted({f.group for f in files})
        if len(groups) > 1:
            report.skip(patient_folder("|".join(groups), pseudonym), Reason.WAREHOUSE_CONFLICT)
        try:
            chosen, earliest, latest, positive = choose_patient_file([f.name for f in files])
        except ValueError:
            report.skip(
                patient_folder(groups[0], pseudonym),
                Reason.NOT_IN_LAYOUT,
                "no data_<date>.json or status_<date>.json file",
            )
            continue
        entry = next(f for f in files if f.name == chosen)
        yield PatientFile(
            pseudonym,
            entry.group,
            entry.key(pseudonym),
            entry.last_modified,
            earliest,
            latest,
            positive,
            entry.stamp,
        )


def read_patient_record(storage: Storage, patient: PatientFile) -> tuple[PatientFile, dict]:
    """Worker: read a patient's chosen clinical file and flatten it (SegmentationData merged).

    Raises
    ------
    InvalidClinicalFile, StorageError
        Reported against the file with their own reasons (the pool's ``item_failed``).
    """
    return patient, flatten_clinical_record(parse_clinical_record(storage.read(patient.key)))


#: How many of a record's left-out field names its report line names.
NAMED_FIELDS = 3
#: The longest field name shown in a report line (longer ones are cut).
NAMED_FIELD_CHARS = 40


def patient_row(report: RunReport, read: tuple[PatientFile, dict | str]) -> list[PatientRow]:
    """The patient table row of a read record: the record's fields of the clinical data
    dictionary (`tables.dictionary_fields`) plus the ``filename_*``, ``last_modified`` and
    ``group`` fields.

    The record's other fields are counted (``clinical fields left out of the tables``) and the
    file is reported with how many there were ("fields outside the clinical data dictionary";
    its row is still in the tables)."""
    patient, record = read
    row, left_out = dictionary_fields(saved_row(record))
    if left_out:
        report.count("clinical fields left out of the tables", len(left_out))
        named = ", ".join(
            repr(bounded_text(name, NAMED_FIELD_CHARS)) for name in left_out[:NAMED_FIELDS]
        )
        more = ", ..." if len(left_out) > NAMED_FIELDS else ""
        report.skip(
            patient.key,
            Reason.FIELDS_LEFT_OUT,
            f"{len(left_out):,} fields left out of the tables ({named}{more}); "
            "the record's other fields are in them",
        )
    row.setdefault("Pseudonym", patient.pseudonym)
    row.update(
        filename_earliest_date=patient.earliest,
        filename_covid_status=patient.positive,
        filename_latest_date=patient.latest,
        last_modified=patient.last_modified,
        group=patient.group,
    )
    report.count("patients")
    return [PatientRow(row, patient, record)]


def read_study_row(storage: Storage, study: StudyFile) -> tuple[StudyFile, dict]:
    """Worker: read one metadata JSON file (valid DICOM JSON or the original's form).

    Raises
    ------
    InvalidClinicalFile, NotDicomJson, NotInWarehouse, StorageError
        Reported against the file with their own reasons (the pool's ``item_failed``).
    """
    try:
        data = storage.read(study.key)
    except ObjectNotFound:
        raise NotInWarehouse("catalogued, but no longer in the warehouse") from None
    document = parse_json_document(data)
    try:
        return study, metadata_row(document)
    except TypeError as exc:
        raise NotDicomJson(f"not DICOM JSON: {exc}") from None


def study_row(report: RunReport, read: tuple[StudyFile, dict | str]) -> list[StudyRow]:
    """The study table row of a read metadata file, with ``group`` and ``last_modified``.
    Without a PatientID the folder's name (the PatientID it was filed under) is the
    ``Pseudonym``."""
    study, found = read
    row = dict(saved_row(found))
    if not row.get("Pseudonym"):
        row["Pseudonym"] = study.pseudonym
    row["group"] = study.group
    row["last_modified"] = study.last_modified
    report.count(f"{study.modality} studies")
    return [StudyRow(study.modality, row, study, found)]


def in_runs(inputs: Iterable[tuple], size: int | None = None) -> Iterator[tuple | Reused]:
    """Yield each ``(input, known)`` whose ``known`` is None (a file to read) on its own, and
    consecutive known ones together (`Reused`, at most ``size``: `REUSED_AT_ONCE`), in input
    order."""
    size = size or REUSED_AT_ONCE
    run: list[tuple] = []
    for item in inputs:
        if item[1] is None:
            if run:
                yield Reused(run)
                run = []
            yield item
            continue
        run.append(item)
        if len(run) >= size:
            yield Reused(run)
            run = []
    if run:
        yield Reused(run)


def reused_rows(
    make_rows: Callable[[tuple], list],
    item_failed: Callable[[object, BaseException], object],
    run: Reused,
) -> list[Rows]:
    """The rows of a `Reused` run (``make_rows`` of each, in order), in one `Rows` item; an
    input whose row cannot be made is reported against it (``item_failed``), the others kept."""
    rows: list = []
    for read in run:
        try:
            rows.extend(make_rows(read))
        except Exception as exc:  # noqa: BLE001 - reported against its input; the run goes on
            item_failed(read[0], exc)
    return [Rows(rows)]


class Collected:
    """The rows the join node receives from the three branches."""

    def __init__(self):
        self.patients: list[PatientRow] = []
        self.studies: dict[str, list[StudyRow]] = {modality: [] for modality in IMAGE_FOLDERS}
        self.storage: dict[str, int] = {}

    def add(self, item) -> None:
        """Keep one item (`PatientRow`, `StudyRow`, `Rows` of them, or `StorageSizes`).

        Raises
        ------
        TypeError
            For anything else.
        """
        if isinstance(item, PatientRow):
            self.patients.append(item)
        elif isinstance(item, StudyRow):
            self.studies[item.modality].append(item)
        elif isinstance(item, Rows):
            for row in item:
                self.add(row)
        elif isinstance(item, StorageSizes):
            self.storage = dict(item.sizes)
        else:
            raise TypeError(f"cannot collect {item!r}")

    def release(self) -> None:
        """Let go of every row (once the tables are built from them)."""
        self.patients = []
        self.studies = {modality: [] for modality in IMAGE_FOLDERS}

    def patient_rows(self) -> list[dict]:
        """The patient table's rows, by the pseudonym of their folder."""
        return [p.row for p in sorted(self.patients, key=lambda p: p.patient.pseudonym)]

    def study_rows(self) -> dict[str, list[dict]]:
        """Each modality's study table rows, by group, patient and study folder."""
        return {
            modality: [s.row for s in sorted(rows, key=lambda s: _study_order(s.study))]
            for modality, rows in self.studies.items()
        }

    def reusable(self) -> tuple[list, list]:
        """What the next run may reuse (`view.reusable_row_files`): each patient's file and
        record, each study's first metadata file and fields."""
        patients = [
            (p.patient.pseudonym, p.patient.key, p.patient.stamp, p.record)
            for p in self.patients
            if p.patient.stamp is not None
        ]
        studies = [
            (
                (s.study.group, s.study.modality, s.study.pseudonym, s.study.study),
                s.study.key,
                s.found,
            )
            for rows in self.studies.values()
            for s in rows
        ]
        return patients, studies


def _study_order(study: StudyFile) -> tuple:
    return (study.group, study.pseudonym, study.study)


def clinical_inputs(
    view: DataprocessView, report: RunReport
) -> Iterator[tuple[PatientFile, str | None]]:
    """Report the links in the clinical folders (never read) and count their implausible
    times, then choose each patient's clinical file from the listed names (`patient_files`):
    the file, with the record read from it last time when it has not changed since (same key,
    size and time; else None: the file is read)."""
    index = view.clinical
    report_links(report, index.links, "warehouse")
    if index.implausible_times:  # their rows are kept, with no date
        report.count(IMPLAUSIBLE_TIMES, index.implausible_times)
    logger.info(
        "listed %d clinical files of %d patients; the catalogue holds %d images in %d studies",
        index.objects,
        len(index.clinical_files),
        view.catalogue.rows,
        view.catalogue.study_count,
    )
    if view.unchanged:
        return  # (the last batch stands: no row is built)
    for patient in patient_files(index, report):
        yield patient, view.reusable.patient_record(patient.pseudonym, patient.key, patient.stamp)


def storage_sizes(view: DataprocessView) -> StorageSizes:
    """The bytes stored under each storage prefix (`storage_by_prefix`), from the view."""
    return StorageSizes(view.storage_sizes())
