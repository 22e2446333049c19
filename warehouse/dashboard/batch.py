"""A batch of dashboard tables and pages: built from the rows ``dataprocess`` read, written to the
processed store in one folder per run, and published by ``latest.csv``, written last.

The table rules are in :mod:`warehouse.dashboard.tables` and
:mod:`warehouse.dashboard.cleaning`, the pages in :mod:`warehouse.dashboard.pages`; this
module puts them together and writes the result::

    <processed store>/<batch>/ct.csv, ct.parquet, xray.*, mri.*       (modalities with studies)
    <processed store>/<batch>/patient.*, patient_clean.*, storage.*
    <processed store>/<batch>/study_images.*                          (when there are images)
    <processed store>/<batch>/images/000000.parquet, ...  (the image catalogue in segments,
                                                and its manifest _catalogue.json)
    <processed store>/<batch>/series.parquet         (one row per series, with its flags)
    <processed store>/<batch>/rows/patients.parquet, studies.parquet  (what the next run reuses;
                                                rows/holdout-hashes.parquet: the certificate's
                                                values' hashes, for the next day's)
    <processed store>/<batch>/stats_*.csv, stats_date.txt             (public statistics)
    <processed store>/<batch>/holdout.json     (the hold-out certificate: internal, not named
                                                by latest.csv)
    <processed store>/<batch>/dashboard.html, public.html             (the pages)
    <processed store>/latest.csv                                      (archive,path; last)

``<batch>`` is the run's UTC time, ISO 8601 with ``-`` for ``:`` so that it is a valid file
name everywhere: ``2026-11-25T09-30-00Z``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.batches import LATEST_KEY
from warehouse.catalogue.holdout import (
    HASHES_FILE,
    HOLDOUT_FILE,
    LastCertificate,
    catalogue_source,
    certificate_bytes,
    certify,
    certify_day,
    clinical_entries,
    day_rows,
    hashes_path,
)
from warehouse.catalogue.merge import (
    COUNTS_NAME,
    counts_document,
    merged_batches,
    publish_index,
)
from warehouse.catalogue.publish import SegmentPlan, write_segments
from warehouse.catalogue.segments import (
    MANIFEST_NAME,
    SEGMENTS_FOLDER,
    manifest_bytes,
    segment_name,
)
from warehouse.catalogue.series import (
    SOURCE_COLUMNS,
    is_series_table,
    series_counts,
    update_series,
    write_series,
    write_source,
)
from warehouse.core.config import PipelineConfig
from warehouse.core.errors import ExpectedError, ObjectNotFound
from warehouse.core.keys import IMAGE_FOLDERS
from warehouse.dashboard.cells import bounded_table, bounded_text, csv_text, holds_container
from warehouse.dashboard.cleaning import clean_patient_table, fill_from_dicom
from warehouse.dashboard.extraction import Collected, DataprocessState
from warehouse.dashboard.figures import STUDY_IMAGE_COLUMNS
from warehouse.dashboard.images import (
    CLINICAL_SUMMARY_FILE,
    changed_patients,
    clinical_summary,
    image_summary,
    summary_bytes,
    summary_table,
)
from warehouse.dashboard.inputs import (
    INPUT_DIGEST,
    PageSources,
    digest_file,
    read_page_sources,
)
from warehouse.dashboard.tables import (
    date_column,
    patient_table,
    public_statistics,
    storage_table,
    study_table,
)
from warehouse.dashboard.view import DataprocessView, SharedView, reusable_row_files
from warehouse.storage.base import Storage
from warehouse.storage.files import StoredFile, copy_to_file

if TYPE_CHECKING:
    from warehouse.dashboard.pages import PageInputs

logger = logging.getLogger(__name__)
#: What a dataprocess run says about its batch is said under the graph's name.
run_logger = logging.getLogger("dataprocess")

#: Tables in the order of ``latest.csv`` (a study table only when its modality has studies,
#: ``study_images`` only when there are images).
TABLE_ORDER = (
    *IMAGE_FOLDERS,
    "patient",
    "patient_clean",
    "storage",
    "study_images",
)
#: The batch's image catalogue, a folder of segments (named ``images`` in ``latest.csv``,
#: after the tables).
IMAGES_FOLDER = SEGMENTS_FOLDER
#: The hold-out certificate's value hashes in the batch, with the rows the next run reuses.
HASHES_KEY = f"rows/{HASHES_FILE}"
#: The batch's series table (named ``series`` in ``latest.csv``, after ``images``).
SERIES_FILE = "series.parquet"
#: Pages in the order of ``latest.csv``, after the tables: archive name -> file name.
#: The batch's pages and their file names (the pages module, and altair with it, is imported
#: only when a batch is built).
PAGES = {"dashboard": "dashboard.html", "public": "public.html"}

_CONTENT_TYPES = {
    ".csv": "text/csv",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".txt": "text/plain",
}


def batch_name(now: dt.datetime) -> str:
    """The batch folder name for a run started at ``now``: ``2026-11-25T09-30-00Z`` (UTC).

    Parameters
    ----------
    now : datetime.datetime
        The run's time; a naive value is taken as UTC.
    """
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC)
    return now.strftime("%Y-%m-%dT%H-%M-%SZ")


@dataclass
class Batch:
    """One run's output, ready to write.

    Attributes
    ----------
    name : str
        The batch folder (:func:`batch_name`).
    tables : dict
        Archive name (``ct``, ..., ``storage``) -> table, in :data:`TABLE_ORDER`; study tables
        of modalities without studies are absent.
    files : dict
        Other files of the batch (the public statistics), file name -> text.
    pages : dict
        The pages, archive name (``dashboard``, ``public``) -> HTML text.
    data : dict
        Files of the batch written as they are (the rows the next run reuses), name -> bytes.
    images : bool
        Whether the batch has an image catalogue (``images/``, written by `write_batch`).
    series : str or None
        The local file of ``series.parquet``, when the batch has images.
    series_from : str or None
        Instead, the last batch's ``series.parquet``, copied as it is.
    local : dict
        Files of the batch written from local files, name -> path (the hold-out's value
        hashes).
    """

    name: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    images: bool = False
    series: str | None = None
    series_from: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    _latest: pd.DataFrame | None = field(default=None, repr=False)

    def release(self) -> None:
        """Let go of the tables, pages and files (once written); ``latest`` stays as it was."""
        self._latest = self.latest()
        self.tables, self.pages, self.files, self.data = {}, {}, {}, {}

    def latest(self) -> pd.DataFrame:
        """The ``latest.csv`` table: ``archive``, ``path``: ``<batch>/<archive>.csv`` for each
        table (``<batch>/images/`` for the catalogue), then ``<batch>/dashboard.html``
        and ``<batch>/public.html``."""
        if self._latest is not None:
            return self._latest
        archives = [name for name in TABLE_ORDER if name in self.tables]
        paths = [f"{self.name}/{a}.csv" for a in archives]
        if self.images:
            archives.append("images")
            paths.append(f"{self.name}/{IMAGES_FOLDER}")
        if self.series is not None or self.series_from is not None:
            archives.append("series")
            paths.append(f"{self.name}/{SERIES_FILE}")
        for archive, file_name in PAGES.items():
            if archive in self.pages:
                archives.append(archive)
                paths.append(f"{self.name}/{file_name}")
        return pd.DataFrame(
            {
                "archive": pd.Series(archives, dtype="str"),
                "path": pd.Series(paths, dtype="str"),
            }
        )


def study_image_table(counts: Mapping[tuple, int]) -> pd.DataFrame:
    """Build ``study_images.csv``: the images filed in each study folder, per filing date.

    Parameters
    ----------
    counts : mapping
        ``(group, modality folder, pseudonym, study, filed date)`` -> images (the catalogue's
        rows of that study folder whose part was written on that date), as
        `warehouse.catalogue.merge.CatalogueScan.study_images` holds them.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`figures.STUDY_IMAGE_COLUMNS`: ``group``, ``modality`` (``ct``,
        ``xray``, ``mri``), ``Pseudonym``, ``StudyInstanceUID`` (the folder names), ``filed``
        (datetime64[ns] date) and ``images`` (int64); sorted by modality (table order),
        group, patient, study and date.
    """
    order = {modality: index for index, modality in enumerate(IMAGE_FOLDERS)}
    keys = sorted(counts, key=lambda k: (order.get(k[1], len(order)), k[0], k[2], k[3], k[4]))
    columns = list(zip(*keys, strict=True)) if keys else [()] * 5
    data = {
        name: pd.Series(list(values), dtype="str")
        for name, values in zip(STUDY_IMAGE_COLUMNS[:4], columns[:4], strict=True)
    }
    data["filed"] = date_column(columns[4])
    data["images"] = pd.Series([int(counts[k]) for k in keys], dtype="int64")
    return pd.DataFrame(data, columns=list(STUDY_IMAGE_COLUMNS))


def read_page_inputs(storage: Storage, config: PipelineConfig | None = None) -> PageInputs:
    """Read what the pages need from the warehouse (`inputs.read_page_sources`).

    Raises
    ------
    StorageError
        When a read fails for another reason than a missing object (the run fails: rerun).
    """
    return page_inputs(storage.url, read_page_sources(storage, config))


def page_inputs(url: str, sources: PageSources) -> PageInputs:
    """Return the pages' inputs: the warehouse's ``url`` and ``sources``."""
    from warehouse.dashboard.pages import PageInputs  # altair: only for runs that build pages

    return PageInputs(
        url, sources.config, sources.config_note, sources.loader_report, sources.loader_note
    )


def build_batch(
    patient_rows: list[dict],
    study_rows: Mapping[str, list[dict]],
    storage_sizes: Mapping[str, int],
    now: dt.datetime,
    *,
    study_images: Mapping[tuple, int] | None = None,
    inputs: PageInputs | None = None,
) -> Batch:
    """Build every table, statistics file and page of a run.

    Parameters
    ----------
    patient_rows : list of dict
        One per patient: the flattened chosen record plus the ``filename_*``,
        ``last_modified`` and ``group`` fields (see ``tables.patient_table``).
    study_rows : mapping
        Modality folder (``ct``, ``xray``, ``mri``) -> one row per study
        (``tables.metadata_row`` plus ``group`` and ``last_modified``).
    storage_sizes : mapping
        Storage prefix -> bytes.
    now : datetime.datetime
        The run's time (batch name, "new patients in the last 30 days", the date line).
    study_images : mapping, optional
        Images per study folder and filing date (see :func:`study_image_table`).
    inputs : PageInputs, optional
        What the pages show besides the tables (the warehouse, config, last loader report,
        the counts of catalogued images).

    Returns
    -------
    Batch
    """
    from warehouse.dashboard.pages import PageInputs, dashboard_page, public_page

    batch = Batch(batch_name(now))
    studies: dict[str, pd.DataFrame] = {}
    # Every text from an uploader is bounded before a rule or a page sees it.
    for modality in IMAGE_FOLDERS:
        table = bounded_table(study_table(list(study_rows.get(modality, ()))))
        studies[modality] = table
        if len(table):
            batch.tables[modality] = table

    patients = bounded_table(patient_table(patient_rows))
    images = pd.concat([studies[m] for m in IMAGE_FOLDERS], ignore_index=True)
    patient_clean = fill_from_dicom(clean_patient_table(patients), images)
    storage = storage_table(storage_sizes)
    batch.tables["patient"] = patients
    batch.tables["patient_clean"] = patient_clean
    batch.tables["storage"] = storage

    images = bounded_table(study_image_table(study_images or {}))
    if len(images):
        batch.tables["study_images"] = images

    batch.files = public_statistics(
        patient_clean, studies["ct"], studies["xray"], studies["mri"], storage, now
    )
    batch.pages = {
        "dashboard": dashboard_page(
            batch.name, now, {**batch.tables, "study_images": images}, inputs or PageInputs()
        ),
        "public": public_page(batch.files, now),
    }
    return batch


def csv_bytes(table: pd.DataFrame) -> bytes:
    """A table as UTF-8 CSV (`cells.csv_text`: header row, no index, formulas neutralised)."""
    return csv_text(table).encode("utf-8")


def _as_text(value):
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if value is pd.NA:
        return None
    return bounded_text(str(value))


#: What `pandas.api.types.infer_dtype` says of a column that holds no dict, list or tuple.
_PLAIN_KINDS = frozenset(
    ("string", "integer", "floating", "mixed-integer-float", "boolean", "date", "datetime", "empty")
)


def arrow_ready(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` that Parquet can store: raw JSON columns of mixed types become text.

    A column of object dtype is kept when Arrow can type it (all numbers, all strings, ...).
    Otherwise, and whenever it holds dicts or lists (``OtherDataSources``, ``SwabDates``),
    each value becomes the text the CSV holds (``str(value)``, bounded as `cells.bounded_text`
    bounds it), missing values stay missing.
    """
    out = table.copy()
    for name in out.columns:
        column = out[name]
        if column.dtype != object:
            continue
        values = column.tolist()
        # (pandas tells a column of text, numbers or dates, no container in it, in C; else
        # the values' types are gathered in C too)
        plain = pd.api.types.infer_dtype(column, skipna=True) in _PLAIN_KINDS
        if (plain or not holds_container(values)) and _arrow_accepts(values):
            continue
        out[name] = pd.Series([_as_text(v) for v in values], index=column.index, dtype="object")
    return out


