"""The catalogue's compact index.

What a run needs to know of every filed image, in a few sorted arrays of 64-bit hashes, read
in a handful of requests whatever the warehouse's size.

For each image a catalogue part lists, the index keeps the hash of its SOPInstanceUID (with
the filed object's size and the part that lists it), of its warehouse key and of its raw key
(with its upload folder's date). Each is a sorted NumPy array (8 bytes an image), so "is this
instance filed?", "is this key filed?" and "was this raw file filed?" are binary searches, and
5 million images take about 140 MB instead of the gigabytes Python strings would.

For the leakage checks (`warehouse.loader.decisions`) it keeps, for each StudyInstanceUID,
SeriesInstanceUID and raw file content (the catalogue's ``content_id``) the index's parts
list, the hash of the patient (PatientID) each is filed under: "does this study belong to
another patient?" is a binary search too. These owner arrays hold each (hash, patient) pair
once (a study of 500 images is one pair), sorted by hash; in the file each is padded at its
start with zeros (0 stands for none) to the index's rows, and compressed, so the padding costs
next to nothing and the file stays one table.

The raw keys' hashes are sorted by upload date first: a daily run asks only about the raw
files of open upload folders (recent dates), so it reads only the row groups of those dates
(their statistics say which), whatever the warehouse's size.

Where it is, in the warehouse::

    catalogue/index/<UTC time>.parquet      one column per array (each sorted on its own),
                                            the parts it covers in the file's metadata
    catalogue/index/latest.json             which index is current, and the newest part it
                                            covers (parts after it are read as they are)

It is written when the parts are merged (``dataprocess``, from the last index and the parts
newer than it) and rebuilt from every part by a reconcile run. A loader run reads the pointer
(one GET), the arrays it needs (ranged reads of their column chunks) and the parts newer than
the index (one LIST from the covered one on, one GET each).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.rows import part_key, release_arrow_memory
from warehouse.core.errors import ObjectNotFound
from warehouse.core.report import utc_stamp
from warehouse.storage.base import Storage
from warehouse.storage.files import StoredFile

logger = logging.getLogger(__name__)

INDEX_PREFIX = "catalogue/index/"
POINTER_KEY = f"{INDEX_PREFIX}latest.json"
#: The columns a run reads whole; the raw hashes (with each raw file's size) are read in
#: chunks, only for the raw keys a run asks about (`raw_keys_filed`).
INSTANCE_COLUMNS = ("sop", "sop_size", "sop_part", "target")
RAW_COLUMNS = ("raw_day", "raw", "raw_size", "raw_time")
#: What each owner array is made of in a part: the UID (or content id) and the patient.
OWNER_KINDS = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "content": "content_id",
}
OWNER_COLUMNS = tuple(c for kind in OWNER_KINDS for c in (kind, f"{kind}_patient"))
#: The owner arrays a daily run reads. Not the contents: 16 bytes an image (80 MB at five
#: million), for a check the instance arrays make already. The loader files an image under its
#: header's PatientID, so identical bytes are the same patient's and the same SOP instance (a
#: duplicate); a file's content is checked against this run's and the newer parts' images, and
#: the whole catalogue's contents by a full run and by each batch's hold-out certificate.
DAILY_OWNER_KINDS = ("study", "series")
#: The columns of a catalogue part the index is made from (`part_arrays`).
PART_COLUMNS = (
    "raw_key",
    "warehouse_key",
    "SOPInstanceUID",
    "object_size",
    "upload_date",
    "PatientID",
    *OWNER_KINDS.values(),
)
#: The index's layout; a pointer to another (an older version's) names no usable index.
INDEX_FORMAT = 3
#: Rows of one row group of the index file (a chunk of the raw hashes read at a time).
ROW_GROUP = 1 << 20
_HASH = np.uint64
_DAY = np.int32


#: How long before an index is written a part must be stamped for the index to cover it.
PART_SETTLE = dt.timedelta(minutes=15)


def settled_parts(
    parts: list[PartArrays], unreadable: str | None, now: dt.datetime
) -> list[PartArrays]:
    """Return the parts an index written ``now`` may say it covers (its ``through``).

    Those stamped at least `PART_SETTLE` before ``now`` and before any part that could not be
    read (``unreadable``). A part is stamped before it is written, so one stamped just before
    a listing may appear after it; and an unreadable part must stay after ``through`` until it
    is fixed (the loader looks at everything while one is there). The parts after are read as
    newer parts by the next run.
    """
    cutoff = part_key(now - PART_SETTLE)
    return [
        part
        for part in parts
        if part.key <= cutoff and (unreadable is None or part.key < unreadable)
    ]


class InvalidIndex(ValueError):
    """The index or its pointer cannot be read or is not an index: it is not used."""


def key_hash(text: str | None) -> int:
    """Return the 64-bit hash of a key or UID the index keeps.

    BLAKE2b, stable across processes and machines; 0 stands for none.
    """
    if text is None:
        return 0
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def key_hashes(values: Iterable[str | None]) -> np.ndarray:
    """`key_hash` of each value, as an array of unsigned 64-bit integers."""
    return np.fromiter((key_hash(v) for v in values), dtype=_HASH)


_EPOCH = dt.date(1970, 1, 1)


def day_numbers(dates: Iterable[dt.date | None]) -> np.ndarray:
    """Return the days since 1970 of upload dates, as 32-bit integers (0 for none).

    The dates are those the catalogue's ``upload_date`` holds.
    """
    return np.fromiter(((d - _EPOCH).days if d is not None else 0 for d in dates), dtype=_DAY)


def raw_positions(
    days: np.ndarray,
    hashes: np.ndarray,
    wanted_days: np.ndarray,
    wanted: np.ndarray,
    side: Literal["left", "right"] = "left",
) -> np.ndarray:
    """Where each ``(wanted_days, wanted)`` pair goes in arrays sorted by (day, hash).

    As `numpy.searchsorted` does for one sorted array (``side`` likewise), for the index's raw
    arrays: ``days`` sorted, ``hashes`` sorted within each day. One binary search per distinct
    wanted day, then one within that day's rows.
    """
    out = np.zeros(len(wanted), dtype=np.int64)
    if not len(wanted):
        return out
    order = np.argsort(wanted_days, kind="stable")
    distinct, starts = np.unique(wanted_days[order], return_index=True)
    ends = [*starts[1:].tolist(), len(order)]
    lows = np.searchsorted(days, distinct, side="left")
    highs = np.searchsorted(days, distinct, side="right")
    for n, (low, high) in enumerate(zip(lows.tolist(), highs.tolist(), strict=True)):
        rows = order[starts[n] : ends[n]]
        out[rows] = low + np.searchsorted(hashes[low:high], wanted[rows], side=side)
    return out


def raw_matches(
    days: np.ndarray, hashes: np.ndarray, wanted_days: np.ndarray, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tell which ``(wanted_days, wanted)`` pairs the (day, hash) sorted arrays hold.

    Returns the found flags and the positions (clipped to the arrays: meaningful only where
    found).
    """
    if not len(hashes) or not len(wanted):
        return np.zeros(len(wanted), dtype=bool), np.zeros(len(wanted), dtype=np.int64)
    at = np.minimum(raw_positions(days, hashes, wanted_days, wanted), len(hashes) - 1)
    return (days[at] == wanted_days) & (hashes[at] == wanted), at


