"""What the warehouse side holds, listed once per run and shared by the ``dataprocess`` branches.

One listing of ``training/`` and ``validation/`` gives everything the dashboard tables start
from: each patient's clinical file names (with their LastModified dates), one metadata file per
study, and the bytes stored under each storage prefix. Only names, dates and sums are kept,
never listing objects, so memory grows with patients and studies, not with images.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from warehouse.core.keys import GROUPS, parse_warehouse_key
from warehouse.core.storage import ObjectInfo, Storage
from warehouse.dashboard.tables import storage_by_prefix

#: Image modality folders whose ``<mod>-metadata`` files make the study tables, in table order.
STUDY_MODALITIES = ("ct", "xray", "mri")
_METADATA_SUFFIX = "-metadata"


@dataclass(frozen=True, slots=True)
class ClinicalFile:
    """One filed clinical file: ``<group>/data/<pseudonym>/<name>``."""

    group: str
    name: str
    last_modified: dt.date

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
    last_modified: dt.date


@dataclass
class WarehouseContents:
    """The result of one listing of the warehouse side.

    Attributes
    ----------
    clinical : dict
        Pseudonym -> its `ClinicalFile` entries (any group).
    studies : dict
        ``(group, modality, pseudonym, study)`` -> the `StudyFile` chosen for that study.
    storage : dict
        Storage prefix (``training/ct/``, ..., ``validation/``) -> bytes.
    objects : int
        Objects listed.
    links : list
        Keys of symbolic links on the warehouse side (local stores), sorted: never followed,
        not counted as filed; to be reported with ``Reason.SYMLINK``.
    images : dict
        ``(group, modality, pseudonym, study, LastModified date)`` -> metadata files (one per
        filed image) of that study folder listed with that date.
    """

    clinical: dict[str, list[ClinicalFile]] = field(default_factory=dict)
    studies: dict[tuple[str, str, str, str], StudyFile] = field(default_factory=dict)
    storage: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    links: list[str] = field(default_factory=list)
    images: dict[tuple[str, str, str, str, dt.date], int] = field(default_factory=dict)

    def add(self, info: ObjectInfo) -> None:
        """Take one listed object into account (clinical file, metadata file, or neither); a
        symbolic link is only noted in ``links``."""
        if info.link:
            self.links.append(info.key)
            return
        self.objects += 1
        parsed = parse_warehouse_key(info.key)
        if parsed is None:
            return
        if parsed.kind == "clinical":
            entry = ClinicalFile(parsed.group, parsed.name, _date(info.last_modified))
            self.clinical.setdefault(parsed.pseudonym, []).append(entry)
        elif parsed.kind == "metadata":
            group, folder, pseudonym, study = info.key.split("/")[:4]
            modality = folder[: -len(_METADATA_SUFFIX)]
            if modality not in STUDY_MODALITIES:
                return
            slot = (group, modality, pseudonym, study)
            filed = (*slot, _date(info.last_modified))
            self.images[filed] = self.images.get(filed, 0) + 1
            known = self.studies.get(slot)
            if known is None or info.key < known.key:
                self.studies[slot] = StudyFile(
                    group, modality, pseudonym, study, info.key, _date(info.last_modified)
                )

    def sorted_studies(self) -> list[StudyFile]:
        """The chosen metadata files, by modality (table order), group, patient and study."""
        order = {modality: index for index, modality in enumerate(STUDY_MODALITIES)}
        return sorted(
            self.studies.values(),
            key=lambda s: (order[s.modality], s.group, s.pseudonym, s.study),
        )


def _date(value: dt.datetime) -> dt.date:
    """The UTC date of a LastModified time."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.date()


def list_contents(storage: Storage, workers: int = 8) -> WarehouseContents:
    """List ``training/`` and ``validation/`` once (in parallel, by folder) and summarise them.

    Parameters
    ----------
    storage : Storage
        The warehouse store.
    workers : int
        Parallel listings.

    Returns
    -------
    WarehouseContents

    Raises
    ------
    StorageError
        If the listing fails.
    """
    contents = WarehouseContents()

    def sizes(infos: Iterable[ObjectInfo]) -> Iterator[tuple[str, int]]:
        for info in infos:
            contents.add(info)
            if not info.link:
                yield info.key, info.size

    listing = storage.list_many([f"{group}/" for group in GROUPS], workers)
    contents.storage = storage_by_prefix(sizes(listing))
    contents.links.sort()
    return contents


class WarehouseCatalogue:
    """A service: the warehouse side, listed on first use (under a lock) and then shared.

    The three ``dataprocess`` branches ask for it at the same time; the first lists, the others
    wait and get the same `WarehouseContents`. A failed listing is remembered and raised again
    to every caller, so the warehouse is never listed twice in a run.
    """

    def __init__(self, storage: Storage, workers: int = 8):
        self.storage = storage
        self.workers = workers
        self._lock = threading.Lock()
        self._contents: WarehouseContents | None = None
        self._error: Exception | None = None
        self.listings = 0

    @property
    def listed(self) -> bool:
        """Whether the warehouse side has been listed successfully."""
        return self._contents is not None

    def contents(self) -> WarehouseContents:
        """The warehouse contents (listing them if nobody has yet).

        Raises
        ------
        StorageError
            If the listing failed (now or for an earlier caller).
        """
        with self._lock:
            if self._contents is None and self._error is None:
                self.listings += 1
                try:
                    self._contents = list_contents(self.storage, self.workers)
                except Exception as exc:  # noqa: BLE001 - re-raised to this and every caller
                    self._error = exc
            if self._error is not None:
                raise self._error
            return self._contents
