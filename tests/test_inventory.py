"""The S3 Inventory source of a reconcile run (`warehouse.listing.inventory`).

Reports are built here as S3 delivers them (a Parquet data file per part, with the columns and
types of the documented ``message s3.inventory``, a ``manifest.json`` listing them with their
sizes and MD5s, and a ``manifest.checksum``), written with pyarrow and hashlib, on a local
directory and on S3 over HTTP (the moto server of ``tests/conftest.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tracemalloc
from dataclasses import dataclass

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.core.text import MAX_DETAIL_CHARS
from warehouse.listing import inventory
from warehouse.listing.inventory import (
    INVENTORY_CONFIG_ID,
    InventoryUnusable,
    bucket_name,
    find_inventory,
    open_inventory,
)
from warehouse.storage.base import ObjectInfo, Storage
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage
from warehouse.storage.wrappers import DryRunStorage

SOURCE = "warehouse-123456789012-prod"
PREFIX = "reconcile/"
#: The Parquet schema of a current-versions report with Size and LastModifiedDate, as the
#: manifest of a real report states it.
SCHEMA_TEXT = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
    "optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); }"
)
VERSIONED_SCHEMA_TEXT = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
    "optional binary version_id (UTF8); optional boolean is_latest; "
    "optional boolean is_delete_marker; optional int64 size; "
    "optional int64 last_modified_date (TIMESTAMP_MILLIS); }"
)
UTC = dt.UTC
T0 = dt.datetime(2026, 11, 20, 9, 30, 15, 250_000, tzinfo=UTC)


def ms(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(milliseconds=1)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size, compression="snappy")
    return sink.getvalue()


def table_of(rows, bucket: str = SOURCE, versions: bool = False) -> pa.Table:
    """A report's rows: ``(key, size, last modified)`` or, with ``versions``, ``(key, size,
    last modified, is_latest, is_delete_marker)``.
    """
    columns = {
        "bucket": pa.array([bucket] * len(rows), pa.string()),
        "key": pa.array([r[0] for r in rows], pa.string()),
    }
    if versions:
        columns["version_id"] = pa.array([f"v{i}" for i in range(len(rows))], pa.string())
        columns["is_latest"] = pa.array([r[3] for r in rows], pa.bool_())
        columns["is_delete_marker"] = pa.array([r[4] for r in rows], pa.bool_())
    columns["size"] = pa.array([r[1] for r in rows], pa.int64())
    columns["last_modified_date"] = pa.array(
        [None if r[2] is None else ms(r[2]) for r in rows], pa.int64()
    ).cast(pa.timestamp("ms", tz="UTC"))
    return pa.table(columns)


@dataclass
class Report:
    """What a delivery wrote: its manifest key and its data files' keys."""

    manifest_key: str
    data_keys: list[str]
    created_ms: int


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def deliver(
    store: Storage,
    stamp: str,
    parts: list[bytes],
    *,
    prefix: str = PREFIX,
    source: str = SOURCE,
    config: str = INVENTORY_CONFIG_ID,
    complete: bool = True,
    schema: str = SCHEMA_TEXT,
    manifest_changes: dict | None = None,
    created: dt.datetime | None = None,
) -> Report:
    """Write one report as S3 does: data files, then manifest.json, then manifest.checksum."""
    folder = f"{prefix}{source}/{config}/"
    files = []
    for number, data in enumerate(parts):
        key = f"{folder}data/{stamp}-part{number}.parquet"
        store.write(key, data, "application/octet-stream")
        files.append({"key": key, "size": len(data), "MD5checksum": md5(data)})
    created = created or dt.datetime.strptime(stamp, "%Y-%m-%dT%H-%MZ").replace(tzinfo=UTC)
    manifest = {
        "sourceBucket": source,
        "destinationBucket": "arn:aws:s3:::warehouse-123456789012-prod-inventory",
        "version": "2016-11-30",
        "creationTimestamp": str(ms(created)),
        "fileFormat": "Parquet",
        "fileSchema": schema,
        "files": files,
        **(manifest_changes or {}),
    }
    body = json.dumps(manifest, indent=4).encode()
    store.write(f"{folder}{stamp}/manifest.json", body)
    if complete:
        store.write(f"{folder}{stamp}/manifest.checksum", md5(body).encode(), "text/plain")
    return Report(f"{folder}{stamp}/manifest.json", [f["key"] for f in files], ms(created))


