"""The series table: one row per series of the catalogue, and whether it is a whole volume.

Whole: a volume a 3D model can be trained on.

A series is the images of one ``SeriesInstanceUID`` of one study, patient and group (an image
without a SeriesInstanceUID is in none). Its row counts its images and frames, the range of
their ``InstanceNumber`` and the numbers missing from it, and, from each image's
``ImagePositionPatient`` and ``ImageOrientationPatient``, the spacing of its slices along the
slice normal (the cross product of the row and column direction cosines of one orientation of
the series, the least in list order; each image's position projected on it, sorted, and the
steps between neighbours). The rules, with their
tolerances:

- ``gaps``: an InstanceNumber between the first and the last is missing.
- ``duplicate_positions``: two images are within `SPACING_TOLERANCE_MM` of each other along
  the normal.
- ``irregular_spacing``: the steps between neighbouring positions (those over
  `SPACING_TOLERANCE_MM`) differ by more than `SPACING_TOLERANCE_MM` (a missing slice shows
  here as a step twice as long).
- ``mixed_orientation``: a direction cosine differs across the series by more than
  `ORIENTATION_TOLERANCE`.
- ``single_image``: one image. ``multi_frame``: an image of more than one frame.
- ``complete_volume``: at least `MIN_VOLUME_IMAGES` single-frame images, each with a position
  and an orientation, and none of the flags above.

``slice_spacing`` is the mean of those steps (over `SPACING_TOLERANCE_MM`), ``spacing_min``
and ``spacing_max`` their extremes.

The table is computed by DuckDB from the merged catalogue's Parquet file on disk with window
functions and plain aggregates only (no median, no DISTINCT: those keep every value in
memory), which spill to a temporary folder past `MEMORY_LIMIT`, so a catalogue of millions of
images takes a flat amount of memory; the result is streamed into ``series.parquet``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.rows import SCHEMA, conformed

#: Two positions along the slice normal closer than this (mm) are the same position; steps
#: between neighbouring slices that differ by more are irregular.
SPACING_TOLERANCE_MM = 0.2
#: A direction cosine of ImageOrientationPatient that varies across a series by more than
#: this is a mixed orientation.
ORIENTATION_TOLERANCE = 0.01
#: The fewest images a complete volume has (fewer show no spacing to be regular).
MIN_VOLUME_IMAGES = 3
#: DuckDB's memory while it computes the table (it spills to disk past it).
MEMORY_LIMIT = "256MB"
#: Rows written at a time.
BATCH_ROWS = 65_536
#: The flags, in the order of the table.
FLAGS = (
    "complete_volume",
    "gaps",
    "irregular_spacing",
    "mixed_orientation",
    "duplicate_positions",
    "single_image",
    "multi_frame",
)
#: What identifies a series (the catalogue's columns).
SERIES_KEY = ("group", "PatientID", "StudyInstanceUID", "SeriesInstanceUID")
#: The catalogue's columns the table is computed from.
SOURCE_COLUMNS = (
    *SERIES_KEY,
    "modality_folder",
    "Modality",
    "InstanceNumber",
    "NumberOfFrames",
    "ImagePositionPatient",
    "ImageOrientationPatient",
)
SERIES_SCHEMA = pa.schema(
    [
        ("group", pa.string()),
        ("modality_folder", pa.string()),
        ("Modality", pa.string()),
        ("PatientID", pa.string()),
        ("StudyInstanceUID", pa.string()),
        ("SeriesInstanceUID", pa.string()),
        ("instances", pa.int64()),
        ("frames", pa.int64()),
        ("instance_min", pa.int32()),
        ("instance_max", pa.int32()),
        ("missing_instances", pa.int64()),
        ("positioned", pa.int64()),
        ("slice_spacing", pa.float64()),
        ("spacing_min", pa.float64()),
        ("spacing_max", pa.float64()),
        ("orientation_spread", pa.float64()),
        ("duplicate_count", pa.int64()),
        *((flag, pa.bool_()) for flag in FLAGS),
    ]
)

_KEY = ", ".join(f'"{name}"' for name in SERIES_KEY)
# (DuckDB lists count from 1: o[1:3] the row cosines, o[4:6] the column cosines)
_SQL = f"""
WITH images AS (
    SELECT {_KEY}, modality_folder, Modality, InstanceNumber, NumberOfFrames,
        ImagePositionPatient AS p, ImageOrientationPatient AS o
    FROM read_parquet($source)
    WHERE SeriesInstanceUID IS NOT NULL
),
referenced AS (
    SELECT *, min(o) OVER (PARTITION BY {_KEY}) AS r FROM images
),
projected AS (
    SELECT *,
        p[1] * (r[2] * r[6] - r[3] * r[5])
        + p[2] * (r[3] * r[4] - r[1] * r[6])
        + p[3] * (r[1] * r[5] - r[2] * r[4]) AS along
    FROM referenced
),
stepped AS (
    SELECT *,
        along - lag(along) OVER (PARTITION BY {_KEY} ORDER BY along) AS step
    FROM projected
),
numbers AS (
    SELECT {_KEY}, count(*) AS distinct_numbers
    FROM (SELECT DISTINCT {_KEY}, InstanceNumber FROM images WHERE InstanceNumber IS NOT NULL)
    GROUP BY {_KEY}
),
series AS (
    SELECT {_KEY},
        min(modality_folder) AS modality_folder,
        min(Modality) AS Modality,
        count(*) AS instances,
        sum(coalesce(NumberOfFrames, 1)) AS frames,
        min(InstanceNumber) AS instance_min,
        max(InstanceNumber) AS instance_max,
        count(along) AS positioned,
        avg(step) FILTER (WHERE step > $spacing) AS slice_spacing,
        min(step) FILTER (WHERE step > $spacing) AS spacing_min,
        max(step) FILTER (WHERE step > $spacing) AS spacing_max,
        greatest(
            max(o[1]) - min(o[1]), max(o[2]) - min(o[2]), max(o[3]) - min(o[3]),
            max(o[4]) - min(o[4]), max(o[5]) - min(o[5]), max(o[6]) - min(o[6])
        ) AS orientation_spread,
        count(*) FILTER (WHERE step <= $spacing) AS duplicate_count,
        coalesce(max(NumberOfFrames) > 1, false) AS multi_frame
    FROM stepped
    GROUP BY {_KEY}
),
counted AS (
    SELECT series.*,
        instance_max::BIGINT - instance_min + 1 - distinct_numbers AS missing_instances
    FROM series LEFT JOIN numbers USING ({_KEY})
),
flagged AS (
    SELECT *,
        coalesce(missing_instances > 0, false) AS gaps,
        coalesce(spacing_max - spacing_min > $spacing, false) AS irregular_spacing,
        coalesce(orientation_spread > $orientation, false) AS mixed_orientation,
        duplicate_count > 0 AS duplicate_positions,
        instances = 1 AS single_image
    FROM counted
)
SELECT "group", modality_folder, Modality, PatientID, StudyInstanceUID, SeriesInstanceUID,
    instances, frames, instance_min, instance_max, missing_instances, positioned,
    slice_spacing, spacing_min, spacing_max, orientation_spread, duplicate_count,
    instances >= $fewest AND positioned = instances AND NOT gaps AND NOT irregular_spacing
        AND NOT mixed_orientation AND NOT duplicate_positions AND NOT multi_frame
        AS complete_volume,
    gaps, irregular_spacing, mixed_orientation, duplicate_positions, single_image, multi_frame
