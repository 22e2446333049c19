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

import contextlib
import datetime as dt
import hashlib
import heapq
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import duckdb
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
from warehouse.core.errors import ObjectNotFound
from warehouse.core.keys import GROUPS
from warehouse.core.text import bounded
from warehouse.storage.base import Storage

logger = logging.getLogger(__name__)

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


_CONNECTIONS = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """Return this thread's DuckDB connection (one thread of its own: the batches are small)."""
    connection = getattr(_CONNECTIONS, "connection", None)
    if connection is None:
        connection = _CONNECTIONS.connection = duckdb.connect(config={"threads": 1})
    return connection


#: What `_hash_columns` computes, as a hashes file records it (another DuckDB may hash
#: otherwise: its file is then not used).
HASH_FUNCTION = f"duckdb-{duckdb.__version__}-hash"


def _hash_columns(columns: list[pa.Array]) -> list[np.ndarray]:
    """Hash every value of each column (DuckDB's 64-bit ``hash``, in one query).

    The same text hashes the same in every process (unlike Python's ``hash``), so that a batch
    can keep its values' hashes for the next (`HASHES_FILE`); a null's hash means nothing.
    """
    if not columns or not len(columns[0]):
        return [np.zeros(len(column), dtype=np.uint64) for column in columns]
    names = [f"c{n}" for n in range(len(columns))]
    table = pa.table(
        {
            name: column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
            for name, column in zip(names, columns, strict=True)
        }
    )
    fetched = (
        _connection()
        .from_arrow(table)
        .project(", ".join(f"hash({name}) AS {name}" for name in names))
        .fetchnumpy()
    )
    return [np.asarray(fetched[name], dtype=np.uint64) for name in names]


#: A patient's hash keeps 63 bits: shifted left, its group takes the low bit.
_PATIENT_BITS = np.uint64((1 << 63) - 1)


