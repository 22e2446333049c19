"""Select images from the catalogue, count them, and fetch them.

    python -m warehouse.select --group training --modality ct --positive --since 2020-03-01
    python -m warehouse.select --group training --modality xray --download data/xray
    python -m warehouse.select --group training --query "Manufacturer = 'ACME' AND Rows > 1000"
    python -m warehouse.select --group training --modality ct --positive --release ct-pos-v1
    python -m warehouse.select --release ct-pos-v1 --download data/ct-pos-v1
    python -m warehouse.select --releases
    python -m warehouse.select --sql "SELECT Manufacturer, count(*) FROM images GROUP BY 1"
    python -m warehouse.select --group training --modality ct --output ct.parquet

Reads the newest catalogue (``images/``) of ``<bucket>-processed`` (``latest.csv`` names it,
``dataprocess`` writes it), prints how many images, studies and patients and how many bytes
match, and with ``--download DIR`` fetches the images and their metadata files into ``DIR`` in
the warehouse layout, through a bounded pool of workers, with a progress bar; rerun the same
command to resume (files already there are skipped; Ctrl-C stops it with one line, exit 130,
and leaves no partial file). A download of 0 images still creates ``DIR``, so what follows
finds the folder, empty. Arguments that cannot select what they mean are refused before
anything is read (a reversed date range) or once the catalogue is read (a ``--centre`` the
catalogue does not hold: the known centres are listed), exit 2. ``--release NAME`` writes
the selection once as a release (``warehouse.catalogue.releases``), which ``--release NAME
--download DIR`` fetches again exactly, later; ``--sql`` runs one read-only query over the
batch's views and ``--output`` writes a selection (with its labels) or a query's result to a
Parquet or CSV file. The rules are in ``warehouse.catalogue.selection``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from warehouse import __version__
from warehouse.catalogue.releases import (
    list_releases,
    manifest_bytes,
    manifest_frame,
    name_problem,
    pins_of,
    read_release,
    refuse_written,
    release_document,
    release_fetches,
    write_release,
)
from warehouse.catalogue.selection import (
    RESULT_ROWS,
    ChangedObjects,
    Filters,
    SelectionError,
    batch_files,
    download,
    downloads,
    frame_table,
    open_views,
    patient_outcomes,
    read_catalogue,
    read_complete_volumes,
    select,
    sql_result,
    summary,
    with_labels,
    written_in_place,
)
from warehouse.core.config import ConfigError, settings_from_env
from warehouse.core.errors import ExpectedError, StorageError, StoreUnavailable
from warehouse.core.keys import GROUPS, MODALITY_FOLDERS
from warehouse.core.text import escape_controls, quote
from warehouse.dashboard.cells import csv_text
from warehouse.storage.files import StoredFile
from warehouse.storage.url import storage_from_url

PROG = "warehouse-select"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: A release's download that cannot be exact: objects changed with no version to fall back on.
EXIT_CHANGED = 3
#: The file formats ``--output`` writes, by suffix.
OUTPUT_SUFFIXES = (".parquet", ".csv")
#: Rows of a ``--sql`` result shown on the screen (``--output`` writes them all).
SHOWN_ROWS = 20
#: The arguments that make a selection (``--release NAME`` without them names a release).
SELECTION_ARGUMENTS = (
    "group",
    "modality",
    "centre",
    "since",
    "until",
    "positive",
    "negative",
    "query",
    "both_groups",
    "exclude_identifying",
    "complete_volumes",
)
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


def _release_name(text: str) -> str:
    problem = name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(escape_controls(problem))
    return text


def _output(text: str) -> Path:
    if not text.lower().endswith(OUTPUT_SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not a .parquet or .csv file (the suffix says which to write)"
        )
    return Path(text)


def command_parser() -> argparse.ArgumentParser:
    """The command line (``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Select images of the WAREHOUSE_BUCKET warehouse from its catalogue "
        "(images/ of the newest dataprocess batch), count them, and download them.",
        epilog="""environment:
  WAREHOUSE_BUCKET   the warehouse (name, s3://name or file:///path); its catalogue is read
                     from <bucket>-processed
  WAREHOUSE_WORKERS  parallel downloads (default 32)
  (`warehouse select --bucket B --workers N ...` sets both)

A selection may not mix training and validation images unless --both-groups is given.
--release NAME with selection arguments writes the selection once, as release NAME (in
<bucket>-processed/releases/NAME/); without them it names a written release, which
--download DIR fetches exactly (by S3 version where there is one, each file's size and
checksum checked).
exit codes: 0 done; 1 a read or a download failed (rerun to resume); 2 bad arguments,
  settings (a missing store too), or a selection refused (a bad query, mixed groups, a
  reversed date range, a centre the catalogue does not hold, no catalogue, a catalogue row
  whose keys are not an image of the selection and its metadata, a release name already
  written or not there, a bad --sql); 3 a release's objects changed with no version to
  fall back on (each named; the other files are downloaded); 130 stopped by Ctrl-C (rerun
  the same command to resume)""",
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
        "--exclude-identifying",
        action="store_true",
        help="leave out the images whose header the identifying-data screen flagged (a "
        "patient name, a full birth date, ...: column identifying_attributes); images never "
        "screened (filed before the screen, null in that column) are kept",
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
    parser.add_argument(
        "--release",
        metavar="NAME",
        type=_release_name,
        help="with selection arguments: write the selection once as release NAME (letters, "
        "digits, . _ -; at most 64); alone: the release NAME written before (--download DIR "
        "fetches exactly its files, --output FILE writes its manifest)",
    )
    parser.add_argument(
        "--releases", action="store_true", help="list the releases written, and stop"
    )
    parser.add_argument(
        "--sql",
        metavar="SQL",
        help="run one read-only SELECT over the newest batch's views images, patients (and "
        "series, when the batch has it), with no access to files, network or extensions; "
        "prints the first rows, --output FILE writes them all",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        type=_output,
        help="write the selection with its labels (or the --sql result) to FILE, .parquet "
        "or .csv (CSV cells that a spreadsheet would run as a formula start with ')",
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
        exclude_identifying=args.exclude_identifying,
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
    selecting = any(getattr(args, name) for name in SELECTION_ARGUMENTS)
    problem = _combination_problem(args, selecting)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="select")
    try:
        if args.releases:
            return _list_releases(storage)
        if args.sql is not None:
            return _run_sql(storage, args)
        if args.release is not None and not selecting:
            items = _show_release(storage, args)
        else:
            items = _selection(storage, args, pool)
    except ExpectedError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        usage = isinstance(exc, SelectionError | StoreUnavailable)  # a missing store: a setting
        return EXIT_USAGE if usage else EXIT_FAILED
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if args.download is None:
        return EXIT_OK
    try:
        args.download.mkdir(parents=True, exist_ok=True)  # there, even for 0 images
    except OSError as exc:
        print(f"{PROG}: cannot make the folder {str(args.download)!r}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _download(storage, args, items, settings.workers)


def _combination_problem(args: argparse.Namespace, selecting: bool) -> str | None:
    """Why the arguments do not go together, or None (before anything is read)."""
    if args.releases and (selecting or args.release or args.sql or args.download or args.output):
        return "--releases lists the releases: give it alone"
    if args.sql is not None and (selecting or args.release or args.download):
        return (
            "--sql runs a query of its own: it takes no selection argument, --release or "
            "--download (only --output)"
        )
    return None


def _selection(storage, args: argparse.Namespace, pool: ThreadPoolExecutor) -> list:
    """Select and print what was selected; write the release or output asked for.

    Returns the files a download fetches.
    """
    processed = storage.processed()
    key, catalogue = read_catalogue(processed)
    problem = centre_problem(catalogue, args.centre)
    if problem:
        raise SelectionError(problem)
    volumes = read_complete_volumes(processed) if args.complete_volumes else None
    chosen = select(catalogue, filters_of(args), volumes)
    print(f"catalogue: {processed.url}/{key} ({len(catalogue):,} images)")
    for line in summary(chosen):
        print(line)
    if args.download is None and args.release is None and args.output is None:
        return []
    items = (
        []
        if args.download is None and args.release is None
        else downloads(chosen, args.group or GROUPS)
    )
    if args.release is None and args.output is None:
        return items
    batch = batch_files(processed)
    if not key.startswith(batch.folder + "/"):
        raise SelectionError("a new batch was published while the catalogue was read: run again")
    labelled = with_labels(chosen, patient_outcomes(processed, batch))
    first, size = batch.files["images"][0]
    types = pq.ParquetFile(StoredFile(processed, first, size)).schema_arrow
    if args.release is not None:
        if chosen.empty:
            raise SelectionError("the selection holds no image: no release written")
        refuse_written(processed, args.release)  # before every file is pinned
        pins = pins_of(storage, [item.key for item in items], pool.submit)
        frame = manifest_frame(labelled, pins)
        manifest = manifest_bytes(frame, types)
        source = {
            "warehouse": storage.url,
            "batch": batch.folder,
            "catalogue": key,
            "product_version": __version__,
        }
        document = release_document(
            args.release, frame, manifest, filters_of(args), source, dt.datetime.now(dt.UTC)
        )
        write_release(processed, args.release, manifest, document)
        print(_release_line(args.release, document, f"written to {processed.url}/releases/"))
        items = release_fetches(frame)
    if args.output is not None:
        table = frame_table(labelled, types)
        count = write_output(args.output, table.schema, table.to_batches(RESULT_ROWS))
        print(f"written {args.output}: {count:,} rows, {table.num_columns} columns")
    return items


def _release_line(name: str, document: dict, where: str) -> str:
    """One line saying what a release holds (its document's values escaped)."""
    counts, pins = document.get("counts"), document.get("pins")

    def number(mapping: object, field: str) -> str:
        value = mapping.get(field) if isinstance(mapping, dict) else None
        return f"{value:,}" if isinstance(value, int) else "?"

    created = escape_controls(str(document.get("created")))[:40]
    batch = escape_controls(str(document.get("batch")))[:60]
    pinned = ", ".join(
        f"{number(pins, field)} by {how}"
        for field, how in (
            ("images_with_version", "S3 version"),
            ("images_by_etag_only", "ETag only (no version)"),
            ("images_by_sha256", "SHA-256 (no version)"),
        )
        if number(pins, field) not in ("0", "?")
    )
    return (
        f"release {name} {where}: {number(counts, 'images')} images, "
        f"{number(counts, 'patients')} patients, {number(counts, 'image_bytes')} bytes; "
        f"written {created} from batch {batch}; images pinned {pinned or 'by nothing'}"
    )


def _show_release(storage, args: argparse.Namespace) -> list:
    """Print what release ``args.release`` holds; write its manifest to ``--output``.

    Returns the files a download fetches.
    """
    processed = storage.processed()
    document, frame = read_release(processed, args.release)
    print(_release_line(args.release, document, f"in {processed.url}/releases/"))
    items = release_fetches(frame)
    if args.output is not None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        count = write_output(args.output, table.schema, table.to_batches(RESULT_ROWS))
        print(f"written {args.output}: {count:,} rows, {table.num_columns} columns")
    return items


def _list_releases(storage) -> int:
    processed = storage.processed()
    found = 0
    for release in list_releases(processed):
        found += 1
        if release.document is None:
            print(f"  {release.name}: {escape_controls(str(release.problem))}")
        else:
            print("  " + _release_line(release.name, release.document, "").replace(" :", ":"))
    print(f"{found:,} releases in {processed.url}/releases/")
    return EXIT_OK


def _run_sql(storage, args: argparse.Namespace) -> int:
    """Run ``--sql`` over the newest batch's views.

    Prints its first rows, or writes them all to ``--output``.
    """
    processed = storage.processed()
    with tempfile.TemporaryDirectory(prefix="warehouse-select-") as work:
        batch, connection = open_views(processed, Path(work))
        try:
            print(f"views of {processed.url}/{batch.folder}/: {', '.join(batch.files)}")
            reader = sql_result(connection, args.sql)
            if args.output is not None:
                count = write_output(args.output, reader.schema, reader)
                print(f"written {args.output}: {count:,} rows, {len(reader.schema)} columns")
            else:
                _print_rows(reader)
        finally:
            connection.close()
    return EXIT_OK


def _print_rows(reader: pa.RecordBatchReader) -> None:
    """Print the first `SHOWN_ROWS` rows of a result, every character escaped, and its count."""
    shown: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        if count < SHOWN_ROWS:
            shown.append(batch.slice(0, SHOWN_ROWS - count))
        count += batch.num_rows
    table = pa.Table.from_batches(shown, schema=reader.schema)
    text = table.to_pandas().to_string(index=False, max_colwidth=60)
    for line in text.splitlines():
        print(escape_controls(line))
    more = (
        f" (the first {SHOWN_ROWS} shown; --output FILE writes them all)"
        if count > SHOWN_ROWS
        else ""
    )
    print(f"{count:,} rows{more}")


def _csv_ready(batch: pa.RecordBatch) -> pd.DataFrame:
    """Return a batch as the frame `cells.csv_text` writes.

    List and struct values become Python lists and dicts (written as their text); the rest
    is as pandas makes it.
    """
    frame = batch.to_pandas()
    for index, field in enumerate(batch.schema):
        if pa.types.is_nested(field.type):
            frame[field.name] = pd.Series(batch.column(index).to_pylist(), dtype="object")
    return frame


def write_output(path: Path, schema: pa.Schema, batches: Iterable) -> int:
    """Write ``batches`` (Arrow record batches of ``schema``) to ``path``, streamed.

    Parquet or CSV, by its suffix; returns the rows written.

    The file is written under a temporary name beside it and renamed into place, so it is
    never seen half-written. CSV is written by `cells.csv_text`, the one CSV writer of the
    product: a text cell a spreadsheet would run as a formula starts with ``'``.

    Raises
    ------
    SelectionError
        When the file cannot be written.
    """
    count = 0
    with written_in_place(path) as handle:
        if path.suffix.lower() == ".csv":
            header = pa.RecordBatch.from_pylist([], schema=schema)
            handle.write(csv_text(_csv_ready(header)).encode("utf-8"))
            for batch in _batches(batches):
                handle.write(csv_text(_csv_ready(batch), header=False).encode("utf-8"))
                count += batch.num_rows
        else:
            with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
                for batch in _batches(batches):
                    writer.write_batch(batch)
                    count += batch.num_rows
    return count


def _batches(batches: Iterable) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        if batch.num_rows:
            yield batch


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
    except ChangedObjects as exc:
        bar.close()
        print(f"{PROG}: release {args.release}: {exc}", file=sys.stderr)
        counted = f"{exc.written:,} files written, {exc.skipped:,} already there"
        print(f"downloaded into {args.download}: {counted}")
        return EXIT_CHANGED
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
