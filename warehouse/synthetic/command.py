"""The synthetic tree's command line: ``python -m warehouse.synthetic``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from warehouse.synthetic.tree import generate_tree


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m warehouse.synthetic",
        description=(
            "Write a synthetic raw upload tree (config.json, raw-<uploader>/<date>/data and "
            "images) into a local directory laid out like the warehouse bucket. With no size "
            "option it writes the compact demo tree (40 patients, 300 images, every faulty "
            "kind)."
        ),
        epilog=(
            "Then load it with: bonobo run warehouse/warehouseloader.py "
            "--env WAREHOUSE_BUCKET=file://<output>"
        ),
    )
    parser.add_argument(
        "--output",
        "-o",
        default="demo/bucket",
        help="directory to write; must be missing or empty (default: %(default)s)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="compact tree that shows everything: 40 patients, 300 images (the default)",
    )
    parser.add_argument("--patients", type=int, help="patients at configured sites (demo: 40)")
    parser.add_argument(
        "--images", type=int, help="well-formed images (default: about 10 per patient)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--no-faults",
        dest="faults",
        action="store_false",
        help="leave out faulty files, the unconfigured site, the unlisted prefix and other files",
    )
    parser.add_argument(
        "--image-kb", type=float, help="approximate size of each image in KB (default: ~12)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON instead of text"
    )
    return parser


def _describe(summary: dict[str, Any], seconds: float) -> str:
    faults = summary["faults"]
    lines = [
        f"Wrote {summary['files']} files ({summary['bytes'] / 1e6:.1f} MB) to "
        f"{summary['output']} in {seconds:.1f} s (seed {summary['seed']}).",
        f"  to file: {summary['patients']} patients ({summary['patients_positive']} positive, "
        f"{summary['patients_negative']} negative), {summary['data_files']} data and "
        f"{summary['status_files']} status files, {summary['images']} images "
        f"({', '.join(f'{m} {n}' for m, n in summary['images_by_modality'].items())}) in "
        f"{summary['studies']} studies and {summary['series']} series",
    ]
    if summary["faults_included"]:
        lines += [
            f"  not to file: {summary['faulty_images']} faulty images, "
            f"{summary['faulty_clinical']} faulty clinical files, "
            f"{summary['unconfigured_site_images']} images of the unconfigured site, "
            f"{summary['unlisted_prefix_clinical'] + summary['unlisted_prefix_images']} files "
            f"under the unlisted prefix, {summary['other_files']} other files",
            "  faults: " + ", ".join(f"{kind} {n}" for kind, n in faults.items()),
            f"  to file and flag: {summary['images_identifying']} images with a patient name "
            "and a full birth date in the header (the identifying-data screen reports them)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (``sys.argv[1:]`` when omitted).

    Returns
    -------
    int
        0 on success, 1 when the output directory is not empty, 2 on bad arguments.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    patients = args.patients
    images = args.images
    if patients is None and images is None:
        patients, images = 40, 300
    elif patients is None:
        patients = max(1, images // 10)
    for name, value in (("--patients", patients), ("--images", images)):
        if value is not None and value < 0:
            parser.error(f"{name} must not be negative")
    started = time.perf_counter()
    try:
        summary = generate_tree(
            args.output,
            patients=patients,
            images=images,
            seed=args.seed,
            faults=args.faults,
            image_kb=args.image_kb,
        )
    except (FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(json.dumps(summary, indent=2) if args.json else _describe(summary, elapsed))
    return 0