def _arrow_accepts(values: list) -> bool:
    """Whether pyarrow can store a column of these values as they are (else: as text)."""
    try:
        pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return False
    return True


def parquet_bytes(table: pd.DataFrame) -> bytes:
    """A table as Parquet (pyarrow), without the index."""
    buffer = io.BytesIO()
    arrow_ready(table).to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def iter_batch_files(batch: Batch) -> Iterator[tuple[str, bytes]]:
    """Yield every file of the batch folder (not ``latest.csv``), ``(key, bytes)``, one at a
    time: a table's CSV and Parquet are made only when asked for."""
    for name, table in batch.tables.items():
        yield f"{batch.name}/{name}.csv", csv_bytes(table)
        yield f"{batch.name}/{name}.parquet", parquet_bytes(table)
    for name, data in batch.data.items():
        yield f"{batch.name}/{name}", data
    for name, text in batch.files.items():
        yield f"{batch.name}/{name}", text.encode("utf-8")
    for archive, text in batch.pages.items():
        yield f"{batch.name}/{PAGES[archive]}", text.encode("utf-8")


def batch_files(batch: Batch) -> dict[str, bytes]:
    """Every file of the batch folder (not ``latest.csv``): key -> bytes."""
    return dict(iter_batch_files(batch))


def _content_type(key: str) -> str:
    return _CONTENT_TYPES.get(key[key.rfind(".") :], "application/octet-stream")


