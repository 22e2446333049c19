"""The loader's side of the image catalogue: one part per run, and the duplicate rule.

A run keeps one compact row per image it files, made from the header it filed the image by
(no request per image), and writes them as one part, ``catalogue/images/<UTC time>.parquet``,
after the graph, once every image and metadata file the part lists is written: one PUT per
run that files images, none for a run that files nothing, none in a dry run.

**A run stopped before its part.** Runs hold the warehouse one at a time (the run lease) and a
part is written after every object it lists. Each run's report (``latest.json``) records its
catalogue: the parts it wrote, whether they list everything it filed, the *cutoff* it used and
(when complete) the newest listing time it saw. The next run lists ``catalogue/images/`` (one
LIST per 1,000 parts) and takes as its cutoff the newest of those times when that run's
catalogue was complete (else the cutoff that run used; none without such a report: then every
filed image is checked). Every filed image listed before the cutoff is in a part; one listed at
or after it that no later part names (those parts' key columns are read: none in a run that
follows a complete one) was filed by a run that stopped before its part, however many processes
that run had. This run reads those images' headers (one ranged GET each, through the worker
pool, before it decides its first image, so the duplicate rule knows them) and lists them in
its part, their raw key and upload date unknown (null). On S3,
whose listing times are whole seconds, a run writes its part at least a second after its last
image, so that the cutoff second holds none of them. In a sharded run the clinical phase does
this (and writes its own part before the shards start), the shards do not.

**Duplicates.** The same SOPInstanceUID filed under another key is refused: "duplicate
image" when the sizes are equal, "conflicting duplicate" when they differ. The SOP instances
already filed come from the parts, read once per run and only when a run has an image header
to decide (a rerun with nothing new reads none); they are kept as 64-bit hashes in NumPy
arrays (24 bytes an image), and a hash that matches is checked against the part's row. The
shards of one sharded run do not see each other's images: two copies of an instance under
file names of different shards, uploaded for the same run, are both filed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    read_part,
)
from warehouse.core.config import CLINICAL_PHASE
from warehouse.core.errors import StorageError
from warehouse.core.keys import RawKey, parse_image_key, parse_warehouse_key
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.dicom.problems import HeaderProblem
from warehouse.listing.warehouse import WarehouseIndex, index_warehouse
from warehouse.storage.base import ObjectInfo, Storage

logger = logging.getLogger("warehouseloader")

#: Where a row holds the instance and the filed object's size.
_SOP, _SIZE = COLUMNS.index("SOPInstanceUID"), COLUMNS.index("object_size")


def catalogue_cutoff(
    previous: dict | None, parts: dict[str, dt.datetime]
) -> tuple[dt.datetime | None, frozenset[str]]:
    """The cutoff of a run's check for images no part lists, from the last run's report.

    Parameters
    ----------
    previous : dict or None
        The last run's report (``latest.json``), None when there is none.
    parts : dict
        Part key -> its listing time, of every part in the warehouse.

    Returns
    -------
    tuple
        ``(cutoff, settled)``: every filed image listed before ``cutoff`` is in a part (None:
        check them all); the parts in ``settled`` (the last run's, when its catalogue was
        complete) name no image listed at or after it. A complete record gives the newest of
        its parts' listing times and its ``listed_until`` (the newest object that run listed:
        all of them were then in parts); an incomplete one, the cutoff that run used.
    """
    info = previous.get("catalogue") if isinstance(previous, dict) else None
    if not isinstance(info, dict):
        return None, frozenset()
    written = info.get("parts")
    try:
        used, listed = _time(info.get("cutoff")), _time(info.get("listed_until"))
    except (TypeError, ValueError):
        return None, frozenset()
    if not isinstance(written, list) or not all(isinstance(k, str) for k in written):
        return None, frozenset()
    if info.get("complete") is True and all(k in parts for k in written):
        times = [parts[k] for k in written] + [t for t in (used, listed) if t is not None]
        return (max(times) if times else None), frozenset(written)
    return used, frozenset()


def _time(text) -> dt.datetime | None:
    """A record's time (ISO 8601 with its zone), None for none; ValueError for another."""
    if text is None:
        return None
    time = dt.datetime.fromisoformat(text)
    if time.tzinfo is None:
        raise ValueError(f"{text} has no time zone")
    return time


