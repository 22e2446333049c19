"""The scale benchmark's two stores: a request counter and a generated warehouse.

One counts the requests a run would make on S3, and one serves a placeholder warehouse of
millions of objects as a listing generated on demand.

`CountingStorage` wraps any store and counts what each operation would cost on S3, by kind and
by the part of the bucket it touches: a listing call costs one LIST a thousand keys (at least
one; a delimiter listing counts its folders too), a read a GET, a ranged read a ranged GET, a
write (conditional or not) a PUT, a copy a COPY (S3's server-side CopyObject), the store check
a HEAD (HeadBucket) and a delete a DELETE; it counts the bytes reads return too.

`GeneratedStorage` is the benchmark's in-memory store for sizes a disk would not hold as files:
its placeholder objects (`benchmarks.scale_layout.Layout`) are listed and read from their
layout, generated as asked, never all held; everything else (the real part of the warehouse,
the day's uploads, what runs write, the catalogue parts) is in an overlay, a local directory,
since every run of the benchmark is a process of its own. Listings merge both in key order;
`GeneratedStorage.placeholder_objects` yields the same objects in one pass, an S3 Inventory's
rows (`benchmarks.scale_inventory`).
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import math
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from benchmarks.scale_layout import (
    FOLDERS,
    GROUPS,
    UID_ROOT,
    Contents,
    Image,
    Layout,
    Site,
    Template,
    clinical_keys,
    image_at,
    images_of,
)
from warehouse.core.errors import ObjectNotFound, StorageError
from warehouse.storage.base import ObjectInfo, Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.wrappers import DelegatingStorage

#: Keys in one page of an S3 listing.
PAGE_KEYS = 1000
#: The kinds of request counted, in the order the tables show them.
KINDS = ("LIST", "GET", "GET-range", "PUT", "COPY", "HEAD", "DELETE")


def area_of(key: str) -> str:
    """Return the part of the bucket a key or prefix lies in, for the request counts.

    One of ``raw``, ``clinical`` (``<group>/data/``), ``images``, ``metadata``, ``warehouse`` (a
    group's top), ``catalogue``, ``reports``, ``state``, ``config`` (``config.json``),
    ``feedback``, ``lease``, ``root`` or ``other``.
    """
    parts = key.split("/")
    top = parts[0]
    if top.startswith("raw-"):
        return "raw"
    if top in GROUPS:
        second = parts[1] if len(parts) > 1 else ""
        if not second:
            return "warehouse"
        if second == "data":
            return "clinical"
        return "metadata" if second.endswith("-metadata") else "images"
    if not key:
        return "root"
    named = {
        "catalogue": "catalogue",
        "reports": "reports",
        "state": "state",
        "config.json": "config",
    }
    named.update(feedback="feedback", locks="lease")
    return named.get(top, "other")


class RequestCounter:
    """S3-equivalent requests by kind and area, shared by the stores of one run (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.listed_keys = 0
        self.read_bytes: Counter = Counter()

    def add(self, kind: str, area: str, n: int = 1) -> None:
        """Count ``n`` requests of ``kind`` in ``area``."""
        with self._lock:
            self.counts[(kind, area)] += n

    def read(self, area: str, data: bytes) -> bytes:
        """Count the bytes a read in ``area`` returned; return them."""
        with self._lock:
            self.read_bytes[area] += len(data)
        return data

    def listed(self, keys: int) -> None:
        """Count keys returned by listings."""
        with self._lock:
            self.listed_keys += keys

    def as_dict(self) -> dict:
        """Return the counts as a JSON-ready dict.

        ``{"kinds": {kind: n}, "areas": {area: {kind: n}}, "listed_keys": n, "read_bytes":
        {area: bytes}}``.
        """
        with self._lock:
            kinds: Counter = Counter()
            areas: dict[str, Counter] = {}
            for (kind, area), n in self.counts.items():
                kinds[kind] += n
                areas.setdefault(area, Counter())[kind] += n
            return {
                "kinds": {k: kinds[k] for k in KINDS if kinds[k]},
                "areas": {a: dict(sorted(c.items())) for a, c in sorted(areas.items())},
                "listed_keys": self.listed_keys,
                "read_bytes": dict(sorted(self.read_bytes.items())),
            }


class CountingStorage(DelegatingStorage):
    """A store that counts what each operation would cost on S3, then hands it to ``inner``.

    Parameters
    ----------
    inner : Storage
        The store.
    counter : RequestCounter
        Where the counts go (shared with the processed store's wrapper).
    area : str, optional
        The area of every request (``processed`` for the processed store); by key otherwise.
    """

    def __init__(self, inner: Storage, counter: RequestCounter, area: str | None = None):
        super().__init__(inner)
        self.counter, self.area = counter, area

    def _area(self, key: str) -> str:
        return self.area or area_of(key)

    def _pages(self, listing: Iterator[ObjectInfo], area: str) -> Iterator[ObjectInfo]:
        # S3 asks for a page when the first key of it is wanted; the first even when empty
        self.counter.add("LIST", area)
        n = 0
        for info in listing:
            if n and n % PAGE_KEYS == 0:
                self.counter.add("LIST", area)
            n += 1
            yield info
        self.counter.listed(n)

    def check_store(self) -> None:
        """Count a HEAD (HeadBucket), then check ``inner``."""
        self.counter.add("HEAD", self.area or "root")
        self.inner.check_store()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Count a LIST a page of `PAGE_KEYS` keys as the listing of ``inner`` is read."""
        return self._pages(self.inner.list(prefix), self._area(prefix))

    def list_after(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """Count as `list` does, for the listing of ``inner`` after ``start_after``."""
        return self._pages(self.inner.list_after(prefix, start_after), self._area(prefix))

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """Count a LIST a page of `PAGE_KEYS` folders and objects found (one at least)."""
        folders, objects = self.inner.list_folders(prefix)
        found = len(folders) + len(objects)
        self.counter.add("LIST", self._area(prefix), max(1, math.ceil(found / PAGE_KEYS)))
        self.counter.listed(found)
        return folders, objects

    def read(self, key: str) -> bytes:
        """Count a GET, then read from ``inner``."""
        self.counter.add("GET", self._area(key))
        return self.counter.read(self._area(key), self.inner.read(key))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Count a ranged GET, then read from ``inner``."""
        self.counter.add("GET-range", self._area(key))
        return self.counter.read(self._area(key), self.inner.read_range(key, start, end))

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        """Count a GET, then read from ``inner`` with its token."""
        self.counter.add("GET", self._area(key))
        data, token = self.inner.read_with_token(key)
        return self.counter.read(self._area(key), data), token

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        """Count a PUT, then write to ``inner``."""
        self.counter.add("PUT", self._area(key))
        self.inner.write(key, data, content_type)

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        """Count a PUT, then write the file to ``inner``."""
        self.counter.add("PUT", self._area(key))
        self.inner.write_file(key, path, content_type)

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Count a PUT, then write to ``inner`` if the key is absent."""
        self.counter.add("PUT", self._area(key))
        return self.inner.write_if_absent(key, data, content_type)

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        """Count a PUT, then write to ``inner`` if the object is unchanged since ``token``."""
        self.counter.add("PUT", self._area(key))
        return self.inner.write_if_match(key, data, token, content_type)

    def delete_if_match(self, key: str, token: str) -> None:
        """Count a DELETE, then delete from ``inner``."""
        self.counter.add("DELETE", self._area(key))
        self.inner.delete_if_match(key, token)

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        """Count a COPY (in the target's area), then copy within ``inner``."""
        self.counter.add("COPY", self._area(target_key))
        self.inner.copy(source_key, target_key, size)

    def processed(self) -> Storage:
        """Return the processed store of ``inner``, counted in the ``processed`` area."""
        return CountingStorage(self.inner.processed(), self.counter, "processed")


# --------------------------------------------------------------------------------------------
# the generated store


def _uid_numbers(uid: str, parts: int) -> list[int] | None:
    """Return the placeholder numbers of a placeholder UID (`scale_layout.sop_uid`), or None."""
    if not uid.startswith(UID_ROOT + "."):
        return None
    fields = uid[len(UID_ROOT) + 1 :].split(".")
    if len(fields) != parts or not all(f[:1] == "1" and f[1:].isdigit() for f in fields):
        return None
    return [int(f[1:]) for f in fields]


class GeneratedStorage(Storage):
    """A store of placeholder objects generated from their `Layout` over an overlay store.

    The overlay (`LocalStorage`) holds everything else and takes every write.

    Parameters
    ----------
    overlay : LocalStorage
        The real part, the day's uploads, the catalogue parts and what runs write.
    layout : Layout
        The placeholders.
    contents : Contents
        What they hold.
    modified : datetime.datetime
        Their last-modified time.
    """

    def __init__(
        self, overlay: LocalStorage, layout: Layout, contents: Contents, modified: dt.datetime
    ):
        self.overlay, self.layout, self.contents = overlay, layout, contents
        self.modified = modified
        self.url = overlay.url
        # the overlay's directory names the bucket (what an S3 Inventory calls its source)
        self.root = overlay.root
        self._bytes = {
            m: (overlay.root / t.image_key).read_bytes() for m, t in contents.templates.items()
        }
        self._metadata = {
            m: (overlay.root / t.metadata_key).read_bytes() for m, t in contents.templates.items()
        }
        self._sizes: dict = {}
        self._sites = sorted({p.site for p in layout.patients})

    @classmethod
    def from_spec(cls, spec_path: Path, overlay_root: Path) -> GeneratedStorage:
        """Build the store a spec file (`write_spec`) describes.

        Its overlay is the local directory ``overlay_root``.
        """
        spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
        sites = [Site(**site) for site in spec["sites"]]
        layout = Layout(
            spec["patients"], spec["seed"], sites, dt.date.fromisoformat(spec["newest"])
        )
        overlay = LocalStorage(overlay_root)
        templates = {m: Template(**t, row={}) for m, t in spec["templates"].items()}
        contents = Contents.from_templates(overlay.root, templates, sites, spec["seed"])
        return cls(overlay, layout, contents, dt.datetime.fromisoformat(spec["modified"]))

    # -- what is generated ------------------------------------------------------------------

    def _size(self, what: str, *args) -> int:
        if (what, *args) not in self._sizes:
            if what == "clinical":
                site, kind = args
                size = len(self.contents.clinical[(site, kind)])
            elif what == "first-metadata":
                (modality,) = args
                sample = self.layout.patients[0]
                image = next(images_of(sample))._replace(modality=modality)
                size = len(self.contents.study_metadata(sample, image))
            else:
                (modality,) = args
                source = self._bytes if what == "image" else self._metadata
                size = len(source[modality])
            self._sizes[(what, *args)] = size
        return self._sizes[(what, *args)]

    def _children(self, parts: list[str]) -> list[tuple[str, bool, int]]:
        """Return the generated entries of the folder ``parts``, in key order.

        Each entry is ``(name, is folder, size)``.
        """
        entries = self._entries(parts)
        return sorted(entries, key=lambda entry: entry[0] + "/" if entry[1] else entry[0])

    def _entries(self, parts: list[str]) -> list[tuple[str, bool, int]]:
        layout = self.layout
        depth = len(parts)
        if depth == 0:
            groups = [g for g in GROUPS if layout.groups[g]]
            return [(name, True, 0) for name in [*self._sites, *groups]]
        if parts[0] in GROUPS:
            return self._group_entries(parts)
        if parts[0] not in self._sites:
            return []
        if depth == 1:
            dates = layout.site_folders().get(parts[0], [])
            return [(date, True, 0) for date in dates]
        patients = layout.folders.get((parts[0], parts[1]), [])
        if depth == 2:
            return [("data", True, 0), ("images", True, 0)] if patients else []
        if depth == 3 and parts[2] == "data":
            return [
                (f"{p.name}_{p.kind}.json", False, self._size("clinical", p.site, p.kind))
                for p in patients
            ]
        if depth == 3 and parts[2] == "images":
            return [
                (f"{image.sop}.dcm", False, self._size("image", image.modality))
                for p in patients
                for image in images_of(p)
            ]
        return []

    def _group_entries(self, parts: list[str]) -> list[tuple[str, bool, int]]:
        layout, group, depth = self.layout, parts[0], len(parts)
        if depth == 1:
            names = ["data"] if layout.groups[group] else []
            for folder in FOLDERS.values():
                if layout.with_modality.get((group, folder)):
                    names += [folder, f"{folder}-metadata"]
            return [(name, True, 0) for name in names]
        if parts[1] == "data":
            if depth == 2:
                return [(p.name, True, 0) for p in layout.groups[group]]
            patient = layout.patient(parts[2])
            if depth != 3 or patient is None or patient.group != group:
                return []
            _, filed = clinical_keys(patient)
            size = self._size("clinical", patient.site, patient.kind)
            return [(filed.rsplit("/", 1)[1], False, size)]
        folder = parts[1].removesuffix("-metadata")
        metadata = parts[1] != folder
        if depth == 2:
            return [(p.name, True, 0) for p in layout.with_modality.get((group, folder), [])]
        patient = layout.patient(parts[2])
        if patient is None or patient.group != group:
            return []
        images = [i for i in images_of(patient) if FOLDERS[i.modality] == folder]
        if depth == 3:
            return [(study, True, 0) for study in sorted({i.study for i in images})]
        images = [i for i in images if i.study == parts[3]]
        if depth == 4:
            return [(series, True, 0) for series in sorted({i.series for i in images})]
        if depth != 5:
            return []
        return [self._image_entry(i, metadata) for i in images if i.series == parts[4]]

    def _image_entry(self, image: Image, metadata: bool) -> tuple[str, bool, int]:
        if not metadata:
            return f"{image.sop}.dcm", False, self._size("image", image.modality)
        what = "first-metadata" if image.first_of_study else "metadata"
        return f"{image.sop}.json", False, self._size(what, image.modality)

    def _generated(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the generated objects whose keys start with ``prefix``, in key order."""
        folder = prefix.rpartition("/")[0]
        stack = [
            (
                folder + "/" if folder else "",
                iter(self._children(folder.split("/") if folder else [])),
            )
        ]
        while stack:
            base, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name, is_folder, size = entry
            key = base + name
            if is_folder:
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    stack.append((key + "/", iter(self._children(key.split("/")))))
            elif key.startswith(prefix):
                yield ObjectInfo(key, size, self.modified)

    def placeholder_objects(self) -> Iterator[ObjectInfo]:
        """Yield every generated object once, patient by patient (not in key order).

        Each patient's raw clinical file and its filed copy, then for each image its raw
        upload, its filed image and its metadata file: what `list` generates, in one pass
        over the layout (an S3 Inventory's rows, which come in no particular order).
        """
        for patient in self.layout.patients:
            clinical = self._size("clinical", patient.site, patient.kind)
            for key in clinical_keys(patient):
                yield ObjectInfo(key, clinical, self.modified)
            for image in images_of(patient):
                size = self._size("image", image.modality)
                yield ObjectInfo(image.raw_key, size, self.modified)
                yield ObjectInfo(image.image_key, size, self.modified)
                _, _, metadata = self._image_entry(image, metadata=True)
                yield ObjectInfo(image.metadata_key, metadata, self.modified)

    def content(self, key: str) -> bytes | None:
        """Return what the generated object ``key`` holds, or None when there is none."""
        parts = key.split("/")
        if len(parts) == 4 and parts[0] in self._sites:
            return self._raw_content(parts)
        if parts[0] not in GROUPS:
            return None
        patient = self.layout.patient(parts[2]) if len(parts) > 2 else None
        if patient is None or patient.group != parts[0]:
            return None
        if len(parts) == 4 and parts[1] == "data":
            _, filed = clinical_keys(patient)
            return self.contents.clinical_bytes(patient) if filed == key else None
        if len(parts) != 6:
            return None
        numbers = _uid_numbers(parts[5].rsplit(".", 1)[0], 4)
        if numbers is None or numbers[0] != patient.index:
            return None
        image = image_at(patient, *numbers[1:])
        if image is None:
            return None
        if key == image.image_key:
            return self._bytes[image.modality]
        if key != image.metadata_key:
            return None
        if image.first_of_study:
            return self.contents.study_metadata(patient, image)
        return self._metadata[image.modality]

    def _raw_content(self, parts: list[str]) -> bytes | None:
        site, date, folder, name = parts
        if folder == "data":
            patient = self.layout.patient(name.split("_", 1)[0])
            if patient is None or clinical_keys(patient)[0] != "/".join(parts):
                return None
            return self.contents.clinical_bytes(patient)
        numbers = _uid_numbers(name.removesuffix(".dcm"), 4) if folder == "images" else None
        if numbers is None or numbers[0] >= len(self.layout.patients):
            return None
        patient = self.layout.patients[numbers[0]]
        image = image_at(patient, *numbers[1:])
        if image is None or image.raw_key != "/".join(parts):
            return None
        return self._bytes[image.modality]

    # -- the store -------------------------------------------------------------------------

    def check_store(self) -> None:
        """Check the overlay (the generated objects need no check)."""
        self.overlay.check_store()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """List overlay and generated objects in key order, each key once (the overlay's)."""
        merged = heapq.merge(self.overlay.list(prefix), self._generated(prefix), key=_key)
        last = None
        for info in merged:
            if info.key != last:  # (the overlay's first: it comes first of equal keys)
                yield info
            last = info.key

    def list_folders(self, prefix: str) -> tuple[list[str], list[ObjectInfo]]:
        """List one level of the overlay and of the generated objects, merged."""
        folders, objects = self.overlay.list_folders(prefix)
        parts = prefix.rstrip("/").split("/") if prefix.strip("/") else []
        generated = self._children(parts)
        names = set(folders) | {
            prefix + name + "/" for name, is_folder, _ in generated if is_folder
        }
        known = {info.key for info in objects}
        objects = objects + [
            ObjectInfo(prefix + name, size, self.modified)
            for name, is_folder, size in generated
            if not is_folder and prefix + name not in known
        ]
        return sorted(names), sorted(objects, key=_key)

    def read(self, key: str) -> bytes:
        """Read from the overlay, else the generated object's content."""
        try:
            return self.overlay.read(key)
        except ObjectNotFound:
            data = self.content(key)
            if data is None:
                raise
            return data

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Read a range from the overlay, else from the generated object's content."""
        try:
            return self.overlay.read_range(key, start, end)
        except ObjectNotFound:
            data = self.content(key)
            if data is None:
                raise
            return data[start:end]

    def write(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        """Write to the overlay."""
        self.overlay.write(key, data, content_type)

    def write_file(self, key: str, path: str, content_type: str = "application/json") -> None:
        """Write the file to the overlay."""
        self.overlay.write_file(key, path, content_type)

    def copy(self, source_key: str, target_key: str, size: int | None = None) -> None:
        """Copy within the overlay; a generated source is written to the target in the overlay."""
        try:
            self.overlay.copy(source_key, target_key, size)
        except ObjectNotFound:
            data = self.content(source_key)
            if data is None:
                raise
            self.overlay.write(target_key, data)

    def processed(self) -> Storage:
        """Return the overlay's processed store (nothing in it is generated)."""
        return self.overlay.processed()

    def read_with_token(self, key: str) -> tuple[bytes, str]:
        """Read from the overlay only: a generated object is not found."""
        return self.overlay.read_with_token(key)

    def write_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Write to the overlay if it has no such key (generated objects are not consulted)."""
        return self.overlay.write_if_absent(key, data, content_type)

    def write_if_match(
        self, key: str, data: bytes, token: str, content_type: str = "application/json"
    ) -> str:
        """Replace the overlay's object if it is unchanged since ``token``."""
        return self.overlay.write_if_match(key, data, token, content_type)

    def delete_if_match(self, key: str, token: str) -> None:
        """Delete from the overlay if unchanged; a generated object is refused (`StorageError`)."""
        if self.content(key) is not None:
            raise StorageError(f"{key} is generated: it cannot be deleted")
        self.overlay.delete_if_match(key, token)


def _key(info: ObjectInfo) -> str:
    return info.key


def write_spec(path: Path, layout: Layout, contents: Contents, modified: dt.datetime) -> None:
    """Write what `GeneratedStorage.from_spec` needs to serve ``layout`` again."""
    spec = {
        "templates": {
            m: {
                "raw_key": t.raw_key,
                "image_key": t.image_key,
                "metadata_key": t.metadata_key,
                "size": t.size,
            }
            for m, t in contents.templates.items()
        },
        "patients": len(layout.patients),
        "seed": layout.seed,
        "newest": layout.newest.isoformat(),
        "modified": modified.isoformat(),
        "sites": [{"prefix": s.prefix, "centre": s.centre, "kind": s.kind} for s in layout.sites],
    }
    Path(path).write_text(json.dumps(spec, indent=1), encoding="utf-8")
