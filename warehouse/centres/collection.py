"""The ``submittingcentres`` graph's per-file rules: reading a patient's raw clinical files for
their ``SubmittingCentre`` and collecting the distinct values.

The worker reads (:func:`read_centres`); the collection (:func:`collect_centres`) runs in the
node's own thread, in input order, and reports the files that have no usable centre.
"""

from __future__ import annotations

import logging
import sys
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass, field

from warehouse.core.clinical import (
    InvalidClinicalFile,
    MissingSubmittingCentre,
    parse_clinical_record,
    submitting_centre,
)
from warehouse.core.config import PipelineConfig
from warehouse.core.errors import ExpectedError, StorageError
from warehouse.core.reasons import problem_of
from warehouse.core.run import RunState, loaded
from warehouse.core.text import escape_controls
from warehouse.listing.raw import list_raw, report_links, report_refused
from warehouse.storage.base import Storage

logger = logging.getLogger("submittingcentres")

#: One patient's raw clinical files (every upload, every configured prefix).
PatientFiles = namedtuple("PatientFiles", "pseudonym keys")
#: What a worker found in one file: the centre, or the reason there is none.
FileCentre = namedtuple("FileCentre", "key centre reason detail")


@dataclass
class CentresState(RunState):
    """What one submittingcentres run shares between its nodes (one instance, a bonobo
    service): the settings, the report, ``config.json`` and the centres found so far."""

    config: PipelineConfig | None = None
    centres: set[str] = field(default_factory=set)

    def conclude(self, storage: Storage) -> str:
        """The centres on standard output (only when the run completed: a partial list
        would be taken for the whole), and the summary with each unusable file."""
        report = self.report
        if report.completed:
            for line in centre_lines(self.centres):
                print(line, file=sys.stdout)
            sys.stdout.flush()
            report.count("submitting centres", len(self.centres))
        summary = report.summary()
        for problem in sorted(report.problems, key=lambda p: p["key"]):
            summary += f"\n  {problem['reason']}: {escape_controls(problem['key'])}"
        return summary

    def publishes_report(self) -> bool:
        """Nothing is written: the report is the summary."""
        return False

    @property
    def summary_stream(self):
        """Standard error: standard output carries the centres only."""
        return sys.stderr


def centre_lines(centres: set[str]) -> list[str]:
    """The lines standard output lists the centres in: one per centre, sorted, each with its
    control characters escaped (``\\n``, ESC as ``\\x1b``, `text.escape_controls`) and each
    backslash doubled, so a centre's name can neither break the list nor steer the terminal,
    and two names never print the same."""
    return sorted(escape_controls(centre, backslashes=True) for centre in centres)


def patients_to_read(storage: Storage, state: CentresState) -> Iterator[PatientFiles]:
    """List the configured raw prefixes once (links, unsafe names and implausible times are
    reported, never read) and yield each patient's clinical files together, by pseudonym.

    Raises
    ------
    ExpectedError
        When the listing fails (the run is marked failed).
    """
    config = loaded(state.config, "config.json")
    try:
        listing = list_raw(storage, config.raw_prefixes, state.settings.workers)
    except ExpectedError as exc:
        state.report.fail(str(exc))
        raise
    report_links(state.report, listing.links, "raw side")
    report_refused(listing, state.report)
    by_patient: dict[str, list[str]] = {}
    for raw, _size in listing.clinical:
        by_patient.setdefault(raw.pseudonym, []).append(raw.key)
    logger.info(
        "listed %d clinical files of %d patients under %d raw prefixes",
        len(listing.clinical),
        len(by_patient),
        len(config.raw_prefixes),
    )
    for pseudonym in sorted(by_patient):
        yield PatientFiles(pseudonym, tuple(by_patient[pseudonym]))


def read_centres(storage: Storage, patient: PatientFiles) -> list[FileCentre]:
    """Worker: read each of a patient's files once and take its ``SubmittingCentre``."""
    found = []
    for key in patient.keys:
        try:
            centre = submitting_centre(parse_clinical_record(storage.read(key)))
            found.append(FileCentre(key, centre, None, ""))
        except (InvalidClinicalFile, MissingSubmittingCentre, StorageError) as exc:
            # one file's problem, with its own reason: the patient's other files still count
            found.append(FileCentre(key, None, *problem_of(exc)))
    return found


def collect_centres(state: CentresState, found: list[FileCentre]) -> list[str]:
    """Keep the centres (returning those not seen before); report files without one."""
    new = []
    for item in found:
        if item.reason is not None:
            state.report.skip(item.key, item.reason, item.detail)
            if item.detail and item.detail != item.reason.value:
                logger.warning("%s: %s (%s)", item.key, item.reason.value, item.detail)
            else:
                logger.warning("%s: %s", item.key, item.reason.value)
            continue
        state.report.count("clinical files read")
        if item.centre not in state.centres:
            state.centres.add(item.centre)
            new.append(item.centre)
    return new
