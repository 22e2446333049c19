"""The batch's image catalogue, written as segments (`catalogue.segments`).

Only the segments the day changes are written, the others copied from the last batch as they
are.
A segment of the last batch is written again when it holds a row a part of the day replaces,
or a row of a patient whose clinical summary changed (its joined columns would be stale); the
day's rows make a new segment; then the newest segments are merged by `merged_tail`. A full
merge (a first batch, a reconcile, a backlog) writes one segment.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.catalogue.merge import (
    MERGED_SCHEMA,
    CatalogueScan,
    SegmentCopies,
    day_batches,
    kept_batches,
    merged_batches,
)
from warehouse.catalogue.segments import merged_tail
from warehouse.storage.base import Storage

#: For a table of catalogue rows, the columns each row's patient adds (its clinical summary).
SummaryOf = Callable[[pa.Table], dict[str, pa.Array]]


@dataclass(frozen=True)
class SegmentPlan:
    """One segment of the batch's catalogue: copied from the last batch or a local file.

    Attributes
    ----------
    rows, size : int
        Its rows and bytes.
    copy_from : str or None
        The last batch's segment it is (a key of the processed store), copied as it is.
    path : str or None
        Otherwise the local file this run wrote.
    """

    rows: int
    size: int
    copy_from: str | None = None
    path: str | None = None


@dataclass
class _Source:
    # rows of one segment to be: carried as it is (``carried``: key, size) or written from
    # ``batches`` (every source merged into it)
    rows: int
    batches: list[Callable[[], Iterator[pa.Table]]]
    carried: tuple[str, int] | None = None


def _no_keys(number: int) -> pa.Array:
    # (a segment no row replaces)
    return pa.array([], pa.string())


def _holds(file: pq.ParquetFile, column: str, values: pa.Array) -> bool:
    """Tell whether a catalogue file has a row whose ``column`` (text) is one of ``values``.

    A row group whose statistics say no value can be there is not read (the rows are sorted
    by warehouse key, so a patient's are in a few row groups).
    """
    if not len(values):
        return False
    if column not in file.schema_arrow.names:
        return True  # (cannot tell: written again)
    at = file.schema.names.index(column)
    wanted = sorted(v for v in values.to_pylist() if v is not None)
    for group in range(file.num_row_groups):
        if not _may_hold(file.metadata.row_group(group).column(at).statistics, wanted):
            continue
        found = pc.is_in(file.read_row_group(group, columns=[column]).column(0), values)
        if pc.any(found).as_py():
            return True
    return False


def _may_hold(statistics: pq.Statistics | None, wanted: list[str]) -> bool:
    """Whether a column chunk of these ``statistics`` may hold one of ``wanted`` (sorted)."""
    if statistics is None or not statistics.has_min_max:
        return True
    lowest, highest = statistics.min, statistics.max
    if not isinstance(lowest, str) or not isinstance(highest, str):
        return True
    first = bisect.bisect_left(wanted, lowest)
    return first < len(wanted) and wanted[first] <= highest


def _kept_copy(copies: SegmentCopies, number: int, left_out: pa.Array) -> Iterator[pa.Table]:
    """Yield the rows of the ``number``-th segment of the last batch but those left out.

    From its local copy (made now); ``left_out``: the warehouse keys of the rows left out.
    """
    return kept_batches(copies.path(number), left_out)


def _sources(
    scan: CatalogueScan, changed: pa.Array | None, processed: Storage, workdir: str
) -> list[_Source]:
    """List the segments the batch's catalogue is made of, before the newest are merged."""
    previous, layers = scan.previous, scan.layers
    if layers is not None:
        copies, replaced_in = layers.previous, layers.replaced_in
    elif scan.reused is not None and previous is not None and previous.current:
        if changed is not None and not len(changed):  # nothing new, no summary changed
            return [_Source(s.rows, [], (s.key, s.size)) for s in previous.segments]
        # (no replaced row: a segment is written again only for a changed summary)
        copies, replaced_in = SegmentCopies(previous, processed, workdir), _no_keys
    else:  # one merged file: written as one segment
        return [_Source(scan.rows, [lambda: merged_batches(scan, processed)])]
    assert previous is not None
    sources = []
    for number, segment in enumerate(previous.segments):
        left_out = replaced_in(number)
        stale = (
            changed is None
            or len(left_out) > 0
            or _holds(copies.file(number), "PatientID", changed)
        )
        rows: list[Callable[[], Iterator[pa.Table]]] = [
            functools.partial(_kept_copy, copies, number, left_out)
        ]
        sources.append(_Source(segment.rows, rows, None if stale else (segment.key, segment.size)))
    if layers is not None:
        new = sum(int(mask.sum()) for _, mask, _ in layers.staged)
        sources.append(_Source(new, [lambda: day_batches(layers)]))
    return sources


def _write(batches: Iterator[pa.Table], summary_of: SummaryOf, path: str) -> tuple[int, int]:
    """Write catalogue rows with their clinical summary to ``path``; (rows, bytes)."""
    rows, writer = 0, None
    try:
        for table in batches:
            for name, column in summary_of(table).items():
                table = table.append_column(name, column)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
        if writer is None:  # no row: an empty table of the same columns
            empty = MERGED_SCHEMA.empty_table()
            for name, column in summary_of(empty).items():
                empty = empty.append_column(name, column)
            pq.write_table(empty, path)
    finally:
        if writer is not None:
            writer.close()
    return rows, os.path.getsize(path)


def write_segments(
    scan: CatalogueScan,
    summary_of: SummaryOf,
    changed: pa.Array | None,
    processed: Storage,
    workdir: str,
) -> list[SegmentPlan]:
    """Write the segments of the batch's catalogue that change; plan the others' copies.

    Parameters
    ----------
    scan : CatalogueScan
        The run's merge: the last batch's segments and the day's parts, or one merged file.
    summary_of : callable
        The clinical summary columns of a table of rows (`dashboard.images.clinical_summary`).
    changed : pyarrow.Array or None
        The patients whose clinical summary differs from the last batch's (None: not known,
        every segment of the last batch is written again).
    processed : Storage
        The processed store (the last batch's segments).
    workdir : str
        A local folder for the segments written.

    Returns
    -------
    list of SegmentPlan
        The batch's segments in order (at least one: an empty catalogue has an empty segment).
    """
    sources = _sources(scan, changed, processed, workdir)
    tail = merged_tail([source.rows for source in sources])
    # (segments carried without a local copy are not merged: the last batch merged them)
    if tail > 1 and all(source.batches for source in sources[-tail:]):
        merged = sources[-tail:]
        producers = [producer for source in merged for producer in source.batches]
        sources[-tail:] = [_Source(sum(source.rows for source in merged), producers)]
    plans: list[SegmentPlan] = []
    for number, source in enumerate(sources):
        if source.carried is not None:
            plans.append(SegmentPlan(source.rows, source.carried[1], copy_from=source.carried[0]))
            continue
        path = os.path.join(workdir, f"segment-{number:06d}.parquet")
        batches = itertools.chain.from_iterable(produce() for produce in source.batches)
        rows, size = _write(batches, summary_of, path)
        if rows or not plans and number == len(sources) - 1:
            plans.append(SegmentPlan(rows, size, path=path))
        else:
            os.remove(path)  # (a segment left empty: not published)
    return plans
