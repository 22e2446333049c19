"""What a run looks at.

A daily run lists only the upload folders that can still change and the
patients' clinical folders; a reconcile looks at everything (a file added to a closed folder is
found; after a killed run it files exactly what is missing); shards list nothing; an S3
Inventory stands for the folders it covers.
"""

from __future__ import annotations

import datetime as dt
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from tests import builders
from tests.builders import clinical, image
from tests.test_catalogue import _all_metadata, newest_rows, part_keys, part_rows
from tests.test_warehouseloader import SPLIT
from warehouse.catalogue import index as catalogue_index
from warehouse.catalogue import run as catalogue_run
from warehouse.core.keys import parse_image_key
from warehouse.listing.folders import STATE_KEY
from warehouse.storage.local import LocalStorage
from warehouse.storage.wrappers import DelegatingStorage

OLD = "2021-01-01"


class ListingStorage(DelegatingStorage):
    """A store that records every listing asked of it (prefix, kind)."""

    def __init__(self, inner):
        self.inner = inner
        self.url = inner.url
        self.listings: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _record(self, kind: str, prefix: str) -> None:
        with self._lock:
            self.listings.append((kind, prefix))

    def list(self, prefix):
        self._record("list", prefix)
        return self.inner.list(prefix)

    def list_after(self, prefix, start_after):
        self._record("list_after", prefix)
        return self.inner.list_after(prefix, start_after)

    def list_folders(self, prefix):
        self._record("folders", prefix)
        return self.inner.list_folders(prefix)

    def processed(self):
        return ListingStorage(self.inner.processed())

    def listed(self) -> set[str]:
        """The prefixes whose contents were listed (not only their folders)."""
        return {prefix for kind, prefix in self.listings if kind != "folders"}


def _uploads(date: str, patients: tuple[str, ...], images: int, first: int = 0) -> dict:
    """An upload folder: a clinical file per patient and ``images`` images shared among them."""
    files = {}
    for patient in patients:
        files[f"raw-a/{date}/data/{patient}_data.json"] = clinical(patient, SPLIT)
    for n in range(first, first + images):
        name, data = image(patients[n % len(patients)], "DX", f"s{n}", "r1", n)
        files[f"raw-a/{date}/images/{name}"] = data
    return files


def _warehouse_with_a_closed_folder(store) -> None:
    """Build a warehouse whose first upload folder (2021) a complete run has closed.

    Its first run, then a run two days after (the state's first listing moved back, as time would).
    """
    files = {"config.json": builders.config(["raw-a"], split=[SPLIT])}
    files.update(_uploads(OLD, ("Covid1", "Covid2"), 6))
    builders.put_tree(store, files)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.mode == "full"  # (no folder state yet)
    _age_folder_state(store, days=3)
    code, state = builders.run_loader(store, workers=4)
    assert code == 0 and state.mode == "daily"
    folders = json.loads(store.read(STATE_KEY))["prefixes"]["raw-a"]
    assert folders["closed"] == [OLD] and folders["listed"] == {}


def _age_folder_state(store, days: int) -> None:
    """Move the folder state's first listings ``days`` back."""
    data = json.loads(store.read(STATE_KEY))
    for prefix in data["prefixes"].values():
        for folder, when in prefix["listed"].items():
            prefix["listed"][folder] = (
                dt.datetime.fromisoformat(when) - dt.timedelta(days=days)
            ).isoformat()
    store.write(STATE_KEY, json.dumps(data).encode())


def _filed_names(store) -> list[str]:
    return sorted(
        key.name for info in store.list("training/") if (key := parse_image_key(info.key))
    ) + sorted(key.name for info in store.list("validation/") if (key := parse_image_key(info.key)))


