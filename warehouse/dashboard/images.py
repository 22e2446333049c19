"""The whole image catalogue, for ``dataprocess``: the loader's parts merged, completed by a
backfill, joined with each patient's clinical summary.

The loader writes one part per run (`warehouse.loader.catalogue`). ``dataprocess`` merges
them into one table of the images the warehouse holds now (one row per image, the newest
part's row of an image listed twice, nothing for an image no longer there). An image that no
part lists (a warehouse filed before the catalogue existed, or whose first run was stopped
before its part) is catalogued here, **once**: its header is read with ranged reads through
the run's worker pool (one GET per image, as the loader's reads: the same row the loader would
have made, TransferSyntaxUID included, which the metadata JSON leaves out with the file
meta), its raw key and upload date are recorded as unknown (only the run that filed it knew
them: a guess by name and size could borrow another upload's provenance), and the rows are
kept in the processed store as ``catalogue/backfill/<UTC time>.parquet``, read by the next
runs like the loader's parts.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from warehouse.core.catalogue import (
    PARTS_PREFIX,
    HeaderProgress,
    InvalidPart,
    RowBuffer,
    filed_image_row,
    is_part_key,
    merge_parts,
    part_bytes,
    read_part,
)
from warehouse.core.report import Reason, RunReport
from warehouse.dashboard.tables import date_column
from warehouse.dicom.problems import HeaderProblem
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: Where the backfill's rows are kept, in the processed store.
BACKFILL_PREFIX = "catalogue/backfill/"
#: The clinical summary joined to each image: cleaned patient table column -> images column.
CLINICAL_COLUMNS = {
    "SubmittingCentre": "SubmittingCentre",
    "filename_covid_status": "covid_positive",
    "age_update": "age",
    "sex_update": "sex",
}


def backfill_key(now: dt.datetime) -> str:
    """``catalogue/backfill/2026-11-25T09-30-00.000000Z.parquet`` in the processed store."""
    return f"{BACKFILL_PREFIX}{now.astimezone(dt.UTC):%Y-%m-%dT%H-%M-%S.%fZ}.parquet"


def _part_keys(storage: Storage, prefix: str) -> list[str]:
    return sorted(
        info.key
        for info in storage.list(prefix)
        if not info.link and info.key.endswith(".parquet") and "/" not in info.key[len(prefix) :]
    )


def read_parts(
    storage: Storage, processed: Storage, submit: Callable, report: RunReport
) -> list[pa.Table]:
    """Every part, oldest first: the backfill's (processed store), then the loader's.

    A part that is not a catalogue part is reported ("invalid catalogue part") and left out.

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    keys = [(processed, key) for key in _part_keys(processed, BACKFILL_PREFIX)]
    keys += [(storage, k) for k in _part_keys(storage, PARTS_PREFIX) if is_part_key(k)]
    futures = [(key, submit(store.read, key)) for store, key in keys]
    tables = []
    for key, future in futures:
        try:
            tables.append(read_part(future.result()))
        except InvalidPart as exc:
            report.skip(key, Reason.INVALID_PART, str(exc))
    return tables


def backfill(
    storage: Storage,
    missing: dict[str, int],
    submit: Callable,
    report: RunReport,
    *,
    max_header_bytes: int | None = None,
) -> pa.Table:
    """Catalogue filed images that no part lists: read their headers through the pool (their
    raw key and upload date unknown: `catalogue.filed_image_row`).

    An image whose header cannot be parsed is reported ("image left out of the catalogue")
    and left for the next run.

    Raises
    ------
    StorageError
        When a read fails.
    """
    rows = RowBuffer()
    if not missing:
        return rows.table()
    logger.info("catalogue backfill: %d filed images are in no catalogue part", len(missing))
    progress = HeaderProgress(len(missing), logger, "catalogue backfill")
    futures = [
        (key, submit(filed_image_row, storage, key, size, max_header_bytes))
        for key, size in sorted(missing.items())
    ]
    for key, future in futures:
        try:
            rows.add(future.result())
        except HeaderProblem as exc:
            report.skip(key, Reason.NOT_CATALOGUED, str(exc))
        progress.step()
    report.count("images catalogued by the backfill", len(rows))
    return rows.table()


