"""The hold-out's checks per image: the identifying-data screen and the leakage checks.

    .venv/bin/python -m benchmarks.checks
    .venv/bin/python -m benchmarks.checks --owners 5000000 --images 20000

Neither makes a request: the screen reads the header the loader has parsed already and the
leakage checks answer from the catalogue's arrays, read with the index (``tests/test_screen.py``
and ``tests/test_leakage.py`` count the requests). CPU is their only cost per image, and this
prints it (`make bench` runs it after the S3 benchmark):

- the screen (`warehouse.dicom.screen`): `benchmarks.screen`'s figure, against the parse;
- the leakage checks (`warehouse.catalogue.run.LoaderCatalogue.other_owner` for the study,
  the series and the content, then `claim_owners`), on a catalogue whose index pairs
  ``--owners`` values of each kind with their patients, as a warehouse of that many studies
  would: the lookups are binary searches, so the figure grows with the logarithm only.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.screen import measure as measure_screen
from warehouse.catalogue.index import OWNER_KINDS, IndexArrays
from warehouse.catalogue.run import LoaderCatalogue
from warehouse.core.report import RunReport


def owner_index(owners: int, seed: int = 0) -> IndexArrays:
    """Return index arrays pairing ``owners`` random hashes of each kind with patients.

    A quarter as many patients as hashes, the pairs sorted by hash as the index keeps them.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for kind in OWNER_KINDS:
        hashes = np.sort(rng.integers(1, 2**63, size=owners, dtype=np.uint64))
        patients = rng.integers(1, 2**63, size=max(1, owners // 4), dtype=np.uint64)
        arrays[kind] = hashes
        arrays[f"{kind}_patient"] = patients[rng.integers(0, len(patients), size=owners)]
    return IndexArrays(**arrays)


def measure_leakage(owners: int, images: int) -> dict:
    """CPU per image of the three owner lookups and the claim, on ``owners`` pairs a kind."""
    catalogue = LoaderCatalogue(RunReport("warehouseloader"))
    catalogue._index = owner_index(owners)  # (the arrays a daily run reads with the index)
    values = [
        {
            "study": f"1.2.826.0.1.{n // 200}",
            "series": f"1.2.826.0.1.{n // 200}.{n // 50}",
            "content": f"sha256:{n:064x}",
        }
        for n in range(images)
    ]
    found = 0
    started = time.process_time()
    for n, image in enumerate(values):
        patient = f"Covid{n // 200}"
        for kind in OWNER_KINDS:
            found += catalogue.other_owner(kind, image[kind], patient) is not None
        catalogue.claim_owners(image, patient, f"training/ct/{patient}/{n}.dcm")
    cpu = time.process_time() - started
    return {
        "owners_per_kind": owners,
        "images": images,
        "found": found,
        "leakage_us_per_image": round(cpu / images * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checks", description=__doc__)
    parser.add_argument("--owners", type=int, default=1_000_000, help="pairs a kind (1,000,000)")
    parser.add_argument("--images", type=int, default=10_000, help="images checked (10,000)")
    args = parser.parse_args(argv)
    figures = {
        "screen": measure_screen(200, 20),
        "leakage": measure_leakage(max(1, args.owners), max(1, args.images)),
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
