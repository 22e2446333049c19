"""What a run did: counts by outcome and reason, every input that was not filed, the summary
text and the JSON run report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import reprlib
import threading
import uuid
from collections import Counter
from enum import StrEnum

from warehouse import __version__
from warehouse.core.text import escape_controls


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
    #: A catalogue part that is not Parquet of catalogue rows (left out)...
    INVALID_PART = "invalid catalogue part"
    #: ... a run report (``latest.json``, the memo) that cannot be read or used...
    INVALID_REPORT = "invalid run report"
    #: ... and a filed image whose header cannot be read for the catalogue's backfill.
    NOT_CATALOGUED = "image left out of the catalogue"
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
    #: A symbolic link in a local store: never followed, so neither read nor trusted as filed.
    SYMLINK = "symbolic link"
    READ_FAILED = "read failed"
    WRITE_FAILED = "write failed"
    INTERNAL_ERROR = "internal error"


#: The most characters a report line's detail (or a text fact) keeps: upload values can be
#: megabytes long, and every report, page and feedback file repeats the detail.
MAX_DETAIL_CHARS = 1_000
#: The most characters of one upload value quoted in a detail (`quote`).
MAX_QUOTED_CHARS = 120
_ELLIPSIS = "\u2026"

_quoting = reprlib.Repr()
_quoting.maxstring = MAX_QUOTED_CHARS
_quoting.maxother = MAX_QUOTED_CHARS // 2
_quoting.maxlevel = 2


def quote(value: object) -> str:
    """``repr(value)`` cut to about `MAX_QUOTED_CHARS` characters, for quoting an upload value
    (a pseudonym, a centre, a header value) in a message without copying all of it."""
    return _quoting.repr(value)


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def _bounded_facts(facts: dict) -> dict:
    """A report line's facts with every text value `bounded` (the memo compares them with
    values that are bounded themselves, so nothing is lost)."""
    return {
        name: bounded(value) if isinstance(value, str) else value for name, value in facts.items()
    }


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


#: The logger of each unfiled input (shown in JSON logs, where an operator queries them).
REPORT_LOGGER = "warehouse.report"
_logger = logging.getLogger(REPORT_LOGGER)


class RunReport:
    """Thread-safe record of a run's outcomes."""

    def __init__(self, graph: str, run_id: str | None = None):
        self.graph = graph
        self.started = dt.datetime.now(dt.UTC)
        #: This run's identifier (shared by the processes of a sharded run).
        self.run_id = run_id or f"{self.started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        self.counts: Counter[str] = Counter()
        #: Raw prefix -> the counts of that prefix's inputs (what was filed, by site).
        self.counts_by_prefix: dict[str, Counter[str]] = {}
        self.reasons: Counter[str] = Counter()
        self.problems: list[dict] = []
        self.fatal: str | None = None
        #: Whether ``fatal`` is a problem of the settings or ``config.json`` (exit code 2).
        self.config_problem = False
        #: Whether the run listed its inputs: only such a report may become the memo the next
        #: run reads (``latest.json``); one that stopped before cannot describe the inputs.
        self.listed = False
        #: The loader's image catalogue this run: where its cutoff for a stopped run's images
        #: was, the parts it wrote and whether they list everything (`warehouse.catalogue.run`).
        self.catalogue: dict | None = None
        self._lock = threading.Lock()

    def count(self, outcome: str, n: int = 1, *, prefix: str | None = None) -> None:
        """Count ``n`` inputs with ``outcome`` (e.g. ``images copied``, ``already filed``),
        and under their raw ``prefix`` too when it is given (the report's ``counts_by_prefix``:
        what each site's uploads came to)."""
        with self._lock:
            self.counts[outcome] += n
            if prefix is not None:
                self.counts_by_prefix.setdefault(prefix, Counter())[outcome] += n

    def skip(
        self,
        key: str,
        reason: Reason,
        detail: str = "",
        *,
        stamp: tuple[int, str] | None = None,
        facts: dict | None = None,
    ) -> None:
        """Record an input that is not filed, with its reason.

        ``stamp`` (size, modification time from the listing) and ``facts`` (what the reason
        depends on) let the next run recognise the same input unchanged without reading it.
        The detail and text facts are `bounded`: a report stays small whatever an upload holds.
        """
        problem = {"key": key, "reason": reason.value, "detail": bounded(detail)}
        if stamp is not None:
            problem["size"], problem["modified"] = stamp
        if facts:
            problem["facts"] = _bounded_facts(facts)
        with self._lock:
            self.reasons[reason.value] += 1
            self.problems.append(problem)
        _logger.info(
            "%s: %s", key, reason.value, extra={"event": "not_filed", "key": key, "reason": reason}
        )

    def skip_again(self, problem: dict) -> None:
        """Record again an input the last run reported, unchanged and not read again."""
        with self._lock:
            self.reasons[problem["reason"]] += 1
            self.problems.append(dict(problem))
            self.counts["unfiled inputs not read again (unchanged)"] += 1
        _logger.info(
            "%s: %s (unchanged, not read again)",
            problem["key"],
            problem["reason"],
            extra={"event": "not_filed", "key": problem["key"], "reason": problem["reason"]},
        )

    def fail(self, message: str) -> None:
        """Record that the run could not complete (config, listing, ...)."""
        with self._lock:
            if self.fatal is None:
                self.fatal = message

    @property
    def failures(self) -> int:
        """Number of reads or writes that failed."""
        return sum(self.reasons[r.value] for r in FAILURES)

    @property
    def completed(self) -> bool:
        """Whether the run did all its work (per-file data problems do not count)."""
        return self.fatal is None and self.failures == 0

    def summary(self) -> str:
        """Plain-text summary: counts by outcome, then inputs not filed by reason; what a line
        quotes (an outcome, a reason, why the run stopped) is escaped, so each is one line."""
        lines = [f"{self.graph} run summary"]
        if self.fatal:
            lines.append(f"  run could not complete: {escape_controls(self.fatal)}")
        for outcome, n in sorted(self.counts.items()):
            lines.append(f"  {escape_controls(outcome)}: {n}")
        skipped = sum(self.reasons.values())
        lines.append(f"  not filed: {skipped}")
        for reason, n in sorted(self.reasons.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"    {escape_controls(reason)}: {n}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The JSON run report: counts, reasons, and every input not filed by key."""
        by_key = sorted(self.problems, key=lambda p: (p["key"], p["reason"]))
        return {
            "graph": self.graph,
            "version": __version__,
            "run_id": self.run_id,
            "started": self.started.isoformat(),
            "finished": dt.datetime.now(dt.UTC).isoformat(),
            "completed": self.completed,
            "fatal": self.fatal,
            "counts": dict(sorted(self.counts.items())),
            "counts_by_prefix": {
                prefix: dict(sorted(counts.items()))
                for prefix, counts in sorted(self.counts_by_prefix.items())
            },
            "not_filed": dict(sorted(self.reasons.items())),
            "problems": by_key,
        } | ({"catalogue": self.catalogue} if self.catalogue is not None else {})

    def key(self) -> str:
        """Where the report goes in the warehouse: ``reports/<graph>/<UTC timestamp>.json``."""
        return report_key(self.graph, self.started)

    def latest_key(self) -> str:
        """Where a copy of the newest report goes: ``reports/<graph>/latest.json``."""
        return latest_report_key(self.graph)

    def to_json(self) -> bytes:
        """The report as indented UTF-8 JSON."""
        return json.dumps(self.as_dict(), indent=2).encode("utf-8")


def utc_stamp(when: dt.datetime) -> str:
    """The time part of a key the product names by time (run reports, catalogue parts, feedback
    files, the backfill): ``2026-11-25T09-30-00.123456Z``, UTC (a naive time is taken as UTC),
    ``-`` for ``:`` so that it is a valid file name everywhere; keys of this form sort by time.
    """
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H-%M-%S.%fZ")


def report_key(graph: str, started: dt.datetime) -> str:
    """Where a run's report goes: ``reports/<graph>/<UTC timestamp>.json`` (the run's start;
    a sharded run's combined report too)."""
    return f"reports/{graph}/{utc_stamp(started)}.json"


def latest_report_key(graph: str) -> str:
    """Key of the copy of a graph's newest run report."""
    return f"reports/{graph}/latest.json"
