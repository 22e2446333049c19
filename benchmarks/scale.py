"""The benchmark of scale: ``python -m benchmarks.scale`` (``--help``).

What a daily run costs as the warehouse grows. For each size (warehouse-side objects: 10k,
100k, 1M on a local directory; 10M, by default, in `benchmarks.scale_storage.GeneratedStorage`,
a listing generated on demand over a local overlay) it

1. builds the warehouse: a real part (images the product's synthetic generator builds with
   pydicom, filed by a real loader run) and placeholder patients around it
   (`benchmarks.scale_layout`: hard links to real files on both the raw and the warehouse
   side, catalogue parts listing every placeholder image, every upload folder closed in the
   raw side's folder state, as the reconcile runs of a warehouse that has run for years leave
   it) and its S3 Inventory, then a first reconcile and a first ``dataprocess`` (on a local
   directory, or with ``--setup-generated``, whose reconcile then reads the inventory: setup,
   shown but not checked);
2. drops one day of uploads: 1,000 real images and the clinical files of 12-24 new patients,
   in a new dated upload folder of each site that sent them;
3. runs and measures the daily loader run, a rerun with nothing new, a reconcile run
   (``WAREHOUSE_RECONCILE=1``) from an S3 Inventory (``WAREHOUSE_INVENTORY``: a Parquet
   report of the bucket written at step 1, `benchmarks.scale_inventory`, dated the day before
   the day's uploads, so their folders are listed and the older ones read from it; with
   ``--listing-reconcile`` a reconcile that lists too), ``dataprocess`` and a ``dataprocess``
   rerun with nothing new;
   at 1M (``--sharded-sizes``) a second day, loaded by a sharded run (its clinical phase and
   ``--shards`` image shards, each a process as on AWS Batch).

Each run is a process of its own (`benchmarks.scale_runner`: the graph's own entry points on a
store that counts S3-equivalent requests): CPU seconds (user + system, ``os.wait4``; at a
generated size less what the process spent building the generated store before the run, which
stands in for S3 and is kept as ``store_setup_cpu_s`` with the process's total as
``process_cpu_s``), peak RSS
(the process's ``VmHWM``) and requests by kind. A run whose memory passes ``--max-rss-gb`` or
whose time passes ``--max-seconds`` is stopped and shown as such (the machine is shared). It
prints the table, each target of the issue with PASS or FAIL, and writes the figures as JSON
(``--output``, by default ``benchmarks/results/scale.json``). Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.run import REPO, fake_aws_environment, loader_version
from benchmarks.scale_inventory import WrittenInventory, tree_objects, write_inventory
from benchmarks.scale_layout import (
    GROUPS,
    PARTS_PREFIX,
    STATE_KEY,
    Contents,
    Layout,
    build_local,
    closed_state,
    configured_sites,
    upload_folders,
    write_parts,
)
from benchmarks.scale_storage import KINDS, GeneratedStorage, write_spec
from warehouse.dashboard.batch import LAST_BATCH_KEPT
from warehouse.storage.local import LocalStorage

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "scale.json"
DEFAULT_SIZES = "10k,100k,1M,10M"
QUICK_SIZES = "10k,100k"
#: Sizes from which the warehouse is generated in memory rather than written as files.
DEFAULT_GENERATED_FROM = "5M"
#: The pool of real uploads: the real part of every warehouse, and the days.
POOL_PATIENTS, POOL_IMAGES = 90, 4800
DAY_PATIENTS = (12, 24)
#: Targets (the issue's "Targets"), checked at 1M and above.
TARGET_SIZE = 1_000_000
DAILY_RSS_MB = 400.0
DATAPROCESS_RSS_MB = 1024.0
RECONCILE_RSS_MB = 2048.0
SHARD_RSS_MB = 400.0
CPU_FACTOR = 2.0
LIST_ALLOWANCE = 50
RECONCILE_TARGET_SIZE = 10_000_000
#: The reconcile's step, and what a run report counts when it could not use the inventory.
INVENTORY_RECONCILE = "reconcile from inventory"
INVENTORY_NOT_USED = "S3 inventory not used (the bucket is listed)"

_STARTED = time.monotonic()


def log(message: str) -> None:
    """One progress line on stderr, stamped with the harness's elapsed time."""
    print(f"[{time.monotonic() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``10k`` -> 10,000; ``1M`` -> 1,000,000; ``2500`` -> 2,500.

    Raises
    ------
    ValueError
        For anything else, or a size below 1.
    """
    text = text.strip()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    value = int(float(number) * scale)
    if value < 1:
        raise ValueError(f"size {text!r} must be at least 1")
    return value


def size_label(size: int) -> str:
    """1,000,000 -> ``1M``; 10,000 -> ``10k``."""
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


# --------------------------------------------------------------------------------------------
# the real uploads


@dataclass
class Upload:
    """Real files of some patients, by relative path (the raw layout)."""

    patients: list[str] = field(default_factory=list)
    clinical: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


@dataclass
class Pool:
    """The generated real uploads, split into the warehouse's real part and the days."""

    root: Path
    base: Upload
    days: list[Upload]


def _patient_files(root: Path) -> tuple[dict, dict, dict]:
    """Find the clinical files and images of each patient of a generated tree.

    Also returns each patient's image modalities.
    """
    import pydicom

    clinical: dict[str, list[str]] = {}
    images: dict[str, list[str]] = {}
    modalities: dict[str, set[str]] = {}
    for path in sorted(root.glob("raw-*/*/data/*.json")):
        name = path.name.rsplit("_", 1)[0]
        clinical.setdefault(name, []).append(path.relative_to(root).as_posix())
    for path in sorted(root.glob("raw-*/*/images/*")):
        header = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["PatientID", "Modality"]
        )
        patient = str(header.PatientID)
        images.setdefault(patient, []).append(path.relative_to(root).as_posix())
        modalities.setdefault(patient, set()).add(str(header.Modality))
    return clinical, images, modalities


