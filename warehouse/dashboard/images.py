"""The image catalogue in a dashboard batch: the whole catalogue (`warehouse.catalogue.merge`)
joined with each patient's clinical summary, as ``images.parquet`` and ``images.csv``.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pyarrow as pa

from warehouse.catalogue.merge import image_catalogue
from warehouse.dashboard.tables import date_column
from warehouse.storage.base import Storage

logger = logging.getLogger("dataprocess")

#: The clinical summary joined to each image: cleaned patient table column -> images column.
CLINICAL_COLUMNS = {
    "SubmittingCentre": "SubmittingCentre",
    "filename_covid_status": "covid_positive",
    "age_update": "age",
    "sex_update": "sex",
}


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
