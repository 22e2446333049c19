"""The state of a warehouse, for an operator: ``warehouse status`` (``python -m warehouse.status``).

    WAREHOUSE_BUCKET=file://demo/bucket python -m warehouse.status
    warehouse status --bucket s3://my-warehouse --json

Reads, and never writes: each graph's newest run report (``reports/<graph>/<UTC
timestamp>.json``, and ``latest.json``, the last run that listed every input), the run lease
(``locks/warehouseloader.json``), the processed store's ``latest.csv`` (the newest batch), and
prints the last run of each graph with its outcome and time, the lease holder or ``free``, the
latest batch and its age, and what was not filed, by raw prefix and reason. Everything shown
that a report, the lease or an upload can hold is escaped (`warehouse.core.text`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Mapping

from warehouse import __version__
from warehouse.catalogue.batches import LATEST_KEY, InvalidLatest, batch_folder, latest_paths
from warehouse.core.config import ConfigError, settings_from_env
from warehouse.core.errors import ExpectedError, ObjectNotFound, StoreUnavailable
from warehouse.core.lease import LEASE_KEY, LeaseError, LeaseRecord
from warehouse.core.report import latest_report_key, report_time
from warehouse.core.report_page import unfiled_by_prefix
from warehouse.core.run import EXIT_CONFIG, EXIT_INCOMPLETE, EXIT_OK
from warehouse.core.text import bounded, escape_controls
from warehouse.storage.base import Storage
from warehouse.storage.url import storage_from_url

PROG = "warehouse status"
#: The graphs that write run reports (``submittingcentres`` prints, and writes none).
REPORTING_GRAPHS = ("warehouseloader", "dataprocess")
#: The most characters of a report's, the lease's or latest.csv's text shown.
SHOWN_CHARS = 300
#: The most raw prefixes (and reasons of each) printed; ``--json`` has them all.
SHOWN_PREFIXES = 50


def _stamp(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def outcome(report: Mapping) -> tuple[str, str]:
    """Return a run's outcome and what its exit code meant, from its report.

    The outcome is ``completed`` (0), ``stopped`` (by SIGTERM 143 or SIGINT 130: the next run
    does the rest), ``failed`` (a fatal problem: exit 1 or 2, the report says which) or
    ``incomplete`` (1: rerun to finish).
    """
    stopped = report.get("stopped")
    if stopped:
        code = {"SIGTERM": 143, "SIGINT": 130}.get(str(stopped))
        exit_text = f"exit {code}" if code else "stopped by a signal"
        return "stopped", f"{exit_text}: stopped by {stopped}; the next run does the rest"
    fatal = report.get("fatal")
    if fatal:
        return "failed", f"exit 1 or 2: {fatal}"
    if report.get("completed") is True:
        return "completed", "exit 0"
    return "incomplete", "exit 1: rerun to finish"


def _read_json(storage: Storage, key: str) -> tuple[dict | None, str | None]:
    """Read the JSON object at ``key``: it and None, or None and why not (both None: absent)."""
    try:
        data = storage.read(key)
    except ObjectNotFound:
        return None, None
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{key} is not JSON: {exc}"
    if not isinstance(document, dict):
        return None, f"{key} is not a JSON object"
    return document, None


def newest_report_key(storage: Storage, graph: str) -> str | None:
    """Return the key of a graph's newest timestamped run report (keys sort by time), or None."""
    prefix = f"reports/{graph}/"
    newest = None
    for info in storage.list(prefix):
        name = info.key[len(prefix) :]
        if "/" not in name and name.endswith(".json") and name[:1].isdigit():
            newest = info.key if newest is None or info.key > newest else newest
    return newest


def last_run(storage: Storage, graph: str) -> dict:
    """Describe the last run of ``graph``.

    Its report's key, run id, outcome, meaning, times and counts (``outcome`` is ``none`` when
    it never ran, ``unreadable`` when its report cannot be read), and the run whose whole
    report is ``latest.json``; for the loader, what each raw prefix came to.
    """
    key = newest_report_key(storage, graph)
    memo, memo_problem = _read_json(storage, latest_report_key(graph))
    run: dict = {"graph": graph, "report": key, "latest_run_id": None}
    if memo is not None:
        run["latest_run_id"] = memo.get("run_id")
    report, problem = (memo, memo_problem) if key is None else _read_json(storage, key)
    if report is None:
        run |= {"outcome": "unreadable" if problem else "none", "meaning": problem}
        return run
    state, meaning = outcome(report)
    started, finished = report_time(report.get("started")), report_time(report.get("finished"))
    counts = report.get("counts")
    run |= {
        "run_id": report.get("run_id"),
        "outcome": state,
        "meaning": meaning,
        "started": _stamp(started),
        "finished": _stamp(finished),
        "counts": counts if isinstance(counts, dict) else {},
    }
    if graph == "warehouseloader":
        run["by_prefix"] = problems_by_prefix(report, memo)
    return run


