"""Checks of the repository itself: the sample config, the README, CI, the reasons' reference."""

from __future__ import annotations

from pathlib import Path

from warehouse.core.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def test_sample_config_is_valid():
    config = parse_config((REPO / "config.sample.json").read_bytes())
    assert config.raw_prefixes and 0 <= config.training_percentage <= 100
    assert set(config.site_rules.values()) == {"split", "training", "validation"}


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_runtime_requirements_are_pinned_and_free_of_test_tools():
    lines = [
        line.strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in line for line in lines), lines
    names = {line.split("==")[0].lower() for line in lines}
    assert not names & {"pytest", "moto", "ruff", "cfn-lint", "flask"}
    assert "bonobo2" in names and "markupsafe" in names


def test_every_reason_the_code_can_give_is_in_the_reference():
    """The reasons' table (docs/reference/reasons.md, linked from the README) lists every
    reason the code can give, in the report's wording, and nothing else."""
    from warehouse.core.reasons import Reason

    page = (REPO / "docs" / "reference" / "reasons.md").read_text(encoding="utf-8")
    table = page[page.index("| reason |") :]
    lines = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines]
    assert sorted(rows) == sorted(reason.value for reason in Reason)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/reference/reasons.md)" in readme


REASONS_SENTENCE = "Every input that is not filed has one of these reasons"
#: Where the reason table may be generated (docs/reference/reasons.md), if it is not in the
#: README under `REASONS_SENTENCE`.
GENERATED_REASONS = REPO / "docs" / "reference" / "reasons.md"


def markdown_table_after(lines: list[str], start: int) -> list[list[str]] | None:
    """The cells of the Markdown table that begins at or after line ``start`` (past blank
    lines only), header and separator left out; None when no table follows."""
    n = start
    while n < len(lines) and not lines[n].strip():
        n += 1
    if n >= len(lines) or not lines[n].startswith("|"):
        return None
    table = []
    while n < len(lines) and lines[n].startswith("|"):
        table.append([cell.strip() for cell in lines[n].strip().strip("|").split("|")])
        n += 1
    assert len(table) >= 2 and set("".join(table[1])) <= set("-: "), "not a Markdown table"
    assert table[0][0].lower() == "reason", table[0]
    return table[2:]


def reason_tables() -> dict[str, list[list[str]]]:
    """Each reason table of the documentation: the table after `REASONS_SENTENCE` in the
    README or any docs/ page, and the first table of `GENERATED_REASONS` if it exists."""
    tables = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if REASONS_SENTENCE in line:
                table = markdown_table_after(lines, number + 1)
                if table is not None:
                    tables[f"{path.relative_to(REPO)}:{number + 1}"] = table
        if path == GENERATED_REASONS and not any(
            k.startswith(str(path.relative_to(REPO))) for k in tables
        ):
            first = next((n for n, line in enumerate(lines) if line.startswith("|")), None)
            if first is not None:
                tables[str(path.relative_to(REPO))] = markdown_table_after(lines, first)
    return tables


def test_the_reason_table_lists_every_reason_once_and_nothing_else():
    """Row for row, the reason table is `Reason`: every reason the code can give is listed,
    once, and the table lists no reason the code does not have."""
    from warehouse.core.report import Reason

    tables = reason_tables()
    assert tables, f"no reason table after {REASONS_SENTENCE!r} nor in {GENERATED_REASONS}"
    reasons = sorted(reason.value for reason in Reason)
    for where, rows in tables.items():
        # a row may name several reasons ("read failed, write failed"), each once
        listed = [name.strip().strip("`") for row in rows for name in row[0].split(",")]
        assert len(listed) == len(set(listed)), (where, sorted(listed))
        assert sorted(listed) == reasons, (
            where,
            "missing:",
            sorted(set(reasons) - set(listed)),
            "not reasons:",
            sorted(set(listed) - set(reasons)),
        )
        assert all(row[1] for row in rows), f"{where}: a reason without its meaning"
