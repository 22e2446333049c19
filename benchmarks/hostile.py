"""Hostile uploads for the memory benchmark: files that made one loader process take
gigabytes, added to a generated tree (issue "uploads that get it wrong", item 4).

Each kind is about a hundredth of the added files' count, and all of them together make 2 % of
the tree's images (by default):

- images with a 20 MB private value before the pixel data (written sparse: the value's bytes
  are zeros the file system never stores);
- 1 GB ".dcm" files of garbage (random first bytes, sparse after them);
- images whose header holds 4,000,000 four-byte private elements (48 MB, under the header
  cap: "DICOM header too complex");
- clinical files of 100 and 200 MB (a record with one huge text field);
- 40 clinical files just under the 1 MiB limit whose centre or pseudonym is one long string,
  and 10 records of 20,000 fields each (read by the loader, then by ``dataprocess``);
- images whose header holds millions of tiny private elements.

Run ``python -m benchmarks.hostile --help``; `add_hostile_files` is what the harness calls.
``python -m benchmarks.hostile --header-elements N`` reads one header of ``N`` tiny elements
in this process and prints the time and the peak memory it took.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from warehouse.synthetic import build_dicom

MB = 1024 * 1024
PIXEL_TAG = b"\xe0\x7f\x10\x00OW"


def _write_sparse(path: Path, head: bytes, size: int, tail: bytes = b"") -> None:
    """Write ``head``, then zeros up to ``size - len(tail)`` (a hole), then ``tail``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.seek(size - len(tail))
        handle.write(tail)
        handle.truncate(size)  # writing nothing at the end does not make the file that long


def _large_private_value_image(path: Path, patient: str, n: int, value_bytes: int) -> None:
    """A valid DX image with a ``value_bytes`` private OB element just before its pixel data."""
    data = build_dicom(
        patient_id=patient,
        study_uid=f"1.2.826.0.1.3680043.10.9.{n}",
        series_uid=f"1.2.826.0.1.3680043.10.9.{n}.1",
        sop_uid=f"1.2.826.0.1.3680043.10.9.{n}.1.1",
        modality="DX",
    )
    at = data.index(PIXEL_TAG)
    creator = struct.pack("<HH2sH", 0x7FDF, 0x0010, b"LO", 4) + b"BIG "
    element = struct.pack("<HH2sHI", 0x7FDF, 0x1000, b"OB", 0, value_bytes)
    head, tail = data[:at] + creator + element, data[at:]
    _write_sparse(path, head, len(head) + value_bytes + len(tail), tail)