def _hashes_of(items: list[tuple[pa.Array, str]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Hash columns, each of a kind (a pseudonym: 63 bits); also tell which values are known."""
    hashed = _hash_columns([column for column, _ in items])
    return [
        (
            hashes & _PATIENT_BITS if kind == PATIENT else hashes,
            column.is_valid().to_numpy(zero_copy_only=False),
        )
        for hashes, (column, kind) in zip(hashed, items, strict=True)
    ]


def _kind_hashes(column: pa.Array, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Hash a column of ``kind`` (`_hashes_of`)."""
    return _hashes_of([(column, kind)])[0]


def _value_hash(value: str, kind: str) -> np.uint64:
    """Hash one value of ``kind``, as `_kind_hashes` does."""
    return _kind_hashes(pa.array([value], pa.string()), kind)[0][0]


def _patients(
    batch: dict[str, pa.Array], patient: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's patient hash shifted left, its group in the low bit; which rows have both.

    ``patient``: the PatientID column's hashes, when they are made already.
    """
    hashes, _ = patient or _kind_hashes(batch["PatientID"], PATIENT)
    validation = _in_group(batch, GROUPS[1])
    return (hashes << np.uint64(1)) | validation.astype(np.uint64), _known(batch)


def _in_group(batch: dict[str, pa.Array], group: str) -> np.ndarray:
    return pc.equal(batch["group"], group).fill_null(False).to_numpy(zero_copy_only=False)


def _known(batch: dict[str, pa.Array]) -> np.ndarray:
    """Which rows have a patient and a group (the others are not compared)."""
    patient = batch["PatientID"].is_valid().to_numpy(zero_copy_only=False)
    return patient & (_in_group(batch, GROUPS[0]) | _in_group(batch, GROUPS[1]))


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
    distinct, two, both = _grouped(value, holder)
    flagged = two | both
    return distinct[flagged], two[flagged], both[flagged]


def _grouped(value: np.ndarray, holder: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the distinct value hashes (sorted), whether two patients hold each, and both groups.

    (`suspects`, before it keeps the suspects.)
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
    return value[starts], two, both


@dataclass
class _Counts:
    """What the first pass counted of the catalogue."""

    rows: int = 0
    without_patient: int = 0
    unknown: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


@dataclass
class _Hashed:
    """A batch of rows hashed (`_hashed`): each row's holder, and each kind's value hashes."""

    holder: np.ndarray
    known: np.ndarray
    values: dict[str, tuple[np.ndarray, np.ndarray]]


def _hashed(batch: dict[str, pa.Array], counts: _Counts) -> _Hashed:
    """Hash a batch's patients and values of each kind (one query).

    Count its rows into ``counts``: rows, rows without a patient or a group, rows of each
    kind without a value.
    """
    hashes = _hashes_of([(batch["PatientID"], PATIENT), *((batch[c], k) for k, c in KINDS.items())])
    holder, known = _patients(batch, hashes[0])
    counts.rows += len(holder)
    counts.without_patient += int(len(holder) - known.sum())
    for kind, (_, valid) in zip(KINDS, hashes[1:], strict=True):
        counts.unknown[kind] += int((known & ~valid).sum())
    return _Hashed(holder, known, dict(zip(KINDS, hashes[1:], strict=True)))


def _first_pass(
    read_catalogue: CatalogueReader,
    rows: int,
    clinical: list[tuple[str, str, str]],
    folder: str,
    kept: _HashesWriter,
) -> tuple[_Counts, dict[str, np.ndarray]]:
    """Hash every row; return the counts and, per kind (and `PATIENT`), the suspect hashes.

    The spills are sized by ``rows``, about how many the catalogue holds. Each kind's distinct
    hashes (and the patients with their groups) go to ``kept``.
    """
    counts = _Counts()
    bits = max(0, int(np.ceil(np.log2(max(1, rows) / PART_PAIRS))))
    spills = {kind: _Spill(folder, kind, bits) for kind in KINDS}
    patients: list[np.ndarray] = []
    try:
        for batch in _batches(read_catalogue, _COLUMNS):
            hashed = _hashed(batch, counts)
            patients.append(np.unique(hashed.holder[hashed.known]))
            for kind, (value, valid) in hashed.values.items():
                chosen = hashed.known & valid
                value, held = value[chosen], hashed.holder[chosen]
                keep = _new_rows(value, held)
                spills[kind].add(value[keep], held[keep])
            if sum(len(p) for p in patients) > PART_PAIRS:
                patients = [np.unique(np.concatenate(patients))]
        held = np.unique(np.concatenate(patients)) if patients else _none()
        kept.add(PATIENT, held)
        suspected = {PATIENT: _suspected_patients(held, clinical)}
        for kind, spill in spills.items():
            found = []
            for value, holder in spill.parts():
                distinct, two, both = _grouped(value, holder)
                found.append(distinct[two | both])
                kept.add(kind, distinct)  # (the parts split the hashes by top bits: in order)
            suspected[kind] = np.concatenate(found) if found else _none()
    finally:
        for spill in spills.values():
            spill.close()
            for path in spill.paths:
                if os.path.exists(path):
                    os.remove(path)
    return counts, suspected


def _suspected_patients(held: np.ndarray, clinical: list[tuple[str, str, str]]) -> np.ndarray:
    """Return the pseudonyms' hashes held in both groups.

    By the catalogue's patients (``held``: hash shifted left, the group bit) or by the
    clinical files.
    """
    if clinical:
        validation = np.array([group == GROUPS[1] for _, group, _ in clinical], np.uint64)
        held = np.unique(
            np.concatenate([held, (_clinical_hashes(clinical) << np.uint64(1)) | validation])
        )
    # (the patient's hash is the value, the group its only holder bit)
    return suspects(held >> np.uint64(1), held & np.uint64(1))[0]


def _gather(
    read_catalogue: CatalogueReader, seen: dict[str, dict[str, _Value]], wanted: dict[str, pa.Array]
) -> None:
    """Gather the rows whose value of a kind is one of ``wanted``'s (real values).

    Into ``seen`` (kind -> value -> `_Value`), reading only the columns of the kinds with a
    value wanted.
    """
    kinds = [kind for kind, values in wanted.items() if len(values)]
    if not kinds:
        return
    for batch in _batches(read_catalogue, ["PatientID", "group", *(KINDS[k] for k in kinds)]):
        known = _known(batch)
        for kind in kinds:
            values = batch[KINDS[kind]]
            held = pc.is_in(values, value_set=wanted[kind]).fill_null(False)
            rows = np.flatnonzero(held.to_numpy(zero_copy_only=False) & known)
            if not len(rows):
                continue
            taken = pa.array(rows)
            patients = batch["PatientID"].take(taken).to_pylist()
            groups = batch["group"].take(taken).to_pylist()
            for value, patient, group in zip(
                values.take(taken).to_pylist(), patients, groups, strict=True
            ):
                _see(seen[kind], value, patient, group)


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
# the value hashes a batch keeps for the next day's certificate


#: The hashes of every value a batch's catalogue holds, beside its certificate (internal, not
#: named by ``latest.csv``): what lets the next day's certificate read none of its rows.
HASHES_FILE = "holdout-hashes.parquet"
#: The hashes file's layout.
HASHES_FORMAT = 1
#: Hashes in one row group (8 MB).
HASHES_ROW_GROUP = 1 << 20
_HASHES_SCHEMA = pa.schema([("hash", pa.uint64())])
_HASHES_KEY = b"holdout"


class _HashesWriter:
    """A hashes file being written.

    For `PATIENT`, the catalogue's holders (the patients' hashes shifted left, the group bit),
    and for each kind its values' hashes (of the rows with a holder); each sorted and
    distinct, a kind after another, in row groups that the file's metadata gives by kind, with
    the certificate it goes with (`finish`).
    """

    def __init__(self, path: str):
        self.path = path
        self._writer = pq.ParquetWriter(
            path, _HASHES_SCHEMA, compression="none", use_dictionary=False
        )
        self._groups: dict[str, list[int]] = {kind: [] for kind in (PATIENT, *KINDS)}
        self._written = 0
        self._finished = False

    @classmethod
    @contextlib.contextmanager
    def at(cls, path: str) -> Iterator[_HashesWriter]:
        """Write a hashes file at ``path``; one not finished is removed."""
        writer = cls(path)
        try:
            yield writer
        finally:
            if not writer._finished:
                writer._writer.close()
                os.remove(path)

    def add(self, kind: str, hashes: np.ndarray) -> None:
        """Add hashes of ``kind``, sorted and each greater than those added before."""
        for start in range(0, len(hashes), HASHES_ROW_GROUP):
            chunk = pa.array(hashes[start : start + HASHES_ROW_GROUP], pa.uint64())
            self._writer.write_table(pa.table([chunk], schema=_HASHES_SCHEMA), HASHES_ROW_GROUP)
            self._groups[kind].append(self._written)
            self._written += 1

    def finish(self, digest: str) -> None:
        """Record the certificate the hashes go with (its ``digest``) and close the file."""
        about = {
            "format": HASHES_FORMAT,
            "certificate": digest,
            "hash": HASH_FUNCTION,
            "row_groups": self._groups,
        }
        self._writer.add_key_value_metadata({_HASHES_KEY: json.dumps(about).encode("utf-8")})
        self._writer.close()
        self._finished = True


def hashes_path(workdir: str) -> str:
    """Return the local file a certificate made in ``workdir`` keeps its value hashes in.

    (`HASHES_FILE`: `certify` and `certify_day` write it with the certificate.)
    """
    return os.path.join(workdir, HASHES_FILE)


@dataclass(frozen=True)
class LastCertificate:
    """The last batch's certificate and the value hashes kept with it (`certify_day`).

    Attributes
    ----------
    certificate : dict or None
        Its ``holdout.json``.
    hashes : pyarrow.parquet.ParquetFile or None
        Its `HASHES_FILE`.
    """

    certificate: dict | None
    hashes: pq.ParquetFile | None = None


def _kept_groups(file: pq.ParquetFile, digest: str) -> dict[str, list[int]] | None:
    """Return the row groups of each kind in a hashes file.

    Only when it goes with the certificate of ``digest`` and hashes as this run does; None
    otherwise.
    """
    try:
        about = json.loads((file.metadata.metadata or {})[_HASHES_KEY])
        groups = about["row_groups"]
        numbers = [n for kind in (PATIENT, *KINDS) for n in groups[kind]]
        usable = (
            about["format"] == HASHES_FORMAT
            and about["certificate"] == digest
            and about["hash"] == HASH_FUNCTION
            and all(isinstance(n, int) for n in numbers)
            and sorted(numbers) == list(range(file.num_row_groups))
        )
    except (KeyError, TypeError, ValueError, RecursionError, OSError, pa.ArrowException) as exc:
        logger.warning("the last batch's value hashes cannot be used (%s)", exc)
        return None
    return {kind: groups[kind] for kind in (PATIENT, *KINDS)} if usable else None


def _read_kind(file: pq.ParquetFile, groups: list[int]) -> np.ndarray:
    """Read a kind's hashes from a hashes file (its row ``groups``).

    Raises
    ------
    ValueError
        When they are not sorted and distinct.
    """
    chunks = [
        file.read_row_group(n, columns=["hash"]).column(0).to_numpy().astype(np.uint64)
        for n in groups
    ]
    hashes = np.concatenate(chunks) if chunks else _none()
    if len(hashes) > 1 and not bool(np.all(hashes[1:] > hashes[:-1])):
        raise ValueError("the hashes are not sorted and distinct")
    return hashes


def _merged(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Return the sorted distinct hashes of ``old`` (sorted, distinct) and ``new`` (sorted)."""
    added = new[~contains(old, new)]
    return np.insert(old, np.searchsorted(old, added), added) if len(added) else old


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
    with _HashesWriter.at(hashes_path(workdir)) as kept:
        counts, suspected = _first_pass(source.read, source.rows, clinical, folder, kept)
        found = (
            _confirm(source.read, suspected, clinical)
            if any(map(len, suspected.values()))
            else {check: _Violations() for check in CHECKS}
        )
        listed = {check: found[check].listed() for check in CHECKS}
        entries = _entries(source.read, listed, clinical)
        checks = {check: _check(check, found[check].count, entries[check]) for check in CHECKS}
        certificate = _certificate(
            checks, counts, len(clinical), source.through, batch, now, warehouse
        )
        kept.finish(certificate["digest"])
    return certificate


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
    last: LastCertificate,
    *,
    batch: str,
    now: dt.datetime,
    workdir: str,
    warehouse: str = "",
) -> dict | None:
    """Check the hold-out from the ``last`` certificate, its value hashes, and the day's rows.

    For a catalogue that is the last certificate's plus ``day``'s rows (those added since),
    none removed: a violation then stays one, and a new one holds a value of the day's rows.
    The last batch kept the hashes of every value its catalogue holds (`HASHES_FILE`): a value of
    the day whose hash is not there is in no other row, and the day's rows decide its checks;
    only the values whose hash is there (one already filed, or a collision) are gathered from
    the catalogue by their real values, reading only their kinds' columns. A usual day (new
    studies of new patients) reads no row of the catalogue. The pseudonyms are checked in full
    (clinical files come and go): the last patients' hashes, the day's and the clinical
    files'. The certificate is the one `certify` makes of the same catalogue.

    Parameters
    ----------
    source : CatalogueSource
        The whole catalogue (the last certificate's rows and the day's).
    day : callable
        Reads the rows added since the last certificate (`CatalogueReader`).
    clinical : list of tuple
        ``(pseudonym, group, key)`` of each filed clinical file (`clinical_entries`).
    last : LastCertificate
        The last batch's certificate (about the catalogue without the day's rows) and its
        value hashes.
    batch, now, workdir, warehouse
        As `certify` takes them (the day's value hashes are kept at `hashes_path`).

    Returns
    -------
    dict or None
        The certificate; None when the last one cannot be carried (none, another format or
        warehouse, a digest that does not match, a check with more violations than it lists,
        a value shown cut), has no hashes that go with it (none, another certificate's or
        hash function's, unreadable) or does not add up (its rows and the day's are not the
        catalogue's): `certify` then checks the whole catalogue.
    """
    carried = _carried_values(last.certificate, warehouse)
    hashes = last.hashes
    if carried is None or last.certificate is None or hashes is None:
        return None
    groups = _kept_groups(hashes, last.certificate["digest"])
    if groups is None:
        return None
    added, wanted, day_kept = _day_values(day)
    try:
        before = last.certificate["catalogue"]
        counts = _Counts(
            int(before["rows"]) + added.rows,
            int(before["rows_without_patient_or_group"]) + added.without_patient,
            {kind: int(before["unknown"][kind]) + added.unknown[kind] for kind in KINDS},
        )
    except (KeyError, TypeError, ValueError):
        return None  # (counts of another layout: counted again)
    if counts.rows != source.rows:
        return None
    with _HashesWriter.at(hashes_path(workdir)) as kept:
        try:
            hits, held = _look_up(hashes, groups, wanted, day_kept, kept)
        except (ValueError, OSError, pa.ArrowException, ObjectNotFound) as exc:
            logger.warning("the last batch's value hashes cannot be read (%s)", exc)
            return None
        seen: dict[str, dict[str, _Value]] = {kind: {} for kind in KINDS}
        # a value whose hash the last catalogue does not hold is in the day's rows alone
        _gather(day, seen, {k: v.filter(pa.array(~hits[k])) for k, v in wanted.items()})
        _gather(source.read, seen, {k: v.filter(pa.array(hits[k])) for k, v in wanted.items()})
        suspected = _suspected_patients(held, clinical)
        checks = _checks_of_day(source, clinical, last.certificate, carried, seen, suspected)
        if checks is None:
            return None
        certificate = _certificate(
            checks, counts, len(clinical), source.through, batch, now, warehouse
        )
        kept.finish(certificate["digest"])
    return certificate


def _checks_of_day(
    source: CatalogueSource,
    clinical: list[tuple[str, str, str]],
    last: dict,
    carried: dict[str, list[str]],
    seen: dict[str, dict[str, _Value]],
    suspected_patients: np.ndarray,
) -> dict[str, dict] | None:
    """Return the checks of a day (`certify_day`).

    The last certificate's violations, and those its values (``seen``) make; None when one of
    the last violations is gone.
    """
    patients = (
        _confirm(source.read, {PATIENT: suspected_patients}, clinical)
        if len(suspected_patients)
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
    return checks


def _day_values(
    day: CatalogueReader,
) -> tuple[_Counts, dict[str, pa.Array], dict[str, np.ndarray]]:
    """Read the day's rows.

    Return their counts, each kind's distinct values, and the hashes a hashes file keeps of
    them (each kind's, of the rows with a holder, and the holders: `PATIENT`).
    """
    counts = _Counts()
    values: dict[str, list] = {kind: [] for kind in KINDS}
    hashes: dict[str, list] = {kind: [] for kind in (PATIENT, *KINDS)}
    for batch in _batches(day, _COLUMNS):
        hashed = _hashed(batch, counts)
        hashes[PATIENT].append(hashed.holder[hashed.known])
        for kind, (value, valid) in hashed.values.items():
            hashes[kind].append(value[hashed.known & valid])
            values[kind].append(pc.unique(batch[KINDS[kind]].drop_null()))
    wanted = {
        kind: pc.unique(pa.chunked_array(chunks, pa.string()))
        if chunks
        else pa.array([], pa.string())
        for kind, chunks in values.items()
    }
    return counts, wanted, {k: np.unique(np.concatenate(v)) for k, v in hashes.items() if v}


def _look_up(
    file: pq.ParquetFile,
    groups: dict[str, list[int]],
    wanted: dict[str, pa.Array],
    day_kept: dict[str, np.ndarray],
    kept: _HashesWriter,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Look the day's values up in the last hashes ``file``, a kind at a time.

    Return, per kind, which of ``wanted``'s values hash to one the last catalogue holds, and
    the patients (`PATIENT`: the last ones and the day's). Each kind's hashes and the day's go
    to ``kept``.
    """
    hits: dict[str, np.ndarray] = {}
    held = _none()
    for kind in (PATIENT, *KINDS):
        old = _read_kind(file, groups[kind])
        if kind == PATIENT:
            held = _merged(old, day_kept.get(kind, _none()))
        else:
            hits[kind] = contains(old, _kind_hashes(wanted[kind], kind)[0])
        kept.add(kind, held if kind == PATIENT else _merged(old, day_kept.get(kind, _none())))
        del old
    return hits, held


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
    "HASHES_FILE",
    "HOLDOUT_FORMAT",
    "CatalogueSource",
    "LastCertificate",
    "catalogue_source",
    "certificate_bytes",
    "certificate_digest",
    "certify",
    "certify_day",
    "clinical_entries",
    "day_rows",
    "hashes_path",
    "summary",
    "suspects",
]
