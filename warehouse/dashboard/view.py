"""What a ``dataprocess`` run looks at: the day's work, not the warehouse's size.

* the patients' clinical folders (``<group>/data/``, a listing of tens of pages at ten million
  objects): the groups and each patient's clinical files;
* the image catalogue (`catalogue.merge.scan_catalogue`): the last batch's merged catalogue and
  the parts written since, which say every study folder, its first metadata file, the images
  filed per study and date, and the bytes of the image folders;
* the last batch (``latest.csv``): its rows of each patient's chosen clinical record and of
  each study's first metadata file (``<batch>/rows/``), so that only what is new or changed is
  read again.

A reconcile run (``WAREHOUSE_RECONCILE``) reuses nothing: every part merged again, every file
read again, the catalogue's index rebuilt.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.batches import InvalidLatest, batch_folder, latest_paths
from warehouse.catalogue.filed import FiledImages, list_filed_images
from warehouse.catalogue.merge import COUNTS_NAME, CatalogueScan, LastBatch, scan_catalogue
from warehouse.catalogue.segments import is_segments_folder
from warehouse.core.config import PipelineConfig
from warehouse.core.keys import IMAGE_FOLDERS, METADATA_SUFFIX
from warehouse.core.report import RunReport
from warehouse.dashboard.inputs import (
    INPUT_DIGEST,
    PageSources,
    inputs_digest,
    read_page_sources,
    saved_digest,
)
from warehouse.dashboard.tables import storage_by_prefix
from warehouse.listing.warehouse import StudyFile, WarehouseIndex, index_warehouse
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: Where a batch keeps the rows the next run may reuse (not named by ``latest.csv``).
PATIENT_ROWS = "rows/patients.parquet"
STUDY_ROWS = "rows/studies.parquet"
#: A study folder: group, modality folder, patient folder, study folder.
StudySlot = tuple[str, str, str, str]

_PATIENT_SCHEMA = pa.schema(
    [
        ("pseudonym", pa.string()),
        ("key", pa.string()),
        ("stamp", pa.int64()),
        ("record", pa.string()),
    ]
)
_STUDY_SCHEMA = pa.schema(
    [
        ("group", pa.string()),
        ("modality", pa.string()),
        ("pseudonym", pa.string()),
        ("study", pa.string()),
        ("key", pa.string()),
        ("row", pa.string()),
    ]
)


@dataclass
class ReusableRows:
    """The last batch's rows that this run may reuse.

    Attributes
    ----------
    batch : str or None
        The last batch's folder.
    images_key : str or None
        Its merged image catalogue (its folder ``images/``, or ``images.parquet`` from an
        older version).
    series_key : str or None
        Its series table (``series.parquet``), when it has one.
    counts_key : str or None
        What its merge counted (`catalogue.merge.COUNTS_NAME`), when it saved that.
    patients : dict
        Pseudonym -> ``(clinical file key, stamp, flattened record)`` of the file it was read
        from (`listing.warehouse.pack_stamp`: size and last-modified second); the record as
        the JSON text the batch saved, decoded where it is used, so that a run holds one
        decoded copy of it.
    studies : dict
        Study folder -> ``(metadata key, study fields)`` read from that file (likewise as
        JSON text).
    inputs : str or None
        The digest of what the last batch was built from (`inputs.inputs_digest`), when it
        saved one.
    saved : dict
        The keys of what it saved for the next run (``<batch>/rows/``), with their sizes.
    """

    batch: str | None = None
    images_key: str | None = None
    series_key: str | None = None
    counts_key: str | None = None
    patients: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    studies: dict[StudySlot, tuple[str, str]] = field(default_factory=dict)
    inputs: str | None = None
    saved: dict[str, int] = field(default_factory=dict)

    def patient_record(self, pseudonym: str, key: str, stamp: int | None) -> str | None:
        """Return the record read last time from this file (same key, size, time): JSON text."""
        known = self.patients.get(pseudonym)
        if known is None or stamp is None or known[0] != key or known[1] != stamp:
            return None
        return known[2]

    def study_fields(self, slot: StudySlot, key: str) -> str | None:
        """Return the fields read last time from this study's first metadata file: JSON text."""
        known = self.studies.get(slot)
        return known[1] if known is not None and known[0] == key else None


