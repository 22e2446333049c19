"""The DICOM JSON converter against pydicom's own, on the real-world files pydicom ships.

    .venv/bin/python -m benchmarks.dicom_json
    .venv/bin/python -m benchmarks.dicom_json --character-set absent

Each header is parsed afresh before it is converted (pydicom converts an element's raw bytes
once, on first access, so a second conversion of the same header would measure nothing), and
only the conversion is timed. Headers pydicom's ``to_json_dict`` cannot convert (a value that
breaks its VR) are left out of both figures. With ``--character-set absent`` each file is
written again without its Specific Character Set (0008,0005): the default repertoire, the most
common case in real files (most of pydicom's name one).
"""

from __future__ import annotations

import argparse
import io
import os
import time
import warnings

import pydicom
import pydicom.data

from warehouse.dicom.jsonrep import header_json_dict
from warehouse.dicom.problems import HeaderProblem
from warehouse.dicom.reader import parse_header


def _pydicom_json(header) -> dict:
    return header.to_json_dict(bulk_data_threshold=1 << 30, bulk_data_element_handler=lambda e: "")


def without_character_set(data: bytes) -> bytes | None:
    """The file written again by pydicom without its Specific Character Set.

    A file without one is returned as it is; None when pydicom cannot write it back.
    """
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        if "SpecificCharacterSet" not in dataset:
            return data
        del dataset.SpecificCharacterSet
        out = io.BytesIO()
        dataset.save_as(out)
    except Exception:  # noqa: BLE001 - a file pydicom cannot read or write back: left out
        return None
    return out.getvalue()


def real_headers(character_set: str = "as-is") -> list[bytes]:
    """The files of pydicom's test data that both converters can convert.

    As pydicom ships them (``as-is``), or written again without a Specific Character Set
    (``absent``).
    """
    found = []
    for path in pydicom.data.get_testdata_files():
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        if character_set == "absent":
            rewritten = without_character_set(data)
            if rewritten is None:
                continue
            data = rewritten
        try:
            header_json_dict(parse_header(data))
            _pydicom_json(parse_header(data))
        except (HeaderProblem, ValueError, TypeError):
            continue  # refused by the loader, or pydicom's converter fails on it
        found.append(data)
    return found


def _names_a_character_set(data: bytes) -> bool:
    header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    return "SpecificCharacterSet" in header


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
    parser.add_argument(
        "--character-set",
        choices=("as-is", "absent"),
        default="as-is",
        help="the files as pydicom ships them (as-is), or each written again without its "
        "Specific Character Set (absent: the default repertoire)",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom warns about the odd files it is given
    files = real_headers(args.character_set)
    named = sum(_names_a_character_set(data) for data in files)
    ours = ms_per_header(files, header_json_dict, args.rounds)
    theirs = ms_per_header(files, _pydicom_json, args.rounds)
    what = (
        f"{named} naming a Specific Character Set"
        if args.character_set == "as-is"
        else "without Specific Character Set"
    )
    print(
        f"{len(files)} real-world headers ({what}): header_json_dict {ours:.2f} ms, "
        f"pydicom to_json_dict {theirs:.2f} ms per header ({theirs / ours:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
