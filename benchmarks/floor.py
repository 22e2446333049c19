"""Floor clients: the least work a loader could do, to compare the loader's throughput with.

- `s3_floor`: per image exactly the three requests the loader needs (a ranged GET of the first
  64 KiB, a server-side COPY, a PUT of a small JSON), with a pool of worker threads;
- `local_floor`: the same on a local directory (read the first 64 KiB, write a small JSON,
  copy the file), nothing parsed;
- `list_only`: the listing a loader run makes (the bucket root, then every configured raw
  prefix, ``training/`` and ``validation/`` split into their sub-folders and paginated in
  parallel), and nothing else: what a rerun with nothing new cannot do without.

Each is also a command (``python -m benchmarks.floor s3|local|list ...``) that prints its
figures as JSON, so that the benchmark runs it in its own process, as it runs the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The loader's first ranged read of a header (``warehouse.dicom.reader``).
HEADER_BYTES = 64 * 1024
#: Where the floor clients write, beside the raw tree (never under a prefix the loader lists).
FLOOR_PREFIX = "floor/"
FLOOR_METADATA_PREFIX = "floor-metadata/"


def make_client(workers: int, endpoint: str | None = None):
    """A boto3 S3 client for ``workers`` threads: a connection pool as large, adaptive retries.

    Parameters
    ----------
    workers : int
        Threads that will share the client.
    endpoint : str, optional
        Endpoint URL; ``AWS_ENDPOINT_URL`` (read by botocore) when omitted.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": 10},
        max_pool_connections=max(10, workers + 8),
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def metadata_key(key: str) -> str:
    """Key of the small JSON the floor writes for image ``key``."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return f"{FLOOR_METADATA_PREFIX}{stem}.json"


def _small_json(key: str, header: bytes) -> bytes:
    return json.dumps({"key": key, "header_bytes": len(header)}).encode()


def _run_pool(work, items, workers: int) -> float:
    """Run ``work(item)`` for every item with ``workers`` threads; the wall time in seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="floor") as pool:
        for _ in pool.map(work, items):
            pass
    return time.perf_counter() - started


def s3_floor(bucket: str, keys: list[str], workers: int, client=None) -> dict:
    """Per image: a ranged GET of the first 64 KiB, a server-side COPY, a PUT of a small JSON.

    Parameters
    ----------
    bucket : str
        The bucket holding the raw images.
    keys : list of str
        Image keys.
    workers : int
        Worker threads (the loader's ``WAREHOUSE_WORKERS``).
    client : botocore client, optional
        The S3 client; `make_client` when omitted.

    Returns
    -------
    dict
        ``images``, ``requests`` (made by this client) and ``seconds`` (wall time of the work).
    """
    from botocore.exceptions import ClientError

    client = client or make_client(workers)

    def one(key: str) -> None:
        try:
            response = client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_BYTES - 1}"
            )
            header = response["Body"].read()
        except ClientError as exc:  # an empty object has no byte 0
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            header = b""
        client.copy_object(
            Bucket=bucket, Key=FLOOR_PREFIX + key, CopySource={"Bucket": bucket, "Key": key}
        )
        client.put_object(
            Bucket=bucket,
            Key=metadata_key(key),
            Body=_small_json(key, header),
            ContentType="application/json",
        )

    seconds = _run_pool(one, keys, workers)
    return {"images": len(keys), "requests": 3 * len(keys), "seconds": seconds}


def local_floor(root: str | os.PathLike, out: str | os.PathLike, keys: list[str], workers: int):
    """Per image: read the first 64 KiB, write a small JSON, copy the file; nothing parsed.

    Parameters
    ----------
    root : path
        Directory laid out like the bucket (``<root>/<key>``).
    out : path
        Directory to write the copies and JSON files into (created).
    keys : list of str
        Image keys (relative paths with ``/``).
    workers : int
        Worker threads.

    Returns
    -------
    dict
        ``images`` and ``seconds``.
    """
    root, out = Path(root), Path(out)

    def one(key: str) -> None:
        source = root / key
        with open(source, "rb") as handle:
            header = handle.read(HEADER_BYTES)
        target = out / FLOOR_PREFIX / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        meta = out / metadata_key(key)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_bytes(_small_json(key, header))

    seconds = _run_pool(one, keys, workers)
    return {"images": len(keys), "seconds": seconds}