def image_catalogue(
    storage: Storage,
    filed: dict[str, int],
    submit: Callable,
    report: RunReport,
    now: dt.datetime,
    *,
    max_header_bytes: int | None = None,
) -> pa.Table:
    """The catalogue of the images the warehouse holds: the parts merged, the images no part
    lists backfilled (and their rows kept in the processed store for the next runs).

    Parameters
    ----------
    storage : Storage
        The warehouse (its ``processed()`` store holds the backfill's rows).
    filed : dict
        Image key -> size of every filed image (from this run's listing).
    submit : callable
        ``submit(work, *args) -> Future``: the run's worker pool.
    report : RunReport
        Where unusable parts and unreadable images are reported.
    now : datetime.datetime
        The run's time (the backfill part's name).

    Raises
    ------
    StorageError
        When a listing, a read or the backfill part's write fails.
    """
    processed = storage.processed()
    merged = merge_parts(read_parts(storage, processed, submit, report), present=set(filed))
    listed = set(merged.column("warehouse_key").to_pylist())
    missing = {key: size for key, size in filed.items() if key not in listed}
    added = backfill(storage, missing, submit, report, max_header_bytes=max_header_bytes)
    if added.num_rows:
        processed.write(backfill_key(now), part_bytes(added), "application/vnd.apache.parquet")
        merged = merge_parts([merged, added])
    return merged


def images_table(catalogue: pa.Table, patient_clean: pd.DataFrame | None) -> pd.DataFrame:
    """``images.csv``: one row per filed image, the catalogue's columns then each patient's
    clinical summary (`CLINICAL_COLUMNS`: ``SubmittingCentre``, ``covid_positive``, ``age``,
    ``sex``, from the cleaned patient table; missing for a patient without one)."""
    table = catalogue.to_pandas(types_mapper=_nullable)
    for column in ("upload_date", "StudyDate"):
        table[column] = date_column(table[column].tolist()).to_numpy()
    summary = pd.DataFrame({"PatientID": pd.Series(dtype="str")})
    if patient_clean is not None and "Pseudonym" in patient_clean.columns:
        summary = pd.DataFrame({"PatientID": patient_clean["Pseudonym"].astype("str")})
        for source, name in CLINICAL_COLUMNS.items():
            if source in patient_clean.columns:
                summary[name] = patient_clean[source].to_numpy()
        summary = summary.drop_duplicates("PatientID")
    for name in CLINICAL_COLUMNS.values():
        if name not in summary.columns:
            summary[name] = pd.Series(dtype="object")
    joined = table.merge(summary, on="PatientID", how="left", sort=False)
    joined["covid_positive"] = joined["covid_positive"].astype("boolean")
    joined["age"] = pd.to_numeric(joined["age"], errors="coerce").astype("float64")
    return joined


def _nullable(arrow_type):
    """Integers stay integers when a value is missing (pandas' nullable types)."""
    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_string(arrow_type):
        return pd.StringDtype()
    return None


def images_csv_table(images: pd.DataFrame) -> pd.DataFrame:
    """The CSV form of ``images``: PixelSpacing as DICOM writes it (``0.7\\0.7``)."""
    out = images.copy()
    out["PixelSpacing"] = [
        "\\".join(f"{v:g}" for v in values) if values is not None and len(values) else None
        for values in out["PixelSpacing"]
    ]
    return out


def run_catalogue(storage: Storage, index, state, now: dt.datetime) -> pa.Table:
    """`image_catalogue` for a ``dataprocess`` run: its listing (``index``, a
    `listing.WarehouseIndex` with names), its worker pool and settings (``state``)."""
    return image_catalogue(
        storage,
        index.filed_images(),
        state.workers.submit,
        state.report,
        now,
        max_header_bytes=state.settings.max_header_bytes,
    )