ROWS = [
    ("raw-a/2026-11-19/data/Covid1_data.json", 812, T0),
    ("raw-a/2026-11-19/images/IM0001.dcm", 5_000_000_000_000, T0 + dt.timedelta(seconds=1)),
    ("raw-ab/2026-11-19/data/Covid2_data.json", 300, T0),
    ("raw-a", 4, T0),  # an object named like the prefix without its slash
    ("training/data/Covid1/data_2026-11-19.json", 812, T0),
    ("validation/xray/P2/1.2/1.2.3/IM0002.dcm", 1024, T0),
    ("reports/warehouseloader/latest.json", 2048, T0),
    ("config.json", 100, T0),
]


def infos(rows) -> list[ObjectInfo]:
    """What a listing gives for ``rows``: the time in whole seconds, UTC."""
    return [ObjectInfo(k, s, m.replace(microsecond=0)) for k, s, m, *_ in rows]


# ------------------------------------------------------------------ finding the report


def test_the_newest_complete_report_is_read_and_an_incomplete_newer_one_ignored(store):
    old = [("raw-a/2026-11-01/data/old.json", 1, T0)]
    deliver(store, "2026-11-18T01-00Z", [parquet_bytes(table_of(old))])
    chosen = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    newer = [("raw-a/2026-11-21/data/new.json", 2, T0)]
    deliver(store, "2026-11-21T01-00Z", [parquet_bytes(table_of(newer))], complete=False)

    found = find_inventory(store, PREFIX, SOURCE)

    assert found.manifest_key == chosen.manifest_key
    assert found.created_ms == chosen.created_ms
    assert found.created == dt.datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    assert found.day == "2026-11-20"
    assert sorted(found.records([""]), key=lambda i: i.key) == sorted(
        infos(ROWS), key=lambda i: i.key
    )


def test_a_report_is_read_across_its_data_files_and_row_groups(store):
    halves = [ROWS[:3], ROWS[3:]]
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(h), 2) for h in halves])
    found = find_inventory(store, PREFIX, SOURCE)
    assert len(found.files) == 2
    assert list(found.records([""])) == infos(ROWS)  # the report's own order


def test_open_inventory_reads_the_setting_s3(s3_endpoint):
    destination = "inventory-destination"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=destination)
    deliver(S3Storage(destination, workers=2), "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])

    found = open_inventory(f"s3://{destination}/{PREFIX}", SOURCE, workers=2)

    assert found.storage.url == f"s3://{destination}"
    assert (
        found.manifest_key
        == f"{PREFIX}{SOURCE}/{INVENTORY_CONFIG_ID}/2026-11-20T01-00Z/manifest.json"
    )
    assert [i.key for i in found.records(["training/"])] == [ROWS[4][0]]


def test_open_inventory_reads_a_local_copy_whatever_prefix_its_manifest_names(tmp_path):
    # A report synced from s3://.../reconcile/ into a directory: the manifest still names
    # its data files under reconcile/, and they are read from the directory's own data/.
    root = tmp_path / "inventory"
    root.mkdir()
    store = LocalStorage(root)
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))], prefix="")
    manifest_key = f"{SOURCE}/{INVENTORY_CONFIG_ID}/2026-11-20T01-00Z/manifest.json"
    manifest = json.loads(store.read(manifest_key))
    for item in manifest["files"]:
        item["key"] = PREFIX + item["key"]
    body = json.dumps(manifest).encode()
    store.write(manifest_key, body)
    store.write(manifest_key.replace(".json", ".checksum"), md5(body).encode())

    found = open_inventory(f"file://{root}", SOURCE)

    assert found.files[0].key.startswith(PREFIX)
    assert list(found.records(["raw-a/"])) == infos(ROWS[:2])


@pytest.mark.parametrize(
    ("configurations", "chosen"),
    [
        (["daily-full-inventory"], "daily-full-inventory"),  # the only one, whatever its id
        (["daily-full-inventory", INVENTORY_CONFIG_ID], INVENTORY_CONFIG_ID),
    ],
)
def test_the_configuration_is_the_only_one_or_the_templates(local_store, configurations, chosen):
    for config in configurations:
        rows = [(f"training/{config}.json", 1, T0)]
        deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(rows))], config=config)
    found = find_inventory(local_store, PREFIX, SOURCE)
    assert [i.key for i in found.records([""])] == [f"training/{chosen}.json"]


