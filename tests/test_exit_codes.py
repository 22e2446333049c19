"""Exit codes and texts that say what the commands did.

Under ``python -m``, the console scripts and ``bonobo run`` (README, "Commands and exit codes").
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests import builders
from tests.builders import clinical, image
from tests.test_dataprocess import run_graph as run_dataprocess
from tests.test_dataprocess import warehouse_files
from warehouse.core.errors import StorageError
from warehouse.storage.local import LocalStorage
from warehouse.storage.wrappers import DelegatingStorage

GRAPHS = ("warehouseloader", "submittingcentres", "dataprocess")
SITE = "Split Trust"


def _bonobo(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(builders.BIN / "bonobo"), *args],
        cwd=cwd,
        env=builders.graph_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("graph", GRAPHS)
def test_bonobo_run_of_a_bucket_without_config_json_exits_2(tmp_path, graph):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    result = builders.bonobo_run(graph, bucket, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config.json" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["run", "warehouse/warehouseloader.py"], "graph file not found"),  # (another directory)
        (["run", "-m", "warehouse.warehouseloder"], "graph module not found"),
        (["inspect", "--graph", "no-such-graph.py"], "graph file not found"),
    ],
)
def test_bonobo_of_a_graph_it_cannot_find_says_so_in_one_line(tmp_path, args, says):
    result = _bonobo(args, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonobo: {says}"), result.stderr
    assert "bonobo run -m warehouse." in lines[0] or "warehouse.warehouseloader" in lines[0]
    assert result.stdout == ""


def test_bonobo_graphs_names_every_graph_module(tmp_path):
    result = _bonobo(["graphs"], tmp_path)
    assert result.returncode == 0, result.stderr
    for graph in GRAPHS:
        assert f"bonobo run -m warehouse.{graph} " in result.stdout


def _loader_tree(store) -> int:
    """A small tree: two patients, three images each; the number of images."""
    files = {"config.json": builders.config(["raw-a"], split=[SITE])}
    for patient in ("Covid1", "Covid14"):
        files[f"raw-a/2021-01-01/data/{patient}_data.json"] = clinical(patient, SITE)
        for instance in range(3):
            name, data = image(patient, "CT", instance=instance)
            files[f"raw-a/2021-01-02/images/{name}"] = data
    builders.put_tree(store, files)
    return sum(1 for key in files if key.endswith(".dcm"))


def test_a_dry_run_says_what_it_would_copy_and_a_run_what_it_copied(local_store):
    images = _loader_tree(local_store)
    code, state = builders.run_loader(local_store, dry_run=True)
    assert code == 0
    summary = state.report.summary()
    assert f"images to copy (dry run): {images}" in summary
    assert "clinical files to copy (dry run): 2" in summary
    assert f"metadata files to write (dry run): {images}" in summary
    assert "copied" not in summary and "written:" not in summary
    code, state = builders.run_loader(local_store)
    assert code == 0
    assert f"images copied: {images}" in state.report.summary()


def test_only_dataprocess_needs_the_processed_store(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = LocalStorage(tmp_path / "bucket")
    _loader_tree(store)
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{tmp_path}/bucket")
    for graph in ("warehouseloader", "submittingcentres"):
        result = builders.python_m(graph, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    result = builders.python_m("dataprocess", env=env)
    assert result.returncode == 2
    assert "bucket-processed" in result.stderr
    # and each command's help says so: the processed store is named by dataprocess alone
    for graph in GRAPHS:
        shown = builders.python_m(graph, ["--help"], builders.graph_env())
        assert shown.returncode == 0
        assert ("-processed" in shown.stdout) is (graph == "dataprocess"), graph


class RefusesReports(DelegatingStorage):
    """A warehouse whose ``reports/`` cannot be written (a bucket policy, a full disk)."""

    def write(self, key, data, content_type="application/json"):
        if key.startswith("reports/"):
            raise StorageError(f"cannot write {key}: refused")
        self.inner.write(key, data, content_type)


def test_dataprocess_that_cannot_write_its_report_exits_1_and_says_its_batch_stands(
    local_store, capsys
):
    builders.put_tree(local_store, warehouse_files())
    code, state = run_dataprocess(RefusesReports(local_store))
    assert code == 1
    # the batch was written and published (README: 1 is "no batch, or no run report")
    latest = local_store.processed().read("latest.csv").decode()
    assert state.batch is not None and state.batch in latest
    out = capsys.readouterr().out
    assert f"{state.batch}/" in out and "latest.csv updated" in out
    assert "run could not complete: run report not written" in out
    assert not list(local_store.list("reports/dataprocess/"))
    assert not list(local_store.list("locks/"))  # the lease is given back all the same


def test_the_help_of_each_graph_lists_its_stop_codes():
    for graph in GRAPHS:
        shown = builders.python_m(graph, ["--help"], builders.graph_env())
        assert "130/143 stopped by SIGINT/SIGTERM" in shown.stdout, graph


def test_a_stopped_report_is_json_with_the_signal():
    from warehouse.core.report import RunReport

    report = RunReport("warehouseloader")
    report.stopped = "SIGTERM"
    data = json.loads(report.to_json())
    assert data["stopped"] == "SIGTERM" and data["completed"] is False
    assert "run stopped (SIGTERM)" in report.summary()
    assert not report.describes_all_inputs
