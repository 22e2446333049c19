"""A batch's image catalogue as a folder of Parquet files (segments) and its manifest.

``<batch>/images/`` holds the catalogue's rows in segments, ``000000.parquet`` onwards, read
in name order, and ``_catalogue.json`` naming them (their sizes and rows) with the newest part
the catalogue covers. Any Parquet reader reads the folder as one table (pandas, pyarrow and
DuckDB skip a name that starts with ``_``).

A batch writes only the segments that change: the day's new rows make a new segment, a
segment holding a row the day replaces (or a patient whose clinical summary changed) is
written again, and the others are copied from the last batch as they are (a server-side copy
on S3). The newest segments are merged while the newest holds at least half the rows of the
one before it, or that one is small (`merged_tail`): a warehouse of n rows has about log2 of
n segments, and a row is written again a few times in its life, not every day.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from warehouse.core.errors import ObjectNotFound
from warehouse.storage.base import Storage

#: The catalogue's folder in a batch (``latest.csv`` names ``<batch>/images/``).
SEGMENTS_FOLDER = "images/"
#: The manifest in that folder (skipped by Parquet readers: its name starts with ``_``).
MANIFEST_NAME = "_catalogue.json"
#: The manifest's version.
MANIFEST_FORMAT = 1
#: A segment smaller than this is merged with the next one, whatever their sizes.
SMALL_SEGMENT_ROWS = 32_768
#: The manifest is small: a longer object is not one.
MANIFEST_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Segment:
    """One file of a batch's catalogue: its key in the processed store, bytes and rows."""

    key: str
    size: int
    rows: int


@dataclass(frozen=True)
class Manifest:
    """A batch's catalogue: its segments in order and the newest part it covers."""

    segments: tuple[Segment, ...]
    through: str | None

    @property
    def rows(self) -> int:
        """Rows of all segments."""
        return sum(segment.rows for segment in self.segments)


class InvalidManifest(ValueError):
    """A ``_catalogue.json`` that is not the manifest a batch writes."""


def segment_name(position: int) -> str:
    """Name a batch's ``position``-th segment's file (names sort in segment order)."""
    return f"{position:06d}.parquet"


def is_segments_folder(path: str) -> bool:
    """Tell whether a ``latest.csv`` path names a catalogue folder (not a single file)."""
    return path.endswith("/" + SEGMENTS_FOLDER)


def manifest_bytes(folder: str, segments: list[tuple[str, int, int]], through: str | None) -> bytes:
    """Return the manifest of the catalogue folder ``folder`` (``<batch>/images/``).

    Parameters
    ----------
    folder : str
        The folder's key, ending in ``/``.
    segments : list of tuple
        ``(file name, bytes, rows)`` of each segment, in order.
    through : str or None
        The newest part the catalogue covers.
    """
    document = {
        "format": MANIFEST_FORMAT,
        "through": through,
        "rows": sum(rows for _, _, rows in segments),
        "segments": [{"file": name, "size": size, "rows": rows} for name, size, rows in segments],
    }
    return json.dumps(document, indent=1).encode("utf-8")


def read_manifest(processed: Storage, folder: str) -> Manifest:
    """Read the manifest of the catalogue folder ``folder`` (``<batch>/images/``).

    Raises
    ------
    InvalidManifest
        When it is missing, too long or not a manifest of this version.
    StorageError
        When the read fails for another reason.
    """
    key = folder + MANIFEST_NAME
    try:
        data = processed.read(key)
    except ObjectNotFound:
        raise InvalidManifest(f"{key} is missing") from None
    if len(data) > MANIFEST_MAX_BYTES:
        raise InvalidManifest(f"{key} is longer than {MANIFEST_MAX_BYTES:,} bytes")
    try:
        document = json.loads(data)
        if document["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {document['format']!r}, not {MANIFEST_FORMAT}")
        through = document["through"]
        if through is not None and not isinstance(through, str):
            raise ValueError("through is not a part key")
        segments = []
        for item in document["segments"]:
            name, size, rows = item["file"], item["size"], item["rows"]
            if not isinstance(name, str) or "/" in name or not name.endswith(".parquet"):
                raise ValueError(f"{name!r} is not a segment's file name")
            if not all(isinstance(n, int) and n >= 0 for n in (size, rows)):
                raise ValueError("a segment's size and rows are counts")
            segments.append(Segment(folder + name, size, rows))
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidManifest(f"{key} is not a catalogue manifest: {exc}") from None
    return Manifest(tuple(segments), through)


def merged_tail(rows: list[int], small: int | None = None) -> int:
    """How many of the newest segments to merge into one (1: none merged).

    The newest two are merged while the newest holds at least half the rows of the one
    before it, or that one holds fewer than ``small`` rows (`SMALL_SEGMENT_ROWS`); then again
    with the result.

    Parameters
    ----------
    rows : list of int
        Each segment's rows, oldest first.
    small : int, optional
        Instead of `SMALL_SEGMENT_ROWS`.
    """
    small = SMALL_SEGMENT_ROWS if small is None else small
    if not rows:
        return 0
    merged, tail = 1, rows[-1]
    while merged < len(rows):
        before = rows[-merged - 1]
        if tail * 2 < before and before >= small:
            break
        tail += before
        merged += 1
    return merged
