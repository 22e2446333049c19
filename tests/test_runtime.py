"""The runtime tells the truth: the graphs run without pkg_resources (setuptools >= 81), and a
graph that bonobo cannot start never exits 0."""

from __future__ import annotations

import json
import textwrap

import bonobo
import pytest

from tests import builders
from tests.builders import clinical, image
from warehouse.core.run import EXIT_INTERNAL
from warehouse.runtime import command
from warehouse.runtime.services import LazyServices

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
    assert command.run_graph(graph, LazyServices(broken), never) == EXIT_INTERNAL


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
    from warehouse.storage.s3 import PROBE_CONNECT_SECONDS, PROBE_READ_SECONDS, S3Storage

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
    the SDK's retries (10 attempts of up to 60 s) before saying anything. (One connection, no
    retry: the behaviour; the probe's timeouts: `test_the_store_probe_gives_up_within_seconds`.)
    """
    url, connections = silent_endpoint
    env = builders.graph_env(WAREHOUSE_BUCKET="warehouse", AWS_ENDPOINT_URL=url)
    result = builders.python_m(graph, env=env)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the S3 endpoint" in result.stderr
    assert len(connections) == 1  # one attempt, no retry


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
    from warehouse.storage.local import LocalStorage

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


# --------------------------------------------------------------------------------------------
# premise tests: each fact about the pinned bonobo2 that a runtime change rests on


def test_bonobo_binds_inputs_through_the_cached_signature(keep_root_logger):
    """strategy.cache_node_signatures replaces ``processors.signature``: bonobo must look it up
    in its module at every call (not hold ``inspect.signature`` itself), or the cache is idle."""
    from bonobo.config import processors

    from warehouse.runtime.strategy import StartedThreadPoolStrategy

    assert hasattr(processors.signature, "cache_info"), "the cache is not installed"
    seen = []

    def node(item):
        seen.append(item)

    def numbers():
        yield from range(50)

    before = processors.signature.cache_info()
    graph = bonobo.Graph(numbers, node)
    bonobo.run(graph, strategy=StartedThreadPoolStrategy())
    after = processors.signature.cache_info()
    assert seen == list(range(50))
    assert after.hits - before.hits >= 49  # one miss per node at most, then hits


def test_bonobo_asks_node_inputs_without_waiting(keep_root_logger):
    """strategy.PromptInput turns bonobo's ``input.get(timeout=0)`` into a wait; bonobo itself
    (not a test) must ask that way, or nodes would wait 1 s per item, or poll again."""
    from warehouse.runtime import strategy

    asked: list = []

    class Spy(strategy.PromptInput):
        def get(self, block=True, timeout=None):
            asked.append(timeout)
            return super().get(block, timeout)

    class SpyNode(strategy.PromptNodeExecutionContext):
        QueueType = Spy

    class SpyGraph(strategy.PromptGraphExecutionContext):
        NodeExecutionContextType = SpyNode

    class SpyStrategy(strategy.StartedThreadPoolStrategy):
        GraphExecutionContextType = SpyGraph

    def numbers():
        yield from range(5)

    got = []
    graph = bonobo.Graph(numbers, got.append)
    bonobo.run(graph, strategy=SpyStrategy())
    assert got == list(range(5))
    assert asked and set(asked) == {0}


def test_bonobo_sizes_queues_through_the_node_context_hook(keep_root_logger):
    """pools.bounded_input relies on bonobo creating every node context through
    ``create_node_execution_context_for`` before the nodes start."""
    from warehouse.runtime import pools
    from warehouse.runtime.strategy import PromptGraphExecutionContext

    @pools.bounded_input(7)
    def small(item):
        yield item

    context = PromptGraphExecutionContext(bonobo.Graph(lambda: iter(()), small))
    sizes = [node.input.maxsize for node in context.nodes]
    assert sizes[1] == 7 and sizes[0] != 7


def test_the_strategy_starts_through_get_starter_and_never_waits_for_an_unsubmitted_node(
    keep_root_logger, caplog
):
    """bonobo's ``execute`` passes ``get_starter(executor, futures)`` to ``context.start``, and
    its starter appends each submitted node's future to ``futures``: a node whose submission
    fails is then known, so ``start`` returns instead of waiting for it forever, and the run
    ends as one bonobo could not run (exit 70), never as a success."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from warehouse.runtime import strategy

    class Refusing(ThreadPoolExecutor):
        calls = 0

        def submit(self, fn, /, *args, **kwargs):
            Refusing.calls += 1
            if Refusing.calls == 2:
                raise RuntimeError("no thread for this node")
            return super().submit(fn, *args, **kwargs)

    contexts = []

    class Graph(strategy.PromptGraphExecutionContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            contexts.append(self)

    class Strategy(strategy.StartedThreadPoolStrategy):
        executor_factory = Refusing
        GraphExecutionContextType = Graph

    def numbers():
        yield from range(3)

    outcome = []

    def run():
        try:
            bonobo.run(bonobo.Graph(numbers, print), strategy=Strategy())
            outcome.append("returned")
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(60)  # a guard against a hang, not a speed target
    assert outcome, "the run waited for a node that was never submitted"
    assert Refusing.calls == 2
    assert len(contexts[0].unstartable) == 1
    assert "futures.append" in caplog.text  # bonobo's own log of the failed submission


def test_the_bonobo_cli_records_the_graph_by_replacing_bonobo_run():
    """command.recording() tells ``bonobo run FILE`` (which replaces ``bonobo.run`` by a
    recorder while it runs the file, then runs the recorded graph with bonobo's own run) from
    a direct run."""
    from bonobo import _api as bonobo_api
    from bonobo.commands.base import _override_runner
    from bonobo.commands.run import RunCommand

    assert not command.recording()
    with _override_runner(lambda graph, **options: None):
        assert command.recording()
    assert not command.recording()
    assert RunCommand.handler is bonobo_api.run


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan"])
def test_a_bad_progress_period_is_a_settings_error_of_every_graph(tmp_path, value):
    """WAREHOUSE_PROGRESS_SECONDS is read once, with the other settings: a bad value stops the
    run with exit code 2 and one line, never a traceback."""
    (tmp_path / "bucket").mkdir()
    for graph in ("warehouseloader", "dataprocess", "submittingcentres"):
        env = builders.graph_env(
            WAREHOUSE_BUCKET=f"file://{tmp_path / 'bucket'}", WAREHOUSE_PROGRESS_SECONDS=value
        )
        done = builders.python_m(graph, env=env)
        assert done.returncode == 2, (graph, done.stderr)
        assert "WAREHOUSE_PROGRESS_SECONDS" in done.stderr and "Traceback" not in done.stderr


def test_the_status_lines_follow_the_progress_setting():
    from warehouse.runtime.plugins import StatusLines

    settings = {"seconds": 5.0}
    lines = StatusLines(lambda: settings["seconds"])
    assert lines.period == 5.0
    settings["seconds"] = 0.5
    assert lines.period == 0.5


def test_a_state_field_is_given_back_once_loaded_and_is_an_error_before():
    from warehouse.core.run import loaded

    groups = {"Covid1": "training"}
    assert loaded(groups, "the patients' groups") is groups
    assert loaded(0, "a count") == 0  # only None is "not loaded"
    with pytest.raises(RuntimeError, match="the patients' groups is not loaded yet"):
        loaded(None, "the patients' groups")


def test_a_loader_decision_before_config_json_is_loaded_says_what_is_missing(tmp_path):
    """A node run before the one that loads ``config.json`` says what is missing.

    It fails as an internal error of that input, not with an AttributeError on None.
    """
    from warehouse.core.config import settings_from_env
    from warehouse.core.report import RunReport
    from warehouse.loader.decisions import file_clinical
    from warehouse.loader.state import LoaderState
    from warehouse.loader.tasks import Task

    settings = settings_from_env({"WAREHOUSE_BUCKET": f"file://{tmp_path}"})
    state = LoaderState(settings, RunReport("warehouseloader"))
    task = Task("clinical", "raw-a/2021-01-01/data/Covid1_data.json", 10, None, None)
    with pytest.raises(RuntimeError, match="config.json is not loaded yet"):
        file_clinical(state, (task, "A Trust", None))
    assert state.report.problems == []
