"""The hold-out certificate's cost: ``python -m benchmarks.holdout`` (``--help``).

It writes a merged catalogue of ``--rows`` images (the scale benchmark's placeholder patients,
studies, series and instances, `benchmarks.scale_layout`, each with a ``content_id``; a few
violations planted), then certifies it in a process of its own and prints that process's CPU
seconds (user + system) and peak RSS, before and during the certificate, and its counts.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.scale_layout import FOLDERS, Site, images_of, make_patient

_SITES = [
    Site("raw-a", "A", "training"),
    Site("raw-b", "B", "validation"),
    Site("raw-c", "C", "split"),
]
_COLUMNS = (
    "warehouse_key",
    "group",
    "modality_folder",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "content_id",
)


def write_catalogue(path: Path, rows: int, seed: int = 7) -> int:
    """Write a catalogue of about ``rows`` images (whole patients) at ``path``; its rows.

    Three violations are planted at the end: a study, an instance and a file's content of the
    first patient under another patient of the other group.
    """
    from warehouse.catalogue.merge import MERGED_SCHEMA

    fields = [MERGED_SCHEMA.field(name) for name in _COLUMNS]
    schema = pa.schema(fields)
    written, index = 0, 0
    first: dict | None = None
    with pq.ParquetWriter(path, schema, compression="zstd") as out:
        batch: list[dict] = []
        while written < rows:
            patient = make_patient(index, seed, _SITES, None)
            for image in images_of(patient):
                row = {
                    "warehouse_key": image.image_key,
                    "group": patient.group,
                    "modality_folder": FOLDERS[image.modality],
                    "PatientID": patient.name,
                    "StudyInstanceUID": image.study,
                    "SeriesInstanceUID": image.series,
                    "SOPInstanceUID": image.sop,
                    "content_id": f"etag:{abs(hash(image.sop)):032x}:{4096 + written % 977}",
                }
                first = first or row
                batch.append(row)
            written += patient.images
            index += 1
            if len(batch) >= 16_384:  # (the row groups of a batch's images.parquet)
                out.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        assert first is not None
        other = "validation" if first["group"] == "training" else "training"
        for n, (column, value) in enumerate(
            (
                ("StudyInstanceUID", first["StudyInstanceUID"]),
                ("SOPInstanceUID", first["SOPInstanceUID"]),
                ("content_id", first["content_id"]),
            )
        ):
            planted = {
                "warehouse_key": f"{other}/ct/Planted{n}/x/y/{n}.dcm",
                "group": other,
                "modality_folder": "ct",
                "PatientID": f"Planted{n}",
                "StudyInstanceUID": f"9.9.{n}",
                "SeriesInstanceUID": f"9.9.{n}.1",
                "SOPInstanceUID": f"9.9.{n}.1.1",
                "content_id": f"etag:planted{n}:1",
            }
            planted[column] = value
            batch.append(planted)
        out.write_table(pa.Table.from_pylist(batch, schema=schema))
    return written + 3


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path: Path) -> dict:
    """Certify the catalogue at ``path`` in this process; its costs and counts."""
    from warehouse.catalogue.holdout import CatalogueSource, certify

    before = {"cpu_seconds": _cpu(), "peak_rss_mb": _peak_rss_mb()}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="holdout-bench-") as workdir:
        certificate = certify(
            CatalogueSource.of_file(path),
            [],
            batch="bench",
            now=dt.datetime.now(dt.UTC),
            workdir=workdir,
        )
    return {
        "rows": certificate["catalogue"]["rows"],
        "before": before,
        "cpu_seconds": round(_cpu() - before["cpu_seconds"], 2),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "violations": {
            name: check["violations"]
            for name, check in certificate["checks"].items()
            if check["violations"]
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Write the catalogue, certify it in a child process, print the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.holdout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(prefix="holdout-bench-") as folder:
        path = Path(folder) / "images.parquet"
        rows = write_catalogue(path, args.rows)
        print(f"catalogue: {rows:,} rows, {os.path.getsize(path) / 1e6:.1f} MB", flush=True)
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.holdout", "--measure", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
