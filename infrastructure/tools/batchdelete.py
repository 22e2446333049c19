#!/usr/bin/env python3
"""Delete the keys listed in a file, 1,000 per request, with a dry run.

Examples::

    python infrastructure/tools/batchdelete.py --bucket warehouse-1234-dev keys.txt --dry-run
    python infrastructure/tools/batchdelete.py --bucket warehouse-1234-dev keys.txt

The file holds one key per line (``-`` reads standard input); blank lines are skipped and a
repeated key is deleted once. On the versioned warehouse bucket a delete adds a delete marker:
the data stays as a noncurrent version until removed by other means.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infrastructure.tools.aws_errors import aws_error_exit
from warehouse import __version__

MAX_BATCH = 1000  # the DeleteObjects limit


def read_keys(lines: Iterable[str]) -> list[str]:
    """Return the keys of a listing, in order, without blanks or repeats.

    Only the line ending is removed: spaces are part of a key.

    Parameters
    ----------
    lines : iterable of str
        The file's lines.

    Returns
    -------
    list of str
        The keys.
    """
    keys = (line.rstrip("\r\n") for line in lines)
    return list(dict.fromkeys(key for key in keys if key.strip()))


def batches(keys: list[str], size: int = MAX_BATCH) -> Iterator[list[str]]:
    """Split keys into consecutive lists of at most ``size``.

    Parameters
    ----------
    keys : list of str
        The keys.
    size : int
        The batch size, 1 to 1,000.

    Yields
    ------
    list of str
        One batch.

    Raises
    ------
    ValueError
        When ``size`` is out of range.
    """
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_BATCH}, not {size}")
    for start in range(0, len(keys), size):
        yield keys[start : start + size]


def delete_keys(
    client, bucket: str, keys: list[str], *, batch_size: int = MAX_BATCH, dry_run: bool = False
) -> tuple[int, list[dict]]:
    """Delete keys with ``DeleteObjects``, one request per batch.

    Parameters
    ----------
    client : botocore.client.S3
        The S3 client.
    bucket : str
        The bucket.
    keys : list of str
        The keys to delete.
    batch_size : int
        Keys per request (at most 1,000).
    dry_run : bool
        Print ``would delete s3://bucket/key`` for each key and send nothing.

    Returns
    -------
    tuple
        The number of keys deleted (or that would be) and the errors S3 reported, each a dict
        with ``Key``, ``Code`` and ``Message``.
    """
    deleted, errors = 0, []
    for number, batch in enumerate(batches(keys, batch_size), start=1):
        if dry_run:
            for key in batch:
                print(f"would delete s3://{bucket}/{key}")
            deleted += len(batch)
            continue
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
        )
        batch_errors = response.get("Errors", [])
        errors.extend(batch_errors)
        deleted += len(batch) - len(batch_errors)
        print(
            f"batch {number}: {len(batch) - len(batch_errors)} deleted, {len(batch_errors)} errors"
        )
    return deleted, errors


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
        description="Delete the S3 keys listed in a file (one per line), 1,000 per request.",
    )
    parser.add_argument("keys_file", help="file with one key per line, or - for standard input")
    parser.add_argument("--bucket", required=True, help="the bucket to delete from")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    parser.add_argument(
        "--batch-size", type=int, default=MAX_BATCH, help=f"keys per request (1-{MAX_BATCH})"
    )
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    options = parser.parse_args(argv)
    if not 1 <= options.batch_size <= MAX_BATCH:
        parser.error(f"--batch-size must be between 1 and {MAX_BATCH}")
    return options


def main(argv: list[str] | None = None) -> int:
    """Delete the listed keys.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 when every key was deleted (or on a dry run), 1 when S3 refused a key or a request,
        2 when the AWS credentials or region are missing or refused (said in one line).
    """
    options = parse_args(argv)
    if options.keys_file == "-":
        keys = read_keys(sys.stdin)
    else:
        with Path(options.keys_file).open(encoding="utf-8") as lines:
            keys = read_keys(lines)
    try:
        client = None if options.dry_run else boto3.client("s3", region_name=options.region)
        deleted, errors = delete_keys(
            client, options.bucket, keys, batch_size=options.batch_size, dry_run=options.dry_run
        )
    except (BotoCoreError, ClientError) as error:  # the whole request refused, or never sent
        return aws_error_exit(error)
    for item in errors:
        print(
            f"error: {item.get('Key')}: {item.get('Code')} {item.get('Message', '')}".rstrip(),
            file=sys.stderr,
        )
    verb = "would be deleted" if options.dry_run else "deleted"
    print(f"{deleted} of {len(keys)} keys {verb} from {options.bucket}, {len(errors)} errors.")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
