"""Hostile uploads for the memory benchmark: files that made one loader process take
gigabytes, added to a generated tree (issue "uploads that get it wrong", item 4).

Each kind is about a hundredth of the added files' count, and all of them together make 2 % of
the tree's images (by default):

- images with a 20 MB private value before the pixel data (written sparse: the value's bytes
  are zeros the file system never stores);
- 1 GB ".dcm" files of garbage (random first bytes, sparse after them);
- clinical files of 100 and 200 MB (a record with one huge text field).

Run ``python -m benchmarks.hostile --help``; `add_hostile_files` is what the harness calls.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

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


def add_hostile_files(
    root: Path,
    share: float = 0.02,
    images: int | None = None,
    clinical_sizes: dict[int, int] | None = None,
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
    """
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    prefix = config["raw_prefixes"][0].rstrip("/")
    centre = next(iter(config["sites"].get("split") or config["sites"]["training"]))
    if images is None:
        images = sum(1 for _ in root.glob("raw-*/*/images/*"))
    total = max(8, round(images * share))
    huge = DEFAULT_CLINICAL_SIZES if clinical_sizes is None else clinical_sizes
    garbage = max(1, total // 40)
    big_values = total - garbage - sum(huge.values())
    folder = root / prefix / "2021-06-01"
    for n in range(big_values):
        patient = f"Covid{900000 + n}"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        record = {"Pseudonym": patient, "SubmittingCentre": centre}
        (folder / "data" / f"{patient}_data.json").write_text(json.dumps(record))
        _large_private_value_image(folder / "images" / f"big-value-{n}.dcm", patient, n, 20 * MB)
    for n in range(garbage):
        _write_sparse(folder / "images" / f"garbage-{n}.dcm", os.urandom(256 * 1024), 1024 * MB)
    written = 0
    for size, count in huge.items():
        for _ in range(count):
            patient = f"Covid{990000 + written}"
            _huge_clinical(folder / "data" / f"{patient}_data.json", patient, centre, size)
            written += 1
    return {
        "images with a 20 MB private value": big_values,
        "1 GB garbage .dcm files": garbage,
        "clinical files of 100 or 200 MB": written,
        "hostile files": big_values + garbage + written,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: add the hostile files to a tree."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", type=Path, help="a tree written by the synthetic generator")
    parser.add_argument("--share", type=float, default=0.02, help="hostile files per image")
    args = parser.parse_args(argv)
    print(json.dumps(add_hostile_files(args.root, args.share), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
