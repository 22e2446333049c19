"""Listing, once per run: the configured raw prefixes and the warehouse side.

The warehouse listing gives everything "already done" is decided from (no request per object):
the groups of patients already filed, the clinical files already copied, and the names of the
images and metadata files already written. Only names are kept, never listing objects.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from warehouse.core.keys import (
    GROUPS,
    RawKey,
    image_stem,
    parse_raw_key,
    parse_warehouse_key,
)
from warehouse.core.storage import Storage

logger = logging.getLogger(__name__)


#: A filed object's size and last-modified second, packed in one int (memory stays at one small
#: object per filed name): ``size * _SECONDS + seconds``.
_SECONDS = 1 << 34
#: The stamp of a name filed more than once (its raw source is only known from the header).
AMBIGUOUS = -1


def pack_stamp(size: int, modified: dt.datetime | str) -> int:
    """A listed object's size and last-modified time (to the second) as one int."""
    if isinstance(modified, str):
        modified = dt.datetime.fromisoformat(modified)
    return size * _SECONDS + int(modified.timestamp())


def changed_since_filed(raw_stamp: int, filed_stamp: int) -> bool:
    """Whether a raw file differs from its filed copy: another size, or modified after the copy
    was made (a copy's last-modified time is when it was made)."""
    raw_size, raw_second = divmod(raw_stamp, _SECONDS)
    filed_size, filed_second = divmod(filed_stamp, _SECONDS)
    return raw_size != filed_size or raw_second > filed_second


@dataclass
class WarehouseIndex:
    """What the warehouse side already holds, from one listing.

    Attributes
    ----------
    groups : dict
        Pseudonym -> group of every patient with clinical files filed.
    conflicts : dict
        Pseudonym -> groups, for patients found in both groups (an existing inconsistency).
    clinical : set
        ``(pseudonym, file name)`` of filed clinical files, whatever their group.
    image_names, metadata_names : set
        Base names of filed images and of metadata files.
    keys : set
        Full keys of filed images and metadata files.
    clinical_stamps, image_stamps : dict
        The stamp (`pack_stamp`: size and last-modified second) of each filed clinical file
        (by ``(pseudonym, file name)``) and image (by base name; `AMBIGUOUS` for a name filed
        more than once), to tell a raw file that changed since it was filed.
    links : list
        Keys of symbolic links on the warehouse side (local stores), sorted: never followed,
        not trusted as filed; to be reported with ``Reason.SYMLINK``.
    """

    groups: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, set[str]] = field(default_factory=dict)
    clinical: set[tuple[str, str]] = field(default_factory=set)
    image_names: set[str] = field(default_factory=set)
    metadata_names: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    clinical_stamps: dict[tuple[str, str], int] = field(default_factory=dict)
    image_stamps: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    links: list[str] = field(default_factory=list)
    _clinical_names: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, size: int = 0, modified: dt.datetime | None = None) -> None:
        """Take one listed warehouse object (its key, size and last-modified time) into
        account."""
        parsed = parse_warehouse_key(key)
        if parsed is None:
            return
        self.objects += 1
        stamp = None if modified is None else pack_stamp(size, modified)
        if parsed.kind == "clinical":
            known = self.groups.setdefault(parsed.pseudonym, parsed.group)
            if known != parsed.group:
                self.conflicts.setdefault(parsed.pseudonym, {known}).add(parsed.group)
            self.clinical.add((parsed.pseudonym, parsed.name))
            self._clinical_names.setdefault(parsed.pseudonym, []).append(parsed.name)
            if stamp is not None:
                self.clinical_stamps[(parsed.pseudonym, parsed.name)] = stamp
        elif parsed.kind == "image":
            if stamp is not None:
                seen = parsed.name in self.image_names
                self.image_stamps[parsed.name] = AMBIGUOUS if seen else stamp
            self.image_names.add(parsed.name)
            self.keys.add(key)
        else:
            self.metadata_names.add(parsed.name)
            self.keys.add(key)

    def image_done(self, name: str) -> bool:
        """Whether an image of this file name and its metadata file are both filed."""
        return name in self.image_names and f"{image_stem(name)}.json" in self.metadata_names

    def first_clinical_key(self, pseudonym: str) -> str | None:
        """The key of a filed patient's first clinical file (earliest upload date), or None."""
        group = self.groups.get(pseudonym)
        names = self._clinical_names.get(pseudonym) if group else None
        if not names:
            return None
        first = min(names, key=lambda name: (name.rsplit("_", 1)[-1], name))
        return f"{group}/data/{pseudonym}/{first}"


def index_warehouse(storage: Storage, workers: int = 8) -> WarehouseIndex:
    """List the warehouse side (``training/``, ``validation/``) once and index it."""
    index = WarehouseIndex()
    for info in storage.list_many([f"{group}/" for group in GROUPS], workers):
        if info.link:
            index.links.append(info.key)
        else:
            index.add(info.key, info.size, info.last_modified)
    index.links.sort()
    return index


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
    """

    clinical: list[tuple[RawKey, int]] = field(default_factory=list)
    images: list[tuple[RawKey, int]] = field(default_factory=list)
    other: list[RawKey] = field(default_factory=list)
    unconfigured: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def image_name_counts(self) -> Counter:
        """How many raw images share each file name."""
        return Counter(raw.name for raw, _ in self.images)


def list_raw(storage: Storage, prefixes: tuple[str, ...], workers: int = 8) -> RawListing:
    """List the configured raw prefixes once (in parallel, by upload folder) and classify keys.

    Parameters
    ----------
    storage : Storage
        The warehouse store.
    prefixes : tuple of str
        Configured raw prefixes, normalised (no trailing slash).
    workers : int
        Parallel listings.
    """
    listing = RawListing()
    configured = set(prefixes)
    root_folders, root_objects = storage.list_folders("")
    listing.unconfigured = sorted(
        folder.rstrip("/")
        for folder in root_folders
        if folder.startswith("raw-") and folder.rstrip("/") not in configured
    )
    listing.links = [
        info.key
        for info in root_objects
        if info.link and info.key.startswith("raw-") and info.key not in configured
    ]
    for info in storage.list_many([f"{p}/" for p in prefixes], workers):
        if info.link:  # a linked prefix, folder or file: reported, never followed
            listing.links.append(info.key)
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
    return listing


def pending_images(
    listing: RawListing, index: WarehouseIndex
) -> Iterator[tuple[RawKey, int] | tuple[RawKey, None]]:
    """Split raw images into pending ones ``(raw, size)`` and filed ones ``(raw, None)``.

    An image is filed when a warehouse image of its name and the metadata file of its stem both
    exist. Names are compared without their folders (the target folder is only known from the
    header), so when several raw images share a name, each is processed and its full target
    keys decide.
    """
    shared = {name for name, n in listing.image_name_counts().items() if n > 1}
    for raw, size in listing.images:
        if raw.name not in shared and index.image_done(raw.name):
            yield raw, None
        else:
            yield raw, size
