"""The image catalogue in a dashboard batch: ``images/``, the whole catalogue
(`warehouse.catalogue.merge`) with each patient's clinical summary, in segments
(`catalogue.segments`: only those the day changes are written); and the counts of images the
pages draw from it.

A batch has no ``images.csv``: at millions of rows a CSV helps nobody (a spreadsheet opens a
million rows at most) and costs the run its memory; any Parquet reader (pandas, DuckDB, or
``warehouse.select``) reads the folder ``images/`` as one table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.catalogue.merge import SUMMARY_COLUMNS

#: The clinical summary joined to each image: cleaned patient table column -> images column,
#: and its type.
CLINICAL_COLUMNS = {
    "SubmittingCentre": ("SubmittingCentre", pa.string()),
    "filename_covid_status": ("covid_positive", pa.bool_()),
    "age_update": ("age", pa.float64()),
    "sex_update": ("sex", pa.string()),
}


#: The clinical summary a batch saves, for the next to tell which patients' changed.
CLINICAL_SUMMARY_FILE = "rows/clinical-summary.parquet"


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


def clinical_summary(summary: pa.Table) -> Callable[[pa.Table], dict[str, pa.Array]]:
    """The columns the catalogue's segments add to catalogue rows: for a table of rows, each
    row's patient's `CLINICAL_COLUMNS` values (from ``summary``, `summary_table`, by
    ``PatientID``; null for a patient without a row)."""
    ids = summary.column("PatientID").combine_chunks()

    def summary_of(rows: pa.Table) -> dict[str, pa.Array]:
        positions = pc.index_in(rows.column("PatientID"), value_set=ids)
        return {
            name: pc.take(summary.column(name), positions).combine_chunks()
            if summary.num_rows
            else pa.nulls(rows.num_rows, type=arrow_type)
            for name, arrow_type in CLINICAL_COLUMNS.values()
        }

    return summary_of


def summary_table(patient_clean: pd.DataFrame | None) -> pa.Table:
    """What `clinical_summary` adds to rows, as a table: ``PatientID`` and each
    `CLINICAL_COLUMNS` column (the batch saves it: `CLINICAL_SUMMARY_FILE`)."""
    ids, columns = _clinical_columns(patient_clean)
    fields = [pa.field("PatientID", pa.string())]
    fields += [pa.field(name, arrow_type) for name, arrow_type in CLINICAL_COLUMNS.values()]
    data = [ids] + [
        columns.get(name, pa.nulls(len(ids), type=arrow_type))
        for name, arrow_type in CLINICAL_COLUMNS.values()
    ]
    return pa.table(data, schema=pa.schema(fields))


def summary_bytes(table: pa.Table) -> bytes:
    """``table`` (`summary_table`) as the Parquet file the batch saves."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def changed_patients(previous: bytes | None, current: pa.Table) -> pa.Array | None:
    """The patients whose clinical summary differs between the last batch's saved one
    (``previous``, `summary_bytes`) and ``current``: added, removed or another value.

    None when there is no saved summary or it is not one of this version (then every row's
    summary is taken as changed).
    """
    if previous is None:
        return None
    try:
        before = pq.read_table(pa.BufferReader(previous))
        if before.schema.remove_metadata() != current.schema.remove_metadata():
            return None
    except (pa.ArrowException, OSError, ValueError):
        return None
    old = {row[0]: row[1:] for row in zip(*(c.to_pylist() for c in before.columns), strict=True)}
    new = {row[0]: row[1:] for row in zip(*(c.to_pylist() for c in current.columns), strict=True)}
    changed = {p for p, values in new.items() if old.get(p, _ABSENT) != values}
    changed.update(p for p in old if p not in new)
    return pa.array(sorted(changed), pa.string())


#: A summary no patient has (a patient the last batch did not know).
_ABSENT = object()


def image_summary(counts: Counter) -> pd.DataFrame:
    """The pages' counts of catalogued images: one row per distinct combination of
    `SUMMARY_COLUMNS` and its number of images (``images``)."""
    rows = [(*values, n) for values, n in counts.items()]
    table = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, "images"])
    table["images"] = table["images"].astype("int64")
    return table