def write_batch(
    store: Storage,
    batch: Batch,
    workers: int = 8,
    make_images: Callable[[], tuple[list[SegmentPlan], str | None]] | None = None,
) -> list[str]:
    """Write the batch folder, then ``latest.csv`` once every other file is written.

    A reader of ``latest.csv`` therefore never sees a batch that is not complete; when any
    write fails, ``latest.csv`` keeps naming the previous batch. The tables, files and pages
    are written first and let go (`Batch.release`); then ``make_images``, when the batch has
    images, writes the catalogue's changed segments locally and plans the others' copies
    (`catalogue.publish.write_segments`), and the segments are written, then their manifest
    (`catalogue.segments`): the largest files are made while the rest of the batch no
    longer takes memory.

    Parameters
    ----------
    store : Storage
        The processed store.
    batch : Batch
        What to write.
    workers : int
        Concurrent writes.
    make_images : callable, optional
        Returns the catalogue's segments (`SegmentPlan`) and the newest part it covers.

    Returns
    -------
    list of str
        The keys written, ``latest.csv`` last.

    Raises
    ------
    StorageError
        If a write fails (``latest.csv`` is then not written).
    """
    written: list[str] = []
    with ThreadPoolExecutor(max(1, workers), "batch-write") as pool:
        pending: set[Future] = set()

        def submit(work, *args) -> None:
            nonlocal pending
            pending.add(pool.submit(work, *args))
            if len(pending) >= max(1, workers):  # (files made as writes finish: flat memory)
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()

        for key, data in iter_batch_files(batch):
            submit(store.write, key, data, _content_type(key))
            written.append(key)
        for name, path in batch.local.items():
            submit(store.write_file, f"{batch.name}/{name}", path, _content_type(name))
            written.append(f"{batch.name}/{name}")
        for future in pending:
            future.result()
        pending = set()
        batch.release()
        series_key = f"{batch.name}/{SERIES_FILE}"
        if batch.series is not None:
            submit(store.write_file, series_key, batch.series, _content_type(SERIES_FILE))
            written.append(series_key)
        elif batch.series_from is not None:
            submit(store.copy, batch.series_from, series_key)
            written.append(series_key)
        manifest = None
        folder = f"{batch.name}/{IMAGES_FOLDER}"
        if batch.images and make_images is not None:
            segments, manifest = _submit_segments(store, folder, *make_images(), submit)
            written += segments
        for future in pending:
            future.result()
        if manifest is not None:  # (once its segments are all written)
            store.write(folder + MANIFEST_NAME, manifest, _content_type(MANIFEST_NAME))
            written.append(folder + MANIFEST_NAME)
    store.write(LATEST_KEY, csv_bytes(batch.latest()), "text/csv")
    return [*written, LATEST_KEY]