def owner_pairs(hashes: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct (hash, patient) pairs of per-image ``hashes`` and ``patients``.

    Sorted by hash then patient, without the pairs whose hash is 0 (none).
    """
    keep = hashes != 0
    hashes, patients = hashes[keep], patients[keep]
    order = np.lexsort((patients, hashes))
    hashes, patients = hashes[order], patients[order]
    if len(hashes) > 1:
        new = np.ones(len(hashes), dtype=bool)
        new[1:] = (hashes[1:] != hashes[:-1]) | (patients[1:] != patients[:-1])
        hashes, patients = hashes[new], patients[new]
    return hashes, patients


def other_owner(hashes: np.ndarray, patients: np.ndarray, wanted: int, patient: int) -> int | None:
    """Return a patient other than ``patient`` that owner arrays pair with ``wanted``.

    The owner arrays are sorted by hash; the patient is a hash too; None when there is none.
    """
    if not wanted or not len(hashes):
        return None
    low = int(np.searchsorted(hashes, np.uint64(wanted), side="left"))
    high = int(np.searchsorted(hashes, np.uint64(wanted), side="right"))
    others = patients[low:high]
    others = others[others != np.uint64(patient)]
    return int(others[0]) if len(others) else None


def shared_owners(hashes: np.ndarray, patients: np.ndarray) -> list[tuple[int, list[int]]]:
    """Return the hashes owner arrays (sorted by hash) pair with more than one patient.

    Each with its patients' hashes, sorted: what runs that could not see each other filed
    (the shards of one run).
    """
    if len(hashes) < 2:
        return []
    same = hashes[1:] == hashes[:-1]
    differs = same & (patients[1:] != patients[:-1])
    if not differs.any():
        return []
    found = np.unique(hashes[1:][differs])
    shared = []
    for hashed in found.tolist():
        low = int(np.searchsorted(hashes, np.uint64(hashed), side="left"))
        high = int(np.searchsorted(hashes, np.uint64(hashed), side="right"))
        shared.append((hashed, sorted(set(patients[low:high].tolist()))))
    return shared


def contains(sorted_hashes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which of ``wanted`` are in ``sorted_hashes`` (sorted), as a boolean array."""
    if not len(sorted_hashes) or not len(wanted):
        return np.zeros(len(wanted), dtype=bool)
    at = np.searchsorted(sorted_hashes, wanted)
    at[at == len(sorted_hashes)] = 0
    return sorted_hashes[at] == wanted


@dataclass
class IndexArrays:
    """The index's arrays (see the module's docstring) and the parts they come from.

    Attributes
    ----------
    sop, sop_size, sop_part : numpy.ndarray
        The SOPInstanceUID hashes, sorted, with the filed object's size and the number (in
        ``parts``) of the part that lists each.
    target : numpy.ndarray
        The warehouse keys' hashes, sorted.
    raw_day, raw, raw_size, raw_time : numpy.ndarray or None
        The raw keys' upload dates (days since 1970, 0 when not known) and hashes (0 for an
        image whose raw key is not known), sorted by date then hash, with the size of the raw
        file each was filed from (the filed copy's) and when its part was written (seconds
        since 1970: the raw file was filed before); None when not read.
    study, study_patient, series, series_patient, content, content_patient : numpy.ndarray
        The owner arrays (`owner_pairs`): each StudyInstanceUID's, SeriesInstanceUID's and
        raw file content's hash, sorted, with the hash of a patient it is filed under.
    parts : list of str
        The parts the index covers, by number.
    """

    sop: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    sop_size: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    sop_part: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint32))
    target: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    raw_day: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=_DAY))
    raw: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    raw_size: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    raw_time: np.ndarray | None = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    study: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    study_patient: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    series: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    series_patient: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    content: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    content_patient: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    parts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.target)

    @property
    def through(self) -> str | None:
        """The newest part covered (parts sort by time): a run reads the parts after it."""
        return max(self.parts) if self.parts else None

    def owners(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the owner arrays of ``kind`` (a key of `OWNER_KINDS`): hashes, patients."""
        return getattr(self, kind), getattr(self, f"{kind}_patient")


@dataclass(frozen=True)
class PartArrays:
    """One catalogue part's rows as the index keeps them: hashes and sizes, in row order.

    Attributes
    ----------
    key : str
        The part's key.
    written : datetime
        Its last-modified time.
    sop, target, raw : numpy.ndarray
        `key_hash` of each row's SOPInstanceUID, warehouse key and raw key.
    size : numpy.ndarray
        Each row's object size (0 when unknown).
    raw_day : numpy.ndarray
        Each row's upload date (`day_numbers`).
    patient : numpy.ndarray
        `key_hash` of each row's PatientID.
    owned : dict
        `OWNER_KINDS` key -> `key_hash` of each row's UID or content id (0 for none).
    """

    key: str
    written: dt.datetime
    sop: np.ndarray
    target: np.ndarray
    raw: np.ndarray
    size: np.ndarray
    raw_day: np.ndarray
    patient: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=_HASH))
    owned: dict = field(default_factory=dict)


def part_arrays(key: str, written: dt.datetime, table: pa.Table) -> PartArrays:
    """Hash a part's rows into the arrays the index keeps.

    ``table`` holds the `PART_COLUMNS` (a part written before a column existed: null).
    """
    return PartArrays(
        key=key,
        written=written,
        sop=key_hashes(table.column("SOPInstanceUID").to_pylist()),
        target=key_hashes(table.column("warehouse_key").to_pylist()),
        raw=key_hashes(table.column("raw_key").to_pylist()),
        size=np.asarray(table.column("object_size").fill_null(0), dtype=np.int64),
        raw_day=np.asarray(table.column("upload_date").cast(pa.int32()).fill_null(0), dtype=_DAY),
        patient=key_hashes(table.column("PatientID").to_pylist()),
        owned={
            kind: key_hashes(table.column(column).to_pylist())
            for kind, column in OWNER_KINDS.items()
        },
    )


def arrays_of_parts(parts: Iterable[PartArrays]) -> IndexArrays:
    """Build the index of parts' rows (``parts`` in the order of parts)."""
    sops, sizes, numbers, targets, raws, days, times, keys = [], [], [], [], [], [], [], []
    owned: dict[str, list[np.ndarray]] = {kind: [] for kind in OWNER_KINDS}
    patients = []
    for number, part in enumerate(parts):
        rows = len(part.target)
        keys.append(part.key)
        times.append(np.full(rows, int(part.written.timestamp()), dtype=np.int64))
        sops.append(part.sop)
        sizes.append(part.size)
        numbers.append(np.full(rows, number, dtype=np.uint32))
        targets.append(part.target)
        raws.append(part.raw)
        days.append(part.raw_day)
        for kind in OWNER_KINDS:
            owned[kind].append(part.owned.get(kind, np.zeros(rows, dtype=_HASH)))
        patients.append(part.patient if len(part.patient) == rows else np.zeros(rows, _HASH))
    if not keys:
        return IndexArrays()
    every_patient = np.concatenate(patients)
    owners = {}
    for kind, hashes in owned.items():
        owners[kind], owners[f"{kind}_patient"] = owner_pairs(np.concatenate(hashes), every_patient)
    sorted_index = _sorted(
        np.concatenate(sops),
        np.concatenate(sizes),
        np.concatenate(numbers),
        np.concatenate(targets),
        (np.concatenate(days), np.concatenate(raws)),
        np.concatenate(sizes),
        np.concatenate(times),
        keys,
    )
    for name, values in owners.items():
        setattr(sorted_index, name, values)
    return sorted_index


def _sorted(sop, sizes, numbers, target, raw, raw_sizes, raw_times, parts) -> IndexArrays:
    raw_day, raw = raw
    order = np.argsort(sop, kind="stable")
    by_raw = np.lexsort((raw, raw_day))  # (stable: by day, then hash)
    return IndexArrays(
        sop=sop[order],
        sop_size=sizes[order],
        sop_part=numbers[order],
        target=np.sort(target),
        raw_day=raw_day[by_raw],
        raw=raw[by_raw],
        raw_size=raw_sizes[by_raw],
        raw_time=raw_times[by_raw],
        parts=list(parts),
    )


def combined(old: IndexArrays, new: IndexArrays, *, consume: bool = False) -> IndexArrays:
    """Return the index of ``old``'s parts then ``new``'s (both whole, raw hashes included).

    Both are sorted already, so ``new``'s rows are inserted where they belong (after equal
    hashes of ``old``, as a stable sort of the two would put them): no sort of the whole.
    With ``consume``, each of ``old``'s arrays is let go once its result is made (``old`` is
    left empty), so the memory is ``old``'s and one array more.
    """
    if any(a is None for a in (old.raw, new.raw, old.raw_size, new.raw_size)):
        raise ValueError("both indexes need their raw hashes to be combined")
    if any(a is None for a in (old.raw_time, new.raw_time, old.raw_day, new.raw_day)):
        raise ValueError("both indexes need their raw hashes to be combined")
    assert old.raw is not None and new.raw is not None
    assert old.raw_day is not None and new.raw_day is not None
    by_sop = np.searchsorted(old.sop, new.sop, side="right")
    by_raw = raw_positions(old.raw_day, old.raw, new.raw_day, new.raw, side="right")
    by_target = np.searchsorted(old.target, new.target)
    shift = np.uint32(len(old.parts))
    plan: tuple[tuple[str, np.ndarray, np.ndarray | None], ...] = (
        ("sop", by_sop, new.sop),
        ("sop_size", by_sop, new.sop_size),
        ("sop_part", by_sop, new.sop_part + shift),
        ("target", by_target, new.target),
        ("raw_day", by_raw, new.raw_day),
        ("raw", by_raw, new.raw),
        ("raw_size", by_raw, new.raw_size),
        ("raw_time", by_raw, new.raw_time),
    )
    arrays = {}
    for name, at, values in plan:
        assert values is not None
        arrays[name] = np.insert(getattr(old, name), at, values)
        if consume:
            # (a new empty array: a [:0] view would keep the whole buffer alive)
            setattr(old, name, np.empty(0, dtype=getattr(old, name).dtype))
    for kind in OWNER_KINDS:
        (old_hashes, old_patients), (new_hashes, new_patients) = old.owners(kind), new.owners(kind)
        arrays[kind], arrays[f"{kind}_patient"] = owner_pairs(
            np.concatenate((old_hashes, new_hashes)), np.concatenate((old_patients, new_patients))
        )
        if consume:
            setattr(old, kind, np.empty(0, dtype=_HASH))
            setattr(old, f"{kind}_patient", np.empty(0, dtype=_HASH))
    return IndexArrays(**arrays, parts=[*old.parts, *new.parts])


_INDEX_TYPES = {
    "sop": pa.uint64(),
    "sop_size": pa.int64(),
    "sop_part": pa.uint32(),
    "target": pa.uint64(),
    "raw_day": pa.int32(),
    "raw": pa.uint64(),
    "raw_size": pa.int64(),
    "raw_time": pa.int64(),
    **dict.fromkeys(OWNER_COLUMNS, pa.uint64()),
}


#: Reads rows ``start`` to ``stop`` of one of an index's arrays, by column name.
SliceReader = Callable[[str, int, int], np.ndarray]


def _padded(read: SliceReader, name: str, length: int, rows: int, start: int, stop: int):
    # rows start to stop of an owner array of ``length`` pairs, padded at its start with zeros
    # to rows (one pair per image at most, so never longer than the index)
    pad = rows - length
    out = np.zeros(stop - start, dtype=_HASH)
    first = max(start, pad)
    if first < stop:
        out[first - start :] = read(name, first - pad, stop - pad)
    return out


def _write_index_file(
    path: str, lengths: Mapping[str, int], read: SliceReader, parts: list[str]
) -> None:
    # the index file, one row group at a time from ``read`` (the padded owner columns are
    # never whole in memory); ``lengths``: each array's length, by column
    rows = lengths["target"]
    if any(lengths[name] != rows for name in (*INSTANCE_COLUMNS, *RAW_COLUMNS)):
        raise ValueError("an index is written with its raw hashes, as long as its instances")
    for name in OWNER_COLUMNS:
        if lengths[name] > rows:
            raise ValueError(f"the index's {name} array is longer than the index")
    metadata = {
        "parts": json.dumps(parts),
        "through": json.dumps(max(parts) if parts else None),
        "format": str(INDEX_FORMAT),
    }
    schema = pa.schema(list(_INDEX_TYPES.items())).with_metadata(metadata)
    # random hashes: neither a dictionary nor compression helps, except on the owner
    # columns' padding of zeros
    compression = {name: "zstd" if name in OWNER_COLUMNS else "none" for name in _INDEX_TYPES}
    with pq.ParquetWriter(path, schema, compression=compression, use_dictionary=False) as writer:
        for start in range(0, rows, ROW_GROUP):
            stop = min(rows, start + ROW_GROUP)
            columns = {
                name: (
                    _padded(read, name, lengths[name], rows, start, stop)
                    if name in OWNER_COLUMNS
                    else read(name, start, stop)
                )
                for name in _INDEX_TYPES
            }
            writer.write_table(pa.table(columns, schema=schema), row_group_size=ROW_GROUP)


@dataclass(frozen=True)
class SavedIndex:
    """An index saved to a local file (`save_index`), to be published later.

    Attributes
    ----------
    path : str
        The local Parquet file.
    images : int
        Its rows.
    through : str or None
        The newest part it covers.
    """

    path: str
    images: int
    through: str | None


def save_index(index: IndexArrays, path: str) -> SavedIndex:
    """Write ``index`` to the local file ``path``, so its arrays need not be kept."""
    if any(getattr(index, name) is None for name in RAW_COLUMNS):
        raise ValueError("an index is written with its raw hashes")
    lengths = {name: len(getattr(index, name)) for name in _INDEX_TYPES}
    _write_index_file(
        path, lengths, lambda name, start, stop: getattr(index, name)[start:stop], index.parts
    )
    return SavedIndex(path, len(index), index.through)


def publish_saved_index(storage: Storage, saved: SavedIndex, now: dt.datetime) -> str:
    """Upload a saved index, then write the pointer that makes it current; return its key.

    Raises
    ------
    StorageError
        When a write fails (the pointer then still names the previous index).
    """
    key = f"{INDEX_PREFIX}{utc_stamp(now)}.parquet"
    size = os.path.getsize(saved.path)
    storage.write_file(key, saved.path, "application/vnd.apache.parquet")
    pointer = {
        "index": key,
        "size": size,
        "through": saved.through,
        "images": saved.images,
        "format": INDEX_FORMAT,
    }
    storage.write(POINTER_KEY, json.dumps(pointer).encode("utf-8"))
    return key


def write_index(storage: Storage, index: IndexArrays, now: dt.datetime) -> str:
    """Write ``index``, then the pointer that makes it current; return its key.

    It goes through a temporary file, so it is never all in memory twice.

    Raises
    ------
    StorageError
        When a write fails (the pointer then still names the previous index).
    """
    handle, path = tempfile.mkstemp(suffix=".parquet")
    os.close(handle)
    try:
        return publish_saved_index(storage, save_index(index, path), now)
    finally:
        os.unlink(path)


def read_pointer(storage: Storage) -> dict | None:
    """Read the pointer to the current index.

    None when no index was written yet, or only in another layout than `INDEX_FORMAT`: the
    runs then do without, as before the first one.

    Raises
    ------
    InvalidIndex
        When it is not a pointer.
    StorageError
        When it cannot be read.
    """
    try:
        data = json.loads(storage.read(POINTER_KEY))
    except ObjectNotFound:
        return None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidIndex(f"{POINTER_KEY} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("index"), str):
        raise InvalidIndex(f"{POINTER_KEY} names no index")
    if not data["index"].startswith(INDEX_PREFIX) or "/" in data["index"][len(INDEX_PREFIX) :]:
        raise InvalidIndex(f"{POINTER_KEY} names {data['index']!r}, not an index key")
    size = data.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidIndex(f"{POINTER_KEY} gives no size for {data['index']}")
    through = data.get("through")
    if through is not None and not isinstance(through, str):
        raise InvalidIndex(f"{POINTER_KEY}: through is not a part key")
    if data.get("format") != INDEX_FORMAT:
        logger.info("%s names an index of another layout: not used", POINTER_KEY)
        return None
    return data


def _open(storage: Storage, key: str, size: int) -> tuple[pq.ParquetFile, StoredFile]:
    handle = StoredFile(storage, key, size)
    try:
        return pq.ParquetFile(handle), handle
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidIndex(f"{key} is not a Parquet file: {exc}") from None


def _parts_of(key: str, file: pq.ParquetFile) -> list[str]:
    try:
        parts = json.loads((file.schema_arrow.metadata or {})[b"parts"])
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise ValueError("parts is not a list of keys")
    except (KeyError, ValueError) as exc:
        raise InvalidIndex(f"{key} is not a catalogue index: {exc}") from None
    missing = {*INSTANCE_COLUMNS, *RAW_COLUMNS, *OWNER_COLUMNS} - set(file.schema_arrow.names)
    if missing:
        raise InvalidIndex(f"{key} is not a catalogue index: no {', '.join(sorted(missing))}")
    return parts


def check_index(storage: Storage, key: str, size: int) -> None:
    """Check that ``key`` is an index by its footer alone (one or two ranged reads).

    Raises
    ------
    InvalidIndex
        When it is not an index.
    StorageError
        When it cannot be read.
    """
    file, _ = _open(storage, key, size)
    _parts_of(key, file)


def _read_column(file: pq.ParquetFile, key: str, name: str) -> np.ndarray:
    # one row group at a time into the array: no second copy of a whole column in Arrow
    rows = file.metadata.num_rows
    out = np.empty(rows, dtype=_INDEX_TYPES[name].to_pandas_dtype())
    start = 0
    try:
        for group in range(file.num_row_groups):
            values = file.read_row_group(group, columns=[name]).column(0).to_numpy()
            out[start : start + len(values)] = values
            start += len(values)
            del values
            release_arrow_memory()
    except (ValueError, pa.ArrowException, OSError) as exc:
        raise InvalidIndex(f"{key} is not a catalogue index: {exc}") from None
    if start != rows:
        raise InvalidIndex(f"{key}: its {name} column holds {start} of {rows} rows")
    return out


def _read_owners(file: pq.ParquetFile, key: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    # a row group at a time, its padding (hash 0) left out; a row group of padding alone
    # (its statistics say so: the pairs are at the end of the index) is not read
    hashes, patients = [], []
    position = file.schema_arrow.get_field_index(kind)
    try:
        for group in range(file.num_row_groups):
            stats = file.metadata.row_group(group).column(position).statistics
            if stats is not None and stats.has_min_max and stats.max == 0:
                continue
            chunk = file.read_row_group(group, columns=[kind, f"{kind}_patient"])
            values = np.asarray(chunk.column(0).to_numpy(), dtype=_HASH)
            keep = values != 0
            hashes.append(values[keep])
            patients.append(np.asarray(chunk.column(1).to_numpy(), dtype=_HASH)[keep])
            del chunk, values
            release_arrow_memory()
    except (ValueError, pa.ArrowException, OSError) as exc:
        raise InvalidIndex(f"{key} is not a catalogue index: {exc}") from None
    if not hashes:
        return np.empty(0, dtype=_HASH), np.empty(0, dtype=_HASH)
    return np.concatenate(hashes), np.concatenate(patients)


def read_index(storage: Storage, key: str, size: int, *, with_raw: bool = False) -> IndexArrays:
    """Read the arrays of the index ``key`` of ``size`` bytes.

    Ranged reads of the columns asked for: the raw hashes, the instances' sizes and the
    contents' owner arrays (what combining indexes and a full run need) only ``with_raw``;
    without, ``sop_size`` and the content arrays are empty (`DAILY_OWNER_KINDS`).

    Raises
    ------
    InvalidIndex
        When it is not an index.
    StorageError
        When it cannot be read.
    """
    file, _ = _open(storage, key, size)
    parts = _parts_of(key, file)

    owned = {}
    for kind in OWNER_KINDS:
        if kind in DAILY_OWNER_KINDS or with_raw:
            owned[kind], owned[f"{kind}_patient"] = _read_owners(file, key, kind)

    def column(name: str) -> np.ndarray:
        return _read_column(file, key, name)

    index = IndexArrays(
        **owned,
        sop=column("sop"),
        sop_size=column("sop_size") if with_raw else np.empty(0, dtype=np.int64),
        sop_part=column("sop_part"),
        target=column("target"),
        raw_day=column("raw_day") if with_raw else None,
        raw=column("raw") if with_raw else None,
        raw_size=column("raw_size") if with_raw else None,
        raw_time=column("raw_time") if with_raw else None,
        parts=parts,
    )
    lengths = {len(index.sop), len(index.sop_part), len(index.target)}
    if index.raw is not None and index.raw_day is not None:
        lengths |= {len(index.sop_size), len(index.raw), len(index.raw_day)}
    if len(lengths) != 1:
        raise InvalidIndex(f"{key}: its columns differ in length")
    return index


def combine_saved(storage: Storage, key: str, size: int, new: IndexArrays, path: str) -> SavedIndex:
    """Save to ``path`` the index ``key`` (of ``size`` bytes) with ``new``'s parts after its own.

    What `combined` then `save_index` make, one array at a time: each of the old index's
    arrays is read, merged with ``new``'s and spilled to a local file beside ``path`` before
    the next is read, and the index file is written from those files a row group at a time.
    So the memory is one array of the index (and ``new``), not the whole index twice.

    Raises
    ------
    InvalidIndex
        When ``key`` is not an index.
    StorageError
        When it cannot be read.
    """
    if any(getattr(new, name) is None for name in RAW_COLUMNS):
        raise ValueError("both indexes need their raw hashes to be combined")
    file, _ = _open(storage, key, size)
    parts = _parts_of(key, file)
    shift = np.uint32(len(parts))
    lengths: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as spill:

        def spilled(name: str, values: np.ndarray) -> None:
            values.tofile(os.path.join(spill, name))
            lengths[name] = len(values)

        def inserted(names: tuple[str, ...], at: np.ndarray, extra: dict | None = None) -> None:
            for name in names:
                values = getattr(new, name) if extra is None or name not in extra else extra[name]
                spilled(name, np.insert(_read_column(file, key, name), at, values))

        old = _read_column(file, key, "sop")
        at = np.searchsorted(old, new.sop, side="right")
        spilled("sop", np.insert(old, at, new.sop))
        del old
        inserted(("sop_size", "sop_part"), at, {"sop_part": new.sop_part + shift})
        old = _read_column(file, key, "target")
        spilled("target", np.insert(old, np.searchsorted(old, new.target), new.target))
        del old
        days, hashes = _read_column(file, key, "raw_day"), _read_column(file, key, "raw")
        assert new.raw_day is not None and new.raw is not None
        at = raw_positions(days, hashes, new.raw_day, new.raw, side="right")
        spilled("raw_day", np.insert(days, at, new.raw_day))
        spilled("raw", np.insert(hashes, at, new.raw))
        del days, hashes
        inserted(("raw_size", "raw_time"), at)
        for kind in OWNER_KINDS:
            (old_hashes, old_patients), (new_hashes, new_patients) = (
                _read_owners(file, key, kind),
                new.owners(kind),
            )
            pairs = owner_pairs(
                np.concatenate((old_hashes, new_hashes)),
                np.concatenate((old_patients, new_patients)),
            )
            del old_hashes, old_patients
            spilled(kind, pairs[0])
            spilled(f"{kind}_patient", pairs[1])
            del pairs

        def read(name: str, start: int, stop: int) -> np.ndarray:
            dtype = np.dtype(_INDEX_TYPES[name].to_pandas_dtype())
            with open(os.path.join(spill, name), "rb") as spilled_file:
                spilled_file.seek(start * dtype.itemsize)
                return np.fromfile(spilled_file, dtype=dtype, count=stop - start)

        every = [*parts, *new.parts]
        _write_index_file(path, lengths, read, every)
    return SavedIndex(path, lengths["target"], max(every) if every else None)


def raw_keys_filed(
    storage: Storage,
    key: str,
    size: int,
    wanted: tuple[np.ndarray, np.ndarray],
    sizes: np.ndarray,
    times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Tell which raw files the index holds as filed, and which of those are unchanged.

    The raw files are ``wanted``: their upload dates (`day_numbers`) and key hashes, of
    ``sizes`` bytes, last modified at ``times`` (seconds since 1970); the index is ``key``, of
    ``size`` bytes. Unchanged: the same size, not modified after their part was written. Two
    boolean arrays, read from the raw hashes of the row groups whose dates (their statistics)
    hold a wanted date, one at a time: the recent dates a daily run asks about are a row group
    or two whatever the warehouse's size.

    Raises
    ------
    InvalidIndex, StorageError
        As `read_index`.
    """
    days, hashes = wanted
    present = np.zeros(len(hashes), dtype=bool)
    same = np.zeros(len(hashes), dtype=bool)
    if not len(hashes):
        return present, same
    file, _ = _open(storage, key, size)
    asked = np.unique(days)
    try:
        column = file.schema_arrow.get_field_index("raw_day")
        for group in range(file.num_row_groups):
            statistics = file.metadata.row_group(group).column(column).statistics
            if statistics is not None and statistics.has_min_max:
                low, high = int(statistics.min), int(statistics.max)
                if not np.any((asked >= low) & (asked <= high)):
                    continue
            chunk = file.read_row_group(group, columns=list(RAW_COLUMNS))
            day = np.asarray(chunk.column(0).to_numpy(), dtype=_DAY)
            raw = np.asarray(chunk.column(1).to_numpy(), dtype=_HASH)
            raw_size = np.asarray(chunk.column(2).to_numpy(), dtype=np.int64)
            raw_time = np.asarray(chunk.column(3).to_numpy(), dtype=np.int64)
            hit, at = raw_matches(day, raw, days, hashes)
            present |= hit
            same |= hit & (raw_size[at] == sizes) & (times <= raw_time[at])
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InvalidIndex(f"{key} is not a catalogue index: {exc}") from None
    return present, same
