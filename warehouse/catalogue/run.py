"""One loader run's side of the image catalogue: what is filed already (from the catalogue's
index and the parts newer than it), the duplicate rule, and the rows of the images this run
files, written as parts.

**What is filed.** At its start a run reads the catalogue's compact index (`index`: the SOP
instances, warehouse keys and raw files of every image the parts it covers list, as sorted
64-bit hashes) and the parts written after it, only the columns it needs: a few requests
however large the warehouse, and no listing of its image folders. A part or index that cannot
be read is reported by name and makes the run incomplete; the run then lists the warehouse's
image folders once and reads the headers of the filed images no readable part names, so the
duplicate rule still knows them (`recover_unknown_images`).

**Parts.** A row is kept for each image this run files, made from the header it filed the
image by (no request per image), once the image and its metadata file are both written. Rows
are written as a part, ``catalogue/images/<UTC time>.parquet``, every `FLUSH_ROWS` rows or
`FLUSH_SECONDS` seconds and at the end of the run: a run stopped (or killed) mid-way leaves
in no part only the images filed since its last part. Those are filed again, idempotently, by
the next run that lists their raw files (their raw keys are in no part), and the weekly
reconcile catalogues any filed image no part lists. Nothing is written in a dry run.

**Duplicates.** The same SOPInstanceUID filed under another key is refused: "duplicate image"
when the sizes are equal, "conflicting duplicate" when they differ (the filed key is read from
the part that lists it, one GET, only when a hash matches). The shards of one sharded run do
not see each other's images: two copies of an instance under file names of different shards,
uploaded for the same run, are both filed.

**Owners.** Each StudyInstanceUID, SeriesInstanceUID and raw file content (``content_id``)
belongs to the patient it is filed under (`LoaderCatalogue.other_owner`: the index's owner
arrays, the newer parts' rows, this run's claims), so that the loader refuses the same study,
series or file under another patient (`warehouse.loader.decisions`). The shards of one run do
not see each other's claims either: two images of one study under two patients, of file names
of different shards, are both filed; the next run that reads their parts (or the next full run,
from the index) reports them (`LoaderCatalogue.shared_owners`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from warehouse.catalogue.index import (
    OWNER_KINDS,
    PART_COLUMNS,
    IndexArrays,
    InvalidIndex,
    PartArrays,
    arrays_of_parts,
    check_index,
    combined,
    contains,
    day_numbers,
    key_hash,
    key_hashes,
    other_owner,
    part_arrays,
    raw_keys_filed,
    raw_matches,
    read_index,
    read_pointer,
    settled_parts,
    shared_owners,
    write_index,
)
from warehouse.catalogue.rows import (
    COLUMNS,
    PARTS_PREFIX,
    HeaderProgress,
    InvalidPart,
    RowBuffer,
    filed_image_row,
    is_part_key,
    part_bytes,
    part_key,
    read_in_order,
    read_part,
    upload_date,
    with_metadata_size,
)
from warehouse.core.errors import StorageError
from warehouse.core.keys import RawKey
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.dicom.problems import HeaderProblem
from warehouse.storage.base import Storage

logger = logging.getLogger("warehouseloader")

#: Rows a run keeps before writing them as a part, and seconds between two parts at most.
FLUSH_ROWS = 1000
FLUSH_SECONDS = 60.0
#: The columns a run reads of the parts newer than the index.
_KNOWN_COLUMNS = [*PART_COLUMNS, "metadata_size"]
#: Newer parts a daily run keeps row by row; past them it takes them into the arrays as a
#: full run does (and writes a fresh index at its end).
RECENT_PARTS = 64
_SOP, _KEY = COLUMNS.index("SOPInstanceUID"), COLUMNS.index("warehouse_key")
_SIZE = COLUMNS.index("object_size")
_PATIENT = COLUMNS.index("PatientID")
_OWNED = {kind: COLUMNS.index(column) for kind, column in OWNER_KINDS.items()}


def _owned(row: tuple) -> dict[str, str | None]:
    """A catalogue row's UIDs and content id, by `OWNER_KINDS` key."""
    return {kind: row[at] for kind, at in _OWNED.items()}


#: What `LoaderCatalogue.raw_status` says of a raw file.
RAW_UNKNOWN, RAW_FILED, RAW_CHANGED = 0, 1, 2