def test_several_other_configurations_are_refused_naming_them(local_store):
    for config in ("one", "two"):
        deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))], config=config)
    with pytest.raises(InventoryUnusable) as raised:
        find_inventory(local_store, PREFIX, SOURCE)
    assert "'one', 'two'" in raised.value.reason
    assert INVENTORY_CONFIG_ID in raised.value.reason


def test_no_complete_report_is_unusable(store):
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))], complete=False)
    with pytest.raises(InventoryUnusable) as raised:
        find_inventory(store, PREFIX, SOURCE)
    assert raised.value.reason.startswith("no complete report has been delivered")
    assert "48 hours" in raised.value.reason
    assert raised.value.where == f"{store.url}/{PREFIX}{SOURCE}/{INVENTORY_CONFIG_ID}/"


def test_nothing_delivered_is_unusable(store):
    with pytest.raises(InventoryUnusable) as raised:
        find_inventory(store, PREFIX, SOURCE)
    assert raised.value.reason == "no inventory of this bucket has been delivered there"


def test_another_buckets_reports_are_not_this_ones(local_store):
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))], source="other")
    with pytest.raises(InventoryUnusable, match="no inventory of this bucket"):
        find_inventory(local_store, PREFIX, SOURCE)


# ------------------------------------------------------------------ what is read


def test_the_prefix_filter_is_exact(store):
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    found = find_inventory(store, PREFIX, SOURCE)

    def keys(prefixes):
        return sorted(i.key for i in found.records(prefixes))

    assert keys(["raw-a/"]) == [ROWS[0][0], ROWS[1][0]]  # not raw-ab/, not the object raw-a
    assert keys(["raw-a/", "training/", "validation/"]) == sorted(
        [ROWS[0][0], ROWS[1][0], ROWS[4][0], ROWS[5][0]]
    )
    assert keys(["raw-a"]) == sorted([ROWS[0][0], ROWS[1][0], ROWS[2][0], ROWS[3][0]])
    assert keys(["raw-a/", "raw-a/"]) == keys(["raw-a/"])  # a prefix given twice counts once
    assert keys(["config.json"]) == ["config.json"]
    assert keys(["nothing/"]) == []
    assert keys([]) == []
    assert keys([""]) == sorted(r[0] for r in ROWS)


@pytest.mark.parametrize("large", [False, True], ids=["string", "large_string"])
def test_hundreds_of_prefixes_of_any_length_filter_as_startswith_does(local_store, large):
    # a reconcile passes every closed upload folder: prefixes of many lengths, nested ones,
    # non-ASCII ones, some longer than the keys they are compared with
    folders = [
        f"raw-{site}/2026-{m:02d}-{d:02d}/"
        for site in ("a", "ab", "cörnwall", "画像")
        for m in range(1, 13)
        for d in range(1, 29, 3)
    ]
    keys = [
        f"{folder}{kind}/IM{n}.dcm"
        for n, folder in enumerate(folders)
        for kind in ("images", "data")
    ]
    keys += ["raw-a", "raw-", "raw-e\u0301/2026-01-01/x.json", "training/ct/P1/s/r/IM.dcm"]
    prefixes = folders[::2] + ["raw-ab/", "raw-e", "raw-a/2026-01-01/images/IM0.dcm/deeper/"]
    prefixes += ["training/", "raw-画像/2026-02-0"]
    rows = [(key, n, T0) for n, key in enumerate(keys)]
    table = table_of(rows)
    if large:
        table = table.set_column(1, "key", table.column("key").cast(pa.large_string()))
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table, row_group_size=100)])
    found = find_inventory(local_store, PREFIX, SOURCE)

    assert len(prefixes) > 200 and len({len(p.encode()) for p in prefixes}) > 5
    expected = [key for key in keys if any(key.startswith(p) for p in prefixes)]
    assert 0 < len(expected) < len(keys)
    assert [i.key for i in found.records(prefixes)] == expected
    assert [i.key for i in found.records([*prefixes, ""])] == keys