def make_pool(root: Path, seed: int, days: int, day_images: int) -> Pool:
    """Generate the real uploads (the product's generator, no faulty files); split them by patient.

    ``days`` days of ``day_images`` images each (12-24 patients a day; a day's last patient
    loses the images past the count), the rest the warehouse's real part (which keeps a patient
    of each modality, the placeholders' templates).
    """
    from warehouse.synthetic import generate_tree

    generate_tree(root, patients=POOL_PATIENTS, images=POOL_IMAGES, seed=seed, faults=False)
    clinical, images, modalities = _patient_files(root)
    order = sorted(clinical)
    reserved = set()
    for modality in ("CT", "MR", "DX", "CR"):
        holder = next((p for p in order if modality in modalities.get(p, ())), None)
        if holder is not None:
            reserved.add(holder)
    free = [p for p in order if p not in reserved]
    chosen: list[Upload] = []
    for _ in range(days):
        day = Upload()
        while free and (len(day.images) < day_images or len(day.patients) < DAY_PATIENTS[0]):
            patient = free.pop(0)
            day.patients.append(patient)
            day.clinical += clinical[patient]
            day.images += images.get(patient, [])[: day_images - len(day.images)]
        if len(day.images) < day_images or len(day.patients) > DAY_PATIENTS[1]:
            log(f"  a day of {len(day.images)} images from {len(day.patients)} patients")
        chosen.append(day)
    base = Upload(patients=sorted(reserved) + free)
    for patient in base.patients:
        base.clinical += clinical[patient]
        base.images += images.get(patient, [])
    return Pool(root, base, chosen)


def copy_upload(pool: Pool, upload: Upload, bucket: Path, date: str | None) -> int:
    """Copy an upload's files into a bucket; return how many files.

    They go where they are (``date`` None), or into the upload folder ``date`` of their site
    (of a patient's clinical files of one kind, the newest).
    """
    newest: dict[str, str] = {}
    for relative in upload.clinical:  # (sorted: a later upload of the same file wins)
        site, _, _, name = relative.split("/")
        newest[f"{site}/{name}"] = relative
    files = list(newest.values()) + upload.images if date else upload.clinical + upload.images
    for relative in files:
        site, _, folder, name = relative.split("/")
        target = bucket / (f"{site}/{date}/{folder}/{name}" if date else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pool.root / relative, target)
    return len(files)


# --------------------------------------------------------------------------------------------
# running a command


def _status_kb(pid: int, field_name: str) -> int:
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


def run_measured(
    command: list[str], env: dict, log_path: Path, max_rss_mb: float, max_seconds: float
) -> dict:
    """Run ``command`` to its end, or stop it when its memory or time passes its limit.

    It is stopped (SIGKILL, this child only) when its memory passes ``max_rss_mb`` or its time
    ``max_seconds``. Returns the wall time, CPU seconds (``os.wait4``), ``ru_maxrss``, the peak
    RSS seen by polling, the exit code and why it was stopped.
    """
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        stopped: list[str] = []
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                rss = _status_kb(child.pid, "VmRSS:")
                peak[0] = max(peak[0], _status_kb(child.pid, "VmHWM:"))
                if rss > max_rss_mb * 1024:
                    stopped.append(f"stopped at {rss / 1024:,.0f} MB (over {max_rss_mb:,.0f})")
                elif time.perf_counter() - started > max_seconds:
                    stopped.append(f"stopped after {max_seconds:,.0f} s")
                else:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        watcher.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "ru_maxrss_mb": round(usage.ru_maxrss / 1024, 1),
        "polled_peak_rss_mb": round(peak[0] / 1024, 1),
        "exit_code": child.returncode,
        "stopped": stopped[0] if stopped else None,
    }