def _many_elements_image(path: Path, patient: str, n: int, elements: int) -> None:
    """A DX image with ``elements`` private UL elements (12 bytes each, tags ascending over
    the odd groups from 7001) before its pixel data, written 100,000 at a time."""
    data = build_dicom(
        patient_id=patient,
        study_uid=f"1.2.826.0.1.3680043.10.8.{n}",
        series_uid=f"1.2.826.0.1.3680043.10.8.{n}.1",
        sop_uid=f"1.2.826.0.1.3680043.10.8.{n}.1.1",
        modality="DX",
    )
    at = data.index(PIXEL_TAG)
    layout = [
        ("group", "<u2"),
        ("element", "<u2"),
        ("vr", "S2"),
        ("length", "<u2"),
        ("value", "<u4"),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data[:at])
        for first in range(0, elements, 100_000):
            index = np.arange(first, min(elements, first + 100_000), dtype=np.uint32)
            array = np.zeros(len(index), dtype=layout)
            array["group"] = 0x7001 + 2 * (index // 0xF000)
            array["element"] = 0x1000 + index % 0xF000
            array["vr"], array["length"], array["value"] = b"UL", 4, index
            handle.write(array.tobytes())
        handle.write(data[at:])


def _huge_clinical(path: Path, patient: str, centre: str, size: int) -> None:
    """A clinical record of about ``size`` bytes: one text field holds nearly all of it."""
    start = json.dumps({"Pseudonym": patient, "SubmittingCentre": centre, "Notes": ""})[:-2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(start)
        block = "x" * MB
        for _ in range(size // MB):
            handle.write(block)
        handle.write('"}')


DEFAULT_CLINICAL_SIZES = {200 * MB: 2, 100 * MB: 4}
#: Clinical files just under the default clinical-file limit (1 MiB) whose centre or
#: pseudonym is one long string: every one is read, and its refusal must stay small.
LONG_STRING_FILES = 40


def _long_string_clinical(path: Path, patient: str, field: str) -> None:
    """A record of just under 1 MiB whose ``field`` (``SubmittingCentre`` or ``Pseudonym``)
    is one string of nearly all of it."""
    record = {"Pseudonym": patient, "SubmittingCentre": "Trust", field: "K" * (MB - 200)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


def _wide_clinical(path: Path, patient: str, centre: str, fields: int) -> None:
    """A record with ``fields`` keys outside the clinical data dictionary."""
    record = {"Pseudonym": patient, "SubmittingCentre": centre}
    record.update((f"field {i:05d}", f"value {i}") for i in range(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


def add_hostile_files(
    root: Path,
    share: float = 0.02,
    images: int | None = None,
    clinical_sizes: dict[int, int] | None = None,
    header_elements: int = 4_000_000,
    long_strings: int = LONG_STRING_FILES,
    wide_records: int = 10,
) -> dict:
    """Add hostile files to the generated tree at ``root``; what was added, by kind.

    Parameters
    ----------
    root : Path
        A tree written by the synthetic generator (its ``config.json`` names the prefixes).
    share : float
        Hostile files per raw image of the tree.
    images : int, optional
        The tree's raw images (counted when omitted).
    clinical_sizes : dict, optional
        Size in bytes -> how many clinical files of that size (default: two of 200 MB and
        four of 100 MB).
    header_elements : int
        The tiny private elements in the header of each too complex image.
    long_strings : int
        Clinical files of just under 1 MiB whose centre or pseudonym is one long string
        (half of each), refused with a short report line.
    wide_records : int
        Clinical records of 20,000 fields each (filed: they are under every limit;
        ``dataprocess`` keeps only the clinical data dictionary's fields).
    """
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    prefix = config["raw_prefixes"][0].rstrip("/")
    centre = next(iter(config["sites"].get("split") or config["sites"]["training"]))
    if images is None:
        images = sum(1 for _ in root.glob("raw-*/*/images/*"))
    total = max(8, round(images * share))
    huge = DEFAULT_CLINICAL_SIZES if clinical_sizes is None else clinical_sizes
    garbage = max(1, total // 40)
    complex_headers = max(1, total // 40)
    big_values = total - garbage - complex_headers - sum(huge.values())
    folder = root / prefix / "2021-06-01"
    for n in range(big_values):
        patient = f"Covid{900000 + n}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        record = {"Pseudonym": patient, "SubmittingCentre": centre}
        (folder / "data" / f"{patient}_data.json").write_text(json.dumps(record))
        _large_private_value_image(folder / "images" / f"big-value-{n}.dcm", patient, n, 20 * MB)
    for n in range(garbage):
        _write_sparse(folder / "images" / f"garbage-{n}.dcm", os.urandom(256 * 1024), 1024 * MB)
    for n in range(complex_headers):
        path = folder / "images" / f"many-elements-{n}.dcm"
        _many_elements_image(path, f"Covid{980000 + n}", n, header_elements)
    for n in range(long_strings):
        patient = f"Covid{970000 + n}"
        field = "SubmittingCentre" if n % 2 else "Pseudonym"
        _long_string_clinical(folder / "data" / f"{patient}_data.json", patient, field)
    for n in range(wide_records):
        patient = f"Covid{960000 + n}"
        _wide_clinical(folder / "data" / f"{patient}_data.json", patient, centre, 20_000)
    written = 0
    for size, count in huge.items():
        for _ in range(count):
            patient = f"Covid{990000 + written}"
            _huge_clinical(folder / "data" / f"{patient}_data.json", patient, centre, size)
            written += 1
    return {
        "images with a 20 MB private value": big_values,
        "1 GB garbage .dcm files": garbage,
        f"images with {header_elements:,} tiny header elements": complex_headers,
        "clinical files of 100 or 200 MB": written,
        "clinical files of 1 MiB with one long centre or pseudonym": long_strings,
        "clinical records of 20,000 fields": wide_records,
        "hostile files": big_values
        + garbage
        + complex_headers
        + written
        + long_strings
        + wide_records,
    }


def read_many_elements(elements: int) -> dict:
    """Read the header of an image of ``elements`` tiny private elements from a local store
    (ranged reads, as the loader does) in this process: its outcome, the time it took, and the
    process's peak memory before and after (``ru_maxrss``)."""
    from warehouse.dicom.problems import HeaderProblem
    from warehouse.dicom.reader import read_header
    from warehouse.storage.local import LocalStorage

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _many_elements_image(root / "many.dcm", "Covid1", 1, elements)
        size = (root / "many.dcm").stat().st_size
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        try:
            header = read_header(LocalStorage(root), "many.dcm", size)
            outcome = f"read: {len(header.dataset._dict):,} top-level elements"
        except HeaderProblem as exc:
            outcome = f"{exc.reason.value}: {exc}"
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "elements": elements,
        "file_mb": round(size / MB, 1),
        "outcome": outcome,
        "seconds": round(seconds, 3),
        "peak_rss_mb_before": round(before, 1),
        "peak_rss_mb": round(after, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: add the hostile files to a tree."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "root", type=Path, nargs="?", help="a tree written by the synthetic generator"
    )
    parser.add_argument("--share", type=float, default=0.02, help="hostile files per image")
    parser.add_argument(
        "--header-elements",
        type=int,
        metavar="N",
        help="instead: read one header of N tiny private elements and print its time and "
        "peak memory",
    )
    args = parser.parse_args(argv)
    if args.header_elements is not None:
        print(json.dumps(read_many_elements(args.header_elements), indent=2))
    elif args.root is None:
        parser.error("give a tree, or --header-elements")
    else:
        print(json.dumps(add_hostile_files(args.root, args.share), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
