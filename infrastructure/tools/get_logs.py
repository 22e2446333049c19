#!/usr/bin/env python3
"""Download one CloudWatch log stream, every page, to a JSON file.

Examples::

    python infrastructure/tools/get_logs.py --suffix dev --latest
    python infrastructure/tools/get_logs.py --suffix prod \\
        --log-stream pipeline/warehouseloader/0123456789abcdef -o run.json

The log group is ``/ecs/warehouse-<suffix>-pipeline`` (or ``--log-group``). A task's stream is
``<graph prefix>/<container>/<task id>``: ``pipeline/warehouseloader/<id>``,
``submittingcentres/submittingcentres/<id>``, ``dataprocess/dataprocess/<id>``.
The file holds ``{"logGroupName", "logStreamName", "events": [{"timestamp", "time",
"message", "ingestionTime"}]}``, oldest event first.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from infrastructure.tools.aws_errors import aws_error_exit
from warehouse import __version__


def log_group_name(suffix: str) -> str:
    """Return the tasks' log group for a stack suffix.

    Parameters
    ----------
    suffix : str
        The stack suffix, such as ``dev``.

    Returns
    -------
    str
        ``/ecs/warehouse-<suffix>-pipeline``.
    """
    return f"/ecs/warehouse-{suffix}-pipeline"


def latest_stream(client, group: str, prefix: str = "") -> str:
    """Return the name of the stream with the most recent event.

    Parameters
    ----------
    client : botocore.client.CloudWatchLogs
        The logs client.
    group : str
        The log group.
    prefix : str
        Only streams whose name starts with this (for example ``pipeline/``).

    Returns
    -------
    str
        The stream name.

    Raises
    ------
    LookupError
        When the group has no (matching) stream.
    """
    paginator = client.get_paginator("describe_log_streams")
    pages = paginator.paginate(logGroupName=group, orderBy="LastEventTime", descending=True)
    for page in pages:
        for stream in page.get("logStreams", []):
            if stream["logStreamName"].startswith(prefix):
                return stream["logStreamName"]
    raise LookupError(f"no log stream{' starting with ' + prefix if prefix else ''} in {group}")


def fetch_events(client, group: str, stream: str, page_size: int | None = None) -> list[dict]:
    """Read every event of a stream, oldest first, following ``nextForwardToken``.

    CloudWatch signals the end of a stream by returning the token it was given, so the loop
    stops when the token stops changing.

    Parameters
    ----------
    client : botocore.client.CloudWatchLogs
        The logs client.
    group : str
        The log group.
    stream : str
        The log stream.
    page_size : int, optional
        Events per request (CloudWatch's default and maximum is 10,000).

    Returns
    -------
    list of dict
        ``timestamp`` and ``ingestionTime`` (ms since the epoch), ``time`` (ISO 8601, UTC)
        and ``message`` for each event.
    """
    request = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    if page_size:
        request["limit"] = page_size
    events, token = [], None
    while True:
        page = client.get_log_events(**request, **({"nextToken": token} if token else {}))
        for event in page.get("events", []):
            stamp = event["timestamp"]
            events.append(
                {
                    "timestamp": stamp,
                    "time": datetime.fromtimestamp(stamp / 1000, UTC).isoformat(),
                    "message": event["message"],
                    "ingestionTime": event.get("ingestionTime"),
                }
            )
        next_token = page.get("nextForwardToken")
        if not next_token or next_token == token:
            return events
        token = next_token


def default_output(stream: str) -> Path:
    """Return the default file name for a stream: its name with ``/`` as ``_``, ``.json``.

    Parameters
    ----------
    stream : str
        The stream name.

    Returns
    -------
    pathlib.Path
        For example ``pipeline_warehouseloader_0123.json``.
    """
    return Path(stream.replace("/", "_") + ".json")


def page_size_argument(value: str) -> int:
    """Validate ``--page-size`` (argparse type): an integer from 1 to 10,000.

    Parameters
    ----------
    value : str
        The value given.

    Returns
    -------
    int
        The page size.

    Raises
    ------
    argparse.ArgumentTypeError
        When it is not an integer in range.
    """
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer from 1 to 10000")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``-h`` lists the options).

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    argparse.Namespace
        The options.
    """
    parser = argparse.ArgumentParser(
        description="Download one CloudWatch log stream of the warehouse tasks to a JSON file.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--suffix", help="stack suffix: the group is /ecs/warehouse-<suffix>-pipeline"
    )
    group.add_argument("--log-group", help="log group name")
    stream = parser.add_mutually_exclusive_group(required=True)
    stream.add_argument("--log-stream", help="stream name, e.g. pipeline/warehouseloader/<task id>")
    stream.add_argument(
        "--latest", action="store_true", help="the stream with the most recent event"
    )
    parser.add_argument(
        "--prefix", default="", help="with --latest: only streams starting with this (pipeline/)"
    )
    parser.add_argument("-o", "--output", type=Path, help="JSON file (default: <stream>.json)")
    parser.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    parser.add_argument(
        "--page-size", type=page_size_argument, metavar="N", help="events per request (1-10000)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Download the stream and write the JSON file.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 on success, 1 when the group or stream was not found or AWS refused the request,
        2 when the AWS credentials or region are missing or refused (one line, printed).
    """
    options = parse_args(argv)
    group = options.log_group or log_group_name(options.suffix)
    try:
        client = boto3.client("logs", region_name=options.region)
        stream = options.log_stream or latest_stream(client, group, options.prefix)
        events = fetch_events(client, group, stream, options.page_size)
    except LookupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as error:
        return aws_error_exit(error)
    output = options.output or default_output(stream)
    document = {"logGroupName": group, "logStreamName": stream, "events": events}
    output.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(events)} events from {group} {stream} written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
