"""One run of a graph for the scale benchmark, in this process, on a counted store.

Usage: ``python -m benchmarks.scale_runner warehouseloader|dataprocess --counts FILE``.

The graph runs through its own entry points (``get_services(storage=...)``, ``run``) with the
settings of the environment (``WAREHOUSE_BUCKET=file://...``, ``WAREHOUSE_RECONCILE``,
``WAREHOUSE_PHASE``, ``WAREHOUSE_SHARD``, ``WAREHOUSE_RUN_ID``), on the bucket's local store
(or, with ``--generated SPEC``, a `GeneratedStorage` over it) wrapped in a `CountingStorage`.
At the end it writes the S3-equivalent requests, its own peak RSS (``VmHWM``: the high-water
mark of this process's memory alone) and the exit code to ``--counts`` as JSON, and exits with
the graph's code. A reconcile given an S3 Inventory (``WAREHOUSE_INVENTORY``) reads it through
a store the product opens itself: that store is counted too, in the ``inventory`` area
(`count_inventory_reads`). The CPU time this process spends building a generated store (its
placeholder patients, before the graph runs: what S3 never charges a client) is written too,
``store_setup_cpu_s``, for the benchmark to take out of the run's CPU. ``--profile FILE``
writes a cProfile of the run and ``--tracemalloc FILE`` the lines that held the most memory at
the run's peak (side runs: both slow the run down).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

from benchmarks.scale_storage import CountingStorage, GeneratedStorage, RequestCounter

GRAPHS = ("warehouseloader", "dataprocess")
#: CPU seconds spent building the generated store (none for a local one): the harness's, not
#: the run's.
STORE_SETUP = {"cpu_s": 0.0}


def peak_rss_mb() -> float | None:
    """Return this process's peak resident set size (``VmHWM``) in MB; None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def count_inventory_reads(counter: RequestCounter) -> None:
    """Count the requests made to the S3 Inventory's store in the ``inventory`` area.

    `warehouse.listing.inventory.open_inventory` opens the store that ``WAREHOUSE_INVENTORY``
    names with `location_from_url`, outside the store the graph is given: the name is bound
    here to one that wraps the store it opens in a `CountingStorage`.

    Raises
    ------
    RuntimeError
        When the inventory module no longer opens its store that way (nothing would be
        counted).
    """
    from warehouse.listing import inventory
    from warehouse.storage.base import Storage

    opened = getattr(inventory, "location_from_url", None)
    if opened is None:
        raise RuntimeError("warehouse.listing.inventory has no location_from_url to count")

    def counted(url: str, *, workers: int = 8) -> tuple[Storage, str]:
        store, prefix = opened(url, workers=workers)
        return CountingStorage(store, counter, "inventory"), prefix

    inventory.location_from_url = counted


def run_graph(graph: str, counter: RequestCounter, generated: Path | None) -> int:
    """Run ``graph`` once with the environment's settings on the counted store.

    Returns
    -------
    int
        The graph's exit code.
    """
    from warehouse.core.config import settings_from_env
    from warehouse.core.run import EXIT_INTERNAL
    from warehouse.runtime import command
    from warehouse.runtime.services import LazyServices
    from warehouse.storage.local import LocalStorage

    module = importlib.import_module(f"warehouse.{graph}")
    settings = settings_from_env()
    if settings.inventory:
        count_inventory_reads(counter)
    root = settings.bucket[len("file://") :]
    if generated is not None:
        started = time.process_time()
        store = GeneratedStorage.from_spec(generated, Path(root))
        STORE_SETUP["cpu_s"] = time.process_time() - started
    else:
        store = LocalStorage(root)
    counted = CountingStorage(store, counter)

    def services() -> dict:
        return module.get_services(settings=settings, storage=counted)

    try:
        code = command.run_graph(module.get_graph(), LazyServices(services))
    except SystemExit as stop:  # a settings or lease error before the graph started
        return stop.code if isinstance(stop.code, int) else EXIT_INTERNAL
    return code if code is not None else EXIT_INTERNAL


class PeakSnapshot:
    """Traces allocations (`tracemalloc`) and keeps a snapshot taken near the peak.

    It takes one every ``period`` seconds, when more memory is traced than at any sample before.
    """

    def __init__(self, period: float = 1.0):
        self.period, self.snapshot, self._most = period, None, 0
        self._stop = threading.Event()
        tracemalloc.start()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            current, _ = tracemalloc.get_traced_memory()
            if current > self._most:
                self._most, self.snapshot = current, tracemalloc.take_snapshot()

    def write(self, path: Path, lines: int = 30) -> None:
        """Stop; write the peak, the memory traced at the snapshot and its top lines."""
        self._stop.set()
        self._thread.join()
        _, peak = tracemalloc.get_traced_memory()
        text = [
            f"peak traced: {peak / 2**20:.1f} MiB; at the snapshot: {self._most / 2**20:.1f} MiB"
        ]
        if self.snapshot is not None:
            for stat in self.snapshot.statistics("lineno")[:lines]:
                text.append(
                    f"{stat.size / 2**20:8.1f} MiB {stat.count:9,} blocks  {stat.traceback}"
                )
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: run the graph, write the counts; the graph's exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_runner", description=__doc__)
    parser.add_argument("graph", choices=GRAPHS)
    parser.add_argument("--counts", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--generated", type=Path, help="spec of a generated warehouse")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the run here")
    parser.add_argument("--tracemalloc", type=Path, help="write the top lines at the peak here")
    args = parser.parse_args(argv)
    counter = RequestCounter()
    traced = PeakSnapshot() if args.tracemalloc else None
    if args.profile:
        profile = cProfile.Profile()
        code = profile.runcall(run_graph, args.graph, counter, args.generated)
        profile.dump_stats(args.profile)
    else:
        code = run_graph(args.graph, counter, args.generated)
    if traced is not None:
        traced.write(args.tracemalloc)
    figures = {
        "exit_code": code,
        "peak_rss_mb": peak_rss_mb(),
        "store_setup_cpu_s": round(STORE_SETUP["cpu_s"], 2),
        **counter.as_dict(),
    }
    args.counts.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
