"""The storage port and its adapters: a local directory, S3 (moto), and the dry-run wrapper."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests import builders
from tests.aws_keys import keys_checked, no_credentials, use_key, user_key
from warehouse.core.errors import (
    ExpectedError,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
    StoreUnavailable,
    SymbolicLinkRefused,
)
from warehouse.storage import base as storage_module
from warehouse.storage.base import ObjectInfo
from warehouse.storage.local import LocalStorage
from warehouse.storage.s3 import S3Storage, credentials_problem
from warehouse.storage.url import location_from_url, storage_from_url
from warehouse.storage.wrappers import DryRunStorage

BUCKET = "warehouse-test"
MB = 1024 * 1024

#: Keys whose S3 order differs from a naive directory walk ("-" and "." sort before "/").
TRICKY_KEYS = ["a/b", "a-c", "a/a/x", "a.b/c", "ab", "a0", "b/deep/er/key.json"]


class RequestCounter:
    """Counts S3 API calls by operation name, through botocore's event hooks."""

    def __init__(self, client):
        self.calls: Counter[str] = Counter()
        client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, event_name, **kwargs):
        self.calls[event_name.rsplit(".", 1)[-1]] += 1


@pytest.fixture
def s3_client():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.create_bucket(Bucket=f"{BUCKET}-processed")
        yield client


@pytest.fixture
def s3(s3_client):
    return S3Storage(BUCKET, client=s3_client)


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    return LocalStorage(root)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """Each test using it runs on both backends."""
    if request.param == "local":
        root = tmp_path / "bucket"
        root.mkdir()
        yield LocalStorage(root)
    else:
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            client.create_bucket(Bucket=f"{BUCKET}-processed")
            yield S3Storage(BUCKET, client=client)


def put(storage, keys, data=b"x"):
    for key in keys:
        storage.write(key, data)


