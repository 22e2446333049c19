"""The task wrapper behind bin/*: timing line, exit code, argument passing, SNS notification."""

import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.sns.models import sns_backends

from warehouse import task as taskrunner
from warehouse.task import (
    GRAPH_TASKS,
    build_message,
    completion_line,
    format_duration,
    run_task,
    topic_region,
)

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
LINE = r"Pipeline run in \d\dh:\d\dm:\d\ds and exited with code {code}\."


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A working directory outside the repo and a clean fake graph (fake AWS: conftest)."""
    monkeypatch.delenv("BUCKET_NAME", raising=False)
    for name in list(os.environ):
        if name.startswith("FAKE_GRAPH_") or name in ("RUN_SUMMARY_FILE", "WAREHOUSE_BUCKET"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the child must find the modules through PYTHONPATH
    return monkeypatch


def notifications(topic_arn):
    """(message, subject) pairs moto received for the topic, from the topic's own region."""
    region = topic_arn.split(":")[3]
    topic = sns_backends[ACCOUNT][region].topics[topic_arn]
    return [(message, subject) for _id, message, subject, *_ in topic.sent_notifications]


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


def test_build_message_sections_and_size_limit():
    message = build_message("L.", stdout_text="A\nB\n", summary="copied 3\n")
    assert message == "L.\n\nSubmitting centres:\nA\nB\n\nRun summary:\ncopied 3\n"
    assert build_message("L.", stdout_text="") == "L.\n\nSubmitting centres:\n(none)\n"
    huge = build_message("L.", summary="é" * 200_000)
    assert len(huge.encode("utf-8")) <= taskrunner.MESSAGE_LIMIT
    assert huge.endswith("[message truncated to the SNS size limit]\n")


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
    topic_arn = boto3.client("sns", region_name="eu-west-2").create_topic(Name="wh-dev")["TopicArn"]
    env.setenv("FAKE_GRAPH_STDOUT", "Centre A\nCentre B\n")

    code = run_task("tests.fake_graph", [], topic_arn=topic_arn, with_stdout=True)

    assert code == 0
    out, err = capfd.readouterr()
    assert out == "Centre A\nCentre B\n"  # passed through as well as captured
    assert f"Notification sent to {topic_arn}" in err
    [(message, subject)] = notifications(topic_arn)
    line, rest = message.split("\n\n", 1)
    assert re.fullmatch(LINE.format(code=0), line)
    assert rest == "Submitting centres:\nCentre A\nCentre B\n"
    assert subject == "fake_graph exited with code 0"


@mock_aws
def test_loader_style_run_publishes_summary_and_cleans_the_temp_file(env, tmp_path, capfd):
    topic_arn = boto3.client("sns", region_name="us-west-1").create_topic(Name="wh")["TopicArn"]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env.setattr("tempfile.tempdir", str(scratch))
    env.setenv("FAKE_GRAPH_SUMMARY", "Files copied: 12\nSkipped (site not in config): 2\n")
    env.setenv("FAKE_GRAPH_EXIT", "2")

    assert run_task("tests.fake_graph", [], topic_arn=topic_arn, with_summary=True) == 2

    [(message, _subject)] = notifications(topic_arn)
    assert message.startswith("Pipeline run in ")
    assert "exited with code 2.\n\nRun summary:\nFiles copied: 12\n" in message
    assert list(scratch.iterdir()) == []  # the temporary summary file is gone


def test_subject_names_the_graph_and_the_bucket(env):
    assert taskrunner.notification_subject("warehouse.dataprocess", 1) == (
        "dataprocess exited with code 1"
    )
    env.setenv("WAREHOUSE_BUCKET", "s3://warehouse-123456789012-prod/")
    assert taskrunner.notification_subject("warehouse.warehouseloader", 0) == (
        "warehouseloader on warehouse-123456789012-prod exited with code 0"
    )


@mock_aws
def test_summary_file_set_by_the_caller_is_kept(env, tmp_path):
    topic_arn = boto3.client("sns").create_topic(Name="wh")["TopicArn"]
    summary = tmp_path / "summary.txt"
    env.setenv("RUN_SUMMARY_FILE", str(summary))
    env.setenv("FAKE_GRAPH_SUMMARY", "kept\n")

    run_task("tests.fake_graph", [], topic_arn=topic_arn, with_summary=True)

    assert summary.read_text() == "kept\n"
    assert notifications(topic_arn)[0][0].endswith("Run summary:\nkept\n")


