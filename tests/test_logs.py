"""Logs an operator can query: progress lines with totals, and JSON logs line by line."""

from __future__ import annotations

import json

import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.storage import LocalStorage
from warehouse.loader.filing import Progress


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    files = {"config.json": builders.config(["raw-a"], split=["A Trust"])}
    for n in range(6):
        files[f"raw-a/2021-01-01/data/Covid{n}_data.json"] = clinical(f"Covid{n}", "A Trust")
        for instance in range(20):
            name, data = image(f"Covid{n}", "DX", instance=instance)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    files["raw-a/2021-01-02/images/garbage.dcm"] = b"garbage" * 100
    builders.put_tree(LocalStorage(root), files)
    return root


def test_progress_line_counts_rate_and_time_left():
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    assert progress.line() is None  # the inputs are not known yet
    progress.plan(clinical=968, images=8000)
    assert progress.line() == "progress: images 0/8,000 (0%), clinical files 0/968"
    for _ in range(968):
        progress.finished("clinical")
    progress.finished("image")
    now[0] = 110.0
    for _ in range(1144):
        progress.finished("image")
    assert progress.line() == (
        "progress: images 1,145/8,000 (14%), clinical files 968/968, 114.5 images/s, "
        "about 1 min 0 s left"
    )
    for _ in range(8000 - 1145):
        progress.finished("image")
    assert progress.line().endswith("8,000/8,000 (100%), clinical files 968/968, 800.0 images/s")


def test_progress_lines_give_done_and_total_while_the_run_goes_on(tree):
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{tree}", WAREHOUSE_PROGRESS_SECONDS="0.05", WAREHOUSE_WORKERS="1"
    )
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "progress: images" in line]
    assert lines, result.stderr
    assert all("/121 " in line and "clinical files " in line for line in lines), lines
    assert any("images/s" in line for line in lines)
    assert "- process_image in=" in result.stderr  # bonobo's own lines stay


def test_json_logs_are_one_object_per_line(tree):
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{tree}",
        WAREHOUSE_LOG_FORMAT="json",
        WAREHOUSE_PROGRESS_SECONDS="0.05",
    )
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    report = json.loads(LocalStorage(tree).read("reports/warehouseloader/latest.json"))
    fields = {"time", "level", "logger", "graph", "run_id", "shard", "event", "key", "reason"}
    for record in records:
        assert fields <= set(record), record
        assert record["graph"] == "warehouseloader"
        assert record["run_id"] == report["run_id"]
    not_filed = [r for r in records if r["event"] == "not_filed"]
    assert [(r["key"], r["reason"]) for r in not_filed] == [
        ("raw-a/2021-01-02/images/garbage.dcm", "not a DICOM file")
    ]
    assert any(r["event"] == "status" and "process_image" in r["message"] for r in records)
    assert summary["event"] == "summary" and summary["exit_code"] == 0
    assert summary["run_id"] == report["run_id"]
    assert summary["counts"]["images copied"] == 120
    assert summary["not_filed"] == {"not a DICOM file": 1}


def test_error_lines_name_the_product_not_bonobo(tree):
    """A node error bonobo logs itself is named after the product's node."""
    import logging

    from warehouse.core.run import RUN_CONTEXT
    from warehouse.runtime.logs import _RunRecords

    RUN_CONTEXT.update(graph="warehouseloader", run_id="r1", shard=None)
    record = logging.LogRecord(
        "bonobo.execution.contexts.base", logging.ERROR, __file__, 1,
        "<PromptNodeExecutionContext(+process_image) in=3 out=2 err=1>", (), None,
    )  # fmt: skip
    assert _RunRecords().filter(record)
    assert record.name == "warehouse.warehouseloader.process_image"
    assert record.run_id == "r1" and record.event is None
