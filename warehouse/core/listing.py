"""Listing, once per run: the configured raw prefixes and the warehouse side.

The warehouse listing gives everything "already done" is decided from (no request per object):
the groups of patients already filed, the clinical files already copied, and the names of the
images and metadata files already written. Only names are kept, never listing objects.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from warehouse.core.keys import (
    GROUPS,
    IMAGE_FOLDERS,
    MAX_KEY_DEPTH,
    RAW_PREFIX_MARK,
    RawKey,
    WarehouseKey,
    image_stem,
    modification_time_problem,
    parse_image_key,
    parse_raw_key,
    parse_warehouse_key,
    raw_name_problem,
)
from warehouse.core.report import Reason, RunReport
from warehouse.storage.base import ObjectInfo, Storage

logger = logging.getLogger(__name__)


#: A filed object's size and last-modified second, packed in one int (memory stays at one small
#: object per filed name): ``size * _SECONDS + seconds``.
_SECONDS = 1 << 34
#: The stamp of a name filed more than once (its raw source is only known from the header).
AMBIGUOUS = -1


def pack_stamp(size: int, modified: dt.datetime | str) -> int:
    """A listed object's size and last-modified time (to the second) as one int; a time before
    1970 or after 2514 counts as the first or last second that fits."""
    if isinstance(modified, str):
        modified = dt.datetime.fromisoformat(modified)
    return size * _SECONDS + min(max(int(modified.timestamp()), 0), _SECONDS - 1)


def changed_since_filed(raw_stamp: int, filed_stamp: int) -> bool:
    """Whether a raw file differs from its filed copy: another size, or modified after the copy
    was made (a copy's last-modified time is when it was made)."""
    raw_size, raw_second = divmod(raw_stamp, _SECONDS)
    filed_size, filed_second = divmod(filed_stamp, _SECONDS)
    return raw_size != filed_size or raw_second > filed_second


@dataclass(frozen=True, slots=True)
class ClinicalFile:
    """One filed clinical file, ``<group>/data/<pseudonym>/<name>``: its LastModified date (UTC)
    and its stamp (`pack_stamp`), when it was listed with them."""

    group: str
    name: str
    last_modified: dt.date | None = None
    stamp: int | None = None

    def key(self, pseudonym: str) -> str:
        """The file's full key."""
        return f"{self.group}/data/{pseudonym}/{self.name}"


@dataclass(frozen=True, slots=True)
class StudyFile:
    """The metadata file that stands for one study: the first key in sort order under
    ``<group>/<modality>-metadata/<pseudonym>/<study>/``."""

    group: str
    modality: str
    pseudonym: str
    study: str
    key: str
    last_modified: dt.date | None


@dataclass
class WarehouseIndex:
    """What the warehouse side holds, from one listing: the one index of it that the loader and
    dataprocess use, with the "already filed" questions as its methods.

    Every key is read once, through `keys.parse_warehouse_key`. Only names, sizes, dates,
    stamps and sums are kept, never listing objects.

    Attributes
    ----------
    groups : dict
        Pseudonym -> group of every patient with clinical files filed.
    conflicts : dict
        Pseudonym -> groups, for patients found in both groups (an existing inconsistency).
    clinical_files : dict
        Pseudonym -> its `ClinicalFile` entries (any group), in listing order.
    image_names, metadata_names : set
        Base names of filed images and of metadata files.
    sizes : dict
        Full key -> size of every filed image and metadata file; ``keys`` is the set of its
        keys.
    image_stamps : dict
        The stamp (`pack_stamp`: size and last-modified second) of each filed image, by base
        name; `AMBIGUOUS` for a name filed more than once.
    studies : dict
        ``(group, modality, pseudonym, study)`` -> the `StudyFile` chosen for that study.
    images : dict
        ``(group, modality, pseudonym, study, LastModified date)`` -> metadata files (one per
        filed image) of that study folder listed with that date.
    folder_bytes : dict
        ``(group, top folder)`` -> bytes of every object listed under it (``""`` for objects at
        the group's top), whether in the layout or not.
    objects : int
        Objects in the layout.
    links : list
        Keys of symbolic links on the warehouse side (local stores), sorted: never followed,
        not trusted as filed; to be reported with ``Reason.SYMLINK``.
    listed_at : datetime.datetime
        When the listing began: a time more than a day after it (or before 1990) is
        implausible (`keys.modification_time_problem`) and gives its object no date.
    implausible_times : int
        How many objects of the layout were listed with such a time.
    """

    groups: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, set[str]] = field(default_factory=dict)
    clinical_files: dict[str, list[ClinicalFile]] = field(default_factory=dict)
    image_names: set[str] = field(default_factory=set)
    metadata_names: set[str] = field(default_factory=set)
    sizes: dict[str, int] = field(default_factory=dict)
    image_stamps: dict[str, int] = field(default_factory=dict)
    studies: dict[tuple[str, str, str, str], StudyFile] = field(default_factory=dict)
    images: dict[tuple, int] = field(default_factory=dict)
    folder_bytes: Counter = field(default_factory=Counter)
    objects: int = 0
    links: list[str] = field(default_factory=list)
    listed_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    implausible_times: int = 0

    def add(self, key: str, size: int = 0, modified: dt.datetime | None = None) -> None:
        """Take one listed warehouse object (its key, size and last-modified time) into
        account; an implausible time gives it no date (the tables leave it empty)."""
        group, _, rest = key.partition("/")
        if group in GROUPS:
            folder, sep, _ = rest.partition("/")
            self.folder_bytes[(group, folder if sep else "")] += int(size or 0)
        parsed = parse_warehouse_key(key)
        if parsed is None:
            return
        self.objects += 1
        stamp = None if modified is None else pack_stamp(size, modified)
        day = None
        if modified is not None:
            if modification_time_problem(modified, self.listed_at) is None:
                day = _utc_date(modified)
            else:
                self.implausible_times += 1
        if parsed.kind == "clinical":
            known = self.groups.setdefault(parsed.pseudonym, parsed.group)
            if known != parsed.group:
                self.conflicts.setdefault(parsed.pseudonym, {known}).add(parsed.group)
            entry = ClinicalFile(parsed.group, parsed.name, day, stamp)
            self.clinical_files.setdefault(parsed.pseudonym, []).append(entry)
            return
        if parsed.kind == "image":
            if stamp is not None:
                seen = parsed.name in self.image_names
                self.image_stamps[parsed.name] = AMBIGUOUS if seen else stamp
            self.image_names.add(parsed.name)
        else:
            self.metadata_names.add(parsed.name)
        self.sizes[key] = int(size or 0)
        if parsed.kind == "metadata":
            self._add_study(parsed, key, day)

    def _add_study(self, parsed: WarehouseKey, key: str, day: dt.date | None) -> None:
        slot = (parsed.group, parsed.folder, parsed.pseudonym, parsed.study)
        filed = (*slot, day)
        self.images[filed] = self.images.get(filed, 0) + 1
        known = self.studies.get(slot)
        if known is None or key < known.key:
            self.studies[slot] = StudyFile(*slot, key, day)

    def filed_clinical(self) -> set[tuple[str, str]]:
        """``(pseudonym, file name)`` of every filed clinical file, whatever its group (a new
        set: ask `clinical_filed` about one file)."""
        return {(p, f.name) for p, files in self.clinical_files.items() for f in files}

    def clinical_filed(self, pseudonym: str, name: str) -> bool:
        """Whether a clinical file of this name is filed for the patient (in any group)."""
        return any(f.name == name for f in self.clinical_files.get(pseudonym, ()))

    def clinical_stamp(self, pseudonym: str, name: str) -> int | None:
        """The stamp of a filed clinical file (the last listed of that name), or None."""
        stamps = [f.stamp for f in self.clinical_files.get(pseudonym, ()) if f.name == name]
        return stamps[-1] if stamps else None

    def image_done(self, name: str) -> bool:
        """Whether an image of this file name and its metadata file are both filed."""
        return name in self.image_names and f"{image_stem(name)}.json" in self.metadata_names

    @property
    def keys(self):
        """The full keys of filed images and metadata files (a set-like view)."""
        return self.sizes.keys()

    def filed(self, key: str) -> bool:
        """Whether this image or metadata key is filed."""
        return key in self.sizes

    def filed_images(self) -> dict[str, int]:
        """Image key -> size of every filed image: the image and its metadata file both
        listed (what the image catalogue is checked against)."""
        return {
            key: size
            for key, size in self.sizes.items()
            if (image := parse_image_key(key)) is not None and image.metadata_key in self.sizes
        }

    def first_clinical_key(self, pseudonym: str) -> str | None:
        """The key of a filed patient's first clinical file (earliest upload date), or None."""
        group = self.groups.get(pseudonym)
        files = self.clinical_files.get(pseudonym) if group else None
        if not files:
            return None
        first = min((f.name for f in files), key=lambda name: (name.rsplit("_", 1)[-1], name))
        return f"{group}/data/{pseudonym}/{first}"

    def stored_bytes(self) -> Iterator[tuple[str, int]]:
        """``(prefix, bytes)`` of every top folder (``training/ct/``) and of the objects at a
        group's top (``training/``), as `dashboard.tables.storage_by_prefix` sums keys."""
        for (group, folder), size in sorted(self.folder_bytes.items()):
            yield (f"{group}/{folder}/" if folder else f"{group}/"), size

    def sorted_studies(self) -> list[StudyFile]:
        """The chosen metadata files, by image folder (table order), group, patient and study."""
        order = {folder: index for index, folder in enumerate(IMAGE_FOLDERS)}
        return sorted(
            self.studies.values(),
            key=lambda s: (order[s.modality], s.group, s.pseudonym, s.study),
        )


