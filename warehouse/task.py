"""Run one graph as a container task: time it, report it, notify, keep its exit code.

The ``bin/`` scripts (the container commands on ECS Fargate) are thin callers of this module.
Each runs its graph as ``python -m warehouse.<graph>`` in a child process, so the exit code is
the graph's own, and prints one line when the run ends::

    Pipeline run in 00h:01m:02s and exited with code 0.

When the environment variable ``TOPIC_ARN`` is set (and not empty), that line is also
published to the SNS topic, in the topic's own region, with the centres list for
``submittingcentres`` and the run summary for ``warehouseloader``. A failed publication is
reported on stderr and never changes the exit code. A graph asked for its ``--help`` or
``--version`` only answers: no timing line, no notification.

The child's standard error is inherited (bonobo's status lines go straight to the container
log); its standard output is inherited too, except when it is needed for the message, in which
case it is copied line by line to this process's stdout as it arrives and kept. The timing
line goes to stderr, so that ``submittingcentres > centres.txt`` holds the centres only.

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
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from warehouse import __version__

#: Root of the source tree (the directory holding the ``warehouse`` package).
SOURCE_ROOT = Path(__file__).resolve().parents[1]

#: SNS limits: a subject is at most 100 ASCII characters, a message at most 256 KiB.
SUBJECT_LIMIT = 100
MESSAGE_LIMIT = 256 * 1024

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
        notification (warehouseloader).
    """

    module: str
    with_stdout: bool = False
    with_summary: bool = False


#: The three graphs, by the name of their ``bin/`` script (also the container command).
GRAPH_TASKS = {
    "warehouseloader": GraphTask("warehouse.warehouseloader", with_summary=True),
    "submittingcentres": GraphTask("warehouse.submittingcentres", with_stdout=True),
    "dataprocess": GraphTask("warehouse.dataprocess"),
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


def build_message(line: str, *, stdout_text: str | None = None, summary: str | None = None) -> str:
    """Assemble the notification text.

    Parameters
    ----------
    line : str
        The completion line.
    stdout_text : str, optional
        The graph's standard output (the submitting centres), added under a heading.
    summary : str, optional
        The loader's run summary, added under a heading.

    Returns
    -------
    str
        The message, cut to SNS's 256 KiB limit with a note when it was longer.
    """
    parts = [line]
    if stdout_text is not None:
        parts.append("Submitting centres:\n" + (stdout_text.rstrip("\n") or "(none)"))
    if summary is not None:
        parts.append("Run summary:\n" + (summary.rstrip("\n") or "(empty)"))
    message = "\n\n".join(parts) + "\n"
    encoded = message.encode("utf-8")
    if len(encoded) <= MESSAGE_LIMIT:
        return message
    note = "\n[message truncated to the SNS size limit]\n"
    keep = MESSAGE_LIMIT - len(note.encode("utf-8"))
    return encoded[:keep].decode("utf-8", errors="ignore") + note


def notification_subject(module: str, exit_code: int) -> str:
    """Return the notification subject: the graph, the bucket when known, the exit code.

    Parameters
    ----------
    module : str
        The graph module.
    exit_code : int
        Its exit code.

    Returns
    -------
    str
        For example ``warehouseloader on warehouse-123456789012-prod exited with code 0``.
    """
    graph = module.rsplit(".", 1)[-1]
    bucket = os.environ.get("WAREHOUSE_BUCKET") or os.environ.get("BUCKET_NAME")
    where = f" on {bucket.removeprefix('s3://').rstrip('/')}" if bucket else ""
    return f"{graph}{where} exited with code {exit_code}"


def publish(topic_arn: str, subject: str, message: str) -> str:
    """Publish a message to an SNS topic, in the topic's own region.

    Parameters
    ----------
    topic_arn : str
        The topic.
    subject : str
        Email subject; cut to 100 characters, ASCII only, one line.
    message : str
        The message body.

    Returns
    -------
    str
        The SNS message id.
    """
    subject = re.sub(r"[^\x20-\x7e]", " ", subject)[:SUBJECT_LIMIT]
    client = boto3.client("sns", region_name=topic_region(topic_arn))
    response = client.publish(TopicArn=topic_arn.strip(), Subject=subject, Message=message)
    return response["MessageId"]


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

    Returns
    -------
    int
        The module's exit code (``128 + N`` when it was killed by signal ``N``).
    """
    topic_arn = (topic_arn or "").strip() or None
    if topic_arn is not None:
        try:
            topic_region(topic_arn)
        except ValueError as error:
            print(f"warning: {error}; no notification will be sent.", file=sys.stderr)
            topic_arn = None

    summary_path, temporary = None, False
    if with_summary:
        summary_path = os.environ.get("RUN_SUMMARY_FILE") or None
        if summary_path is None:
            handle, summary_path = tempfile.mkstemp(prefix="run-summary-", suffix=".txt")
            os.close(handle)
            temporary = True

    command = [sys.executable, "-m", module, *(argv or [])]
    started = time.monotonic()
    try:
        code, stdout_text = _run_child(command, _child_env(summary_path), capture=with_stdout)
        line = completion_line(time.monotonic() - started, code)
        summary = _read_summary(summary_path) if summary_path is not None else None
    finally:
        if temporary and summary_path is not None:
            Path(summary_path).unlink(missing_ok=True)

    print(line, file=sys.stderr, flush=True)
    if topic_arn is not None:
        message = build_message(line, stdout_text=stdout_text, summary=summary)
        subject = notification_subject(module, code)
        _publish_or_warn(topic_arn, subject, message)
    return code


def _read_summary(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _publish_or_warn(topic_arn: str, subject: str, message: str) -> None:
    try:
        message_id = publish(topic_arn, subject, message)
    except (BotoCoreError, ClientError) as error:
        print(f"warning: could not notify {topic_arn}: {error}", file=sys.stderr, flush=True)
    else:
        print(f"Notification sent to {topic_arn} ({message_id}).", file=sys.stderr, flush=True)


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
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``taskrunner [--with-stdout] [--with-summary] GRAPH [ARGS...]``.

    ``GRAPH`` is one of the three graph names (``warehouseloader``, ``submittingcentres``,
    ``dataprocess``), which bring their own message options, or any module name. ``ARGS`` are
    passed on to the graph (a graph's ``--help`` and ``--version`` only answer, see
    `run_graph`). The topic comes from the environment variable ``TOPIC_ARN``.

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
    )


if __name__ == "__main__":
    sys.exit(main())
