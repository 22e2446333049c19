"""The warehouse side, listed once and indexed: the groups of patients filed, their clinical
files, the images and metadata files filed, studies, and bytes by prefix. Only names, sizes,
dates, stamps and sums are kept, never listing objects."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from warehouse.core.keys import (
    GROUPS,
    IMAGE_FOLDERS,
    WarehouseKey,
    image_stem,
    modification_time_problem,
    parse_image_key,
    parse_warehouse_key,
    patient_folder,
)
from warehouse.storage.base import Storage

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
        return patient_folder(self.group, pseudonym) + self.name


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
        return patient_folder(group, pseudonym) + first

    def patient_keys(self) -> list[str]:
        """A clinical key of each group of every filed patient (its first one): what an image
        shard needs of the warehouse's patients (`loader.shards.Handoff.warehouse_index`)."""
        keys = []
        for pseudonym, files in sorted(self.clinical_files.items()):
            for group in sorted({f.group for f in files}):
                first = min(
                    (f for f in files if f.group == group),
                    key=lambda f: (f.name.rsplit("_", 1)[-1], f.name),
                )
                keys.append(first.key(pseudonym))
        return keys

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


def index_warehouse(
    storage: Storage, workers: int = 8, *, observe=None, clinical_only: bool = False
) -> WarehouseIndex:
    """List the warehouse side (``training/``, ``validation/``) once and index it.

    Parameters
    ----------
    storage : Storage
        The warehouse store.
    workers : int
        Parallel listings.
    observe : callable, optional
        ``observe(info)`` sees every listed `ObjectInfo` too.
    clinical_only : bool
        List only the patients' clinical folders (``<group>/data/``): the groups and the
        clinical files filed, tens of pages at ten million objects (a daily run; what is filed
        of images it takes from the catalogue).

    Raises
    ------
    StorageError
        If the listing fails.
    """
    index = WarehouseIndex()
    prefixes = [f"{group}/data/" if clinical_only else f"{group}/" for group in GROUPS]
    # (the clinical folders are listed whole: one request a thousand keys, not one a patient)
    for info in storage.list_many(prefixes, workers, split=not clinical_only):
        if observe is not None:
            observe(info)
        if info.link:
            index.links.append(info.key)
        else:
            index.add(info.key, info.size, info.last_modified)
    index.links.sort()
    return index