def _submit_segments(
    store: Storage,
    folder: str,
    plans: list[SegmentPlan],
    through: str | None,
    submit: Callable,
) -> tuple[list[str], bytes]:
    """Submit the writes and copies of the catalogue's segments into ``folder``; return their
    keys and the manifest naming them (`catalogue.segments.manifest_bytes`)."""
    keys, entries = [], []
    for number, plan in enumerate(plans):
        key = folder + segment_name(number)
        if plan.copy_from is not None:
            submit(store.copy, plan.copy_from, key, plan.size)
        else:
            submit(store.write_file, key, plan.path, _content_type(key))
        keys.append(key)
        entries.append((segment_name(number), plan.size, plan.rows))
    return keys, manifest_bytes(folder, entries, through)


def batch_series(
    view: DataprocessView, store: Storage
) -> tuple[str | None, str | None, pd.DataFrame | None]:
    """Make the batch's series table from its catalogue (`catalogue.series`).

    When the catalogue is the last batch's as it was and that batch has a series table, it is
    copied; when the merge noted the rows of the series it changed and the last batch has a
    table, that table is brought up to date (`update_series`); otherwise it is computed into
    the run's folder from the whole merged catalogue (`merged_batches`).

    Returns
    -------
    tuple
        ``(local file, last batch's key to copy, counts per group, patient and modality
        folder)``: the first two None when there are no images.
    """
    scan = view.catalogue
    if not scan.rows:
        return None, None, None
    if scan.reused is not None and scan.previous is not None:
        previous = view.reusable.series_key
        if previous is not None and scan.previous.current:
            size = next((i.size for i in store.list(previous) if i.key == previous), None)
            if size is not None:
                file = pq.ParquetFile(StoredFile(store, previous, size))
                return None, previous, series_counts(file)
    path = os.path.join(view.workdir, SERIES_FILE)
    previous = _previous_series(view, store)
    if previous is not None and scan.changed_series is not None:
        rows = update_series(previous, scan.changed_series.path, path, view.workdir)
        run_logger.info(
            "series: %d rows (%d changed series computed again)",
            rows,
            scan.changed_series.series,
        )
        return path, None, series_counts(pq.ParquetFile(path))
    source = scan.path
    if scan.reused is not None or scan.layers is not None:  # (no merged file: one is written)
        source = os.path.join(view.workdir, "series-source.parquet")
        write_source(merged_batches(scan, store, SOURCE_COLUMNS), source)
    rows = write_series(source, path, view.workdir)
    run_logger.info("series: %d rows", rows)
    return path, None, series_counts(pq.ParquetFile(path))