def combined_catalogue(reports: list[dict | None]) -> dict:
    """The catalogue record of a sharded run from its parts' reports (None for a part that
    wrote none): the parts they wrote, complete when every part's record is."""
    records = [r.get("catalogue") if isinstance(r, dict) else None for r in reports]
    complete = bool(records) and all(isinstance(r, dict) and r.get("complete") for r in records)
    parts = sorted(k for r in records if isinstance(r, dict) for k in r.get("parts") or ())
    return {"complete": complete, "parts": parts}


@dataclass(frozen=True, slots=True)
class FiledCopy:
    """Where an SOP instance is filed already, and its size; whether its row names the raw
    file it was filed from (not one catalogued from its header), and its metadata file's
    size when the row holds it."""

    key: str
    size: int
    sourced: bool = True
    metadata_size: int | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    """A patient a study, series or file content is filed under (`LoaderCatalogue.other_owner`).

    Attributes
    ----------
    hashed : int
        `key_hash` of its pseudonym.
    patient : str or None
        Its pseudonym, when a row names it (this run's and the newer parts'; the index keeps
        hashes only).
    key : str or None
        The warehouse key of an image of it with that UID or content, when known.
    value : str or None
        The UID or content id, when known.
    """

    hashed: int
    patient: str | None = None
    key: str | None = None
    value: str | None = None


