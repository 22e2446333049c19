"""The image catalogue's cost: ``python -m benchmarks.catalogue``.

On a generated tree seeded into a moto S3 server behind the delaying, counting proxy (20 ms a
request by default), it measures:

1. a loader run (``python -m warehouse.warehouseloader``, default settings): requests per raw
   image by subject, the image requests alone (what the catalogue must leave unchanged: it
   makes no request per image) and the catalogue's own requests (the listing of
   ``catalogue/images/`` and the part's PUT);
2. a rerun with nothing new: the catalogue's requests (the listing alone; no part);
3. a reconcile run of the loader (``WAREHOUSE_RECONCILE=1``) on a warehouse without parts
   (the parts and the index deleted, as filed before the catalogue existed): it catalogues
   every filed image from its header; images per second and requests per image, with the
   run's worker pool (``WAREHOUSE_WORKERS``, default 32).

It prints the figures and writes them as JSON (``--output``). Everything runs on 127.0.0.1
with fake AWS credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
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


def _recovery(proxy_url: str, run_env: dict, workdir: Path) -> dict | None:
    """Delete the parts and the index, then time a reconcile run of the loader through the
    proxy: it catalogues every filed image that no part lists."""
    from warehouse.storage.s3 import S3Storage

    os.environ["AWS_ENDPOINT_URL"] = proxy_url
    storage = S3Storage(BUCKET)
    for info in list(storage.list("catalogue/")):
        storage.client.delete_object(Bucket=BUCKET, Key=info.key)
    reset_counts(proxy_url)
    process = run_process(
        [sys.executable, "-m", "warehouse.warehouseloader"],
        dict(run_env, WAREHOUSE_RECONCILE="true"),
        workdir / "reconcile.log",
    )
    if process.exit_code != 0:
        print(process.stderr[-3000:], file=sys.stderr)
        return None
    counts = read_counts(proxy_url)
    found = re.search(r"filed images in no part catalogued: ([\d,]+)", process.stdout)
    images = int(found.group(1).replace(",", "")) if found else 0
    return {
        "images": images,
        "seconds": round(process.seconds, 2),
        "images_per_second": round(images / process.seconds, 1),
        "requests": counts["total"],
        "requests_per_image": round(counts["total"] / max(1, images), 3),
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
            recovery = _recovery(proxy.url, run_env, workdir)
            if recovery is None:
                return 1
            figures["reconcile"] = recovery
    _print(figures)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def _print(figures: dict) -> None:
    first, rerun, recovery = figures["first run"], figures["rerun"], figures["reconcile"]
    lines = [
        f"at {figures['delay_ms']:g} ms a request, {figures['workers']} workers",
        f"loader, first run ({first['raw_images']:,} raw images, {first['seconds']} s):",
        f"  requests per raw image (images, listing, config, report, catalogue): "
        f"{first['requests_per_image_without_clinical']}",
        f"  image requests per raw image: {first['image_requests_per_image']}",
        f"  catalogue requests in the run: {first['catalogue_requests']}",
        f"loader, rerun with nothing new ({rerun['total_requests']} requests): "
        f"catalogue requests {rerun['catalogue_requests']}",
        f"reconcile cataloguing {recovery['images']:,} images in no part: "
        f"{recovery['seconds']} s, {recovery['images_per_second']} images/s, "
        f"{recovery['requests_per_image']} requests per image {recovery['requests_by_kind']}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
