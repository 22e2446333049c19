"""A run's report, in one place: what a run did (counts by outcome and reason, every input not
filed, the summary text), its key and the time stamp of keys, its schema as the next run reads
it (the memo), how a sharded run's parts are combined, and how a report is published (its JSON,
``latest.json`` and their pages).

A run's whole list of inputs not filed is written once, in ``reports/<graph>/latest.json`` (the
memo the next run reads); the run's own timestamped report holds what changed since the report
that ``latest.json`` was before it (`changes_report`), so the bytes a run writes do not grow
with what earlier runs left unfiled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jsonschema

from warehouse import __version__
from warehouse.core.errors import ExpectedError, ObjectNotFound
from warehouse.core.reasons import FAILURES, Reason
from warehouse.core.report_page import page_key, run_report_page, unfiled_by_prefix
from warehouse.core.text import bounded, escape_controls, quote

if TYPE_CHECKING:
    from warehouse.storage.base import Storage


def _bounded_facts(facts: dict) -> dict:
    """A report line's facts with every text value `bounded` (the memo compares them with
    values that are bounded themselves, so nothing is lost)."""
    return {
        name: bounded(value) if isinstance(value, str) else value for name, value in facts.items()
    }


logger = logging.getLogger(__name__)

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
        #: Remarks about inputs that did not stop them (`note`): key and text.
        self.notes: list[dict] = []
        #: Inputs filed with a problem their site should hear of (`flag`): key, reason, detail.
        self.flagged: list[dict] = []
        self.fatal: str | None = None
        #: The signal that stopped the run (``SIGTERM``, ``SIGINT``), or None: a stopped run
        #: did not start every input, so its report is never the next run's memo.
        self.stopped: str | None = None
        #: Whether ``fatal`` is a problem of the settings or ``config.json`` (exit code 2).
        self.config_problem = False
        #: Whether the run listed its inputs: only such a report may become the memo the next
        #: run reads (``latest.json``); one that stopped before cannot describe the inputs.
        self.listed = False
        #: The loader's image catalogue this run: the parts it wrote and whether they list
        #: everything it filed (`warehouse.catalogue.run`).
        self.catalogue: dict | None = None
        #: The previous run's whole report (``latest.json``) as this run read it (the memo),
        #: or None: what this run's timestamped report counts its changes from.
        self.previous: dict | None = None
        #: Each raw prefix's newest timestamped feedback file (`loader.feedback`), kept in the
        #: memo so that the next one can name it; None when the run published no feedback.
        self.feedback: dict[str, str] | None = None
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
        problem: dict[str, object] = {"key": key, "reason": reason.value, "detail": bounded(detail)}
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

    def note(self, key: str, text: str) -> None:
        """Record a remark about one input that did not stop it (what pydicom said while it
        read an image's header, elements left out of its metadata): in the report against
        the input's key, once, instead of a warning in the run's log. The text is `bounded`;
        the note is logged at INFO by the report's logger (shown in JSON logs only)."""
        with self._lock:
            self.notes.append({"key": key, "note": bounded(text)})
        _logger.info("%s: %s", key, text, extra={"event": "note", "key": key})

    def flag(self, key: str, reason: Reason, detail: str) -> None:
        """Record an input that was filed but has a problem its site should hear of (an image
        whose header carries identifying data, under the "report" policy): in the report's
        ``flagged`` list and in the site's feedback, not among the inputs not filed. The
        detail is `bounded`."""
        with self._lock:
            self.flagged.append({"key": key, "reason": reason.value, "detail": bounded(detail)})
        _logger.info("%s: %s (filed)", key, reason.value, extra={"event": "flagged", "key": key})

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
        return self.fatal is None and self.failures == 0 and self.stopped is None

    @property
    def describes_all_inputs(self) -> bool:
        """Whether the report tells what became of every input (it listed them and was not
        stopped before it started them all): only such a report is the next run's memo."""
        return self.listed and self.stopped is None

    def summary(self) -> str:
        """Plain-text summary: counts by outcome, then inputs not filed by reason; what a line
        quotes (an outcome, a reason, why the run stopped) is escaped, so each is one line."""
        lines = [f"{self.graph} run summary"]
        if self.stopped:
            lines.append(
                f"  run stopped ({self.stopped}): inputs not reached are left for the next run"
            )
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
        """The whole JSON run report (what ``latest.json`` holds): counts, reasons, every
        input not filed by key, the notes about inputs (`note`), the inputs filed with a flag
        (`flag`), and the catalogue and feedback records when the run has them."""
        by_key = sorted(self.problems, key=lambda p: (p["key"], p["reason"]))
        return (
            {
                "graph": self.graph,
                "version": __version__,
                "run_id": self.run_id,
                "started": self.started.isoformat(),
                "finished": dt.datetime.now(dt.UTC).isoformat(),
                "completed": self.completed,
                "fatal": self.fatal,
                "stopped": self.stopped,
                "counts": dict(sorted(self.counts.items())),
                "counts_by_prefix": {
                    prefix: dict(sorted(counts.items()))
                    for prefix, counts in sorted(self.counts_by_prefix.items())
                },
                "not_filed": dict(sorted(self.reasons.items())),
                "problems": by_key,
            }
            | ({"notes": _sorted_notes(self.notes)} if self.notes else {})
            | ({"flagged": _sorted_flags(self.flagged)} if self.flagged else {})
            | (
                ({"catalogue": self.catalogue} if self.catalogue is not None else {})
                | (
                    {"feedback": dict(sorted(self.feedback.items()))}
                    if self.feedback is not None
                    else {}
                )
            )
        )

    def key(self) -> str:
        """Where the report goes in the warehouse: ``reports/<graph>/<UTC timestamp>.json``."""
        return report_key(self.graph, self.started)

    def latest_key(self) -> str:
        """Where a copy of the newest report goes: ``reports/<graph>/latest.json``."""
        return latest_report_key(self.graph)

    def to_json(self) -> bytes:
        """The report as indented UTF-8 JSON."""
        return json.dumps(self.as_dict(), indent=2).encode("utf-8")


def _sorted_notes(notes: Iterable[Mapping]) -> list:
    return sorted(notes, key=lambda n: (n["key"], n["note"]))


def _sorted_flags(flags: Iterable[Mapping]) -> list:
    return sorted(flags, key=lambda f: (f["key"], f["reason"]))


def utc_stamp(when: dt.datetime) -> str:
    """The time part of a key the product names by time (run reports, catalogue parts and
    indexes, feedback files): ``2026-11-25T09-30-00.123456Z``, UTC (a naive time is taken as UTC),
    ``-`` for ``:`` so that it is a valid file name everywhere; keys of this form sort by time.
    """
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.strftime("%Y-%m-%dT%H-%M-%S.%fZ")


def report_time(value: object) -> dt.datetime | None:
    """Read a time a run report holds: ISO 8601, UTC when it names no zone; None if not one."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def report_key(graph: str, started: dt.datetime) -> str:
    """Where a run's report goes: ``reports/<graph>/<UTC timestamp>.json`` (the run's start;
    a sharded run's combined report too)."""
    return f"reports/{graph}/{utc_stamp(started)}.json"


def latest_report_key(graph: str) -> str:
    """Key of the copy of a graph's newest run report."""
    return f"reports/{graph}/latest.json"


class InvalidRunReport(ValueError):
    """The previous run report exists but cannot be read or does not match `REPORT_SCHEMA`."""

    reason = Reason.INVALID_REPORT


_TEXT_OR_NONE = {"type": ["string", "null"]}
#: What a run reads of the previous run report (the memo and the catalogue record): anything
#: else in it is not read, so it is not checked.
REPORT_SCHEMA = {
    "type": "object",
    "required": ["problems"],
    "properties": {
        "run_id": {"type": "string"},
        "key": {"type": "string"},
        "feedback": {"type": "object", "additionalProperties": {"type": "string"}},
        "problems": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "reason"],
                "properties": {
                    "key": {"type": "string"},
                    "reason": {"type": "string"},
                    "detail": {"type": "string"},
                    "size": {"type": "integer", "minimum": 0},
                    "modified": {"type": "string"},
                    "facts": {"type": "object"},
                },
            },
        },
        "catalogue": {
            "type": ["object", "null"],
            "properties": {
                "cutoff": _TEXT_OR_NONE,
                "listed_until": _TEXT_OR_NONE,
                "complete": {"type": "boolean"},
                "parts": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}
_REPORT_VALIDATOR = jsonschema.Draft202012Validator(REPORT_SCHEMA)


def check_previous_report(data: bytes) -> dict:
    """The previous run report, decoded and checked against `REPORT_SCHEMA`.

    Raises
    ------
    InvalidRunReport
        Saying where it is wrong.
    """
    try:
        report: dict = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidRunReport(f"not JSON: {exc}") from None
    error = jsonschema.exceptions.best_match(_REPORT_VALIDATOR.iter_errors(report))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise InvalidRunReport(f"at {where}: {error.message}"[:300])
    for name in ("cutoff", "listed_until"):
        text = (report.get("catalogue") or {}).get(name)
        try:
            time = None if text is None else dt.datetime.fromisoformat(text)
        except ValueError:
            time = None
        if text is not None and (time is None or time.tzinfo is None):
            raise InvalidRunReport(f"at catalogue/{name}: {quote(text)} is not a time with a zone")
    return report


#: ``form`` of a timestamped report (run report or feedback file) that holds what changed since
#: the one before it instead of the whole list of inputs not filed.
CHANGES_FORM = "changes"


def _canonical(entries: Iterable[Mapping]) -> str:
    return json.dumps(list(entries), sort_keys=True, ensure_ascii=False)


def _by_key(problems: Iterable[Mapping]) -> dict[str, list[Mapping]]:
    """Problems grouped by key, each key's in one order (by reason, then content)."""
    grouped: dict[str, list[Mapping]] = {}
    for problem in problems:
        grouped.setdefault(str(problem.get("key", "")), []).append(problem)
    for entries in grouped.values():
        entries.sort(key=lambda p: (str(p.get("reason", "")), _canonical([p])))
    return dict(sorted(grouped.items()))


def problem_changes(
    before: Iterable[Mapping] | None, now: Iterable[Mapping], *, complete: bool = True
) -> dict[str, Any]:
    """What changed in a list of inputs not filed (problems, by key) from ``before`` to ``now``.

    A key is **new** when ``before`` has no entry for it, **changed** when its entries differ
    in anything (reason, detail, size, time, facts), and **resolved** when only ``before`` has
    it. ``now`` is ``before`` without the entries of the resolved and changed keys, plus the
    new and changed entries.

    Parameters
    ----------
    before : iterable of mapping, or None
        The earlier list (None: there is none, every entry is new).
    now : iterable of mapping
        The list now.
    complete : bool
        Whether ``now`` describes every input (a run that listed them all): otherwise a key
        missing from it may still be a problem, and ``resolved`` is None (not known).

    Returns
    -------
    dict
        ``new`` and ``changed`` (the entries of ``now``, by key), ``resolved`` (keys, or None),
        ``unchanged`` (the number of entries of ``now`` that are in ``before`` as they are)
        and ``total`` (the number of entries of ``now``).
    """
    old = _by_key(before or ())
    current = _by_key(now)
    new: list[Mapping] = []
    changed: list[Mapping] = []
    unchanged = 0
    for key, entries in current.items():
        if key not in old:
            new.extend(entries)
        elif _canonical(entries) != _canonical(old[key]):
            changed.extend(entries)
        else:
            unchanged += len(entries)
    resolved = sorted(set(old) - set(current)) if complete else None
    return {
        "new": new,
        "changed": changed,
        "resolved": resolved,
        "unchanged": unchanged,
        "total": sum(len(entries) for entries in current.values()),
    }


def previous_report_key(previous: Mapping | None, graph: str) -> str | None:
    """The timestamped key of the run whose whole report ``previous`` (a memo) is: its ``key``,
    or, in a memo written before memos named it, the key its ``started`` time gives
    (`report_key`); None when there is no memo or neither tells."""
    if previous is None:
        return None
    key = previous.get("key")
    if isinstance(key, str):
        return key
    started = previous.get("started")
    try:
        when = dt.datetime.fromisoformat(started) if isinstance(started, str) else None
    except ValueError:
        when = None
    return None if when is None or when.tzinfo is None else report_key(graph, when)


def changes_report(data: Mapping, previous: Mapping | None, *, complete: bool) -> dict:
    """The timestamped form of a run report: ``data`` (a whole report: `RunReport.as_dict`
    or `combine_reports`, with its ``key``) without its list of inputs not filed, and with what
    changed in that list since ``previous``, the memo the run read.

    The totals stay (``counts``, ``counts_by_prefix``, ``not_filed``, and
    ``not_filed_by_prefix``: prefix -> reason -> inputs); added are ``form`` (`CHANGES_FORM`),
    ``memo`` (the key of ``latest.json``, the newest whole list), ``previous`` and
    ``previous_run_id`` (the timestamped report and the run the changes are counted from) and
    ``changes`` (`problem_changes`). A report whose ``previous`` is null is a **base**: its
    ``changes.new`` is its whole list. It is one when there is no memo, when the memo cannot
    name its report, and when the memo is this run's own (a run ended again).

    Parameters
    ----------
    data : mapping
        The whole report.
    previous : mapping, or None
        The previous whole report (``latest.json`` as the run read it).
    complete : bool
        Whether the run listed all its inputs (its report may be the memo): otherwise
        ``changes.resolved`` is null (what the run did not meet may still be a problem).

    Returns
    -------
    dict
        The report to write at its timestamped key.
    """
    graph = str(data["graph"])
    previous_key = previous_report_key(previous, graph)
    if previous is None or previous_key is None or previous.get("run_id") == data.get("run_id"):
        previous, previous_key = None, None
    problems = data.get("problems") or []
    document = {name: value for name, value in data.items() if name not in ("problems", "feedback")}
    return document | {
        "form": CHANGES_FORM,
        "memo": latest_report_key(graph),
        "previous": previous_key,
        "previous_run_id": previous.get("run_id") if previous is not None else None,
        "not_filed_by_prefix": unfiled_by_prefix(problems),
        "changes": problem_changes(
            previous.get("problems") if previous is not None else None,
            problems,
            complete=complete,
        ),
    }


def read_memo(storage: Storage, graph: str) -> dict | None:
    """``reports/<graph>/latest.json`` checked (`check_previous_report`), for a graph that has
    not read it: None when it is missing, unusable or cannot be read (the run's timestamped
    report is then a base)."""
    key = latest_report_key(graph)
    try:
        return check_previous_report(storage.read(key))
    except ObjectNotFound:
        return None
    except (InvalidRunReport, ExpectedError) as exc:
        logger.warning("%s cannot be read (%s): the run report lists every input", key, exc)
        return None


def _write_page(storage: Storage, data: dict, key: str) -> tuple[bool, str]:
    """Write the page of the report ``data`` written at ``key``: whether it was written, and
    the summary line that says where it is or why not."""
    page = page_key(key)
    try:
        html = run_report_page(data, warehouse=storage.url, json_key=key)
        storage.write(page, html.encode("utf-8"), "text/html; charset=utf-8")
    except ExpectedError as exc:
        logger.error("could not write the run report page %s: %s", page, exc)
        return False, f"\n  report page not written: {exc}"
    except Exception:  # noqa: BLE001 - a bug in the page never costs the run or its report
        logger.exception("could not build the run report page %s", page)
        return False, "\n  report page not written: see the log above"
    return True, f"\n  report page: {storage.url}/{page}"


def write_report(
    storage: Storage, data: dict, key: str, *, as_memo: bool, previous: Mapping | None
) -> str:
    """Write a run report: at ``key`` what changed since ``previous`` (`changes_report`), and,
    when it may be the next run's memo (``as_memo``), the whole report at ``latest.json``;
    then the page of each beside it (`report_page.page_key`).

    A page that cannot be written is logged and named in the summary; it does not change the
    run's outcome (the JSON reports, which the next run reads, are written first).

    Parameters
    ----------
    storage : Storage
        The warehouse.
    data : dict
        The whole report (`RunReport.as_dict`, `combine_reports`).
    key : str
        Its timestamped key.
    as_memo : bool
        Whether the run listed all its inputs (so its report replaces ``latest.json``).
    previous : mapping, or None
        The memo the run read (``latest.json`` before it), or None.

    Returns
    -------
    str
        The summary lines that say where the report and its page are.

    Raises
    ------
    ExpectedError
        When a JSON report cannot be written.
    """
    whole = {**data, "key": key}
    changes = changes_report(whole, previous, complete=as_memo)
    storage.write(key, json.dumps(changes, indent=2).encode("utf-8"))
    memo_key = latest_report_key(data["graph"])
    if as_memo:
        storage.write(memo_key, json.dumps(whole, indent=2).encode("utf-8"))
    lines = f"\n  report: {storage.url}/{key}" + _write_page(storage, changes, key)[1]
    if as_memo:
        # (named in the summary only when it fails: the run's page links it)
        written, line = _write_page(storage, whole, memo_key)
        if not written:
            lines += line.replace("report page", "full list page", 1)
    return lines


def publish_report(storage: Storage, report: RunReport, dry_run: bool) -> str:
    """Write a one-process run's report (`write_report`; the whole report is printed instead
    in a dry run).

    ``latest.json``, the whole report, which the next loader run reads as its memo of unfiled
    inputs, is replaced only by a run that listed its inputs and was not stopped by a signal
    (`RunReport.describes_all_inputs`): a run stopped by ``config.json``, by a listing that
    failed or by SIGTERM writes its own report (saying why) but never makes the next run read
    every known-bad input again. The changes are counted from the memo the run read
    (``report.previous``; a graph that reads none has ``latest.json`` read here).

    Returns
    -------
    str
        The summary lines that say where the report and its page are (empty when the report
        is not written).
    """
    if dry_run:
        print(json.dumps(report.as_dict(), indent=2))
        return ""
    previous = report.previous if report.previous is not None else read_memo(storage, report.graph)
    try:
        return write_report(
            storage,
            report.as_dict(),
            report.key(),
            as_memo=report.describes_all_inputs,
            previous=previous,
        )
    except ExpectedError as exc:
        logger.error("could not write the run report: %s", exc)
        report.fail(f"run report not written: {exc}")
        return ""


def combine_reports(parts: dict[str, dict | None], run_id: str, graph: str) -> dict:
    """The report of a whole sharded run from its parts' reports.

    Counts (by raw prefix too) and reasons are summed and problems joined: each input is
    counted by the one part that handled it (the clinical phase the listing and the clinical
    files, each shard its own images), so each image is counted once. The run completed when
    every part did; a part without a report (a shard killed, or not run yet) makes it
    incomplete, by name.

    Parameters
    ----------
    parts : dict
        Part report key -> its report (`RunReport.as_dict` plus ``phase`` and ``shard``), or
        None when that part wrote none.
    run_id, graph : str
        The run's id and graph.

    Returns
    -------
    dict
        A run report (the shape of `RunReport.as_dict`) with ``shards`` (N), ``parts`` (each
        part's key, phase, shard, ``completed`` and ``fatal``), ``listed`` (every part
        listed its inputs, so the report describes them all and may be the next run's memo)
        and ``stopped`` (the signal that stopped a part, or None).
    """
    counts: dict[str, int] = {}
    by_prefix: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    problems: list[dict] = []
    notes: list[dict] = []
    flagged: list[dict] = []
    summaries, fatal = [], []
    started, finished, listed = [], [], True
    shards = 0
    for key in sorted(parts):
        report = parts[key]
        if report is None:
            fatal.append(f"{key.rsplit('/', 1)[-1]} was not written (the part did not finish)")
            summaries.append({"key": key, "completed": False, "fatal": "no report"})
            listed = False
            continue
        shard = report.get("shard")
        if shard:
            shards = max(shards, int(shard[1]))
        for name, n in report.get("counts", {}).items():
            counts[name] = counts.get(name, 0) + n
        for prefix, its_counts in report.get("counts_by_prefix", {}).items():
            mine = by_prefix.setdefault(prefix, {})
            for name, n in its_counts.items():
                mine[name] = mine.get(name, 0) + n
        for name, n in report.get("not_filed", {}).items():
            reasons[name] = reasons.get(name, 0) + n
        problems.extend(report.get("problems", []))
        notes.extend(report.get("notes", []))
        flagged.extend(report.get("flagged", []))
        started.append(report["started"])
        finished.append(report["finished"])
        listed = listed and bool(report.get("listed", True))
        if report.get("fatal"):
            fatal.append(f"{_label(report)}: {report['fatal']}")
        summaries.append(
            {
                "key": key,
                "phase": report.get("phase"),
                "shard": shard,
                "completed": bool(report.get("completed")),
                "fatal": report.get("fatal"),
            }
        )
    completed = all(s["completed"] for s in summaries) and bool(summaries)
    stopped = next((p["stopped"] for p in parts.values() if p and p.get("stopped")), None)
    now = dt.datetime.now(dt.UTC).isoformat()
    return (
        {
            "graph": graph,
            "version": next((p["version"] for p in parts.values() if p), None),
            "run_id": run_id,
            "started": min(started) if started else now,
            "finished": max(finished) if finished else now,
            "completed": completed,
            "fatal": "; ".join(fatal) or None,
            "stopped": stopped,
            "counts": dict(sorted(counts.items())),
            "counts_by_prefix": {
                prefix: dict(sorted(its_counts.items()))
                for prefix, its_counts in sorted(by_prefix.items())
            },
            "not_filed": dict(sorted(reasons.items())),
            "problems": sorted(problems, key=lambda p: (p["key"], p["reason"])),
            "shards": shards,
            "parts": summaries,
            "listed": listed,
        }
        | ({"notes": _sorted_notes(notes)} if notes else {})
        | ({"flagged": _sorted_flags(flagged)} if flagged else {})
    )


def _label(report: dict) -> str:
    shard = report.get("shard")
    return f"shard {shard[0]}/{shard[1]}" if shard else "clinical phase"


def combined_report_key(graph: str, started: str) -> str:
    """Where a sharded run's combined report goes: ``reports/<graph>/<UTC timestamp>.json``
    (the run's start, the same form as a one-process run's report)."""
    return report_key(graph, dt.datetime.fromisoformat(started))
