#!/usr/bin/env python3
"""Submit a sharded loader run to AWS Batch and wait for it, printing its progress.

Examples::

    python infrastructure/tools/sharded_run.py --suffix prod --shards 16
    python infrastructure/tools/sharded_run.py --suffix dev --shards 4 --no-wait

A sharded run is two submissions to the stack's queue (``warehouse-<suffix>``):

1. the clinical phase: one job of ``warehouse-<suffix>-clinical-phase``, which takes the run
   lease, reads the new clinical files once, assigns the groups and copies them;
2. the image shards: an array job of ``warehouse-<suffix>-image-shards`` with ``--shards``
   children (one job for ``--shards 1``), which depends on the clinical phase: Batch starts it
   only once that job has succeeded. Each child files the images of its shard; the last to end
   combines the parts' reports into the run's report and ``latest.json`` and releases the lease.

Both get the run's id (``WAREHOUSE_RUN_ID``) and the shards ``WAREHOUSE_SHARDS``; Batch gives
each child ``AWS_BATCH_JOB_ARRAY_INDEX``. The command waits until both jobs have ended (unless
``--no-wait``), printing each change of their states and of the shards' counts, and exits with
0 when every job succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infrastructure.tools.aws_errors import aws_error_exit
from warehouse import __version__

#: The largest array job AWS Batch runs.
MAX_SHARDS = 10_000
ENDED = ("SUCCEEDED", "FAILED")
STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")


def names(suffix: str) -> dict[str, str]:
    """The stack's queue and job definitions for a suffix.

    Parameters
    ----------
    suffix : str
        The stack suffix, such as ``dev``.

    Returns
    -------
    dict
        ``queue``, ``clinical`` and ``shards``.
    """
    return {
        "queue": f"warehouse-{suffix}",
        "clinical": f"warehouse-{suffix}-clinical-phase",
        "shards": f"warehouse-{suffix}-image-shards",
    }


def new_run_id() -> str:
    """A run id in the loader's form: ``20261202T101500Z-4f1c9a2b``."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def submit_run(client, suffix: str, shards: int, run_id: str) -> tuple[str, str]:
    """Submit the clinical phase, then the image shards depending on it.

    Parameters
    ----------
    client : botocore.client.Batch
        The Batch client.
    suffix : str
        The stack suffix.
    shards : int
        Number of image shards, 1 to 10,000.
    run_id : str
        The run's id (``WAREHOUSE_RUN_ID`` of every job).

    Returns
    -------
    tuple of str
        The clinical phase's job id and the shards' (array) job id.
    """
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be from 1 to {MAX_SHARDS}")
    found = names(suffix)
    run = [{"name": "WAREHOUSE_RUN_ID", "value": run_id}]
    clinical = client.submit_job(
        jobName=f"warehouse-{suffix}-clinical-{run_id}",
        jobQueue=found["queue"],
        jobDefinition=found["clinical"],
        containerOverrides={"environment": run},
    )["jobId"]
    request: dict[str, Any] = {
        "jobName": f"warehouse-{suffix}-shards-{run_id}",
        "jobQueue": found["queue"],
        "jobDefinition": found["shards"],
        "dependsOn": [{"jobId": clinical}],
        "containerOverrides": {"environment": run},
    }
    if shards > 1:  # an array job has 2 children at least; one shard is WAREHOUSE_PHASE=images
        request["arrayProperties"] = {"size": shards}
        request["containerOverrides"]["environment"] = [
            *run,
            {"name": "WAREHOUSE_SHARDS", "value": str(shards)},
        ]
    return clinical, client.submit_job(**request)["jobId"]


def describe(client, job_ids: list[str]) -> dict[str, dict]:
    """The jobs' descriptions, by id."""
    return {job["jobId"]: job for job in client.describe_jobs(jobs=job_ids)["jobs"]}


