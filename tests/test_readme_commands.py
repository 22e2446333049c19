"""The newcomer's path: the README's commands and what ``make demo`` prints run as written.

Every code block of the README follows a marker, ``<!-- commands: demo -->`` for the blocks a
demo tree can serve, ``<!-- commands: not run (why) -->`` for the others (they build the
environment, install, run the suite, or are not commands); none is skipped silently. Each
line of a demo block runs, from a checkout-like folder whose ``demo/bucket`` is a demo tree
made here, and exits 0; a selection selects something.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests import builders

README = builders.REPO / "README.md"
MAKEFILE = builders.REPO / "Makefile"
MARKER = re.compile(r"<!-- commands: (demo|not run \([^)]+\)) -->")


def readme_blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """Each code block of ``text`` with its marker.

    A block is indented by four spaces, or fenced; its marker is on the last non-blank line
    before it (None when there is none).
    """
    lines = text.splitlines()
    blocks: list[tuple[str | None, list[str]]] = []
    number = 0
    while number < len(lines):
        line = lines[number]
        previous = next((p for p in reversed(lines[:number]) if p.strip()), "")
        if line.startswith("```"):
            end = next(n for n in range(number + 1, len(lines)) if lines[n].startswith("```"))
            body, number = lines[number + 1 : end], end + 1
        elif line.startswith("    ") and (number == 0 or not lines[number - 1].strip()):
            end = number
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            body = [b[4:] for b in lines[number:end] if b.strip()]
            number = end
        else:
            number += 1
            continue
        found = MARKER.fullmatch(previous.strip())
        blocks.append((found.group(1) if found else None, body))
    return blocks


def test_every_readme_code_block_is_marked():
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 6
    unmarked = [body for marker, body in blocks if marker is None]
    assert not unmarked, unmarked
    assert sum(marker == "demo" for marker, _ in blocks) >= 2


def test_the_block_reader_sees_an_unmarked_block():
    text = "intro\n\n    make demo\n\n<!-- commands: demo -->\n\n    .venv/bin/warehouse --help\n"
    assert readme_blocks(text) == [(None, ["make demo"]), ("demo", [".venv/bin/warehouse --help"])]


def _demo_commands() -> list[str]:
    """The README's demo lines, then what ``make demo`` prints as commands."""
    lines = [
        line
        for marker, body in readme_blocks(README.read_text())
        if marker == "demo"
        for line in body
    ]
    make = MAKEFILE.read_text()
    for name in ("DEMO_SELECT", "DEMO_STATUS", "DEMO_RELEASE"):
        command = re.search(rf"^{name} = (.+)$", make, re.M).group(1)
        lines.append(command.replace("$(BIN)", ".venv/bin").replace("$(DEMO_DIR)", "demo/bucket"))
    return lines


def test_make_demo_prints_what_it_runs():
    recipe = MAKEFILE.read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    for name in ("DEMO_SELECT", "DEMO_STATUS", "DEMO_RELEASE"):
        assert re.search(rf'^\t@echo ".*: \$\({name}\)"$', recipe, re.M), name
        assert re.search(rf"^\t@\$\({name}\) ", recipe, re.M), name


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """Lay out a folder like a checkout after ``make demo``.

    The environment, ``bin/`` and ``warehouse/`` of this one, and a demo tree of its own in
    ``demo/bucket``.
    """
    root = tmp_path_factory.mktemp("checkout")
    (root / ".venv").symlink_to(builders.BIN.parent, target_is_directory=True)
    for name in ("bin", "warehouse"):
        (root / name).symlink_to(builders.REPO / name, target_is_directory=True)
    bucket = root / "demo" / "bucket"
    made = builders.python_m("synthetic", ["--output", str(bucket), "--demo"])
    assert made.returncode == 0, made.stderr
    (root / "demo" / "bucket-processed").mkdir()
    env = builders.graph_env(WAREHOUSE_BUCKET=f"file://{bucket}")
    for graph in ("warehouseloader", "dataprocess"):
        run = builders.python_m(graph, env=env)
        assert run.returncode == 0, run.stderr
    return root


@pytest.mark.parametrize("command", _demo_commands())
def test_each_demo_command_runs_as_written(checkout, command):
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=builders.graph_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    if " select " in f" {command} " or "warehouse.select" in command:
        selected = re.search(r"^selected: ([\d,]+) images", result.stdout, re.M)
        assert selected and int(selected.group(1).replace(",", "")) > 0, result.stdout
