"""Run one graph as a container task: time it, report it, notify, keep its exit code.

The ``bin/`` scripts (the container commands on ECS Fargate) are thin callers of this module.
Each runs its graph as ``python -m warehouse.<graph>`` in a child process, so the exit code is
the graph's own, and prints one line when the run ends::

    Pipeline run in 00h:01m:02s and exited with code 0.

When the environment variable ``TOPIC_ARN`` is set (and not empty), the run ends with one SNS
message, in the topic's own region, that an operator can act on (`build_message`): its subject
says the outcome first (``OK``, ``OK with 34 problems``, ``FAILED: <why>``), then where and
which graph; its body why a run failed (the run's fatal error, else the last error line the
graph wrote on stderr, else the signal that killed it), the run summary (counts, run id, where
the report and its page are), on ECS the task and its log stream with a CloudWatch console
link (`ecs_task_context`), and the centres for ``submittingcentres``. ``NOTIFY`` says which
runs notify: ``always`` (the default), ``problems`` (a run that failed or has inputs not
filed), ``failures`` (a run that failed). A malformed ``TOPIC_ARN`` or ``NOTIFY`` is a bad
setting: nothing runs, exit code 2. A notification that cannot be sent (a topic that does not
exist, no right to publish, refused credentials) is said on stderr, after the timing line, as
one ``error: notification not sent ...`` line; the exit code stays the run's. A graph asked for
its ``--help`` or ``--version`` only answers: no timing line, no notification.

The child's standard error is inherited (bonobo's status lines go straight to the container
log); when a notification is to be sent, it is inherited through a pipe whose last lines are
kept (`StderrTail`), for the reason. Its standard output is inherited too, except when it is
needed for the message, in which case it is copied line by line to this process's stdout as it
arrives and kept. The timing line goes to stderr, so that ``submittingcentres > centres.txt``
holds the centres only.

SIGTERM and SIGINT are passed on to the child, which stops cleanly (ECS sends SIGTERM to the
container's main process when it stops a task; `warehouse.core.stop`), and the wrapper waits for
it: its exit code, 143 or 130, is the wrapper's. The child runs in a process group of its own,
so a Ctrl-C at a terminal reaches it once, through the wrapper (a second Ctrl-C ends it at once).
A child killed by signal ``N`` yields the shell's exit code ``128 + N``.

Run it directly to wrap any module::

    python -m warehouse.task warehouseloader --some-graph-option
    python -m warehouse.task --with-stdout --with-summary some.module ...
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from warehouse import __version__
from warehouse.core.text import escape_controls
from warehouse.storage.s3 import aws_text, credentials_problem

#: Root of the source tree (the directory holding the ``warehouse`` package).
SOURCE_ROOT = Path(__file__).resolve().parents[1]

#: SNS limits: a subject is printable ASCII on one line, less than 100 characters; a message is
#: at most 256 KiB.
SUBJECT_LIMIT = 99
MESSAGE_LIMIT = 256 * 1024
#: The most characters of the subject given to where the run ran (the ECS cluster or the
#: bucket) and to the graph's name, so that the outcome always has room.
SUBJECT_PLACE_CHARS = 32
#: The most characters of a failed run's reason in the message body (the subject cuts it
#: further).
REASON_CHARS = 1_000
#: What the message quotes of a failed run's standard error: its last lines, each cut.
STDERR_LINES = 20
STDERR_LINE_CHARS = 500
#: Bytes of the child's standard error kept for the reason and those lines.
STDERR_TAIL_BYTES = 64 * 1024
#: How long the wrapper waits, after the child has ended, for the rest of its standard error
#: (a process it left behind may hold the pipe open: the wrapper does not wait for that one).
STDERR_DRAIN_SECONDS = 5.0
#: Each request to the ECS task metadata endpoint (local to the task) is given this long.
METADATA_TIMEOUT_SECONDS = 2.0
#: The most bytes read of one metadata document (a task's is a few kilobytes).
METADATA_BYTES = 1024 * 1024

#: ``NOTIFY``: which runs send a notification (the first is the default).
NOTIFY_CHOICES = ("always", "problems", "failures")
#: Exit code of the wrapper when ``TOPIC_ARN`` or ``NOTIFY`` is malformed (nothing runs): the
#: graphs' code for a bad setting.
EXIT_SETTINGS = 2

_TOPIC_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sns:(?P<region>[a-z0-9-]+):\d{12}:[\w.-]+$"
)


@dataclass(frozen=True)
class GraphTask:
    """What the wrapper does for one graph.

    Attributes
    ----------
    module : str
        The module run with ``python -m``.
    with_stdout : bool
        Add the graph's standard output to the notification (submittingcentres).
    with_summary : bool
        Ask the graph for a run summary through ``RUN_SUMMARY_FILE`` and add it to the
        notification.
    """

    module: str
    with_stdout: bool = False
    with_summary: bool = False


#: The three graphs, by the name of their ``bin/`` script (also the container command). Each
#: writes a run summary (counts, run id, its report), which the notification quotes.
GRAPH_TASKS = {
    "warehouseloader": GraphTask("warehouse.warehouseloader", with_summary=True),
    "submittingcentres": GraphTask(
        "warehouse.submittingcentres", with_stdout=True, with_summary=True
    ),
    "dataprocess": GraphTask("warehouse.dataprocess", with_summary=True),
}


def format_duration(seconds: float) -> str:
    """Format a duration as ``00h:01m:02s`` (whole seconds, rounded down).

    Parameters
    ----------
    seconds : float
        The duration; negative values count as zero.

    Returns
    -------
    str
        Hours, minutes and seconds, each at least two digits.
    """
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}h:{minutes:02d}m:{secs:02d}s"


def completion_line(seconds: float, exit_code: int) -> str:
    """Return the line printed (and published) when a run ends.

    Parameters
    ----------
    seconds : float
        How long the run took.
    exit_code : int
        The graph's exit code.

    Returns
    -------
    str
        ``Pipeline run in 00h:01m:02s and exited with code N.``
    """
    return f"Pipeline run in {format_duration(seconds)} and exited with code {exit_code}."


def topic_region(topic_arn: str) -> str:
    """Return the region of an SNS topic ARN.

    Parameters
    ----------
    topic_arn : str
        For example ``arn:aws:sns:eu-west-2:123456789012:warehouse-dev-notifications``.

    Returns
    -------
    str
        The region, for example ``eu-west-2``.

    Raises
    ------
    ValueError
        When the string is not an SNS topic ARN.
    """
    match = _TOPIC_ARN.match(topic_arn.strip())
    if not match:
        raise ValueError(f"TOPIC_ARN is not an SNS topic ARN: {topic_arn!r}")
    return match["region"]


def notify_setting(value: str | None) -> str:
    """Read ``NOTIFY``: which runs send a notification.

    Parameters
    ----------
    value : str or None
        The variable's value: ``always``, ``problems`` or ``failures``, in any case; unset or
        empty means ``always``.

    Returns
    -------
    str
        One of `NOTIFY_CHOICES`.

    Raises
    ------
    ValueError
        When it is anything else.
    """
    text = (value or "").strip().lower() or NOTIFY_CHOICES[0]
    if text not in NOTIFY_CHOICES:
        shown = escape_controls((value or "")[:40])
        raise ValueError(f"NOTIFY must be {', '.join(NOTIFY_CHOICES)}, not {shown!r}")
    return text


@dataclass(frozen=True)
class RunEnd:
    """How a graph's run ended, as the wrapper saw it.

    Attributes
    ----------
    graph : str
        The graph, such as ``warehouseloader`` (the module's last name).
    exit_code : int
        Its exit code (``128 + N`` when killed by signal ``N``).
    seconds : float
        How long it ran.
    summary : str or None
        Its run summary (``RUN_SUMMARY_FILE``), when asked for.
    stdout_text : str or None
        Its standard output, when kept (the submitting centres).
    stderr_tail : str
        The end of its standard error (`StderrTail`).
    """

    graph: str
    exit_code: int
    seconds: float
    summary: str | None = None
    stdout_text: str | None = None
    stderr_tail: str = ""

    @property
    def facts(self) -> dict[str, str]:
        """The labelled lines of the summary (`summary_facts`)."""
        return summary_facts(self.summary)


#: The lines of a run summary the notification reads, by their label (the summary's own
#: wording: `warehouse.core.report.RunReport.summary`, `warehouse.core.run.end_run`).
SUMMARY_LABELS = ("run could not complete", "not filed", "report", "report page", "run id")


def summary_facts(summary: str | None) -> dict[str, str]:
    """Read the labelled lines of a run summary that a notification names.

    A summary's top-level lines are indented by two spaces (``  not filed: 34``); the lines
    under them by four. Each line is escaped (`warehouse.core.text.escape_lines`), so a line
    quoting an upload cannot pass for another.

    Parameters
    ----------
    summary : str or None
        The run summary.

    Returns
    -------
    dict
        Label (of `SUMMARY_LABELS`) -> value, for the labels the summary has (the last line of
        each).
    """
    facts: dict[str, str] = {}
    for line in (summary or "").splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue
        label, sep, value = line.strip().partition(": ")
        if sep and label in SUMMARY_LABELS:
            facts[label] = value.strip()
    return facts


def problem_count(summary: str | None) -> int | None:
    """Count the inputs a run did not file (``not filed: N`` in its summary); None: unknown."""
    value = summary_facts(summary).get("not filed", "").replace(",", "")
    return int(value) if value.isdigit() else None


_LOG_ERROR = re.compile(r"^(?:ERROR|CRITICAL) [\w.<>-]+: (?P<message>.+)$")
#: Standard error lines that never say why a run failed: status and progress lines, and log
#: records below ERROR.
_NOT_A_REASON = re.compile(r"^(?:\[shard [^\]]*\] )?(?:- |progress: |(?:INFO|WARNING|DEBUG) )")


def last_error_line(stderr_text: str) -> str | None:
    """Find the last line of a graph's standard error that says what went wrong.

    In order: the last ``error: ...`` line (a setting, a store, the lease: the graphs' own
    one-line errors), ERROR or CRITICAL log record (text or JSON logs); else the last line that
    is not a status, progress or lower log line (such as a traceback's last line, or Python's
    ``No module named ...``).

    Parameters
    ----------
    stderr_text : str
        The end of the standard error.

    Returns
    -------
    str or None
        The line (its message alone for a log record), or None when there is none.
    """
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.lower().startswith("error: "):
            return line[len("error: ") :]
        match = _LOG_ERROR.match(line)
        if match:
            return match["message"]
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and str(record.get("level")) in ("ERROR", "CRITICAL"):
                    return str(record.get("message", ""))
    for line in reversed(lines):
        if not _NOT_A_REASON.match(line) and not line.startswith("Traceback"):
            return line
    return None


def signal_exit(exit_code: int) -> str | None:
    """Say what an exit code ``128 + N`` means: killed (or stopped) by signal ``N``.

    Parameters
    ----------
    exit_code : int
        The exit code.

    Returns
    -------
    str or None
        For example ``killed by SIGKILL (out of memory, or stopped by force)``; None for a
        code that is no signal's.
    """
    if exit_code <= 128:
        return None
    try:
        sig = signal.Signals(exit_code - 128)
    except ValueError:
        return None
    if sig == signal.SIGKILL:
        return "killed by SIGKILL (out of memory, or stopped by force)"
    if sig == signal.SIGTERM:
        return "stopped by SIGTERM (the task was stopped)"
    if sig == signal.SIGINT:
        return "interrupted by SIGINT (Ctrl-C)"
    return f"killed by {sig.name}"


def failure_reason(end: RunEnd) -> str:
    """One line saying why a run that did not succeed ended.

    The run's own fatal error (``run could not complete: ...`` in its summary) first; then a
    signal that ended it (its standard error may hold an unrelated error line from before);
    then the last error line of its standard error (`last_error_line`: the graphs' one-line
    errors, such as a bucket that does not exist or credentials AWS refused); else the exit
    code.

    Parameters
    ----------
    end : RunEnd
        How the run ended.

    Returns
    -------
    str
        The reason, escaped, at most `REASON_CHARS` characters.
    """
    reason = (
        end.facts.get("run could not complete")
        or signal_exit(end.exit_code)
        or last_error_line(end.stderr_tail)
        or f"exited with code {end.exit_code}"
    )
    reason = escape_controls(reason)
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 3] + "..."


def run_outcome(end: RunEnd) -> str:
    """Say the outcome a notification starts with: ``OK``, ``OK with N problems``, ``FAILED: why``.

    A run failed when its exit code is not 0; its problems are its inputs not filed (``not
    filed`` in its summary), which a completed run reports and does not fail on.

    Parameters
    ----------
    end : RunEnd
        How the run ended.

    Returns
    -------
    str
        The outcome, on one line.
    """
    if end.exit_code != 0:
        return f"FAILED: {failure_reason(end)}"
    problems = problem_count(end.summary)
    if problems:
        return f"OK with {problems:,} problem{'' if problems == 1 else 's'}"
    return "OK"


def should_notify(notify: str, end: RunEnd) -> bool:
    """Whether a run's end is notified under the ``NOTIFY`` setting.

    Parameters
    ----------
    notify : str
        ``always``, ``problems`` (a run that failed, or completed with inputs not filed) or
        ``failures`` (a run that failed: exit code not 0).
    end : RunEnd
        How the run ended.

    Returns
    -------
    bool
        True when the notification is sent.
    """
    if notify == "always" or end.exit_code != 0:
        return True
    return notify == "problems" and bool(problem_count(end.summary))


def subject_text(text: str) -> str:
    """Make ``text`` what an SNS subject may hold: printable ASCII on one line.

    Any other character is ``?``; runs of white space are one space.
    """
    ascii_only = "".join(c if " " <= c <= "~" else ("?" if not c.isspace() else " ") for c in text)
    return " ".join(ascii_only.split())


def notification_subject(outcome: str, graph: str, place: str | None = None) -> str:
    """Return the subject: the outcome first, then where and which graph, in brackets.

    Everything is made printable ASCII on one line (`subject_text`; a reason may quote an
    upload) and the whole kept under SNS's limit (`SUBJECT_LIMIT`): the place and the graph
    are cut to `SUBJECT_PLACE_CHARS` each, the outcome to what is left (at a word's end), with
    ``...``.

    Parameters
    ----------
    outcome : str
        `run_outcome`.
    graph : str
        The graph's name.
    place : str, optional
        Where the run ran: the ECS cluster (named after the stack), else the bucket.

    Returns
    -------
    str
        For example ``FAILED: no config.json at the root of s3://warehouse-1-prod
        [warehouse-prod warehouseloader]``.
    """
    names = [subject_text(name)[:SUBJECT_PLACE_CHARS] for name in (place or "", graph)]
    tail = " [" + " ".join(name for name in names if name) + "]"
    head = subject_text(outcome) or "?"
    room = SUBJECT_LIMIT - len(tail)
    if len(head) > room:
        cut = head[: room - 3]
        if " " in cut[len(cut) // 2 :]:  # at a word's end, unless a word is half of it
            cut = cut[: cut.rindex(" ")]
        head = cut.rstrip() + "..."
    return head + tail


def bucket_setting() -> str | None:
    """Return the warehouse bucket the graph is given (``WAREHOUSE_BUCKET``, ``BUCKET_NAME``)."""
    return os.environ.get("WAREHOUSE_BUCKET") or os.environ.get("BUCKET_NAME") or None


def bucket_name(bucket: str) -> str:
    """Shorten a bucket setting: ``s3://name/`` is ``name``, ``file:///a/b`` is ``b``."""
    text = bucket.strip().rstrip("/")
    if text.startswith("file://"):
        return text.rsplit("/", 1)[-1]
    return text.removeprefix("s3://")


# ------------------------------------------------------------ the ECS task, from its metadata


@dataclass(frozen=True)
class TaskContext:
    """The ECS task a run is in, and its log stream (task metadata endpoint v4).

    Attributes
    ----------
    task_arn : str
        The task's ARN (``arn:aws:ecs:<region>:<account>:task/<cluster>/<task id>``).
    cluster : str or None
        The cluster, an ARN or a name.
    log_group, log_stream, log_region : str or None
        The container's ``awslogs`` options, when it logs to CloudWatch.
    """

    task_arn: str
    cluster: str | None = None
    log_group: str | None = None
    log_stream: str | None = None
    log_region: str | None = None

    @property
    def task_id(self) -> str:
        """The last part of the task ARN: the id ``aws ecs`` commands and log streams use."""
        return self.task_arn.rsplit("/", 1)[-1]

    @property
    def cluster_name(self) -> str | None:
        """The cluster's name (named after the stack by the template: ``warehouse-<suffix>``)."""
        return self.cluster.rsplit("/", 1)[-1] if self.cluster else None

    def logs_console_url(self) -> str | None:
        """Link the log stream in the CloudWatch console (None without group, stream, region)."""
        if not (self.log_group and self.log_stream and self.log_region):
            return None
        partition = self.task_arn.split(":")[1] if self.task_arn.count(":") >= 5 else "aws"
        domain = _CONSOLE_DOMAINS.get(partition, _CONSOLE_DOMAINS["aws"])
        region = urllib.parse.quote(self.log_region, safe="")
        return (
            f"https://{region}.{domain}/cloudwatch/home?region={region}#logsV2:log-groups/"
            f"log-group/{_console_path(self.log_group)}/log-events/"
            f"{_console_path(self.log_stream)}"
        )


#: The AWS console's domain in each partition.
_CONSOLE_DOMAINS = {
    "aws": "console.aws.amazon.com",
    "aws-cn": "console.amazonaws.cn",
    "aws-us-gov": "console.amazonaws-us-gov.com",
}


def _console_path(name: str) -> str:
    """Write a log group or stream name as the CloudWatch console's address holds it.

    It is URL-encoded twice, then each ``%`` is written ``$``.
    """
    twice = urllib.parse.quote(urllib.parse.quote(name, safe=""), safe="")
    return twice.replace("%", "$")


def _metadata(url: str, timeout: float) -> dict | None:
    """One JSON document of the task metadata endpoint, or None (whatever went wrong)."""
    # The endpoint is the task's own link-local address: never through an HTTP proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            document = json.loads(response.read(METADATA_BYTES))
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return document if isinstance(document, dict) else None


def _metadata_text(value: object) -> str | None:
    """Return a metadata value as text, on one line and bounded (None when it is not text)."""
    if not isinstance(value, str) or not value.strip():
        return None
    return escape_controls(value.strip()[:512])


def ecs_task_context(
    uri: str | None = None, timeout: float = METADATA_TIMEOUT_SECONDS
) -> TaskContext | None:
    """Read the ECS task and its log stream from the task metadata endpoint, version 4.

    ``GET ${ECS_CONTAINER_METADATA_URI_V4}/task`` gives the task (``TaskARN``, ``Cluster``);
    ``GET ${ECS_CONTAINER_METADATA_URI_V4}`` the container, whose ``LogOptions`` name its
    ``awslogs-group``, ``awslogs-stream`` and ``awslogs-region``. Each request has ``timeout``
    seconds; nothing here ever fails a run.

    Parameters
    ----------
    uri : str, optional
        The endpoint; ``ECS_CONTAINER_METADATA_URI_V4`` (which ECS sets in every container)
        when omitted.
    timeout : float
        Seconds each request may take.

    Returns
    -------
    TaskContext or None
        None outside ECS (no endpoint, or not an ``http`` one) or when the task cannot be read.
    """
    uri = (uri if uri is not None else os.environ.get("ECS_CONTAINER_METADATA_URI_V4", "")).strip()
    if not uri.startswith(("http://", "https://")):
        return None
    uri = uri.rstrip("/")
    task = _metadata(f"{uri}/task", timeout)
    task_arn = _metadata_text(task.get("TaskARN")) if task else None
    if task is None or task_arn is None:
        return None
    container = _metadata(uri, timeout) or {}
    options = container.get("LogOptions")
    options = options if isinstance(options, dict) else {}
    return TaskContext(
        task_arn=task_arn,
        cluster=_metadata_text(task.get("Cluster")),
        log_group=_metadata_text(options.get("awslogs-group")),
        log_stream=_metadata_text(options.get("awslogs-stream")),
        log_region=_metadata_text(options.get("awslogs-region")),
    )


# ------------------------------------------------------------ the message


def _stderr_lines(end: RunEnd) -> list[str]:
    """Quote the last lines of a failed run's standard error, escaped and cut."""
    lines = [line for line in end.stderr_tail.splitlines() if line.strip()][-STDERR_LINES:]
    return [escape_controls(line[:STDERR_LINE_CHARS]) for line in lines]


def build_message(
    end: RunEnd, *, context: TaskContext | None = None, bucket: str | None = None
) -> str:
    """Assemble the notification's text: what an operator needs to act on the run.

    In order: the outcome (`run_outcome`, the reason of a failed run in full), the graph and
    the bucket, the timing line, the run id and where the run report and its page are (from
    the run summary), on ECS the task and its log stream with a CloudWatch console link and
    the command that downloads it; for a failed run the last lines of its standard error; the
    run summary (its counts) and the submitting centres.

    Parameters
    ----------
    end : RunEnd
        How the run ended.
    context : TaskContext, optional
        The ECS task (`ecs_task_context`), when the run is one.
    bucket : str, optional
        The warehouse bucket setting.

    Returns
    -------
    str
        The message, cut to SNS's 256 KiB limit with a note when it was longer.
    """
    facts = end.facts
    head = [run_outcome(end), "", f"Graph: {end.graph}"]
    if bucket:
        head.append(f"Bucket: {escape_controls(bucket)}")
    head.append(completion_line(end.seconds, end.exit_code))
    for label, name in (("Run id", "run id"), ("Report", "report"), ("Report page", "report page")):
        if name in facts:
            head.append(f"{label}: {facts[name]}")
    parts = ["\n".join(head)]
    if context is not None:
        task = [f"ECS task: {context.task_arn}"]
        if context.log_group and context.log_stream:
            task.append(f"Log group: {context.log_group}")
            task.append(f"Log stream: {context.log_stream}")
            url = context.logs_console_url()
            if url:
                task.append(f"Log in the CloudWatch console: {url}")
            task.append(
                f"Download it: warehouse-logs --log-group {context.log_group} "
                f"--log-stream {context.log_stream}"
            )
        parts.append("\n".join(task))
    if end.exit_code != 0 and end.stderr_tail.strip():
        parts.append("Last lines of its standard error:\n" + "\n".join(_stderr_lines(end)))
    if end.summary is not None:
        parts.append("Run summary:\n" + (end.summary.rstrip("\n") or "(none written)"))
    if end.stdout_text is not None:
        parts.append("Submitting centres:\n" + (end.stdout_text.rstrip("\n") or "(none)"))
    message = "\n\n".join(parts) + "\n"
    encoded = message.encode("utf-8")
    if len(encoded) <= MESSAGE_LIMIT:
        return message
    note = "\n[message truncated to the SNS size limit]\n"
    keep = MESSAGE_LIMIT - len(note.encode("utf-8"))
    return encoded[:keep].decode("utf-8", errors="ignore") + note


def publish(topic_arn: str, subject: str, message: str) -> str:
    """Publish a message to an SNS topic, in the topic's own region.

    The client has short timeouts and few attempts: a topic that cannot be reached costs the
    task seconds, not minutes, at its end.

    Parameters
    ----------
    topic_arn : str
        The topic.
    subject : str
        Email subject (`notification_subject`; made printable ASCII and cut here too).
    message : str
        The message body.

    Returns
    -------
    str
        The SNS message id.
    """
    subject = subject_text(subject)[:SUBJECT_LIMIT]
    config = Config(
        connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 3}
    )
    client = boto3.session.Session().client(
        "sns", region_name=topic_region(topic_arn), config=config
    )
    response = client.publish(TopicArn=topic_arn.strip(), Subject=subject, Message=message)
    return response["MessageId"]


class StderrTail:
    """Pass this process's standard error through a pipe while a child runs, keeping its end.

    File descriptor 2 is replaced by a pipe that the child inherits; a thread copies everything
    written to it, as it arrives, to the real standard error (the container log sees the same
    stream, live) and keeps the last `STDERR_TAIL_BYTES` bytes, where a failed run's reason is
    (`last_error_line`). When file descriptor 2 cannot be duplicated, nothing is kept.
    """

    def __init__(self, keep_bytes: int = STDERR_TAIL_BYTES):
        self.keep_bytes = keep_bytes
        self._tail = bytearray()
        self._original: int | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StderrTail:
        sys.stderr.flush()
        try:
            self._original = os.dup(2)
        except OSError:  # no standard error to pass on
            return self
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._thread = threading.Thread(
            target=self._copy, args=(read_end,), name="stderr-tail", daemon=True
        )
        self._thread.start()
        return self

    def _copy(self, read_end: int) -> None:
        try:
            while chunk := os.read(read_end, 65536):
                self._pass_on(chunk)
                self._tail += chunk
                del self._tail[: -self.keep_bytes]
        finally:
            os.close(read_end)

    def _pass_on(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(self._original, view)  # type: ignore[arg-type]
            except OSError:  # the real standard error is gone: keep draining the pipe
                return
            view = view[written:]

    def __exit__(self, *exc_info: object) -> None:
        if self._original is None or self._thread is None:
            return
        sys.stderr.flush()
        os.dup2(self._original, 2)  # closes this process's end of the pipe
        self._thread.join(STDERR_DRAIN_SECONDS)
        if not self._thread.is_alive():
            os.close(self._original)

    @property
    def text(self) -> str:
        """What was kept, as text."""
        return bytes(self._tail).decode("utf-8", errors="replace")


def _child_env(summary_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(SOURCE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if summary_path is not None:
        env["RUN_SUMMARY_FILE"] = summary_path
    return env


def _exit_code(returncode: int) -> int:
    """Map ``Popen.returncode`` to a shell exit code (a signal N becomes 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _run_child(command: list[str], env: dict[str, str], capture: bool) -> tuple[int, str | None]:
    """Run the child, passing SIGTERM and SIGINT on to it; tee its stdout when ``capture``.

    The child has a process group of its own: a Ctrl-C at a terminal reaches it through this
    process only, once per Ctrl-C.
    """
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE if capture else None, process_group=0
    )

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)  # the child stops cleanly; its exit ends the run

    handlers = {signal.SIGTERM: forward, signal.SIGINT: forward}
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in handlers}
    if in_main_thread:  # signal handlers can only be set from the main thread
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    try:
        captured = None
        if capture and child.stdout is not None:  # (a pipe whenever capture is asked)
            lines = []
            for raw in child.stdout:
                text = raw.decode("utf-8", errors="replace")
                lines.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
            child.stdout.close()
            captured = "".join(lines)
        returncode = child.wait()
    finally:
        if in_main_thread:
            for sig, before in previous.items():
                signal.signal(sig, before)
    return _exit_code(returncode), captured


def run_task(
    module: str,
    argv: list[str] | None = None,
    *,
    topic_arn: str | None = None,
    with_stdout: bool = False,
    with_summary: bool = False,
    notify: str | None = None,
) -> int:
    """Run ``python -m module argv...``, report the run and return its exit code.

    Parameters
    ----------
    module : str
        The graph module, for example ``warehouse.warehouseloader``.
    argv : list of str, optional
        Arguments passed on to the module unchanged.
    topic_arn : str, optional
        SNS topic to notify when the run ends; ``None`` or empty means no notification.
    with_stdout : bool
        Copy the module's stdout through and add it to the notification.
    with_summary : bool
        Point ``RUN_SUMMARY_FILE`` at a temporary file (unless the caller already set it) and
        add its content to the notification.
    notify : str, optional
        Which runs notify (`notify_setting`: ``always``, the default, ``problems`` or
        ``failures``).

    Returns
    -------
    int
        The module's exit code (``128 + N`` when it was killed by signal ``N``), or
        `EXIT_SETTINGS` when ``topic_arn`` or ``notify`` is malformed (nothing is run).
    """
    topic_arn = (topic_arn or "").strip() or None
    try:
        notify = notify_setting(notify)
        if topic_arn is not None:
            topic_region(topic_arn)
    except ValueError as error:
        print(f"error: {error}; nothing was run (exit code {EXIT_SETTINGS})", file=sys.stderr)
        return EXIT_SETTINGS

    summary_path, temporary = None, False
    if with_summary:
        summary_path = os.environ.get("RUN_SUMMARY_FILE") or None
        if summary_path is None:
            handle, summary_path = tempfile.mkstemp(prefix="run-summary-", suffix=".txt")
            os.close(handle)
            temporary = True

    command = [sys.executable, "-m", module, *(argv or [])]
    tail = StderrTail() if topic_arn is not None else None  # (kept only for a notification)
    started = time.monotonic()
    try:
        with tail or contextlib.nullcontext():
            code, stdout_text = _run_child(command, _child_env(summary_path), capture=with_stdout)
        seconds = time.monotonic() - started
        summary = _read_summary(summary_path) if summary_path is not None else None
    finally:
        if temporary and summary_path is not None:
            Path(summary_path).unlink(missing_ok=True)

    print(completion_line(seconds, code), file=sys.stderr, flush=True)
    if topic_arn is not None and tail is not None:
        end = RunEnd(
            graph=module.rsplit(".", 1)[-1],
            exit_code=code,
            seconds=seconds,
            summary=summary,
            stdout_text=stdout_text,
            stderr_tail=tail.text,
        )
        notify_end(topic_arn, notify, end)
    return code


def notify_end(topic_arn: str, notify: str, end: RunEnd) -> bool:
    """Send the notification of a run's end, when ``notify`` says so, and say what happened.

    Parameters
    ----------
    topic_arn : str
        The topic.
    notify : str
        `notify_setting`.
    end : RunEnd
        How the run ended.

    Returns
    -------
    bool
        Whether a notification was sent.
    """
    if not should_notify(notify, end):
        print(f"No notification (NOTIFY={notify}): {run_outcome(end)}.", file=sys.stderr)
        return False
    context = ecs_task_context()
    bucket = bucket_setting()
    place = (context.cluster_name if context else None) or (bucket_name(bucket) if bucket else None)
    outcome = run_outcome(end)
    subject = notification_subject(outcome, end.graph, place)
    message = build_message(end, context=context, bucket=bucket)
    return _publish_or_say_why(topic_arn, subject, message)


def _read_summary(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _publish_or_say_why(topic_arn: str, subject: str, message: str) -> bool:
    """Publish; when SNS refuses or cannot be reached, say why in one ``error:`` line."""
    try:
        message_id = publish(topic_arn, subject, message)
    except (BotoCoreError, ClientError) as error:
        why = credentials_problem(error) or aws_text(error, REASON_CHARS)
        print(
            f"error: notification not sent to {topic_arn}: {why} (the exit code is the run's)",
            file=sys.stderr,
            flush=True,
        )
        return False
    print(f"Notification sent to {topic_arn} ({message_id}).", file=sys.stderr, flush=True)
    return True


class _Answered(Exception):
    """Raised where a graph's parser would print its help or version and exit."""


class _AnswerAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None):
        raise _Answered


def asks_for_information(argv: list[str]) -> bool:
    """Whether these arguments make a graph print its help or its version and exit.

    The graphs' parsers (`warehouse.runtime.command.command_parser`) have exactly the options
    ``-h``, ``--help`` and ``--version``, which print and exit where argparse meets them; the
    arguments are read here by a parser with the same options, so that abbreviations
    (``--vers``), ``--`` and errors met first count as they do there.

    Parameters
    ----------
    argv : list of str
        The arguments passed on to the graph.

    Returns
    -------
    bool
        True when the graph would only answer, not run.
    """
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-h", "--help", action=_AnswerAction)
    parser.add_argument("--version", action=_AnswerAction)
    try:
        parser.parse_known_args(argv)
    except _Answered:
        return True
    except argparse.ArgumentError:  # such as --version=1: the graph refuses it (exit 2)
        return False
    return False


def answer(module: str, argv: list[str]) -> int:
    """Run ``python -m module argv...`` that only prints its help or version.

    Parameters
    ----------
    module : str
        The graph module.
    argv : list of str
        Arguments that ask for information (`asks_for_information`).

    Returns
    -------
    int
        The module's exit code; nothing is timed, summarised or notified.
    """
    command = [sys.executable, "-m", module, *argv]
    return _run_child(command, _child_env(None), capture=False)[0]


def run_graph(name: str, argv: list[str] | None = None) -> int:
    """Run one of the three graphs as its ``bin/`` script does.

    Parameters
    ----------
    name : str
        ``warehouseloader``, ``submittingcentres`` or ``dataprocess``.
    argv : list of str, optional
        Arguments passed on to the graph unchanged. When they ask for ``--help`` or
        ``--version``, the graph only answers: no timing line, no notification.

    Returns
    -------
    int
        The graph's exit code.
    """
    task = GRAPH_TASKS[name]
    if asks_for_information(argv or []):
        return answer(task.module, argv or [])
    return run_task(
        task.module,
        argv,
        topic_arn=os.environ.get("TOPIC_ARN"),
        with_stdout=task.with_stdout,
        with_summary=task.with_summary,
        notify=os.environ.get("NOTIFY"),
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``taskrunner [--with-stdout] [--with-summary] GRAPH [ARGS...]``.

    ``GRAPH`` is one of the three graph names (``warehouseloader``, ``submittingcentres``,
    ``dataprocess``), which bring their own message options, or any module name. ``ARGS`` are
    passed on to the graph (a graph's ``--help`` and ``--version`` only answer, see
    `run_graph`). The topic comes from the environment variable ``TOPIC_ARN``, which runs
    notify from ``NOTIFY``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The graph's exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m warehouse.task",
        description="Run a graph module, print how long it took, notify TOPIC_ARN when set, "
        "and exit with the graph's code.",
    )
    parser.add_argument("--with-stdout", action="store_true", help="add stdout to the message")
    parser.add_argument(
        "--with-summary", action="store_true", help="add the RUN_SUMMARY_FILE text to the message"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("graph", help=f"one of {', '.join(GRAPH_TASKS)}, or a module name")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the graph")
    options = parser.parse_args(argv)

    if options.graph in GRAPH_TASKS and asks_for_information(options.args):
        return answer(GRAPH_TASKS[options.graph].module, options.args)
    task = GRAPH_TASKS.get(options.graph, GraphTask(options.graph))
    return run_task(
        task.module,
        options.args,
        topic_arn=os.environ.get("TOPIC_ARN"),
        with_stdout=task.with_stdout or options.with_stdout,
        with_summary=task.with_summary or options.with_summary,
        notify=os.environ.get("NOTIFY"),
    )


if __name__ == "__main__":
    sys.exit(main())