def progress_line(clinical: dict, shards: dict, count: int) -> str:
    """``clinical phase RUNNING; shards PENDING (0/16 succeeded)`` from the two jobs."""
    line = f"clinical phase {clinical['status']}; shards {shards['status']}"
    summary = (shards.get("arrayProperties") or {}).get("statusSummary") or {}
    if count > 1:
        parts = [f"{summary.get('SUCCEEDED', 0)}/{count} succeeded"]
        parts += [
            f"{summary[s]} {s.lower()}" for s in STATES if s != "SUCCEEDED" and summary.get(s)
        ]
        line += f" ({', '.join(parts)})"
    reason = shards.get("statusReason") or clinical.get("statusReason")
    if reason and (clinical["status"] == "FAILED" or shards["status"] == "FAILED"):
        line += f": {reason}"
    return line


def wait_for_run(
    client,
    clinical_id: str,
    shards_id: str,
    count: int,
    *,
    poll_seconds: float = 15.0,
    timeout_seconds: float | None = None,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until both jobs have ended, saying each change of their progress.

    Returns
    -------
    bool
        Whether both succeeded.

    Raises
    ------
    TimeoutError
        When ``timeout_seconds`` pass first (the jobs go on).
    """
    started = time.monotonic()
    last = None
    while True:
        jobs = describe(client, [clinical_id, shards_id])
        clinical, shards = jobs[clinical_id], jobs[shards_id]
        line = progress_line(clinical, shards, count)
        if line != last:
            say(f"[{dt.datetime.now(dt.UTC):%H:%M:%S}] {line}")
            last = line
        if clinical["status"] == "FAILED" and shards["status"] not in ENDED:
            # Batch fails a job whose dependency failed, but only when it gets to it
            say("the clinical phase failed: the shards will not run (see its log)")
            return False
        if clinical["status"] in ENDED and shards["status"] in ENDED:
            return clinical["status"] == shards["status"] == "SUCCEEDED"
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            raise TimeoutError(f"the run had not ended after {timeout_seconds:g} s")
        sleep(poll_seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Submit a sharded warehouseloader run to AWS Batch (a clinical phase, then "
        "an array job of image shards that depends on it) and wait for it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 every job succeeded; 1 a job failed (rerun: the next run, sharded "
        "or not, finishes the work), or AWS refused the request.",
    )
    parser.add_argument("--suffix", required=True, help="the stack suffix (dev, prod, ...)")
    parser.add_argument(
        "--shards", type=int, required=True, help=f"number of image shards (1 to {MAX_SHARDS})"
    )
    parser.add_argument("--region", help="AWS region (default: the standard AWS settings)")
    parser.add_argument("--run-id", help="the run's id (default: a new one)")
    parser.add_argument(
        "--poll-seconds", type=float, default=15.0, help="seconds between checks (default 15)"
    )
    parser.add_argument("--no-wait", action="store_true", help="submit and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    options = parser.parse_args(argv)
    if not 1 <= options.shards <= MAX_SHARDS:
        parser.error(f"--shards must be from 1 to {MAX_SHARDS}")
    if options.poll_seconds <= 0:
        parser.error("--poll-seconds must be positive")
    return options


def main(argv: list[str] | None = None) -> int:
    """Submit the run and wait for it.

    Returns
    -------
    int
        0 when every job succeeded (or was submitted, with ``--no-wait``), 2 when the AWS
        credentials or region are missing or refused (said in one line), 1 otherwise.
    """
    options = parse_args(argv)
    run_id = options.run_id or new_run_id()
    try:
        client = boto3.client("batch", region_name=options.region)
        clinical_id, shards_id = submit_run(client, options.suffix, options.shards, run_id)
        print(
            f"run {run_id}: clinical phase job {clinical_id}, then {options.shards} shard(s) "
            f"in job {shards_id}",
            flush=True,
        )
        if options.no_wait:
            return 0
        ok = wait_for_run(
            client,
            clinical_id,
            shards_id,
            options.shards,
            poll_seconds=options.poll_seconds,
            say=lambda line: print(line, flush=True),
        )
    except (ClientError, BotoCoreError) as error:
        return aws_error_exit(error)
    parts = f"reports/warehouseloader/runs/{run_id}/"
    if ok:
        print(
            f"run {run_id} succeeded: its report is reports/warehouseloader/latest.json in the "
            f"warehouse bucket (each part's under {parts})"
        )
        return 0
    print(
        f"run {run_id} did not complete: the parts' reports are under {parts}; the next run, "
        "sharded or not, finishes the work (a lease left by a part that never ended expires "
        "within 5 minutes)"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