def _utc_date(value: dt.datetime) -> dt.date:
    """The UTC date of a LastModified time."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.date()


def index_warehouse(storage: Storage, workers: int = 8, *, observe=None) -> WarehouseIndex:
    """List the warehouse side (``training/``, ``validation/``) once and index it.

    Parameters
    ----------
    storage : Storage
        The warehouse store.
    workers : int
        Parallel listings.
    observe : callable, optional
        ``observe(info)`` sees every listed `ObjectInfo` too (the catalogue notes the images
        a killed run filed, from the same listing).

    Raises
    ------
    StorageError
        If the listing fails.
    """
    index = WarehouseIndex()
    for info in storage.list_many([f"{group}/" for group in GROUPS], workers):
        if observe is not None:
            observe(info)
        if info.link:
            index.links.append(info.key)
        else:
            index.add(info.key, info.size, info.last_modified)
    index.links.sort()
    return index


class SharedWarehouseIndex:
    """A service: the warehouse side, indexed on first use (under a lock) and then shared.

    Branches that ask for it at the same time get the same `WarehouseIndex`: the first lists,
    the others wait. A failed listing is remembered and raised again to every caller, so the
    warehouse is never listed twice in a run.
    """

    def __init__(self, storage: Storage, workers: int = 8):
        self.storage = storage
        self.workers = workers
        self._lock = threading.Lock()
        self._index: WarehouseIndex | None = None
        self._error: Exception | None = None
        self.listings = 0

    @property
    def listed(self) -> bool:
        """Whether the warehouse side has been listed successfully."""
        return self._index is not None

    def index(self) -> WarehouseIndex:
        """The warehouse index (listing the warehouse if nobody has yet).

        Raises
        ------
        StorageError
            If the listing failed (now or for an earlier caller).
        """
        with self._lock:
            if self._index is None and self._error is None:
                self.listings += 1
                try:
                    self._index = index_warehouse(self.storage, self.workers)
                except Exception as exc:  # noqa: BLE001 - re-raised to this and every caller
                    self._error = exc
            if self._error is not None:
                raise self._error
            return self._index


@dataclass(frozen=True, slots=True)
class RawRefusal:
    """A listed raw key that is no input, whatever its place in the layout: its report reason
    and detail, and its size and last-modified time (ISO 8601) from the listing."""

    key: str
    reason: Reason
    detail: str
    size: int
    modified: str


def raw_refusal(info: ObjectInfo, now: dt.datetime) -> RawRefusal | None:
    """Why a listed raw object is refused before its place in the layout is looked at, or
    None: a folder too deep to list, an unsafe name (`keys.raw_name_problem`) or an
    implausible modification time (`keys.modification_time_problem`, ``now`` being the
    listing's time)."""
    if info.too_deep:
        detail = f"a folder {MAX_KEY_DEPTH} levels deep that holds more: nothing below it is listed"
        reason = Reason.UNSAFE_NAME
    elif (detail := raw_name_problem(info.key)) is not None:
        reason = Reason.UNSAFE_NAME
    elif (detail := modification_time_problem(info.last_modified, now)) is not None:
        reason = Reason.IMPLAUSIBLE_TIME
    else:
        return None
    return RawRefusal(info.key, reason, detail, info.size, info.last_modified.isoformat())


@dataclass
class RawListing:
    """The configured raw prefixes, classified.

    Attributes
    ----------
    clinical : list
        ``(RawKey, size)`` of clinical files, sorted by upload date then key.
    images : list
        ``(RawKey, size)`` of images, sorted by key.
    other : list
        Keys under the configured prefixes that are not in the raw layout.
    unconfigured : list
        ``raw-*`` prefixes at the bucket root that ``config.json`` does not list.
    links : list
        Keys of symbolic links (local stores) under the configured prefixes, and of ``raw-*``
        links at the root that are not configured, sorted: never followed, neither clinical
        files nor images; to be reported with ``Reason.SYMLINK``.
    refused : list
        `RawRefusal` of every key refused whatever its place (`raw_refusal`), by key.
    """

    clinical: list[tuple[RawKey, int]] = field(default_factory=list)
    images: list[tuple[RawKey, int]] = field(default_factory=list)
    other: list[RawKey] = field(default_factory=list)
    unconfigured: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    refused: list[RawRefusal] = field(default_factory=list)

    def image_name_counts(self) -> Counter:
        """How many raw images share each file name."""
        return Counter(raw.name for raw, _ in self.images)


def list_raw(
    storage: Storage,
    prefixes: tuple[str, ...],
    workers: int = 8,
    *,
    now: dt.datetime | None = None,
) -> RawListing:
    """List the configured raw prefixes once (in parallel, by upload folder) and classify keys.

    Every listed key is in exactly one list of the result: nothing raw is left out unsaid.

    Parameters
    ----------
    storage : Storage
        The warehouse store.
    prefixes : tuple of str
        Configured raw prefixes, normalised (no trailing slash).
    workers : int
        Parallel listings.
    now : datetime.datetime, optional
        The listing's time, for `raw_refusal` (the current time by default).
    """
    now = now or dt.datetime.now(dt.UTC)
    listing = RawListing()
    configured = set(prefixes)
    root_folders, root_objects = storage.list_folders("")
    listing.unconfigured = sorted(
        folder.rstrip("/")
        for folder in root_folders
        if folder.startswith(RAW_PREFIX_MARK) and folder.rstrip("/") not in configured
    )
    listing.links = [
        info.key
        for info in root_objects
        if info.link and info.key.startswith(RAW_PREFIX_MARK) and info.key not in configured
    ]
    for info in storage.list_many([f"{p}/" for p in prefixes], workers):
        if info.link:  # a linked prefix, folder or file: reported, never followed
            listing.links.append(info.key)
            continue
        refusal = raw_refusal(info, now)
        if refusal is not None:
            listing.refused.append(refusal)
            continue
        prefix = info.key.split("/", 1)[0]
        raw = parse_raw_key(info.key, prefix)
        if raw.kind != "other":
            raw = replace(raw, modified=info.last_modified.isoformat())
        if raw.kind == "clinical":
            listing.clinical.append((raw, info.size))
        elif raw.kind == "image":
            listing.images.append((raw, info.size))
        else:
            listing.other.append(raw)
    listing.clinical.sort(key=lambda item: (item[0].upload_date, item[0].key))
    listing.images.sort(key=lambda item: item[0].key)
    listing.other.sort(key=lambda raw: raw.key)
    listing.links.sort()
    listing.refused.sort(key=lambda refusal: refusal.key)
    return listing


def report_refused(listing: RawListing, report: RunReport) -> None:
    """Report the raw keys refused whatever their place (unsafe names, folders too deep,
    implausible times), each with its stamp from the listing."""
    for refusal in listing.refused:
        stamp = (refusal.size, refusal.modified)
        report.skip(refusal.key, refusal.reason, refusal.detail, stamp=stamp)


def shared_names_filed(listing: RawListing, index: WarehouseIndex) -> list[tuple[RawKey, int]]:
    """The raw images whose name another raw image shares and an image of that name is filed:
    the only ones whose being filed their name cannot tell (`pending_images`)."""
    shared = {name for name, n in listing.image_name_counts().items() if n > 1}
    return [
        (raw, size)
        for raw, size in listing.images
        if raw.name in shared and index.image_done(raw.name)
    ]


def pending_images(
    listing: RawListing, index: WarehouseIndex, filed_sources: frozenset[str] = frozenset()
) -> Iterator[tuple[RawKey, int] | tuple[RawKey, None]]:
    """Split raw images into pending ones ``(raw, size)`` and filed ones ``(raw, None)``.

    An image is filed when a warehouse image of its name and the metadata file of its stem both
    exist. Names are compared without their folders (the target folder is only known from the
    header), so when several raw images share a name, their names cannot tell: such an image
    is filed when the catalogue names its raw key as the source of a filed image
    (``filed_sources``, unchanged since), else it is processed and its full target keys decide.
    A same-name upload elsewhere therefore never makes a filed image be read again.
    """
    shared = {name for name, n in listing.image_name_counts().items() if n > 1}
    for raw, size in listing.images:
        if raw.key in filed_sources or (raw.name not in shared and index.image_done(raw.name)):
            yield raw, None
        else:
            yield raw, size