def bulk_put(keys, bucket=BUCKET):
    """Create many objects straight in moto's backend (thousands of PUTs would be slow)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in keys:
        backend.put_object(bucket, key, b"x")


def keys_of(infos) -> list[str]:
    return [info.key for info in infos]


# --------------------------------------------------------------------------------------------
# listing


def test_list_in_key_order(store):
    put(store, reversed(TRICKY_KEYS))
    assert keys_of(store.list("")) == sorted(TRICKY_KEYS)


def test_list_prefix_is_a_string_prefix_not_a_folder(store):
    put(store, ["raw-a/1.txt", "raw-ab/2.txt", "raw-a/sub/3.txt", "raw-b/4.txt", "raw-a.txt"])
    assert keys_of(store.list("raw-a/")) == ["raw-a/1.txt", "raw-a/sub/3.txt"]
    assert keys_of(store.list("raw-a")) == [
        "raw-a.txt",
        "raw-a/1.txt",
        "raw-a/sub/3.txt",
        "raw-ab/2.txt",
    ]
    assert keys_of(store.list("raw-a/su")) == ["raw-a/sub/3.txt"]
    assert keys_of(store.list("raw-a/sub/3.txt")) == ["raw-a/sub/3.txt"]
    assert keys_of(store.list("raw-c/")) == []
    assert keys_of(store.list("nothing/at/all/")) == []


def test_list_gives_size_and_utc_time(store):
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    store.write("k/one.json", b"12345")
    (info,) = store.list("k/")
    assert info.key == "k/one.json"
    assert info.size == 5
    assert info.last_modified.utcoffset() == dt.timedelta(0)
    assert before <= info.last_modified <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)


def test_list_folders(store):
    put(store, ["raw-a/2021-01-01/data/x.json", "raw-a/2021-01-02/images/y.dcm", "raw-a/top.log"])
    put(store, ["raw-a.b/z", "raw-a-c/z", "config.json"])
    folders, objects = store.list_folders("raw-a/")
    assert folders == ["raw-a/2021-01-01/", "raw-a/2021-01-02/"]
    assert keys_of(objects) == ["raw-a/top.log"]
    assert objects[0].size == 1
    folders, objects = store.list_folders("")
    assert folders == ["raw-a-c/", "raw-a.b/", "raw-a/"]
    assert keys_of(objects) == ["config.json"]
    assert store.list_folders("missing/") == ([], [])


def test_list_many_over_several_prefixes(store):
    keys = [f"training/data/P{n}/data_2021-01-0{n % 9 + 1}.json" for n in range(30)]
    keys += [f"validation/xray/P{n}/1.2/1.2.3/{n}.dcm" for n in range(20)]
    keys += ["training/loose.json", "other/never.json", "trainingx/never.json"]
    put(store, keys)
    listed = keys_of(store.list_many(["training/", "validation/"], workers=4))
    assert sorted(listed) == sorted(k for k in keys if k.startswith(("training/", "validation/")))
    assert len(listed) == len(set(listed))


def test_list_many_can_stop_early(store, monkeypatch):
    """A consumer that stops after one object stops the listing: the producer thread ends
    and most folders are never listed."""
    monkeypatch.setattr(storage_module, "_LIST_QUEUE_SIZE", 2)
    put(store, [f"p/{n:02d}/x" for n in range(20)])
    listed = []
    original = store.list

    def counting_list(prefix):
        for info in original(prefix):
            listed.append(info.key)
            yield info

    monkeypatch.setattr(store, "list", counting_list)
    iterator = store.list_many(["p/"], workers=2)
    first = next(iterator)
    iterator.close()
    assert first.key.startswith("p/")
    assert not any(t.name == "list-many" and t.is_alive() for t in threading.enumerate())
    # the queue (2), the one consumed and one object per busy worker (2), at most
    assert len(listed) <= 5 < 20


def test_list_many_of_nothing(store):
    assert list(store.list_many([], workers=2)) == []
    assert list(store.list_many(["none/"], workers=2)) == []


def test_s3_list_paginates_past_1000_keys(s3_client, s3):
    keys = [f"many/{n:05d}.json" for n in range(1005)]
    bulk_put(reversed(keys))
    counter = RequestCounter(s3_client)
    assert keys_of(s3.list("many/")) == keys
    assert counter.calls["ListObjectsV2"] == 2


def test_s3_list_folders_paginates(s3_client, s3):
    bulk_put([f"f/{n:04d}/x" for n in range(1003)] + ["f/z.json"])
    counter = RequestCounter(s3_client)
    folders, objects = s3.list_folders("f/")
    assert len(folders) == 1003
    assert folders[0] == "f/0000/" and folders[-1] == "f/1002/"
    assert keys_of(objects) == ["f/z.json"]
    assert counter.calls["ListObjectsV2"] == 2


# --------------------------------------------------------------------------------------------
# reading


def test_read_and_read_range(store):
    data = bytes(range(256)) * 4
    store.write("blob.bin", data)
    assert store.read("blob.bin") == data
    assert store.read_range("blob.bin", 0, 10) == data[:10]
    assert store.read_range("blob.bin", 100, 228) == data[100:228]
    # past the end: fewer bytes, then none
    assert store.read_range("blob.bin", 1000, 5000) == data[1000:]
    assert store.read_range("blob.bin", 2000, 3000) == b""
    assert store.read_range("blob.bin", 5, 5) == b""


def test_read_empty_object(store):
    store.write("empty", b"")
    assert store.read("empty") == b""
    assert store.read_range("empty", 0, 100) == b""


@pytest.mark.parametrize("key", ["missing.json", "deep/missing/key.json"])
def test_object_not_found(store, key):
    with pytest.raises(ObjectNotFound) as caught:
        store.read(key)
    assert str(caught.value) == f"{store.url}/{key} does not exist"
    with pytest.raises(ObjectNotFound, match="does not exist"):
        store.read_range(key, 0, 10)


def test_object_not_found_is_a_storage_error_and_a_key_error():
    assert issubclass(ObjectNotFound, StorageError)
    assert issubclass(ObjectNotFound, KeyError)
    assert issubclass(StorageError, ExpectedError)
    assert str(ObjectNotFound("s3://b/k does not exist")) == "s3://b/k does not exist"


def test_local_folder_is_not_an_object(local):
    local.write("a/b.json", b"{}")
    with pytest.raises(ObjectNotFound):
        local.read("a")
    with pytest.raises(ObjectNotFound):
        local.read("a/b.json/c")


# --------------------------------------------------------------------------------------------
# writing


def test_write_replaces(store):
    store.write("x/y.json", b"old")
    store.write("x/y.json", b"new content")
    assert store.read("x/y.json") == b"new content"
    assert [(i.key, i.size) for i in store.list("x/")] == [("x/y.json", 11)]


def test_local_write_leaves_no_temporary_file(local):
    local.write("a/b/c.json", b"{}")
    local.write("a/b/c.json", b"{1}")
    assert sorted(p.name for p in (local.root / "a" / "b").iterdir()) == ["c.json"]
    assert oct((local.root / "a/b/c.json").stat().st_mode & 0o777) == oct(0o644)


def temporary_name(pid: int) -> str:
    """A temporary file's name as the local store gives it (the oracle: the README's form)."""
    return f".warehouse-partial-{pid}-{'0a' * 16}"


def test_local_temporary_files_are_never_listed(local):
    """A live writer's temporary file, at the root or in a folder, is left alone and never
    listed; other names (even ``.tmp-...``) are objects like any other."""
    local.write("d/real.json", b"1")
    live = temporary_name(os.getpid())
    (local.root / "d" / live).write_bytes(b"partial")
    (local.root / live).write_bytes(b"partial")
    (local.root / ".tmp-abc123").write_bytes(b"an object")
    assert keys_of(local.list("")) == [".tmp-abc123", "d/real.json"]
    assert keys_of(local.list("d/")) == ["d/real.json"]
    folders, objects = local.list_folders("")
    assert (folders, keys_of(objects)) == (["d/"], [".tmp-abc123"])
    assert keys_of(local.list_folders("d/")[1]) == ["d/real.json"]
    assert keys_of(local.list_many([""])) == [".tmp-abc123", "d/real.json"]
    assert (local.root / "d" / live).read_bytes() == b"partial"  # its writer is alive
    assert (local.root / live).exists()


def test_local_temporary_files_of_a_killed_writer_are_removed_where_the_product_writes(
    local, caplog
):
    gone = builders.exited_pid()
    abandoned = [
        f"training/ct/{temporary_name(gone)}",
        f"reports/warehouseloader/{temporary_name(gone)}",
        f"training/data/P/.tmp-{gone}-0123456789ab",  # the form of versions up to 0.2.0
    ]
    for key in abandoned:
        (local.root / key).parent.mkdir(parents=True, exist_ok=True)
        (local.root / key).write_bytes(b"partial")
    local.write("training/ct/a.dcm", b"1")
    caplog.set_level(logging.INFO, logger="warehouse.storage.local")
    assert keys_of(local.list("training/")) == ["training/ct/a.dcm"]
    assert keys_of(local.list_folders("reports/warehouseloader/")[1]) == []
    assert [key for key in abandoned if (local.root / key).exists()] == []
    assert caplog.text.count("left by a run that was killed while writing") == 3


@pytest.mark.parametrize(
    "name",
    [
        ".tmp-{gone}-x.dcm",
        ".tmp-{gone}-0123456789ab",  # even the old temporary form
        ".warehouse-partial-{gone}-" + "0a" * 16,  # even the product's own form
        ".tmp-99999999999999999999999-x.dcm",
        ".tmp-\u00b2-x.dcm",  # a digit for str.isdigit, not for int()
        ".tmp--1-x",
    ],
)
def test_local_raw_side_lists_every_name_and_removes_none(local, name):
    """Under a raw-* prefix every name is an upload: listed, never removed, whatever it
    looks like; nothing is looked for there."""
    name = name.format(gone=builders.exited_pid())
    key = f"raw-a/2021-01-01/images/{name}"
    (local.root / key).parent.mkdir(parents=True)
    (local.root / key).write_bytes(b"upload")
    assert keys_of(local.list("raw-a/")) == [key]
    assert keys_of(local.list_folders("raw-a/2021-01-01/images/")[1]) == [key]
    assert keys_of(local.list_many(["raw-a/"])) == [key]
    assert (local.root / key).read_bytes() == b"upload"


@pytest.mark.parametrize(
    "name",
    [
        ".tmp-99999999999999999999999-x.dcm",
        ".tmp-\u00b2-x.dcm",
        ".warehouse-partial-99999999999-" + "0a" * 16,  # a pid past any pid_t
        ".warehouse-partial-\u00b2-" + "0a" * 16,
        ".warehouse-partial-1-" + "0a" * 16 + "\n",
    ],
)
def test_local_odd_names_where_the_product_writes_are_objects(local, name):
    """A name that is not exactly a temporary file's is an object there too: listed, kept,
    and no error whatever its digits."""
    key = f"training/ct/{name}"
    (local.root / "training" / "ct").mkdir(parents=True)
    (local.root / key).write_bytes(b"x")
    assert keys_of(local.list("")) == [key]
    assert (local.root / key).exists()


def test_local_folder_named_like_a_temporary_file_is_walked_not_removed(local):
    folder = local.root / "training" / temporary_name(builders.exited_pid())
    folder.mkdir(parents=True)
    (folder / "x.json").write_bytes(b"x")
    assert keys_of(local.list("")) == [f"training/{folder.name}/x.json"]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_local_listing_of_500_nested_folders_stops_at_16_levels(local):
    """No recursion: a folder 16 levels deep is listed as itself (``too_deep``), not
    entered; what lies above it is listed, and no descriptor is left open."""
    deep = local.root.joinpath("raw-a", *["d"] * 500)
    deep.mkdir(parents=True)
    (deep / "x.dcm").write_bytes(b"x")
    (local.root / "raw-a" / "d" / "y.dcm").write_bytes(b"y")
    sixteenth = "raw-a/" + "d/" * 15  # 16 levels: the folder itself is the 16th
    before = open_descriptors()
    for listing in (local.list(""), local.list("raw-a/"), local.list_many(["raw-a/"])):
        infos = list(listing)
        assert [(i.key, i.too_deep, i.size) for i in infos] == [
            (sixteenth, True, 0),
            ("raw-a/d/y.dcm", False, 1),
        ]
    assert open_descriptors() == before
    # a key of exactly 16 levels is an object like any other
    local.write("b/" * 15 + "k", b"k")
    assert keys_of(local.list("b/")) == ["b/" * 15 + "k"]


def test_local_listing_closes_its_folders_when_the_reader_stops(local):
    local.root.joinpath(*["e"] * 10).mkdir(parents=True)
    local.root.joinpath(*["e"] * 10, "x").write_bytes(b"x")
    local.root.joinpath(*["e"] * 10, "y").write_bytes(b"y")
    before = open_descriptors()
    listing = local.list("")
    assert next(listing).key == "e/" * 10 + "x"
    listing.close()
    assert open_descriptors() == before


def test_local_time_past_what_a_datetime_holds_is_its_last_moment(local):
    """Some file systems keep any 64-bit time: the listing still gives a datetime."""
    year_300000 = os.stat_result((0o100644, 0, 0, 1, 0, 0, 5, 0, 10**13, 0))
    far_past = os.stat_result((0o100644, 0, 0, 1, 0, 0, 5, 0, -(10**13), 0))
    assert local._info("k", year_300000).last_modified == dt.datetime.max.replace(tzinfo=dt.UTC)
    assert local._info("k", far_past).last_modified == dt.datetime.min.replace(tzinfo=dt.UTC)


def test_local_write_names_its_temporary_file_in_the_readme_form(local, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(source, target, **kwargs):
        seen.append(source)
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    local.write("reports/r.json", b"{}")
    assert len(seen) == 1
    assert re.fullmatch(rf"\.warehouse-partial-{os.getpid()}-[0-9a-f]{{32}}", seen[0])


def test_local_failing_write_keeps_the_old_content(local, monkeypatch):
    local.write("k.json", b"old")

    def broken_replace(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="cannot write .*k.json: No space left on device"):
        local.write("k.json", b"new")
    monkeypatch.undo()
    assert local.read("k.json") == b"old"
    assert sorted(p.name for p in local.root.iterdir()) == ["k.json"]


def test_local_write_interrupted_while_filling_keeps_the_old_content(local):
    local.write("k.json", b"old")
    with pytest.raises(TypeError):
        local.write("k.json", "not bytes")  # fails inside the temporary file
    assert local.read("k.json") == b"old"
    assert sorted(p.name for p in local.root.iterdir()) == ["k.json"]


def test_local_write_onto_a_file_used_as_folder(local):
    local.write("a", b"file")
    with pytest.raises(StorageError, match="cannot write"):
        local.write("a/b", b"x")


@pytest.mark.parametrize(
    "key", ["", "../escape", "a/../../escape", "a//b", "/abs", "a/", "a/./b", ".", "a\x00b"]
)
def test_local_rejects_unsafe_keys(local, key):
    with pytest.raises(StorageError, match="invalid key"):
        local.write(key, b"x")
    with pytest.raises(StorageError, match="invalid key"):
        local.read(key)
    with pytest.raises(StorageError, match="invalid key"):
        local.read_range(key, 0, 1)
    with pytest.raises(StorageError, match="invalid key"):
        local.copy(key, "target")
    assert not (local.root.parent / "escape").exists()


@pytest.mark.parametrize("prefix", ["../", "../bucket-other/", "a/../../"])
def test_local_listing_never_leaves_the_root(local, prefix):
    outside = local.root.parent / "bucket-other"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    with pytest.raises(StorageError, match="invalid key"):
        list(local.list(prefix))
    with pytest.raises(StorageError, match="invalid key"):
        local.list_folders(prefix)


def test_local_root_must_exist(tmp_path):
    store = LocalStorage(tmp_path / "nope")
    expected = f"{store.url} does not exist: .*create it with `mkdir -p {tmp_path}/nope`"
    for attempt in (
        lambda: list(store.list("")),
        lambda: store.list_folders(""),
        lambda: store.read("k"),
        lambda: store.write("k", b"x"),
        lambda: store.write("a/b/k", b"x"),
        lambda: store.copy("a", "b"),
        lambda: store.write_if_absent("locks/l.json", b"{}"),
        store.check_store,
    ):
        with pytest.raises(StoreUnavailable, match=expected):
            attempt()
    assert not (tmp_path / "nope").exists()  # writes never make the root


def test_local_root_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    store = LocalStorage(tmp_path / "file")
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        list(store.list(""))
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        store.write("k", b"x")
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        store.check_store()


# --------------------------------------------------------------------------------------------
# copying


def test_copy(store):
    store.write("raw/1.dcm", b"DICM" * 100)
    store.copy("raw/1.dcm", "training/xray/P/1.2/1.2.3/1.dcm", size=400)
    store.copy("raw/1.dcm", "validation/1.dcm")  # size unknown
    assert store.read("training/xray/P/1.2/1.2.3/1.dcm") == b"DICM" * 100
    assert store.read("validation/1.dcm") == b"DICM" * 100
    assert store.read("raw/1.dcm") == b"DICM" * 100


def test_copy_missing_source_names_the_source(store):
    for size in (None, 10):
        with pytest.raises(ObjectNotFound) as caught:
            store.copy("raw/missing.dcm", "target.dcm", size=size)
        assert str(caught.value) == f"{store.url}/raw/missing.dcm does not exist"
    assert keys_of(store.list("")) == []


def test_s3_copy_is_one_server_side_request_when_size_is_known(s3_client, s3):
    s3.write("src", b"data")
    counter = RequestCounter(s3_client)
    s3.copy("src", "dst", size=4)
    assert counter.calls == Counter({"CopyObject": 1})
    assert s3.read("dst") == b"data"


def test_s3_multipart_copy_above_the_copy_limit(s3_client):
    store = S3Storage(BUCKET, client=s3_client, copy_limit=5 * MB)
    data = os.urandom(6 * MB)
    store.write("big.dcm", data)
    counter = RequestCounter(s3_client)
    store.copy("big.dcm", "copy/big.dcm", size=len(data))
    assert counter.calls["UploadPartCopy"] >= 2
    assert counter.calls["CopyObject"] == 0
    assert store.read("copy/big.dcm") == data


# --------------------------------------------------------------------------------------------
# S3 errors


def test_s3_missing_bucket(s3_client):
    store = S3Storage("no-such-bucket-here", client=s3_client)
    expected = "bucket no-such-bucket-here does not exist"
    with pytest.raises(StorageError, match=expected):
        list(store.list(""))
    with pytest.raises(StorageError, match=expected):
        store.list_folders("")
    with pytest.raises(StorageError, match=expected):
        store.read("k")
    with pytest.raises(StorageError, match=expected):
        store.write("k", b"x")
    with pytest.raises(StorageError, match=expected):
        list(store.list_many(["training/", "validation/"]))


def test_s3_other_errors_name_the_action_and_key(s3_client):
    from botocore.exceptions import ClientError

    def deny(**kwargs):
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"
        )

    store = S3Storage(BUCKET, client=s3_client)
    s3_client.meta.events.register("before-call.s3.PutObject", deny)
    with pytest.raises(StorageError) as caught:
        store.write("reports/x.json", b"{}")
    assert (
        str(caught.value)
        == f"cannot write s3://{BUCKET}/reports/x.json: AccessDenied Access Denied"
    )


# --------------------------------------------------------------------------------------------
# against a moto server over HTTP (the client built from the environment)


def test_s3_over_http(s3_bucket, s3_endpoint):
    store = storage_from_url(f"s3://{s3_bucket}", workers=4)
    assert isinstance(store, S3Storage)
    assert store.client.meta.endpoint_url == s3_endpoint
    put(store, reversed(TRICKY_KEYS), b"0123456789")
    assert keys_of(store.list("")) == sorted(TRICKY_KEYS)
    assert store.list_folders("")[0] == ["a.b/", "a/", "b/"]
    assert store.read_range("a/b", 2, 5) == b"234"
    assert store.read_range("a/b", 8, 100) == b"89"
    assert store.read_range("a/b", 50, 100) == b""
    store.copy("a/b", "c/copied", size=10)
    assert store.read("c/copied") == b"0123456789"
    with pytest.raises(ObjectNotFound):
        store.read("missing")
    processed = store.processed()
    processed.write("latest.csv", b"x\n")
    assert keys_of(processed.list("")) == ["latest.csv"]
    assert "latest.csv" not in keys_of(store.list(""))


def test_s3_client_is_tuned():
    client = S3Storage(BUCKET, workers=40).client
    config = client.meta.config
    assert config.retries["mode"] == "adaptive"
    assert config.max_pool_connections >= 40


# --------------------------------------------------------------------------------------------
# processed store


def test_processed_local(tmp_path):
    store = LocalStorage(tmp_path / "warehouse")
    processed = store.processed()
    assert isinstance(processed, LocalStorage)
    assert processed.root == tmp_path / "warehouse-processed"
    assert processed.url == (tmp_path / "warehouse-processed").as_uri()


def test_processed_s3(s3_client):
    store = S3Storage(BUCKET, client=s3_client, workers=7)
    processed = store.processed()
    assert isinstance(processed, S3Storage)
    assert processed.bucket == f"{BUCKET}-processed"
    assert processed.url == f"s3://{BUCKET}-processed"
    assert processed.client is s3_client
    assert processed.workers == 7


def test_processed_dry_run(tmp_path):
    store = DryRunStorage(LocalStorage(tmp_path / "w"))
    processed = store.processed()
    assert isinstance(processed, DryRunStorage)
    assert processed.url == (tmp_path / "w-processed").as_uri()


# --------------------------------------------------------------------------------------------
# dry run


def test_dry_run_reads_but_writes_nothing(store, caplog):
    store.write("raw/a.json", b"{}")
    dry = DryRunStorage(store)
    assert dry.url == store.url
    assert dry.read("raw/a.json") == b"{}"
    assert dry.read_range("raw/a.json", 0, 1) == b"{"
    assert keys_of(dry.list("raw/")) == ["raw/a.json"]
    assert dry.list_folders("") == store.list_folders("")
    with caplog.at_level(logging.INFO, logger="warehouse.storage.wrappers"):
        dry.write("training/data/P/data_2021-01-01.json", b"{}")
        dry.copy("raw/a.json", "training/x.json", size=2)
        dry.processed().write("latest.csv", b"x")
    assert dry.intended_writes == 2
    assert keys_of(store.list("")) == ["raw/a.json"]
    messages = [r.getMessage() for r in caplog.records]
    assert f"DRY RUN: would write {store.url}/training/data/P/data_2021-01-01.json (2 bytes)" in (
        messages
    )
    assert f"DRY RUN: would copy {store.url}/raw/a.json to {store.url}/training/x.json" in messages


def test_dry_run_local_creates_no_folder(tmp_path):
    root = tmp_path / "w"
    root.mkdir()
    dry = DryRunStorage(LocalStorage(root))
    dry.write("a/b/c.json", b"{}")
    assert list(root.iterdir()) == []
    assert not (tmp_path / "w-processed").exists()


# --------------------------------------------------------------------------------------------
# storage_from_url


@pytest.mark.parametrize(
    ("url", "bucket"),
    [("name", "name"), ("s3://name", "name"), ("s3://my-bucket/", "my-bucket"), (" b-1 ", "b-1")],
)
def test_storage_from_url_s3(url, bucket):
    store = storage_from_url(url)
    assert isinstance(store, S3Storage)
    assert store.bucket == bucket
    assert store.url == f"s3://{bucket}"


def test_storage_from_url_absolute_file(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = storage_from_url(f"file://{tmp_path}/bucket")
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "bucket"
    assert store.url == f"file://{tmp_path}/bucket"


def test_storage_from_url_relative_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo" / "bucket").mkdir(parents=True)
    store = storage_from_url("file://demo/bucket")
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "demo" / "bucket"


def test_storage_from_url_dry_run(tmp_path):
    store = storage_from_url(f"file://{tmp_path}", dry_run=True)
    assert isinstance(store, DryRunStorage)
    assert isinstance(store.inner, LocalStorage)
    assert isinstance(storage_from_url("name", dry_run=True).inner, S3Storage)


@pytest.mark.parametrize(
    "url", ["", "  ", "s3://", "s3://a/b", "name/key", "http://host/bucket", "gs://bucket"]
)
def test_storage_from_url_rejects(url):
    with pytest.raises(StorageError, match="is not a bucket name, s3://name or file://path"):
        storage_from_url(url)


def test_storage_from_url_file_needs_a_path():
    with pytest.raises(StorageError, match="file:// needs a path"):
        storage_from_url("file://")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://inv", "inv", ""),
        ("s3://inv/", "inv", ""),
        ("s3://inv/reconcile", "inv", "reconcile/"),
        (" s3://inv/a/b/ ", "inv", "a/b/"),
    ],
)
def test_location_from_url_s3(url, bucket, prefix):
    store, found = location_from_url(url)
    assert isinstance(store, S3Storage)
    assert (store.bucket, found) == (bucket, prefix)


def test_location_from_url_file(tmp_path):
    store, prefix = location_from_url(f"file://{tmp_path}")
    assert isinstance(store, LocalStorage)
    assert (store.root, prefix) == (tmp_path, "")
    with pytest.raises(StoreUnavailable):
        location_from_url(f"file://{tmp_path}/missing")


@pytest.mark.parametrize("url", ["", "inv/reconcile", "s3://", "s3:///reconcile", "gs://inv/x"])
def test_location_from_url_rejects(url):
    with pytest.raises(StorageError, match="names no bucket|is not s3://bucket/prefix"):
        location_from_url(url)


def test_object_info_is_small():
    info = ObjectInfo("k", 1, dt.datetime(2021, 1, 1, tzinfo=dt.UTC))
    assert not hasattr(info, "__dict__")
    assert Path(info.key).name == "k"


# --------------------------------------------------------------------------------------------
# the store must exist: a missing store is a settings error, never made on first write


def test_storage_from_url_refuses_a_missing_directory(tmp_path):
    for dry_run in (False, True):
        with pytest.raises(StoreUnavailable) as caught:
            storage_from_url(f"file://{tmp_path}/nonexistent/dir", dry_run=dry_run)
        assert isinstance(caught.value, ExpectedError)
        assert str(caught.value) == (
            f"file://{tmp_path}/nonexistent/dir does not exist: a local store is an existing "
            f"directory; create it with `mkdir -p {tmp_path}/nonexistent/dir`"
        )
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize("url", ["file:///", "file:////", "file:///..", "file:///tmp/.."])
def test_storage_from_url_refuses_the_file_system_root(url):
    with pytest.raises(StoreUnavailable, match="is the file-system root: name a directory"):
        storage_from_url(url)
    with pytest.raises(StoreUnavailable, match="is the file-system root"):
        LocalStorage("/")


def test_storage_from_url_refuses_a_file(tmp_path):
    (tmp_path / "bucket").write_bytes(b"not a folder")
    with pytest.raises(StoreUnavailable, match="bucket is not a directory"):
        storage_from_url(f"file://{tmp_path}/bucket")


def test_local_processed_store_must_exist(tmp_path):
    (tmp_path / "w").mkdir()
    store = storage_from_url(f"file://{tmp_path}/w")
    store.check_store()
    processed = store.processed()
    with pytest.raises(StoreUnavailable, match=f"create it with `mkdir -p {tmp_path}/w-processed`"):
        processed.check_store()
    with pytest.raises(StoreUnavailable):
        processed.write("2021-01-01/latest.csv", b"x")
    assert not (tmp_path / "w-processed").exists()
    (tmp_path / "w-processed").mkdir()
    processed.check_store()
    processed.write("batch/ct.csv", b"x")  # folders below the root are still made on demand
    assert (tmp_path / "w-processed" / "batch" / "ct.csv").read_bytes() == b"x"


def test_local_root_path_may_contain_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    store = storage_from_url(f"file://{tmp_path}/alias")
    assert store.root == tmp_path / "real"
    store.write("a/b.json", b"{}")
    assert (tmp_path / "real" / "a" / "b.json").read_bytes() == b"{}"


def test_s3_check_store_is_one_head_bucket(s3_client, s3):
    counter = RequestCounter(s3_client)
    s3.check_store()
    s3.processed().check_store()
    assert counter.calls == Counter({"HeadBucket": 2})


def test_s3_check_store_says_how_to_create_a_missing_bucket(s3_client):
    store = S3Storage("no-such-bucket-here", client=s3_client)
    with pytest.raises(StoreUnavailable) as caught:
        store.check_store()
    assert str(caught.value) == (
        "bucket no-such-bucket-here does not exist: create it with "
        "`aws s3 mb s3://no-such-bucket-here` (the CloudFormation template "
        "infrastructure/templates/warehouse.yaml makes the warehouse bucket and its "
        "-processed bucket)"
    )
    s3_client.delete_bucket(Bucket=f"{BUCKET}-processed")
    with pytest.raises(StoreUnavailable, match=f"aws s3 mb s3://{BUCKET}-processed"):
        S3Storage(BUCKET, client=s3_client).processed().check_store()


def test_s3_check_store_access_denied(s3_client, s3):
    from botocore.exceptions import ClientError

    def deny(**kwargs):
        raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadBucket")

    s3_client.meta.events.register("before-call.s3.HeadBucket", deny)
    with pytest.raises(StoreUnavailable, match=f"cannot use bucket {BUCKET}: access denied"):
        s3.check_store()


def test_dry_run_checks_the_inner_store(tmp_path):
    (tmp_path / "w").mkdir()
    dry = DryRunStorage(LocalStorage(tmp_path / "w"))
    dry.check_store()
    with pytest.raises(StoreUnavailable, match="w-processed does not exist"):
        dry.processed().check_store()


# --------------------------------------------------------------------------------------------
# symbolic links: listed as links, never followed, every read, write and copy through one refused


@pytest.fixture
def outside(tmp_path):
    """Real uploads outside the bucket, in the raw layout."""
    folder = tmp_path / "outside"
    (folder / "2021-01-01" / "images").mkdir(parents=True)
    (folder / "2021-01-01" / "images" / "x.dcm").write_bytes(b"DICM outside")
    (folder / "2021-01-01" / "data").mkdir()
    (folder / "2021-01-01" / "data" / "P1_data.json").write_bytes(b'{"outside": 1}')
    return folder


def tree_of(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_linked_prefix_folder_is_listed_as_a_link_and_never_entered(local, outside):
    local.write("raw-b/2021-01-01/data/P2_data.json", b"{}")
    (local.root / "raw-a").symlink_to(outside)
    (link,) = local.list("raw-a/")
    assert (link.key, link.link) == ("raw-a", True)
    assert link.last_modified.utcoffset() == dt.timedelta(0)
    assert [(i.key, i.link) for i in local.list("raw-a/2021-01-01/images/")] == [("raw-a", True)]
    assert [(i.key, i.link) for i in local.list("")] == [
        ("raw-a", True),
        ("raw-b/2021-01-01/data/P2_data.json", False),
    ]
    assert [(i.key, i.link) for i in local.list("raw-")] == [
        ("raw-a", True),
        ("raw-b/2021-01-01/data/P2_data.json", False),
    ]
    assert keys_of(local.list("raw-b/")) == ["raw-b/2021-01-01/data/P2_data.json"]
    folders, objects = local.list_folders("")
    assert folders == ["raw-b/"]
    assert [(i.key, i.link) for i in objects] == [("raw-a", True)]
    folders, objects = local.list_folders("raw-a/")
    assert folders == [] and [(i.key, i.link) for i in objects] == [("raw-a", True)]
    assert [(i.key, i.link) for i in local.list_many(["raw-a/", "raw-b/"])] in (
        [("raw-a", True), ("raw-b/2021-01-01/data/P2_data.json", False)],
        [("raw-b/2021-01-01/data/P2_data.json", False), ("raw-a", True)],
    )


def test_linked_folder_deep_in_a_prefix_is_a_link_entry(local, outside):
    local.write("raw-a/2021-01-01/data/P1_data.json", b"{}")
    (local.root / "raw-a" / "2021-01-01" / "images").symlink_to(outside / "2021-01-01" / "images")
    assert [(i.key, i.link) for i in local.list("raw-a/")] == [
        ("raw-a/2021-01-01/data/P1_data.json", False),
        ("raw-a/2021-01-01/images", True),
    ]
    assert sorted((i.key, i.link) for i in local.list_many(["raw-a/"])) == [
        ("raw-a/2021-01-01/data/P1_data.json", False),
        ("raw-a/2021-01-01/images", True),
    ]


def test_linked_and_dangling_files_are_listed_as_links(local, outside):
    local.write("d/real.json", b"1")
    (local.root / "d" / "link.json").symlink_to(outside / "2021-01-01" / "data" / "P1_data.json")
    (local.root / "d" / "dangling.json").symlink_to(local.root / "nowhere")
    listed = [(i.key, i.link) for i in local.list("d/")]
    assert listed == [("d/dangling.json", True), ("d/link.json", True), ("d/real.json", False)]
    _, objects = local.list_folders("d/")
    assert [(i.key, i.link) for i in objects] == listed
    assert [i.link for i in local.list("d/real")] == [False]


def test_reads_through_links_are_refused(local, outside):
    (local.root / "raw-a").symlink_to(outside)
    local.write("d/real.json", b"1")
    (local.root / "d" / "link.json").symlink_to(outside / "2021-01-01" / "data" / "P1_data.json")
    url = local.url
    with pytest.raises(SymbolicLinkRefused) as caught:
        local.read("raw-a/2021-01-01/images/x.dcm")
    assert str(caught.value) == (
        f"cannot read {url}/raw-a/2021-01-01/images/x.dcm: {url}/raw-a is a symbolic link "
        "(links in a local store are never followed)"
    )
    assert caught.value.link == "raw-a"
    with pytest.raises(SymbolicLinkRefused, match=f"{url}/d/link.json is a symbolic link"):
        local.read("d/link.json")
    with pytest.raises(SymbolicLinkRefused, match=f"{url}/d/link.json is a symbolic link"):
        local.read_range("d/link.json", 0, 4)
    with pytest.raises(SymbolicLinkRefused, match=f"cannot copy {url}/raw-a/2021-01-01"):
        local.copy("raw-a/2021-01-01/images/x.dcm", "training/x.dcm", size=12)
    with pytest.raises(SymbolicLinkRefused, match=f"cannot read {url}/d/link.json"):
        local.read_with_token("d/link.json")
    assert keys_of(local.list("training/")) == []


def test_training_link_sends_no_write_outside_the_bucket(local, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (local.root / "training").symlink_to(elsewhere)
    local.write("raw/x.dcm", b"DICM")
    key = "training/xray/P1/1.2/1.2.3/x.dcm"
    with pytest.raises(SymbolicLinkRefused) as caught:
        local.write(key, b"DICM")
    assert str(caught.value) == (
        f"cannot write {local.url}/{key}: {local.url}/training is a symbolic link "
        "(links in a local store are never followed)"
    )
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.copy("raw/x.dcm", key, size=4)
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.write_if_absent("training/lock.json", b"{}")
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.write_if_match("training/lock.json", b"{}", "token")
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.delete_if_match("training/lock.json", "token")
    assert list(elsewhere.iterdir()) == []
    assert (local.root / "training").is_symlink()


def test_link_deeper_in_the_warehouse_and_links_inside_the_bucket_are_refused(local):
    local.write("validation/ct/P/s/r/a.dcm", b"a")
    (local.root / "training").mkdir()
    (local.root / "training" / "xray").symlink_to(local.root / "validation")
    with pytest.raises(SymbolicLinkRefused, match="/training/xray is a symbolic link"):
        local.write("training/xray/P/s/r/b.dcm", b"b")
    with pytest.raises(SymbolicLinkRefused, match="/training/xray is a symbolic link"):
        local.read("training/xray/ct/P/s/r/a.dcm")
    local.write("training/ct/P/s/r/b.dcm", b"b")
    assert keys_of(local.list("validation/")) == ["validation/ct/P/s/r/a.dcm"]


def test_write_onto_a_linked_file_is_refused_and_keeps_the_link(local, tmp_path):
    target = tmp_path / "target.json"
    target.write_bytes(b"outside")
    local.write("reports/loader/x.json", b"old")
    (local.root / "reports" / "loader" / "latest.json").symlink_to(target)
    with pytest.raises(SymbolicLinkRefused, match="reports/loader/latest.json is a symbolic"):
        local.write("reports/loader/latest.json", b"new")
    with pytest.raises(SymbolicLinkRefused, match="reports/loader/latest.json is a symbolic"):
        local.copy("reports/loader/x.json", "reports/loader/latest.json")
    assert target.read_bytes() == b"outside"
    assert (local.root / "reports" / "loader" / "latest.json").is_symlink()


def test_a_link_swapped_in_after_use_is_refused(local, tmp_path):
    """No folder is trusted from an earlier write: each path is walked again."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    local.write("training/data/P1/a.json", b"1")
    (local.root / "training").rename(tmp_path / "moved")
    (local.root / "training").symlink_to(elsewhere)
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.write("training/data/P1/b.json", b"2")
    with pytest.raises(SymbolicLinkRefused, match="training is a symbolic link"):
        local.read("training/data/P1/a.json")
    assert list(elsewhere.iterdir()) == []