# --------------------------------------------------------------------------------------------
# one warehouse size


@dataclass
class Warehouse:
    """One size's warehouse and how it is served."""

    size: int
    root: Path
    spec: Path | None
    objects: dict
    folders_added: int = 0
    inventory: WrittenInventory | None = None


class Harness:
    """Builds each size's warehouse, runs the steps and collects the figures.

    Parameters
    ----------
    args : argparse.Namespace
        The command line's options.
    workdir : Path
        Where the warehouses and logs go.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.env = fake_aws_environment(workdir)
        self.today = dt.datetime.now(dt.UTC).date()
        self.figures: dict = {"sizes": {}}

    def prepare(self) -> None:
        """Make the pool of real uploads and every warehouse's real part (a real loader run)."""
        args = self.args
        days = 2 if self.args.sharded_sizes else 1
        log(f"generating {POOL_IMAGES:,} real images for {POOL_PATIENTS} patients")
        self.pool = make_pool(self.workdir / "pool", args.seed, days, args.day_images)
        for n, day in enumerate(self.pool.days, start=1):
            log(f"  day {n}: {len(day.images)} images, {len(day.patients)} patients")
        self.base = self.workdir / "base" / "bucket"
        self.base.mkdir(parents=True)
        (self.base.parent / "bucket-processed").mkdir()
        shutil.copyfile(self.pool.root / "config.json", self.base / "config.json")
        copy_upload(self.pool, self.pool.base, self.base, None)
        log(f"real part: a loader run over {len(self.pool.base.images):,} real images")
        env = dict(self.env, WAREHOUSE_BUCKET=self.base.as_uri())
        run = run_measured(
            [sys.executable, "-m", "warehouse.warehouseloader"],
            env,
            self.workdir / "base-loader.log",
            args.max_rss_gb * 1024,
            args.max_seconds,
        )
        report = _report(self.base)
        copied = report.get("counts", {}).get("images copied", 0)
        if run["exit_code"] != 0 or copied != len(self.pool.base.images):
            raise RuntimeError(f"the real part's loader run failed: {run}, {copied} images")
        self.figures["real_part"] = {
            "images": len(self.pool.base.images),
            "patients": len(self.pool.base.patients),
        }
        self.figures["days"] = [
            {"images": len(d.images), "patients": len(d.patients), "clinical": len(d.clinical)}
            for d in self.pool.days
        ]

    def build(self, size: int) -> Warehouse:
        """Copy the real part and add the placeholders that make ``size`` warehouse objects."""
        label = size_label(size)
        root = self.workdir / f"size-{label}" / "bucket"
        shutil.copytree(self.base, root)
        (root.parent / "bucket-processed").mkdir()
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        sites = configured_sites(config)
        contents = Contents.from_warehouse(root, sites, self.args.seed)
        real = sum(1 for g in GROUPS for p in (root / g).rglob("*") if p.is_file())
        newest = self.today - dt.timedelta(days=30)
        layout = Layout.for_objects(size - real, self.args.seed, sites, newest)
        generated = size >= self.args.generated_from
        # the inventory: delivered the day before the day's uploads (their folders are listed),
        # the placeholders modified before it
        created = dt.datetime.combine(self.today - dt.timedelta(days=2), dt.time(), dt.UTC)
        placed = created - dt.timedelta(hours=1)
        started = time.monotonic()
        if generated:
            spec = root.parent / "generated.json"
            write_spec(spec, layout, contents, placed)
            built = {"patients": len(layout.patients), "images": layout.images}
        else:
            spec = None
            built = build_local(root, layout, contents)
        schema = pq.read_schema(next((root / PARTS_PREFIX).glob("*.parquet")))
        parts = write_parts(root, layout, contents, schema, dt.datetime(2019, 1, 1))
        prefixes = [s.prefix for s in sites]
        folders = upload_folders(root, prefixes)
        for site, dates in layout.site_folders().items():
            folders[site] = sorted(set(folders.get(site, [])) | set(dates))
        (root / STATE_KEY).write_bytes(closed_state(folders, dt.datetime.now(dt.UTC)))
        objects = {
            "warehouse": real + layout.warehouse_objects,
            "real_warehouse": real,
            "placeholder_patients": len(layout.patients),
            "placeholder_images": layout.images,
            "catalogue_parts": parts + len(list((self.base / PARTS_PREFIX).glob("*.parquet"))),
            "raw_upload_folders": sum(len(d) for d in folders.values()),
            "generated": generated,
        }
        log(
            f"  {label}: {objects['warehouse']:,} warehouse objects "
            f"({'generated' if generated else 'files'}; {built['images']:,} placeholder images, "
            f"{parts} parts) in {time.monotonic() - started:.0f} s"
        )
        started = time.monotonic()
        placeholders = GeneratedStorage(LocalStorage(root), layout, contents, placed)
        inventory = write_inventory(
            root.parent / "inventory",
            root.name,
            itertools.chain(tree_objects(self.base), placeholders.placeholder_objects()),
            created,
        )
        objects["inventory"] = dict(
            inventory.figures(), seconds=round(time.monotonic() - started, 1)
        )
        log(
            f"  {label}: S3 Inventory of {inventory.rows:,} objects, {inventory.files} data "
            f"file(s), {inventory.size / 2**20:,.0f} MB, in {objects['inventory']['seconds']:.0f} s"
        )
        return Warehouse(size, root, spec, objects, inventory=inventory)

    def step(self, house: Warehouse, name: str, graph: str, **extra: str) -> dict:
        """Run one graph on the warehouse through `benchmarks.scale_runner`; its figures."""
        label = f"{size_label(house.size)}-{name.replace(' ', '-').replace('/', '-of-')}"
        counts = self.workdir / f"{label}.counts.json"
        command = [sys.executable, "-m", "benchmarks.scale_runner", graph, "--counts", str(counts)]
        if house.spec is not None:
            command += ["--generated", str(house.spec)]
        env = dict(self.env, WAREHOUSE_BUCKET=house.root.as_uri(), **extra)
        run = run_measured(
            command,
            env,
            self.workdir / f"{label}.log",
            self.args.max_rss_gb * 1024,
            self.args.max_seconds,
        )
        if counts.exists():
            found = json.loads(counts.read_text(encoding="utf-8"))
            run["peak_rss_mb"] = round(found.pop("peak_rss_mb") or run["polled_peak_rss_mb"], 1)
            # the generated store's setup is the harness standing in for S3, not the run's work
            setup = found.pop("store_setup_cpu_s", 0.0)
            run["process_cpu_s"], run["store_setup_cpu_s"] = run["cpu_s"], setup
            run["cpu_s"] = round(max(0.0, run["cpu_s"] - setup), 2)
            run.update(found)
            counts.unlink()
        else:
            run["peak_rss_mb"] = run["polled_peak_rss_mb"]
            run.update(kinds={}, areas={})
        report = _report(house.root, graph)
        run["report"] = {
            "counts": report.get("counts", {}),
            "not_filed": report.get("not_filed", {}),
            "completed": report.get("completed"),
        }
        state = "" if run["exit_code"] == 0 else f", exit {run['exit_code']}"
        log(
            f"  {size_label(house.size)} {name}: CPU {run['cpu_s']:.1f} s, peak RSS "
            f"{run['peak_rss_mb']:,.0f} MB, LIST {run['kinds'].get('LIST', 0):,}, "
            f"wall {run['wall_s']:.1f} s{state}{', ' + run['stopped'] if run['stopped'] else ''}"
        )
        return run

    def drop_day(self, house: Warehouse, day: int, date: dt.date) -> int:
        """Copy day ``day``'s uploads into new upload folders dated ``date``; the folders."""
        upload = self.pool.days[day]
        copy_upload(self.pool, upload, house.root, date.isoformat())
        return len({relative.split("/")[0] for relative in upload.clinical + upload.images})

    def measure(self, size: int) -> dict:
        """Everything at one size."""
        label = size_label(size)
        log(f"size {label}: building")
        house = self.build(size)
        figures: dict = {"objects": house.objects, "steps": {}}
        steps = figures["steps"]
        setup = not house.objects["generated"] or self.args.setup_generated
        assert house.inventory is not None
        # a generated warehouse's setup reconcile reads the inventory: a listing of ten
        # million generated objects is what it cannot afford (files are listed: a check)
        setup_inventory = {"WAREHOUSE_INVENTORY": house.inventory.url} if house.spec else {}
        try:
            if setup:
                steps["setup reconcile"] = self.step(
                    house,
                    "setup reconcile",
                    "warehouseloader",
                    WAREHOUSE_RECONCILE="true",
                    **setup_inventory,
                )
                steps["setup dataprocess"] = self.step(house, "setup dataprocess", "dataprocess")
            figures["new_folders"] = self.drop_day(house, 0, self.today - dt.timedelta(days=1))
            steps["daily"] = self.step(house, "daily", "warehouseloader")
            steps["rerun"] = self.step(house, "rerun", "warehouseloader")
            steps[INVENTORY_RECONCILE] = self.step(
                house,
                INVENTORY_RECONCILE,
                "warehouseloader",
                WAREHOUSE_RECONCILE="true",
                WAREHOUSE_INVENTORY=house.inventory.url,
            )
            if self.args.listing_reconcile:
                steps["reconcile"] = self.step(
                    house, "reconcile", "warehouseloader", WAREHOUSE_RECONCILE="true"
                )
            steps["dataprocess"] = self.step(house, "dataprocess", "dataprocess")
            steps["dataprocess rerun"] = self.step(house, "dataprocess rerun", "dataprocess")
            if size in self.args.sharded_sizes and len(self.pool.days) > 1:
                figures["sharded"] = self.sharded(house)
        finally:
            if not self.args.keep:
                shutil.rmtree(house.root.parent, ignore_errors=True)
        return figures

    def sharded(self, house: Warehouse) -> dict:
        """Load day 2 by a sharded run, part by part as AWS Batch runs them.

        First the clinical phase, then each image shard (the last to end ends the run).
        """
        count = self.args.shards
        self.drop_day(house, 1, self.today)
        run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
        parts = {
            "clinical phase": self.step(
                house,
                "sharded clinical phase",
                "warehouseloader",
                WAREHOUSE_PHASE="clinical",
                WAREHOUSE_RUN_ID=run_id,
            )
        }
        for index in range(count):
            parts[f"shard {index}/{count}"] = self.step(
                house,
                f"sharded shard {index}/{count}",
                "warehouseloader",
                WAREHOUSE_SHARD=f"{index}/{count}",
                WAREHOUSE_RUN_ID=run_id,
            )
        report = _report(house.root)
        return {
            "shards": count,
            "parts": parts,
            "images_copied": report.get("counts", {}).get("images copied", 0),
        }

    def floor(self) -> None:
        """Run the request floor benchmark (``benchmarks.run --quick``).

        It runs on S3 only, at 20 ms a request.
        """
        output = self.workdir / "floor.json"
        log("request floor: python -m benchmarks.run --quick --skip-local")
        command = [sys.executable, "-m", "benchmarks.run", "--quick", "--skip-local"]
        command += ["--output", str(output)]
        with open(self.workdir / "floor.log", "wb") as out:
            subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
        if output.exists():
            found = json.loads(output.read_text(encoding="utf-8"))
            check = found.get("checks", {}).get("loader_vs_floor", {})
            self.figures["floor"] = {
                "loader_vs_floor": check.get("value"),
                "images": (found.get("s3_loader") or {}).get("images"),
                "delay_ms": found.get("options", {}).get("delay_ms"),
            }


