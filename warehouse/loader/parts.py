"""The storage side of sharded runs (`warehouse.loader.shards` has the rules): the clinical phase's
hand-off files, reading each part's report, and the end of the run once every part has written
its report (a part's own report is made from its state: `warehouse.loader.state.end_part`).

Keys, under ``reports/warehouseloader/``::

    runs/<run id>/clinical.json                  the clinical phase's report and hand-off
    runs/<run id>/pending.parquet                the run's pending images (for the shards)
    runs/<run id>/warehouse.json                 each filed patient's first clinical key
    runs/<run id>/shard-0003-of-0016.json        each shard's report
    <UTC timestamp>.json (and .html)             the run's report: what changed since the memo
    latest.json (and .html)                      the combined whole report: the next run's memo

Requests: the clinical phase writes its report and the two hand-off files; each shard reads
them (3 GETs) and the catalogue it was handed (no listing of the bucket), writes its report
(1 PUT) and lists the run's folder (1 LIST); the part that ends the run reads every part (N + 1
GETs) and the previous ``latest.json``, writes the run's report, ``latest.json``, their pages,
the feedback files that changed and the folder state, and deletes the run lease.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.run import combined_catalogue
from warehouse.core.config import CLINICAL_PHASE, ConfigError, Settings
from warehouse.core.errors import ObjectNotFound
from warehouse.core.keys import RawKey, parse_raw_key, top_folder
from warehouse.core.lease import release_run_lease
from warehouse.core.report import RunReport, combine_reports, combined_report_key, write_report
from warehouse.listing.folders import InvalidFolderState, parse_state, save_state
from warehouse.loader.feedback import publish_feedback
from warehouse.loader.memo import load_previous_report
from warehouse.loader.shards import Handoff, RunPart, expected_part_keys, part_key, run_folder
from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)


class ClinicalPhaseMissing(ConfigError):
    """An image shard found no usable report of its run's clinical phase (exit code 2)."""


def load_handoff(storage: Storage, settings: Settings, graph: str) -> Handoff | None:
    """The hand-off of the run's clinical phase, for an image shard (None for anything else).

    Raises
    ------
    ClinicalPhaseMissing
        When the clinical phase of ``settings.run_id`` wrote no report, or one without a
        hand-off (it did not complete).
    """
    if settings.shard is None:
        return None
    if settings.run_id is None:  # (settings_from_env refuses a shard without its run's id)
        raise ValueError("the settings of a shard name no run")
    key = part_key(graph, settings.run_id, RunPart(CLINICAL_PHASE))
    where = f"{storage.url}/{key}"
    label = f"shard {settings.shard[0]}/{settings.shard[1]} of run {settings.run_id}"
    try:
        report = json.loads(storage.read(key))
    except ObjectNotFound:
        raise ClinicalPhaseMissing(
            f"{label}: its clinical phase wrote no report ({where}): run WAREHOUSE_PHASE=clinical "
            f"with WAREHOUSE_RUN_ID={settings.run_id} first"
        ) from None
    except ValueError as exc:
        raise ClinicalPhaseMissing(f"{label}: {where} is not JSON ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("handoff"), dict):
        fatal = report.get("fatal") if isinstance(report, dict) else None
        raise ClinicalPhaseMissing(
            f"{label}: its clinical phase did not complete ({fatal or 'no hand-off'}); run it "
            "again, then the shards"
        )
    try:
        handoff = Handoff.from_dict(report["handoff"])
        if handoff.warehouse is not None:
            keys = json.loads(storage.read(handoff.warehouse))
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"{handoff.warehouse} is not a list of keys")
            handoff.clinical_keys = keys
    except ObjectNotFound as exc:
        raise ClinicalPhaseMissing(f"{label}: {exc}") from None
    except ValueError as exc:
        raise ClinicalPhaseMissing(f"{label}: {where}: {exc}") from None
    return handoff


def pending_key(graph: str, run_id: str) -> str:
    """Where a clinical phase writes the run's pending images."""
    return run_folder(graph, run_id) + "pending.parquet"


def snapshot_key(graph: str, run_id: str) -> str:
    """Where a clinical phase writes what the warehouse holds of patients."""
    return run_folder(graph, run_id) + "warehouse.json"