def combined_catalogue(reports: list[dict | None]) -> dict:
    """The catalogue record of a sharded run from its parts' reports (None for a part that
    wrote none): the parts they wrote; complete when every part's record is; the cutoff of
    the clinical phase (the part that looked for a stopped run's images)."""
    records = [r.get("catalogue") if isinstance(r, dict) else None for r in reports]
    complete = bool(records) and all(isinstance(r, dict) and r.get("complete") for r in records)
    cutoff = None
    listed = None
    for report, record in zip(reports, records, strict=True):
        if isinstance(record, dict) and report.get("phase") == CLINICAL_PHASE:
            cutoff, listed = record.get("cutoff"), record.get("listed_until")
    parts = sorted(k for r in records if isinstance(r, dict) for k in r.get("parts") or ())
    return {
        "cutoff": cutoff,
        "listed_until": listed if complete else None,
        "complete": complete,
        "parts": parts,
    }


@dataclass(frozen=True, slots=True)
class FiledCopy:
    """Where an SOP instance is filed already, and its size."""

    key: str
    size: int


class _FiledInstances:
    """The SOP instances the catalogue parts list: hashes sorted in NumPy arrays, each with
    its size, part and row; a match is confirmed from the part itself (read again, cached)."""

    def __init__(self, storage: Storage, parts: list[str], submit, on_invalid):
        self._storage = storage
        self._parts = parts
        self._on_invalid = on_invalid
        self._rows: dict[int, list] = {}
        hashes, sizes, where = [], [], []
        futures = [submit(self._read, part) for part in parts]
        for number, future in enumerate(futures):
            table = future.result()
            if table is None:
                continue
            uids = table.column("SOPInstanceUID").to_pylist()
            hashes.append(np.fromiter((hash(u) for u in uids), dtype=np.int64, count=len(uids)))
            sizes.append(table.column("object_size").to_numpy(zero_copy_only=False))
            rows = np.arange(len(uids), dtype=np.int64)
            where.append((np.int64(number) << 32) | rows)
        order_hashes = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.int64)
        order = np.argsort(order_hashes, kind="stable")
        self._hashes = order_hashes[order]
        self._sizes = (np.concatenate(sizes) if sizes else np.empty(0, dtype=np.int64))[order]
        self._where = (np.concatenate(where) if where else np.empty(0, dtype=np.int64))[order]

    def _read(self, part: str):
        try:
            return read_part(self._storage.read(part), ["SOPInstanceUID", "object_size"])
        except InvalidPart as exc:
            self._on_invalid(part, exc)
            return None

    def __len__(self) -> int:
        return len(self._hashes)

    def copies(self, sop: str) -> list[FiledCopy]:
        """The filed copies of ``sop`` that the parts list."""
        start = int(np.searchsorted(self._hashes, hash(sop), side="left"))
        found = []
        while start < len(self._hashes) and self._hashes[start] == hash(sop):
            where = int(self._where[start])
            number, row = where >> 32, where & 0xFFFFFFFF
            uids, keys = self._part_rows(number)
            if uids[row] == sop:
                found.append(FiledCopy(keys[row], int(self._sizes[start])))
            start += 1
        return found

    def _part_rows(self, number: int) -> list:
        if number not in self._rows:
            table = read_part(
                self._storage.read(self._parts[number]), ["SOPInstanceUID", "warehouse_key"]
            )
            self._rows[number] = [
                table.column("SOPInstanceUID").to_pylist(),
                table.column("warehouse_key").to_pylist(),
            ]
        return self._rows[number]


def _iso(time: dt.datetime | None) -> str | None:
    return time.isoformat() if time is not None else None


