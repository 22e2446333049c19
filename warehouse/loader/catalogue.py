"""The loader's side of the image catalogue: one part per run, and the duplicate rule.

A run keeps one compact row per image it files, made from the header it filed the image by
(no request per image), and writes them as one part, ``catalogue/images/<UTC time>.parquet``,
after the graph, once every image and metadata file the part lists is written: one PUT per
run that files images, none for a run that files nothing, none in a dry run.

**A run killed before its part.** Runs hold the warehouse one at a time (the run lease) and a
part is written after every object it lists, so an image filed (image and metadata file
present) whose listing time is later than the newest part's was filed by a run that did not
write its part. The next run lists ``catalogue/images/`` (one LIST per 1,000 parts), notes
those images while it lists the warehouse anyway, reads their headers (one ranged GET each,
as the loader's own reads) and lists them in its part; their raw key is the raw image of the
same name and size, first in key order. A warehouse without any part (filed before the
catalogue, or whose first run was killed) is catalogued by ``dataprocess``'s backfill.

**Duplicates.** The same SOPInstanceUID filed under another key is refused: "duplicate
image" when the sizes are equal, "conflicting duplicate" when they differ. The SOP instances
already filed come from the parts, read once per run and only when a run has an image header
to decide (a rerun with nothing new reads none); they are kept as 64-bit hashes in NumPy
arrays (24 bytes an image), and a hash that matches is checked against the part's row.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from warehouse.core.catalogue import (
    PARTS_PREFIX,
    InvalidPart,
    RowBuffer,
    image_row,
    is_part_key,
    part_bytes,
    part_key,
    raw_sources,
    read_part,
)
from warehouse.core.dicom import HeaderProblem, read_header
from warehouse.core.keys import RawKey, parse_image_key, parse_warehouse_key
from warehouse.core.listing import WarehouseIndex, index_warehouse
from warehouse.core.report import Reason, RunReport
from warehouse.core.storage import ObjectInfo, Storage, StorageError

logger = logging.getLogger("warehouseloader")


@dataclass(frozen=True, slots=True)
class FiledCopy:
    """Where an SOP instance is filed already, and its size."""

    key: str
    size: int


class _FiledInstances:
    """The SOP instances the catalogue parts list: hashes sorted in NumPy arrays, each with
    its size, part and row; a match is confirmed from the part itself (read again, cached)."""

    def __init__(self, storage: Storage, parts: list[str], submit):
        self._storage = storage
        self._parts = parts
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
            logger.warning(
                "catalogue part %s cannot be used (%s): its images are not known", part, exc
            )
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


class LoaderCatalogue:
    """One loader run's catalogue: the rows of the images it files, the images a killed run
    left out of the catalogue, and the SOP instances already filed (a service of the run,
    inside `LoaderState`)."""

    def __init__(self, report: RunReport, submit=None):
        self.report = report
        self.parts: list[str] = []
        self.newest_part: dt.datetime | None = None
        self.rows = RowBuffer()
        self._storage: Storage | None = None
        self._index: WarehouseIndex | None = None
        self._submit = submit
        self._recent: dict[str, int] = {}
        self.orphans: dict[str, int] = {}
        self._orphan_raw: dict[str, tuple[str, str]] = {}
        self._pending: dict[str, list] = {}
        self._run_copies: dict[int, list[FiledCopy]] = {}
        self._filed: _FiledInstances | None = None
        self._filed_error: StorageError | None = None
        self._listed_keys: set[str] = set()
        self._lock = threading.Lock()

    # -- the listing --------------------------------------------------------------------

    def index_warehouse(self, storage: Storage, workers: int) -> WarehouseIndex:
        """List the catalogue parts, then the warehouse side once (`listing.index_warehouse`),
        noting the filed images newer than the newest part (a killed run's).

        Parameters
        ----------
        storage : Storage
            The warehouse.
        workers : int
            Parallel listings.
        """
        self._storage = storage
        for info in storage.list(PARTS_PREFIX):
            if not info.link and is_part_key(info.key):
                self.parts.append(info.key)
                if self.newest_part is None or info.last_modified > self.newest_part:
                    self.newest_part = info.last_modified
        self.parts.sort()
        observe = self._observe if self.newest_part is not None else None
        index = index_warehouse(storage, workers, observe=observe)
        self._index = index
        self.orphans = {
            key: size
            for key, size in self._recent.items()
            if parse_image_key(key).metadata_key in index.keys
        }
        self._recent = {}
        if self.orphans:
            logger.info(
                "catalogue: %d filed images are newer than the newest part (a run stopped "
                "before writing it): this run's part lists them",
                len(self.orphans),
            )
        return index

    def _observe(self, info: ObjectInfo) -> None:
        if info.last_modified > self.newest_part and not info.link:
            parsed = parse_warehouse_key(info.key)
            if parsed is not None and parsed.kind == "image":
                self._recent[info.key] = info.size

    def match_raw(self, images: list[tuple[RawKey, int]]) -> None:
        """Find the raw key of each image a killed run left out (`catalogue.raw_sources`)."""
        if self.orphans:
            self._orphan_raw = raw_sources(self.orphans, images)

    # -- the images of this run ---------------------------------------------------------

    def filed_copy(self, sop: str | None, image_key: str) -> FiledCopy | None:
        """Another key that SOP instance ``sop`` is filed under (by the catalogue parts, or
        earlier in this run), still in the warehouse; None when there is none.

        Raises
        ------
        StorageError
            When the parts cannot be read (the image cannot be decided).
        """
        if not sop:
            return None
        for copy in self._run_copies.get(hash(sop), ()):
            if copy.key != image_key:
                return copy
        for copy in self._instances().copies(sop):
            if copy.key != image_key and copy.key in self._index.keys:
                return copy
        return None

    def _instances(self) -> _FiledInstances:
        if self._filed is None and self._filed_error is None:
            try:
                self._filed = _FiledInstances(self._storage, self.parts, self._submit_work)
            except StorageError as exc:
                self._filed_error = exc
        if self._filed_error is not None:
            raise self._filed_error
        return self._filed

    def _submit_work(self, work, *args):
        if self._submit is not None:
            return self._submit(work, *args)
        future: Future = Future()
        future.set_result(work(*args))
        return future

    def claim_instance(self, sop: str | None, image_key: str, size: int) -> None:
        """This run files SOP instance ``sop`` at ``image_key``."""
        if sop:
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
            entry = self._pending.pop(target, None)
            if entry is None:
                return
            entry[1] -= 1
            done = entry[1] == 0
        if done:
            self._add(entry[0])

    def already_filed(self, image_key: str, row_of) -> None:
        """An image this run found filed already: if a killed run left it out of the
        catalogue, list it from the header just read (``row_of()``) rather than read again."""
        with self._lock:
            known = image_key in self.orphans
            if known:
                del self.orphans[image_key]
        if known:
            self._add(row_of())

    def _add(self, row: tuple) -> None:
        with self._lock:
            if row[0] not in self._listed_keys:
                self._listed_keys.add(row[0])
                self.rows.add(row)

    # -- the end of the run -------------------------------------------------------------

    def _orphan_row(self, key: str, size: int, max_header_bytes: int) -> tuple:
        header = read_header(self._storage, key, size, max_header_bytes=max_header_bytes)
        raw_key, upload = self._orphan_raw.get(key, (None, None))
        return image_row(
            header.dataset, parse_image_key(key), size=size, raw_key=raw_key, upload=upload
        )

    def publish(self, storage: Storage, settings, now: dt.datetime | None = None) -> str:
        """Write this run's part (after the graph): the rows of the images it filed, and of
        those a killed run left out. Nothing when there are none.

        Returns
        -------
        str
            A summary line saying where the part is (empty when none is written).
        """
        if self._index is None:
            return ""
        futures = {
            key: self._submit_work(self._orphan_row, key, size, settings.max_header_bytes)
            for key, size in sorted(self.orphans.items())
            if key not in self._listed_keys
        }
        for key, future in futures.items():
            try:
                self._add(future.result())
            except (HeaderProblem, StorageError) as exc:
                logger.warning("catalogue: %s left out (%s); dataprocess catalogues it", key, exc)
                self.report.count("filed images left out of the catalogue part")
        if not len(self.rows):
            return ""
        key = part_key(now or dt.datetime.now(dt.UTC), settings.shard)
        try:
            storage.write(key, part_bytes(self.rows.table()), "application/vnd.apache.parquet")
        except StorageError as exc:
            self.report.skip(key, Reason.WRITE_FAILED, f"catalogue part: {exc}")
            return ""
        if storage.read_only:
            return f"\n  catalogue part: {key} ({len(self.rows):,} images; dry run: not written)"
        self.report.count("images catalogued", len(self.rows))
        return f"\n  catalogue part: {storage.url}/{key} ({len(self.rows):,} images)"