def local_work_floor(root: str | os.PathLike, keys: list[str], workers: int) -> dict:
    """Per image, the work the product cannot avoid, and nothing else: read the header (ranged
    reads), take its identifiers, convert it to DICOM JSON, write that JSON and copy the file
    into the warehouse layout of the same directory, both atomically (temporary file, then
    rename), with the product's own functions. No listing, no graph, no report.

    Parameters
    ----------
    root : path
        A copy of the tree, laid out like the bucket; its warehouse side is written.
    keys : list of str
        Image keys (well-formed images).
    workers : int
        Worker threads.

    Returns
    -------
    dict
        ``images`` and ``seconds``.
    """
    from warehouse.core.keys import image_targets
    from warehouse.dicom.identity import image_identity
    from warehouse.dicom.jsonrep import header_json
    from warehouse.dicom.reader import read_header
    from warehouse.storage.local import LocalStorage

    store = LocalStorage(root)

    def one(key: str) -> None:
        size = (Path(root) / key).stat().st_size
        try:
            header = read_header(store, key, size)
            ids = image_identity(header.dataset)
        except ValueError:  # a faulty image: the loader reports it, the floor skips it
            return
        name = key.rsplit("/", 1)[-1]
        image_key, metadata_key = image_targets(
            "training", ids.folder, ids.patient_id, ids.study_uid, ids.series_uid, name
        )
        store.write(metadata_key, header_json(header.dataset))
        store.copy(key, image_key, size)

    seconds = _run_pool(one, keys, workers)
    return {"images": len(keys), "seconds": seconds}


def list_only(bucket: str, prefixes: list[str], workers: int, client=None) -> dict:
    """List like a loader run does, and nothing else.

    The bucket root is listed one level deep; then each prefix (``raw-x/``, ``training/``...)
    is split into its sub-folders, which are paginated in parallel.

    Parameters
    ----------
    bucket : str
        The bucket.
    prefixes : list of str
        Folder prefixes, each ending with ``/``.
    workers : int
        Parallel listings.
    client : botocore client, optional
        The S3 client; `make_client` when omitted.

    Returns
    -------
    dict
        ``objects`` listed, ``requests`` (pages) and ``seconds``.
    """
    client = client or make_client(workers)
    paginator = client.get_paginator("list_objects_v2")
    started = time.perf_counter()

    def pages(prefix: str, delimiter: bool) -> tuple[list[str], int, int]:
        folders, objects, requests = [], 0, 0
        extra = {"Delimiter": "/"} if delimiter else {}
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **extra):
            requests += 1
            folders.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
            objects += len(page.get("Contents", ()))
        return folders, objects, requests

    _, objects, requests = pages("", True)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="list") as pool:
        subfolders = []
        for folders, count, n in pool.map(lambda p: pages(p, True), prefixes):
            subfolders.extend(folders)
            objects, requests = objects + count, requests + n
        for _, count, n in pool.map(lambda p: pages(p, False), subfolders):
            objects, requests = objects + count, requests + n
    return {"objects": objects, "requests": requests, "seconds": time.perf_counter() - started}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description="Floor clients of the loader benchmark; each prints its figures as JSON.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s3 = sub.add_parser("s3", help="three requests per image on S3 (AWS_ENDPOINT_URL honoured)")
    s3.add_argument("--bucket", required=True)
    s3.add_argument("--keys", required=True, help="file with one image key a line")
    s3.add_argument("--workers", type=int, default=32)
    local = sub.add_parser("local", help="read 64 KiB, write a JSON, copy, per image")
    local.add_argument(
        "--work",
        action="store_true",
        help="the product's per-image work in --root itself: parse the header, write its "
        "DICOM JSON and copy the file into the warehouse layout, atomically (--out unused)",
    )
    local.add_argument("--root", required=True, help="directory laid out like the bucket")
    local.add_argument("--out", required=True, help="directory to write into")
    local.add_argument("--keys", required=True, help="file with one image key a line")
    local.add_argument("--workers", type=int, default=32)
    listing = sub.add_parser("list", help="the listing of a loader run, nothing else")
    listing.add_argument("--bucket", required=True)
    listing.add_argument("--prefix", action="append", required=True, help="folder (repeat)")
    listing.add_argument("--workers", type=int, default=32)
    return parser


def _read_keys(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; prints the figures of one floor client as JSON."""
    args = _parser().parse_args(argv)
    if args.command == "s3":
        figures = s3_floor(args.bucket, _read_keys(args.keys), args.workers)
    elif args.command == "local":
        if args.work:
            figures = local_work_floor(args.root, _read_keys(args.keys), args.workers)
        else:
            figures = local_floor(args.root, args.out, _read_keys(args.keys), args.workers)
    else:
        prefixes = [p if p.endswith("/") else p + "/" for p in args.prefix]
        figures = list_only(args.bucket, prefixes, args.workers)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