def test_local_refuses_a_fifo_without_hanging(local):
    os.mkfifo(local.root / "pipe")
    with pytest.raises(StorageError, match="cannot read .*/pipe: not a regular file"):
        local.read("pipe")
    assert keys_of(local.list("")) == []


# --------------------------------------------------------------------------------------------
# conditional operations (for the run lease)


def test_write_if_absent_creates_once(store):
    token = store.write_if_absent("locks/l.json", b'{"a": 1}')
    assert store.read_with_token("locks/l.json") == (b'{"a": 1}', token)
    with pytest.raises(PreconditionFailed, match=f"{store.url}/locks/l.json already exists"):
        store.write_if_absent("locks/l.json", b'{"b": 2}')
    assert store.read("locks/l.json") == b'{"a": 1}'
    assert keys_of(store.list("")) == ["locks/l.json"]  # no temporary file left


def test_write_if_match_replaces_only_an_unchanged_object(store):
    first = store.write_if_absent("locks/l.json", b"1")
    second = store.write_if_match("locks/l.json", b"2", first)
    assert second != first
    assert store.read_with_token("locks/l.json") == (b"2", second)
    with pytest.raises(PreconditionFailed, match="locks/l.json has changed"):
        store.write_if_match("locks/l.json", b"3", first)
    assert store.read("locks/l.json") == b"2"
    with pytest.raises(PreconditionFailed, match="locks/missing.json does not exist"):
        store.write_if_match("locks/missing.json", b"3", first)
    assert keys_of(store.list("")) == ["locks/l.json"]


