"""What the warehouse side holds of images, listed in full and kept compact.

The hashes of the images filed (image and metadata file both listed) and the bytes under each
top folder: what a reconcile checks the catalogue against, in memory that grows by about 32
bytes an image, not by the length of its key. Only the images the catalogue does not know
keep their keys (a reconcile catalogues them).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from warehouse.catalogue.index import contains, key_hash
from warehouse.core.keys import GROUPS, image_targets, parse_warehouse_key
from warehouse.storage.base import ObjectInfo, Storage


@dataclass
class FiledImages:
    """The warehouse's filed images, as listed.

    Attributes
    ----------
    images : numpy.ndarray
        The sorted hashes (`catalogue.index.key_hash`) of the image keys whose metadata file
        is listed too.
    unknown : dict
        Image key -> ``(size, metadata file size)`` of the filed images whose hash is not in
        the ``known`` array the listing was given (none without one).
    folder_bytes : Counter
        ``(group, top folder)`` -> bytes of every object listed under it (``""`` for those
        at the group's top), in the layout or not.
    objects : int
        Objects listed.
    links : list
        Keys of symbolic links (local stores): never trusted as filed.
    """

    images: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    unknown: dict[str, tuple[int, int]] = field(default_factory=dict)
    folder_bytes: Counter = field(default_factory=Counter)
    objects: int = 0
    links: list[str] = field(default_factory=list)

    def holds(self, hashes: np.ndarray) -> np.ndarray:
        """Tell which of these image key hashes are filed."""
        return contains(self.images, hashes)

    def stored_bytes(self) -> Iterator[tuple[str, int]]:
        """Yield ``(prefix, bytes)`` as `listing.warehouse.WarehouseIndex.stored_bytes` does."""
        for (group, folder), size in sorted(self.folder_bytes.items()):
            yield (f"{group}/{folder}/" if folder else f"{group}/"), size


#: Images looked up in the catalogue's hashes at a time.
_BATCH = 8192


def _keep_unknown(
    batch: list[tuple[str, int, int, int]],
    known: np.ndarray | None,
    candidates: dict[str, tuple[int, int]],
) -> None:
    """Keep the keys of the images of ``batch`` that ``known`` does not hold; empty it."""
    if batch:
        hashes = np.fromiter((item[3] for item in batch), dtype=np.uint64, count=len(batch))
        held = contains(known, hashes) if known is not None else np.zeros(len(batch), bool)
        for (key, size, position, _), is_known in zip(batch, held, strict=True):
            if not is_known:
                candidates[key] = (size, position)
    batch.clear()


def list_filed_images(
    storage: Storage,
    workers: int = 8,
    *,
    known: np.ndarray | None = None,
    source: Iterable[ObjectInfo] | None = None,
) -> FiledImages:
    """List the whole warehouse side (``training/``, ``validation/``), streamed.

    Only the hashes of images and metadata files, their sizes and the bytes by folder are
    kept, and the keys of the filed images whose hash is not in ``known`` (sorted hashes: the
    catalogue's).

    Parameters
    ----------
    storage : Storage
        The warehouse.
    workers : int
        Parallel listings.
    known : numpy.ndarray, optional
        The sorted hashes of the image keys already catalogued.
    source : iterable of ObjectInfo, optional
        The objects to take instead of a listing (an S3 Inventory's records).

    Raises
    ------
    StorageError
        If the listing fails.
    """
    found = FiledImages()
    images, their_metadata = array("Q"), array("Q")
    metadata, metadata_sizes = array("Q"), array("q")
    candidates: dict[str, tuple[int, int]] = {}  # (size, the metadata hash's position)
    batch: list[tuple[str, int, int, int]] = []
    objects = (
        source
        if source is not None
        else storage.list_many([f"{group}/" for group in GROUPS], workers)
    )
    for info in objects:
        found.objects += 1
        group, _, rest = info.key.partition("/")
        folder, sep, _ = rest.partition("/")
        found.folder_bytes[(group, folder if sep else "")] += int(info.size or 0)
        if info.link:
            found.links.append(info.key)
            continue
        parsed = parse_warehouse_key(info.key)
        if parsed is None:
            continue
        if parsed.kind == "image":
            hashed = key_hash(info.key)
            meta = image_targets(
                parsed.group,
                parsed.folder,
                parsed.pseudonym,
                parsed.study,
                parsed.series,
                parsed.name,
            )[1]
            images.append(hashed)
            their_metadata.append(key_hash(meta))
            batch.append((info.key, int(info.size or 0), len(their_metadata) - 1, hashed))
            if len(batch) >= _BATCH:
                _keep_unknown(batch, known, candidates)
        elif parsed.kind == "metadata":
            metadata.append(key_hash(info.key))
            metadata_sizes.append(int(info.size or 0))
    _keep_unknown(batch, known, candidates)
    order = np.argsort(np.frombuffer(metadata, dtype=np.uint64), kind="stable")
    listed = np.frombuffer(metadata, dtype=np.uint64)[order]
    listed_sizes = np.frombuffer(metadata_sizes, dtype=np.int64)[order]
    wanted = np.frombuffer(their_metadata, dtype=np.uint64)
    with_metadata = contains(listed, wanted)
    found.images = np.sort(np.frombuffer(images, dtype=np.uint64)[with_metadata])
    if len(listed):
        at = np.minimum(np.searchsorted(listed, wanted), len(listed) - 1)
        for key, (size, position) in candidates.items():
            if with_metadata[position]:
                found.unknown[key] = (size, int(listed_sizes[at[position]]))
    found.links.sort()
    return found
