"""Sharded runs: the rules that split one loader run into a clinical phase and N image shards.

A sharded run (one run id, ``WAREHOUSE_RUN_ID``) is:

1. **the clinical phase** (``WAREHOUSE_PHASE=clinical``), one process: it lists the warehouse
   and the raw side, reports what the listing shows, reads every new clinical file once,
   assigns the groups and copies the files; it files no image. Its part report carries the
   hand-off (`Handoff`) the shards need besides the warehouse itself;
2. **N image shards** (``WAREHOUSE_SHARD=i/N``), afterwards, in any order or all at once: each
   lists again (the groups are now in the warehouse), reads the hand-off, and files the images
   whose `shard_of` is ``i``, and nothing else;
3. **the end of the run**: once every part has written its report, the parts are combined
   (`combine_reports`) into the run's one report and ``latest.json``.

Why a clinical phase, and not shards that each derive the groups: the groups depend on every
new clinical file (earliest upload first), so a shard deriving them would read all of them:
N times the clinical GETs (968 clinical files at N = 16: 15,488 GETs instead of 968), and the
copies would still need one shard to make them. The clinical phase reads them once; each shard
pays one listing, one GET of the hand-off and a few requests for its report instead.

This module is pure (no storage, no bonobo): `warehouse.loader.parts` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from warehouse.catalogue.run import combined_catalogue
from warehouse.core.config import CLINICAL_PHASE, IMAGE_PHASE
from warehouse.core.keys import image_stem
from warehouse.core.report import report_key


def shard_of(name: str, count: int) -> int:
    """The shard (``0 <= shard < count``) that files the raw image named ``name``.

    The only shard rule. It hashes the file name's stem (the name without ``.dcm``, in any
    case), the part of the raw key that names the image's warehouse targets
    (``.../<name>`` and ``.../<stem>.json``): every raw image that could claim the same target
    (the same file uploaded again on another date, under another prefix, or with ``.DCM``)
    falls in the same shard, which decides between them in key order exactly as one process
    does. Hashing the whole raw key would send two uploads of one file to two shards that
    would both write its target. SHA-256, not Python's ``hash``: stable across processes,
    machines and Python versions.

    Parameters
    ----------
    name : str
        The raw image's file name (the last part of its key).
    count : int
        The number of shards, at least 1.

    Returns
    -------
    int
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    digest = hashlib.sha256(image_stem(name).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class RunPart:
    """One process's part of a sharded run.

    Attributes
    ----------
    phase : str
        `CLINICAL_PHASE` or `IMAGE_PHASE`.
    shard : tuple of int, or None
        ``(i, N)`` for an image shard.
    finishes : bool
        Whether this part ends the run when it finds every part's report written (an AWS Batch
        child does; a shard of ``WAREHOUSE_PROCESSES`` leaves it to the process that started it).
    """

    phase: str
    shard: tuple[int, int] | None = None
    finishes: bool = True

    def owns(self, name: str) -> bool:
        """Whether this part files the raw image named ``name`` (the clinical phase files none)."""
        return self.shard is not None and shard_of(name, self.shard[1]) == self.shard[0]

    @property
    def label(self) -> str:
        """``clinical phase`` or ``shard 3/16``, for messages."""
        if self.shard is None:
            return "clinical phase"
        return f"shard {self.shard[0]}/{self.shard[1]}"


def part_of(settings) -> RunPart | None:
    """The part of a sharded run the settings name, or None for a whole run."""
    if settings.phase == CLINICAL_PHASE:
        return RunPart(CLINICAL_PHASE)
    if settings.shard is not None:
        return RunPart(IMAGE_PHASE, tuple(settings.shard))
    return None


def run_folder(graph: str, run_id: str) -> str:
    """Where the parts of a sharded run write their reports: ``reports/<graph>/runs/<id>/``."""
    return f"reports/{graph}/runs/{run_id}/"


def part_key(graph: str, run_id: str, part: RunPart) -> str:
    """The key of a part's report: ``.../clinical.json`` or ``.../shard-0003-of-0016.json``."""
    if part.shard is None:
        return run_folder(graph, run_id) + "clinical.json"
    index, count = part.shard
    return run_folder(graph, run_id) + f"shard-{index:04d}-of-{count:04d}.json"


def expected_part_keys(graph: str, run_id: str, count: int) -> list[str]:
    """The keys of every part of a run of ``count`` shards: the clinical phase's, then each
    shard's."""
    parts = [RunPart(CLINICAL_PHASE)]
    parts += [RunPart(IMAGE_PHASE, (i, count)) for i in range(count)]
    return [part_key(graph, run_id, part) for part in parts]


@dataclass
class Handoff:
    """What the clinical phase tells the shards besides what it wrote into the warehouse.

    Attributes
    ----------
    groups : dict
        The group of each patient of the clinical files it read (also those whose copy failed,
        whose images one process would still file).
    new_patients : list
        Pseudonyms of the clinical files it read (the memo's "no patient data" holds for a
        patient only while no new clinical file names it).
    refused_claims : list
        ``[raw prefix, pseudonym]`` pairs whose records it refused as claimed by another
        centre: their images are refused too.
    bound_centres : dict
        The centre each patient's first accepted record in this run named (NFC).
    filed_centres : dict
        The centre each already-filed patient is bound to, as read by the clinical phase
        (None when it could not be read), so shards do not read them again.
    """

    groups: dict[str, str] = field(default_factory=dict)
    new_patients: list[str] = field(default_factory=list)
    refused_claims: list[list[str]] = field(default_factory=list)
    bound_centres: dict[str, str] = field(default_factory=dict)
    filed_centres: dict[str, str | None] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The hand-off as JSON-ready data (sorted, so equal hand-offs give equal bytes)."""
        return {
            "groups": dict(sorted(self.groups.items())),
            "new_patients": sorted(set(self.new_patients)),
            "refused_claims": sorted([list(pair) for pair in self.refused_claims]),
            "bound_centres": dict(sorted(self.bound_centres.items())),
            "filed_centres": dict(sorted(self.filed_centres.items())),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Handoff:
        """Read a hand-off back from `as_dict` data.

        Raises
        ------
        ValueError
            When ``data`` is not a hand-off.
        """
        try:
            handoff = cls(
                groups={str(k): str(v) for k, v in data["groups"].items()},
                new_patients=[str(p) for p in data["new_patients"]],
                refused_claims=[[str(a), str(b)] for a, b in data["refused_claims"]],
                bound_centres={str(k): str(v) for k, v in data["bound_centres"].items()},
                filed_centres={
                    str(k): None if v is None else str(v) for k, v in data["filed_centres"].items()
                },
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a clinical phase hand-off ({exc!r})") from None
        return handoff


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
        part's key, phase, shard, ``completed`` and ``fatal``) and ``listed`` (every part
        listed its inputs, so the report describes them all and may be the next run's memo).
    """
    counts: dict[str, int] = {}
    by_prefix: dict[str, dict[str, int]] = {}
    reasons: dict[str, int] = {}
    problems: list[dict] = []
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
    now = dt.datetime.now(dt.UTC).isoformat()
    return {
        "graph": graph,
        "version": next((p["version"] for p in parts.values() if p), None),
        "run_id": run_id,
        "started": min(started) if started else now,
        "finished": max(finished) if finished else now,
        "completed": completed,
        "fatal": "; ".join(fatal) or None,
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
        "catalogue": combined_catalogue([parts[key] for key in sorted(parts)]),
    }


def _label(report: dict) -> str:
    shard = report.get("shard")
    return f"shard {shard[0]}/{shard[1]}" if shard else "clinical phase"


def combined_report_key(graph: str, started: str) -> str:
    """Where a sharded run's combined report goes: ``reports/<graph>/<UTC timestamp>.json``
    (the run's start, the same form as a one-process run's report)."""
    return report_key(graph, dt.datetime.fromisoformat(started))
