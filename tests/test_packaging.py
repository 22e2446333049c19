"""The package as ``pip install`` makes it: a wheel built from the sources, installed into a new
virtual environment, whose console scripts answer ``--help`` and ``--version``, load a tree,
run under ``bonobo run -m``, and keep working with the newest setuptools (no pkg_resources).

Everything happens offline: the wheel is built with the test environment's setuptools (no build
isolation), the venvs are seeded by virtualenv from the wheels it embeds, and the declared
dependencies come from the test environment's own site-packages (the lock's versions), made
visible to the new venv after its own packages; ``pip check`` then proves that the wheel's
declared dependencies are met by them. No network, no pip cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests import builders
from tests.builders import clinical, image
from warehouse import __version__

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
GRAPHS = ("warehouseloader", "submittingcentres", "dataprocess")
TOOLS = (
    "warehouse-create-stack",
    "warehouse-logs",
    "warehouse-inventory",
    "warehouse-batch-delete",
    "warehouse-sharded-run",
    "warehouse-select",
    "warehouse",
)
#: What the wheel build does not need (and must not see: a stale build/ would leak into it).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "demo", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _lock() -> dict[str, str]:
    """requirements.txt as {canonical name: exact version}."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


# ------------------------------------------------------------ metadata, without building


def test_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "warehouse.__version__"}
    assert Version(__version__)  # a valid version


def test_dependencies_are_ranges_that_admit_the_lock():
    pins = _lock()
    requirements = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    for requirement in requirements:
        name = requirement.name.lower()
        assert name in pins, f"{name} is declared but not locked in requirements.txt"
        assert requirement.specifier.contains(pins[name]), (requirement, pins[name])
        assert requirement.specifier, f"{name} has no range"
        # a range, not an open floor: some later major (or minor, for 0.x) is excluded
        assert any(spec.operator in ("<", "~=") for spec in requirement.specifier), requirement
    declared = {r.name.lower(): r.specifier for r in requirements}
    # the constraints that bonobo2 needs (see requirements.txt and the README)
    assert not declared["markupsafe"].contains("2.1.0")
    assert not declared["jinja2"].contains("3.0.0")
    assert not declared["setuptools"].contains("80.0.0")
    assert {"bonobo2", "boto3", "pydicom", "pandas", "pyarrow", "jsonschema"} <= set(declared)


def test_console_scripts_point_at_the_mains():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(GRAPHS) | set(TOOLS)
    for graph in GRAPHS:
        assert scripts[graph] == f"warehouse.{graph}:main"


def test_build_artefacts_are_ignored():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {"build/", "dist/", "*.egg-info/"} <= ignored


# ------------------------------------------------------------ the wheel in a clean venv


