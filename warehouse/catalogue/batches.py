"""The processed store's front door, ``latest.csv``.

It names the newest complete batch of tables (``archive,path`` rows,
``<batch>/<archive>.<csv|parquet>``); `dataprocess` writes it last, `select` and the next
`dataprocess` read it.
"""

from __future__ import annotations

import csv
import io

from warehouse.core.errors import ObjectNotFound
from warehouse.storage.base import Storage

#: The file naming the newest batch, at the processed store's top.
LATEST_KEY = "latest.csv"


class InvalidLatest(ValueError):
    """A ``latest.csv`` that is not the ``archive,path`` table dataprocess writes."""


def latest_paths(processed: Storage) -> dict[str, str] | None:
    """Return the archives of the newest batch and their keys, as ``latest.csv`` lists them.

    None when the store has no batch yet.

    Raises
    ------
    InvalidLatest
        When ``latest.csv`` is not an ``archive,path`` table.
    StorageError
        When the read fails.
    """
    try:
        data = processed.read(LATEST_KEY)
    except ObjectNotFound:
        return None
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidLatest(f"{LATEST_KEY} is not UTF-8 CSV: {exc}") from None
    if not rows or rows[0] != ["archive", "path"] or any(len(row) != 2 for row in rows[1:]):
        raise InvalidLatest(f"{LATEST_KEY} is not an archive,path table")
    return {archive: path for archive, path in rows[1:]}


def batch_folder(paths: dict[str, str]) -> str | None:
    """Return the batch folder the paths of ``latest.csv`` are in (None when it names none)."""
    folders = {path.partition("/")[0] for path in paths.values() if "/" in path}
    return folders.pop() if len(folders) == 1 else None
