"""How long ``dataprocess`` takes with and without its pages: ``python -m benchmarks.dataprocess``.

It makes a local warehouse (the synthetic generator's tree of ``--patients`` patients, loaded
by the loader; reused when ``--warehouse`` names one already made), then runs ``dataprocess``
on it ``--repeat`` times with its pages and as many times without them, alternating, each run
in this process, and prints the wall time of every run and the medians. "Without" replaces
the two dashboard page builders by empty pages for that run only (the run report page is the
loader's, not ``dataprocess``'s): everything else, the image catalogue included, is the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

from warehouse import dataprocess
from warehouse.core.config import Settings
from warehouse.storage.local import LocalStorage

REPO = Path(__file__).resolve().parent.parent


def make_warehouse(folder: Path, patients: int) -> None:
    """The synthetic tree of ``patients`` patients in ``folder``, loaded by the loader."""
    if (folder / "reports" / "warehouseloader" / "latest.json").exists():
        return
    if folder.exists():
        shutil.rmtree(folder)
    processed = folder.with_name(folder.name + "-processed")
    python = sys.executable
    subprocess.run(
        [python, "-m", "warehouse.synthetic", "--output", str(folder), "--patients", str(patients)],
        check=True,
        cwd=REPO,
    )
    processed.mkdir(exist_ok=True)
    env = {"WAREHOUSE_BUCKET": f"file://{folder}", "PATH": "/usr/bin:/bin"}
    subprocess.run([python, "-m", "warehouse.warehouseloader"], check=True, cwd=REPO, env=env)


def _timed(function, spent: list[float]):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    return timed


def run_once(folder: Path, pages: bool, spent: list[float] | None = None) -> float:
    """One ``dataprocess`` run on ``folder``: its wall time in seconds (and, with pages, the
    seconds spent building them appended to ``spent``)."""
    from warehouse.dashboard import pages as page_module

    storage = LocalStorage(folder)
    services = dataprocess.get_services(settings=Settings(bucket=storage.url), storage=storage)
    start = time.perf_counter()
    if pages:
        building: list[float] = []
        with (
            mock.patch.object(
                page_module, "dashboard_page", _timed(page_module.dashboard_page, building)
            ),
            mock.patch.object(
                page_module, "public_page", _timed(page_module.public_page, building)
            ),
        ):
            code = dataprocess.run(services)
        if spent is not None:
            spent.append(sum(building))
    else:
        with (
            mock.patch("warehouse.dashboard.pages.dashboard_page", return_value=""),
            mock.patch("warehouse.dashboard.pages.public_page", return_value=""),
        ):
            code = dataprocess.run(services)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"dataprocess exited {code}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataprocess", description=__doc__)
    parser.add_argument("--patients", type=int, default=5000, help="default 5,000")
    parser.add_argument(
        "--warehouse",
        type=Path,
        default=Path("/tmp/warehouse-bench-5000/bucket"),
        help="where the warehouse is (made when it holds no loader report)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    folder = args.warehouse.resolve()
    make_warehouse(folder, args.patients)
    times: dict[str, list[float]] = {"with pages": [], "without pages": []}
    run_once(folder, pages=True)  # (warms the caches: the JavaScript bundle, imports)
    building: list[float] = []
    for _ in range(args.repeat):
        # (without first: the newest batch, the one latest.csv names, keeps its pages)
        times["without pages"].append(run_once(folder, pages=False))
        times["with pages"].append(run_once(folder, pages=True, spent=building))
    figures = {
        kind: {"runs_s": [round(t, 2) for t in runs], "median_s": round(statistics.median(runs), 2)}
        for kind, runs in times.items()
    }
    figures["building the pages"] = {
        "runs_s": [round(t, 2) for t in building],
        "median_s": round(statistics.median(building), 2),
    }
    files = sum(1 for path in folder.rglob("*") if path.is_file())
    print(f"dataprocess on {folder} ({files:,} files), {args.repeat} runs of each kind:")
    for kind, figure in figures.items():
        runs = ", ".join(f"{t:.2f}" for t in figure["runs_s"])
        print(f"  {kind:14} median {figure['median_s']:.2f} s  (runs: {runs} s)")
    difference = figures["with pages"]["median_s"] - figures["without pages"]["median_s"]
    print(f"  the difference of the medians: {difference:+.2f} s a run")
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