def write_pending(storage: Storage, key: str, images: list[tuple[RawKey, int]]) -> None:
    """Write a run's pending images (raw key, size, modification time, content id) as
    Parquet."""
    table = pa.table(
        {
            "raw_key": pa.array([raw.key for raw, _ in images], type=pa.string()),
            "size": pa.array([size for _, size in images], type=pa.int64()),
            "modified": pa.array([raw.modified for raw, _ in images], type=pa.string()),
            "content_id": pa.array([raw.content_id for raw, _ in images], type=pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write(key, buffer.getvalue(), "application/vnd.apache.parquet")


def load_pending(storage: Storage, handoff: Handoff) -> list[tuple[RawKey, int]]:
    """The pending images a clinical phase handed over, in key order.

    Raises
    ------
    ClinicalPhaseMissing
        When they cannot be read.
    """
    if handoff.pending is None:
        return []
    try:
        table = pq.read_table(io.BytesIO(storage.read(handoff.pending)))
        keys = table.column("raw_key").to_pylist()
        sizes = table.column("size").to_pylist()
        times = table.column("modified").to_pylist()
        if "content_id" in table.column_names:
            contents = table.column("content_id").to_pylist()
        else:  # (written by an older version)
            contents = [""] * len(keys)
    except (ObjectNotFound, pa.ArrowException, OSError, KeyError) as exc:
        raise ClinicalPhaseMissing(f"the run's pending images cannot be read: {exc}") from None
    images = []
    for key, size, modified, content in zip(keys, sizes, times, contents, strict=True):
        raw = parse_raw_key(key, top_folder(key))
        images.append((replace(raw, modified=modified, content_id=content or ""), int(size)))
    return sorted(images, key=lambda item: item[0].key)


@dataclass
class RunEnd:
    """What ending a sharded run did: its combined report (None when it was not ended yet) and
    summary lines."""

    report: dict | None
    lines: str = ""
    key: str | None = None


def read_parts(storage: Storage, graph: str, run_id: str, count: int) -> dict[str, dict | None]:
    """Every part report of a run of ``count`` shards, by key (None for a part that wrote none
    or whose report cannot be read)."""
    listed = {info.key for info in storage.list(run_folder(graph, run_id))}
    expected = expected_part_keys(graph, run_id, count)

    def read(key: str) -> dict | None:
        if key not in listed:
            return None
        try:
            data = json.loads(storage.read(key))
        except ObjectNotFound:
            return None
        except ValueError as exc:
            logger.warning("%s/%s cannot be read (%s)", storage.url, key, exc)
            return None
        return data if isinstance(data, dict) else None

    with ThreadPoolExecutor(min(8, len(expected)), thread_name_prefix="parts") as pool:
        return dict(zip(expected, pool.map(read, expected), strict=True))


def finish_run(
    storage: Storage,
    graph: str,
    run_id: str,
    count: int,
    *,
    force: bool,
    release_lease: bool = True,
) -> RunEnd:
    """End a sharded run: combine its parts' reports into the run's report (and its page),
    make it ``latest.json`` and publish the feedback files when every part listed its inputs,
    and delete the run's lease.

    Without ``force`` nothing is done unless every part has written its report (so of the
    shards that end at once, at least the last to list the run's folder ends the run; one
    that finds ``latest.json`` already this run's leaves it). With ``force`` (the process that
    started the shards, or an operator, once they have all stopped) the parts found are
    combined and the missing ones named; ``latest.json`` then stays the last complete run's.
    The run's timestamped report holds what changed since ``latest.json`` as it was
    (`report.write_report`).

    Parameters
    ----------
    storage : Storage
        The warehouse.
    graph, run_id : str
        The graph and the run.
    count : int
        The run's number of shards.
    force : bool
        End the run even if some parts wrote no report.
    release_lease : bool
        Delete the run's lease (the process that took it releases it itself otherwise).

    Raises
    ------
    StorageError
        When the store cannot be read or written.
    """
    if not force:
        listed = {info.key for info in storage.list(run_folder(graph, run_id))}
        if not all(key in listed for key in expected_part_keys(graph, run_id, count)):
            return RunEnd(None)
    last = load_previous_report(storage, graph)
    if not force:
        if last is not None and last.get("run_id") == run_id:
            # another shard that ended at the same time ended the run: its report stands (a
            # second one would compare the feedback with the run's own and count none)
            if release_lease:
                release_run_lease(storage, run_id)
            return RunEnd(last, "\n  run report: written by another shard of the run")
    parts = read_parts(storage, graph, run_id, count)
    combined = combine_reports(parts, run_id, graph)
    combined["catalogue"] = combined_catalogue([parts[key] for key in sorted(parts)])
    if combined["completed"] and combined["listed"]:
        _save_run_folder_state(storage, parts, run_id)
    if combined["listed"]:
        view = RunReport(graph, run_id)
        view.problems = combined["problems"]
        view.flagged = combined.get("flagged", [])
        view.started = dt.datetime.fromisoformat(combined["started"])
        written = publish_feedback(storage, view, last)
        combined["feedback"] = dict(sorted((view.feedback or {}).items()))
        if written:
            combined["counts"]["feedback files written"] = written
            combined["counts"] = dict(sorted(combined["counts"].items()))
    key = combined_report_key(graph, combined["started"])
    lines = write_report(storage, combined, key, as_memo=combined["listed"], previous=last).replace(
        "\n  report", f"\n  run report ({combined['shards']} shards)", 1
    )
    if release_lease:
        release_run_lease(storage, run_id)
    return RunEnd(combined, lines, key)


def _save_run_folder_state(storage: Storage, parts: dict[str, dict | None], run_id: str) -> None:
    """Write the folder state a completed sharded run leaves: its clinical phase's, with the
    raw images its shards found settled."""
    document = next(
        (p["folder_state"] for p in parts.values() if p and p.get("folder_state")), None
    )
    if document is None:
        return
    try:
        state = parse_state(json.dumps(document).encode("utf-8"))
    except InvalidFolderState as exc:
        logger.error("the clinical phase's folder state cannot be used: %s", exc)
        return
    for report in parts.values():
        for key, size, when in (report or {}).get("settled") or ():
            state.settled[key] = (size, when)
    save_state(storage, state, run_id, dt.datetime.now(dt.UTC))


def report_of(combined: dict) -> RunReport:
    """A `RunReport` holding a combined report's outcomes (for its summary and exit code)."""
    report = RunReport(combined["graph"], combined["run_id"])
    report.counts.update(combined.get("counts", {}))
    report.reasons.update(combined.get("not_filed", {}))
    report.fatal = combined.get("fatal")
    report.stopped = combined.get("stopped")
    report.listed = bool(combined.get("listed"))
    return report
