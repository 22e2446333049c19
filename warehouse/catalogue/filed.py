"""What the warehouse side holds of images, listed in full and kept compact.

The hashes of the images filed (image and metadata file both listed) and the bytes under each
top folder: what a reconcile checks the catalogue against, in memory that grows by 16 bytes
an image, not by the length of its key.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from warehouse.catalogue.index import contains, key_hash
from warehouse.core.keys import GROUPS, image_targets, parse_warehouse_key
from warehouse.storage.base import Storage


@dataclass
class FiledImages:
    """The warehouse's filed images, as listed.

    Attributes
    ----------
    images : numpy.ndarray
        The sorted hashes (`catalogue.index.key_hash`) of the image keys whose metadata file
        is listed too.
    folder_bytes : Counter
        ``(group, top folder)`` -> bytes of every object listed under it (``""`` for those
        at the group's top), in the layout or not.
    objects : int
        Objects listed.
    """

    images: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    folder_bytes: Counter = field(default_factory=Counter)
    objects: int = 0

    def holds(self, hashes: np.ndarray) -> np.ndarray:
        """Which of these image key hashes are filed."""
        return contains(self.images, hashes)

    def stored_bytes(self) -> Iterator[tuple[str, int]]:
        """``(prefix, bytes)`` as `listing.warehouse.WarehouseIndex.stored_bytes` gives them."""
        for (group, folder), size in sorted(self.folder_bytes.items()):
            yield (f"{group}/{folder}/" if folder else f"{group}/"), size


def list_filed_images(storage: Storage, workers: int = 8) -> FiledImages:
    """List the whole warehouse side (``training/``, ``validation/``), streamed.

    Only the hashes of images and metadata files and the bytes by folder are kept.

    Raises
    ------
    StorageError
        If the listing fails.
    """
    found = FiledImages()
    images, their_metadata, metadata = array("Q"), array("Q"), array("Q")
    for info in storage.list_many([f"{group}/" for group in GROUPS], workers):
        found.objects += 1
        group, _, rest = info.key.partition("/")
        folder, sep, _ = rest.partition("/")
        found.folder_bytes[(group, folder if sep else "")] += int(info.size or 0)
        if info.link:
            continue  # (never trusted as filed)
        parsed = parse_warehouse_key(info.key)
        if parsed is None:
            continue
        if parsed.kind == "image":
            images.append(key_hash(info.key))
            meta = image_targets(
                parsed.group,
                parsed.folder,
                parsed.pseudonym,
                parsed.study,
                parsed.series,
                parsed.name,
            )[1]
            their_metadata.append(key_hash(meta))
        elif parsed.kind == "metadata":
            metadata.append(key_hash(info.key))
    listed = np.sort(np.frombuffer(metadata, dtype=np.uint64))
    image_hashes = np.frombuffer(images, dtype=np.uint64)
    with_metadata = contains(listed, np.frombuffer(their_metadata, dtype=np.uint64))
    found.images = np.sort(image_hashes[with_metadata])
    return found