FROM flagged
ORDER BY {_KEY}
"""


def _connection(workdir: str) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection for the table: bounded memory, spilling into ``workdir``."""
    spill = os.path.join(workdir, "series-spill")
    os.makedirs(spill, exist_ok=True)
    return duckdb.connect(
        ":memory:",
        config={
            "memory_limit": MEMORY_LIMIT,
            "temp_directory": spill,
            "threads": 2,
            "preserve_insertion_order": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        },
    )


def series_batches(source: str, workdir: str) -> Iterator[pa.Table]:
    """Yield the series table of the catalogue in the Parquet file ``source``.

    In order of group, patient, study and series, `BATCH_ROWS` rows at a time
    (`SERIES_SCHEMA`).

    Parameters
    ----------
    source : str
        A local Parquet file of catalogue rows (with the `SOURCE_COLUMNS`; a merged catalogue
        or a batch's catalogue segment).
    workdir : str
        A local folder for DuckDB's temporary files.
    """
    connection = _connection(workdir)
    try:
        relation = connection.sql(
            _SQL,
            params={
                "source": source,
                "spacing": SPACING_TOLERANCE_MM,
                "orientation": ORIENTATION_TOLERANCE,
                "fewest": MIN_VOLUME_IMAGES,
            },
        )
        reader = relation.to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            yield pa.Table.from_batches([batch]).cast(SERIES_SCHEMA)
    finally:
        connection.close()


def write_series(source: str, path: str, workdir: str) -> int:
    """Write the series table of the catalogue in ``source`` to ``path``; return its rows.

    Parquet (zstd), streamed.
    """
    return _written(series_batches(source, workdir), path)