def test_delete_if_match_deletes_only_an_unchanged_object(store):
    first = store.write_if_absent("locks/l.json", b"1")
    second = store.write_if_match("locks/l.json", b"2", first)
    with pytest.raises(PreconditionFailed, match="locks/l.json has changed"):
        store.delete_if_match("locks/l.json", first)
    assert store.read("locks/l.json") == b"2"
    store.delete_if_match("locks/l.json", second)
    assert keys_of(store.list("")) == []
    with pytest.raises(PreconditionFailed, match="locks/l.json does not exist"):
        store.delete_if_match("locks/l.json", second)
    with pytest.raises(ObjectNotFound):
        store.read_with_token("locks/l.json")
    store.write_if_absent("locks/l.json", b"again")  # absent again: can be created again


def test_conditional_operations_are_one_request_each(s3_client, s3):
    counter = RequestCounter(s3_client)
    token = s3.write_if_absent("locks/l.json", b"1")
    token = s3.write_if_match("locks/l.json", b"2", token)
    _, token = s3.read_with_token("locks/l.json")
    s3.delete_if_match("locks/l.json", token)
    assert counter.calls == Counter({"PutObject": 2, "GetObject": 1, "DeleteObject": 1})


def test_local_write_if_absent_never_shows_a_partial_object(local):
    with pytest.raises(TypeError):
        local.write_if_absent("locks/l.json", "not bytes")
    assert keys_of(local.list("")) == []
    assert list((local.root / "locks").iterdir()) == []


