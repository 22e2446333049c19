"""The ``dataprocess`` graph's per-file rules: which clinical file stands for a patient, and
turning that file, or a study's metadata file, into a table row.

Workers do the reads (:func:`read_patient_record`, :func:`read_study_row`); the decisions
(:func:`patient_row`, :func:`study_row`) run in the node's own thread, in input order, and
report what cannot be used. :class:`Collected` is what the join node keeps.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass, field

from warehouse.core.clinical import (
    parse_clinical_record,
    parse_json_document,
)
from warehouse.core.config import PipelineConfig
from warehouse.core.errors import ExpectedError
from warehouse.core.keys import IMAGE_FOLDERS, patient_folder
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.core.run import RunState
from warehouse.dashboard.cells import bounded_text
from warehouse.dashboard.tables import (
    choose_patient_file,
    dictionary_fields,
    flatten_clinical_record,
    metadata_row,
    storage_by_prefix,
)
from warehouse.listing.raw import report_links
from warehouse.listing.warehouse import SharedWarehouseIndex, StudyFile, WarehouseIndex
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: A patient's chosen clinical file, with what the file names say (clinical-data.md 1.2).
PatientFile = namedtuple(
    "PatientFile", "pseudonym group key last_modified earliest latest positive"
)
#: Items for the join node: a patient (``row`` of the patient table), a study (``modality``
#: and the study table's ``row``), or the storage sums (``sizes``, prefix -> bytes).
PatientRow = namedtuple("PatientRow", "row")
StudyRow = namedtuple("StudyRow", "modality row")
StorageSizes = namedtuple("StorageSizes", "sizes")
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

    The settings, the report, the workers and the exit code are `RunState`'s.
    """

    batch: str | None = None
    written: list[str] = field(default_factory=list)
    processed_url: str = ""
    config: PipelineConfig | None = None

    def index(self, shared: SharedWarehouseIndex) -> WarehouseIndex:
        """The warehouse side (listed once, shared by the branches); a failed listing fails
        the run.

        Raises
        ------
        ExpectedError
            When the warehouse cannot be listed.
        """
        try:
            index = shared.index()
        except ExpectedError as exc:
            self.report.fail(f"cannot list the warehouse: {exc}")
            raise
        self.report.listed = True
        return index

    def conclude(self, storage: Storage) -> str:
        """The summary, with where the tables went."""
        summary = self.report.summary()
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


def patient_row(report: RunReport, read: tuple[PatientFile, dict]) -> list[PatientRow]:
    """The patient table row of a read record: the record's fields of the clinical data
    dictionary (`tables.dictionary_fields`) plus the ``filename_*``, ``last_modified`` and
    ``group`` fields.

    The record's other fields are counted (``clinical fields left out of the tables``) and the
    file is reported with how many there were ("fields outside the clinical data dictionary";
    its row is still in the tables)."""
    patient, record = read
    row, left_out = dictionary_fields(record)
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
    return [PatientRow(row)]


def read_study_row(storage: Storage, study: StudyFile) -> tuple[StudyFile, dict]:
    """Worker: read one metadata JSON file (valid DICOM JSON or the original's form).

    Raises
    ------
    InvalidClinicalFile, NotDicomJson, StorageError
        Reported against the file with their own reasons (the pool's ``item_failed``).
    """
    document = parse_json_document(storage.read(study.key))
    try:
        return study, metadata_row(document)
    except TypeError as exc:
        raise NotDicomJson(f"not DICOM JSON: {exc}") from None


def study_row(report: RunReport, read: tuple[StudyFile, dict]) -> list[StudyRow]:
    """The study table row of a read metadata file, with ``group`` and ``last_modified``.
    Without a PatientID the folder's name (the PatientID it was filed under) is the
    ``Pseudonym``."""
    study, found = read
    row = dict(found)
    if not row.get("Pseudonym"):
        row["Pseudonym"] = study.pseudonym
    row["group"] = study.group
    row["last_modified"] = study.last_modified
    report.count(f"{study.modality} studies")
    return [StudyRow(study.modality, row)]


class Collected:
    """The rows the join node receives from the three branches."""

    def __init__(self):
        self.patients: list[dict] = []
        self.studies: dict[str, list[dict]] = {modality: [] for modality in IMAGE_FOLDERS}
        self.storage: dict[str, int] = {}

    def add(self, item) -> None:
        """Keep one item (`PatientRow`, `StudyRow` or `StorageSizes`).

        Raises
        ------
        TypeError
            For anything else.
        """
        if isinstance(item, PatientRow):
            self.patients.append(item.row)
        elif isinstance(item, StudyRow):
            self.studies[item.modality].append(item.row)
        elif isinstance(item, StorageSizes):
            self.storage = dict(item.sizes)
        else:
            raise TypeError(f"cannot collect {item!r}")


def clinical_inputs(index: WarehouseIndex, report: RunReport) -> Iterator[PatientFile]:
    """Report the links in the warehouse (never read) and count its implausible times, then
    choose each patient's clinical file from the listed names (`patient_files`)."""
    report_links(report, index.links, "warehouse")
    if index.implausible_times:  # their rows are kept, with no date
        report.count(IMPLAUSIBLE_TIMES, index.implausible_times)
    logger.info(
        "listed %d objects: %d patients with clinical files, %d studies",
        index.objects,
        len(index.clinical_files),
        len(index.studies),
    )
    yield from patient_files(index, report)


def storage_sizes(index: WarehouseIndex) -> StorageSizes:
    """The bytes stored under each storage prefix (`storage_by_prefix`), from the index."""
    return StorageSizes(storage_by_prefix(index.stored_bytes()))
