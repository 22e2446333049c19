"""Why an input was not filed: the one list of reasons (their values are the report's wording),
and how an exception names its own reason."""

from __future__ import annotations

from enum import StrEnum

from warehouse.core.text import bounded


class Reason(StrEnum):
    """Why an input was not filed (or why a write failed). The value is the report's wording."""

    NOT_DICOM = "not a DICOM file"
    NO_FILE_META = "no DICOM file meta"
    NOT_AN_IMAGE = "not an image"
    MISSING_PIXEL_DATA = "image without pixel data"
    TRUNCATED_HEADER = "truncated DICOM header"
    TRUNCATED_PIXEL_DATA = "truncated pixel data"
    UNREADABLE_HEADER = "unreadable DICOM header"
    HEADER_TOO_LARGE = "DICOM header too large"
    HEADER_TOO_COMPLEX = "DICOM header too complex"
    MISSING_IDENTIFIER = "missing DICOM identifier"
    UNSUPPORTED_MODALITY = "unsupported modality"
    UNSAFE_IDENTIFIER = "unsafe identifier"
    NO_PATIENT_DATA = "no patient data for PatientID"
    INVALID_JSON = "invalid JSON"
    CLINICAL_TOO_LARGE = "clinical file too large"
    PSEUDONYM_MISMATCH = "pseudonym differs from the file name"
    PSEUDONYM_CLAIMED = "pseudonym claimed by another centre"
    CENTRE_NOT_ALLOWED = "centre not allowed for this prefix"
    CASE_VARIANT = "pseudonym differs only in case"
    IMPLAUSIBLE_DATE = "implausible upload date"
    RAW_CHANGED = "raw file changed after filing"
    NO_SUBMITTING_CENTRE = "no SubmittingCentre"
    SITE_NOT_IN_CONFIG = "site not in config"
    GROUP_CONFLICT = "group conflict"
    DUPLICATE_TARGET = "another raw file has the same target"
    #: The SOP instance is filed already under another key, with the same size...
    DUPLICATE_IMAGE = "duplicate image"
    #: ... or with another size (both keys in the detail).
    CONFLICTING_DUPLICATE = "conflicting duplicate"
    #: The header breaks the identifying-data profile (`warehouse.dicom.screen`) and its
    #: site's policy is "refuse" (under "report" the image is filed, and `RunReport.flag`
    #: records it with this wording).
    IDENTIFYING_DATA = "identifying data in the header"
    #: The leakage checks (`warehouse.loader.decisions.owner_conflict`): a study, series, SOP
    #: instance or raw file content filed already (or earlier in the run) under another
    #: patient. A study has one patient, so the hold-out would leak through it.
    STUDY_OF_ANOTHER_PATIENT = "study filed under another patient"
    SERIES_OF_ANOTHER_PATIENT = "series filed under another patient"
    INSTANCE_OF_ANOTHER_PATIENT = "instance filed under another patient"
    CONTENT_OF_ANOTHER_PATIENT = "identical file filed under another patient"
    #: A catalogue part that is not Parquet of catalogue rows (left out)...
    INVALID_PART = "invalid catalogue part"
    #: ... a run report (``latest.json``, the memo) that cannot be read or used...
    INVALID_REPORT = "invalid run report"
    #: ... and a catalogued image whose metadata file is no longer in the warehouse (deleted
    #: since it was filed: dataprocess leaves its study out; a reconcile leaves its rows out).
    NOT_IN_WAREHOUSE = "catalogued file not in the warehouse"
    #: dataprocess: a clinical record's fields outside the clinical data dictionary, left out
    #: of the tables (the record's other fields are in them).
    FIELDS_LEFT_OUT = "fields outside the clinical data dictionary"
    NOT_IN_LAYOUT = "not in the raw layout"
    #: A raw key whose name cannot be taken as an input (`keys.raw_name_problem`), or a
    #: folder nested too deeply to be listed.
    UNSAFE_NAME = "unsafe name"
    #: A raw object last modified before 1990 or in the future (`keys.modification_time_problem`).
    IMPLAUSIBLE_TIME = "implausible modification time"
    UNCONFIGURED_PREFIX = "raw prefix not in config"
    WAREHOUSE_CONFLICT = "patient in both groups in the warehouse"
    #: A study, series or file content filed under two patients by runs that could not see
    #: each other (the shards of one run): found afterwards, reported until an operator acts.
    FILED_UNDER_TWO_PATIENTS = "filed under two patients in the warehouse"
    #: A symbolic link in a local store: never followed, so neither read nor trusted as filed.
    SYMLINK = "symbolic link"
    READ_FAILED = "read failed"
    WRITE_FAILED = "write failed"
    INTERNAL_ERROR = "internal error"


#: Reasons that mean the run could not do its work (a rerun should finish it).
FAILURES = frozenset({Reason.READ_FAILED, Reason.WRITE_FAILED})


def problem_of(exc: BaseException) -> tuple[Reason, str]:
    """The report line of an exception: its reason and a detail.

    An exception names its own reason (a ``reason`` attribute on its class, as the header,
    identifier and clinical-file problems have) and its message is the detail. Anything else
    is a bug met on one input: "internal error", with the exception's type and message, so the
    input is reported and the run goes on.
    """
    reason = getattr(exc, "reason", None)
    if isinstance(reason, Reason):
        return reason, str(exc)
    message = str(exc).strip()
    return Reason.INTERNAL_ERROR, bounded(f"{type(exc).__name__}: {message}")
