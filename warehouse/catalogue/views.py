"""The catalogue for notebooks: `warehouse.catalogue.open` and the `Catalogue` it returns.

The newest batch's tables (``images``, ``patients`` and, in a batch that has it, ``series``)
as DuckDB relations on a `selection.locked_connection`, the same connection ``select --sql``
runs on: each relation turns into a pandas frame with ``.df()``, into Arrow with
``.arrow()``, and combines with the others in SQL (`Catalogue.sql`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import duckdb
import pandas as pd

from warehouse.catalogue.selection import open_views, read_only_relation
from warehouse.storage.base import Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.url import storage_from_url


class Catalogue:
    """The newest batch of a warehouse's catalogue, as DuckDB relations.

    Its Parquet files are copied into a temporary folder (removed by `close`, or at the end
    of a ``with`` block) and scanned from there: a query reads the columns it names.

    Parameters
    ----------
    processed : Storage
        The processed store (``<bucket>-processed``).

    Attributes
    ----------
    views : tuple of str
        The tables the batch has (``images``, ``patients``, ``series``).
    batch : str
        The batch folder.
    """

    def __init__(self, processed: Storage):
        self._work = tempfile.TemporaryDirectory(prefix="warehouse-catalogue-")
        try:
            found, self.connection = open_views(processed, Path(self._work.name))
        except BaseException:
            self._work.cleanup()
            raise
        self.batch = found.folder
        self.views = tuple(found.files)

    def _view(self, name: str) -> duckdb.DuckDBPyRelation | None:
        return self.connection.view(name) if name in self.views else None

    @property
    def images(self) -> duckdb.DuckDBPyRelation:
        """The image catalogue: one row per image."""
        return self.connection.view("images")

    @property
    def patients(self) -> duckdb.DuckDBPyRelation | None:
        """The cleaned patient table (``patient_clean``), None when the batch has none."""
        return self._view("patients")

    @property
    def series(self) -> duckdb.DuckDBPyRelation | None:
        """The series table, None when the batch has none (one written before it existed)."""
        return self._view("series")

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """Return the relation of one read-only SQL statement over the views.

        Raises
        ------
        SelectionError
            When ``query`` is not one ``SELECT`` or DuckDB refuses it.
        """
        return read_only_relation(self.connection, query, "sql")

    def df(self, name_or_query: str) -> pd.DataFrame:
        """Return a view (by name) or a query's result as a pandas frame."""
        if name_or_query in self.views:
            return self.connection.view(name_or_query).df()
        return self.sql(name_or_query).df()

    def close(self) -> None:
        """Close the connection and remove the copied files."""
        self.connection.close()
        self._work.cleanup()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_catalogue(bucket_or_path: str | os.PathLike) -> Catalogue:
    """Open the newest catalogue of a warehouse (`warehouse.catalogue.open`).

    Parameters
    ----------
    bucket_or_path : str or path-like
        The warehouse, as ``WAREHOUSE_BUCKET`` names it (``name``, ``s3://name``,
        ``file:///path``), or the path of a local warehouse folder; its catalogue is read
        from ``<bucket>-processed``.

    Raises
    ------
    StorageError
        When the store cannot be opened or read.
    SelectionError
        When it has no batch yet.
    """
    text = os.fspath(bucket_or_path)
    if isinstance(bucket_or_path, os.PathLike) or ("/" in text and "://" not in text):
        store: Storage = LocalStorage(text)
        store.check_store()
    else:
        store = storage_from_url(text, workers=8)
    processed = store.processed()
    processed.check_store()
    return Catalogue(processed)
