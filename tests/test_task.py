"""The task wrapper behind bin/*: timing line, exit code, argument passing, SNS notification."""

import contextlib
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tests import builders
from tests.aws_keys import keys_checked, use_key, user_key
from warehouse import task as taskrunner
from warehouse.core.report import RunReport
from warehouse.task import (
    GRAPH_TASKS,
    RunEnd,
    build_message,
    completion_line,
    format_duration,
    run_task,
    topic_region,
)

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
LINE = r"Pipeline run in \d\dh:\d\dm:\d\ds and exited with code {code}\."
#: What the ECS agent would put in the task metadata of a loader task (the fields read, and a
#: few others), for the fake endpoint.
TASK_ID = "0123456789abcdef0123456789abcdef"
TASK_METADATA = {
    "Cluster": f"arn:aws:ecs:eu-west-2:{ACCOUNT}:cluster/warehouse-prod",
    "TaskARN": f"arn:aws:ecs:eu-west-2:{ACCOUNT}:task/warehouse-prod/{TASK_ID}",
    "Family": "warehouse-prod-Pipeline",
    "Revision": "7",
    "LaunchType": "FARGATE",
}
CONTAINER_METADATA = {
    "Name": "warehouseloader",
    "LogDriver": "awslogs",
    "LogOptions": {
        "awslogs-group": "/ecs/warehouse-prod-pipeline",
        "awslogs-region": "eu-west-2",
        "awslogs-stream": f"pipeline/warehouseloader/{TASK_ID}",
    },
}
#: Where the fake endpoint answers (ECS's are ``http://169.254.170.2/v4/<container id>``).
METADATA_PATH = f"/v4/{TASK_ID}-1234567890"
#: The CloudWatch console's address of that stream, written out by hand: the group and the
#: stream URL-encoded twice, with each % then written $.
CONSOLE_URL = (
    "https://eu-west-2.console.aws.amazon.com/cloudwatch/home?region=eu-west-2#logsV2:"
    "log-groups/log-group/$252Fecs$252Fwarehouse-prod-pipeline/log-events/"
    f"pipeline$252Fwarehouseloader$252F{TASK_ID}"
)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A working directory outside the repo and a clean fake graph (fake AWS: conftest)."""
    monkeypatch.delenv("BUCKET_NAME", raising=False)
    for name in list(os.environ):
        if name.startswith("FAKE_GRAPH_") or name in (
            "RUN_SUMMARY_FILE",
            "WAREHOUSE_BUCKET",
            "NOTIFY",
            "ECS_CONTAINER_METADATA_URI_V4",
        ):
            monkeypatch.delenv(name)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the child must find the modules through PYTHONPATH
    return monkeypatch


class Inbox:
    """An SQS queue subscribed to a new SNS topic: what a subscriber of the topic receives.

    On moto's in-process mock (``endpoint`` None) or conftest's moto server (its address).
    """

    def __init__(self, name: str, endpoint: str | None = None, region: str = "eu-west-2"):
        sns = boto3.client("sns", region_name=region, endpoint_url=endpoint)
        self.sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint)
        self.topic_arn = sns.create_topic(Name=name)["TopicArn"]
        self.queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def messages(self) -> list[tuple[str, str]]:
        """Take every notification delivered so far: (subject, message) pairs, oldest first."""
        received = []
        while batch := self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages"):
            for item in batch:
                envelope = json.loads(item["Body"])  # SNS's JSON, as a queue subscriber gets it
                assert envelope["TopicArn"] == self.topic_arn
                received.append((envelope.get("Subject"), envelope["Message"]))
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=item["ReceiptHandle"]
                )
        return received


@contextlib.contextmanager
def task_metadata_endpoint(task=TASK_METADATA, container=CONTAINER_METADATA, status=200):
    """A fake ECS task metadata endpoint v4 on 127.0.0.1: ``GET {uri}/task`` answers ``task``,
    ``GET {uri}`` ``container`` (JSON, or the bytes given), with ``status``. Yields the URI
    (what ``ECS_CONTAINER_METADATA_URI_V4`` holds) and the list of paths asked for."""
    asked: list[str] = []
    base = METADATA_PATH

    class Endpoint(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            document = {base + "/task": task, base: container}.get(self.path)
            body = document if isinstance(document, bytes) else json.dumps(document).encode()
            self.send_response(status if self.path in (base, base + "/task") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{base}", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00h:00m:00s"),
        (62, "00h:01m:02s"),
        (62.99, "00h:01m:02s"),
        (3723, "01h:02m:03s"),
        (86399, "23h:59m:59s"),
        (360000, "100h:00m:00s"),
        (-4, "00h:00m:00s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_completion_line_is_exact():
    assert completion_line(62, 3) == "Pipeline run in 00h:01m:02s and exited with code 3."


def test_topic_region_comes_from_the_arn():
    assert topic_region("arn:aws:sns:eu-west-2:123456789012:warehouse-dev") == "eu-west-2"
    assert topic_region("arn:aws-cn:sns:cn-north-1:123456789012:t.fifo") == "cn-north-1"
    for bad in ("", "warehouse-dev", "arn:aws:sqs:eu-west-2:123456789012:q"):
        with pytest.raises(ValueError):
            topic_region(bad)


def summary_of(report: RunReport, report_url: str | None = None) -> str:
    """A run summary as the graphs write it (the report's summary, where its report is, the run
    id), for the wrapper to read."""
    lines = [report.summary()]
    if report_url:
        lines += [f"  report: {report_url}.json", f"  report page: {report_url}.html"]
    return "\n".join([*lines, f"  run id: {report.run_id}"]) + "\n"


def loader_summary(problems: int = 0, fatal: str | None = None) -> tuple[RunReport, str]:
    """A loader's report with ``problems`` inputs not filed (and a fatal error), and its
    summary."""
    from warehouse.core.reasons import Reason

    report = RunReport("warehouseloader")
    report.count("images copied", 12)
    for i in range(problems):
        report.skip(f"raw-a/2021-01-01/images/{i}.dcm", Reason.NOT_DICOM)
    if fatal:
        report.fail(fatal)
    url = "s3://warehouse-1-prod/reports/warehouseloader/2026-11-25T09-00-00.000000Z"
    return report, summary_of(report, url)


def test_the_summary_facts_are_those_the_graph_wrote():
    report, summary = loader_summary(problems=3)
    facts = taskrunner.summary_facts(summary)
    assert facts["run id"] == report.run_id
    assert facts["not filed"] == "3"
    assert facts["report"].endswith("/reports/warehouseloader/2026-11-25T09-00-00.000000Z.json")
    assert facts["report page"].endswith(".html")
    assert taskrunner.problem_count(summary) == 3
    assert taskrunner.problem_count(None) is None
    _, failed = loader_summary(fatal="no config.json at the root of s3://b")
    assert taskrunner.summary_facts(failed)["run could not complete"] == (
        "no config.json at the root of s3://b"
    )


def test_a_reason_quoted_in_the_summary_cannot_pass_for_another_line():
    report = RunReport("warehouseloader")
    report.fail("config.json: bad value 'x\n  run id: forged\n  not filed: 0'")
    summary = summary_of(report)
    assert taskrunner.summary_facts(summary)["run id"] == report.run_id
    assert "not filed" in taskrunner.summary_facts(summary)
    assert taskrunner.problem_count(summary) == 0


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            "- load_config in=1 [done]\nerror: bucket b does not exist: create it\n",
            "bucket b does not exist: create it",
        ),
        (
            "ERROR warehouse.warehouseloader: no config.json at the root of s3://b\n"
            "- load_config in=1 err=1 [done]\n",
            "no config.json at the root of s3://b",
        ),
        (
            '{"time": "t", "level": "CRITICAL", "logger": "w", "message": "no run"}\n',
            "no run",
        ),
        ('Traceback (most recent call last):\n  File "x.py", line 1\nMemoryError\n', "MemoryError"),
        (
            "/usr/bin/python3: No module named warehouse.nope\n",
            "/usr/bin/python3: No module named warehouse.nope",
        ),
        (
            "INFO w: config: 5 raw prefixes\n- data_copy [done]\nprogress: images 3/8\n",
            None,
        ),
        ("", None),
    ],
)
def test_last_error_line(stderr, reason):
    assert taskrunner.last_error_line(stderr) == reason


def test_the_reason_of_a_failed_run_comes_from_the_run_then_a_signal_then_its_stderr():
    error_line = "error: cannot use bucket b: AWS refused the credentials (InvalidAccessKeyId)\n"
    _, failed = loader_summary(fatal="listing raw-a/ failed")
    assert taskrunner.failure_reason(RunEnd("g", 1, 1, failed, None, error_line)) == (
        "listing raw-a/ failed"
    )
    killed = RunEnd("g", 128 + signal.SIGKILL, 1, None, None, error_line)
    assert taskrunner.failure_reason(killed) == (
        "killed by SIGKILL (out of memory, or stopped by force)"
    )
    assert taskrunner.failure_reason(RunEnd("g", 2, 1, None, None, error_line)) == (
        "cannot use bucket b: AWS refused the credentials (InvalidAccessKeyId)"
    )
    assert taskrunner.failure_reason(RunEnd("g", 5, 1)) == "exited with code 5"
    hostile = RunEnd("g", 2, 1, None, None, "error: key raw-a/\x1b]52;c;x\x07" + "y" * 5000)
    reason = taskrunner.failure_reason(hostile)
    assert "\x1b" not in reason and "\\x1b" in reason
    assert len(reason) == taskrunner.REASON_CHARS and reason.endswith("...")


def test_outcomes():
    assert taskrunner.run_outcome(RunEnd("g", 0, 1, loader_summary()[1])) == "OK"
    assert taskrunner.run_outcome(RunEnd("g", 0, 1)) == "OK"  # (a graph without a summary)
    assert taskrunner.run_outcome(RunEnd("g", 0, 1, loader_summary(1)[1])) == "OK with 1 problem"
    many = loader_summary(1234)[1]
    assert taskrunner.run_outcome(RunEnd("g", 0, 1, many)) == "OK with 1,234 problems"
    failed = RunEnd("g", 3, 1, None, None, "error: another run holds the warehouse\n")
    assert taskrunner.run_outcome(failed) == "FAILED: another run holds the warehouse"


@pytest.mark.parametrize(
    ("outcome", "graph", "place", "subject"),
    [
        ("OK", "warehouseloader", "warehouse-prod", "OK [warehouse-prod warehouseloader]"),
        ("OK with 34 problems", "dataprocess", None, "OK with 34 problems [dataprocess]"),
        (
            "FAILED: bucket warehouse-123456789012-prod does not exist: create it with `aws s3 mb "
            "s3://warehouse-123456789012-prod` (the CloudFormation template ...)",
            "warehouseloader",
            "warehouse-123456789012-prod",
            "FAILED: bucket warehouse-123456789012-prod does... "
            "[warehouse-123456789012-prod warehouseloader]",
        ),
        (
            "FAILED: centre 'Caf\u00e9\n\x1b[2J\r\tX'",
            "submittingcentres",
            "a" * 80,
            f"FAILED: centre 'Caf? ?[2J X' [{'a' * 32} submittingcentres]",  # ESC is a ?
        ),
    ],
)
def test_subjects_say_the_outcome_first_then_where_and_the_graph(outcome, graph, place, subject):
    made = taskrunner.notification_subject(outcome, graph, place)
    assert made == subject
    assert len(made) < 100 and re.fullmatch(r"[\x20-\x7e]+", made)


def test_the_message_says_what_an_operator_needs():
    report, summary = loader_summary(problems=2, fatal="listing raw-a/ failed: SlowDown")
    stderr = "".join(f"line {i}\n" for i in range(30)) + "ERROR w: listing raw-a/ failed\n"
    context = taskrunner.TaskContext(
        task_arn=TASK_METADATA["TaskARN"],
        cluster=TASK_METADATA["Cluster"],
        log_group="/ecs/warehouse-prod-pipeline",
        log_stream=f"pipeline/warehouseloader/{TASK_ID}",
        log_region="eu-west-2",
    )
    end = RunEnd("warehouseloader", 1, 62, summary, None, stderr)

    message = build_message(end, context=context, bucket="s3://warehouse-1-prod")

    outcome, head, task, tail, run_summary = message.split("\n\n")
    assert outcome == "FAILED: listing raw-a/ failed: SlowDown"
    assert head.splitlines() == [
        "Graph: warehouseloader",
        "Bucket: s3://warehouse-1-prod",
        "Pipeline run in 00h:01m:02s and exited with code 1.",
        f"Run id: {report.run_id}",
        "Report: s3://warehouse-1-prod/reports/warehouseloader/2026-11-25T09-00-00.000000Z.json",
        "Report page: s3://warehouse-1-prod/reports/warehouseloader/2026-11-25T09-00-00.000000Z.html",
    ]
    assert task.splitlines() == [
        f"ECS task: {TASK_METADATA['TaskARN']}",
        "Log group: /ecs/warehouse-prod-pipeline",
        f"Log stream: pipeline/warehouseloader/{TASK_ID}",
        f"Log in the CloudWatch console: {CONSOLE_URL}",
        "Download it: warehouse-logs --log-group /ecs/warehouse-prod-pipeline "
        f"--log-stream pipeline/warehouseloader/{TASK_ID}",
    ]
    last = tail.splitlines()
    assert last[0] == "Last lines of its standard error:"
    assert last[1:] == [f"line {i}" for i in range(11, 30)] + ["ERROR w: listing raw-a/ failed"]
    assert run_summary == "Run summary:\n" + summary  # (its counts)


def test_a_run_that_succeeded_quotes_no_stderr_and_the_centres_when_kept():
    end = RunEnd("submittingcentres", 0, 1, None, "Centre A\nCentre B\n", "INFO noise\n")
    message = build_message(end)
    assert message.startswith("OK\n\nGraph: submittingcentres\nPipeline run in ")
    assert "standard error" not in message
    assert message.endswith("\n\nSubmitting centres:\nCentre A\nCentre B\n")
    assert build_message(RunEnd("g", 0, 1, None, "")).endswith("Submitting centres:\n(none)\n")


def test_the_message_is_cut_to_the_sns_limit():
    huge = build_message(RunEnd("g", 0, 1, "\u00e9" * 200_000))
    assert len(huge.encode("utf-8")) <= taskrunner.MESSAGE_LIMIT
    assert huge.endswith("[message truncated to the SNS size limit]\n")


@pytest.mark.parametrize(
    ("value", "setting"),
    [(None, "always"), ("", "always"), (" Problems ", "problems"), ("FAILURES", "failures")],
)
def test_notify_setting(value, setting):
    assert taskrunner.notify_setting(value) == setting


def test_notify_setting_refuses_anything_else():
    with pytest.raises(ValueError, match="NOTIFY must be always, problems, failures, not 'never'"):
        taskrunner.notify_setting("never")


@pytest.mark.parametrize(
    ("notify", "sent"),
    [
        ("always", [True, True, True]),
        ("problems", [False, True, True]),
        ("failures", [False, False, True]),
    ],
)
def test_which_runs_notify(notify, sent):
    clean = RunEnd("g", 0, 1, loader_summary()[1])
    with_problems = RunEnd("g", 0, 1, loader_summary(problems=2)[1])
    failed = RunEnd("g", 1, 1, loader_summary()[1])
    runs = [clean, with_problems, failed]
    assert [taskrunner.should_notify(notify, end) for end in runs] == sent


# ------------------------------------------------------------------ the ECS task metadata


def test_the_task_and_its_log_stream_come_from_the_metadata_endpoint():
    with task_metadata_endpoint() as (uri, asked):
        context = taskrunner.ecs_task_context(uri)
    assert context == taskrunner.TaskContext(
        task_arn=TASK_METADATA["TaskARN"],
        cluster=TASK_METADATA["Cluster"],
        log_group="/ecs/warehouse-prod-pipeline",
        log_stream=f"pipeline/warehouseloader/{TASK_ID}",
        log_region="eu-west-2",
    )
    assert sorted(asked) == [METADATA_PATH, METADATA_PATH + "/task"]
    assert context.task_id == TASK_ID
    assert context.cluster_name == "warehouse-prod"
    assert context.logs_console_url() == CONSOLE_URL


@pytest.mark.parametrize(
    ("task", "container", "status"),
    [
        (TASK_METADATA, CONTAINER_METADATA, 500),
        (b"not json", CONTAINER_METADATA, 200),
        (["a", "list"], CONTAINER_METADATA, 200),
        ({"Cluster": "c"}, CONTAINER_METADATA, 200),  # no task ARN
    ],
)
def test_a_metadata_endpoint_that_answers_nothing_usable_gives_no_task(task, container, status):
    with task_metadata_endpoint(task, container, status) as (uri, _asked):
        assert taskrunner.ecs_task_context(uri) is None


def test_a_container_without_awslogs_gives_the_task_alone():
    with task_metadata_endpoint(container={"Name": "x", "LogDriver": "json-file"}) as (uri, _):
        context = taskrunner.ecs_task_context(uri)
    assert context.task_arn == TASK_METADATA["TaskARN"]
    assert context.log_stream is None and context.logs_console_url() is None


def test_no_endpoint_or_one_that_does_not_answer_costs_at_most_the_timeout(monkeypatch):
    monkeypatch.delenv("ECS_CONTAINER_METADATA_URI_V4", raising=False)
    assert taskrunner.ecs_task_context() is None
    assert taskrunner.ecs_task_context("file:///etc/passwd") is None
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/v4/x"
        assert taskrunner.ecs_task_context(uri, timeout=0.3) is None
        assert time.monotonic() - started < 3
    with socket.socket() as closed:  # nothing listens there
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}/v4/x"
    assert taskrunner.ecs_task_context(uri, timeout=0.3) is None


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_arguments_and_timing_line(env, tmp_path, capfd, code):
    argv_file = tmp_path / "argv.json"
    env.setenv("FAKE_GRAPH_EXIT", str(code))
    env.setenv("FAKE_GRAPH_ARGV_FILE", str(argv_file))
    env.setenv("FAKE_GRAPH_STDOUT", "graph output\n")
    args = ["--limit", "5", "-h", "--", "a b"]

    assert run_task("tests.fake_graph", args) == code

    assert json.loads(argv_file.read_text()) == args
    out, err = capfd.readouterr()
    assert out == "graph output\n"  # inherited stdout, untouched
    assert err.splitlines()[-1].startswith("Pipeline run in 00h:00m:0")
    assert err.rstrip().endswith(f"and exited with code {code}.")


def test_missing_module_is_a_non_zero_exit(env, capfd):
    assert run_task("tests.no_such_graph", []) == 1
    assert "exited with code 1." in capfd.readouterr().err


@mock_aws
def test_submittingcentres_style_run_publishes_centres_in_the_topic_region(env, capfd):
    # The client default region differs from the topic's: the ARN must decide.
    inbox = Inbox("wh-dev", region="eu-west-2")
    env.setenv("FAKE_GRAPH_STDOUT", "Centre A\nCentre B\n")

    code = run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn, with_stdout=True)

    assert code == 0
    out, err = capfd.readouterr()
    assert out == "Centre A\nCentre B\n"  # passed through as well as captured
    assert f"Notification sent to {inbox.topic_arn}" in err
    [(subject, message)] = inbox.messages()
    assert subject == "OK [fake_graph]"
    outcome, head, centres = message.split("\n\n")
    assert outcome == "OK"
    assert head.splitlines()[0] == "Graph: fake_graph"
    assert re.fullmatch(LINE.format(code=0), head.splitlines()[1])
    assert centres == "Submitting centres:\nCentre A\nCentre B\n"


@mock_aws
def test_loader_style_run_publishes_summary_and_cleans_the_temp_file(env, tmp_path, capfd):
    inbox = Inbox("wh", region="us-west-1")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env.setattr("tempfile.tempdir", str(scratch))
    report, summary = loader_summary(problems=2)
    env.setenv("FAKE_GRAPH_SUMMARY", summary)
    env.setenv("WAREHOUSE_BUCKET", "s3://warehouse-123456789012-prod/")

    assert run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn, with_summary=True) == 0

    [(subject, message)] = inbox.messages()
    assert subject == "OK with 2 problems [warehouse-123456789012-prod fake_graph]"
    assert f"\nRun id: {report.run_id}\n" in message
    assert message.endswith("\n\nRun summary:\n" + summary)
    assert list(scratch.iterdir()) == []  # the temporary summary file is gone


@mock_aws
def test_summary_file_set_by_the_caller_is_kept(env, tmp_path):
    inbox = Inbox("wh")
    summary = tmp_path / "summary.txt"
    env.setenv("RUN_SUMMARY_FILE", str(summary))
    env.setenv("FAKE_GRAPH_SUMMARY", "kept\n")

    run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn, with_summary=True)

    assert summary.read_text() == "kept\n"
    assert inbox.messages()[0][1].endswith("Run summary:\nkept\n")


def test_no_topic_means_no_notification(env, capfd):
    def fail(*_args):
        raise AssertionError("publish must not be called")

    env.setattr(taskrunner, "publish", fail)
    env.setenv("FAKE_GRAPH_STDERR", "error: something\n")
    assert run_task("tests.fake_graph", [], topic_arn="  ") == 0
    err = capfd.readouterr().err
    assert "Notification" not in err and "notification" not in err
    assert err.startswith("error: something\n")  # standard error passed on as it is


@mock_aws
def test_a_failed_run_says_why_from_its_standard_error(env, capfd):
    inbox = Inbox("wh-failed")
    stderr = "- load_config in=1 [done]\nerror: bucket nope does not exist: create it\n"
    env.setenv("FAKE_GRAPH_STDERR", stderr)
    env.setenv("FAKE_GRAPH_EXIT", "2")

    assert run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn) == 2

    err = capfd.readouterr().err
    assert err.startswith(stderr)  # passed on, live, before the timing line
    [(subject, message)] = inbox.messages()
    assert subject == "FAILED: bucket nope does not exist: create it [fake_graph]"
    assert message.startswith("FAILED: bucket nope does not exist: create it\n\n")
    assert message.endswith("Last lines of its standard error:\n" + stderr)


@mock_aws
def test_on_ecs_the_message_names_the_task_and_links_its_log_stream(env):
    inbox = Inbox("wh-ecs")
    env.setenv("WAREHOUSE_BUCKET", "warehouse-123456789012-prod")
    with task_metadata_endpoint() as (uri, asked):
        env.setenv("ECS_CONTAINER_METADATA_URI_V4", uri)
        assert run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn) == 0
    assert sorted(asked) == [METADATA_PATH, METADATA_PATH + "/task"]
    [(subject, message)] = inbox.messages()
    assert subject == "OK [warehouse-prod fake_graph]"  # the cluster, named after the stack
    assert f"\nECS task: {TASK_METADATA['TaskARN']}\n" in message
    assert f"\nLog stream: pipeline/warehouseloader/{TASK_ID}\n" in message
    assert f"\nLog in the CloudWatch console: {CONSOLE_URL}\n" in message


@pytest.mark.parametrize(
    ("notify", "sent"),
    [
        (None, ["OK", "OK with 1 problem", "FAILED: exited with code 1"]),
        ("always", ["OK", "OK with 1 problem", "FAILED: exited with code 1"]),
        ("problems", ["OK with 1 problem", "FAILED: exited with code 1"]),
        ("failures", ["FAILED: exited with code 1"]),
    ],
)
@mock_aws
def test_notify_chooses_the_runs_that_notify(env, capfd, notify, sent):
    inbox = Inbox(f"wh-{notify}")
    runs = [(0, loader_summary()[1]), (0, loader_summary(problems=1)[1]), (1, "")]
    for code, summary in runs:
        env.setenv("FAKE_GRAPH_EXIT", str(code))
        env.setenv("FAKE_GRAPH_SUMMARY", summary)
        assert (
            run_task(
                "tests.fake_graph", [], topic_arn=inbox.topic_arn, with_summary=True, notify=notify
            )
            == code
        )

    assert [subject.split(" [")[0] for subject, _ in inbox.messages()] == sent
    skipped = capfd.readouterr().err.count(f"No notification (NOTIFY={notify}): ")
    assert skipped == len(runs) - len(sent)


@pytest.mark.parametrize(
    ("topic_arn", "notify", "said"),
    [
        ("not-an-arn", None, "error: TOPIC_ARN is not an SNS topic ARN: 'not-an-arn'"),
        (f"arn:aws:sns:eu-west-2:{ACCOUNT}:t", "never", "error: NOTIFY must be always, problems"),
    ],
)
def test_a_malformed_topic_or_notify_setting_runs_nothing(
    env, tmp_path, capfd, topic_arn, notify, said
):
    argv_file = tmp_path / "argv.json"
    env.setenv("FAKE_GRAPH_ARGV_FILE", str(argv_file))
    assert run_task("tests.fake_graph", [], topic_arn=topic_arn, notify=notify) == 2
    err = capfd.readouterr().err
    assert err.startswith(said) and err.endswith("; nothing was run (exit code 2)\n")
    assert not argv_file.exists()  # the graph never ran


@pytest.mark.parametrize("code", [0, 3])
@mock_aws
def test_a_topic_that_does_not_exist_is_said_and_the_exit_code_is_the_runs(env, capfd, code):
    missing = f"arn:aws:sns:eu-west-2:{ACCOUNT}:no-such-topic"
    env.setenv("FAKE_GRAPH_EXIT", str(code))
    assert run_task("tests.fake_graph", [], topic_arn=missing) == code
    timing, said = capfd.readouterr().err.splitlines()[-2:]
    assert re.fullmatch(LINE.format(code=code), timing)
    assert said.startswith(f"error: notification not sent to {missing}: ")
    assert "NotFound" in said and said.endswith("(the exit code is the run's)")


@mock_aws
def test_a_role_that_may_not_publish_is_said_and_the_exit_code_is_the_runs(env, capfd):
    inbox = Inbox("wh-denied")
    use_key(env, user_key(None, "no-publish"))  # a user with no policy: sns:Publish denied
    with keys_checked():
        assert run_task("tests.fake_graph", [], topic_arn=inbox.topic_arn) == 0
    said = capfd.readouterr().err.splitlines()[-1]
    assert said.startswith(f"error: notification not sent to {inbox.topic_arn}: ")
    assert "(AccessDenied)" in said and said.endswith("(the exit code is the run's)")
    assert inbox.messages() == []


def test_command_line_in_a_subprocess_against_moto_server(env, tmp_path, moto_server):
    """The wrapper as the container runs it: a separate process, SNS over HTTP (conftest's
    moto server on 127.0.0.1)."""
    env.setenv("AWS_ENDPOINT_URL", moto_server)
    inbox = Inbox("wh-srv", moto_server)
    env.setenv("TOPIC_ARN", inbox.topic_arn)
    env.setenv("FAKE_GRAPH_STDOUT", "Centre X\n")
    env.setenv("FAKE_GRAPH_EXIT", "5")

    result = subprocess.run(
        [sys.executable, "-m", "warehouse.task", "--with-stdout"] + ["tests.fake_graph", "--flag"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    assert result.returncode == 5, result.stderr
    assert result.stdout == "Centre X\n"
    assert "and exited with code 5." in result.stderr
    [(subject, message)] = inbox.messages()
    assert subject == "FAILED: exited with code 5 [fake_graph]"
    assert message.endswith("exited with code 5.\n\nSubmitting centres:\nCentre X\n")


def test_sigterm_is_forwarded_to_the_graph(env, tmp_path):
    ready = tmp_path / "ready"
    env.setenv("FAKE_GRAPH_READY_FILE", str(ready))
    env.setenv("FAKE_GRAPH_UNTIL_SIGNALLED", "15")  # (a guard: the test waits 20 s at most)
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "warehouse.task", "tests.fake_graph"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), "the fake graph never started"

    wrapper.send_signal(signal.SIGTERM)
    _out, err = wrapper.communicate(timeout=20)

    assert wrapper.returncode == 128 + signal.SIGTERM
    assert f"exited with code {128 + signal.SIGTERM}." in err


def test_graph_table():
    assert GRAPH_TASKS["warehouseloader"].module == "warehouse.warehouseloader"
    assert GRAPH_TASKS["submittingcentres"].module == "warehouse.submittingcentres"
    assert GRAPH_TASKS["submittingcentres"].with_stdout
    assert GRAPH_TASKS["dataprocess"].module == "warehouse.dataprocess"
    assert not (
        GRAPH_TASKS["warehouseloader"].with_stdout or GRAPH_TASKS["dataprocess"].with_stdout
    )
    assert all(task.with_summary for task in GRAPH_TASKS.values())  # counts in every message


@pytest.mark.parametrize("name", sorted(GRAPH_TASKS))
def test_bin_scripts_run_their_graph(name, env):
    script = ROOT / "bin" / name
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env python3\n")
    calls = []

    def fake_run_graph(graph, argv):
        calls.append((graph, argv))
        return 7

    env.setattr(taskrunner, "run_graph", fake_run_graph)
    env.setattr(sys, "argv", [str(script), "--opt", "x"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 7
    assert calls == [(name, ["--opt", "x"])]


def test_run_graph_reads_topic_from_the_environment(env):
    seen = {}

    def fake_run_task(module, argv, **options):
        seen.update(module=module, argv=argv, **options)
        return 0

    env.setattr(taskrunner, "run_task", fake_run_task)
    env.setenv("TOPIC_ARN", f"arn:aws:sns:eu-west-2:{ACCOUNT}:t")
    env.setenv("NOTIFY", "failures")
    assert taskrunner.run_graph("warehouseloader", ["-v"]) == 0
    assert seen == {
        "module": "warehouse.warehouseloader",
        "argv": ["-v"],
        "topic_arn": f"arn:aws:sns:eu-west-2:{ACCOUNT}:t",
        "with_stdout": False,
        "with_summary": True,
        "notify": "failures",
    }


# ------------------------------------------------- --help and --version only answer


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["-h"],
        ["--version"],
        ["--vers"],  # argparse takes an unambiguous abbreviation
        ["--h"],
        ["--bogus", "--help"],  # help is printed where it is met, before the error
        ["--help", "--version=1"],
        ["--version=1", "--help"],  # the error is met first: exit 2, a run
        ["-hx"],
        ["--", "--help"],  # an argument, not an option
        ["--bogus"],
        ["x", "--version"],
    ],
)
def test_asks_for_information_agrees_with_the_graphs_own_parser(args, capsys):
    from warehouse import warehouseloader

    try:
        warehouseloader.command_parser().parse_args(args)
    except SystemExit as exit_info:
        answers = exit_info.code == 0
    else:
        answers = False
    capsys.readouterr()
    assert taskrunner.asks_for_information(args) is answers


def _bin(name, *args, env):
    return subprocess.run(
        [sys.executable, str(ROOT / "bin" / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize("name", sorted(GRAPH_TASKS))
def test_bin_help_and_version_neither_time_nor_notify(name, env, moto_server):
    from warehouse import __version__

    inbox = Inbox(f"wh-info-{name}", moto_server)
    child_env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "TOPIC_ARN": inbox.topic_arn}

    shown = _bin(name, "--help", env=child_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: python -m warehouse.{name} [-h] [--version]")
    version = _bin(name, "--version", env=child_env)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"python -m warehouse.{name} {__version__}\n"
    for result in (shown, version):
        assert "Pipeline run in" not in result.stderr
        assert "Notification" not in result.stderr
    assert inbox.messages() == []


def test_bin_with_an_argument_the_graph_refuses_is_a_run(env, moto_server):
    """The counterpart of the test above, through the same harness: timed and notified."""
    inbox = Inbox("wh-refused", moto_server)
    child_env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "TOPIC_ARN": inbox.topic_arn}

    refused = _bin("warehouseloader", "--bogus", "--", "--help", env=child_env)

    assert refused.returncode == 2
    assert "unrecognized arguments: --bogus -- --help" in refused.stderr
    assert re.search(LINE.format(code=2), refused.stderr)
    [(subject, message)] = inbox.messages()
    said = "python -m warehouse.warehouseloader: error: unrecognized arguments: --bogus -- --help"
    assert message.startswith(f"FAILED: {said}\n\n")
    kept = said[: said.index("arguments:") + len("arguments:")]  # cut at a word's end
    assert subject == f"FAILED: {kept}... [warehouseloader]"


# ------------------------------------------------------------------ the real graphs, as on ECS


def test_bin_loader_on_a_bucket_that_does_not_exist_says_why(env, moto_server):
    """The issue's case: the message used to be ``... exited with code 2. Run summary:
    (empty)``."""
    inbox = Inbox("wh-missing-bucket", moto_server)
    child_env = {
        **builders.graph_env(WAREHOUSE_BUCKET="no-such-bucket-t22"),
        "AWS_ENDPOINT_URL": moto_server,
        "TOPIC_ARN": inbox.topic_arn,
    }

    result = _bin("warehouseloader", env=child_env)

    assert result.returncode == 2, result.stderr
    reason = (
        "bucket no-such-bucket-t22 does not exist: create it with `aws s3 mb "
        "s3://no-such-bucket-t22` (the CloudFormation template "
        "infrastructure/templates/warehouse.yaml makes the warehouse bucket and its -processed "
        "bucket)"
    )
    assert f"error: {reason}\n" in result.stderr
    [(subject, message)] = inbox.messages()
    assert subject == (
        "FAILED: bucket no-such-bucket-t22 does not exist: create... "
        "[no-such-bucket-t22 warehouseloader]"
    )
    assert message.startswith(f"FAILED: {reason}\n\nGraph: warehouseloader\n")
    assert "\nLast lines of its standard error:\n" in message


def test_bin_loader_run_with_problems_names_its_report_and_its_task(env, tmp_path, moto_server):
    root = tmp_path / "bucket"
    (tmp_path / "bucket-processed").mkdir()
    files = {
        "config.json": builders.config(["raw-a"], split=["Site A"]),
        "raw-a/2021-01-04/data/Covid1_data.json": builders.clinical("Covid1", "Site A"),
        "raw-a/2021-01-04/data/Covid2_data.json": b"{not json",
    }
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    inbox = Inbox("wh-loader-ok", moto_server)
    with task_metadata_endpoint() as (uri, _asked):
        child_env = {
            **builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}"),
            "AWS_ENDPOINT_URL": moto_server,
            "TOPIC_ARN": inbox.topic_arn,
            "ECS_CONTAINER_METADATA_URI_V4": uri,
        }
        result = _bin("warehouseloader", env=child_env)

    assert result.returncode == 0, result.stderr
    [written] = sorted((root / "reports" / "warehouseloader").glob("20*.json"))
    run_id = json.loads(written.read_text())["run_id"]
    [(subject, message)] = inbox.messages()
    assert subject == "OK with 1 problem [warehouse-prod warehouseloader]"
    lines = message.splitlines()
    assert f"Run id: {run_id}" in lines
    assert f"Report: {written.as_uri()}" in lines
    assert f"Report page: {written.with_suffix('.html').as_uri()}" in lines
    assert f"Log in the CloudWatch console: {CONSOLE_URL}" in lines
    assert "    invalid JSON: 1" in lines  # the counts, from the run summary


def test_bin_loader_with_credentials_aws_refuses_says_so_twice_in_one_line_each(
    env, s3_bucket, moto_server
):
    inbox = Inbox("wh-refused-key", moto_server)
    child_env = {
        **builders.graph_env(WAREHOUSE_BUCKET=s3_bucket),
        "AWS_ENDPOINT_URL": moto_server,
        "TOPIC_ARN": inbox.topic_arn,
    }
    with keys_checked():  # the tests' fake key is one moto does not know
        result = _bin("warehouseloader", env=child_env)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "access denied" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(
        f"error: cannot use bucket {s3_bucket}: AWS refused the credentials (InvalidAccessKeyId: "
    )
    assert errors[1].startswith(
        f"error: notification not sent to {inbox.topic_arn}: AWS refused the credentials "
        "(InvalidClientTokenId: "
    )
    assert inbox.messages() == []


def test_taskrunner_command_line_answers_help_for_a_graph(env):
    result = subprocess.run(
        [sys.executable, "-m", "warehouse.task", "dataprocess", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python -m warehouse.dataprocess ")
    assert "Pipeline run in" not in result.stderr


def test_taskrunner_has_its_own_version(capsys):
    from warehouse import __version__

    with pytest.raises(SystemExit) as exit_info:
        taskrunner.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"python -m warehouse.task {__version__}\n"
