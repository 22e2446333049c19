"""The runtime tells the truth: the graphs run without pkg_resources (setuptools >= 81), and a
graph that bonobo cannot start never exits 0."""

from __future__ import annotations

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
