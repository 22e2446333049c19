"""The raw side: the configured prefixes listed (in parallel, by upload folder) and every key
classified by the raw layout, refused whatever its place when its name or time cannot be
trusted."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterator
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


def raw_stamp(raw: RawKey, size: int) -> tuple[int, str]:
    """A raw input's size and modification time from the listing: how the next run knows it
    unchanged (the memo compares them)."""
    return size, raw.modified


def report_links(report: RunReport, keys, side: str) -> None:
    """Report the symbolic links a local store listed (``side``: ``"raw side"`` or
    ``"warehouse"``): never followed, so neither read, filed nor trusted as filed."""
    for key in keys:
        report.skip(key, Reason.SYMLINK, f"a symbolic link in the {side}: not followed")