def test_a_daily_run_lists_only_open_folders_and_a_reconcile_finds_a_late_file(local_store):
    store = local_store
    _warehouse_with_a_closed_folder(store)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    builders.put_tree(store, _uploads(today, ("Covid1", "Covid3"), 4, first=6))
    late_name, late = image("Covid2", "DX", "late", "r1", 99)
    store.write(f"raw-a/{OLD}/images/{late_name}", late)  # into the closed folder

    recording = ListingStorage(store)
    code, state = builders.run_loader(recording, workers=4)

    assert code == 0 and state.mode == "daily"
    listed = recording.listed()
    assert f"raw-a/{today}/" in listed
    assert not any(prefix.startswith(f"raw-a/{OLD}") for prefix in listed)
    # the warehouse side: the clinical folders only (whole), and the catalogue's newer parts
    warehouse = {p for p in listed if p.startswith(("training/", "validation/"))}
    assert warehouse == {"training/data/", "validation/data/"}
    assert state.report.counts["images copied"] == 4
    assert late_name not in _filed_names(store)

    code, state = builders.run_loader(store, workers=4, reconcile=True)

    assert code == 0 and state.mode == "full"
    assert state.report.counts["images copied"] == 1
    assert late_name in _filed_names(store)
    assert len(_filed_names(store)) == 6 + 4 + 1


#: The images of the day a daily run is killed in.
DAY = 120


def test_a_reconcile_after_a_killed_daily_run_files_exactly_what_is_missing(local_store):
    store = local_store
    _warehouse_with_a_closed_folder(store)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    builders.put_tree(store, _uploads(today, ("Covid1", "Covid3"), DAY, first=6))
    before = len(_all_metadata(store))

    # killed early (a few metadata files written) in a day too long to finish first; how
    # many images it filed whole depends on the moment, and the reconcile must match it
    builders.kill_loader_when(store.root, lambda: len(_all_metadata(store)) >= before + 4)

    metadata = {info.key.rsplit("/", 1)[1][: -len(".json")] for info in _metadata_infos(store)}
    whole = {name[: -len(".dcm")] for name in _filed_names(store)} & metadata
    new_whole = len(whole) - 6
    assert len(metadata) - 6 >= 4 and new_whole < DAY  # (killed while filing)
    catalogued = {row["warehouse_key"] for row in part_rows(store)}

    code, state = builders.run_loader(store, workers=4, reconcile=True)

    assert code == 0
    counts = state.report.counts
    # the images the killed run filed whole but never catalogued are catalogued from their
    # headers, never copied again; the rest are filed now
    uncatalogued = new_whole - len([k for k in catalogued if "/xray/" in k]) + 6
    assert counts.get("filed images in no part catalogued", 0) == uncatalogued
    assert counts["images copied"] == DAY - new_whole
    # the warehouse and its catalogue, image for image (each once in a part; an image
    # catalogued from its header has a later row naming the raw file found filed at it)
    rows = newest_rows(store)
    images = [
        info.key
        for group in ("training/", "validation/")
        for info in store.list(group)
        if parse_image_key(info.key)
    ]
    assert sorted(rows) == sorted(images)
    assert len(images) == 6 + DAY
    assert all(row["raw_key"] for row in rows.values())
    # and nothing is left to do
    code, state = builders.run_loader(store, workers=4, reconcile=True)
    assert code == 0 and "images copied" not in state.report.counts


def _metadata_infos(store):
    return [
        info
        for group in ("training/", "validation/")
        for info in store.list(group)
        if "-metadata/" in info.key
    ]


def test_shards_list_nothing(local_store):
    store = local_store
    _warehouse_with_a_closed_folder(store)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    builders.put_tree(store, _uploads(today, ("Covid1", "Covid4"), 10, first=6))
    code, _ = builders.run_loader(store, workers=2, phase="clinical", run_id="run-1")
    assert code == 0
    shards = []
    for index in range(2):
        recording = ListingStorage(store)
        code, state = builders.run_loader(recording, workers=2, shard=(index, 2), run_id="run-1")
        assert code == 0 and state.mode == "shard"
        shards.append(recording)
    for recording in shards:
        # never the bucket: at most its own run's folder (to see which parts have ended)
        assert recording.listed() <= {"reports/warehouseloader/runs/run-1/"}, recording.listings
        assert not any(kind == "folders" for kind, _ in recording.listings)
    assert len(_filed_names(store)) == 6 + 10