def _previous_series(view: DataprocessView, store: Storage) -> str | None:
    # the last batch's series table in a local file, when the merge added to its catalogue
    # (`ChangedSeries`) and it has one of this version's columns
    key = view.reusable.series_key
    changed = view.catalogue.changed_series
    if key is None or changed is None:
        return None
    path = changed.previous  # (the merge's copy, when it made one)
    if path is None:
        size = next((i.size for i in store.list(key) if i.key == key), None)
        if size is None:
            return None
        path = os.path.join(view.workdir, "series-previous.parquet")
        # (a copy shorter than listed is no Parquet file: computed in full too)
        copy_to_file(store, key, size, path)
    if not is_series_table(path):
        run_logger.warning("%s is not a series table of this version: computed in full", key)
        return None
    return path


#: The count a run reports when the last batch still holds (`publish_batch`).
LAST_BATCH_KEPT = "batches not rebuilt: nothing changed since the last batch"


def _keep_last_batch(state: DataprocessState, batch: str | None) -> None:
    state.batch, state.kept = batch, True
    state.report.count(LAST_BATCH_KEPT)
    run_logger.info(
        "nothing changed since batch %s was built (clinical files, catalogue, storage, "
        "config.json, loader report): no new batch, latest.csv still names it",
        batch,
    )


