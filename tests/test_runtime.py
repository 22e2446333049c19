"""The runtime tells the truth: the graphs run without pkg_resources (setuptools >= 81), and a
graph that bonobo cannot start never exits 0."""

from __future__ import annotations

import json
import textwrap

import bonobo
import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.components import execution
from warehouse.components.execution import EXIT_INTERNAL, LazyServices

GRAPHS = ("warehouseloader", "submittingcentres", "dataprocess")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    (tmp_path / "bucket-processed").mkdir()
    name, data = image("Covid1", "DX")
    files = {
        "config.json": builders.config(["raw-a"], split=["A Trust"]),
        "raw-a/2021-01-01/data/Covid1_data.json": clinical("Covid1", "A Trust"),
        f"raw-a/2021-01-01/images/{name}": data,
    }
    for key, content in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def _without_pkg_resources(tmp_path) -> str:
    """A folder whose ``pkg_resources`` cannot be imported, as with setuptools >= 81."""
    folder = tmp_path / "no-pkg-resources"
    folder.mkdir()
    (folder / "pkg_resources.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pkg_resources'\")\n"
    )
    return str(folder)


@pytest.mark.parametrize("graph", GRAPHS)
def test_graphs_run_without_pkg_resources(graph, tree, tmp_path):
    env = builders.graph_env(
        WAREHOUSE_BUCKET=f"file://{tree}", PYTHONPATH=_without_pkg_resources(tmp_path)
    )
    result = builders.python_m(graph, env=env)
    assert result.returncode == 0, result.stderr
    assert "ModuleNotFoundError" not in result.stdout + result.stderr
    assert f"{graph} run summary" in result.stdout + result.stderr
    if graph == "warehouseloader":
        assert any((tree / "training").rglob("*.dcm")) or any((tree / "validation").rglob("*.dcm"))


def test_a_graph_bonobo_cannot_start_exits_70_not_0(tree, tmp_path):
    """An error inside bonobo before any node runs (it prints a box and returns None)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            from bonobo.execution.strategies import executor

            def broken(self, graph, **kwargs):
                raise ModuleNotFoundError("No module named 'something_bonobo_needs'")

            executor.ExecutorStrategy.create_graph_execution_context = broken
            """
        )
    )
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{tree}", PYTHONPATH=str(hook))
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == EXIT_INTERNAL, result.stdout + result.stderr
    assert "something_bonobo_needs" in result.stdout + result.stderr
    assert "bonobo could not run the graph" in result.stderr
    assert not (tree / "reports").exists()


def test_run_graph_returns_70_when_the_services_cannot_be_built(keep_root_logger):
    def broken():
        raise RuntimeError("a bug while building the services")

    def never(services, context):
        raise AssertionError("finish must not run")

    graph = bonobo.Graph(lambda: None)
    assert execution.run_graph(graph, LazyServices(broken), never) == EXIT_INTERNAL


@pytest.fixture
def keep_root_logger():
    import logging

    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_the_store_probe_gives_up_within_seconds():
    from warehouse.core.storage import (
        PROBE_CONNECT_SECONDS,
        PROBE_READ_SECONDS,
        S3Storage,
    )

    store = S3Storage("warehouse")
    config = store.probe.meta.config
    assert (config.connect_timeout, config.read_timeout) == (2, 2)
    assert PROBE_CONNECT_SECONDS + PROBE_READ_SECONDS <= 4
    assert config.retries["total_max_attempts"] == 1
    assert store.client.meta.config.read_timeout == 60  # the run's own client keeps its retries


@pytest.mark.parametrize("graph", GRAPHS)
def test_an_unreachable_endpoint_is_said_at_once_not_after_the_retries(graph, silent_endpoint):
    """An endpoint that accepts connections and never answers: one request (the probe, whose
    read timeout is 2 s), a clear message, exit 2; without the probe the run would sit through
    the SDK's retries (10 attempts of up to 60 s) before saying anything."""
    import time

    url, connections = silent_endpoint
    env = builders.graph_env(WAREHOUSE_BUCKET="warehouse", AWS_ENDPOINT_URL=url)
    started = time.monotonic()
    result = builders.python_m(graph, env=env)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the S3 endpoint" in result.stderr
    assert len(connections) == 1  # one attempt, no retry
    assert time.monotonic() - started < 30  # far below any retry of the run's own client


def test_a_closed_port_is_reported_at_once():
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    env = builders.graph_env(
        WAREHOUSE_BUCKET="warehouse", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}"
    )
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 2
    assert "cannot reach the S3 endpoint" in result.stderr


def test_dataprocess_finds_a_missing_processed_bucket_before_reading(s3_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="only-the-warehouse")
    client.put_object(Bucket="only-the-warehouse", Key="config.json", Body=b"not even read")
    result = builders.python_m(
        "dataprocess", env=builders.graph_env(WAREHOUSE_BUCKET="only-the-warehouse")
    )
    assert result.returncode == 2, result.stderr
    assert "bucket only-the-warehouse-processed does not exist" in result.stderr
    assert "aws s3 mb s3://only-the-warehouse-processed" in result.stderr
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="only-the-warehouse")["Contents"]]
    assert keys == ["config.json"]  # nothing written either


def test_a_config_error_keeps_the_memo(tmp_path):
    from warehouse.core.storage import LocalStorage

    root = tmp_path / "bucket"
    root.mkdir()
    store = LocalStorage(root)
    builders.put_tree(
        store,
        {
            "config.json": builders.config(["raw-a"], split=["A Trust"]),
            "raw-a/2021-01-01/images/garbage.dcm": b"not an image" * 100,
        },
    )
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{root}")
    assert builders.python_m("warehouseloader", env=env).returncode == 0
    memo = store.read("reports/warehouseloader/latest.json")
    reports = sorted(i.key for i in store.list("reports/"))
    store.write("config.json", b'{"raw_prefixes": ["raw-a"], "trainingPercentage": 70}')
    result = builders.python_m("warehouseloader", env=env)
    assert result.returncode == 2
    assert "did you mean training_percentage" in result.stdout + result.stderr
    assert store.read("reports/warehouseloader/latest.json") == memo
    (new,) = sorted(
        k for k in {i.key for i in store.list("reports/")} - set(reports) if k.endswith(".json")
    )
    assert json.loads(store.read(new))["fatal"].startswith("config.json")
