"""The hold-out certificate: what a batch's catalogue proves of its training/validation split.

Written into each batch as ``holdout.json``.

The checks run over the whole merged catalogue (one row per filed image) and the patients'
clinical folders as listed (``<group>/data/<pseudonym>/``):

* ``pseudonym_in_both_groups``: a pseudonym with images (the catalogue's ``PatientID``) or
  clinical files in both groups;
* ``<kind>_in_both_groups``: a StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID or file
  content (``content_id``) filed in both groups;
* ``<kind>_under_two_patients``: one of them filed under two pseudonyms (whatever the groups).

Each check gives its count of violations (distinct values: a study under three patients is
one violation), exact, and lists at most `MAX_LISTED` of them, the smallest values first, each
with at most `MAX_HOLDERS` holders (pseudonym, group, a warehouse key). A null value is
unknown and not compared (``content_id`` of rows catalogued before it was recorded): the
certificate counts those rows.

Memory stays flat whatever the catalogue's size. The catalogue is streamed in record batches;
every value becomes a 64-bit hash in NumPy arrays (never a Python string a row): pairs of
(value hash, patient hash and group bit), spilled to local files split by the hash's top bits,
each part sorted on its own. A hash can only suggest a violation: the candidates are read
again by their real values (a second pass over the catalogue, at most `CONFIRM_AT_ONCE`
candidates a pass) and only those the real values confirm are counted, so a collision never
makes a false violation. Two pseudonyms whose hashes collide would look like one patient
(a violation between them missed): about n^2 / 2^64 for n patients, under 10^-7 at a
million patients. A third pass finds the listed violations' holders. A clean catalogue costs
one pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.catalogue.index import contains
from warehouse.catalogue.merge import (
    CatalogueScan,
    catalogue_batches,
    day_batches,
    merged_batches,
)
from warehouse.core.keys import GROUPS
from warehouse.core.text import bounded
from warehouse.storage.base import Storage

#: The certificate's file in each batch folder.
HOLDOUT_FILE = "holdout.json"
#: Its layout's version (a reader checks it before trusting the fields).
HOLDOUT_FORMAT = 1
#: Violations listed per check (the count is always exact).
MAX_LISTED = 100
#: Holders (pseudonym, group) listed per violation.
MAX_HOLDERS = 10
#: Candidates confirmed by their real values in one pass over the catalogue (their values take
#: a few hundred bytes each while they are checked).
CONFIRM_AT_ONCE = 250_000
#: Rows read at a time.
BATCH_ROWS = 16_384
#: Value pairs a spilled part holds at most, about (16 bytes each): what one sort takes.
PART_PAIRS = 1 << 18
#: A value shown in the certificate keeps at most this many characters (a header's UID is
#: an upload's text).
MAX_VALUE_CHARS = 256

#: The kinds of value compared, and their catalogue column.
KINDS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
    "content": "content_id",
}
#: Kinds whose values repeat from row to row (hashed once per distinct value of a batch).
_REPEATED = ("study", "series")
PATIENT = "pseudonym"
#: The checks, in the certificate's order.
CHECKS = (
    f"{PATIENT}_in_both_groups",
    *(f"{kind}_{what}" for kind in KINDS for what in ("in_both_groups", "under_two_patients")),
)
#: What each check says, in the certificate (so that it reads on its own).
MEANINGS = {
    f"{PATIENT}_in_both_groups": "pseudonyms with images or clinical files in both groups",
    **{
        f"{kind}_in_both_groups": f"{column} values filed in both groups"
        for kind, column in KINDS.items()
    },
    **{
        f"{kind}_under_two_patients": f"{column} values filed under two or more pseudonyms"
        for kind, column in KINDS.items()
    },
}
_COLUMNS = ("PatientID", "group", *KINDS.values())
_VALIDATION = 1  # the group bit (training: 0)
_MASK = {"training": 1, "validation": 2}


# --------------------------------------------------------------------------------------------
# reading the catalogue


def _batches(
    read_catalogue: CatalogueReader, columns: Iterable[str]
) -> Iterator[dict[str, pa.Array]]:
    """Yield the catalogue's ``columns`` (missing ones null), a record batch at a time."""
    for table in read_catalogue(list(columns)):
        yield {name: _one_array(table.column(name)) for name in table.column_names}


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    # (a batch's column is one chunk: combining it would copy it)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _hashes(column: pa.Array, repeated: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each value's 64-bit hash (Python's, stable within the run) and whether it is known."""
    known = column.is_valid().to_numpy(zero_copy_only=False)
    if repeated:
        encoded = pc.dictionary_encode(column)
        distinct = np.fromiter(map(hash, encoded.dictionary.to_pylist()), dtype=np.int64)
        indices = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        values = distinct[indices] if len(distinct) else np.zeros(len(column), np.int64)
    else:
        values = np.fromiter(map(hash, column.to_pylist()), dtype=np.int64, count=len(column))
    return values.view(np.uint64), known