def holdout_certificate(
    storage: Storage, processed: Storage, view: DataprocessView, now: dt.datetime
) -> dict:
    """Check the hold-out over the run's whole catalogue and clinical folders for the batch
    built at ``now``; log what it says.

    From the last batch's certificate and the rows the merge added when it removed none
    (`catalogue.holdout.certify_day`), else over every row (`catalogue.holdout.certify`).
    """
    source = catalogue_source(view.catalogue, processed)
    clinical = clinical_entries(view.clinical.clinical_files)
    options: dict[str, Any] = {
        "batch": batch_name(now),
        "now": now,
        "workdir": view.workdir,
        "warehouse": storage.url,
    }
    certificate = None
    day = day_rows(view.catalogue)
    if day is not None:
        certificate = certify_day(
            source, day, clinical, _last_certificate(view, processed), **options
        )
        if certificate is None:
            run_logger.info(
                "hold-out certificate: the last one cannot be carried: every row is checked"
            )
    if certificate is None:
        certificate = certify(source, clinical, **options)
    if certificate["holds"]:
        run_logger.info(
            "hold-out certificate: holds (%d images, %d clinical files)",
            certificate["catalogue"]["rows"],
            certificate["clinical_files"],
        )
    else:
        broken = {n: c["violations"] for n, c in certificate["checks"].items() if c["violations"]}
        run_logger.warning(
            "hold-out certificate: %d violations (%s); see %s in the batch",
            certificate["violations"],
            ", ".join(f"{name} {count}" for name, count in broken.items()),
            HOLDOUT_FILE,
        )
    return certificate


def _last_certificate(view: DataprocessView, processed: Storage) -> LastCertificate:
    # the last batch's certificate, when it is about the catalogue the merge started from,
    # and the value hashes kept with it (read as they are asked for)
    previous = view.catalogue.previous
    if view.reusable.batch is None or previous is None:
        return LastCertificate(None)
    try:
        last = json.loads(processed.read(f"{view.reusable.batch}/{HOLDOUT_FILE}"))
        through = last["catalogue"]["through"]
    except (ObjectNotFound, ValueError, KeyError, TypeError, RecursionError):
        return LastCertificate(None)
    if through != previous.through:
        return LastCertificate(None)
    key = f"{view.reusable.batch}/{HASHES_KEY}"
    size = view.reusable.saved.get(key)  # (listed with the batch's other saved rows)
    try:
        hashes = None if size is None else pq.ParquetFile(StoredFile(processed, key, size))
    except (ObjectNotFound, pa.ArrowException, OSError) as exc:
        run_logger.warning("%s cannot be read (%s)", key, exc)
        hashes = None
    return LastCertificate(last, hashes)


def catalogue_segments(
    view: DataprocessView, summary: pa.Table, changed: pa.Array | None, store: Storage
) -> tuple[list[SegmentPlan], str | None]:
    """The batch's catalogue segments (`write_segments`, with ``summary``: `summary_table`)
    and the newest part they cover: only the segments whose rows or patients' clinical
    summaries changed since the last batch (``changed``) are written."""
    folder = os.path.join(view.workdir, "segments")
    os.makedirs(folder, exist_ok=True)
    plans = write_segments(view.catalogue, clinical_summary(summary), changed, store, folder)
    written = [plan for plan in plans if plan.path is not None]
    run_logger.info(
        "catalogue: %d segments, %d written (%d rows), %d copied",
        len(plans),
        len(written),
        sum(plan.rows for plan in written),
        len(plans) - len(written),
    )
    return plans, view.catalogue.through


def _last_summary(view: DataprocessView, store: Storage) -> bytes | None:
    # the clinical summary the last batch saved, when it saved one
    saved = f"{view.reusable.batch}/{CLINICAL_SUMMARY_FILE}"
    return store.read(saved) if saved in view.reusable.saved else None


