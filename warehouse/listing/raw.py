"""The raw side: the configured prefixes listed (in parallel, by upload folder) and every key
classified by the raw layout, refused whatever its place when its name or time cannot be
trusted."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from warehouse.core.keys import (
    MAX_KEY_DEPTH,
    RAW_PREFIX_MARK,
    RawKey,
    modification_time_problem,
    parse_raw_key,
    raw_name_problem,
)
from warehouse.core.reasons import Reason
from warehouse.core.report import RunReport
from warehouse.listing.warehouse import WarehouseIndex
from warehouse.storage.base import ObjectInfo, Storage

logger = logging.getLogger(__name__)

#: Listed images a full run checks against the catalogue at a time (`RawListing.keep_images`).
KEEP_BATCH = 8192


@dataclass(frozen=True, slots=True)
class RawRefusal:
    """A listed raw key that is no input, whatever its place in the layout: its report reason
    and detail, and its size and last-modified time (ISO 8601) from the listing."""

    key: str
    reason: Reason
    detail: str
    size: int
    modified: str


def content_id(etag: str | None, size: int) -> str | None:
    """Return the identity of an object's bytes from its listing: ``etag:<ETag>:<size>``.

    The ETag without its quotes (S3's listing quotes it); None when the listing gave none (a
    local store: `sha256_content_id` is computed from the bytes instead). Two objects with
    the same ETag and size hold the same bytes (an ETag is the MD5 of the bytes, or of the
    parts' MD5s for a multipart upload: the same bytes uploaded in other parts differ, so the
    check can miss such a pair, never accuse a wrong one).
    """
    if not etag:
        return None
    return f"etag:{etag.strip(chr(34))}:{int(size)}"


def sha256_content_id(digest: str | None) -> str | None:
    """Return the identity of an object's bytes from their SHA-256 (hex): ``sha256:<hex>``."""
    return f"sha256:{digest}" if digest else None


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
    folders : dict
        Raw prefix -> the names of its first-level folders (upload folders), all of them.
    listed : dict
        Raw prefix -> the names of the folders whose contents were listed (all of them, or
        those `open_folder` chose).
    filed_images : Counter
        Raw prefix -> images the listing left out as known filed (``keep_images``).
    keep_images : callable or None
        ``keep_images(images) -> list of bool``: which of a batch of listed images to keep
        (a full run keeps only those not known filed, so that its memory follows what is
        new, not every upload ever made); all of them without it.
    """

    clinical: list[tuple[RawKey, int]] = field(default_factory=list)
    images: list[tuple[RawKey, int]] = field(default_factory=list)
    other: list[RawKey] = field(default_factory=list)
    unconfigured: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    refused: list[RawRefusal] = field(default_factory=list)
    folders: dict[str, list[str]] = field(default_factory=dict, compare=False)
    listed: dict[str, list[str]] = field(default_factory=dict, compare=False)
    filed_images: Counter = field(default_factory=Counter, compare=False)
    keep_images: Callable[[list[tuple[RawKey, int]]], list[bool]] | None = field(
        default=None, compare=False, repr=False
    )
    _unchecked: list[tuple[RawKey, int]] = field(default_factory=list, compare=False, repr=False)

    def add(self, info: ObjectInfo, now: dt.datetime) -> None:
        """Classify one listed object under a configured prefix."""
        if info.link:  # a linked prefix, folder or file: reported, never followed
            self.links.append(info.key)
            return
        refusal = raw_refusal(info, now)
        if refusal is not None:
            self.refused.append(refusal)
            return
        prefix = info.key.split("/", 1)[0]
        raw = parse_raw_key(info.key, prefix)
        if raw.kind != "other":
            raw = replace(
                raw,
                modified=info.last_modified.isoformat(),
                content_id=content_id(info.etag, info.size) or "",
            )
        if raw.kind == "clinical":
            self.clinical.append((raw, info.size))
        elif raw.kind == "image":
            if self.keep_images is None:
                self.images.append((raw, info.size))
            else:
                self._unchecked.append((raw, info.size))
                if len(self._unchecked) >= KEEP_BATCH:
                    self.check_images()
        else:
            self.other.append(raw)

    def check_images(self) -> None:
        """Keep the images listed since the last check that ``keep_images`` keeps; count the
        others by prefix (`filed_images`)."""
        if not self._unchecked:
            return
        assert self.keep_images is not None
        for item, keep in zip(self._unchecked, self.keep_images(self._unchecked), strict=True):
            if keep:
                self.images.append(item)
            else:
                self.filed_images[item[0].prefix] += 1
        self._unchecked = []

    def sort(self) -> None:
        """Put each list in its order: clinical files by upload date then key, the others by
        key."""
        self.clinical.sort(key=lambda item: (item[0].upload_date, item[0].key))
        self.images.sort(key=lambda item: item[0].key)
        self.other.sort(key=lambda raw: raw.key)
        self.links.sort()
        self.refused.sort(key=lambda refusal: refusal.key)

    def image_name_counts(self) -> Counter:
        """How many raw images share each file name."""
        return Counter(raw.name for raw, _ in self.images)


def list_raw(
    storage: Storage,
    prefixes: tuple[str, ...],
    workers: int = 8,
    *,
    now: dt.datetime | None = None,
    open_folder: Callable[[str, str], bool] | None = None,
    keep_images: Callable[[list[tuple[RawKey, int]]], list[bool]] | None = None,
    from_inventory: Callable[[str, str], bool] | None = None,
    inventory_records: Callable[[list[str]], Iterable[ObjectInfo]] | None = None,
) -> RawListing:
    """List the configured raw prefixes (in parallel, by upload folder) and classify keys.

    Each prefix's first level is listed with a delimiter (its folders, one LIST a thousand
    of them); then the contents of every folder, or only of those ``open_folder(prefix,
    folder name)`` chooses (a daily run lists the folders that can still change). Every
    listed key is in exactly one list of the result: nothing raw is left out unsaid.

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
    open_folder : callable, optional
        Which folders to list the contents of (all by default).
    keep_images : callable, optional
        Which listed images to keep (`RawListing.keep_images`).
    from_inventory, inventory_records : callable, optional
        Which chosen folders to take from an S3 Inventory instead of listing them
        (``from_inventory(prefix, folder name)``), and the inventory's records under given
        folders (``inventory_records(folder prefixes)``).
    """
    now = now or dt.datetime.now(dt.UTC)
    listing = RawListing(keep_images=keep_images)
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
    chosen: list[str] = []
    with ThreadPoolExecutor(max(1, min(workers, len(prefixes) or 1)), "raw-folders") as pool:
        for prefix, (folders, objects) in zip(
            prefixes, pool.map(storage.list_folders, [f"{p}/" for p in prefixes]), strict=True
        ):
            for info in objects:  # objects at the prefix's top: never in the layout
                listing.add(info, now)
            names = [folder[len(prefix) + 1 :].rstrip("/") for folder in folders]
            listing.folders[prefix] = names
            listing.listed[prefix] = [
                name for name in names if open_folder is None or open_folder(prefix, name)
            ]
            chosen += [f"{prefix}/{name}/" for name in listing.listed[prefix]]
    if from_inventory is not None and inventory_records is not None:
        inventoried = [
            folder for folder in chosen if from_inventory(*folder.rstrip("/").split("/", 1))
        ]
        for info in inventory_records(inventoried):
            listing.add(info, now)
        chosen = [folder for folder in chosen if folder not in set(inventoried)]
    if open_folder is None:
        for info in storage.list_many(chosen, workers):
            listing.add(info, now)
    else:
        with ThreadPoolExecutor(max(1, workers), "raw-list") as pool:
            for infos in pool.map(lambda folder: list(storage.list(folder)), chosen):
                for info in infos:
                    listing.add(info, now)
    listing.check_images()
    listing.sort()
    return listing


def report_refused(listing: RawListing, report: RunReport) -> None:
    """Report the raw keys refused whatever their place (unsafe names, folders too deep,
    implausible times), each with its stamp from the listing."""
    for refusal in listing.refused:
        stamp = (refusal.size, refusal.modified)
        report.skip(refusal.key, refusal.reason, refusal.detail, stamp=stamp)


def pending_images(
    listing: RawListing, index: WarehouseIndex, is_filed: Callable[[RawKey, int], bool]
) -> Iterator[tuple[RawKey, int] | tuple[RawKey, None]]:
    """Split raw images into pending ones ``(raw, size)`` and filed ones ``(raw, None)``.

    An image is filed when ``is_filed(raw, size)`` says so (the catalogue names its raw key
    as a filed image's source, of its size), or, when the warehouse side was listed in full
    (``index`` has image names), when a warehouse image of its name and the metadata file of
    its stem both exist and no other raw image shares its name (names are compared without
    their folders; a shared name cannot tell, so such an image is processed and its full
    target keys decide). A same-name upload elsewhere never makes a filed image be read again.
    """
    shared = {name for name, n in listing.image_name_counts().items() if n > 1}
    for raw, size in listing.images:
        if is_filed(raw, size) or (raw.name not in shared and index.image_done(raw.name)):
            yield raw, None
        else:
            yield raw, size


def raw_stamp(raw: RawKey, size: int) -> tuple[int, str]:
    """A raw input's size and modification time from the listing: how the next run knows it
    unchanged (the memo compares them)."""
    return size, raw.modified


def report_links(report: RunReport, keys, side: str) -> None:
    """Report the symbolic links a local store listed (``side``: ``"raw side"`` or
    ``"warehouse"``): never followed, so neither read, filed nor trusted as filed."""
    for key in keys:
        report.skip(key, Reason.SYMLINK, f"a symbolic link in the {side}: not followed")
