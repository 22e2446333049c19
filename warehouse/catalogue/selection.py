"""Selecting images from the catalogue, and fetching a selection: the rules behind
``python -m warehouse.select``.

The catalogue is the newest ``images/`` (`catalogue.segments`) of the processed store
(``latest.csv`` names it). A selection is the rows that pass every filter given; it may not mix
the training and validation groups unless that is asked for explicitly (mixing them is how
hold-out leakage starts). A query is a SQL expression, run by DuckDB on a connection that can
read the catalogue and nothing else (no files, no network, no extensions, no Python objects): a
query string is often not the researcher's own, so it is data, never code. A download writes
each selected image and its metadata file under the same keys in a local folder, atomically (a
temporary file, then a rename), so an interrupted download leaves no partial file; files
already there are skipped (an image of the catalogued size, a metadata file that exists: it was
renamed into place whole). The catalogue is not trusted either: a row whose keys are not an
image of the selection and its own metadata file in the warehouse layout refuses the download.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq

from warehouse.catalogue.batches import LATEST_KEY, InvalidLatest, batch_folder, latest_paths
from warehouse.catalogue.segments import InvalidManifest, is_segments_folder, read_manifest
from warehouse.catalogue.series import SERIES_KEY
from warehouse.core.errors import ExpectedError, ObjectNotFound, PreconditionFailed
from warehouse.core.keys import (
    GROUPS,
    MAX_FILE_NAME_LENGTH,
    identifier_problem,
    image_name_problem,
    is_dicom_uid,
    is_safe_name,
    parse_image_key,
)
from warehouse.storage.base import Storage
from warehouse.storage.files import RANGE_CHUNK_BYTES, StoredFile, copy_to_file, ranged_chunks

#: Bytes per ranged read of a download (memory stays at one chunk per worker).
CHUNK_BYTES = RANGE_CHUNK_BYTES
#: The catalogue's columns a selection, its summary and its download use.
USED_COLUMNS = (
    "warehouse_key",
    "metadata_key",
    "group",
    "modality_folder",
    "upload_date",
    "object_size",
    "PatientID",
    "StudyInstanceUID",
    "SubmittingCentre",
    "covid_positive",
)
#: The settings of every connection that runs a user's SQL, locked once set: no file, network
#: or Python object reachable (only the tables registered), no extension installed or loaded,
#: nothing spilled to disk.
LOCKED_SETTINGS: dict[str, str | bool] = {
    "enable_external_access": False,
    "python_enable_replacements": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "temp_directory": "",
    "lock_configuration": True,
}
#: The relation a query is run on: the catalogue with each row's position.
_ROWS_VIEW = "catalogue_rows"
#: How much of a user's text (a query, a key) an error message shows.
_SHOWN_CHARS = 200
#: How many keys a message naming changed objects shows (the rest are counted).
_SHOWN_KEYS = 20


class SelectionError(ExpectedError):
    """A selection that cannot be made (no catalogue, a bad filter, mixed groups)."""


def newest_batch_paths(processed: Storage) -> dict[str, str]:
    """The newest batch's files as ``latest.csv`` names them (archive -> path).

    Raises
    ------
    SelectionError
        When there is no ``latest.csv`` or it cannot be used.
    StorageError
        When the read fails.
    """
    try:
        paths = latest_paths(processed)
    except InvalidLatest as exc:
        raise SelectionError(str(exc)) from None
    if paths is None:
        raise SelectionError(f"no {LATEST_KEY} in {processed.url}: run dataprocess first")
    return paths


def read_catalogue(processed: Storage) -> tuple[str, pd.DataFrame]:
    """The newest catalogue (``images/`` of the batch ``latest.csv`` names): its key
    and its rows.

    Raises
    ------
    SelectionError
        When there is no batch, the batch has no image catalogue, or it cannot be read or
        lacks a column a selection uses (`USED_COLUMNS`).
    StorageError
        When a read fails.
    """
    paths = newest_batch_paths(processed)
    if "images" not in paths:
        raise SelectionError(
            f"the batch {LATEST_KEY} names has no image catalogue (no images filed, or "
            "written by an older dataprocess): run dataprocess again"
        )
    key = paths["images"]
    if key.endswith(".csv"):  # (a batch of an older dataprocess: the Parquet twin)
        key = key.removesuffix(".csv") + ".parquet"
    tables = []
    for segment, _ in catalogue_files(processed, key):
        try:
            tables.append(pq.read_table(pa.BufferReader(processed.read(segment))))
        except (pa.ArrowException, ValueError, OSError) as exc:
            detail = _printable(str(exc).split("\n", 1)[0])
            raise SelectionError(f"{segment} is not a Parquet file: {detail}") from None
    try:
        catalogue = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowException, ValueError) as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        raise SelectionError(f"{key}: its segments do not make one table: {detail}") from None
    missing = [c for c in USED_COLUMNS if c not in catalogue.columns]
    if missing:
        raise SelectionError(f"{key} has no column {', '.join(missing)}: run dataprocess again")
    return key, catalogue


def catalogue_files(processed: Storage, path: str) -> list[tuple[str, int]]:
    """The files of the catalogue ``latest.csv`` names at ``path``: ``(key, bytes)`` each.

    Its segments, as its manifest names them (`catalogue.segments`), or its one file (a batch
    of an older version).

    Raises
    ------
    SelectionError
        When the manifest cannot be read, or the file is missing.
    StorageError
        When a read fails.
    """
    if is_segments_folder(path):
        try:
            manifest = read_manifest(processed, path)
        except InvalidManifest as exc:
            raise SelectionError(f"{_printable(str(exc))}: run dataprocess again") from None
        return [(segment.key, segment.size) for segment in manifest.segments]
    size = next((info.size for info in processed.list(path) if info.key == path), None)
    if size is None:
        raise SelectionError(f"{path} is missing: run dataprocess again")
    return [(path, size)]


@dataclass(frozen=True)
class Filters:
    """What a selection keeps (every filter given must hold; an empty one keeps all)."""

    groups: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    centres: tuple[str, ...] = ()
    since: dt.date | None = None
    until: dt.date | None = None
    positive: bool | None = None
    query: str | None = None
    both_groups: bool = False
    #: Leave out the images the identifying-data screen flagged (`flagged_rows`).
    exclude_identifying: bool = False
    complete_volumes: bool = False


def locked_connection(tables: Mapping[str, object]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that can read ``tables`` and nothing else.

    Each table is registered as a view of its name. The connection runs with
    `LOCKED_SETTINGS`: external access (files, URLs, ``ATTACH``, ``COPY``, ``INSTALL``,
    ``LOAD``) and Python replacement scans are off, extensions are neither installed nor
    loaded on demand, and ``SET`` can change none of it. This is the one way SQL written by
    someone else is run (``--query``, ``--sql`` and `warehouse.catalogue.open` open their
    connections here).

    Parameters
    ----------
    tables : mapping
        View name to its rows (a pandas frame, an Arrow table or an Arrow dataset).
    """
    connection = duckdb.connect(":memory:", config=dict(LOCKED_SETTINGS))
    for name, table in tables.items():
        connection.register(name, table)
    return connection