class ReadingStorage(DelegatingStorage):
    """A store that records the key of every read asked of it (whole or ranged)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.reads: list[str] = []
        self._lock = threading.Lock()

    def read(self, key):
        with self._lock:
            self.reads.append(key)
        return self.inner.read(key)

    def read_range(self, key, start, end):
        with self._lock:
            self.reads.append(key)
        return self.inner.read_range(key, start, end)


def test_a_reconcile_reads_no_header_of_a_recovered_images_raw_file_twice(local_store):
    """A reconcile reads no header of a recovered image's raw file twice.

    The images of a closed folder are catalogued from their headers (their parts lost); the
    reconcile that recovers them also reads their raw files, finds each filed at its target
    and catalogues that raw key as its source; the next reconcile reads no header.
    """
    store = local_store
    _warehouse_with_a_closed_folder(store)
    for info in [*store.list("catalogue/")]:
        (store.root / info.key).unlink()  # the catalogue lost: every row recovered
    raw_keys = sorted(i.key for i in store.list(f"raw-a/{OLD}/images/"))

    code, state = builders.run_loader(store, workers=4, reconcile=True)

    assert code == 0 and state.mode == "full"
    counts = state.report.counts
    assert counts["filed images in no part catalogued"] == 6
    assert counts["images already filed"] == 6 and "images copied" not in counts
    newest = newest_rows(store)
    by_name = {key.rsplit("/", 1)[1]: key for key in raw_keys}
    assert {k: r["raw_key"] for k, r in newest.items()} == {
        k: by_name[k.rsplit("/", 1)[1]] for k in newest
    }
    assert all(r["upload_date"] == dt.date.fromisoformat(OLD) for r in newest.values())
    assert json.loads(store.read(STATE_KEY))["settled"] == []  # (the folder is closed)

    recording = ReadingStorage(store)
    code, state = builders.run_loader(recording, workers=4, reconcile=True)

    assert code == 0 and state.mode == "full"
    assert builders.input_reads(recording.reads) == []
    assert "header read requests" not in state.report.counts
    assert state.report.counts["images already filed"] == 6


def test_header_read_requests_count_the_recoverys_reads_too(local_store):
    """The run's "header read requests" are every ranged read of an image it made.

    Those of the raw files it decides and those of the filed images it catalogues from their
    headers.
    """
    store = local_store
    _warehouse_with_a_closed_folder(store)
    for info in [*store.list("catalogue/")]:
        (store.root / info.key).unlink()
    for info in [*store.list(f"raw-a/{OLD}/images/")][:2]:
        (store.root / info.key).unlink()  # (two images found only on the warehouse side)

    recording = ReadingStorage(store)
    code, state = builders.run_loader(recording, workers=4, reconcile=True)

    assert code == 0 and state.report.counts["filed images in no part catalogued"] == 6
    images = [key for key in recording.reads if key.endswith(".dcm")]
    tops = {key.split("/", 1)[0] for key in images}
    assert "raw-a" in tops and tops - {"raw-a"} <= {"training", "validation"} and len(tops) > 1
    assert state.report.counts["header read requests"] == len(images)


def _inventory(
    store, bucket: str, records: list[tuple[str, int, dt.datetime]], created: dt.datetime
):
    """Deliver an S3 Inventory report of ``records`` under ``inventory/`` of ``store``.

    In the layout S3 writes (a manifest, its checksum, one Parquet data file).
    """
    import hashlib

    config = "reconcile-parquet-inventory"
    table = pa.table(
        {
            "bucket": pa.array([bucket] * len(records)),
            "key": pa.array([key for key, _, _ in records]),
            "size": pa.array([size for _, size, _ in records], type=pa.int64()),
            "last_modified_date": pa.array(
                [when for _, _, when in records], type=pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    data_key = f"inventory/{bucket}/{config}/data/part-0.parquet"
    store.write(data_key, data)
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": "arn:aws:s3:::inventory",
        "version": "2016-11-30",
        "creationTimestamp": str(int(created.timestamp() * 1000)),
        "fileFormat": "Parquet",
        "fileSchema": "message s3.inventory { required binary bucket (UTF8); required binary "
        "key (UTF8); optional int64 size; optional int64 last_modified_date "
        "(TIMESTAMP_MILLIS); }",
        "files": [
            {"key": data_key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()}
        ],
    }
    stamp = created.strftime("%Y-%m-%dT%H-%MZ")
    text = json.dumps(manifest).encode()
    folder = f"inventory/{bucket}/{config}/{stamp}/"
    store.write(folder + "manifest.json", text)
    store.write(folder + "manifest.checksum", hashlib.md5(text).hexdigest().encode())


def test_a_reconcile_with_an_inventory_reads_the_folders_it_covers_from_it(local_store, tmp_path):
    store = local_store
    _warehouse_with_a_closed_folder(store)
    # The inventory lists everything but one file of the closed folder, which it shows; the
    # reconcile takes that folder from it (unlisted), so it files what the inventory names.
    late_name, late = image("Covid2", "DX", "late", "r1", 99)
    store.write(f"raw-a/{OLD}/images/{late_name}", late)
    created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    records = [
        (info.key, info.size, info.last_modified)
        for info in store.list("")
        if not info.key.startswith(("inventory/", "state/", "reports/", "catalogue/"))
    ]
    (tmp_path / "inventories").mkdir()
    inventory_store = LocalStorage(tmp_path / "inventories")
    _inventory(inventory_store, store.root.name, records, created)

    recording = ListingStorage(store)
    code, state = builders.run_loader(
        recording, workers=4, reconcile=True, inventory=f"file://{inventory_store.root}/inventory"
    )

    assert code == 0 and state.mode == "full"
    assert "S3 inventory not used (the bucket is listed)" not in state.report.counts
    listed = recording.listed()
    assert not any(prefix.startswith(f"raw-a/{OLD}") for prefix in listed)
    assert not any(prefix.startswith("training/ct") for prefix in listed)
    assert state.report.counts["images copied"] == 1
    assert late_name in _filed_names(store)


def test_a_daily_run_behind_many_parts_takes_them_compactly_and_writes_an_index(
    local_store, monkeypatch
):
    """No index and more newer parts than a daily run keeps row by row (one, here).

    The run takes the parts into its arrays, still refuses a copy of an instance they list,
    and leaves an index that covers them, so the next run reads none of them.
    """
    monkeypatch.setattr(catalogue_index, "PART_SETTLE", dt.timedelta(0))
    monkeypatch.setattr(catalogue_run, "RECENT_PARTS", 1)
    store = local_store
    _warehouse_with_a_closed_folder(store)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    builders.put_tree(store, _uploads(today, ("Covid1", "Covid3"), 4, first=6))
    assert builders.run_loader(store, workers=4)[0] == 0
    parts = part_keys(store)
    assert len(parts) >= 2
    for info in list(store.list("catalogue/index/")):
        (store.root / info.key).unlink()
    # a copy of an instance filed in the first part, under another name
    name, data = image("Covid2", "DX", "s1", "r1", 1)
    filed = [row for row in part_rows(store) if row["SOPInstanceUID"] == name[: -len(".dcm")]]
    assert filed, "the copy's instance is in a part"
    store.write(f"raw-a/{today}/images/copy-{name}", data)

    code, state = builders.run_loader(store, workers=4)

    assert code == 0 and state.mode == "daily"
    refused = {p["key"]: p["reason"] for p in state.report.problems}
    assert refused[f"raw-a/{today}/images/copy-{name}"] == "duplicate image"
    pointer = json.loads(store.read("catalogue/index/latest.json"))
    assert pointer["through"] == max(parts)
    index = pq.read_table(store.root / pointer["index"])
    assert index.num_rows == len(part_rows(store))

    code, state = builders.run_loader(store, workers=4)  # reads no part: the index covers them
    assert code == 0 and state.catalogue.newer_parts == {}
