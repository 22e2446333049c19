"""Selecting images from the catalogue, and fetching a selection: the rules behind
``python -m warehouse.select``.

The catalogue is the newest ``images.parquet`` of the processed store (``latest.csv`` names
it). A selection is the rows that pass every filter given; it may not mix the training and
validation groups unless that is asked for explicitly (mixing them is how hold-out leakage
starts). A download writes each selected image and its metadata file under the same keys in a
local folder, atomically (a temporary file, then a rename), so an interrupted download leaves
no partial file; files already there are skipped (an image of the catalogued size, a metadata
file that exists: it was renamed into place whole).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from warehouse.core.errors import ExpectedError
from warehouse.core.keys import GROUPS
from warehouse.core.storage import ObjectNotFound, Storage

LATEST_KEY = "latest.csv"
#: Bytes per ranged read of a download (memory stays at one chunk per worker).
CHUNK_BYTES = 8 * 1024 * 1024


class SelectionError(ExpectedError):
    """A selection that cannot be made (no catalogue, a bad filter, mixed groups)."""


def read_catalogue(processed: Storage) -> tuple[str, pd.DataFrame]:
    """The newest catalogue (``images.parquet`` of the batch ``latest.csv`` names): its key
    and its rows.

    Raises
    ------
    SelectionError
        When there is no batch, or the batch has no image catalogue.
    StorageError
        When a read fails.
    """
    try:
        latest = pd.read_csv(io.BytesIO(processed.read(LATEST_KEY)), dtype=str)
    except ObjectNotFound:
        raise SelectionError(f"no {LATEST_KEY} in {processed.url}: run dataprocess first") from None
    paths = dict(zip(latest["archive"], latest["path"], strict=True))
    if "images" not in paths:
        raise SelectionError(
            f"the batch {LATEST_KEY} names has no image catalogue (no images filed, or "
            "written by an older dataprocess): run dataprocess again"
        )
    key = paths["images"].removesuffix(".csv") + ".parquet"
    return key, pd.read_parquet(io.BytesIO(processed.read(key)))


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


def select(catalogue: pd.DataFrame, filters: Filters) -> pd.DataFrame:
    """The catalogue rows that pass ``filters``.

    ``since`` and ``until`` bound the upload date (inclusive); ``positive`` keeps covid
    positive (True) or negative (False) patients; ``query`` is a pandas expression on the
    columns (``DataFrame.query``: ``"Manufacturer == 'SIEMENS' and Rows >= 2048"``).

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
    chosen = catalogue[keep.fillna(False).astype(bool)]
    if filters.query:
        try:
            chosen = chosen.query(filters.query, engine="python")
        except Exception as exc:  # noqa: BLE001 - any error of the user's expression
            raise SelectionError(f"--query {filters.query!r}: {exc}") from None
    groups = set(chosen["group"].dropna())
    if len(groups) > 1 and not filters.both_groups:
        raise SelectionError(
            "the selection holds training and validation images: choose one with --group, "
            "or mix them knowingly with --both-groups (mixing is how hold-out leakage starts)"
        )
    return chosen


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
    """One object to download: its key and, when known, its size."""

    key: str
    size: int | None


def downloads(chosen: pd.DataFrame) -> list[Fetch]:
    """What a selection downloads: each image (with its catalogued size), then its metadata
    file."""
    fetches = []
    for key, metadata, size in zip(
        chosen["warehouse_key"], chosen["metadata_key"], chosen["object_size"], strict=True
    ):
        fetches.append(Fetch(key, int(size)))
        fetches.append(Fetch(metadata, None))
    return fetches


def local_path(folder: Path, key: str) -> Path:
    """Where ``key`` goes under ``folder`` (the warehouse layout); keys come from the
    catalogue and are checked to stay inside ``folder``."""
    path = (folder / key).resolve()
    if not path.is_relative_to(folder.resolve()) or ".." in key.split("/"):
        raise SelectionError(f"a key outside the download folder: {key!r}")
    return path


def already_there(path: Path, size: int | None) -> bool:
    """Whether a download can be skipped: the file exists (with ``size`` bytes, if known)."""
    try:
        found = path.stat().st_size
    except FileNotFoundError:
        return False
    return size is None or found == size


def fetch(storage: Storage, folder: Path, item: Fetch) -> int | None:
    """Download one object into ``folder``; the bytes written, None when it was there already.

    Large objects come in ranged reads of `CHUNK_BYTES`; the file is written under a
    temporary name and renamed into place.

    Raises
    ------
    StorageError
        When a read fails.
    """
    path = local_path(folder, item.key)
    if already_there(path, item.size):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    written = 0
    try:
        with open(temporary, "wb") as handle:
            if item.size is None:
                data = storage.read(item.key)
                handle.write(data)
                written = len(data)
            else:
                while written < item.size:
                    chunk = storage.read_range(
                        item.key, written, min(item.size, written + CHUNK_BYTES)
                    )
                    if not chunk:
                        raise SelectionError(
                            f"{item.key}: {written:,} bytes read of {item.size:,} (the object "
                            "is smaller than the catalogue says: run dataprocess again)"
                        )
                    handle.write(chunk)
                    written += len(chunk)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
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
    """
    pending: deque = deque()
    counts = {"written": 0, "skipped": 0}
    errors: list[Exception] = []

    def finish_oldest() -> None:
        item, future = pending.popleft()
        try:
            count = future.result()
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
    return counts["written"], counts["skipped"]