@dataclass
class Venv:
    """A clean virtual environment holding the built wheel."""

    root: Path
    wheel: Path
    work: Path  # a working directory outside the repository

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        """This venv's own pip."""
        return _checked([str(self.python), "-m", "pip", "--disable-pip-version-check", *args])

    def run(self, command: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        """Run one of the venv's commands from outside the repository, output captured."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("WAREHOUSE_")}
        for name in ("PYTHONPATH", "BUCKET_NAME", "VIRTUAL_ENV", "RUN_SUMMARY_FILE"):
            clean.pop(name, None)
        # Installed without byte-compiling (most of it is never imported): let the first
        # import of each module write its .pyc, so the next commands start fast.
        clean.pop("PYTHONDONTWRITEBYTECODE", None)
        clean.update(env)
        return subprocess.run(
            [str(self.root / "bin" / command), *args],
            cwd=self.work,
            env=clean,
            capture_output=True,
            text=True,
            timeout=300,
        )


def _checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


def _make_venv(root: Path, work: Path, wheel: Path, *, setuptools: bool) -> Venv:
    """A virtualenv seeded offline (pip, and the newest setuptools virtualenv embeds when
    ``setuptools``), seeing the test environment's packages after its own, with the wheel."""
    seed = [] if setuptools else ["--no-setuptools"]
    _checked([sys.executable, "-m", "virtualenv", "-q", "--no-wheel", *seed, str(root)])
    site = next(root.glob("lib/python3*/site-packages"))
    ours = next(Path(p) for p in sys.path if p.endswith("site-packages") and "lib" in p)
    if setuptools:
        # The newest setuptools has no pkg_resources: so that an import of it cannot fall
        # through to the test environment's, show that one without its setuptools.
        shown = root / "test-environment"
        shown.mkdir()
        for entry in ours.iterdir():
            if not entry.name.startswith(("setuptools", "pkg_resources", "_distutils_hack")):
                (shown / entry.name).symlink_to(entry)
        ours = shown
    (site / "zz_test_environment.pth").write_text(f"{ours}\n")
    env = Venv(root, wheel=wheel, work=work)
    # --ignore-installed: the test environment seen after the venv's own packages may hold the
    # project too (tox installs it editable there); the wheel must land in the venv anyway.
    env.pip(
        "install", "-q", "--no-compile", "--no-deps", "--no-index", "--ignore-installed", str(wheel)
    )  # fmt: skip
    if not setuptools:  # (the newest setuptools is, on purpose, not what the wheel declares)
        env.pip("check")  # the wheel's declared dependencies are all there, compatible
    return env


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (``pip wheel --no-deps``, offline)."""
    base = tmp_path_factory.mktemp("wheel")
    sources, dist = base / "sources", base / "dist"
    shutil.copytree(REPO, sources, ignore=NOT_SOURCES)
    _checked(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(sources)]
    )  # fmt: skip
    [wheel] = dist.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory, built_wheel) -> Venv:
    """A venv holding the wheel, with the lock's setuptools (bonobo's CLI needs it)."""
    base = tmp_path_factory.mktemp("packaging")
    (base / "work").mkdir()
    return _make_venv(base / "venv", base / "work", built_wheel, setuptools=False)


def _tree(root: Path) -> Path:
    """A tiny warehouse: config, one clinical file, one image, and its processed store."""
    root.mkdir()
    Path(f"{root}-processed").mkdir()
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


def _filed_images(root: Path) -> list[Path]:
    return sorted(root.glob("*/xray/**/*.dcm"))


def test_wheel_holds_the_packages_the_template_and_the_version(venv):
    names = zipfile.ZipFile(venv.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"warehouse", "infrastructure", f"warehouse_loader-{__version__}.dist-info"}
    assert "infrastructure/templates/warehouse.yaml" in names
    assert "warehouse/core/page_templates/dashboard.html" in names
    assert "warehouse/runtime/command.py" in names
    metadata = zipfile.ZipFile(venv.wheel).read(
        f"warehouse_loader-{__version__}.dist-info/METADATA"
    )
    assert f"\nVersion: {__version__}\n" in metadata.decode()
    assert "\nRequires-Dist: bonobo2" in metadata.decode()


def test_the_venv_imports_the_installed_package_not_the_sources(venv):
    config = (venv.root / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    result = venv.run(
        "python",
        "-c",
        "import warehouse, infrastructure.create as c; print(warehouse.__file__, c.TEMPLATE)",
    )
    assert result.returncode == 0, result.stderr
    location, template = map(Path, result.stdout.split())
    assert location.is_relative_to(venv.root), location
    assert template.is_relative_to(venv.root) and template.is_file(), template


@pytest.mark.parametrize("command", GRAPHS + TOOLS)
def test_console_script_help_and_version(venv, command):
    shown = venv.run(command, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: {command} ")
    assert "--version" in shown.stdout
    version = venv.run(command, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"{command} {__version__}\n"


def test_warehouseloader_console_script_loads_a_tree(venv, tmp_path):
    tree = _tree(tmp_path / "bucket")
    result = venv.run("warehouseloader", WAREHOUSE_BUCKET=f"file://{tree}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warehouseloader run summary" in result.stdout
    assert len(_filed_images(tree)) == 1


def test_console_script_exits_with_the_graphs_code(venv, tmp_path):
    result = venv.run("warehouseloader", WAREHOUSE_BUCKET=f"file://{tmp_path}/missing")
    assert result.returncode == 2, result.stdout + result.stderr


def test_bonobo_run_module_runs_each_installed_graph(venv, tmp_path):
    tree = _tree(tmp_path / "bucket")
    env = {"WAREHOUSE_BUCKET": f"file://{tree}"}
    for graph in GRAPHS:  # the loader first: dataprocess reads what it filed
        result = venv.run("python", "-m", "bonobo", "run", "-m", f"warehouse.{graph}", **env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "has no attribute" not in output
        assert f"{graph} run summary" in output, output
    assert len(_filed_images(tree)) == 1
    assert (Path(f"{tree}-processed") / "latest.csv").is_file()


@pytest.fixture(scope="module")
def newest_setuptools(tmp_path_factory, built_wheel) -> Venv:
    """A venv holding the wheel with the newest setuptools virtualenv embeds (no
    pkg_resources), which shadows the test environment's."""
    base = tmp_path_factory.mktemp("newest-setuptools")
    (base / "work").mkdir()
    return _make_venv(base / "venv", base / "work", built_wheel, setuptools=True)


def test_newest_setuptools_does_not_break_the_commands(newest_setuptools, tmp_path):
    venv = newest_setuptools
    probe = venv.run(
        "python",
        "-c",
        "import importlib.util, setuptools;"
        "print(setuptools.__version__, importlib.util.find_spec('pkg_resources') is None)",
    )
    version, no_pkg_resources = probe.stdout.split()
    assert Version(version) >= Version("81"), version  # the check below means something
    assert no_pkg_resources == "True"

    for command in (*GRAPHS, "warehouse-create-stack"):  # every graph module's imports
        result = venv.run(command, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{command} {__version__}\n"
    tree = _tree(tmp_path / "bucket")
    result = venv.run("warehouseloader", WAREHOUSE_BUCKET=f"file://{tree}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "pkg_resources" not in output
    assert len(_filed_images(tree)) == 1