def _report(root: Path, graph: str = "warehouseloader") -> dict:
    path = root / "reports" / graph / "latest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


# --------------------------------------------------------------------------------------------
# the table and the targets


def _cpu_rss(step: dict | None) -> str:
    if not step:
        return "-"
    text = f"{step['cpu_s']:.1f} s / {step['peak_rss_mb'] / 1024:.2f} GB"
    if step.get("stopped"):
        text += " (stopped)"
    elif step["exit_code"] != 0:
        text += f" (exit {step['exit_code']})"
    return text


def _lists(step: dict | None) -> str:
    return f"{step['kinds'].get('LIST', 0):,}" if step else "-"


def main_table(figures: dict) -> str:
    """Render the issue's table, one row a size.

    Its reconcile reads the S3 Inventory; a column for a reconcile that lists (the default
    before the inventory, ``--listing-reconcile``) is added when a size has one.
    """
    sizes = figures["sizes"]
    listing = any("reconcile" in size["steps"] for size in sizes.values())
    header = [
        "warehouse objects",
        "daily run: CPU / peak RSS",
        "rerun, nothing new: CPU / RSS",
        "LIST per run (daily / rerun)",
        "reconcile from inventory: CPU / RSS",
        *(["reconcile, listing: CPU / RSS"] if listing else []),
        "dataprocess: CPU / RSS",
        "dataprocess rerun: CPU / RSS",
    ]
    rows = []
    for label, size in sizes.items():
        steps = size["steps"]
        rows.append(
            [
                f"{label} ({size['objects']['warehouse']:,})",
                _cpu_rss(steps.get("daily")),
                _cpu_rss(steps.get("rerun")),
                f"{_lists(steps.get('daily'))} / {_lists(steps.get('rerun'))}",
                _cpu_rss(steps.get(INVENTORY_RECONCILE)),
                *([_cpu_rss(steps.get("reconcile"))] if listing else []),
                _cpu_rss(steps.get("dataprocess")),
                _cpu_rss(steps.get("dataprocess rerun")),
            ]
        )
    return markdown(header, rows)


