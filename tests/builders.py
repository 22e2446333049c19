"""Small upload trees for tests: DICOM files made with pydicom, clinical JSON, config."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from warehouse.core.config import Settings
from warehouse.storage.base import Storage
from warehouse.storage.wrappers import DryRunStorage
from warehouse.synthetic import build_dicom


def uid(*parts) -> str:
    """A stable DICOM UID derived from ``parts``."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:30], 16)
    return f"1.2.826.0.1.3680043.10.1.{digest}"


def image(patient_id, modality="DX", study="s1", series="r1", instance=1, **kwargs):
    """``(file name, DICOM bytes)`` of one image; identifiers derive from the short names."""
    sop = uid(patient_id, study, series, instance)
    data = build_dicom(
        patient_id=patient_id,
        study_uid=uid(patient_id, study),
        series_uid=uid(patient_id, study, series),
        sop_uid=sop,
        modality=modality,
        **kwargs,
    )
    return f"{sop}.dcm", data


def clinical(pseudonym, centre, **fields) -> bytes:
    """A clinical JSON file's bytes."""
    record = {"Pseudonym": pseudonym, "SubmittingCentre": centre, **fields}
    return json.dumps(record).encode()


def config(prefixes, split=(), training=(), validation=(), percentage=50) -> bytes:
    """A ``config.json``."""
    doc = {
        "raw_prefixes": list(prefixes),
        "training_percentage": percentage,
        "sites": {"split": list(split), "training": list(training), "validation": list(validation)},
    }
    return json.dumps(doc).encode()


def put_tree(storage: Storage, files: dict[str, bytes]) -> None:
    """Write every ``key: bytes`` of ``files`` into ``storage``."""
    for key, data in files.items():
        storage.write(key, data)


def snapshot(storage: Storage, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` (run records excluded: reports, feedback files, catalogue
    parts and the run's state, which are named by or hold the run's time), key -> content."""
    return {
        info.key: storage.read(info.key)
        for info in storage.list(prefix)
        if not info.key.startswith(("reports/", "feedback/", "catalogue/", "state/"))
    }


def age_objects(storage: Storage, seconds: float) -> None:
    """Make every object of ``storage`` last modified ``seconds`` earlier, as if it had been
    written that long ago: instead of waiting for the clock (S3 lists whole seconds). A local
    store's files get an earlier mtime; an S3 store must be a bucket of this process's moto
    server (`conftest.moto_server`), whose objects' times are set in moto's own backend."""
    from warehouse.storage.local import LocalStorage

    if isinstance(storage, LocalStorage):
        for path in storage.root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                status = path.stat()
                earlier = status.st_mtime_ns - round(seconds * 1e9)
                os.utime(path, ns=(status.st_atime_ns, earlier))
        return
    from moto.s3.models import s3_backends

    buckets = [
        backend.buckets[storage.bucket]
        for account in s3_backends.values()
        for backend in account.values()
        if storage.bucket in backend.buckets
    ]
    assert len(buckets) == 1, f"bucket {storage.bucket} is not on this process's moto server"
    for versions in buckets[0].keys.iterlists():
        for key in versions[1]:
            key.last_modified -= dt.timedelta(seconds=seconds)


def run_loader(storage: Storage, **settings):
    """Run the loader graph in this process on ``storage``; return ``(exit code, state)``."""
    from warehouse import warehouseloader

    if settings.get("dry_run"):
        storage = DryRunStorage(storage)
    services = warehouseloader.get_services(
        settings=Settings(bucket=storage.url, **settings), storage=storage
    )
    code = warehouseloader.run(services)
    return code, services["state"]


REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def graph_env(**extra) -> dict[str, str]:
    """This process's environment without any WAREHOUSE_* or BUCKET_NAME setting, plus
    ``extra``: what a graph subprocess sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAREHOUSE_")}
    env.pop("BUCKET_NAME", None)
    env.update(extra)
    return env


def start_loader(env: dict[str, str], *, capture: bool = False) -> subprocess.Popen:
    """``python -m warehouse.warehouseloader`` started from the repository root with ``env``;
    its output captured as text with ``capture``, else discarded."""
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [str(BIN / "python"), "-m", "warehouse.warehouseloader"],
        cwd=REPO,
        env=env,
        stdout=output,
        stderr=output,
        text=True,
    )


def kill_loader_when(root: Path, reached, timeout: float = 60) -> None:
    """Run the loader on the local bucket ``root`` (one worker) and SIGKILL it as soon as
    ``reached()`` holds (or after ``timeout`` seconds): what a killed task leaves."""
    process = start_loader(graph_env(WAREHOUSE_BUCKET=f"file://{root}", WAREHOUSE_WORKERS="1"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not reached():
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def python_m(graph: str, args=(), env=None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m warehouse.<graph> args`` from the repository root, output captured."""
    return subprocess.run(
        [str(BIN / "python"), "-m", f"warehouse.{graph}", *args],
        cwd=REPO,
        env=graph_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def bonobo_run(graph: str, bucket_root, cwd) -> subprocess.CompletedProcess:
    """``bonobo run warehouse/<graph>.py --env WAREHOUSE_BUCKET=file://<bucket_root>``."""
    return subprocess.run(
        [
            str(BIN / "bonobo"),
            "run",
            str(REPO / "warehouse" / f"{graph}.py"),
            "--env",
            f"WAREHOUSE_BUCKET=file://{bucket_root}",
        ],
        cwd=cwd,
        env=graph_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def exited_pid() -> int:
    """The pid of a process that has exited (pids are not reused until they wrap)."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def rows_table(rows):
    """A catalogue table of ``rows`` (tuples in the schema's column order), as a run makes it."""
    from warehouse.catalogue.rows import RowBuffer

    buffer = RowBuffer()
    for row in rows:
        buffer.add(row)
    return buffer.table()


#: The product's own objects a run reads besides its inputs (config, state, reports).
_RUN_STATE = ("config.json", "reports/", "state/", "catalogue/")


def catalogue_rows(storage: Storage) -> dict[str, dict]:
    """Every row of the loader's catalogue parts in ``storage``, by warehouse key (read with
    pyarrow directly, not the product's reader)."""
    rows: dict[str, dict] = {}
    for info in sorted(storage.list("catalogue/images/"), key=lambda i: i.key):
        if info.key.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(storage.read(info.key)))
            for row in table.to_pylist():
                rows[row["warehouse_key"]] = row
    return rows


def input_reads(keys) -> list[str]:
    """The keys of ``keys`` that are inputs or filed objects (raw or warehouse side), not the
    product's own state a run reads (config, last report, folder state, catalogue), sorted."""
    return sorted(k for k in keys if not k.startswith(_RUN_STATE))
