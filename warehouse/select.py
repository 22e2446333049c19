"""Select images from the catalogue, count them, and fetch them.

    python -m warehouse.select --group training --modality ct --positive --since 2020-03-01
    python -m warehouse.select --group training --modality xray --download data/xray
    python -m warehouse.select --group training --query "Manufacturer = 'ACME' AND Rows > 1000"

Reads the newest ``images.parquet`` of ``<bucket>-processed`` (``latest.csv`` names it,
``dataprocess`` writes it), prints how many images, studies and patients and how many bytes
match, and with ``--download DIR`` fetches the images and their metadata files into ``DIR`` in
the warehouse layout, through a bounded pool of workers, with a progress bar; rerun the same
command to resume (files already there are skipped). The rules are in
``warehouse.catalogue.selection``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from warehouse import __version__
from warehouse.catalogue.selection import (
    Filters,
    SelectionError,
    download,
    downloads,
    read_catalogue,
    select,
    summary,
)
from warehouse.core.config import ConfigError, settings_from_env
from warehouse.core.errors import ExpectedError
from warehouse.core.keys import GROUPS, MODALITY_FOLDERS
from warehouse.storage.url import storage_from_url

PROG = "warehouse-select"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def command_parser() -> argparse.ArgumentParser:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Select images of the WAREHOUSE_BUCKET warehouse from its catalogue "
        "(images.parquet of the newest dataprocess batch), count them, and download them.",
        epilog="""environment:
  WAREHOUSE_BUCKET   the warehouse (name, s3://name or file:///path); its catalogue is read
                     from <bucket>-processed
  WAREHOUSE_WORKERS  parallel downloads (default 32)

A selection may not mix training and validation images unless --both-groups is given.
exit codes: 0 done; 1 a read or a download failed (rerun to resume); 2 bad arguments,
  settings, or a selection refused (a bad query, mixed groups, a catalogue row whose keys
  are not an image of the selection and its metadata)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--group", action="append", choices=GROUPS, default=[])
    parser.add_argument(
        "--modality",
        action="append",
        choices=sorted(set(MODALITY_FOLDERS.values())),
        default=[],
        help="modality folder (repeat for several)",
    )
    parser.add_argument(
        "--centre", action="append", default=[], help="SubmittingCentre, exactly (repeatable)"
    )
    parser.add_argument("--since", type=_date, help="uploaded on or after this date")
    parser.add_argument("--until", type=_date, help="uploaded on or before this date")
    status = parser.add_mutually_exclusive_group()
    status.add_argument("--positive", action="store_true", help="covid positive patients only")
    status.add_argument("--negative", action="store_true", help="covid negative patients only")
    parser.add_argument(
        "--query",
        metavar="SQL",
        help="a SQL expression (a WHERE clause's) on the catalogue's columns, run by DuckDB "
        "with no access to files, network or extensions, e.g. "
        "\"Manufacturer = 'SIEMENS' AND Rows >= 2048\"",
    )
    parser.add_argument(
        "--both-groups",
        action="store_true",
        help="allow a selection of training and validation images together",
    )
    parser.add_argument("--download", metavar="DIR", type=Path, help="fetch the selection into DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def filters_of(args: argparse.Namespace) -> Filters:
    """The `Filters` the arguments name."""
    positive = True if args.positive else False if args.negative else None
    return Filters(
        groups=tuple(args.group),
        modalities=tuple(args.modality),
        centres=tuple(args.centre),
        since=args.since,
        until=args.until,
        positive=positive,
        query=args.query,
        both_groups=args.both_groups,
    )


def main(argv=None) -> int:
    """Command line entry point (``python -m warehouse.select``, ``warehouse-select``)."""
    args = command_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    storage = storage_from_url(settings.bucket, workers=settings.workers)
    try:
        key, catalogue = read_catalogue(storage.processed())
        chosen = select(catalogue, filters_of(args))
    except ExpectedError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, SelectionError) else EXIT_FAILED
    print(f"catalogue: {storage.processed().url}/{key} ({len(catalogue):,} images)")
    for line in summary(chosen):
        print(line)
    if args.download is None:
        return EXIT_OK
    try:
        items = downloads(chosen, args.group or GROUPS)
    except SelectionError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    total = sum(item.size for item in items if item.size is not None)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="download",
        disable=args.no_progress,
        file=sys.stderr,
    )

    def done(item, count):
        if item.size is not None:
            bar.update(item.size)

    try:
        with ThreadPoolExecutor(settings.workers, thread_name_prefix="download") as pool:
            written, skipped = download(
                storage, args.download, items, pool.submit, done, window=4 * settings.workers
            )
    except ExpectedError as exc:
        bar.close()
        print(f"{PROG}: download stopped: {exc} (rerun to resume)", file=sys.stderr)
        return EXIT_FAILED
    bar.close()
    print(f"downloaded into {args.download}: {written:,} files written, {skipped:,} already there")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