def inventory_lines(figures: dict) -> list[str]:
    """One line a size: its S3 Inventory, and what the reconcile read of it and listed."""
    lines = []
    for label, size in figures["sizes"].items():
        written = size["objects"].get("inventory")
        if not written:
            continue
        line = (
            f"  {label}: {written['rows']:,} objects in {written['files']} data file(s), "
            f"{written['bytes'] / 2**20:,.1f} MB (written in {written['seconds']:.0f} s)"
        )
        step = size["steps"].get(INVENTORY_RECONCILE)
        if step:
            read = step.get("areas", {}).get("inventory", {})
            got = step.get("read_bytes", {}).get("inventory", 0)
            raw = step.get("areas", {}).get("raw", {}).get("LIST", 0)
            line += (
                f"; the reconcile read {got / 2**20:,.1f} MB of it ({read.get('GET-range', 0):,} "
                f"ranged GETs, {read.get('LIST', 0):,} LISTs) and made {raw:,} LISTs of the "
                "raw side"
            )
        lines.append(line)
    return lines


def requests_table(figures: dict) -> str:
    """S3-equivalent requests of every run, by kind."""
    rows = []
    for label, size in figures["sizes"].items():
        steps = dict(size["steps"])
        for name, part in (size.get("sharded") or {}).get("parts", {}).items():
            steps[f"day 2, sharded: {name}"] = part
        for name, step in steps.items():
            rows.append([label, name, *(f"{step['kinds'].get(k, 0):,}" for k in KINDS)])
    return markdown(["size", "run", *KINDS], rows)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """Render a Markdown table."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "FAIL"


def _measured(step: dict | None) -> bool:
    return bool(step) and not step.get("stopped") and step["exit_code"] in (0, 1)


def _within(step: dict, ok: bool) -> bool | None:
    """Return a target's verdict for the run ``step``.

    FAIL (False) for a run stopped at a limit, n/a (None) for a run that did not end (killed
    from outside, an internal error), else ``ok``.
    """
    if step.get("stopped"):
        return False
    return ok if _measured(step) else None


def _shown(step: dict | None, target: str, label: str) -> list[dict]:
    """Return a run's peak RSS as a target's figure without a verdict (a size not checked)."""
    if not step:
        return []
    figure = f"{step['peak_rss_mb']:,.0f} MB (checked at {size_label(RECONCILE_TARGET_SIZE)})"
    return [{"target": target, "size": label, "figure": figure, "result": "info"}]


def evaluate(figures: dict) -> list[dict]:
    """Each target of the issue, at each size it applies to, with its figure and verdict."""
    sizes = figures["sizes"]
    if not sizes:
        return []
    values = {label: parse_size(label) for label in sizes}
    base_label = min(values, key=values.get)
    base = sizes[base_label]["steps"]
    checked = [label for label, v in values.items() if v >= TARGET_SIZE] or [
        max(values, key=values.get)
    ]
    checks: list[dict] = []

    def add(target: str, label: str, figure: str, ok: bool | None) -> None:
        checks.append({"target": target, "size": label, "figure": figure, "result": _verdict(ok)})

    def cpu_vs_base(step_name: str, target: str, label: str) -> None:
        step, first = sizes[label]["steps"].get(step_name), base.get(step_name)
        if not (step and first):
            return add(target, label, "not measured", None)
        bound = CPU_FACTOR * first["cpu_s"]
        figure = (
            f"{step['cpu_s']:.1f} s vs {bound:.1f} s (2 x {first['cpu_s']:.1f} s at {base_label})"
        )
        add(target, label, figure, _within(step, step["cpu_s"] <= bound))

    def rss(step_name: str, target: str, label: str, bound: float) -> None:
        step = sizes[label]["steps"].get(step_name)
        if not step:
            return add(target, label, "not measured", None)
        figure = f"{step['peak_rss_mb']:,.0f} MB" + (
            f" ({step['stopped']})" if step.get("stopped") else ""
        )
        add(target, label, figure, _within(step, step["peak_rss_mb"] <= bound))

    for label in checked:
        daily = sizes[label]["steps"].get("daily")
        cpu_vs_base("daily", "daily run: CPU <= 2x the smallest size's", label)
        rss("daily", f"daily run: peak RSS <= {DAILY_RSS_MB:.0f} MB", label, DAILY_RSS_MB)
        if daily:
            allowed = LIST_ALLOWANCE + sizes[label].get("new_folders", 0)
            lists = daily["kinds"].get("LIST", 0)
            figure = f"{lists:,} (allowed {allowed}: 50 + {allowed - LIST_ALLOWANCE} new folders)"
            verdict = lists <= allowed if _measured(daily) else None
            add("daily run: LIST <= 50 + new upload folders", label, figure, verdict)
        cpu_vs_base("rerun", "rerun, nothing new: CPU <= 2x the smallest size's", label)
        rss("dataprocess", "dataprocess: peak RSS <= 1 GB", label, DATAPROCESS_RSS_MB)
        # (CPU proportional to the new studies: the same day's studies as at the smallest size)
        cpu_vs_base("dataprocess", "dataprocess: CPU <= 2x the smallest size's", label)
        cpu_vs_base("dataprocess rerun", "dataprocess rerun: CPU <= 2x the smallest size's", label)
        sharded = sizes[label].get("sharded")
        if sharded:
            for name, part in sharded["parts"].items():
                ok = _within(part, part["peak_rss_mb"] <= SHARD_RSS_MB)
                add(
                    f"sharded run, {name}: peak RSS <= 400 MB",
                    label,
                    f"{part['peak_rss_mb']:,.0f} MB",
                    ok,
                )
    reconcile_rss = f"reconcile from an inventory: peak RSS <= {RECONCILE_RSS_MB / 1024:.0f} GB"
    for label in sizes:  # checked at 10M, shown (without a verdict) at the other sizes
        if values[label] >= RECONCILE_TARGET_SIZE:
            rss(INVENTORY_RECONCILE, reconcile_rss, label, RECONCILE_RSS_MB)
        else:
            checks += _shown(sizes[label]["steps"].get(INVENTORY_RECONCILE), reconcile_rss, label)
    for label, size in sizes.items():
        checks += outcome_checks(label, size, figures.get("days", []))
    floor = figures.get("floor")
    if floor and floor.get("loader_vs_floor") is not None:
        value = floor["loader_vs_floor"]
        figure = f"{value:.2f} ({floor.get('images')} raw images, {floor.get('delay_ms')} ms)"
        add("loader / request floor at 20 ms >= 0.8", "S3 tree", figure, value >= 0.8)
    return checks


def outcome_checks(label: str, size: dict, days: list[dict]) -> list[dict]:
    """Check what the runs filed.

    The daily run files the day's images, the rerun nothing, the reconcile nothing more (a
    full run finds nothing the daily runs left); the reconcile given the inventory read it
    (ranged GETs of its data files, and no "inventory not used" in its report).
    """
    steps, checks = size["steps"], []

    def copied(step: dict | None) -> int | None:
        if not _measured(step) or "report" not in step:
            return None
        return int(step["report"]["counts"].get("images copied", 0))

    expected = days[0]["images"] if days else None
    for name, want in (
        ("setup reconcile", 0),
        ("daily", expected),
        ("rerun", 0),
        (INVENTORY_RECONCILE, 0),
        ("reconcile", 0),
    ):
        got = copied(steps.get(name))
        if got is None or want is None:
            continue
        checks.append(
            {
                "target": f"{name}: images copied = {want:,}",
                "size": label,
                "figure": f"{got:,}",
                "result": _verdict(got == want),
            }
        )
    step = steps.get(INVENTORY_RECONCILE)
    if step and _measured(step) and "report" in step:
        read = step.get("areas", {}).get("inventory", {}).get("GET-range", 0)
        unused = step["report"]["counts"].get(INVENTORY_NOT_USED, 0)
        figure = f"{read:,} ranged GETs of it" + (f"; {INVENTORY_NOT_USED}" if unused else "")
        checks.append(
            {
                "target": f"{INVENTORY_RECONCILE}: the inventory was read",
                "size": label,
                "figure": figure,
                "result": _verdict(read > 0 and not unused),
            }
        )
    step = steps.get("dataprocess rerun")
    if step and _measured(step) and "report" in step:
        kept = step["report"]["counts"].get(LAST_BATCH_KEPT, 0)
        checks.append(
            {
                "target": "dataprocess rerun: the last batch stands (nothing new: no batch)",
                "size": label,
                "figure": "kept" if kept else "a new batch",
                "result": _verdict(kept == 1),
            }
        )
    sharded = size.get("sharded")
    if sharded and len(days) > 1:
        got, want = sharded["images_copied"], days[1]["images"]
        checks.append(
            {
                "target": f"sharded run: images copied = {want:,}",
                "size": label,
                "figure": f"{got:,}",
                "result": _verdict(got == want),
            }
        )
    return checks


def where_lists_go(figures: dict) -> list[str]:
    """One line a size: the daily run's LIST requests by area of the bucket."""
    lines = []
    for label, size in figures["sizes"].items():
        daily = size["steps"].get("daily")
        if daily and daily.get("areas"):
            parts = [
                f"{area} {kinds['LIST']:,}"
                for area, kinds in daily["areas"].items()
                if kinds.get("LIST")
            ]
            gets = daily["areas"].get("catalogue", {}).get("GET", 0)
            lines.append(f"  {label}: LIST by area: {', '.join(parts)}; catalogue GETs {gets:,}")
    return lines


