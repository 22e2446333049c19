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

import hashlib
from dataclasses import dataclass, field

from warehouse.core.config import CLINICAL_PHASE, IMAGE_PHASE, Settings
from warehouse.core.keys import image_stem
from warehouse.listing.warehouse import WarehouseIndex


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


def part_of(settings: Settings) -> RunPart | None:
    """The part of a sharded run the settings name, or None for a whole run."""
    if settings.phase == CLINICAL_PHASE:
        return RunPart(CLINICAL_PHASE)
    if settings.shard is not None:
        return RunPart(IMAGE_PHASE, (settings.shard[0], settings.shard[1]))
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
    pending : str or None
        The key of the run's pending images (every shard takes those it owns), so that no
        shard lists the raw side.
    warehouse : str or None
        The key of what the warehouse holds of patients (each filed patient's first clinical
        file, both groups' of a patient in both), so that no shard lists the warehouse.
    catalogue_pointer : dict or None
        The catalogue index the clinical phase read (`catalogue.index.read_pointer`).
    catalogue_parts : list
        The catalogue parts newer than that index and those the clinical phase wrote (the
        filed images it found in no part), which the shards read by key.
    unconfigured : list
        ``[raw prefix, pseudonym, centre, clinical key]`` of the clinical files refused as
        "site not in config" (this run's, and the memo's that still hold): that prefix's
        images of the patient are refused for the same reason.
    clinical_keys : list
        What ``warehouse`` holds, once read (`warehouse.loader.parts.load_handoff`).
    """

    groups: dict[str, str] = field(default_factory=dict)
    new_patients: list[str] = field(default_factory=list)
    refused_claims: list[list[str]] = field(default_factory=list)
    bound_centres: dict[str, str] = field(default_factory=dict)
    filed_centres: dict[str, str | None] = field(default_factory=dict)
    pending: str | None = None
    warehouse: str | None = None
    catalogue_pointer: dict | None = None
    catalogue_parts: list[str] = field(default_factory=list)
    unconfigured: list[list[str]] = field(default_factory=list)
    clinical_keys: list[str] = field(default_factory=list, compare=False)

    def as_dict(self) -> dict:
        """The hand-off as JSON-ready data (sorted, so equal hand-offs give equal bytes)."""
        return {
            "groups": dict(sorted(self.groups.items())),
            "new_patients": sorted(set(self.new_patients)),
            "refused_claims": sorted([list(pair) for pair in self.refused_claims]),
            "unconfigured": sorted([list(entry) for entry in self.unconfigured]),
            "bound_centres": dict(sorted(self.bound_centres.items())),
            "filed_centres": dict(sorted(self.filed_centres.items())),
            "pending": self.pending,
            "warehouse": self.warehouse,
            "catalogue_pointer": self.catalogue_pointer,
            "catalogue_parts": sorted(self.catalogue_parts),
        }

    def warehouse_index(self) -> WarehouseIndex:
        """What the warehouse holds of patients, as the clinical phase listed it."""
        index = WarehouseIndex()
        for key in self.clinical_keys:
            index.add(key)
        return index

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
                unconfigured=[
                    [str(a), str(b), str(c), str(d)] for a, b, c, d in data.get("unconfigured", ())
                ],
                bound_centres={str(k): str(v) for k, v in data["bound_centres"].items()},
                filed_centres={
                    str(k): None if v is None else str(v) for k, v in data["filed_centres"].items()
                },
                pending=_text_or_none(data.get("pending")),
                warehouse=_text_or_none(data.get("warehouse")),
                catalogue_pointer=data.get("catalogue_pointer"),
                catalogue_parts=[str(k) for k in data.get("catalogue_parts") or ()],
            )
            if handoff.catalogue_pointer is not None and not isinstance(
                handoff.catalogue_pointer, dict
            ):
                raise TypeError("catalogue_pointer is not an object")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a clinical phase hand-off ({exc!r})") from None
        return handoff


def _text_or_none(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{value!r} is not a key")
    return value
