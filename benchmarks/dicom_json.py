"""The DICOM JSON converter against pydicom's own, on the real-world files pydicom ships.

    .venv/bin/python -m benchmarks.dicom_json

Each header is parsed afresh before it is converted (pydicom converts an element's raw bytes
once, on first access, so a second conversion of the same header would measure nothing), and
only the conversion is timed. Headers pydicom's ``to_json_dict`` cannot convert (a value that
breaks its VR) are left out of both figures.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import pydicom.data

from warehouse.dicom.jsonrep import header_json_dict
from warehouse.dicom.problems import HeaderProblem
from warehouse.dicom.reader import parse_header


def _pydicom_json(header) -> dict:
    return header.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=lambda e: "")


def real_headers() -> list[bytes]:
    """The files of pydicom's test data that both converters can convert."""
    found = []
    for path in pydicom.data.get_testdata_files():
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            header_json_dict(parse_header(data))
            _pydicom_json(parse_header(data))
        except (HeaderProblem, ValueError, TypeError):
            continue  # refused by the loader, or pydicom's converter fails on it
        found.append(data)
    return found


def ms_per_header(files: list[bytes], convert, rounds: int) -> float:
    """Mean conversion time of one freshly parsed header, in milliseconds."""
    total = 0.0
    for _ in range(rounds):
        for data in files:
            header = parse_header(data)
            started = time.perf_counter()
            convert(header)
            total += time.perf_counter() - started
    return total / rounds / len(files) * 1000


def main(argv: list[str] | None = None) -> int:
    """Print both converters' milliseconds per header and their ratio."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dicom_json", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the files (5)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns about the odd files it is given
    files = real_headers()
    ours = ms_per_header(files, header_json_dict, args.rounds)
    theirs = ms_per_header(files, _pydicom_json, args.rounds)
    print(
        f"{len(files)} real-world headers: header_json_dict {ours:.2f} ms, "
        f"pydicom to_json_dict {theirs:.2f} ms per header ({theirs / ours:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