def test_racing_creators_exactly_one_wins(tmp_path, s3_client, monkeypatch):
    from tests.moto_conditions import serialise_conditional_requests

    serialise_conditional_requests(monkeypatch)
    (tmp_path / "bucket").mkdir()
    for store in (LocalStorage(tmp_path / "bucket"), S3Storage(BUCKET, client=s3_client)):
        racers = 8
        barrier = threading.Barrier(racers)
        outcomes: list[str] = []

        def race(n, store=store, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                store.write_if_absent("locks/l.json", f"racer {n}".encode())
                outcomes.append(f"won {n}")
            except PreconditionFailed:
                outcomes.append("lost")

        threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [o for o in outcomes if o.startswith("won")]
        assert len(winners) == 1 and outcomes.count("lost") == racers - 1
        assert store.read("locks/l.json") == f"racer {winners[0].split()[1]}".encode()


def test_dry_run_makes_no_conditional_write(store):
    store.write("locks/l.json", b"1")
    dry = DryRunStorage(store)
    assert dry.read_only and not store.read_only
    data, token = dry.read_with_token("locks/l.json")
    assert (data, token) == store.read_with_token("locks/l.json")
    with pytest.raises(StorageError, match="a dry run writes nothing"):
        dry.write_if_absent("locks/new.json", b"x")
    with pytest.raises(StorageError, match="a dry run writes nothing"):
        dry.write_if_match("locks/l.json", b"x", token)
    with pytest.raises(StorageError, match="a dry run writes nothing"):
        dry.delete_if_match("locks/l.json", token)
    assert keys_of(store.list("")) == ["locks/l.json"]
    assert store.read("locks/l.json") == b"1"


def test_s3_conditional_requests_over_http(s3_bucket, monkeypatch):
    from tests.moto_conditions import serialise_conditional_requests

    serialise_conditional_requests(monkeypatch)
    store = storage_from_url(f"s3://{s3_bucket}", workers=4)
    token = store.write_if_absent("locks/l.json", b"1")
    with pytest.raises(PreconditionFailed, match="already exists"):
        store.write_if_absent("locks/l.json", b"2")
    token = store.write_if_match("locks/l.json", b"2", token)
    with pytest.raises(PreconditionFailed, match="has changed"):
        store.delete_if_match("locks/l.json", '"0123"')
    store.delete_if_match("locks/l.json", token)
    assert keys_of(store.list("locks/")) == []
    store.check_store()
    store.processed().check_store()


# --------------------------------------------------------------------------------------------
# credentials said as credentials (a moto server that checks every request's keys, as AWS does)


def requests_of(store) -> Counter:
    """Count the S3 operations ``store``'s probe makes from now on."""
    return RequestCounter(store.probe).calls


def test_a_key_aws_does_not_know_is_said_as_credentials_not_access_denied(s3_bucket):
    store = S3Storage(s3_bucket, workers=2)
    calls = requests_of(store)
    with keys_checked(), pytest.raises(StoreUnavailable) as caught:
        store.check_store()
    message = str(caught.value)
    assert message.startswith(f"cannot use bucket {s3_bucket}: AWS refused the credentials ")
    assert "(InvalidAccessKeyId: " in message
    assert "run `aws sso login`" in message
    assert "access denied" not in message and "\n" not in message
    # HeadBucket's 403 has no code: one listing of one key, only then, says which
    assert calls == Counter({"HeadBucket": 1, "ListObjectsV2": 1})


def test_a_wrong_secret_is_said_as_credentials(s3_bucket, s3_endpoint, monkeypatch, tmp_path):
    key = user_key(s3_endpoint, "wrong-secret-user", ["s3:*"])
    use_key(monkeypatch, {**key, "SecretAccessKey": "not-" + key["SecretAccessKey"]})
    config = tmp_path / "aws-config"
    config.write_text("[profile warehouse-ops]\nregion = eu-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "warehouse-ops")  # (the keys in the environment win)
    store = S3Storage(s3_bucket, workers=2)
    with keys_checked(), pytest.raises(StoreUnavailable) as caught:
        store.check_store()
    assert "AWS refused the credentials (SignatureDoesNotMatch: " in str(caught.value)
    assert "`aws sso login --profile warehouse-ops`" in str(caught.value)


def test_a_known_key_without_the_permission_is_access_denied(s3_bucket, s3_endpoint, monkeypatch):
    use_key(monkeypatch, user_key(s3_endpoint, "no-rights-user"))
    store = S3Storage(s3_bucket, workers=2)
    calls = requests_of(store)
    with keys_checked(), pytest.raises(StoreUnavailable) as caught:
        store.check_store()
    assert str(caught.value) == (
        f"cannot use bucket {s3_bucket}: access denied (HeadBucket needs s3:ListBucket on it)"
    )
    assert calls == Counter({"HeadBucket": 1, "ListObjectsV2": 1})


def test_a_key_with_the_permission_checks_the_store_in_one_request(
    s3_bucket, s3_endpoint, monkeypatch
):
    # (AWS authorises HeadBucket as s3:ListBucket; moto asks for an "s3:HeadBucket" of its own)
    use_key(monkeypatch, user_key(s3_endpoint, "reader-user", ["s3:ListBucket", "s3:HeadBucket"]))
    store = S3Storage(s3_bucket, workers=2)
    calls = requests_of(store)
    with keys_checked():
        store.check_store()
    assert calls == Counter({"HeadBucket": 1})


def test_a_read_with_refused_credentials_names_the_key_and_the_credentials(s3_bucket):
    store = S3Storage(s3_bucket, workers=2)
    store.write("raw-a/2021-01-01/data/x_data.json", b"{}")
    with keys_checked(), pytest.raises(StorageError) as caught:
        store.read("raw-a/2021-01-01/data/x_data.json")
    assert str(caught.value).startswith(
        f"cannot read s3://{s3_bucket}/raw-a/2021-01-01/data/x_data.json: "
        "AWS refused the credentials (InvalidAccessKeyId: "
    )


def test_no_credentials_anywhere_is_said_in_one_line(s3_bucket, monkeypatch):
    no_credentials(monkeypatch)
    with pytest.raises(StoreUnavailable) as caught:
        S3Storage(s3_bucket, workers=2).check_store()
    assert str(caught.value) == (
        f"cannot use s3://{s3_bucket}: no AWS credentials were found: set AWS_PROFILE (and run "
        "`aws sso login` for an SSO profile) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
        "on ECS and AWS Batch the task's role provides them"
    )


def test_a_profile_that_does_not_exist_is_said_before_any_request(monkeypatch):
    no_credentials(monkeypatch)
    monkeypatch.setenv("AWS_PROFILE", "typo")
    with pytest.raises(StoreUnavailable) as caught:
        storage_from_url("s3://warehouse-test")
    assert str(caught.value).startswith(
        "cannot use bucket warehouse-test: the AWS profile in AWS_PROFILE does not exist "
        "(The config profile (typo) could not be found): "
    )


def _client_error(code: str, message: str = "m") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": message}}, "AnyOperation")


@pytest.mark.parametrize(
    ("code", "start"),
    [
        ("ExpiredToken", "the AWS credentials have expired (ExpiredToken: m): "),
        ("ExpiredTokenException", "the AWS credentials have expired (ExpiredTokenException: m): "),
        ("InvalidClientTokenId", "AWS refused the credentials (InvalidClientTokenId: m): "),
        (
            "UnrecognizedClientException",
            "AWS refused the credentials (UnrecognizedClientException: m): ",
        ),
        ("InvalidToken", "AWS refused the credentials (InvalidToken: m): "),
    ],
)
def test_refused_and_expired_codes_of_every_service_are_credentials(code, start):
    problem = credentials_problem(_client_error(code))
    assert problem.startswith(start)
    assert problem.endswith("run `aws sso login`") or problem.endswith("then try again")


@pytest.mark.parametrize(
    "code", ["AccessDenied", "AccessDeniedException", "403", "NoSuchBucket", "SlowDown", ""]
)
def test_other_errors_are_not_credentials(code):
    assert credentials_problem(_client_error(code)) is None
    assert credentials_problem(ValueError("InvalidAccessKeyId")) is None


def test_an_expired_sso_session_says_to_log_in_again(monkeypatch):
    from botocore.exceptions import TokenRetrievalError, UnauthorizedSSOTokenError

    monkeypatch.setenv("AWS_PROFILE", "ops; rm -rf /")
    expired = TokenRetrievalError(provider="sso", error_msg="Token has expired and refresh failed")
    problem = credentials_problem(expired)
    assert problem.startswith("the AWS SSO session has expired or was never started (")
    assert problem.endswith("run `aws sso login --profile 'ops; rm -rf /'`")  # quoted for a shell
    assert credentials_problem(UnauthorizedSSOTokenError()).startswith("the AWS SSO session")


def test_aws_messages_are_quoted_on_one_line_and_bounded():
    problem = credentials_problem(_client_error("InvalidAccessKeyId", "a\nb\x1b[2J" + "x" * 500))
    assert "\n" not in problem and "\x1b" not in problem
    assert "(InvalidAccessKeyId: a\\nb\\x1b[2J" in problem
    assert len(problem) < 500


def test_an_object_is_copied_to_a_local_file_in_a_few_large_ranged_reads(
    store, tmp_path, monkeypatch
):
    """`files.copy_to_file` writes the object's bytes exactly, one ranged read a chunk."""
    from warehouse.storage import files

    monkeypatch.setattr(files, "RANGE_CHUNK_BYTES", 1000)
    data = os.urandom(4500)
    store.write("catalogue/big.bin", data, "application/octet-stream")
    ranges = []
    real = type(store).read_range

    def recording(self, key, start, end):
        ranges.append((start, end))
        return real(self, key, start, end)

    monkeypatch.setattr(type(store), "read_range", recording)
    written = files.copy_to_file(store, "catalogue/big.bin", len(data), str(tmp_path / "copy"))
    assert written == len(data) and (tmp_path / "copy").read_bytes() == data
    assert ranges == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, 4500)]
    # an object shorter than the size asked for: what it holds, and the count says so
    short = files.copy_to_file(store, "catalogue/big.bin", len(data) + 500, str(tmp_path / "s"))
    assert short == len(data) and (tmp_path / "s").read_bytes() == data