class ComputeCalls:
    """Stands for ``pyarrow.compute`` in the inventory module, counting the calls made."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __getattr__(self, name):
        function = getattr(self.module, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return function(*args, **kwargs)

        return counted


def test_the_work_on_a_batch_does_not_grow_with_the_number_of_prefixes(local_store, monkeypatch):
    # A reconcile passes every closed upload folder (thousands at ten million objects): one
    # pass over the keys for each prefix would make reading the inventory quadratic.
    folders = [f"raw-a/2026-{m:02d}-{d:02d}/" for m in range(1, 13) for d in range(1, 29)]
    rows = [(f"{folder}images/IM{n}.dcm", n, T0) for n, folder in enumerate(folders)]
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(rows), row_group_size=50)])
    found = find_inventory(local_store, PREFIX, SOURCE)
    counter = ComputeCalls(inventory.pc)
    monkeypatch.setattr(inventory, "pc", counter)

    def calls(prefixes) -> int:
        before = counter.calls
        assert len(list(found.records(prefixes))) == len(prefixes)
        return counter.calls - before

    assert calls(folders[:2]) == calls(folders) > 0  # (all of one length)


def test_keys_are_plain_text_and_round_trip(store):
    # Parquet (unlike CSV) inventories do not URL-encode keys: none is decoded here.
    odd = [
        "raw-a/2026-11-19/data/Patient 1 (copy).json",
        "raw-a/2026-11-19/data/100%25done%2Bmore.json",
        "raw-a/2026-11-19/data/a+b=c&d.json",
        "raw-a/2026-11-19/images/Ünïcødé/画像-😀.dcm",
        "raw-a/2026-11-19/images/tab\there\\back.dcm",
        "raw-a/2026-11-19/images/e\u0301-decomposed.dcm",
    ]
    rows = [(key, n, T0) for n, key in enumerate(odd)]
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(rows))])
    found = find_inventory(store, PREFIX, SOURCE)
    assert [i.key for i in found.records(["raw-a/"])] == odd
    assert [i.key for i in found.records(["raw-a/2026-11-19/images/Ünïcødé/"])] == [odd[3]]


def test_sizes_and_times_are_those_a_listing_gives(local_store):
    rows = [
        ("training/a.json", 0, dt.datetime(2026, 11, 19, 23, 59, 59, 999_000, tzinfo=UTC)),
        ("training/b.dcm", 5 * 1024**4, dt.datetime(1990, 1, 1, tzinfo=UTC)),
        ("training/c.dcm", 7, dt.datetime(2026, 11, 20, 0, 0, 0, 1_000, tzinfo=UTC)),
    ]
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(rows))])
    found = list(find_inventory(local_store, PREFIX, SOURCE).records(["training/"]))
    assert [(i.size, i.last_modified) for i in found] == [
        (0, dt.datetime(2026, 11, 19, 23, 59, 59, tzinfo=UTC)),  # floored, as S3 lists it
        (5 * 1024**4, dt.datetime(1990, 1, 1, tzinfo=UTC)),
        (7, dt.datetime(2026, 11, 20, tzinfo=UTC)),
    ]
    assert all(i.last_modified.utcoffset() == dt.timedelta(0) for i in found)
    assert not any(i.link or i.too_deep for i in found)


@pytest.mark.parametrize(
    "kind", [pa.timestamp("ms"), pa.timestamp("us", tz="UTC"), pa.timestamp("s"), pa.int64()]
)
def test_times_of_any_unit_are_read_as_utc(local_store, kind):
    moment = dt.datetime(2026, 11, 19, 12, 0, 7, 900_000, tzinfo=UTC)
    table = table_of([("training/a.json", 1, moment)])
    milliseconds = pa.array([ms(moment)], pa.int64())
    if pa.types.is_timestamp(kind):
        values = milliseconds.cast(pa.timestamp("ms", tz=kind.tz)).cast(kind, safe=False)
    else:
        values = milliseconds  # int64 milliseconds, as a TIMESTAMP_MILLIS column without type
    table = table.set_column(3, "last_modified_date", values)
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table)])
    [found] = find_inventory(local_store, PREFIX, SOURCE).records([""])
    assert found.last_modified == dt.datetime(2026, 11, 19, 12, 0, 7, tzinfo=UTC)


def test_the_inventorys_day_is_its_utc_day(local_store):
    late = dt.datetime(2026, 11, 20, 23, 59, 59, 999_000, tzinfo=UTC)
    deliver(local_store, "2026-11-20T23-59Z", [parquet_bytes(table_of(ROWS))], created=late)
    found = find_inventory(local_store, PREFIX, SOURCE)
    assert (found.created, found.day) == (late, "2026-11-20")


def test_prefixes_are_a_collection(local_store):
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    with pytest.raises(TypeError):
        list(find_inventory(local_store, PREFIX, SOURCE).records("raw-a/"))


def test_delete_markers_and_noncurrent_versions_are_skipped(store):
    rows = [
        ("training/kept.json", 10, T0, True, False),
        ("training/old-version.json", 11, T0, False, False),
        ("training/deleted.json", None, T0, True, True),  # a delete marker has no size
        ("training/unknown-latest.json", 12, T0, None, None),
    ]
    table = table_of(rows, versions=True)
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table)], schema=VERSIONED_SCHEMA_TEXT)
    found = find_inventory(store, PREFIX, SOURCE)
    assert [i.key for i in found.records(["training/"])] == [
        "training/kept.json",
        "training/unknown-latest.json",
    ]


def test_a_consumer_that_stops_early_leaves_no_temporary_file(local_store, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(inventory.tempfile, "tempdir", None)  # TMPDIR is read again
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    records = find_inventory(local_store, PREFIX, SOURCE).records([""])
    next(records)
    assert len(os.listdir(tmp_path / "tmp")) == 1  # the file being read
    records.close()
    assert os.listdir(tmp_path / "tmp") == []


# ------------------------------------------------------------------ refusals


def rewrite_manifest(store: Storage, report: Report, change) -> None:
    """Change the manifest (``change(dict)``) and write a checksum that matches it."""
    manifest = json.loads(store.read(report.manifest_key))
    change(manifest)
    body = json.dumps(manifest).encode()
    store.write(report.manifest_key, body)
    store.write(report.manifest_key.replace(".json", ".checksum"), md5(body).encode())


def refusal(store: Storage) -> InventoryUnusable:
    """The refusal, whether raised when the report is found or when it is read."""
    with pytest.raises(InventoryUnusable) as raised:
        list(find_inventory(store, PREFIX, SOURCE).records([""]))
    message = str(raised.value)
    assert len(message) <= MAX_DETAIL_CHARS
    assert message.isprintable()
    return raised.value


def test_a_manifest_that_does_not_match_its_checksum_is_refused(store):
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    body = store.read(report.manifest_key)
    store.write(report.manifest_key, body.replace(b"Parquet", b"Parqu3t"))
    error = refusal(store)
    assert "manifest.json has MD5" in error.reason
    assert error.where.endswith(report.manifest_key)


def test_a_corrupt_newest_report_is_refused_not_replaced_by_an_older_one(store):
    deliver(store, "2026-11-19T01-00Z", [parquet_bytes(table_of(ROWS))])
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    store.write(report.manifest_key.replace(".json", ".checksum"), b"not a digest\n")
    assert "not an MD5 digest" in refusal(store).reason


def test_a_checksum_with_a_newline_and_capitals_is_accepted(store):
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    body = store.read(report.manifest_key)
    store.write(
        report.manifest_key.replace(".json", ".checksum"), md5(body).upper().encode() + b"\n"
    )
    assert len(list(find_inventory(store, PREFIX, SOURCE).records([""]))) == len(ROWS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update(fileFormat="CSV"), "fileFormat is 'CSV', not Parquet"),
        (lambda m: m.update(fileFormat="ORC"), "not Parquet"),
        (
            lambda m: m.update(fileSchema=SCHEMA_TEXT.replace(" last_modified_date", " date")),
            "lacks last_modified_date",
        ),
        # a CSV report's schema, in a manifest that says Parquet
        (
            lambda m: m.update(fileSchema="Bucket, Key, Size, LastModifiedDate"),
            "lacks bucket, key, size, last_modified_date",
        ),
        (lambda m: m.pop("fileSchema"), "lacks bucket, key, size, last_modified_date"),
        (lambda m: m.update(sourceBucket="another-bucket"), "sourceBucket is 'another-bucket'"),
        (lambda m: m.update(creationTimestamp="yesterday"), "creationTimestamp 'yesterday'"),
        (lambda m: m.update(creationTimestamp=True), "creationTimestamp True"),
        (lambda m: m.update(files=[]), "lists no data file"),
        (lambda m: m.update(files="all"), "lists no data file"),
        (lambda m: m["files"][0].pop("MD5checksum"), "has no MD5checksum"),
        (lambda m: m["files"][0].update(size=-1), "has no size"),
        (lambda m: m["files"][0].update(size="12"), "has no size"),
        (lambda m: m["files"][0].update(key=None), "has no key"),
        (lambda m: m["files"].append(7), "is not an object"),
        (
            lambda m: m["files"][0].update(key="elsewhere/secret.parquet"),
            "is not in the report's folder",
        ),
        (
            lambda m: m["files"][0].update(key=m["files"][0]["key"].replace("/data/", "/x/")),
            "is not in the report's folder",
        ),
        (
            lambda m: m["files"][0].update(key=f"{SOURCE}/{INVENTORY_CONFIG_ID}/data/.."),
            "is not in the report's folder",
        ),
    ],
)
def test_an_unusable_manifest_is_refused_with_its_reason(store, change, reason):
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    rewrite_manifest(store, report, change)
    assert reason in refusal(store).reason


@pytest.mark.parametrize(
    "body", [b"{not json", b"\xff\xfe", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000]
)
def test_a_manifest_that_is_no_json_object_is_refused(local_store, body):
    report = deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    local_store.write(report.manifest_key, body)
    local_store.write(report.manifest_key.replace(".json", ".checksum"), md5(body).encode())
    assert "manifest.json is not" in refusal(local_store).reason


def test_an_oversized_manifest_is_refused_unread(local_store, monkeypatch):
    monkeypatch.setattr(inventory, "MAX_MANIFEST_BYTES", 200)
    deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    assert "larger than 200 bytes" in refusal(local_store).reason


def test_hostile_text_in_a_manifest_is_quoted_and_bounded(local_store):
    report = deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    forged = "\x1b[2J\nERROR forged line " + "x" * 100_000
    rewrite_manifest(local_store, report, lambda m: m.update(sourceBucket=forged))
    error = refusal(local_store)  # printable, at most MAX_DETAIL_CHARS
    assert "\\x1b[2J\\nERROR" in str(error)


def test_a_data_file_whose_md5_differs_from_the_manifest_is_refused(store):
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    data = bytearray(store.read(report.data_keys[0]))
    data[len(data) // 2] ^= 0xFF  # one bit flipped in transit: same size, another MD5
    store.write(report.data_keys[0], bytes(data))
    error = refusal(store)
    assert f"the data file has MD5 {md5(bytes(data))}" in error.reason
    assert error.where.endswith(report.data_keys[0])


@pytest.mark.parametrize(
    ("extra", "reason"), [(b"tail", "more than"), (None, "bytes, the manifest")]
)
def test_a_data_file_of_another_size_is_refused(store, extra, reason):
    report = deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    data = store.read(report.data_keys[0])
    store.write(report.data_keys[0], data + extra if extra else data[:-10])
    assert reason in refusal(store).reason


def test_a_data_file_that_is_gone_is_refused(local_store):
    report = deliver(local_store, "2026-11-20T01-00Z", [parquet_bytes(table_of(ROWS))])
    os.remove(local_store.root / report.data_keys[0])
    assert refusal(local_store).reason == "the data file does not exist"


def test_a_corrupt_data_file_is_refused_even_with_a_matching_md5(store):
    junk = b"PAR1" + os.urandom(3000) + b"PAR1"
    deliver(store, "2026-11-20T01-00Z", [junk])
    assert "not a Parquet file" in refusal(store).reason


def test_a_data_file_truncated_inside_its_rows_is_refused(local_store):
    data = parquet_bytes(table_of(ROWS * 50), 10)
    footer_length = int.from_bytes(data[-8:-4], "little")
    # The row groups' pages are overwritten, the footer kept: the file opens, rows fail.
    broken = b"PAR1" + b"\x00" * (len(data) - footer_length - 12) + data[-footer_length - 8 :]
    deliver(local_store, "2026-11-20T01-00Z", [broken])
    assert "unreadable rows" in refusal(local_store).reason


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        (table_of(ROWS).drop_columns(["last_modified_date"]), "no column last_modified_date"),
        (table_of(ROWS).drop_columns(["bucket"]), "no column bucket"),
        (
            table_of(ROWS).set_column(2, "size", pa.array([str(r[1]) for r in ROWS])),
            "column size of the data file is string",
        ),
        (
            table_of(ROWS).append_column("key", pa.array([r[0] for r in ROWS])),
            "the data file has 2 columns key",
        ),
        (table_of(ROWS, bucket="another-bucket"), f"a row is not of bucket '{SOURCE}'"),
        (
            table_of([*ROWS, ("training/no-time.json", 3, None)]),
            "has no size or no last_modified_date",
        ),
        (table_of([("training/negative.json", -1, T0)]), "has size -1"),
    ],
)
def test_a_data_file_without_what_a_reconcile_needs_is_refused(store, table, reason):
    deliver(store, "2026-11-20T01-00Z", [parquet_bytes(table)])
    assert reason in refusal(store).reason


def test_rows_of_the_files_before_a_refused_one_are_yielded_first(local_store):
    good = parquet_bytes(table_of(ROWS[:2]))
    deliver(local_store, "2026-11-20T01-00Z", [good, b"not parquet at all"])
    records = find_inventory(local_store, PREFIX, SOURCE).records([""])
    assert [next(records).key, next(records).key] == [ROWS[0][0], ROWS[1][0]]
    with pytest.raises(InventoryUnusable, match="not a Parquet file"):
        next(records)


# ------------------------------------------------------------------ memory


def write_large_part(path, first: int, count: int, row_group: int) -> None:
    """``count`` rows (keys ``raw-a/.../<n>.dcm`` and ``training/...``), written in slices."""
    schema = table_of(ROWS[:1]).schema
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for start in range(first, first + count, row_group):
            numbers = pa.array(range(start, min(start + row_group, first + count)), pa.int64())
            text = numbers.cast(pa.string())
            keys = pa.compute.if_else(
                pa.compute.equal(pa.compute.bit_wise_and(numbers, 1), 0),
                pa.compute.binary_join_element_wise("raw-a/2026-11-19/images/IM", text, ".dcm", ""),
                pa.compute.binary_join_element_wise("training/xray/P", text, "/IM.dcm", ""),
            )
            times = pa.compute.add(numbers, ms(T0)).cast(pa.timestamp("ms", tz="UTC"))
            writer.write_table(
                pa.table(
                    {
                        "bucket": pa.array([SOURCE] * len(numbers), pa.string()),
                        "key": keys,
                        "size": numbers,
                        "last_modified_date": times,
                    },
                    schema=schema,
                )
            )


def test_a_large_inventory_is_streamed_with_flat_memory(local_store, tmp_path):
    rows_per_file, files = 100_000, 2
    folder = f"{PREFIX}{SOURCE}/{INVENTORY_CONFIG_ID}/"
    entries = []
    for number in range(files):
        path = tmp_path / f"part{number}.parquet"
        write_large_part(path, number * rows_per_file, rows_per_file, 20_000)
        key = f"{folder}data/part{number}.parquet"
        local_store.write_file(key, str(path), "application/octet-stream")
        entries.append(
            {"key": key, "size": path.stat().st_size, "MD5checksum": md5(path.read_bytes())}
        )
    manifest = json.dumps(
        {
            "sourceBucket": SOURCE,
            "creationTimestamp": str(ms(T0)),
            "fileFormat": "Parquet",
            "fileSchema": SCHEMA_TEXT,
            "files": entries,
        }
    ).encode()
    local_store.write(f"{folder}2026-11-20T01-00Z/manifest.json", manifest)
    local_store.write(f"{folder}2026-11-20T01-00Z/manifest.checksum", md5(manifest).encode())
    found = find_inventory(local_store, PREFIX, SOURCE)

    count, size_sum, arrow_peak = 0, 0, 0
    last = None
    tracemalloc.start()
    try:
        for info in found.records(["raw-a/", "training/"]):
            count += 1
            size_sum += info.size
            last = info
            if count % 10_000 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    total = rows_per_file * files
    assert count == total
    assert size_sum == total * (total - 1) // 2  # every row once: sizes are 0..total-1
    assert last.key == f"training/xray/P{total - 1}/IM.dcm"
    # Measured: about 2 MB of Python objects and 4 MB of Arrow buffers with batches of
    # BATCH_ROWS rows; one data file's rows at once take about 17 MB and 20 MB, the whole
    # inventory twice that.
    assert peak < 10 * 1024 * 1024, peak
    # Arrow's buffers (not seen by tracemalloc): a row group at a time, not the inventory.
    assert arrow_peak < 12 * 1024 * 1024, arrow_peak


# ------------------------------------------------------------------ the warehouse's name


def test_bucket_name_of_each_store(tmp_path, local_store):
    assert bucket_name(S3Storage("warehouse-1", client=object(), probe=object())) == "warehouse-1"
    assert bucket_name(local_store) == "bucket"
    assert bucket_name(DryRunStorage(local_store)) == "bucket"
