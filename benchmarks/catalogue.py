"""The image catalogue's cost: ``python -m benchmarks.catalogue``.

On a generated tree seeded into a moto S3 server behind the delaying, counting proxy (20 ms a
request by default), it measures:

1. a loader run (``python -m warehouse.warehouseloader``, default settings): requests per raw
   image by subject, the image requests alone (what the catalogue must leave unchanged: it
   makes no request per image) and the catalogue's own requests (the listing of
   ``catalogue/images/`` and the part's PUT);
2. a rerun with nothing new: the catalogue's requests (the listing alone; no part);
3. the backfill ``dataprocess`` runs on a warehouse without parts (the part deleted): images
   per second and requests per image, with the run's worker pool (``WAREHOUSE_WORKERS``,
   default 32), timed alone (after the warehouse listing it shares with the other tables).

It prints the figures and writes them as JSON (``--output``). Everything runs on 127.0.0.1
with fake AWS credentials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import floor as floor_clients
from benchmarks.proxy import read_counts, reset_counts, start_moto, start_proxy
from benchmarks.run import (
    FAKE_AWS,
    fake_aws_environment,
    make_tree,
    request_breakdown,
    run_process,
    seed_buckets,
)
from warehouse.core.config import DEFAULT_WORKERS

BUCKET = "catalogue-bench"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catalogue", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="per request (default 20)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    return parser


def _catalogue_requests(counts: dict) -> dict:
    return dict(sorted(counts["subjects"].get("catalogue", {}).items()))


def _backfill(proxy_url: str, workers: int) -> dict:
    """Delete the parts, then run the backfill of `warehouse.catalogue.merge` through the
    proxy, timed alone."""
    from warehouse.catalogue.merge import image_catalogue
    from warehouse.catalogue.rows import PARTS_PREFIX
    from warehouse.core.report import RunReport
    from warehouse.core.run import WorkerPool
    from warehouse.listing.warehouse import index_warehouse
    from warehouse.storage.s3 import S3Storage

    os.environ["AWS_ENDPOINT_URL"] = proxy_url
    storage = S3Storage(BUCKET, workers=workers)
    client = storage.client
    for info in list(storage.list(PARTS_PREFIX)):
        client.delete_object(Bucket=BUCKET, Key=info.key)
    filed = index_warehouse(storage, workers).filed_images()
    pool = WorkerPool(workers)
    report = RunReport("dataprocess")
    reset_counts(proxy_url)
    started = time.perf_counter()
    table = image_catalogue(storage, filed, pool.submit, report, dt.datetime.now(dt.UTC))
    seconds = time.perf_counter() - started
    pool.shutdown()
    counts = read_counts(proxy_url)
    return {
        "images": table.num_rows,
        "seconds": round(seconds, 2),
        "images_per_second": round(table.num_rows / seconds, 1),
        "requests": counts["total"],
        "requests_per_image": round(counts["total"] / max(1, table.num_rows), 3),
        "requests_by_kind": dict(sorted(counts["kinds"].items())),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print their figures."""
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="catalogue-bench-") as folder:
        workdir = Path(folder)
        env = fake_aws_environment(workdir)
        os.environ.update({k: env[k] for k in (*FAKE_AWS, "AWS_CONFIG_FILE")})
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"]
        print(f"generating {args.patients} patients, {args.images} images", file=sys.stderr)
        tree = make_tree(workdir / "tree", args.patients, args.images)
        with start_moto() as moto, start_proxy(moto.url, args.delay_ms) as proxy:
            seed_buckets(moto.url, [(BUCKET, tree)])
            floor_clients.make_client(1, moto.url).create_bucket(Bucket=f"{BUCKET}-processed")
            run_env = dict(
                env,
                WAREHOUSE_BUCKET=BUCKET,
                AWS_ENDPOINT_URL=proxy.url,
                WAREHOUSE_WORKERS=str(args.workers),
            )
            figures: dict = {"delay_ms": args.delay_ms, "workers": args.workers}
            for name in ("first run", "rerun"):
                reset_counts(proxy.url)
                process = run_process(
                    [sys.executable, "-m", "warehouse.warehouseloader"],
                    run_env,
                    workdir / f"{name}.log",
                )
                if process.exit_code != 0:
                    print(process.stderr[-3000:], file=sys.stderr)
                    return 1
                counts = read_counts(proxy.url)
                breakdown = request_breakdown(counts, len(tree.images), tree.clinical)
                figures[name] = {
                    "seconds": round(process.seconds, 1),
                    "raw_images": len(tree.images),
                    "requests_per_image_without_clinical": breakdown["without_clinical"],
                    "image_requests_per_image": breakdown["image_only"],
                    "catalogue_requests": _catalogue_requests(counts),
                    "total_requests": counts["total"],
                }
            figures["backfill"] = _backfill(proxy.url, args.workers)
    _print(figures)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def _print(figures: dict) -> None:
    first, rerun, backfill = figures["first run"], figures["rerun"], figures["backfill"]
    lines = [
        f"at {figures['delay_ms']:g} ms a request, {figures['workers']} workers",
        f"loader, first run ({first['raw_images']:,} raw images, {first['seconds']} s):",
        f"  requests per raw image (images, listing, config, report, catalogue): "
        f"{first['requests_per_image_without_clinical']}",
        f"  image requests per raw image: {first['image_requests_per_image']}",
        f"  catalogue requests in the run: {first['catalogue_requests']}",
        f"loader, rerun with nothing new ({rerun['total_requests']} requests): "
        f"catalogue requests {rerun['catalogue_requests']}",
        f"backfill of {backfill['images']:,} images: {backfill['seconds']} s, "
        f"{backfill['images_per_second']} images/s, {backfill['requests_per_image']} requests "
        f"per image {backfill['requests_by_kind']}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
