"""The image catalogue in a dashboard batch: ``images.parquet``, the whole catalogue
(`warehouse.catalogue.merge`) with each patient's clinical summary, written streamed; and the
counts of images the pages draw from it.

A batch has no ``images.csv``: at millions of rows a CSV helps nobody (a spreadsheet opens a
million rows at most) and costs the run its memory; any Parquet reader (pandas, DuckDB, or
``warehouse.select``) reads ``images.parquet``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.catalogue.merge import SUMMARY_COLUMNS

#: The clinical summary joined to each image: cleaned patient table column -> images column,
#: and its type.
CLINICAL_COLUMNS = {
    "SubmittingCentre": ("SubmittingCentre", pa.string()),
    "filename_covid_status": ("covid_positive", pa.bool_()),
    "age_update": ("age", pa.float64()),
    "sex_update": ("sex", pa.string()),
}


def _values(column: pd.Series, arrow_type: pa.DataType) -> pa.Array:
    """A patient table column as an array of ``arrow_type`` (a value that is not one: null)."""
    values: list[str | bool | float | None] = []
    for value in column.tolist():
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            values.append(None)
        elif pa.types.is_string(arrow_type):
            values.append(str(value))
        elif pa.types.is_boolean(arrow_type):
            values.append(bool(value))
        else:
            number = pd.to_numeric(value, errors="coerce")
            values.append(None if pd.isna(number) else float(number))
    return pa.array(values, type=arrow_type)


def _clinical_columns(
    patient_clean: pd.DataFrame | None,
) -> tuple[pa.Array, dict[str, pa.Array]]:
    """Each patient's pseudonym and its `CLINICAL_COLUMNS` values (first row of each)."""
    ids = pa.array([], type=pa.string())
    columns: dict[str, pa.Array] = {}
    if patient_clean is not None and "Pseudonym" in patient_clean.columns:
        first = patient_clean.drop_duplicates("Pseudonym")
        ids = pa.array(first["Pseudonym"].astype("str").tolist(), type=pa.string())
        for source, (name, arrow_type) in CLINICAL_COLUMNS.items():
            if source in first.columns:
                columns[name] = _values(first[source], arrow_type)
    return ids, columns


def clinical_summary(
    patient_clean: pd.DataFrame | None,
) -> Callable[[pa.Table], dict[str, pa.Array]]:
    """The columns ``images.parquet`` adds to catalogue rows: for a table of rows, each
    row's patient's `CLINICAL_COLUMNS` values (from the cleaned patient table, by
    ``Pseudonym``; null for a patient without a row)."""
    ids, columns = _clinical_columns(patient_clean)

    def summary_of(rows: pa.Table) -> dict[str, pa.Array]:
        positions = pc.index_in(rows.column("PatientID"), value_set=ids)
        out = {}
        for name, arrow_type in CLINICAL_COLUMNS.values():
            known = columns.get(name)
            if known is None or not len(known):
                out[name] = pa.nulls(rows.num_rows, type=arrow_type)
            else:
                out[name] = pc.take(known, positions)
        return out

    return summary_of


def clinical_fingerprint(patient_clean: pd.DataFrame | None) -> str:
    """Return a digest of what `clinical_summary` adds to rows.

    Two batches whose digests are equal join the same values to the same catalogue rows.
    """
    ids, columns = _clinical_columns(patient_clean)
    table = pa.table({"Pseudonym": ids, **columns})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def image_summary(counts: Counter) -> pd.DataFrame:
    """The pages' counts of catalogued images: one row per distinct combination of
    `SUMMARY_COLUMNS` and its number of images (``images``)."""
    rows = [(*values, n) for values, n in counts.items()]
    table = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, "images"])
    table["images"] = table["images"].astype("int64")
    return table