#: The views SQL sees (``--sql``, `warehouse.catalogue.open`) but ``images`` (the catalogue
#: ``latest.csv`` names): view name -> its file in the batch folder. A view is there when the
#: batch holds its file, so a batch written before a table existed (``series.parquet``)
#: simply has no such view.
VIEW_FILES = {
    "patients": "patient_clean.parquet",
    "series": "series.parquet",
}
#: Rows a streamed result hands on at a time (to a file, to the screen).
RESULT_ROWS = 16_384


@dataclass(frozen=True)
class BatchFiles:
    """The newest batch: its folder, and the files of each of its views (``images`` and
    `VIEW_FILES`), ``(key, bytes)`` each."""

    folder: str
    files: dict[str, list[tuple[str, int]]]


def batch_files(processed: Storage) -> BatchFiles:
    """The newest batch (``latest.csv`` names it) and the files of its views.

    A read of ``latest.csv``, of the catalogue's manifest and one listing of the batch folder.

    Raises
    ------
    SelectionError
        When there is no batch, or it has no image catalogue.
    StorageError
        When a read fails.
    """
    paths = newest_batch_paths(processed)
    folder = batch_folder(paths)
    if folder is None:
        raise SelectionError(f"{LATEST_KEY} names no batch folder: run dataprocess again")
    images = paths.get("images")
    if images is None or not images.endswith((".parquet", "/")):
        raise SelectionError(
            f"the batch {folder} has no image catalogue (no images filed, or written by an "
            "older dataprocess): run dataprocess again"
        )
    files = {"images": catalogue_files(processed, images)}
    _, objects = processed.list_folders(folder + "/")
    by_name = {info.key.rpartition("/")[2]: info for info in objects if not info.link}
    for view, name in VIEW_FILES.items():
        if name in by_name:
            files[view] = [(by_name[name].key, by_name[name].size)]
    return BatchFiles(folder, files)


