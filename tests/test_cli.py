"""``warehouse``, the front door.

Its subcommands run the existing commands with the flags as the environment variables they
stand for, and the commands' exit codes pass through.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess

import pytest

from infrastructure.tools import get_logs
from tests import builders
from tests.builders import clinical, image
from warehouse import cli, dataprocess, select, submittingcentres, warehouseloader
from warehouse.core.config import Settings, settings_from_env

SITE = "Split Trust"


@pytest.fixture(autouse=True)
def _environment():
    """The environment as it was before each test: the front door sets variables in-process."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _warehouse(args, env=None, cwd=builders.REPO) -> subprocess.CompletedProcess:
    """The installed ``warehouse`` command."""
    return subprocess.run(
        [str(builders.BIN / "warehouse"), *args],
        cwd=cwd,
        env=builders.graph_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tree(root):
    """A small upload tree: one configured site, a faulty file, both stores."""
    root.mkdir()
    (root.parent / f"{root.name}-processed").mkdir()
    files = {"config.json": builders.config(["raw-a"], split=[SITE])}
    for patient in ("Covid1", "Covid2"):
        files[f"raw-a/2021-01-01/data/{patient}_data.json"] = clinical(patient, SITE)
        name, data = image(patient, "DX")
        files[f"raw-a/2021-01-01/images/{name}"] = data
    files["raw-a/2021-01-01/images/broken.dcm"] = b"not a dicom file"
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


_VARYING = re.compile(
    r"\d{8}T\d{6}Z-[0-9a-f]{8}"  # run ids
    r"|\d{4}-\d\d-\d\dT\d\d[:-]\d\d[:-]\d\d(\.\d+)?(\+00:00|Z)?"  # times
    r"|\d+(\.\d+)? ?(s|ms)\b"  # durations
)


def _same_run(text: str) -> str:
    return _VARYING.sub("<varies>", text)


def test_help_lists_every_subcommand():
    result = _warehouse(["--help"])
    assert result.returncode == 0
    for name in (
        "load",
        "centres",
        "dataprocess",
        "select",
        "status",
        "create-stack",
        "logs",
        "inventory",
        "batch-delete",
        "sharded-run",
    ):
        assert re.search(rf"^\s+{re.escape(name)}\b", result.stdout, re.M), name


def test_load_with_flags_is_the_run_the_environment_makes(tmp_path):
    root = tmp_path / "bucket"
    _tree(root)
    flags = _warehouse(["load", "--bucket", f"file://{root}", "--dry-run", "--workers", "2"])
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}", DRY_RUN="true")
    env["WAREHOUSE_WORKERS"] = "2"
    variables = builders.python_m("warehouseloader", env=env)
    assert flags.returncode == variables.returncode == 0
    assert "(dry run: nothing was written)" in flags.stdout
    assert _same_run(flags.stdout) == _same_run(variables.stdout)
    assert not (root / "training").exists()  # the dry run wrote nothing


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["load", "--bucket", "file://{root}-missing"], 2, "does not exist"),
        (["load", "--bucket", "file://{root}", "--workers", "many"], 2, "WAREHOUSE_WORKERS"),
        (["load", "--bucket", "file://{root}", "--log-format", "xml"], 2, "WAREHOUSE_LOG_FORMAT"),
        (["load", "--bucket", "file://{root}", "--no-such-flag"], 2, "unrecognized arguments"),
        (["load", "--bucket", "file://{root}"], 3, "holds"),
        (["dataprocess", "--bucket", "file://{root}"], 3, "holds"),
    ],
)
def test_the_graphs_exit_codes_pass_through(tmp_path, args, code, says):
    root = tmp_path / "bucket"
    _tree(root)
    now = dt.datetime.now(dt.UTC)
    lease = {
        "run_id": "other-run",
        "holder": "another-machine/4711",
        "acquired": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires": (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (root / "locks").mkdir()
    (root / "locks" / "warehouseloader.json").write_text(json.dumps(lease))
    result = _warehouse([arg.replace("{root}", str(root)) for arg in args])
    assert result.returncode == code, result.stderr
    assert says in result.stdout + result.stderr


def test_a_flag_sets_its_variable_before_the_command_runs(monkeypatch):
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        seen["settings"] = settings_from_env()
        return 77

    for name in ("WAREHOUSE_BUCKET", "DRY_RUN", "WAREHOUSE_RECONCILE", "WAREHOUSE_PROCESSES"):
        os.environ.pop(name, None)
    os.environ["WAREHOUSE_WORKERS"] = "5"  # a flag not given leaves the variable
    monkeypatch.setattr(warehouseloader, "main", fake_main)
    args = ["load", "--bucket", "s3://b", "--dry-run", "--log-format", "json", "--reconcile"]
    assert cli.main(args) == 77
    assert seen["argv"] == []
    assert seen["settings"] == Settings(
        bucket="s3://b", dry_run=True, workers=5, log_format="json", reconcile=True
    )


@pytest.mark.parametrize(
    ("command", "module"),
    [("load", warehouseloader), ("centres", submittingcentres), ("dataprocess", dataprocess)],
)
@pytest.mark.parametrize("code", [0, 1, 2, 3, 70, 130, 143, None])
def test_each_graph_exit_code_is_returned_unchanged(monkeypatch, command, module, code):
    monkeypatch.setattr(module, "main", lambda argv: code)
    assert cli.main([command]) == code


def test_select_takes_its_own_flags_in_order_and_the_settings_flags(monkeypatch):
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        seen["bucket"] = settings_from_env().bucket
        return 2

    monkeypatch.setattr(select, "main", fake_main)
    args = ["select", "--group", "training", "--bucket", "s3://b", "--query", "Rows > 1"]
    assert cli.main(args) == 2
    assert seen == {"argv": ["--group", "training", "--query", "Rows > 1"], "bucket": "s3://b"}


def test_a_tool_gets_its_arguments_whole_and_in_order(monkeypatch):
    seen = []
    monkeypatch.setattr(get_logs, "main", lambda argv: seen.append(argv) or 1)
    args = ["--log-group", "g", "--latest", "-o", "out.log"]
    assert cli.main(["logs", *args]) == 1
    assert seen == [args]


def test_a_tool_help_names_the_front_door():
    result = _warehouse(["logs", "--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: warehouse logs ")


def test_version():
    result = _warehouse(["--version"])
    assert result.returncode == 0
    assert re.fullmatch(r"warehouse \d+\.\d+\.\d+\S*\n", result.stdout)
