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