def _read_table(store: Storage, key: str, schema: pa.Schema) -> pa.Table | None:
    try:
        table = pq.read_table(io.BytesIO(store.read(key)))
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
        logger.warning("%s cannot be reused (%s): its rows are read again", key, exc)
        return None


def last_batch(processed: Storage) -> ReusableRows:
    """Find the last batch and what it saved for the next run.

    Its rows are not read yet (`read_rows`).

    Raises
    ------
    StorageError
        When a read fails for another reason than a missing object.
    """
    try:
        paths = latest_paths(processed)
    except InvalidLatest as exc:
        logger.warning("%s: every file is read again", exc)
        paths = None
    batch = batch_folder(paths) if paths else None
    if batch is None:
        return ReusableRows()
    named = paths or {}
    rows = ReusableRows(batch, named.get("images"), named.get("series"))
    images = rows.images_key
    if images is not None and not (images.endswith(".parquet") or is_segments_folder(images)):
        rows.images_key = None  # (an older batch: its catalogue is merged again)
    rows.saved = {info.key: info.size for info in processed.list(f"{batch}/rows/")}
    if rows.images_key is not None and f"{batch}/{COUNTS_NAME}" in rows.saved:
        rows.counts_key = f"{batch}/{COUNTS_NAME}"
    if f"{batch}/{INPUT_DIGEST}" in rows.saved:
        rows.inputs = saved_digest(processed.read(f"{batch}/{INPUT_DIGEST}"))
    return rows


def read_rows(processed: Storage, rows: ReusableRows) -> None:
    """Read the last batch's reusable rows into ``rows``.

    None are reused when it has none, or they cannot be read: then everything is read
    again, and said so.

    Raises
    ------
    StorageError
        When a read fails for another reason than a missing object.
    """
    batch = rows.batch
    if batch is None:
        return
    patients_key, studies_key = f"{batch}/{PATIENT_ROWS}", f"{batch}/{STUDY_ROWS}"
    if patients_key in rows.saved:
        table = _read_table(processed, patients_key, _PATIENT_SCHEMA)
        for item in table.to_pylist() if table is not None else ():
            if _is_json_object(item["record"]):
                rows.patients[item["pseudonym"]] = (item["key"], item["stamp"], item["record"])
    if studies_key in rows.saved:
        table = _read_table(processed, studies_key, _STUDY_SCHEMA)
        for item in table.to_pylist() if table is not None else ():
            slot = (item["group"], item["modality"], item["pseudonym"], item["study"])
            if _is_json_object(item["row"]):
                rows.studies[slot] = (item["key"], item["row"])
    logger.info(
        "the last batch (%s) holds %d patients' and %d studies' rows",
        batch,
        len(rows.patients),
        len(rows.studies),
    )


def _is_json_object(text: str | None) -> bool:
    """Whether a saved row is a JSON object (anything else is read again)."""
    try:
        return isinstance(json.loads(text), dict) if text is not None else False
    except (TypeError, ValueError, RecursionError):
        return False


def saved_row(value: dict | str) -> dict:
    """Return a saved row decoded (a row read now, a dict, as it is)."""
    return json.loads(value) if isinstance(value, str) else value


def _as_json(value: dict | str) -> str:
    # (in the record's order: the patient table's columns are in first-seen order, so that a
    # reused record makes the columns the file read again makes)
    return value if isinstance(value, str) else json.dumps(value)