def test_no_topic_means_no_notification(env, capfd):
    def fail(*_args):
        raise AssertionError("publish must not be called")

    env.setattr(taskrunner, "publish", fail)
    assert run_task("tests.fake_graph", [], topic_arn="  ") == 0
    assert "Notification" not in capfd.readouterr().err


def test_malformed_topic_arn_warns_and_keeps_the_exit_code(env, capfd):
    env.setenv("FAKE_GRAPH_EXIT", "4")
    assert run_task("tests.fake_graph", [], topic_arn="not-an-arn") == 4
    err = capfd.readouterr().err
    assert "TOPIC_ARN is not an SNS topic ARN" in err
    assert "exited with code 4." in err


@mock_aws
def test_failed_publication_warns_and_keeps_the_exit_code(env, capfd):
    missing = f"arn:aws:sns:eu-west-2:{ACCOUNT}:no-such-topic"
    assert run_task("tests.fake_graph", [], topic_arn=missing) == 0
    assert f"warning: could not notify {missing}" in capfd.readouterr().err


def test_command_line_in_a_subprocess_against_moto_server(env, tmp_path, moto_server):
    """The wrapper as the container runs it: a separate process, SNS over HTTP (conftest's
    moto server on 127.0.0.1)."""
    env.setenv("AWS_ENDPOINT_URL", moto_server)
    topic_arn = boto3.client("sns", region_name="eu-west-2").create_topic(Name="wh-srv")["TopicArn"]
    env.setenv("TOPIC_ARN", topic_arn)
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
    [(message, _subject)] = notifications(topic_arn)
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
    assert GRAPH_TASKS["warehouseloader"].with_summary
    assert GRAPH_TASKS["submittingcentres"].module == "warehouse.submittingcentres"
    assert GRAPH_TASKS["submittingcentres"].with_stdout
    assert GRAPH_TASKS["dataprocess"].module == "warehouse.dataprocess"
    assert not (GRAPH_TASKS["dataprocess"].with_stdout or GRAPH_TASKS["dataprocess"].with_summary)


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
    assert taskrunner.run_graph("warehouseloader", ["-v"]) == 0
    assert seen == {
        "module": "warehouse.warehouseloader",
        "argv": ["-v"],
        "topic_arn": f"arn:aws:sns:eu-west-2:{ACCOUNT}:t",
        "with_stdout": False,
        "with_summary": True,
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


def _topic(moto_server, name):
    sns = boto3.client("sns", region_name="eu-west-2", endpoint_url=moto_server)
    return sns.create_topic(Name=name)["TopicArn"]


@pytest.mark.parametrize("name", sorted(GRAPH_TASKS))
def test_bin_help_and_version_neither_time_nor_notify(name, env, moto_server):
    from warehouse import __version__

    topic_arn = _topic(moto_server, f"wh-info-{name}")
    child_env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "TOPIC_ARN": topic_arn}

    shown = _bin(name, "--help", env=child_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: python -m warehouse.{name} [-h] [--version]")
    version = _bin(name, "--version", env=child_env)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"python -m warehouse.{name} {__version__}\n"
    for result in (shown, version):
        assert "Pipeline run in" not in result.stderr
        assert "Notification" not in result.stderr
    assert notifications(topic_arn) == []


def test_bin_with_an_argument_the_graph_refuses_is_a_run(env, moto_server):
    """The counterpart of the test above, through the same harness: timed and notified."""
    topic_arn = _topic(moto_server, "wh-refused")
    child_env = {**os.environ, "AWS_ENDPOINT_URL": moto_server, "TOPIC_ARN": topic_arn}

    refused = _bin("warehouseloader", "--bogus", "--", "--help", env=child_env)

    assert refused.returncode == 2
    assert "unrecognized arguments: --bogus -- --help" in refused.stderr
    assert re.search(LINE.format(code=2), refused.stderr)
    assert len(notifications(topic_arn)) == 1


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