def open_views(processed: Storage, work: Path) -> tuple[BatchFiles, duckdb.DuckDBPyConnection]:
    """The newest batch's tables as the views of a `locked_connection`.

    Each view's Parquet file (`VIEW_FILES`, those the batch holds) is copied into the folder
    ``work`` (the caller's, a temporary one) and scanned from there by DuckDB as a dataset:
    a query reads the columns and row groups it needs, never the whole table at once.

    Raises
    ------
    SelectionError, StorageError
        As `batch_files`; SelectionError too when a table is shorter than listed.
    """
    found = batch_files(processed)
    tables = {}
    for view, files in found.files.items():
        paths = []
        for number, (key, size) in enumerate(files):
            path = work / f"{view}-{number:06d}.parquet"
            written = copy_to_file(processed, key, size, path)
            if written < size:
                raise SelectionError(f"{key}: {written:,} bytes read of {size:,}")
            paths.append(str(path))
        try:
            tables[view] = pa_dataset.dataset(paths, format="parquet")
        except (pa.ArrowException, OSError) as exc:
            detail = _printable(str(exc).split("\n", 1)[0])
            raise SelectionError(f"{view} is not a Parquet table: {detail}") from None
    return found, locked_connection(tables)


def read_only_relation(
    connection: duckdb.DuckDBPyConnection, sql: str, label: str = "--sql"
) -> duckdb.DuckDBPyRelation:
    """Return the relation of one read-only statement of someone else's SQL on
    ``connection`` (a `locked_connection`), not yet run.

    Raises
    ------
    SelectionError
        When ``sql`` is not one ``SELECT`` statement (a ``WITH``, ``DESCRIBE`` or
        ``SUMMARIZE`` is one), or DuckDB refuses it: one line, starting with ``label`` and
        the SQL quoted and bounded.
    """
    shown = _shown(sql)
    try:
        statements = connection.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise SelectionError(f"{label} {shown}: one read-only statement (a SELECT) only")
        return connection.sql(sql)
    except duckdb.Error as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        raise SelectionError(f"{label} {shown}: {detail}") from None


def sql_result(connection: duckdb.DuckDBPyConnection, sql: str) -> pa.RecordBatchReader:
    """Run one read-only statement (`read_only_relation`) on ``connection``: its rows,
    streamed, `RESULT_ROWS` at a time.

    Raises
    ------
    SelectionError
        As `read_only_relation`, or when DuckDB fails to run it.
    """
    relation = read_only_relation(connection, sql)
    try:
        return relation.to_arrow_reader(RESULT_ROWS)
    except duckdb.Error as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        raise SelectionError(f"--sql {_shown(sql)}: {detail}") from None


#: The outcome labels joined to each image of a selection (``--output``, a release's
#: manifest) from the batch's cleaned patient table (``patient_clean``, by PatientID =
#: Pseudonym): label -> the columns it is read from, the first holding a value winning. A
#: positive patient's swab date is ``Date of Positive Covid Swab``, a negative one's
#: ``SwabDate``; the clinical summary (group, ``covid_positive``, ``age``, ``sex``) is in the
#: catalogue already.
OUTCOME_LABELS = {
    "death": ("death",),
    "itu_admission": ("itu_admission",),
    "intubation": ("intubation",),
    "swab_date": ("swabdate", "date_of_positive_covid_swab"),
}


def patient_outcomes(processed: Storage, batch: BatchFiles) -> pd.DataFrame:
    """Each patient's `OUTCOME_LABELS`, indexed by Pseudonym (the first row of each), read
    from the batch's ``patient_clean.parquet`` (only those columns: ranged reads); empty when
    the batch has no such table.

    Raises
    ------
    SelectionError
        When the table is not a Parquet file.
    StorageError
        When a read fails.
    """
    files = batch.files.get("patients")
    empty = pd.DataFrame({name: pd.Series(dtype="object") for name in OUTCOME_LABELS})
    if not files:
        return empty.rename_axis("Pseudonym")
    key, size = files[0]
    try:
        file = pq.ParquetFile(StoredFile(processed, key, size))
        wanted = {c for sources in OUTCOME_LABELS.values() for c in sources} | {"Pseudonym"}
        present = [name for name in file.schema_arrow.names if name in wanted]
        table = file.read(columns=present).to_pandas()
    except (pa.ArrowException, ValueError, OSError) as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        raise SelectionError(f"{key} is not a Parquet file: {detail}") from None
    if "Pseudonym" not in table.columns:
        return empty.rename_axis("Pseudonym")
    table = table.drop_duplicates("Pseudonym").set_index("Pseudonym")
    out = pd.DataFrame(index=table.index)
    for label, sources in OUTCOME_LABELS.items():
        values = pd.Series(pd.NA, index=table.index, dtype="object")
        for source in reversed(sources):  # the first source wins: filled last
            if source in table.columns:
                column = table[source]
                values = column.where(column.notna(), values).astype("object")
        if label == "swab_date":
            days = pd.to_datetime(values, errors="coerce")
            values = pd.Series([d.date() if pd.notna(d) else None for d in days], index=days.index)
        else:
            values = values.astype("boolean")
        out[label] = values
    return out