def batch_time(now: dt.datetime, last: str | None) -> dt.datetime:
    """The time a batch built at ``now`` is named by (`batch_name`): a second later when the
    last batch (``last``) has that name, so that two runs in one second never share a folder.
    """
    if last is not None and batch_name(now) == last:
        return now + dt.timedelta(seconds=1)
    return now


def publish_batch(
    storage: Storage,
    state: DataprocessState,
    collected: Collected,
    shared: SharedView,
    unexpected_errors: int = 0,
) -> None:
    """Build the run's batch from what the branches collected and write it, then
    ``latest.csv``, then the catalogue's index; an incomplete run (or a failure here) is
    reported and nothing is published.

    When nothing a batch is built from changed since the last batch (`inputs.inputs_digest`,
    and no catalogue part since: ``view.unchanged``), the last batch stands: nothing is
    written and the run says so (``state.kept``). A reconcile always builds a batch.

    Parameters
    ----------
    storage : Storage
        The warehouse store; the batch goes to its ``processed()`` store.
    state : DataprocessState
        The run (its report, settings and config; the batch written is recorded on it).
    collected : Collected
        The rows of the three branches.
    shared : SharedView
        What the run read (the merged catalogue and its counts, for the catalogue's segments,
        ``study_images`` and the pages).
    unexpected_errors : int
        Errors the graph runner counted in the branches: any means nothing is published.
    """
    report = state.report
    if unexpected_errors or not report.completed or not shared.built:
        report.fail(report.fatal or "some files could not be read; nothing was written")
        run_logger.error("the run is incomplete: no tables written, latest.csv unchanged")
        return
    store = storage.processed()
    state.processed_url = store.url
    shared.keep()  # (the rows collected: held to the end)
    try:
        view = shared.view()
        if view.unchanged:
            _keep_last_batch(state, view.reusable.batch)
            return
        now = batch_time(dt.datetime.now(dt.UTC), view.reusable.batch)
        certificate = holdout_certificate(storage, store, view, now)
        series, series_from, series_counts_ = batch_series(view, store)
        inputs = dataclasses.replace(
            page_inputs(storage.url, view.pages),
            images=image_summary(view.catalogue.summary),
            screened=view.catalogue.screened,
            holdout=certificate,
            series=series_counts_,
        )
        # (before the tables: what they make in passing is let go before the tables are built)
        data = reusable_row_files(*collected.reusable())
        data[HOLDOUT_FILE] = certificate_bytes(certificate)
        data[COUNTS_NAME] = counts_document(view.catalogue)
        data[INPUT_DIGEST] = digest_file(view.digest)
        batch = build_batch(
            collected.patient_rows(),
            collected.study_rows(),
            collected.storage,
            now,
            study_images=view.catalogue.study_images,
            inputs=inputs,
        )
        batch.data = data
        batch.local[HASHES_KEY] = hashes_path(view.workdir)
        batch.series, batch.series_from = series, series_from
        collected.release()  # (the tables hold what the rows said)
        make_images = None
        summary = summary_table(batch.tables["patient_clean"])
        data[CLINICAL_SUMMARY_FILE] = summary_bytes(summary)
        if view.catalogue.rows:
            batch.images = True
            changed = changed_patients(_last_summary(view, store), summary)
            make_images = functools.partial(catalogue_segments, view, summary, changed, store)
        state.batch = batch.name
        for name, table in batch.tables.items():
            run_logger.info("%s: %d rows", name, len(table))
        run_logger.info("images: %d rows", view.catalogue.rows)
        # (before the batch: an index is only ever a faster way to the same parts)
        index = view.catalogue.index
        if index is not None and publish_index(storage, view.catalogue, now) is not None:
            run_logger.info("catalogue index written (%d images)", index.images)
        state.written = write_batch(store, batch, state.settings.workers, make_images)
    except ExpectedError as exc:
        report.fail(f"tables not written: {exc}")
        run_logger.error("tables not written: %s", exc)
    except Exception:  # noqa: BLE001 - a bug: logged with its traceback, the run fails
        run_logger.exception("could not build or write the tables")
        report.fail("could not build or write the tables; see the log above")