def reusable_row_files(
    patients: list[tuple[str, str, int, dict | str]],
    studies: list[tuple[StudySlot, str, dict | str]],
) -> dict[str, bytes]:
    """Build the files of a batch's reusable rows (`PATIENT_ROWS`, `STUDY_ROWS`).

    From ``patients`` (pseudonym, key, stamp, flattened record) and ``studies`` (slot,
    metadata key, fields); a record or fields reused as the last batch saved them (JSON
    text) are saved as they are.
    """
    # column by column: no dict a row on top of the rows
    patient_table = pa.table(
        [
            [p[0] for p in patients],
            [p[1] for p in patients],
            [p[2] for p in patients],
            [_as_json(p[3]) for p in patients],
        ],
        schema=_PATIENT_SCHEMA,
    )
    study_table = pa.table(
        [
            *([s[0][n] for s in studies] for n in range(4)),
            [s[1] for s in studies],
            [_as_json(s[2]) for s in studies],
        ],
        schema=_STUDY_SCHEMA,
    )
    files = {}
    for name, table in ((PATIENT_ROWS, patient_table), (STUDY_ROWS, study_table)):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        files[name] = buffer.getvalue()
    return files


@dataclass
class DataprocessView:
    """Everything a dataprocess run reads its tables from (see the module's docstring).

    Attributes
    ----------
    clinical : WarehouseIndex
        The patients' clinical folders, listed.
    catalogue : CatalogueScan
        The merged image catalogue (a local file) and its counts.
    reusable : ReusableRows
        The last batch's rows (empty in a reconcile run).
    workdir : str
        The local folder of the run's temporary files.
    filed : FiledImages or None
        A reconcile's listing of the whole warehouse side.
    pages : PageSources
        What the pages show besides the tables.
    digest : str
        The digest of what the batch is built from (`inputs.inputs_digest`).
    unchanged : bool
        Nothing changed since the last batch (the same digest, no catalogue part since): it
        stands, no row is read nor built.
    """

    clinical: WarehouseIndex
    catalogue: CatalogueScan
    reusable: ReusableRows
    workdir: str
    filed: FiledImages | None = None
    pages: PageSources = field(default_factory=PageSources)
    digest: str = ""
    unchanged: bool = False

    def storage_sizes(self) -> dict[str, int]:
        """Return the bytes stored under each storage prefix (`tables.storage_by_prefix`)."""
        return storage_by_prefix(self.stored_bytes())

    def study_files(self) -> Iterator[tuple[StudyFile, str | None]]:
        """Yield each study folder's first metadata file and the fields read from it.

        By image folder in table order, group, patient and study; the fields are those read
        last time, when they still hold (None otherwise). None when the last batch stands.
        """
        if self.unchanged:
            return
        order = {folder: index for index, folder in enumerate(IMAGE_FOLDERS)}
        studies = self.catalogue.studies
        for slot in sorted(studies, key=lambda s: (order.get(s[1], len(order)), s[0], s[2], s[3])):
            key, filed = studies[slot]
            fields = (
                None if slot in self.catalogue.touched else self.reusable.study_fields(slot, key)
            )
            yield StudyFile(slot[0], slot[1], slot[2], slot[3], key, filed), fields

    def stored_bytes(self) -> Iterator[tuple[str, int]]:
        """Yield ``(key prefix, bytes)``, as `dashboard.tables.storage_by_prefix` sums them.

        The clinical folders as listed, the image and metadata folders as catalogued (in a
        reconcile, every folder as listed).
        """
        if self.filed is not None:
            yield from self.filed.stored_bytes()
            return
        yield from self.clinical.stored_bytes()
        for (group, folder), size in sorted(self.catalogue.image_bytes.items()):
            yield f"{group}/{folder}/", size
        for (group, folder), size in sorted(self.catalogue.metadata_bytes.items()):
            yield f"{group}/{folder}{METADATA_SUFFIX}/", size