def render(figures: dict, checks: list[dict]) -> str:
    """Render the printed result."""
    machine, day = figures["machine"], figures["days"][0]
    lines = [
        "",
        f"Scale benchmark, {machine['date']}, {machine['cpus']} CPUs",
        f"command: {figures['command']}; code: commit {figures['code'].get('commit') or '?'}",
        f"a day: {day['images']:,} real images, {day['patients']} new patients "
        f"({day['clinical']} clinical files); real part of each warehouse: "
        f"{figures['real_part']['images']:,} images",
        "",
        main_table(figures),
        "",
        "S3-equivalent requests by kind:",
        "",
        requests_table(figures),
        "",
        "Where the daily run's LIST requests go:",
        *where_lists_go(figures),
        "",
        "The S3 Inventory of each size (the reconcile's source for the closed upload folders "
        "and the warehouse side):",
        *inventory_lines(figures),
        "",
        "Targets:",
        "",
        markdown(
            ["target", "size", "figure", "result"],
            [[c["target"], c["size"], c["figure"], c["result"]] for c in checks],
        ),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""targets (the issue's; checked at 1M and 10M, or at the largest size run):
  daily run of 1,000 images: CPU <= 2x the smallest size's, peak RSS <= 400 MB,
    LIST <= 50 + the new upload folders
  rerun with nothing new: CPU <= 2x the smallest size's
  dataprocess: peak RSS <= 1 GB, CPU <= 2x the smallest size's (the same new studies);
    a rerun with nothing new: CPU <= 2x the smallest size's
  reconcile at 10M from an S3 Inventory: peak RSS <= 2 GB (shown at every size);
  each shard at 1M: peak RSS <= 400 MB
and what the runs filed: the day by the daily run, nothing by the rerun and the reconcile
(which reads the inventory, never listing the folders it covers).

--quick ({QUICK_SIZES}) takes a few minutes on 2 cores; the default sizes ({DEFAULT_SIZES})
about half an hour, most of it at 1M and 10M. Nothing leaves the machine.""",
    )
    parser.add_argument(
        "--sizes", help=f"warehouse sizes, comma-separated (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, no floor")
    parser.add_argument(
        "--generated-from",
        default=DEFAULT_GENERATED_FROM,
        help="sizes from this one on are generated in memory (default %(default)s)",
    )
    parser.add_argument(
        "--sharded-sizes",
        default="1M",
        help="sizes at which a second day is loaded by a sharded run (default 1M; '' for none)",
    )
    parser.add_argument("--shards", type=int, default=2, help="image shards (default 2)")
    parser.add_argument("--day-images", type=int, default=1000, help="images a day (default 1,000)")
    parser.add_argument(
        "--setup-generated",
        action="store_true",
        help="also run the setup reconcile (from the inventory) and dataprocess at generated "
        "sizes: what writes the catalogue index the later runs read",
    )
    parser.add_argument("--floor", action="store_true", help="also run the request floor benchmark")
    parser.add_argument(
        "--listing-reconcile",
        action="store_true",
        help="also run a reconcile without the inventory (it lists the whole bucket)",
    )
    parser.add_argument("--max-rss-gb", type=float, default=6.0, help="stop a run past it (6)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop a run past it")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--workdir", type=Path, help="where warehouses go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep each warehouse (with --workdir)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is not met")
    parser.add_argument(
        "--from-json", type=Path, help="print the table and targets of a results file again"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line, sizes included."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        text = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        args.sizes = sorted({parse_size(s) for s in text.split(",") if s.strip()})
        args.generated_from = parse_size(args.generated_from)
        args.sharded_sizes = {parse_size(s) for s in args.sharded_sizes.split(",") if s.strip()}
    except ValueError as exc:
        parser.error(str(exc))
    if args.shards < 1 or args.day_images < 1:
        parser.error("--shards and --day-images must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the targets; write the JSON.

    Returns
    -------
    int
        0 when the harness ran (1 with ``--check`` when a target is not met).
    """
    args = parse_args(argv)
    if args.from_json:
        figures = json.loads(args.from_json.read_text(encoding="utf-8"))
        print(render(figures, evaluate(figures)))
        return 0
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="warehouse-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    harness = Harness(args, workdir)
    figures = harness.figures
    figures["command"] = "python -m benchmarks.scale " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    figures["machine"] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    figures["code"] = loader_version()
    try:
        harness.prepare()
        for size in args.sizes:
            figures["sizes"][size_label(size)] = harness.measure(size)
        if args.floor:
            harness.floor()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    figures["harness_seconds"] = round(time.monotonic() - _STARTED, 1)
    checks = evaluate(figures)
    figures["checks"] = checks
    print(render(figures, checks))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=1, default=str) + "\n", encoding="utf-8")
    print(
        f"\nfigures written to {args.output}; the harness took {figures['harness_seconds']:.0f} s"
    )
    failed = [c for c in checks if c["result"] == "FAIL"]
    if failed:
        print(f"targets not met: {len(failed)} of {len(checks)}")
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