#: A patient's hash keeps 63 bits: shifted left, its group takes the low bit.
_PATIENT_BITS = np.uint64((1 << 63) - 1)


def _kind_hashes(column: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Hash a column of ``kind`` (a pseudonym: 63 bits); also tell which values are known."""
    hashes, known = _hashes(column, kind in (PATIENT, *_REPEATED))
    return (hashes & _PATIENT_BITS if kind == PATIENT else hashes), known


def _value_hash(value: str, kind: str) -> np.uint64:
    """Hash one value of ``kind``, as `_kind_hashes` does."""
    return _kind_hashes(pa.array([value], pa.string()), kind)[0][0]


def _patients(batch: dict[str, pa.Array]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's patient hash shifted left, its group in the low bit; which rows have both."""
    patient, known = _kind_hashes(batch["PatientID"], PATIENT)
    group = batch["group"]
    validation = pc.equal(group, GROUPS[1]).fill_null(False).to_numpy(zero_copy_only=False)
    training = pc.equal(group, GROUPS[0]).fill_null(False).to_numpy(zero_copy_only=False)
    return (patient << np.uint64(1)) | validation.astype(np.uint64), known & (validation | training)


# --------------------------------------------------------------------------------------------
# the first pass: hashed pairs, spilled and sorted


class _Spill:
    """Pairs ``(value hash, patient-and-group)`` of one kind, spilled to local files.

    They are split by the value hash's top bits, so that each file can be sorted on its own.
    """

    def __init__(self, folder: str, kind: str, bits: int):
        self.bits = bits
        self.paths = [os.path.join(folder, f"{kind}-{n:04d}.u64") for n in range(1 << bits)]
        self._files = [open(path, "wb") for path in self.paths]  # noqa: SIM115 - closed below

    def add(self, value: np.ndarray, holder: np.ndarray) -> None:
        if not len(value):
            return
        pairs = np.empty((len(value), 2), dtype=np.uint64)
        pairs[:, 0], pairs[:, 1] = value, holder
        if self.bits == 0:
            self._files[0].write(pairs.tobytes())
            return
        part = value >> np.uint64(64 - self.bits)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange((1 << self.bits) + 1))
        pairs = pairs[order]
        for n, file in enumerate(self._files):
            if bounds[n] < bounds[n + 1]:
                file.write(pairs[bounds[n] : bounds[n + 1]].tobytes())

    def close(self) -> None:
        for file in self._files:
            file.close()

    def parts(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield each file's pairs (value hashes, holders), then remove it."""
        self.close()
        for path in self.paths:
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
            os.remove(path)
            yield pairs[:, 0], pairs[:, 1]


def _new_rows(value: np.ndarray, holder: np.ndarray) -> np.ndarray:
    """Tell the rows that differ from the row before: the others need not be spilled again.

    The catalogue is sorted by warehouse key, so the images of a series follow each other.
    """
    keep = np.ones(len(value), dtype=bool)
    keep[1:] = (value[1:] != value[:-1]) | (holder[1:] != holder[:-1])
    return keep


def suspects(value: np.ndarray, holder: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find the value hashes whose holders differ: by patient, or by group.

    Parameters
    ----------
    value : numpy.ndarray
        Value hashes (uint64), any order, repeats allowed.
    holder : numpy.ndarray
        The holder of each: the patient's hash shifted left, the group bit in bit 0.

    Returns
    -------
    tuple of numpy.ndarray
        The suspect value hashes (sorted, distinct), and for each whether two patients hold
        it and whether both groups do.
    """
    if not len(value):
        empty = np.zeros(0, dtype=np.uint64)
        return empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    # (by value alone: the holders' order within a value changes neither minimum nor maximum)
    order = np.argsort(value)
    value, holder = value[order], holder[order]
    starts = np.flatnonzero(np.concatenate([[True], value[1:] != value[:-1]]))
    patient, group = holder >> np.uint64(1), holder & np.uint64(1)
    two = np.minimum.reduceat(patient, starts) != np.maximum.reduceat(patient, starts)
    both = np.minimum.reduceat(group, starts) != np.maximum.reduceat(group, starts)
    flagged = two | both
    return value[starts][flagged], two[flagged], both[flagged]


@dataclass
class _Counts:
    """What the first pass counted of the catalogue."""

    rows: int = 0
    without_patient: int = 0
    unknown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


def _first_pass(
    read_catalogue: CatalogueReader,
    rows: int,
    clinical: list[tuple[str, str, str]],
    folder: str,
    day: dict[str, pa.Array] | None = None,
) -> tuple[_Counts, dict[str, np.ndarray], dict[str, dict[str, _Value]]]:
    """Hash every row; return the counts and, per kind (and `PATIENT`), the suspect hashes.

    The spills are sized by ``rows``, about how many the catalogue holds. With ``day`` (kind
    -> the values of the rows added since the last certificate, `certify_day`), no kind is
    hashed nor spilled: the rows holding one of those values are gathered by their real
    values instead (the third item: kind -> value -> `_Value`); only the patients are hashed.
    """
    counts = _Counts()
    bits = max(0, int(np.ceil(np.log2(max(1, rows) / PART_PAIRS))))
    spills = {kind: _Spill(folder, kind, bits) for kind in KINDS} if day is None else {}
    seen: dict[str, dict[str, _Value]] = {kind: {} for kind in KINDS}
    patients: list[np.ndarray] = []
    try:
        for batch in _batches(read_catalogue, _COLUMNS):
            holder, known = _patients(batch)
            counts.rows += len(holder)
            counts.without_patient += int(len(holder) - known.sum())
            patients.append(np.unique(holder[known]))
            for kind, column in KINDS.items():
                if day is not None:
                    counts.unknown[kind] += _see_day(seen[kind], batch, column, day[kind], known)
                    continue
                value, valid = _kind_hashes(batch[column], kind)
                counts.unknown[kind] += int((known & ~valid).sum())
                chosen = known & valid
                value, held = value[chosen], holder[chosen]
                keep = _new_rows(value, held)
                spills[kind].add(value[keep], held[keep])
            if sum(len(p) for p in patients) > PART_PAIRS:
                patients = [np.unique(np.concatenate(patients))]
        if clinical:
            validation = [group == GROUPS[1] for _, group, _ in clinical]
            patients.append(
                (_clinical_hashes(clinical) << np.uint64(1)) | np.array(validation, np.uint64)
            )
        suspected = {}
        for kind, spill in spills.items():
            found = [suspects(value, held) for value, held in spill.parts()]
            suspected[kind] = np.concatenate([f[0] for f in found]) if found else _none()
        held = np.unique(np.concatenate(patients)) if patients else _none()
        # (the patient's hash is the value, the group its only holder bit)
        suspected[PATIENT] = suspects(held >> np.uint64(1), held & np.uint64(1))[0]
    finally:
        for spill in spills.values():
            spill.close()
            for path in spill.paths:
                if os.path.exists(path):
                    os.remove(path)
    return counts, suspected, seen


def _see_day(
    seen: dict[str, _Value], batch: dict[str, pa.Array], column: str, wanted: pa.Array, known
) -> int:
    """Gather the rows of ``batch`` whose ``column`` holds one of ``wanted`` (real values).

    Return how many rows with a known holder have no value there (unknown).
    """
    values = batch[column]
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    if len(wanted):
        held = pc.is_in(values, value_set=wanted).fill_null(False)
        rows = np.flatnonzero(held.to_numpy(zero_copy_only=False) & valid & known)
        if len(rows):
            taken = pa.array(rows)
            patients = batch["PatientID"].take(taken).to_pylist()
            groups = batch["group"].take(taken).to_pylist()
            for value, patient, group in zip(
                values.take(taken).to_pylist(), patients, groups, strict=True
            ):
                _see(seen, value, patient, group)
    return int((known & ~valid).sum())


def _clinical_hashes(clinical: list[tuple[str, str, str]]) -> np.ndarray:
    """Hash each clinical file's pseudonym (as `_kind_hashes` hashes a PatientID)."""
    return _kind_hashes(pa.array([entry[0] for entry in clinical], pa.string()), PATIENT)[0]


def _none() -> np.ndarray:
    return np.zeros(0, dtype=np.uint64)


# --------------------------------------------------------------------------------------------
# the second pass: the suspects' real values


@dataclass
class _Value:
    """One real value seen among the suspects.

    Its first patient, whether another patient holds it, and the groups that do (bit 1
    training, bit 2 validation).
    """

    patient: str
    others: bool = False
    groups: int = 0


def _slices(suspected: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Split the suspects into passes of at most `CONFIRM_AT_ONCE`."""
    job: dict[str, np.ndarray] = {}
    room = CONFIRM_AT_ONCE
    for kind, hashes in suspected.items():
        start = 0
        while start < len(hashes):
            taken = hashes[start : start + room]
            job[kind] = taken
            start += len(taken)
            room -= len(taken)
            if room == 0:
                yield job
                job, room = {}, CONFIRM_AT_ONCE
    if job:
        yield job


def _matches(
    batch: dict[str, pa.Array], kind: str, wanted: np.ndarray, holder_known: np.ndarray
) -> np.ndarray:
    """Find the rows of ``batch`` whose value of ``kind`` hashes to one of ``wanted``."""
    column = batch["PatientID"] if kind == PATIENT else batch[KINDS[kind]]
    value, valid = _kind_hashes(column, kind)
    return np.flatnonzero(contains(wanted, value) & valid & holder_known)


class _Violations:
    """A check's confirmed violations: the exact count, and the `MAX_LISTED` smallest values."""

    def __init__(self):
        self.count = 0
        self._heap: list[_Largest] = []  # (the largest value kept is on top)

    def add(self, value: str) -> None:
        self.count += 1
        item = _Largest(value)
        if len(self._heap) < MAX_LISTED:
            heapq.heappush(self._heap, item)
        elif value < self._heap[0].value:
            heapq.heapreplace(self._heap, item)

    def listed(self) -> list[str]:
        return sorted(item.value for item in self._heap)


@dataclass(frozen=True)
class _Largest:
    """A value ordered backwards, so that `heapq` keeps the largest on top."""

    value: str

    def __lt__(self, other: _Largest) -> bool:
        return self.value > other.value


def _confirm(
    read_catalogue: CatalogueReader,
    suspected: dict[str, np.ndarray],
    clinical: list[tuple[str, str, str]],
) -> dict[str, _Violations]:
    """Read the suspects' real values and keep the violations they confirm."""
    found = {check: _Violations() for check in CHECKS}
    for job in _slices(suspected):
        seen: dict[str, dict[str, _Value]] = {kind: {} for kind in job}
        columns = ["PatientID", "group", *(KINDS[k] for k in job if k != PATIENT)]
        for batch in _batches(read_catalogue, columns):
            _, known = _patients(batch)
            patients: list = []
            groups: list = []
            for kind, wanted in job.items():
                rows = _matches(batch, kind, wanted, known)
                if not len(rows):
                    continue
                if not patients:
                    patients = batch["PatientID"].to_pylist()
                    groups = batch["group"].to_pylist()
                values = patients if kind == PATIENT else batch[KINDS[kind]].to_pylist()
                for row in rows.tolist():
                    _see(seen[kind], values[row], patients[row], groups[row])
        if PATIENT in job and clinical:
            for row in np.flatnonzero(contains(job[PATIENT], _clinical_hashes(clinical))):
                pseudonym, group, _ = clinical[row]
                _see(seen[PATIENT], pseudonym, pseudonym, group)
        for kind, values in seen.items():
            for value, state in values.items():
                if state.groups == 3:
                    found[f"{kind}_in_both_groups"].add(value)
                if kind != PATIENT and state.others:
                    found[f"{kind}_under_two_patients"].add(value)
    return found


def _see(values: dict[str, _Value], value: str, patient: str, group: str) -> None:
    state = values.get(value)
    if state is None:
        state = values[value] = _Value(patient)
    elif patient != state.patient:
        state.others = True
    state.groups |= _MASK[group]


# --------------------------------------------------------------------------------------------
# the third pass: the listed violations' holders


def _holders(
    read_catalogue: CatalogueReader,
    listed: dict[str, set[str]],
) -> dict[str, dict[str, dict[tuple[str, str], str]]]:
    """Find the holders of the listed values.

    For each listed value of each kind: ``(pseudonym, group)`` -> its smallest warehouse key,
    for the `MAX_HOLDERS` smallest holders (and one more, which says there are more).
    """
    holders: dict[str, dict[str, dict[tuple[str, str], str]]] = {
        kind: {value: {} for value in values} for kind, values in listed.items() if values
    }
    if not holders:
        return holders
    wanted = {
        kind: np.unique(np.array([_value_hash(v, kind) for v in values], dtype=np.uint64))
        for kind, values in holders.items()
    }
    columns = ["PatientID", "group", "warehouse_key", *(KINDS[k] for k in holders if k in KINDS)]
    for batch in _batches(read_catalogue, columns):
        _, known = _patients(batch)
        cache: dict[str, list] = {}
        for kind in holders:
            rows = _matches(batch, kind, wanted[kind], known)
            if not len(rows):
                continue
            for name in ("PatientID", "group", "warehouse_key"):
                cache.setdefault(name, batch[name].to_pylist())
            column = "PatientID" if kind == PATIENT else KINDS[kind]
            values = cache.setdefault(column, batch[column].to_pylist())
            for row in rows.tolist():
                kept = holders[kind].get(values[row])
                if kept is None:
                    continue  # (another value of the same hash)
                _hold(
                    kept,
                    (cache["PatientID"][row], cache["group"][row]),
                    cache["warehouse_key"][row],
                )
    return holders


def _hold(kept: dict[tuple[str, str], str], holder: tuple[str, str], key: str) -> None:
    if holder in kept:
        kept[holder] = min(kept[holder], key)
    elif len(kept) < MAX_HOLDERS + 1:  # (one more than listed: says there are more)
        kept[holder] = key
    else:
        largest = max(kept)
        if holder < largest:
            del kept[largest]
            kept[holder] = key


# --------------------------------------------------------------------------------------------
# the certificate


#: Yields a catalogue's rows, the given columns of `MERGED_SCHEMA` (a missing one null), in
#: tables of at most `BATCH_ROWS` rows, from the start at each call.
CatalogueReader = Callable[[list[str]], Iterator[pa.Table]]


@dataclass(frozen=True)
class CatalogueSource:
    """The catalogue a certificate is about.

    Attributes
    ----------
    read : callable
        Reads it (`CatalogueReader`: each pass reads it from the start).
    through : str or None
        The newest catalogue part it covers.
    rows : int
        About how many rows it holds (what the first pass's spills are sized by).
    """

    read: CatalogueReader
    through: str | None = None
    rows: int = 0

    @classmethod
    def of_file(cls, path: str | os.PathLike, through: str | None = None) -> CatalogueSource:
        """Return the catalogue in the local Parquet file ``path``."""

        def read(columns: list[str]) -> Iterator[pa.Table]:
            yield from catalogue_batches(pq.ParquetFile(path), columns, BATCH_ROWS)

        return cls(read, through, pq.ParquetFile(path).metadata.num_rows)


def catalogue_source(scan: CatalogueScan, processed: Storage) -> CatalogueSource:
    """Return the catalogue a merge left (`catalogue.merge.merged_batches`).

    Its local file, its layers, or the last batch's catalogue when it stands as it is
    (``scan.reused``).
    """

    def read(columns: list[str]) -> Iterator[pa.Table]:
        return merged_batches(scan, processed, columns, BATCH_ROWS)

    return CatalogueSource(read, scan.through, scan.rows)


def day_rows(scan: CatalogueScan) -> CatalogueReader | None:
    """Return a reader of the rows a merge added to the last batch's catalogue.

    Only when it removed none of its rows (`certify_day`): the day's parts laid on it
    (``scan.layers``) replacing no row and no image gone, or that catalogue as it is
    (``scan.reused``: no row added). None otherwise (a full merge, a row replaced).
    """
    layers = scan.layers
    if scan.gone or scan.previous is None:
        return None
    if layers is not None and not layers.replacing:
        return lambda columns: day_batches(layers, columns)
    if layers is None and scan.reused is not None:
        return lambda columns: iter(())
    return None


def clinical_entries(clinical_files: dict) -> list[tuple[str, str, str]]:
    """Return ``(pseudonym, group, key)`` of each filed clinical file.

    From `listing.warehouse.WarehouseIndex.clinical_files`.
    """
    return [
        (pseudonym, entry.group, entry.key(pseudonym))
        for pseudonym, entries in clinical_files.items()
        for entry in entries
        if entry.group in GROUPS
    ]


def _shown(value: str | None) -> str | None:
    return None if value is None else bounded(value, MAX_VALUE_CHARS)


def certify(
    source: CatalogueSource,
    clinical: list[tuple[str, str, str]],
    *,
    batch: str,
    now: dt.datetime,
    workdir: str,
    warehouse: str = "",
) -> dict:
    """Check the hold-out over the whole catalogue and the clinical folders; the certificate.

    Parameters
    ----------
    source : CatalogueSource
        The merged catalogue.
    clinical : list of tuple
        ``(pseudonym, group, key)`` of each filed clinical file (`clinical_entries`).
    batch : str
        The batch the certificate goes with.
    now : datetime.datetime
        The batch's time.
    workdir : str
        A local folder for the spilled hashes (removed as they are read).
    warehouse : str
        The warehouse's URL.

    Returns
    -------
    dict
        The certificate (see the README, "The hold-out certificate"), with its ``digest``.
    """
    folder = os.path.join(workdir, "holdout")
    os.makedirs(folder, exist_ok=True)
    counts, suspected, _ = _first_pass(source.read, source.rows, clinical, folder)
    found = (
        _confirm(source.read, suspected, clinical)
        if any(map(len, suspected.values()))
        else {check: _Violations() for check in CHECKS}
    )
    listed = {check: found[check].listed() for check in CHECKS}
    entries = _entries(source.read, listed, clinical)
    checks = {check: _check(check, found[check].count, entries[check]) for check in CHECKS}
    return _certificate(checks, counts, len(clinical), source.through, batch, now, warehouse)


def _entries(
    read_catalogue: CatalogueReader,
    listed: dict[str, list[str]],
    clinical: list[tuple[str, str, str]],
) -> dict[str, list[dict]]:
    """Each check's entries for its ``listed`` values, their holders found (`_holders`)."""
    by_kind: dict[str, set[str]] = {}
    for check, values in listed.items():
        by_kind.setdefault(check.split("_", 1)[0], set()).update(values)
    holders = _holders(read_catalogue, by_kind)
    clinical_keys: dict[tuple[str, str], str] = {}
    for pseudonym, group, key in clinical:
        if pseudonym in by_kind.get(PATIENT, ()):
            known = clinical_keys.get((pseudonym, group))
            clinical_keys[(pseudonym, group)] = key if known is None else min(known, key)
    entries = {}
    for check, values in listed.items():
        kind = check.split("_", 1)[0]
        entries[check] = [
            _patient_entry(value, holders[kind][value], clinical_keys)
            if kind == PATIENT
            else _value_entry(value, holders[kind][value])
            for value in values
        ]
    return entries


def _check(check: str, violations: int, entries: list[dict]) -> dict:
    return {"meaning": MEANINGS[check], "violations": violations, "listed": entries}


def _certificate(
    checks: dict[str, dict],
    counts: _Counts,
    clinical_files: int,
    through: str | None,
    batch: str,
    now: dt.datetime,
    warehouse: str,
) -> dict:
    """Return the certificate of ``checks`` (in `CHECKS` order) and ``counts``, digested."""
    total = sum(checks[check]["violations"] for check in CHECKS)
    certificate = {
        "certificate": "hold-out",
        "format": HOLDOUT_FORMAT,
        "batch": batch,
        "created": _utc(now),
        "warehouse": warehouse,
        "catalogue": {
            "rows": counts.rows,
            "through": through,
            "rows_without_patient_or_group": counts.without_patient,
            "unknown": dict(counts.unknown),
        },
        "clinical_files": clinical_files,
        "holds": total == 0,
        "violations": total,
        "listed_at_most": MAX_LISTED,
        "holders_listed_at_most": MAX_HOLDERS,
        "checks": {check: checks[check] for check in CHECKS},
    }
    certificate["digest"] = certificate_digest(certificate)
    return certificate


def _carried_values(last: dict | None, warehouse: str) -> dict[str, list[str]] | None:
    """Return each check's violations in the ``last`` certificate, by value.

    Only when it lists them all and can be trusted (this format, its digest, this warehouse,
    every value shown whole); None otherwise. The pseudonyms' check is not carried (each
    certificate checks it in full).
    """
    try:
        if (
            last is None
            or last.get("format") != HOLDOUT_FORMAT
            or last.get("warehouse") != warehouse
            or certificate_digest(last) != last.get("digest")
        ):
            return None
        carried = {}
        for check in CHECKS:
            if check.startswith(PATIENT):
                continue
            entry = last["checks"][check]
            values = [item["value"] for item in entry["listed"]]
            if entry["violations"] != len(values) or not all(
                isinstance(v, str) and len(v) < MAX_VALUE_CHARS for v in values
            ):
                return None
            carried[check] = values
    except (KeyError, TypeError, AttributeError):
        return None
    return carried


def certify_day(
    source: CatalogueSource,
    day: CatalogueReader,
    clinical: list[tuple[str, str, str]],
    last: dict | None,
    *,
    batch: str,
    now: dt.datetime,
    workdir: str,
    warehouse: str = "",
) -> dict | None:
    """Check the hold-out from the ``last`` certificate and the rows added since (``day``).

    For a catalogue that is the last certificate's plus ``day``'s rows, none removed: a
    violation then stays one, and a new one holds a value of the day's rows. One pass over
    the catalogue counts its rows and hashes its patients, as `certify` does, but no value is
    hashed nor spilled: the rows that hold one of the day's values are gathered by their real
    values (Arrow's ``is_in``), which decide those values' checks; the others' stand as the
    last certificate says. The pseudonyms are checked in full (clinical files come and go).
    The certificate is the one `certify` makes of the same catalogue.

    Parameters
    ----------
    source : CatalogueSource
        The whole catalogue (the last certificate's rows and the day's).
    day : callable
        Reads the rows added since the last certificate (`CatalogueReader`).
    clinical : list of tuple
        ``(pseudonym, group, key)`` of each filed clinical file (`clinical_entries`).
    last : dict or None
        The last batch's certificate (about the catalogue without the day's rows).
    batch, now, workdir, warehouse
        As `certify` takes them.

    Returns
    -------
    dict or None
        The certificate; None when the last one cannot be carried (none, another format or
        warehouse, a digest that does not match, a check with more violations than it lists,
        a value shown cut) or does not add up (its rows and the day's are not the
        catalogue's): `certify` then checks the whole catalogue.
    """
    carried = _carried_values(last, warehouse)
    if carried is None or last is None:
        return None
    values: dict[str, list] = {kind: [] for kind in KINDS}
    day_rows = 0
    for table in day(["PatientID", "group", *KINDS.values()]):
        day_rows += table.num_rows
        for kind, column in KINDS.items():
            values[kind].append(pc.unique(table.column(column).drop_null()))
    wanted = {
        kind: pc.unique(pa.chunked_array(chunks, pa.string()))
        if chunks
        else pa.array([], pa.string())
        for kind, chunks in values.items()
    }
    folder = os.path.join(workdir, "holdout")
    os.makedirs(folder, exist_ok=True)
    counts, suspected, seen = _first_pass(source.read, source.rows, clinical, folder, wanted)
    if counts.rows != last["catalogue"]["rows"] + day_rows:
        return None
    patients = (
        _confirm(source.read, {PATIENT: suspected[PATIENT]}, clinical)
        if len(suspected[PATIENT])
        else {check: _Violations() for check in CHECKS}
    )
    listed: dict[str, list[str]] = {}
    violations: dict[str, int] = {}
    carried_entries: dict[str, dict[str, dict]] = {}
    for check in CHECKS:
        kind, what = check.split("_", 1)
        if kind == PATIENT:
            listed[check] = patients[check].listed()
            violations[check] = patients[check].count
            continue
        touched = seen[kind]
        now_found = {v for v, state in touched.items() if _violates(what, state)}
        before = set(carried[check])
        if any(v in touched and v not in now_found for v in before):
            return None  # (a violation gone: rows were removed after all)
        found = before | now_found
        violations[check] = len(found)
        listed[check] = sorted(found)[:MAX_LISTED]
        old = {entry["value"]: entry for entry in last["checks"][check]["listed"]}
        carried_entries[check] = {v: old[v] for v in listed[check] if v not in touched}
    recheck = {
        check: [v for v in values if v not in carried_entries.get(check, {})]
        for check, values in listed.items()
    }
    entries = _entries(source.read, recheck, clinical)
    checks = {}
    for check in CHECKS:
        made = dict(zip(recheck[check], entries[check], strict=True))
        kept = carried_entries.get(check, {})
        checks[check] = _check(
            check,
            violations[check],
            [kept[v] if v in kept else made[v] for v in listed[check]],
        )
    return _certificate(checks, counts, len(clinical), source.through, batch, now, warehouse)


def _violates(what: str, state: _Value) -> bool:
    """Whether a value seen so (`_Value`) breaks the check ``what`` of its kind."""
    return state.groups == 3 if what == "in_both_groups" else state.others


def _utc(now: dt.datetime) -> str:
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _value_entry(value: str, holders: dict[tuple[str, str], str]) -> dict:
    chosen = sorted(holders)[:MAX_HOLDERS]
    return {
        "value": _shown(value),
        "holders": [
            {"pseudonym": p, "group": g, "warehouse_key": _shown(holders[(p, g)])}
            for p, g in chosen
        ],
        "more_holders": len(holders) > MAX_HOLDERS,
    }


def _patient_entry(
    pseudonym: str,
    images: dict[tuple[str, str], str],
    clinical_keys: dict[tuple[str, str], str],
) -> dict:
    groups = []
    for group in GROUPS:
        image = images.get((pseudonym, group))
        clinical = clinical_keys.get((pseudonym, group))
        if image is not None or clinical is not None:
            groups.append({"group": group, "image": _shown(image), "clinical": _shown(clinical)})
    return {"pseudonym": _shown(pseudonym), "groups": groups}


def certificate_digest(certificate: dict) -> str:
    """Return the digest a certificate carries.

    ``sha256:`` and the SHA-256 of its canonical JSON (keys sorted, no spaces, ASCII) without
    the ``digest`` field.

    A reader checks a certificate with ``certificate_digest(doc) == doc["digest"]``.
    """
    body = {name: value for name, value in certificate.items() if name != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def certificate_bytes(certificate: dict) -> bytes:
    """Return the certificate as the batch's ``holdout.json`` (indented JSON, UTF-8)."""
    return (json.dumps(certificate, indent=1, ensure_ascii=True) + "\n").encode("utf-8")


def summary(certificate: dict) -> dict:
    """Return what a page shows of a certificate: its counts per check, no listed violation."""
    return {
        **{k: v for k, v in certificate.items() if k != "checks"},
        "checks": {
            name: {"meaning": check["meaning"], "violations": check["violations"]}
            for name, check in certificate["checks"].items()
        },
    }


__all__ = [
    "CHECKS",
    "HOLDOUT_FILE",
    "HOLDOUT_FORMAT",
    "CatalogueSource",
    "catalogue_source",
    "certificate_bytes",
    "certificate_digest",
    "certify",
    "certify_day",
    "clinical_entries",
    "day_rows",
    "summary",
    "suspects",
]