class LoaderCatalogue:
    """One loader run's catalogue (a service of the run, inside `LoaderState`).

    Parameters
    ----------
    report : RunReport
        The run's report (counts, problems, the catalogue record).
    submit : callable, optional
        ``submit(work, *args) -> Future``: the run's worker pool (reads run inline without).
    max_header_bytes : int, optional
        The header read limit (`dicom.reader.read_header`), for the recovery's reads.
    count_read : callable, optional
        ``count_read(requests, bytes)``: told of each header the recovery reads (the run's
        totals).
    clock : callable
        Seconds, monotonic (tests give their own).
    """

    def __init__(
        self,
        report: RunReport,
        submit: Callable | None = None,
        max_header_bytes: int | None = None,
        count_read: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.report = report
        self.rows = RowBuffer()
        #: Parts that cannot be read (key -> why): the images they list are read again.
        self.invalid_parts: dict[str, str] = {}
        self.written_parts: list[str] = []
        #: The parts newer than the index, read whole at the start of the run (with when each
        #: was written).
        self.newer_parts: dict[str, dt.datetime] = {}
        self._submit = submit
        self._max_header_bytes = max_header_bytes
        self._count_read = count_read
        self._clock = clock
        self._storage: Storage | None = None
        self._settings = None
        self._index = IndexArrays()
        self._index_pending = False
        self._pointer: dict | None = None
        #: The parts newer than the index, read whole (their few rows): hash -> copies.
        self._recent_sops: dict[int, list[FiledCopy]] = {}
        self._recent_targets: set[int] = set()
        self._recent_raw: dict[int, tuple[int, int]] = {}
        self._part_rows: dict[int, dict[int, list[FiledCopy]]] = {}
        self._run_copies: dict[int, list[FiledCopy]] = {}
        #: kind (`OWNER_KINDS`) -> hash -> the owners this run claimed, and the newer parts'.
        self._run_owners: dict[str, dict[int, list[Owner]]] = {k: {} for k in OWNER_KINDS}
        self._recent_owners: dict[str, dict[int, list[Owner]]] = {k: {} for k in OWNER_KINDS}
        self._pending: dict[str, list] = {}
        self._listed_keys: set[str] = set()
        #: The images of the rows kept since the last part.
        self._unflushed: set[str] = set()
        self._rows_since_flush = 0
        self._last_flush = clock()
        self._loaded = False
        #: A full run's catalogue: raw hashes in memory, newer parts in the arrays.
        self._whole = False
        self._base = IndexArrays()
        self._recent_parts: list[PartArrays] = []
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    # -- what is filed ------------------------------------------------------------------

    def load(self, storage: Storage, *, whole: bool = False) -> None:
        """Read the index (its instance and key arrays) and the parts newer than it.

        A full run (``whole``) reads the raw hashes too and takes the newer parts into the
        arrays: every question is then a binary search in memory, and at its end the run
        writes a fresh index (`publish`), so that the next runs read fewer parts.

        Raises
        ------
        StorageError
            When a listing or read fails (the run fails: rerun).
        """
        self._storage = storage
        try:
            self._pointer = read_pointer(storage)
        except InvalidIndex as exc:
            self._unusable("catalogue/index/latest.json", exc)
            self._pointer = None
        through = self._pointer.get("through") if self._pointer else None
        newer = {
            info.key: info.last_modified
            for info in storage.list_after(PARTS_PREFIX, through)
            if not info.link and is_part_key(info.key)
        }
        # many newer parts (no index yet, or none written for long): they are taken into the
        # arrays as a full run takes them, and a fresh index is written at the end
        self._whole = whole or len(newer) > RECENT_PARTS
        if self._pointer is not None:
            try:
                if self._whole:
                    self._index = read_index(
                        storage, self._pointer["index"], self._pointer["size"], with_raw=True
                    )
                else:
                    # a daily run reads the instance arrays when it first decides an image
                    check_index(storage, self._pointer["index"], self._pointer["size"])
                    self._index_pending = True
            except InvalidIndex as exc:
                self._unusable(self._pointer["index"], exc)
                self._pointer, self._index = None, IndexArrays()
        self._read_recent(storage, newer)

    def load_parts(
        self, storage: Storage, parts: dict[str, dt.datetime], pointer: dict | None
    ) -> None:
        """What a shard reads of the catalogue: the index and the newer parts its clinical phase
        read (by key: no listing).

        Raises
        ------
        StorageError
            When a read fails.
        """
        self._storage = storage
        self._pointer = pointer
        if pointer is not None:
            try:
                self._index = read_index(storage, pointer["index"], pointer["size"])
            except (InvalidIndex, KeyError, TypeError) as exc:
                self._unusable(str(pointer.get("index")), exc)
                self._pointer, self._index = None, IndexArrays()
        self._read_recent(storage, parts)

    def _instances(self) -> IndexArrays:
        """The index's arrays, read on first use in a daily run (a run that decides no image
        never reads them)."""
        if self._index_pending:
            with self._index_lock:
                if self._index_pending:
                    assert self._pointer is not None and self._storage is not None
                    key, size = self._pointer["index"], self._pointer["size"]
                    try:
                        self._index = read_index(self._storage, key, size)
                    except InvalidIndex as exc:
                        self._index = IndexArrays()
                        self._unusable(key, exc)
                    self._index_pending = False
        return self._index

    @property
    def pointer(self) -> dict | None:
        """The index read (its pointer), None when there is none."""
        return self._pointer

    def _read_recent(self, storage: Storage, newer: dict[str, dt.datetime]) -> None:
        self.newer_parts = dict(newer)
        parts: list[PartArrays] = []
        for part, data in read_in_order(storage, newer, self._work):
            table = self._read_part(part, data)
            if table is None:
                continue
            if self._whole:
                parts.append(part_arrays(part, newer[part], table))
            else:
                self._take_recent(table, int(newer[part].timestamp()))
        if self._whole:
            self._base, self._recent_parts = self._index, parts
            if parts:
                self._index = combined(self._base, arrays_of_parts(parts))
        self._loaded = True
        logger.info(
            "catalogue: %d images in the index, %d newer parts read",
            len(self._index),
            len(newer),
        )

    def _read_part(self, part: str, data: bytes) -> pa.Table | None:
        try:
            return read_part(data, _KNOWN_COLUMNS)
        except InvalidPart as exc:
            self._unusable(part, exc)
            return None

    def _take_recent(self, table, written: int) -> None:
        for raw, key, sop, copy in _copies_of(table):
            self._recent_targets.add(key_hash(key))
            if sop:
                self._recent_sops.setdefault(key_hash(sop), []).append(copy)
            if raw:
                self._recent_raw[key_hash(raw)] = (copy.size, written)
        keys = table.column("warehouse_key").to_pylist()
        patients = table.column("PatientID").to_pylist()
        for kind, column in OWNER_KINDS.items():
            values = table.column(column).to_pylist()
            for key, patient, value in zip(keys, patients, values, strict=True):
                if value and patient:
                    owner = Owner(key_hash(patient), patient, key, value)
                    _add_owner(self._recent_owners[kind], owner)

    def _unusable(self, key: str, exc: Exception) -> None:
        """A part or index that cannot be read: reported by name once, the run marked
        incomplete, and what it would have vouched for looked for again."""
        with self._lock:
            if key in self.invalid_parts:
                return
            self.invalid_parts[key] = str(exc)
        self.report.skip(
            key, Reason.INVALID_PART, f"{exc}; the filed images it lists are read again"
        )
        self.report.fail(f"catalogue part {key} cannot be used ({exc}): an operator should look")

    def raw_status(self, items: list[tuple[RawKey, int]]) -> list[int]:
        """What the catalogue says of each raw file: `RAW_FILED` (filed from it, unchanged
        since: the same size, not modified after its part was written), `RAW_CHANGED` (filed
        from it, changed since) or `RAW_UNKNOWN`.

        Raises
        ------
        StorageError
            When the index cannot be read.
        """
        if not items:
            return []
        wanted = key_hashes(raw.key for raw, _ in items)
        days = day_numbers(upload_date(raw.upload_date or None) for raw, _ in items)
        sizes = np.fromiter((size for _, size in items), dtype=np.int64, count=len(items))
        times = np.fromiter(
            (int(dt.datetime.fromisoformat(raw.modified).timestamp()) for raw, _ in items),
            dtype=np.int64,
            count=len(items),
        )
        filed = np.zeros(len(items), dtype=bool)
        known = np.zeros(len(items), dtype=bool)
        index = self._index
        if self._whole and index.raw is not None and len(index.raw):
            assert index.raw_size is not None and index.raw_time is not None
            assert index.raw_day is not None
            known, at = raw_matches(index.raw_day, index.raw, days, wanted)
            filed = known & (index.raw_size[at] == sizes) & (times <= index.raw_time[at])
        elif self._pointer is not None and not self._whole:
            key, size = self._pointer["index"], self._pointer["size"]
            try:
                known, filed = raw_keys_filed(
                    self._storage, key, size, (days, wanted), sizes, times
                )
            except InvalidIndex as exc:
                self._unusable(key, exc)
        status = []
        for n, hashed in enumerate(wanted.tolist()):
            recent = self._recent_raw.get(hashed)
            unchanged = recent is not None and recent[0] == sizes[n] and times[n] <= recent[1]
            if filed[n] or unchanged:
                status.append(RAW_FILED)
            elif recent is not None or known[n]:
                status.append(RAW_CHANGED)
            else:
                status.append(RAW_UNKNOWN)
        return status

    def unfiled(self, items: list[tuple[RawKey, int]]) -> list[bool]:
        """Tell which raw images are not known filed unchanged (`raw_status`): the ones a
        full run's listing keeps."""
        return [status != RAW_FILED for status in self.raw_status(items)]

    def target_filed(self, key: str) -> bool:
        """Whether the catalogue lists an image filed at ``key`` (image and metadata written)."""
        hashed = key_hash(key)
        if hashed in self._recent_targets:
            return True
        index = self._instances()
        return bool(contains(index.target, np.array([hashed], dtype=np.uint64))[0])

    def filed_copy(self, sop: str | None, image_key: str) -> FiledCopy | None:
        """Another key that SOP instance ``sop`` is filed under (by the catalogue or earlier in
        this run); None when there is none.

        Raises
        ------
        StorageError
            When the part that lists a matching instance cannot be read.
        """
        if not sop:
            return None
        hashed = key_hash(sop)
        for copy in [*self._run_copies.get(hashed, ()), *self._recent_sops.get(hashed, ())]:
            if copy.key != image_key:
                return copy
        index = self._instances()
        start = int(np.searchsorted(index.sop, np.uint64(hashed), side="left"))
        while start < len(index.sop) and int(index.sop[start]) == hashed:
            part = index.parts[int(index.sop_part[start])]
            for copy in self._copies_in_part(part, hashed):
                if copy.key != image_key:
                    return copy
            start += 1
        return None

    def _copies_in_part(self, part: str, hashed: int) -> list[FiledCopy]:
        number = self._instances().parts.index(part)
        if number not in self._part_rows:
            try:
                table = read_part(self._storage.read(part), _KNOWN_COLUMNS)
            except InvalidPart as exc:
                self._unusable(part, exc)
                table = None
            found: dict[int, list[FiledCopy]] = {}
            if table is not None:
                for _, _, sop, copy in _copies_of(table):
                    if sop:
                        found.setdefault(key_hash(sop), []).append(copy)
            self._part_rows[number] = found
        return self._part_rows[number].get(hashed, [])

    def claim_instance(
        self, sop: str | None, image_key: str, size: int, *, sourced: bool = True
    ) -> None:
        """SOP instance ``sop`` is filed at ``image_key`` (by this run, or found so);
        ``sourced`` when this run's row of it names the raw file it was filed from."""
        if sop:
            copy = FiledCopy(image_key, size, sourced)
            with self._lock:
                self._run_copies.setdefault(key_hash(sop), []).append(copy)

    def other_owner(self, kind: str, value: str | None, patient: str) -> Owner | None:
        """Return another patient than ``patient`` that ``value`` is filed under.

        ``value`` is a StudyInstanceUID, a SeriesInstanceUID or a content id (``kind``, a key
        of `OWNER_KINDS`); filed by this run, in the newer parts or in the index. None when
        there is none (or no value). No request: the index's owner arrays are read with its
        instance arrays.
        """
        if not value:
            return None
        hashed, mine = key_hash(value), key_hash(patient)
        with self._lock:
            known = [
                *self._run_owners[kind].get(hashed, ()),
                *self._recent_owners[kind].get(hashed, ()),
            ]
        for owner in known:
            if owner.hashed != mine:
                return owner
        other = other_owner(*self._instances().owners(kind), hashed, mine)
        return None if other is None else Owner(other, value=value)

    def claim_owners(self, values: dict[str, str | None], patient: str, image_key: str) -> None:
        """Record that this run files ``image_key`` of ``patient`` with ``values``.

        ``values``: `OWNER_KINDS` key -> the image's UID or content id; each is that
        patient's from now on.
        """
        with self._lock:
            for kind, value in values.items():
                if value:
                    owner = Owner(key_hash(patient), patient, image_key, value)
                    _add_owner(self._run_owners[kind], owner)

    def shared_owners(self) -> list[tuple[str, list[Owner]]]:
        """Return what is filed under more than one patient already.

        ``(kind, owners)`` of each UID or content that the newer parts (a daily run) or the
        whole index (a full run) pair with two patients or more: what runs that could not see
        each other filed (the shards of one run). The owners by pseudonym (a full run knows
        their hashes only).
        """
        shared: list[tuple[str, list[Owner]]] = []
        for kind in OWNER_KINDS:
            if self._whole:
                for _, patients in shared_owners(*self._index.owners(kind)):
                    shared.append((kind, [Owner(patient) for patient in patients]))
                continue
            for owners in self._recent_owners[kind].values():
                if len(owners) > 1:
                    ordered = sorted(owners, key=lambda owner: (owner.patient or "", owner.key))
                    shared.append((kind, ordered))
        return shared

    def _copies_at(self, sop: str, image_key: str) -> list[FiledCopy]:
        """Every row the catalogue (and this run) holds of instance ``sop`` filed at
        ``image_key``."""
        hashed = key_hash(sop)
        with self._lock:
            copies = [*self._run_copies.get(hashed, ()), *self._recent_sops.get(hashed, ())]
        index = self._instances()
        start = int(np.searchsorted(index.sop, np.uint64(hashed), side="left"))
        while start < len(index.sop) and int(index.sop[start]) == hashed:
            part = index.parts[int(index.sop_part[start])]
            copies.extend(self._copies_in_part(part, hashed))
            start += 1
        return [copy for copy in copies if copy.key == image_key]

    def source_found(self, row: tuple) -> bool:
        """Catalogue a raw file as the source of the image it is filed as already, when no row
        of that image names one.

        This run decided, by the key grammar, that the raw file's target is filed already;
        ``row`` is that image's row as the raw file gives it (its raw key, upload date and
        header). When every row of the image names no raw file (it was catalogued from its
        header) and holds the same instance of the same size, ``row`` (with the filed metadata
        file's size) joins this run's part: the raw key is then known filed, and not read
        again once its upload folder is closed; the newest row of an image is the merged
        catalogue's. A part holds one row per image, so an earlier row of this run's still
        waiting for its part is written first.

        Returns
        -------
        bool
            Whether ``row`` joins the part.

        Raises
        ------
        StorageError
            When a part that lists the instance cannot be read.
        """
        sop, key, size = row[_SOP], row[_KEY], row[_SIZE]
        if not sop:
            return False
        copies = self._copies_at(sop, key)
        if not copies or any(copy.sourced or copy.size != size for copy in copies):
            return False
        metadata = [copy.metadata_size for copy in copies if copy.metadata_size is not None]
        if metadata:
            row = with_metadata_size(row, metadata[0])
        with self._lock:
            waiting = key in self._unflushed
        if waiting:
            if self._storage is None or self._settings is None:
                return False
            self.flush(self._storage, self._settings)
        self.claim_instance(sop, key, size)
        self._add(row, again=True)
        self.report.count("images already filed whose raw key is now catalogued")
        return True

    @property
    def images_known(self) -> int:
        """Images the index and the newer parts list."""
        if self._index_pending and self._pointer is not None:
            return int(self._pointer.get("images") or 0) + len(self._recent_targets)
        return len(self._index) + len(self._recent_targets)

    def known_targets(self) -> np.ndarray:
        """The warehouse key hashes of every image the catalogue lists, sorted."""
        recent = np.fromiter(self._recent_targets, dtype=np.uint64)
        return np.union1d(self._instances().target, recent)

    # -- recovery: filed images no readable part lists ---------------------------------------

    def recover_unknown_images(self, storage: Storage, filed: Mapping[str, tuple[int, int]]) -> int:
        """Catalogue the filed images no readable part lists.

        ``filed`` gives image key -> ``(size, metadata file size)``, from a listing of the
        warehouse. Their headers are read through the pool, their rows join this run's parts
        (raw key unknown: `source_found` may name it later) and their instances the duplicate
        rule.

        Returns
        -------
        int
            The images recovered.
        """
        keys = list(filed)
        listed = contains(self.known_targets(), key_hashes(keys))
        unknown = sorted(
            (key, filed[key][0]) for key, known in zip(keys, listed, strict=True) if not known
        )
        if not unknown:
            return 0
        progress = HeaderProgress(len(unknown), logger, "catalogue: filed images in no part")
        limit = self._max_header_bytes
        futures = [
            (
                key,
                size,
                self._work(
                    filed_image_row,
                    storage,
                    key,
                    size,
                    limit,
                    filed[key][1],
                ),
            )
            for key, size in unknown
        ]
        recovered = 0
        for key, size, future in futures:
            try:
                row, requests, read = future.result()
            except (HeaderProblem, StorageError) as exc:
                logger.warning("catalogue: %s left out (%s)", key, exc)
                self.report.count("filed images left out of the catalogue")
            else:
                if self._count_read is not None:
                    self._count_read(requests, read)
                self._add(row)
                copy = FiledCopy(key, size, sourced=False, metadata_size=filed[key][1])
                with self._lock:
                    if row[_SOP]:
                        self._run_copies.setdefault(key_hash(row[_SOP]), []).append(copy)
                    self._recent_targets.add(key_hash(key))
                if row[_PATIENT]:
                    self.claim_owners(_owned(row), row[_PATIENT], key)
                recovered += 1
            progress.step()
        self.report.count("filed images in no part catalogued", recovered)
        return recovered

    def _compact(self, storage: Storage, now: dt.datetime) -> None:
        """Write a fresh index: the one read, with the newer parts that have settled."""
        settled = settled_parts(self._recent_parts, None, now)
        if not settled:
            return
        every = len(settled) == len(self._recent_parts)  # (then it is the run's own arrays)
        fresh = self._index if every else combined(self._base, arrays_of_parts(settled))
        try:
            key = write_index(storage, fresh, now)
        except StorageError as exc:
            logger.warning("catalogue: the fresh index could not be written (%s)", exc)
            self.report.count("catalogue index not written (the next runs read more parts)")
            return
        logger.info("catalogue: fresh index %s covers %d more parts", key, len(settled))

    def _work(self, work, *args) -> Future:
        if self._submit is not None:
            return self._submit(work, *args)
        future: Future = Future()
        try:
            future.set_result(work(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as a pool would
            future.set_exception(exc)
        return future

    # -- the images of this run ---------------------------------------------------------

    def expect(self, row: tuple, targets: list[str]) -> None:
        """Keep ``row`` until every one of ``targets`` (the image, its metadata file) is
        written; then it goes into the next part."""
        entry = [row, len(targets)]
        with self._lock:
            for target in targets:
                self._pending[target] = entry
        if not targets:
            self._add(row)

    def written(self, target: str, metadata_size: int | None = None) -> None:
        """``target`` is written (``metadata_size``: its size, when it is the row's metadata
        file): a row whose objects are all written joins the next part."""
        with self._lock:
            entry = self._pending.pop(target, None)
            if entry is None:
                return
            if metadata_size is not None:
                entry[0] = with_metadata_size(entry[0], metadata_size)
            entry[1] -= 1
            done = entry[1] == 0
        if done:
            self._add(entry[0])

    def _add(self, row: tuple, *, again: bool = False) -> None:
        """Keep ``row`` for the next part: the first of its image in this run, or ``again``
        a later one (`source_found`: its earlier row is in a part already)."""
        with self._lock:
            if row[_KEY] in self._listed_keys and not again:
                return
            self._listed_keys.add(row[_KEY])
            self._unflushed.add(row[_KEY])
            self.rows.add(row)
            self._rows_since_flush += 1
            due = self._rows_since_flush >= FLUSH_ROWS or (
                self._clock() - self._last_flush >= FLUSH_SECONDS
            )
        if due and self._storage is not None and self._settings is not None:
            self.flush(self._storage, self._settings)

    def prepare(self, storage: Storage, settings) -> None:
        """Where this run's parts go while it runs (flushed every `FLUSH_ROWS` rows)."""
        self._storage, self._settings = storage, settings

    def flush(self, storage: Storage, settings, now: dt.datetime | None = None) -> str | None:
        """Write the rows kept since the last part as a part; its key (None when there were
        none, or in a dry run)."""
        with self._flush_lock:
            with self._lock:
                table = self.rows.take()
                self._unflushed.clear()
                self._rows_since_flush = 0
                self._last_flush = self._clock()
            if not table.num_rows:
                return None
            key = part_key(now or dt.datetime.now(dt.UTC), settings.shard)
            data = part_bytes(table)
            if storage.read_only:
                storage.write(key, data, "application/vnd.apache.parquet")  # (says it would)
                self.report.count("images catalogued (dry run: not written)", table.num_rows)
                return None
            try:
                storage.write(key, data, "application/vnd.apache.parquet")
            except StorageError as exc:
                self.report.skip(key, Reason.WRITE_FAILED, f"catalogue part: {exc}")
                return None
            self.written_parts.append(key)
            self.report.count("images catalogued", table.num_rows)
            return key

    # -- the end of the run -------------------------------------------------------------

    def publish(self, storage: Storage, settings, now: dt.datetime | None = None) -> str:
        """Write the last part (after the graph); record in the report the parts this run
        wrote and whether they list everything it filed.

        Returns
        -------
        str
            A summary line saying where the parts are (empty when none was written).
        """
        if not self._loaded:
            return ""
        self.flush(storage, settings, now)
        failed = any(
            p["reason"] == Reason.WRITE_FAILED.value and p["key"].startswith(PARTS_PREFIX)
            for p in self.report.problems
        )
        complete = not storage.read_only and not self.invalid_parts and not failed
        self.report.catalogue = {"complete": complete, "parts": list(self.written_parts)}
        if self._whole and complete and self.report.completed:
            self._compact(storage, now or dt.datetime.now(dt.UTC))
        if not self.written_parts:
            return ""
        images = self.report.counts.get("images catalogued", 0)
        where = self.written_parts[0] if len(self.written_parts) == 1 else PARTS_PREFIX
        return (
            f"\n  catalogue: {images:,} images in {len(self.written_parts)} part(s): "
            f"{storage.url}/{where}"
        )


def _add_owner(owners: dict[int, list[Owner]], owner: Owner) -> None:
    """Keep ``owner`` under its value's hash: one per patient (its first image found)."""
    assert owner.value is not None
    found = owners.setdefault(key_hash(owner.value), [])
    if all(known.hashed != owner.hashed for known in found):
        found.append(owner)


def _copies_of(table: pa.Table) -> Iterator[tuple[str | None, str, str | None, FiledCopy]]:
    """Each row of a part read with `_KNOWN_COLUMNS`: its raw key, warehouse key, instance and
    where that instance is filed."""
    rows = zip(
        table.column("raw_key").to_pylist(),
        table.column("warehouse_key").to_pylist(),
        table.column("SOPInstanceUID").to_pylist(),
        table.column("object_size").to_pylist(),
        table.column("metadata_size").to_pylist(),
        strict=True,
    )
    for raw, key, sop, size, metadata in rows:
        yield raw, key, sop, FiledCopy(key, int(size or 0), raw is not None, metadata)