class LoaderCatalogue:
    """One loader run's catalogue: the rows of the images it files, the images a stopped run
    left out of the catalogue, and the SOP instances already filed (a service of the run,
    inside `LoaderState`).

    Parameters
    ----------
    report : RunReport
        The run's report (counts, the catalogue record).
    submit : callable, optional
        ``submit(work, *args) -> Future``: the run's worker pool (reads run inline without).
    max_header_bytes : int, optional
        The header read limit (`dicom.read_header`).
    """

    def __init__(self, report: RunReport, submit=None, max_header_bytes: int | None = None):
        self.report = report
        self.parts: list[str] = []
        #: Part key -> its listing time.
        self.part_times: dict[str, dt.datetime] = {}
        #: Filed images listed at or after it may be in no part (None: any may be).
        self.cutoff: dt.datetime | None = None
        self.rows = RowBuffer()
        #: Filed images no part lists (image key -> size): a stopped run's.
        self.orphans: dict[str, int] = {}
        self._settled: frozenset[str] = frozenset()
        self._storage: Storage | None = None
        self._index: WarehouseIndex | None = None
        self._submit = submit
        self._max_header_bytes = max_header_bytes
        self._recent: dict[str, int] = {}
        self._orphans_read = False
        self._unread: set[str] = set()
        self._pending: dict[str, list] = {}
        self._run_copies: dict[int, list[FiledCopy]] = {}
        self._filed: _FiledInstances | None = None
        self._filed_error: StorageError | None = None
        self._listed_keys: set[str] = set()
        #: Parts that cannot be read (key -> why): the images they list are read again.
        self.invalid_parts: dict[str, str] = {}
        self._invalid_checked = False
        self._last_write: float | None = None
        #: The newest listing time of the warehouse side this run listed.
        self._listed_until: dt.datetime | None = None
        self._lock = threading.Lock()
        self._orphan_lock = threading.Lock()

    # -- the listing --------------------------------------------------------------------

    def index_warehouse(
        self, storage: Storage, workers: int, previous=None, *, find_orphans: bool = True
    ) -> WarehouseIndex:
        """List the catalogue parts, then the warehouse side once (`listing.index_warehouse`),
        noting the filed images no part lists (`catalogue_cutoff`).

        Parameters
        ----------
        storage : Storage
            The warehouse.
        workers : int
            Parallel listings.
        previous : callable, optional
            Returns the last run's report (None when there is none).
        find_orphans : bool
            Look for images a stopped run left out (not in an image shard: its run's
            clinical phase did).

        Raises
        ------
        StorageError
            When a listing or a part's read fails.
        """
        self._storage = storage
        for info in storage.list(PARTS_PREFIX):
            if not info.link and is_part_key(info.key):
                self.part_times[info.key] = info.last_modified
        self.parts = sorted(self.part_times)
        if find_orphans:
            report = previous() if previous is not None else None
            self.cutoff, self._settled = catalogue_cutoff(report, self.part_times)
        index = index_warehouse(storage, workers, observe=self._observe if find_orphans else None)
        self._index = index
        recent = {
            key: size
            for key, size in self._recent.items()
            if parse_image_key(key).metadata_key in index.keys
        }
        self._recent = {}
        if recent:
            named = self._named_by_parts(
                part
                for part in self.parts
                if part not in self._settled
                and (self.cutoff is None or self.part_times[part] >= self.cutoff)
            )
            self.orphans = {key: size for key, size in recent.items() if key not in named}
        if self.orphans:
            logger.info(
                "catalogue: %d filed images are in no catalogue part (a run stopped before "
                "writing it, or filed before the catalogue): this run's part lists them",
                len(self.orphans),
            )
        return index

    def _observe(self, info: ObjectInfo) -> None:
        if self._listed_until is None or info.last_modified > self._listed_until:
            self._listed_until = info.last_modified  # (a race keeps a smaller one: still true)
        if not info.link and (self.cutoff is None or info.last_modified >= self.cutoff):
            parsed = parse_warehouse_key(info.key)
            if parsed is not None and parsed.kind == "image":
                self._recent[info.key] = info.size

    def _part_unusable(self, part: str, exc: Exception) -> None:
        """A part that cannot be read: reported by name once, the run marked incomplete, and
        the images it would have vouched for treated as unknown (`_read_orphans`)."""
        with self._lock:
            if part in self.invalid_parts:
                return
            self.invalid_parts[part] = str(exc)
        self.report.skip(
            part, Reason.INVALID_PART, f"{exc}; the filed images it lists are read again"
        )
        self.report.fail(f"catalogue part {part} cannot be used ({exc}): an operator should look")

    def _named_by_parts(self, parts) -> set[str]:
        def names(part: str) -> list[str]:
            try:
                table = read_part(self._storage.read(part), ["warehouse_key"])
            except InvalidPart as exc:
                self._part_unusable(part, exc)
                return []
            return table.column("warehouse_key").to_pylist()

        futures = [self._submit_work(names, part) for part in parts]
        return {key for future in futures for key in future.result()}

    def _read_orphans(self) -> None:
        """Read the headers of the images no part lists (once, through the pool): their rows
        join this run's part, their instances the duplicate rule."""
        with self._orphan_lock:
            if self.invalid_parts and not self._invalid_checked:
                self._invalid_checked = True
                self._orphans_read = False
                valid = [part for part in self.parts if part not in self.invalid_parts]
                named = self._named_by_parts(valid) | self._listed_keys
                unknown = self._index.filed_images().items()
                self.orphans.update((k, size) for k, size in unknown if k not in named)
            if self._orphans_read:
                return
            self._orphans_read = True
            with self._lock:
                done = self._listed_keys | self._unread
            wanted = sorted((k, size) for k, size in self.orphans.items() if k not in done)
            if not wanted:
                return
            progress = HeaderProgress(len(wanted), logger, "catalogue: filed images in no part")
            storage, limit = self._storage, self._max_header_bytes
            futures = []
            for key, size in wanted:
                work = self._submit_work(filed_image_row, storage, key, size, limit)
                futures.append((key, size, work))
            for key, size, future in futures:
                try:
                    row = future.result()
                except (HeaderProblem, StorageError) as exc:
                    logger.warning(
                        "catalogue: %s left out (%s); dataprocess catalogues it", key, exc
                    )
                    self._unread.add(key)
                else:
                    self._add(row)
                    self.claim_instance(row[_SOP], key, size)
                progress.step()

    def filed_sources(self, candidates: list[tuple[RawKey, int]]) -> frozenset[str]:
        """The raw keys among ``candidates`` that a part names as the source of a filed image,
        of the same size and not modified after that part was written (one GET per part,
        only when there are candidates: `listing.shared_names_filed`).

        Raises
        ------
        StorageError
            When a part cannot be read.
        """
        if not candidates or not self.parts:
            return frozenset()
        wanted = {
            raw.key: (size, dt.datetime.fromisoformat(raw.modified)) for raw, size in candidates
        }
        keys = pa.array(sorted(wanted), type=pa.string())

        def matches(part: str) -> list[tuple[str, int]]:
            try:
                table = read_part(self._storage.read(part), ["raw_key", "object_size"])
            except InvalidPart as exc:
                self._part_unusable(part, exc)
                return []
            found = table.filter(pc.is_in(table.column("raw_key"), value_set=keys))
            pairs = zip(
                found.column("raw_key").to_pylist(),
                found.column("object_size").to_pylist(),
                strict=True,
            )
            when = self.part_times[part]
            return [
                (key, size)
                for key, size in pairs
                if wanted[key][0] == size and wanted[key][1] <= when
            ]

        futures = [self._submit_work(matches, part) for part in self.parts]
        return frozenset(key for future in futures for key, _ in future.result())

    # -- the images of this run ---------------------------------------------------------

    def filed_copy(self, sop: str | None, image_key: str) -> FiledCopy | None:
        """Another key that SOP instance ``sop`` is filed under (by the catalogue parts, the
        images no part lists, or earlier in this run), still in the warehouse; None when
        there is none.

        Raises
        ------
        StorageError
            When the parts cannot be read (the image cannot be decided).
        """
        instances = self._instances()  # (first: a part it cannot read makes images unknown)
        self._read_orphans()
        if not sop:
            return None
        for copy in self._run_copies.get(hash(sop), ()):
            if copy.key != image_key:
                return copy
        for copy in instances.copies(sop):
            if copy.key != image_key and copy.key in self._index.keys:
                return copy
        return None

    def _instances(self) -> _FiledInstances:
        if self._filed is None and self._filed_error is None:
            try:
                self._filed = _FiledInstances(
                    self._storage, self.parts, self._submit_work, self._part_unusable
                )
            except StorageError as exc:
                self._filed_error = exc
        if self._filed_error is not None:
            raise self._filed_error
        return self._filed

    def _submit_work(self, work, *args):
        if self._submit is not None:
            return self._submit(work, *args)
        future: Future = Future()
        try:
            future.set_result(work(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, as a pool would
            future.set_exception(exc)
        return future

    def claim_instance(self, sop: str | None, image_key: str, size: int) -> None:
        """SOP instance ``sop`` is filed at ``image_key`` (by this run, or found so)."""
        if sop:
            with self._lock:
                self._run_copies.setdefault(hash(sop), []).append(FiledCopy(image_key, size))

    def expect(self, row: tuple, targets: list[str]) -> None:
        """Keep ``row`` until every one of ``targets`` (the image, its metadata file) is
        written; then it goes into the part."""
        entry = [row, len(targets)]
        with self._lock:
            for target in targets:
                self._pending[target] = entry
        if not targets:
            self._add(row)

    def written(self, target: str) -> None:
        """``target`` is written: a row whose objects are all written joins the part."""
        with self._lock:
            self._last_write = time.monotonic()
            entry = self._pending.pop(target, None)
            if entry is None:
                return
            entry[1] -= 1
            done = entry[1] == 0
        if done:
            self._add(entry[0])

    def already_filed(self, image_key: str, row_of) -> None:
        """An image this run found filed already: if no part lists it and its header could
        not be read for that, list it from the header just read (``row_of()``)."""
        with self._lock:
            known = image_key in self._unread
            self._unread.discard(image_key)
        if known:
            self._add(row_of())

    def _add(self, row: tuple) -> None:
        with self._lock:
            if row[0] not in self._listed_keys:
                self._listed_keys.add(row[0])
                self.rows.add(row)

    # -- the end of the run -------------------------------------------------------------

    def publish(self, storage: Storage, settings, now: dt.datetime | None = None) -> str:
        """Write this run's part (after the graph): the rows of the images it filed, and of
        those no part listed. Nothing when there are none. The report's catalogue record
        says which part, whether it lists everything, and the cutoff used.

        Returns
        -------
        str
            A summary line saying where the part is (empty when none is written).
        """
        if self._index is None:
            return ""
        self._read_orphans()
        if self._unread:
            self.report.count("filed images left out of the catalogue part", len(self._unread))
        written, line = self._write_part(storage, settings, now)
        complete = (
            not storage.read_only
            and not self._unread
            and not self.invalid_parts
            and (written is not None or not len(self.rows))
        )
        self.report.catalogue = {
            "cutoff": _iso(self.cutoff),
            # every image listed up to then is in a part, when complete (then the next run
            # need not look before it even if this run filed nothing)
            "listed_until": _iso(self._listed_until) if complete else None,
            "complete": complete,
            "parts": [written] if written is not None else [],
        }
        return line

    def _write_part(self, storage: Storage, settings, now) -> tuple[str | None, str]:
        if not len(self.rows):
            return None, ""
        key = part_key(now or dt.datetime.now(dt.UTC), settings.shard)
        data = part_bytes(self.rows.table())
        if storage.read_only:
            storage.write(key, data, "application/vnd.apache.parquet")  # (says what it would)
            rows = f"{len(self.rows):,} images; dry run: not written"
            return None, f"\n  catalogue part: {key} ({rows})"
        if storage.time_resolution and self._last_write is not None:
            # the part's listing time must come after its images' (the next run's cutoff)
            wait = storage.time_resolution + 0.05 - (time.monotonic() - self._last_write)
            if wait > 0:
                time.sleep(wait)
        try:
            storage.write(key, data, "application/vnd.apache.parquet")
        except StorageError as exc:
            self.report.skip(key, Reason.WRITE_FAILED, f"catalogue part: {exc}")
            return None, ""
        self.report.count("images catalogued", len(self.rows))
        return key, f"\n  catalogue part: {storage.url}/{key} ({len(self.rows):,} images)"