def with_labels(chosen: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """``chosen`` with each image's patient's outcome labels (`patient_outcomes`) as more
    columns (null for a patient without any); a column of the same name is replaced."""
    out = chosen.drop(columns=[c for c in outcomes.columns if c in chosen.columns])
    joined = outcomes.reindex(out["PatientID"].astype("object").to_numpy())
    for label in outcomes.columns:
        out[label] = joined[label].to_numpy()
    return out


#: The Arrow type of each outcome label (`OUTCOME_LABELS`) in a file written.
LABEL_TYPES = {
    "death": pa.bool_(),
    "itu_admission": pa.bool_(),
    "intubation": pa.bool_(),
    "swab_date": pa.date32(),
}


def frame_table(frame: pd.DataFrame, types: pa.Schema | None = None) -> pa.Table:
    """``frame`` (a selection, with labels) as an Arrow table, each column of the type
    ``types`` (the catalogue's schema) or `LABEL_TYPES` give it, inferred otherwise; no
    index. A pandas frame holds a nullable boolean, an integer with nulls or a date as
    objects or floats: this gives them their types back."""
    arrays, fields = [], []
    for index, name in enumerate(frame.columns):
        column = frame.iloc[:, index]
        known = types.field(name).type if types is not None and name in types.names else None
        kind = known or LABEL_TYPES.get(name)
        array = pa.array(column, type=kind, from_pandas=True)
        arrays.append(array)
        fields.append(pa.field(str(name), array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def expression_problem(expression: str) -> str | None:
    """Why ``expression`` cannot be put whole inside the parentheses of ``WHERE (...)``, or
    None.

    Its tokens (DuckDB's) must hold no statement separator, no comment, and parentheses that
    never close more than they opened and end balanced, so no ``)`` can end the clause
    around it.
    """
    tokens = duckdb.tokenize(expression)
    depth = 0
    for number, (start, kind) in enumerate(tokens):
        end = tokens[number + 1][0] if number + 1 < len(tokens) else len(expression)
        if kind == duckdb.token_type.comment:
            return "a comment is not allowed"
        if kind != duckdb.token_type.operator:
            continue
        for char in expression[start:end]:
            if char == ";":
                return "one expression only (no ';')"
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth < 0:
                return f"a ')' at {start} closes a parenthesis it did not open"
    if depth:
        return "a '(' is not closed"
    return None


def query_rows(catalogue: pd.DataFrame, query: str) -> np.ndarray:
    """Which rows of ``catalogue`` pass ``query``: a boolean array, by position.

    ``query`` is a SQL expression (a ``WHERE`` clause's) on the catalogue's columns, run by
    DuckDB on a `locked_connection` whose view ``images`` is the catalogue: it can read the
    catalogue (subqueries included) and nothing else.

    Raises
    ------
    SelectionError
        When ``query`` is not one expression, or DuckDB refuses it (a syntax error, an
        unknown column: the message then lists the catalogue's columns, a type error).
    """
    shown = _shown(query)
    problem = expression_problem(query)
    if problem:
        raise SelectionError(f"--query {shown}: {problem}")
    position = "position"
    while position in catalogue.columns:
        position = f"_{position}"
    rows = catalogue.reset_index(drop=True).assign(**{position: np.arange(len(catalogue))})
    sql = f'SELECT "{position}" FROM {_ROWS_VIEW} AS images WHERE ({query})'
    connection = locked_connection({"images": catalogue, _ROWS_VIEW: rows})
    try:
        statements = connection.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise SelectionError(f"--query {shown}: not one expression")
        found = connection.execute(sql).fetchnumpy()[position]
    except duckdb.Error as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        if isinstance(exc, duckdb.BinderException):
            detail += f" (the catalogue's columns: {', '.join(map(str, catalogue.columns))})"
        if isinstance(exc, duckdb.ParserException):
            detail += _keyword_columns_hint(query, catalogue.columns)
        raise SelectionError(f"--query {shown}: {detail}") from None
    finally:
        connection.close()
    keep = np.zeros(len(catalogue), dtype=bool)
    keep[np.asarray(found, dtype=np.int64)] = True
    return keep


def _keyword_columns_hint(query: str, columns: Iterable) -> str:
    """A hint for a query that names a column spelt like an SQL keyword (``group``) without
    the double quotes it then needs; an empty string when it names none."""
    tokens = duckdb.tokenize(query)
    ends = [start for start, _ in tokens[1:]] + [len(query)]
    names = {str(c).lower(): str(c) for c in columns}
    bare = sorted(
        {
            names[query[start:end].strip().lower()]
            for (start, kind), end in zip(tokens, ends, strict=True)
            if kind == duckdb.token_type.keyword and query[start:end].strip().lower() in names
        }
    )
    if not bare:
        return ""
    quoted = ", ".join(f'"{name}"' for name in bare)
    return f" (a column named like an SQL keyword is written in double quotes: {quoted})"


def _shown(text: str) -> str:
    """User text in a message: quoted, escaped, and at most `_SHOWN_CHARS` of it."""
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r}... ({len(text):,} characters)"
    return repr(text)


def _printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (a message of DuckDB's
    may quote the user's text)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def select(
    catalogue: pd.DataFrame, filters: Filters, volumes: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The catalogue rows that pass ``filters``.

    ``since`` and ``until`` bound the upload date (inclusive); ``positive`` keeps covid
    positive (True) or negative (False) patients; ``exclude_identifying`` leaves out the
    images the identifying-data screen flagged (`flagged_rows`); ``query`` is a SQL
    expression on the columns, run by DuckDB with no access outside the catalogue (`query_rows`:
    ``"Manufacturer = 'SIEMENS' AND Rows >= 2048"``); ``complete_volumes`` keeps the images
    of the series ``volumes`` lists (`read_complete_volumes`).

    Raises
    ------
    SelectionError
        When the query is not valid, or when the selection holds both groups and
        ``both_groups`` is not set.
    """
    keep = pd.Series(True, index=catalogue.index)
    if filters.groups:
        keep &= catalogue["group"].isin(filters.groups)
    if filters.modalities:
        keep &= catalogue["modality_folder"].isin(filters.modalities)
    if filters.centres:
        keep &= catalogue["SubmittingCentre"].isin(filters.centres)
    uploaded = pd.to_datetime(catalogue["upload_date"])
    if filters.since is not None:
        keep &= uploaded >= pd.Timestamp(filters.since)
    if filters.until is not None:
        keep &= uploaded <= pd.Timestamp(filters.until)
    if filters.positive is not None:
        positive = catalogue["covid_positive"].astype("boolean").fillna(False)
        keep &= positive if filters.positive else ~positive
    keep = keep.fillna(False).astype(bool)
    if filters.exclude_identifying:
        keep &= ~flagged_rows(catalogue)
    if filters.complete_volumes:
        keep &= in_series(catalogue, volumes)
    if filters.query:
        keep &= query_rows(catalogue, filters.query)
    chosen = catalogue[keep]
    groups = set(chosen["group"].dropna())
    if len(groups) > 1 and not filters.both_groups:
        raise SelectionError(
            "the selection holds training and validation images: choose one with --group, "
            "or mix them knowingly with --both-groups (mixing is how hold-out leakage starts)"
        )
    return chosen


def flagged_rows(catalogue: pd.DataFrame) -> pd.Series:
    """Which rows the identifying-data screen flagged: an ``identifying_attributes`` list
    with a keyword. A null (not screened: a row written before the screen, an image
    catalogued from its header) and a catalogue without the column (an older batch) are not
    flagged."""
    if "identifying_attributes" not in catalogue.columns:
        return pd.Series(False, index=catalogue.index)
    return catalogue["identifying_attributes"].map(_has_keyword).astype(bool)


def _has_keyword(value) -> bool:
    return value is not None and hasattr(value, "__len__") and len(value) > 0


def read_complete_volumes(processed: Storage) -> pd.DataFrame:
    """The series of the newest batch's series table (``series.parquet``) that are complete
    volumes: their `SERIES_KEY` columns.

    Raises
    ------
    SelectionError
        When there is no batch, or its batch has no series table (written by an older
        dataprocess) or one that cannot be read.
    StorageError
        When a read fails.
    """
    paths = newest_batch_paths(processed)
    if "series" not in paths:
        raise SelectionError(
            "--complete-volumes: the newest batch has no series table (series.parquet): "
            "run dataprocess again"
        )
    key = paths["series"]
    try:
        series = pd.read_parquet(
            io.BytesIO(processed.read(key)), columns=[*SERIES_KEY, "complete_volume"]
        )
    except (pa.ArrowException, ValueError, OSError) as exc:
        detail = _printable(str(exc).split("\n", 1)[0])
        raise SelectionError(f"{key} is not a series table pandas can read: {detail}") from None
    complete = series["complete_volume"].astype("boolean").fillna(False).astype(bool)
    return series.loc[complete, list(SERIES_KEY)]


def in_series(catalogue: pd.DataFrame, volumes: pd.DataFrame | None) -> pd.Series:
    """Which rows of ``catalogue`` are images of a series of ``volumes`` (by `SERIES_KEY`)."""
    if volumes is None or not len(volumes) or not len(catalogue):
        return pd.Series(False, index=catalogue.index)
    wanted = pd.MultiIndex.from_frame(volumes[list(SERIES_KEY)].astype("object"))
    rows = pd.MultiIndex.from_frame(catalogue[list(SERIES_KEY)].astype("object"))
    return pd.Series(rows.isin(wanted), index=catalogue.index)


def summary(chosen: pd.DataFrame) -> list[str]:
    """Lines saying what a selection holds: images, studies, patients and bytes, in all and
    by group."""

    def counts(rows: pd.DataFrame) -> str:
        studies = rows[["PatientID", "StudyInstanceUID"]].drop_duplicates()
        return (
            f"{len(rows):,} images, {len(studies):,} studies, "
            f"{rows['PatientID'].nunique():,} patients, {_size(int(rows['object_size'].sum()))}"
        )

    lines = [f"selected: {counts(chosen)}"]
    for group in GROUPS:
        rows = chosen[chosen["group"] == group]
        if len(rows):
            lines.append(f"  {group}: {counts(rows)}")
    return lines


def _size(count: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit} ({count:,} bytes)"
    return f"{count:,} bytes"


@dataclass(frozen=True, slots=True)
class Fetch:
    """One object to download: its key and, when known, its size.

    An object of a release is pinned: its S3 ``version_id`` when it has one, its ``etag``
    (S3) or ``sha256`` (a local store), and its size; what is written must be that content.
    """

    key: str
    size: int | None
    version_id: str | None = None
    etag: str | None = None
    sha256: str | None = None

    @property
    def pinned(self) -> bool:
        """Whether the object must be one exact content (an object of a release)."""
        return self.version_id is not None or self.etag is not None or self.sha256 is not None


class ChangedObject(SelectionError):
    """An object of a release that is no longer the content the release pinned, with no
    version of it to fall back on (``key`` names it)."""

    def __init__(self, key: str, detail: str):
        super().__init__(f"{_printable(repr(key))}: {detail}")
        self.key = key


class ChangedObjects(SelectionError):
    """Objects of a release that changed with no version to fall back on (``keys``, every
    one), the rest of the release downloaded."""

    def __init__(self, keys: list[str], written: int, skipped: int):
        self.keys = sorted(keys)
        self.written, self.skipped = written, skipped
        # (keys of checked rows: the warehouse layout's, at most 1,024 bytes; shown whole)
        shown = ", ".join(_printable(repr(key)) for key in self.keys[:_SHOWN_KEYS])
        more = f" and {len(keys) - _SHOWN_KEYS:,} more" if len(keys) > _SHOWN_KEYS else ""
        super().__init__(
            f"{len(keys):,} objects of the release changed since it was written and have no "
            f"version to fall back on: {shown}{more}; not downloaded (every other file is)"
        )


#: A plain MD5 ETag (an object written in one part with SSE-S3 or no encryption): the MD5 of
#: its content, checked after a download. A multipart ETag (``<hex>-<parts>``) is not.
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")


def content_digest(item: Fetch):
    """The digest a download of ``item`` is checked with and the value it must have:
    ``(hashlib object, hex)``, or None when nothing can be checked but the size."""
    if item.sha256 is not None:
        return hashlib.sha256(), item.sha256
    if item.etag is not None and _MD5_ETAG.fullmatch(item.etag):
        return hashlib.md5(usedforsecurity=False), item.etag
    return None


def row_problem(
    warehouse_key: object,
    metadata_key: object,
    group: object,
    modality_folder: object,
    object_size: object,
    groups: Iterable[str],
) -> str | None:
    """Why a catalogue row cannot be downloaded in a selection of ``groups``, or None.

    The catalogue is a file anyone with write access to the processed store can edit, so a
    row is downloaded only when its ``warehouse_key`` is an image of the warehouse layout
    (`keys.parse_image_key`) in one of ``groups`` and in the row's own ``group`` and
    ``modality_folder``, each part of it is one the loader could have filed (a safe
    PatientID, DICOM UIDs, a safe file name that fits 255 bytes), its ``metadata_key`` is that
    image's own (`keys.ImageKey.metadata_key`), and its ``object_size`` is a size.
    """
    image = parse_image_key(warehouse_key) if isinstance(warehouse_key, str) else None
    if image is None:
        return "its warehouse_key is not an image key of the warehouse layout"
    if image.group not in groups:
        return f"its image is a {image.group} image, outside the selection"
    row_place = (group, modality_folder)  # null in a hostile row: compared only as text
    if not all(isinstance(v, str) for v in row_place) or row_place != (image.group, image.folder):
        return (
            f"its key is in {image.group}/{image.folder}, its row says "
            f"{_shown(str(group))}/{_shown(str(modality_folder))}"
        )
    problem = identifier_problem(image.patient_id, "PatientID in its key")
    for what, uid in (
        ("StudyInstanceUID", image.study_uid),
        ("SeriesInstanceUID", image.series_uid),
    ):
        if problem is None and not is_dicom_uid(uid):
            problem = f"the {what} in its key is not a DICOM UID: {_shown(uid)}"
    problem = problem or image_name_problem(image.name)
    if problem:
        return problem
    if not isinstance(metadata_key, str) or metadata_key != image.metadata_key:
        shown = _shown(metadata_key) if isinstance(metadata_key, str) else repr(metadata_key)
        return f"its metadata_key {shown} is not its image's metadata file"
    if not isinstance(object_size, int | np.integer) or object_size < 0:
        return f"its object_size {object_size!r} is not a size in bytes"
    return None


def downloads(chosen: pd.DataFrame, groups: Iterable[str] = GROUPS) -> list[Fetch]:
    """What a selection of ``groups`` downloads: each image (with its catalogued size), then
    its metadata file.

    Raises
    ------
    SelectionError
        When a row cannot be downloaded (`row_problem`): one line naming the first such row
        (its label in the catalogue, its key escaped) and how many there are; nothing is
        fetched then.
    """
    groups = tuple(groups)
    fetches: list[Fetch] = []
    refused: list[str] = []
    columns = ("warehouse_key", "metadata_key", "group", "modality_folder", "object_size")
    for label, *row in zip(chosen.index, *(chosen[c] for c in columns), strict=True):
        problem = row_problem(row[0], row[1], row[2], row[3], row[4], groups)
        if problem:
            key = _shown(row[0]) if isinstance(row[0], str) else repr(row[0])
            number = label if isinstance(label, int | np.integer) else _shown(str(label))
            refused.append(f"row {number} ({key}): {problem}")
        elif not refused:
            fetches += [Fetch(row[0], int(row[4])), Fetch(row[1], None)]
    if refused:
        more = f"; {len(refused) - 1:,} more rows refused" if len(refused) > 1 else ""
        raise SelectionError(
            f"the catalogue's {refused[0]}{more}; nothing downloaded (the catalogue does "
            "not match the warehouse: was it edited? run dataprocess again)"
        )
    return fetches


def local_path(folder: Path, key: str) -> Path:
    """Where ``key`` goes under ``folder`` (the warehouse layout).

    Every part of ``key`` must be a safe name (`keys.is_safe_name`: no ``..``, no empty or
    hidden part, no control character, at most 255 characters), and the path, symbolic links
    resolved, must stay inside ``folder``.

    Raises
    ------
    SelectionError
        When it would not.
    """
    parts = key.split("/")
    inside = folder.resolve()
    if all(is_safe_name(part) for part in parts):
        path = inside.joinpath(*parts).resolve()
        if path.is_relative_to(inside):
            return path
    raise SelectionError(f"a key outside the download folder: {_shown(key)}")


def already_there(path: Path, item: Fetch) -> bool:
    """Whether a download can be skipped: the file exists (with the item's size, if known;
    for a pinned item, with its content digest too, when one can be checked)."""
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return False
    if item.size is not None and found != item.size:
        return False
    digest = content_digest(item) if item.pinned else None
    if digest is None:
        return True
    hasher, expected = digest
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest() == expected


def fetch(storage: Storage, folder: Path, item: Fetch) -> int | None:
    """Download one object into ``folder``; the bytes written, None when it was there already.

    Large objects come in ranged reads of `CHUNK_BYTES`; the file is written under a
    temporary name and renamed into place. A pinned item (`Fetch.pinned`) is read by its
    version and ETag and its content checked (`content_digest`) before the rename.

    Raises
    ------
    StorageError
        When a read fails.
    ChangedObject
        When a pinned item's object is no longer the content pinned (nothing is written).
    SelectionError
        When the key has no place under ``folder`` (`local_path`), the object is shorter
        than its catalogued size, or the file cannot be written.
    """
    path = local_path(folder, item.key)
    if already_there(path, item):
        return None
    if item.pinned:
        return _fetch_pinned(storage, path, item)
    written = 0
    with written_in_place(path, make_folder=True) as handle:
        if item.size is None:
            data = storage.read(item.key)
            handle.write(data)
            written = len(data)
        else:
            for chunk in ranged_chunks(storage, item.key, item.size):
                handle.write(chunk)
                written += len(chunk)
            if written < item.size:
                raise SelectionError(
                    f"{item.key}: {written:,} bytes read of {item.size:,} (the object "
                    "is smaller than the catalogue says: run dataprocess again)"
                )
    return written


@contextlib.contextmanager
def written_in_place(path: Path, *, make_folder: bool = False) -> Iterator[BinaryIO]:
    """Open a file that becomes ``path`` only once written whole.

    It is written under a temporary name beside ``path`` (cut to fit a file name of
    `MAX_FILE_NAME_LENGTH` bytes) and renamed into place when the ``with`` block ends
    without an error; otherwise the temporary file is removed and ``path`` is left as it
    was. With ``make_folder``, the folder of ``path`` is made first.

    Raises
    ------
    SelectionError
        When the folder or the file cannot be written.
    """
    if make_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SelectionError(f"cannot make the folder {str(path.parent)!r}: {exc}") from None
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}"[:MAX_FILE_NAME_LENGTH])
    try:
        with open(temporary, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except OSError as exc:
        raise SelectionError(f"cannot write {str(path)!r}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _fetch_pinned(storage: Storage, path: Path, item: Fetch) -> int:
    """Write the pinned content of ``item`` at ``path`` (`fetch`); the bytes written."""
    size = item.size or 0
    digest = content_digest(item)
    written = 0
    with written_in_place(path, make_folder=True) as handle:
        while written < size:
            try:
                chunk = storage.read_pinned(
                    item.key,
                    written,
                    min(size, written + CHUNK_BYTES),
                    version_id=item.version_id,
                    etag=item.etag,
                )
            except (ObjectNotFound, PreconditionFailed) as exc:
                raise ChangedObject(item.key, str(exc)) from None
            if not chunk:
                raise ChangedObject(item.key, f"{written:,} bytes of {size:,}: it is shorter")
            handle.write(chunk)
            if digest is not None:
                digest[0].update(chunk)
            written += len(chunk)
        if digest is not None and digest[0].hexdigest() != digest[1]:
            raise ChangedObject(item.key, "its content is not the release's (checksum)")
        if (
            item.version_id is None
            and item.etag is None
            and storage.read_range(item.key, size, size + 1)
        ):  # no ETag to read it by: a longer object is a changed one
            raise ChangedObject(item.key, f"it is longer than {size:,} bytes")
    return written


def download(
    storage: Storage,
    folder: Path,
    items: Iterable[Fetch],
    submit: Callable,
    on_done: Callable[[Fetch, int], None] | None = None,
    window: int = 128,
) -> tuple[int, int]:
    """Download ``items`` through ``submit`` (a bounded worker pool; at most ``window`` in
    flight); ``on_done(item, bytes)`` after each. Returns ``(files written, files skipped)``.

    Raises
    ------
    StorageError, SelectionError
        The first failure, once every download already submitted has ended.
    ChangedObjects
        When objects of a release changed (`ChangedObject`): every one of them, once every
        other item is downloaded.
    """
    pending: deque = deque()
    counts = {"written": 0, "skipped": 0}
    errors: list[Exception] = []
    changed: list[str] = []

    def finish_oldest() -> None:
        item, future = pending.popleft()
        try:
            count = future.result()
        except ChangedObject as exc:
            changed.append(exc.key)
            return
        except ExpectedError as exc:
            errors.append(exc)
            return
        counts["skipped" if count is None else "written"] += 1
        if on_done is not None:
            on_done(item, count or 0)

    for item in items:
        if errors:
            break
        pending.append((item, submit(fetch, storage, folder, item)))
        if len(pending) >= window:
            finish_oldest()
    while pending:
        finish_oldest()
    if errors:
        raise errors[0]
    if changed:
        raise ChangedObjects(changed, counts["written"], counts["skipped"])
    return counts["written"], counts["skipped"]