def _written(batches: Iterator[pa.Table], path: str) -> int:
    rows = 0
    with pq.ParquetWriter(path, SERIES_SCHEMA, compression="zstd") as out:
        for table in batches:
            out.write_table(table)
            rows += table.num_rows
    return rows


_COLUMNS = ", ".join(f'"{name}"' for name in SERIES_SCHEMA.names)
# the last table's rows of the series with no changed row, then the changed series computed
# again from all their rows (a series changed: its UID has a row in ``changed``)
_UPDATE_SQL = f"""
SELECT {_COLUMNS} FROM read_parquet($previous)
WHERE SeriesInstanceUID NOT IN (
    SELECT SeriesInstanceUID FROM read_parquet($changed) WHERE SeriesInstanceUID IS NOT NULL
)
UNION ALL
SELECT {_COLUMNS} FROM ({_SQL.replace("$source", "$changed")})
ORDER BY {_KEY}
"""


def is_series_table(path: str) -> bool:
    """Tell whether the local file ``path`` is a series table of this version.

    Its columns and types must be `SERIES_SCHEMA`'s; one that is not is computed again in full.
    """
    try:
        return pq.read_schema(path).remove_metadata() == SERIES_SCHEMA
    except (pa.ArrowException, OSError):
        return False


def update_series(previous: str, changed: str, path: str, workdir: str) -> int:
    """Write to ``path`` the series table ``previous`` brought up to date; return its rows.

    ``changed`` holds every catalogue row (`SOURCE_COLUMNS`) of the series that changed
    since (`catalogue.merge.ChangedSeries`): those are computed again, the others' rows are
    kept as they are. The same table as `write_series` over the whole catalogue, at the cost
    of the changed series and a pass over the last table (a row per series, not per image).
    """
    connection = _connection(workdir)
    try:
        relation = connection.sql(
            _UPDATE_SQL,
            params={
                "previous": previous,
                "changed": changed,
                "spacing": SPACING_TOLERANCE_MM,
                "orientation": ORIENTATION_TOLERANCE,
                "fewest": MIN_VOLUME_IMAGES,
            },
        )
        batches = (
            pa.Table.from_batches([batch]).cast(SERIES_SCHEMA)
            for batch in relation.to_arrow_reader(BATCH_ROWS)
        )
        return _written(batches, path)
    finally:
        connection.close()


#: What `series_counts` counts per group, patient and modality folder: series, and each flag.
COUNT_COLUMNS = ("series", *FLAGS)
_COUNT_KEY = ("group", "PatientID", "modality_folder")


def series_counts(file: pq.ParquetFile) -> pd.DataFrame:
    """Count a series table's series and flags per group, patient and modality folder.

    Streamed, `BATCH_ROWS` series at a time.

    Parameters
    ----------
    file : pyarrow.parquet.ParquetFile
        A series table (`SERIES_SCHEMA`).

    Returns
    -------
    pandas.DataFrame
        Columns ``group``, ``PatientID``, ``modality_folder`` and `COUNT_COLUMNS` (int64).
    """
    counted = []
    columns = [*_COUNT_KEY, *FLAGS]
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch])
        grouped = table.group_by(list(_COUNT_KEY), use_threads=False).aggregate(
            [([], "count_all"), *((flag, "sum") for flag in FLAGS)]
        )
        counted.append(
            grouped.rename_columns(
                {"count_all": "series", **{f"{flag}_sum": flag for flag in FLAGS}}
            )
            .select([*_COUNT_KEY, *COUNT_COLUMNS])
            .to_pandas()
        )
    if not counted:
        return pd.DataFrame(
            {
                **{name: pd.Series([], dtype="str") for name in _COUNT_KEY},
                **{name: pd.Series([], dtype="int64") for name in COUNT_COLUMNS},
            }
        )
    frame = pd.concat(counted, ignore_index=True)
    frame = frame.groupby(list(_COUNT_KEY), as_index=False, dropna=False)[list(COUNT_COLUMNS)].sum()
    return frame.astype({name: "int64" for name in COUNT_COLUMNS})


def write_source(batches: Iterable[pa.Table], path: str) -> None:
    """Write the `SOURCE_COLUMNS` of a catalogue's rows to a local file, streamed.

    ``batches`` are the rows (tables), ``path`` the file; a column they lack is null.
    """
    schema = pa.schema([SCHEMA.field(name) for name in SOURCE_COLUMNS])
    with pq.ParquetWriter(path, schema, compression="zstd") as out:
        for table in batches:
            out.write_table(conformed(table, schema))
