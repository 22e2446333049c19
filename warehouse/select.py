"""Select images from the catalogue, count them, and fetch them.

    python -m warehouse.select --group training --modality ct --positive --since 2020-03-01
    python -m warehouse.select --group training --modality xray --download data/xray
    python -m warehouse.select --group training --query "Manufacturer = 'ACME' AND Rows > 1000"

Reads the newest ``images.parquet`` of ``<bucket>-processed`` (``latest.csv`` names it,
``dataprocess`` writes it), prints how many images, studies and patients and how many bytes
match, and with ``--download DIR`` fetches the images and their metadata files into ``DIR`` in
the warehouse layout, through a bounded pool of workers, with a progress bar; rerun the same
command to resume (files already there are skipped; Ctrl-C stops it with one line, exit 130,
and leaves no partial file). A download of 0 images still creates ``DIR``, so what follows
finds the folder, empty. Arguments that cannot select what they mean are refused before
anything is read (a reversed date range) or once the catalogue is read (a ``--centre`` the
catalogue does not hold: the known centres are listed), exit 2. The rules are in
``warehouse.catalogue.selection``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from warehouse import __version__
from warehouse.catalogue.selection import (
    Filters,
    SelectionError,
    download,
    downloads,
    read_catalogue,
    read_complete_volumes,
    select,
    summary,
)
from warehouse.core.config import ConfigError, settings_from_env
from warehouse.core.errors import ExpectedError, StorageError, StoreUnavailable
from warehouse.core.keys import GROUPS, MODALITY_FOLDERS
from warehouse.core.text import escape_controls, quote
from warehouse.storage.url import storage_from_url

PROG = "warehouse-select"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: The image folders a ``--modality`` names (``CT`` and ``ct`` alike; ``DX``, ``CR`` and
#: ``MR``, the DICOM modalities, name their folders).
MODALITY_CHOICES = tuple(sorted(set(MODALITY_FOLDERS.values())))
#: The most known centres an unknown ``--centre`` lists.
SHOWN_CENTRES = 30


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _modality(text: str) -> str:
    """The image folder a ``--modality`` names, whatever its case."""
    name = text.strip()
    if name.lower() in MODALITY_CHOICES:
        return name.lower()
    if name.upper() in MODALITY_FOLDERS:
        return MODALITY_FOLDERS[name.upper()]
    known = ", ".join(MODALITY_CHOICES)
    raise argparse.ArgumentTypeError(
        f"{quote(text)} is not a modality (choose from {known}, or DX, CR, CT, MR)"
    )


def _group(text: str) -> str:
    """The group a ``--group`` names, whatever its case."""
    if text.strip().lower() in GROUPS:
        return text.strip().lower()
    raise argparse.ArgumentTypeError(
        f"{quote(text)} is not a group (choose from training, validation)"
    )


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
  (`warehouse select --bucket B --workers N ...` sets both)

A selection may not mix training and validation images unless --both-groups is given.
exit codes: 0 done; 1 a read or a download failed (rerun to resume); 2 bad arguments,
  settings (a missing store too), or a selection refused (a bad query, mixed groups, a
  reversed date range, a centre the catalogue does not hold, no catalogue, a catalogue row
  whose keys are not an image of the selection and its metadata); 130 stopped by Ctrl-C
  (rerun the same command to resume)""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--group", action="append", type=_group, default=[], metavar="{training,validation}"
    )
    parser.add_argument(
        "--modality",
        action="append",
        type=_modality,
        default=[],
        metavar="{" + ",".join(MODALITY_CHOICES) + "}",
        help="modality folder, any case (repeat for several); DX, CR, CT and MR name theirs",
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
        "--complete-volumes",
        action="store_true",
        help="only images of series that are complete volumes (series.parquet's "
        "complete_volume: regular spacing, one orientation, no gap, no duplicate position)",
    )
    parser.add_argument(
        "--both-groups",
        action="store_true",
        help="allow a selection of training and validation images together",
    )
    parser.add_argument(
        "--download",
        metavar="DIR",
        type=Path,
        help="fetch the selection into DIR (created, even for 0 images)",
    )
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
        complete_volumes=args.complete_volumes,
    )


def centre_problem(catalogue: pd.DataFrame, centres: Iterable[str]) -> str | None:
    """Why ``centres`` (``--centre`` values) cannot select what they mean, or None.

    A centre no catalogue row holds is a typo far more often than a site without images: the
    message names it and lists the catalogue's centres (at most `SHOWN_CENTRES`, each quoted
    and bounded, the whole escaped: a centre is what an upload said), a centre that differs
    only in case first.
    """
    known = sorted({str(c) for c in catalogue["SubmittingCentre"].dropna()})
    missing = [centre for centre in centres if centre not in set(known)]
    if not missing:
        return None
    centre = missing[0]
    same_but_case = [k for k in known if k.casefold() == centre.casefold()]
    hint = f" (did you mean {quote(same_but_case[0])}?)" if same_but_case else ""
    shown = ", ".join(quote(k) for k in known[:SHOWN_CENTRES])
    more = f", and {len(known) - SHOWN_CENTRES:,} more" if len(known) > SHOWN_CENTRES else ""
    listed = f"the catalogue's {len(known):,} centres: {shown}{more}" if known else "none"
    # (quote is repr: every control already escaped; escape_controls holds the line anyway)
    return escape_controls(
        f"--centre {quote(centre)}: no image of that centre in the catalogue{hint}; {listed}"
    )


def main(argv=None) -> int:
    """Command line entry point (``python -m warehouse.select``, ``warehouse-select``)."""
    args = command_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.since is not None and args.until is not None and args.since > args.until:
        print(f"{PROG}: --since {args.since} is after --until {args.until}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _select(args)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped by Ctrl-C", file=sys.stderr)
        return EXIT_INTERRUPTED


def _select(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_env(os.environ)
        storage = storage_from_url(settings.bucket, workers=settings.workers)
    except (ConfigError, StorageError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        key, catalogue = read_catalogue(storage.processed())
        problem = centre_problem(catalogue, args.centre)
        if problem:
            raise SelectionError(problem)
        volumes = read_complete_volumes(storage.processed()) if args.complete_volumes else None
        chosen = select(catalogue, filters_of(args), volumes)
    except ExpectedError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        usage = isinstance(exc, SelectionError | StoreUnavailable)  # a missing store: a setting
        return EXIT_USAGE if usage else EXIT_FAILED
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
    try:
        args.download.mkdir(parents=True, exist_ok=True)  # there, even for 0 images
    except OSError as exc:
        print(f"{PROG}: cannot make the folder {str(args.download)!r}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _download(storage, args, items, settings.workers)


def _download(storage, args: argparse.Namespace, items: list, workers: int) -> int:
    """Fetch ``items`` into ``args.download`` with a progress bar; the exit code."""
    total = sum(item.size for item in items if item.size is not None)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="download",
        disable=args.no_progress,
        file=sys.stderr,
    )
    finished = [0]

    def done(item, count):
        finished[0] += 1
        if item.size is not None:
            bar.update(item.size)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="download")
    try:
        written, skipped = download(
            storage, args.download, items, pool.submit, done, window=4 * workers
        )
    except ExpectedError as exc:
        bar.close()
        print(f"{PROG}: download stopped: {exc} (rerun to resume)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        bar.close()
        print(
            f"{PROG}: download stopped by Ctrl-C after {finished[0]:,} of {len(items):,} files "
            "(every file written is whole): rerun the same command to resume",
            file=sys.stderr,
        )
        try:
            pool.shutdown(wait=True, cancel_futures=True)  # the files in flight end whole
        except KeyboardInterrupt:
            os._exit(EXIT_INTERRUPTED)  # a second Ctrl-C: at once
        return EXIT_INTERRUPTED
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    print(f"downloaded into {args.download}: {written:,} files written, {skipped:,} already there")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