def problems_by_prefix(report: Mapping, memo: Mapping | None) -> dict[str, dict]:
    """Count a loader report's inputs by raw prefix.

    Raw prefix -> ``{"counts": what its inputs came to, "not_filed": reason -> inputs}``, from
    the report's ``counts_by_prefix`` and ``not_filed_by_prefix`` (or the problems of the
    report or the memo counted, when the report does not have it).
    """
    not_filed = report.get("not_filed_by_prefix")
    if not isinstance(not_filed, dict):
        source = report if "problems" in report else memo or {}
        problems = source.get("problems")
        not_filed = unfiled_by_prefix(problems if isinstance(problems, list) else [])
    counts = report.get("counts_by_prefix")
    counts = counts if isinstance(counts, dict) else {}
    return {
        str(prefix): {
            "counts": counts.get(prefix) if isinstance(counts.get(prefix), dict) else {},
            "not_filed": not_filed.get(prefix) if isinstance(not_filed.get(prefix), dict) else {},
        }
        for prefix in sorted({*counts, *not_filed}, key=str)
    }


def lease_state(storage: Storage, now: dt.datetime) -> dict:
    """Describe the run lease.

    ``{"state": "free"}``, or its holder, run, graph and times and whether it is ``held`` or
    ``expired`` (the next run takes it over), or ``unreadable`` and why.
    """
    try:
        data = storage.read(LEASE_KEY)
    except ObjectNotFound:
        return {"state": "free"}
    try:
        record = LeaseRecord.from_json(data, LEASE_KEY)
    except LeaseError as exc:
        return {"state": "unreadable", "problem": str(exc)}
    return {
        "state": "held" if record.live(now) else "expired",
        "holder": record.holder,
        "run_id": record.run_id,
        "graph": record.graph or "warehouseloader",
        "acquired": _stamp(record.acquired),
        "expires": _stamp(record.expires),
    }


def batch_state(storage: Storage, now: dt.datetime) -> dict:
    """Describe the newest batch of ``<bucket>-processed``.

    Its folder, its time and age in seconds (from the folder's UTC name), or ``none`` when
    there is none yet (``no store`` when the processed store does not exist).
    """
    processed = storage.processed()
    try:
        paths = latest_paths(processed)
    except StoreUnavailable as exc:
        return {"state": "no store", "problem": str(exc), "store": processed.url}
    except InvalidLatest as exc:
        return {"state": "unreadable", "problem": str(exc), "store": processed.url}
    if paths is None:
        return {"state": "none", "store": processed.url}
    folder = batch_folder(paths)
    try:
        made = dt.datetime.strptime(folder or "", "%Y-%m-%dT%H-%M-%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        made = None
    return {
        "state": "present",
        "store": processed.url,
        "latest": LATEST_KEY,
        "folder": folder,
        "made": _stamp(made),
        "age_seconds": None if made is None else int((now - made).total_seconds()),
    }


def warehouse_status(storage: Storage, now: dt.datetime | None = None) -> dict:
    """Return everything ``warehouse status`` says about ``storage`` (the ``--json`` document).

    Raises
    ------
    StorageError
        When a read fails.
    """
    now = now or dt.datetime.now(dt.UTC)
    return {
        "bucket": storage.url,
        "now": _stamp(now),
        "runs": {graph: last_run(storage, graph) for graph in REPORTING_GRAPHS},
        "lease": lease_state(storage, now),
        "batch": batch_state(storage, now),
    }


def age_text(seconds: int | None) -> str:
    """Say an age in words: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 days 4 h``."""
    if seconds is None:
        return "unknown age"
    if seconds < 0:
        return "in the future (check the clocks)"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 60:
        return f"{seconds} s"
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} day{'s' if days > 1 else ''} {hours % 24} h"


