#!/usr/bin/env python3
"""Download and decode the latest S3 Inventory of the warehouse bucket.

Examples::

    python infrastructure/tools/get_inventory.py --bucket warehouse-123456789012-prod -o inv.csv
    python infrastructure/tools/get_inventory.py --bucket warehouse-123456789012-prod | grep ,raw-

The stack configures a daily CSV inventory (id ``daily-full-inventory``) delivered to
``<bucket>-inventory``. S3 writes, for each delivery::

    <bucket>/daily-full-inventory/<YYYY-MM-DDTHH-MMZ>/manifest.json
    <bucket>/daily-full-inventory/hive/dt=<YYYY-MM-DD-HH-MM>/symlink.txt
    <bucket>/daily-full-inventory/data/<uuid>.csv.gz

This tool takes the newest ``manifest.json`` (it names the gzipped CSV fragments, their MD5 and
the column order), checks and decompresses each fragment, URL-decodes the keys (S3 writes them
URL-encoded in CSV inventories) and writes one CSV with the header
``bucket,key,size,last_modified``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_plus

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infrastructure.tools.aws_errors import aws_error_exit
from warehouse import __version__

CONFIG_ID = "daily-full-inventory"
COLUMNS = ("bucket", "key", "size", "last_modified")
_SCHEMA_NAMES = {
    "Bucket": "bucket",
    "Key": "key",
    "Size": "size",
    "LastModifiedDate": "last_modified",
}
_DELIVERY = re.compile(r"/(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}Z)/$")


def latest_manifest_key(
    client, inventory_bucket: str, bucket: str, config_id: str = CONFIG_ID
) -> str:
    """Return the key of the newest ``manifest.json`` for a bucket's inventory.

    Parameters
    ----------
    client : botocore.client.S3
        The S3 client.
    inventory_bucket : str
        Where the inventory is delivered (``<bucket>-inventory``).
    bucket : str
        The inventoried bucket.
    config_id : str
        The inventory configuration id.

    Returns
    -------
    str
        ``<bucket>/<config_id>/<YYYY-MM-DDTHH-MMZ>/manifest.json`` with the latest timestamp.

    Raises
    ------
    LookupError
        When no delivery exists yet (the first one arrives within 48 hours of the setup).
    """
    prefix = f"{bucket}/{config_id}/"
    deliveries = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=inventory_bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            if _DELIVERY.search(common["Prefix"]):
                deliveries.append(common["Prefix"])
    if not deliveries:
        raise LookupError(f"no inventory delivered yet under s3://{inventory_bucket}/{prefix}")
    return max(deliveries) + "manifest.json"  # ISO-like timestamps sort by time


def read_fragment(client, inventory_bucket: str, key: str, md5: str | None = None) -> bytes:
    """Download one gzipped CSV fragment, check its MD5 and return it decompressed.

    Parameters
    ----------
    client : botocore.client.S3
        The S3 client.
    inventory_bucket : str
        The inventory bucket.
    key : str
        The fragment's key, as listed in the manifest.
    md5 : str, optional
        The fragment's ``MD5checksum`` from the manifest.

    Returns
    -------
    bytes
        The CSV text, UTF-8 encoded.

    Raises
    ------
    ValueError
        When the MD5 does not match.
    """
    body = client.get_object(Bucket=inventory_bucket, Key=key)["Body"].read()
    if md5 and hashlib.md5(body, usedforsecurity=False).hexdigest() != md5.lower():
        raise ValueError(f"MD5 mismatch for s3://{inventory_bucket}/{key}")
    return gzip.decompress(body)


def iter_rows(client, inventory_bucket: str, manifest: dict) -> Iterator[dict]:
    """Yield the inventory rows of a manifest, keys decoded.

    Parameters
    ----------
    client : botocore.client.S3
        The S3 client.
    inventory_bucket : str
        The inventory bucket.
    manifest : dict
        The parsed ``manifest.json`` (``fileFormat`` CSV, ``fileSchema``, ``files``).

    Yields
    ------
    dict
        ``bucket``, ``key``, ``size``, ``last_modified`` (empty when the column is absent).

    Raises
    ------
    ValueError
        When the inventory is not in CSV format or has no Key column.
    """
    if manifest.get("fileFormat", "CSV").upper() != "CSV":
        raise ValueError(f"only CSV inventories are supported, not {manifest['fileFormat']}")
    schema = [name.strip() for name in manifest["fileSchema"].split(",")]
    if "Key" not in schema:
        raise ValueError(f"no Key column in the inventory schema: {manifest['fileSchema']}")
    wanted = {_SCHEMA_NAMES[name]: i for i, name in enumerate(schema) if name in _SCHEMA_NAMES}
    for fragment in manifest["files"]:
        text = read_fragment(client, inventory_bucket, fragment["key"], fragment.get("MD5checksum"))
        for values in csv.reader(io.StringIO(text.decode("utf-8"))):
            if not values:
                continue
            row = {column: values[i] if i < len(values) else "" for column, i in wanted.items()}
            row["key"] = unquote_plus(row["key"])
            yield {column: row.get(column, "") for column in COLUMNS}


def download_inventory(
    client, bucket: str, out, inventory_bucket: str | None = None, config_id: str = CONFIG_ID
) -> tuple[str, int]:
    """Write the latest inventory of ``bucket`` as decoded CSV.

    Parameters
    ----------
    client : botocore.client.S3
        The S3 client.
    bucket : str
        The inventoried (warehouse) bucket.
    out : text file
        Where the CSV goes (header ``bucket,key,size,last_modified``).
    inventory_bucket : str, optional
        Default ``<bucket>-inventory``.
    config_id : str
        The inventory configuration id.

    Returns
    -------
    tuple
        The manifest key used and the number of rows written.
    """
    inventory_bucket = inventory_bucket or f"{bucket}-inventory"
    manifest_key = latest_manifest_key(client, inventory_bucket, bucket, config_id)
    manifest = json.loads(
        client.get_object(Bucket=inventory_bucket, Key=manifest_key)["Body"].read()
    )
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in iter_rows(client, inventory_bucket, manifest):
        writer.writerow(row)
        count += 1
    return manifest_key, count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``-h`` lists the options).

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    argparse.Namespace
        The options.
    """
    parser = argparse.ArgumentParser(
        description="Download the latest S3 Inventory of the warehouse bucket as decoded CSV "
        "(bucket,key,size,last_modified).",
    )
    parser.add_argument(
        "--bucket", required=True, help="the warehouse bucket (WarehouseBucketName)"
    )
    parser.add_argument("--inventory-bucket", help="default: <bucket>-inventory")
    parser.add_argument(
        "--config-id", default=CONFIG_ID, help=f"inventory id (default {CONFIG_ID})"
    )
    parser.add_argument("-o", "--output", type=Path, help="CSV file (default: standard output)")
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Download the inventory.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 on success, 1 when there is no inventory or it cannot be read, 2 when the AWS
        credentials or region are missing or refused (the error is printed, in one line).
    """
    options = parse_args(argv)
    try:
        client = boto3.client("s3", region_name=options.region)
        if options.output is None:
            manifest_key, count = download_inventory(
                client, options.bucket, sys.stdout, options.inventory_bucket, options.config_id
            )
        else:
            with options.output.open("w", encoding="utf-8", newline="") as out:
                manifest_key, count = download_inventory(
                    client, options.bucket, out, options.inventory_bucket, options.config_id
                )
    except (LookupError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        return aws_error_exit(error)
    print(f"{count} objects from {manifest_key}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
