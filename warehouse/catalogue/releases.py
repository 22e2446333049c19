"""Releases: a selection written once, so that the same images can be fetched again later.

A release is two objects of the processed store, written once each and never replaced::

    releases/<name>/manifest.parquet   one row per image: the catalogue row, the outcome
                                       labels, and the pins of the image and its metadata file
    releases/<name>/release.json       the filters, product version, batch, time, counts and
                                       the manifest's SHA-256

A pin is what the content of an object was when the release was written: its size, and on S3
its ETag and (in a versioned bucket) its VersionId; on a store without ETags (a local one) the
SHA-256 of its content. A later download reads each object by its VersionId (an overwritten
or deleted object is still there as a noncurrent version) and only while its ETag is the
pinned one, and checks the size and the checksum of what it wrote. An object that changed with
no version to fall back on is refused by name (`selection.ChangedObjects`).

Both objects are written with a conditional write (put-if-absent: S3's ``If-None-Match: *``,
a local store's ``link``), the manifest first: a reader sees a release only once its
``release.json`` is there, and then it is whole. Of two writers of one name exactly one
writes ``release.json``; the other is refused. A writer stopped between the two leaves a
manifest without ``release.json`` (listed as incomplete): running the same selection again
completes it when its manifest is the same, and is refused otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.catalogue.selection import (
    Fetch,
    Filters,
    SelectionError,
    frame_table,
    row_problem,
)
from warehouse.core.errors import ObjectNotFound, PreconditionFailed
from warehouse.core.keys import GROUPS
from warehouse.core.text import escape_controls, quote
from warehouse.storage.base import Storage
from warehouse.storage.files import ranged_chunks

#: Where releases are, in the processed store.
RELEASES_PREFIX = "releases/"
MANIFEST_FILE = "manifest.parquet"
RELEASE_FILE = "release.json"
#: The version of ``release.json``'s layout.
RELEASE_FORMAT = 1
#: The longest release name.
MAX_NAME_CHARS = 64
#: A release name: ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a
#: digit (so never ``.``, ``..`` or a hidden name), never holding ``..``.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The largest ``release.json`` read (written ones are a few kB).
MAX_RELEASE_JSON_BYTES = 1024 * 1024
#: The columns a manifest adds to each catalogue row: the pins of the image (``object_``) and
#: of its metadata file (``metadata_``); the sizes are the catalogue's ``object_size`` and
#: ``metadata_size``.
PIN_COLUMNS = (
    "object_etag",
    "object_version_id",
    "object_sha256",
    "metadata_etag",
    "metadata_version_id",
    "metadata_sha256",
)
#: How many keys a message names (the rest are counted).
_SHOWN_KEYS = 10


class ReleaseError(SelectionError):
    """A release that cannot be written or read as asked."""


class ReleaseExists(ReleaseError):
    """A release of that name is already written (a release is written once)."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a release, or None.

    A name is at most `MAX_NAME_CHARS` ASCII letters, digits, ``.``, ``_`` and ``-``,
    starts with a letter or a digit and holds no ``..``: it is one safe folder name, whatever
    the store, never a path.
    """
    if not name:
        return "a release name is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a release name is at most {MAX_NAME_CHARS} characters ({len(name):,} given)"
    if not _NAME.fullmatch(name) or ".." in name:
        return (
            f"the release name {quote(name)[: MAX_NAME_CHARS + 20]} is not ASCII letters, digits, "
            "'.', '_' and '-' starting with a letter or a digit"
        )
    return None


def release_keys(name: str) -> tuple[str, str]:
    """Return the keys of release ``name``'s manifest and ``release.json``.

    Raises
    ------
    ReleaseError
        When ``name`` is not a release name (`name_problem`).
    """
    problem = name_problem(name)
    if problem:
        raise ReleaseError(escape_controls(problem))
    return (
        f"{RELEASES_PREFIX}{name}/{MANIFEST_FILE}",
        f"{RELEASES_PREFIX}{name}/{RELEASE_FILE}",
    )


@dataclass(frozen=True, slots=True)
class Pin:
    """The content of one object when a release is written (see the module's docstring)."""

    size: int
    etag: str | None = None
    version_id: str | None = None
    sha256: str | None = None


def _folder_of(key: str) -> str:
    """Return the patient folder of a key, whose versions a release lists once.

    ``<group>/<folder>/<PatientID>/`` of an image or metadata key.
    """
    return "/".join(key.split("/")[:3]) + "/"


def content_sha256(storage: Storage, key: str, size: int) -> str:
    """Return the SHA-256 of the first ``size`` bytes of ``key`` (`files.ranged_chunks`).

    Raises
    ------
    StorageError
        When a read fails.
    ReleaseError
        When the object is shorter than ``size``.
    """
    digest = hashlib.sha256()
    done = 0
    for chunk in ranged_chunks(storage, key, size):
        digest.update(chunk)
        done += len(chunk)
    if done < size:
        raise ReleaseError(f"{key} changed while the release was written: run it again")
    return digest.hexdigest()


def pins_of(storage: Storage, keys: Iterable[str], submit: Callable) -> dict[str, Pin]:
    """Return the pin of each of ``keys`` (objects of the warehouse) that exists.

    The versions of each patient folder are listed once (S3: ListObjectVersions, a thousand
    versions a request, each newest version's ETag and VersionId); an object listed without an
    ETag (a local store) is read to take its SHA-256. ``submit`` runs the listings and reads
    in parallel (a bounded pool's ``submit``).

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    wanted = set(keys)
    folders = sorted({_folder_of(key) for key in wanted})
    found: dict[str, Pin] = {}
    for future in [submit(lambda f: list(storage.list_versions(f)), f) for f in folders]:
        for version in future.result():
            if version.key in wanted:
                found[version.key] = Pin(version.size, version.etag, version.version_id)
    unhashed = [key for key, pin in found.items() if pin.etag is None]
    futures = [(key, submit(content_sha256, storage, key, found[key].size)) for key in unhashed]
    for key, future in futures:
        found[key] = Pin(found[key].size, sha256=future.result())
    return found


def _named(keys: list[str]) -> str:
    shown = ", ".join(quote(key) for key in sorted(keys)[:_SHOWN_KEYS])
    more = f" and {len(keys) - _SHOWN_KEYS:,} more" if len(keys) > _SHOWN_KEYS else ""
    return escape_controls(shown + more)


def manifest_frame(labelled: pd.DataFrame, pins: dict[str, Pin]) -> pd.DataFrame:
    """Return the manifest's rows: the selection with the pins of its files.

    The selection's rows (catalogue rows with their labels), sorted by ``warehouse_key``, each
    with the pins of its image and metadata file (`PIN_COLUMNS`; the metadata file's size, as
    listed, in ``metadata_size``).

    Raises
    ------
    ReleaseError
        When an image or metadata file of the selection is not in the warehouse, or an
        image's size is not the catalogue's (the catalogue is older than the warehouse).
    """
    frame = labelled.sort_values("warehouse_key", kind="stable").reset_index(drop=True)
    images, metadata = frame["warehouse_key"].tolist(), frame["metadata_key"].tolist()
    missing = [key for key in images + metadata if key not in pins]
    if missing:
        raise ReleaseError(
            f"{len(missing):,} files of the selection are not in the warehouse: "
            f"{_named(missing)} (the catalogue is older than the warehouse: run dataprocess "
            "again)"
        )
    resized = [
        key
        for key, size in zip(images, frame["object_size"], strict=True)
        if pins[key].size != size
    ]
    if resized:
        raise ReleaseError(
            f"{len(resized):,} images changed size since they were catalogued: "
            f"{_named(resized)} (run dataprocess again)"
        )
    for prefix, keys in (("object", images), ("metadata", metadata)):
        frame[f"{prefix}_etag"] = [pins[key].etag for key in keys]
        frame[f"{prefix}_version_id"] = [pins[key].version_id for key in keys]
        frame[f"{prefix}_sha256"] = [pins[key].sha256 for key in keys]
    frame["metadata_size"] = [pins[key].size for key in metadata]
    return frame


def manifest_bytes(frame: pd.DataFrame, types: pa.Schema | None) -> bytes:
    """Return the manifest file: ``frame`` (`manifest_frame`) as Parquet.

    Typed as the catalogue (``types``), the pins as text. The same rows give the same bytes
    (no time in it).
    """
    pins = pa.schema([pa.field(name, pa.string()) for name in PIN_COLUMNS])
    schema = pa.unify_schemas([types, pins]) if types is not None else pins
    table = frame_table(frame, schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _counts(frame: pd.DataFrame) -> dict:
    studies = frame[["PatientID", "StudyInstanceUID"]].drop_duplicates()
    return {
        "images": len(frame),
        "studies": len(studies),
        "patients": int(frame["PatientID"].nunique()),
        "image_bytes": int(frame["object_size"].sum()),
        "metadata_bytes": int(frame["metadata_size"].sum()),
    }


def release_document(
    name: str,
    frame: pd.DataFrame,
    manifest: bytes,
    filters: Filters,
    source: dict[str, str],
    now: dt.datetime,
) -> dict:
    """Return what ``release.json`` says of release ``name`` (a manifest of ``frame``'s rows).

    Parameters
    ----------
    name : str
        The release.
    frame : pandas.DataFrame
        Its manifest's rows (`manifest_frame`).
    manifest : bytes
        The manifest file (`manifest_bytes`): its SHA-256 is kept.
    filters : Filters
        The selection's filters.
    source : dict
        ``warehouse`` (the store's URL), ``batch`` and ``catalogue`` (its key), and
        ``product_version``.
    now : datetime.datetime
        When it is written (UTC).
    """
    manifest_key, _ = release_keys(name)
    by_group = {
        g: _counts(frame[frame["group"] == g]) for g in GROUPS if (frame["group"] == g).any()
    }
    versions = int(frame["object_version_id"].notna().sum())
    return {
        "format": RELEASE_FORMAT,
        "name": name,
        "created": now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **source,
        "filters": {
            key: (value.isoformat() if isinstance(value, dt.date) else value)
            for key, value in asdict(filters).items()
        },
        "counts": {**_counts(frame), "by_group": by_group},
        "pins": {
            "images_with_version": versions,
            "images_by_etag_only": int(frame["object_etag"].notna().sum()) - versions,
            "images_by_sha256": int(frame["object_sha256"].notna().sum()),
        },
        "manifest": {
            "key": manifest_key,
            "sha256": hashlib.sha256(manifest).hexdigest(),
            "bytes": len(manifest),
            "rows": len(frame),
        },
    }


def _existing(processed: Storage, release_key: str, name: str) -> ReleaseExists:
    """Refuse a name whose ``release.json`` exists, saying when it was written."""
    try:
        document = _parsed(processed.read(release_key), release_key)
        when = f" on {escape_controls(str(document.get('created')))[:40]}"
        images = document.get("counts", {}).get("images")
        what = f", {images:,} images" if isinstance(images, int) else ""
    except (ObjectNotFound, ReleaseError):
        when, what = "", ""
    return ReleaseExists(
        f"release {name} already exists (written{when}{what}): a release is written once; "
        f"choose another name, or fetch it with --release {name} --download DIR"
    )


def refuse_written(processed: Storage, name: str) -> None:
    """Refuse release ``name`` when its ``release.json`` is written (one read).

    Checked before a selection is pinned, and again by `write_release`.

    Raises
    ------
    ReleaseExists
        When it is written.
    StorageError
        When the read fails.
    """
    _, release_key = release_keys(name)
    try:
        processed.read(release_key)
    except ObjectNotFound:
        return
    raise _existing(processed, release_key, name)


def write_release(processed: Storage, name: str, manifest: bytes, document: dict) -> None:
    """Write release ``name``: its manifest, then its ``release.json``, each only if absent.

    A manifest already there without ``release.json`` (a writer that stopped, or one racing
    this one) is kept when it is this manifest, byte for byte: then ``release.json`` is
    written; otherwise the name is refused.

    Raises
    ------
    ReleaseExists
        When ``release.json`` exists (written before, or by a writer that won the race).
    ReleaseError
        When a different manifest is there without ``release.json``.
    StorageError
        When a read or write fails.
    """
    manifest_key, release_key = release_keys(name)
    refuse_written(processed, name)
    try:
        processed.write_if_absent(manifest_key, manifest, "application/vnd.apache.parquet")
    except PreconditionFailed:
        if processed.read(manifest_key) != manifest:
            try:
                processed.read(release_key)
            except ObjectNotFound:
                raise ReleaseError(
                    f"release {name} is incomplete (a manifest without {RELEASE_FILE}, left by "
                    "a run that stopped) and its manifest is not this selection's: choose "
                    "another name"
                ) from None
            raise _existing(processed, release_key, name) from None
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n"
    try:
        processed.write_if_absent(release_key, text.encode("ascii"))
    except PreconditionFailed:
        raise _existing(processed, release_key, name) from None


def _parsed(data: bytes, key: str) -> dict:
    """Return a ``release.json``'s document (an object); raise `ReleaseError` if it is not."""
    if len(data) > MAX_RELEASE_JSON_BYTES:
        raise ReleaseError(f"{key} is over {MAX_RELEASE_JSON_BYTES:,} bytes: not a release")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{key} is not JSON: {escape_controls(str(exc))[:200]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("manifest"), dict):
        raise ReleaseError(f"{key} is not a release document")
    return document


def read_release(processed: Storage, name: str) -> tuple[dict, pd.DataFrame]:
    """Return release ``name``: its ``release.json`` document and its manifest's rows.

    The manifest must be the one ``release.json`` names (its SHA-256).

    Raises
    ------
    ReleaseError
        When there is no such release (or only its manifest: an incomplete one), or its
        files are not a release's, or the manifest is not the one ``release.json`` names.
    StorageError
        When a read fails.
    """
    manifest_key, release_key = release_keys(name)
    try:
        document = _parsed(processed.read(release_key), release_key)
    except ObjectNotFound:
        raise ReleaseError(
            f"no release {name} in {processed.url} (`--releases` lists them)"
        ) from None
    data = processed.read(manifest_key)
    if hashlib.sha256(data).hexdigest() != document["manifest"].get("sha256"):
        raise ReleaseError(
            f"{manifest_key} is not the manifest {RELEASE_FILE} names (its SHA-256 differs): "
            "the release was changed after it was written"
        )
    try:
        frame = pq.read_table(io.BytesIO(data)).to_pandas()
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise ReleaseError(
            f"{manifest_key} is not Parquet: {escape_controls(str(exc))[:200]}"
        ) from None
    missing = [c for c in ("warehouse_key", "metadata_key", *PIN_COLUMNS) if c not in frame.columns]
    if missing:
        raise ReleaseError(f"{manifest_key} has no column {', '.join(missing)}")
    return document, frame


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def release_fetches(frame: pd.DataFrame) -> list[Fetch]:
    """Return what a download of a release fetches, each object pinned.

    Each image, then its metadata file, each a `selection.Fetch` with its size, VersionId,
    ETag and SHA-256.

    Each row is checked as a catalogue row is (`selection.row_problem`): a manifest is a
    file of the processed store, trusted no more than the catalogue.

    Raises
    ------
    ReleaseError
        When a row is not an image of the warehouse layout and its metadata file, or a pin
        is missing (nothing is fetched then).
    """
    fetches: list[Fetch] = []
    columns = ("warehouse_key", "metadata_key", "group", "modality_folder", "object_size")
    rows = zip(*(frame[c] for c in (*columns, "metadata_size", *PIN_COLUMNS)), strict=True)
    for number, row in enumerate(rows):
        key, metadata_key, group, folder, size, metadata_size = row[:6]
        pins = dict(zip(PIN_COLUMNS, map(_text, row[6:]), strict=True))
        problem = row_problem(key, metadata_key, group, folder, size, GROUPS)
        if problem is None and not isinstance(metadata_size, int | np.integer):
            problem = f"its metadata_size {metadata_size!r} is not a size in bytes"
        if problem is None and not all(
            pins[f"{p}_etag"] or pins[f"{p}_sha256"] for p in ("object", "metadata")
        ):
            problem = "it has no ETag nor SHA-256 to check its files with"
        if problem:
            shown = quote(key) if isinstance(key, str) else repr(key)
            raise ReleaseError(escape_controls(f"the manifest's row {number} ({shown}): {problem}"))
        for prefix, target, length in (
            ("object", key, size),
            ("metadata", metadata_key, metadata_size),
        ):
            fetches.append(
                Fetch(
                    target,
                    int(length),
                    pins[f"{prefix}_version_id"],
                    pins[f"{prefix}_etag"],
                    pins[f"{prefix}_sha256"],
                )
            )
    return fetches


@dataclass(frozen=True)
class ListedRelease:
    """One release of `list_releases`.

    Its name and its document (None when incomplete), or why its folder is not a release.
    """

    name: str
    document: dict | None = None
    problem: str | None = None


def list_releases(processed: Storage) -> Iterator[ListedRelease]:
    """Yield every release of the processed store, by name: one listing, one read a release.

    Raises
    ------
    StorageError
        When a listing or a read fails.
    """
    folders, _ = processed.list_folders(RELEASES_PREFIX)
    for folder in sorted(folders):
        name = folder[len(RELEASES_PREFIX) :].rstrip("/")
        problem = name_problem(name)
        if problem:
            yield ListedRelease(
                escape_controls(quote(name)[: MAX_NAME_CHARS + 20]), problem=problem
            )
            continue
        _, release_key = release_keys(name)
        try:
            yield ListedRelease(name, _parsed(processed.read(release_key), release_key))
        except ObjectNotFound:
            yield ListedRelease(name, problem=f"incomplete (no {RELEASE_FILE})")
        except ReleaseError as exc:
            yield ListedRelease(name, problem=str(exc))
