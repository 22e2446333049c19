"""The identifying-data screen's CPU per image, against parsing the header it screens.

    .venv/bin/python -m benchmarks.screen
    .venv/bin/python -m benchmarks.screen --images 400 --rounds 50

The screen makes no request (it reads the header the loader has parsed already: see
``tests/test_screen.py``), so CPU is its only cost. The headers are generated (half of them
with a patient name and a full birth date, so that both outcomes are timed), parsed once by
the loader's reader, then screened ``--rounds`` times each; the figure is the process CPU time
per screen. The parse of the same headers is timed once for comparison. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from warehouse.dicom.reader import parse_header
from warehouse.dicom.screen import load_profile, screen_header
from warehouse.synthetic.images import build_dicom
from warehouse.synthetic.tree import IDENTIFYING_HEADER

MODALITIES = ("CT", "MR", "DX", "CR")


def headers(count: int) -> list[bytes]:
    """Generate ``count`` images of patient ``Covid1``.

    Every other one carries `IDENTIFYING_HEADER` (a patient name and a full birth date).
    """
    return [
        build_dicom(
            patient_id="Covid1",
            study_uid=f"1.2.826.0.1.{n}",
            series_uid=f"1.2.826.0.1.{n}.1",
            sop_uid=f"1.2.826.0.1.{n}.1.1",
            modality=MODALITIES[n % len(MODALITIES)],
            extra=dict(IDENTIFYING_HEADER) if n % 2 else None,
        )
        for n in range(count)
    ]


def measure(images: int, rounds: int) -> dict:
    """Measure the screen's and the parse's CPU per image (microseconds), and the flagged."""
    profile = load_profile()
    blobs = headers(images)
    started = time.process_time()
    parsed = [parse_header(blob) for blob in blobs]
    parse_cpu = time.process_time() - started
    flagged = sum(bool(screen_header(header, profile, "Covid1")) for header in parsed)
    started = time.process_time()
    for _ in range(rounds):
        for header in parsed:
            screen_header(header, profile, "Covid1")
    screen_cpu = time.process_time() - started
    return {
        "images": images,
        "rounds": rounds,
        "profile_attributes": len(profile.attributes),
        "flagged": flagged,
        "screen_us_per_image": round(screen_cpu / (images * rounds) * 1e6, 2),
        "parse_us_per_image": round(parse_cpu / images * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.screen", description=__doc__)
    parser.add_argument("--images", type=int, default=200, help="headers (default 200)")
    parser.add_argument("--rounds", type=int, default=50, help="screens of each (default 50)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(max(1, args.images), max(1, args.rounds)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