def _shown(value: object) -> str:
    """Show a value from the warehouse as one escaped, bounded line."""
    return escape_controls(bounded(str(value), SHOWN_CHARS), backslashes=True)


def status_lines(status: Mapping) -> list[str]:
    """Return the lines ``warehouse status`` prints for a `warehouse_status` document.

    Every value from the warehouse is escaped and bounded.
    """
    lines = [f"warehouse {_shown(status['bucket'])} at {status['now']}"]
    for graph, run in status["runs"].items():
        if run["outcome"] == "none":
            lines.append(f"  {graph}: no run yet")
            continue
        if run["outcome"] == "unreadable":
            lines.append(f"  {graph}: last report unreadable: {_shown(run['meaning'])}")
            continue
        lines.append(
            f"  {graph}: {run['outcome']} ({_shown(run['meaning'])}), "
            f"started {run['started']}, finished {run['finished']}, run {_shown(run['run_id'])}"
        )
        if run["report"]:
            lines.append(f"    report: {_shown(run['report'])}")
    lines.append(_lease_line(status["lease"]))
    lines.append(_batch_line(status["batch"]))
    loader = status["runs"].get("warehouseloader", {})
    lines += _prefix_lines(loader.get("by_prefix") or {})
    return lines


def _lease_line(lease: Mapping) -> str:
    if lease["state"] == "free":
        return "  lease: free"
    if lease["state"] == "unreadable":
        return f"  lease: unreadable: {_shown(lease['problem'])}"
    return (
        f"  lease: {lease['state']} by {_shown(lease['holder'])} ({_shown(lease['graph'])} run "
        f"{_shown(lease['run_id'])}) since {lease['acquired']}, expires {lease['expires']}"
        + (" (the next run takes it over)" if lease["state"] == "expired" else "")
    )


def _batch_line(batch: Mapping) -> str:
    store = _shown(batch["store"])
    if batch["state"] == "none":
        return f"  latest batch: none in {store} (run dataprocess)"
    if batch["state"] == "no store":
        return f"  latest batch: none: {_shown(batch['problem'])}"
    if batch["state"] == "unreadable":
        return f"  latest batch: unreadable: {_shown(batch['problem'])}"
    return (
        f"  latest batch: {_shown(batch['folder'])} in {store}, made {batch['made']} "
        f"({age_text(batch['age_seconds'])} ago)"
    )


def _prefix_lines(by_prefix: Mapping[str, Mapping]) -> list[str]:
    if not by_prefix:
        return ["  problems by site: none reported"]
    lines = ["  problems by site (the last loader run; raw prefix: not filed by reason):"]
    for prefix in list(by_prefix)[:SHOWN_PREFIXES]:
        entry = by_prefix[prefix]
        not_filed = entry.get("not_filed") or {}
        total = sum(n for n in not_filed.values() if isinstance(n, int))
        copied = (entry.get("counts") or {}).get("images copied", 0)
        lines.append(f"    {_shown(prefix)}: {total:,} not filed, {copied:,} images copied")
        for reason, count in list(not_filed.items())[:SHOWN_PREFIXES]:
            lines.append(f"      {_shown(reason)}: {_shown(count)}")
    if len(by_prefix) > SHOWN_PREFIXES:
        lines.append(f"    ... {len(by_prefix) - SHOWN_PREFIXES:,} more prefixes (see --json)")
    return lines


def command_parser() -> argparse.ArgumentParser:
    """Build the command line (``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Say the state of the WAREHOUSE_BUCKET warehouse: the last run of each "
        "graph and its outcome, the run lease, the latest batch and its age, and what was not "
        "filed, by raw prefix. Reads only.",
        epilog="exit codes: 0 said; 1 a read failed; 2 bad settings or no such store",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--json", action="store_true", help="one JSON document, for machines")
    return parser


def main(argv=None) -> int:
    """Command line entry point (``warehouse status``, ``python -m warehouse.status``)."""
    args = command_parser().parse_args(argv)
    try:
        settings = settings_from_env(os.environ)
        storage = storage_from_url(settings.bucket, workers=settings.workers)
        storage.check_store()
    except (ConfigError, ExpectedError) as exc:
        print(f"{PROG}: {escape_controls(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        status = warehouse_status(storage)
    except ExpectedError as exc:
        print(f"{PROG}: a read failed: {escape_controls(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(status_lines(status)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