def build_view(
    storage: Storage,
    workers: int,
    submit: Callable,
    report: RunReport,
    *,
    reconcile: bool,
    config: PipelineConfig | None = None,
) -> DataprocessView:
    """Look at what a dataprocess run reads its tables from.

    List the clinical folders, find the last batch (not in a reconcile), merge the catalogue
    into a temporary file and read what the pages show (``config.json`` unless given as
    ``config``, the loader's report). When nothing changed since the last batch, the view
    says so (``unchanged``) and no row is read; otherwise the last batch's reusable rows are.
    A reconcile lists the whole warehouse side too (compactly): the catalogue's rows of images
    no longer there are left out, and the storage table is the listing's.

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    processed = storage.processed()
    workdir = tempfile.mkdtemp(prefix="dataprocess-")
    try:
        clinical = index_warehouse(storage, workers, clinical_only=True)
        reusable = ReusableRows() if reconcile else last_batch(processed)
        filed = list_filed_images(storage, workers) if reconcile else None
        counts = processed.read(reusable.counts_key) if reusable.counts_key else None
        catalogue = scan_catalogue(
            storage,
            processed,
            LastBatch(reusable.images_key, counts, reusable.series_key),
            submit,
            report,
            os.path.join(workdir, "catalogue.parquet"),
            filed=filed,
        )
        view = DataprocessView(
            clinical, catalogue, reusable, workdir, filed, read_page_sources(storage, config)
        )
        view.digest = inputs_digest(clinical, view.storage_sizes(), view.pages)
        view.unchanged = catalogue.reused is not None and view.digest == reusable.inputs
        if not view.unchanged:
            read_rows(processed, reusable)
    except BaseException:
        remove_workdir(workdir)
        raise
    if catalogue.gone:
        report.count("catalogued images no longer in the warehouse (left out)", catalogue.gone)
    if catalogue.unsized_metadata and filed is None:
        report.count(
            "images catalogued without their metadata file's size (not in the storage table)",
            catalogue.unsized_metadata,
        )
    return view


def remove_workdir(workdir: str) -> None:
    """Remove a run's temporary files."""
    shutil.rmtree(workdir)


class SharedView:
    """A service: the run's `DataprocessView`, built once and shared by the branches.

    It is built on first use, under a lock. A failure is remembered and raised again to every
    caller, so nothing is listed twice.

    What the run holds until its end (the view, then the rows collected: `keep`) is kept out
    of the cyclic garbage collector's passes (`gc.freeze`) until `close`: those are plain data
    that make no cycle, and each full pass over them (hundreds of thousands of objects at ten
    million images) found nothing to free while it took a tenth of the run's CPU. What is let
    go of is still freed as it is (by reference counts).
    """

    def __init__(self, build: Callable[[], DataprocessView]):
        self._build = build
        self._lock = threading.Lock()
        self._view: DataprocessView | None = None
        self._error: BaseException | None = None
        self._frozen = False

    @property
    def built(self) -> bool:
        """Whether the view has been built successfully."""
        return self._view is not None

    def view(self) -> DataprocessView:
        """Return the view (building it if nobody has yet).

        Raises
        ------
        StorageError
            If building it failed (now or for an earlier caller).
        """
        with self._lock:
            if self._view is None and self._error is None:
                try:
                    self._view = self._build()
                except Exception as exc:  # noqa: BLE001 - re-raised to this and every caller
                    self._error = exc
                else:
                    self._keep()
            if self._error is not None:
                raise self._error
            assert self._view is not None
            return self._view

    def keep(self) -> None:
        """Keep what the run holds now out of the cyclic collector's passes, until `close`.

        (The rows it collected, as the view is kept once built.)
        """
        with self._lock:
            self._keep()

    def _keep(self) -> None:
        gc.freeze()
        self._frozen = True

    def close(self) -> None:
        """Remove the view's temporary files; give what the run held back to the collector.

        (The end of the run.)
        """
        with self._lock:
            if self._frozen:
                gc.unfreeze()
                self._frozen = False
            if self._view is not None and os.path.isdir(self._view.workdir):
                remove_workdir(self._view.workdir)
