"""The documentation against the code: ``docs/reference/`` is what ``docs/generate.py`` makes
from the code now, each reference page says what the code says (checked here from the code
objects, not through the generator), every link of the README and of ``docs/`` leads to a file
and a heading that exist, the names the documents cite exist, and the README stays a front
door (short, with the bounds of the code).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REFERENCE = DOCS / "reference"
README = REPO / "README.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return load_generator()


def documents() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header line starts with ``header``."""
    lines = text[text.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        rows.append([cell.strip() for cell in cells])
    return rows


# --------------------------------------------------------------------------------------------
# The generated pages are the code's


def test_the_reference_is_what_the_code_gives_now(generator):
    pages = generator.generate()
    assert set(pages) == {"reasons.md", "environment.md", "config.md", "catalogue-columns.md"}
    assert {p.name for p in REFERENCE.iterdir()} == set(pages)
    stale = [name for name, text in pages.items() if read(REFERENCE / name) != text]
    assert stale == [], f"run `make docs`: {stale} differ from the code"


def test_check_mode_finds_a_stale_page_and_writing_mends_it(generator, tmp_path, monkeypatch):
    for path in REFERENCE.iterdir():
        (tmp_path / path.name).write_text(read(path), encoding="utf-8")
    (tmp_path / "config.md").write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(generator, "REFERENCE", tmp_path)
    assert generator.main(["--check"]) == 1
    assert read(tmp_path / "config.md") == "old\n"
    assert generator.main([]) == 0
    assert read(tmp_path / "config.md") == read(REFERENCE / "config.md")
    assert generator.main(["--check"]) == 0


def test_the_pages_follow_the_code_objects(generator, monkeypatch):
    """Premise of the check above: the generator reads the objects the product runs on."""
    from warehouse.catalogue import rows
    from warehouse.core import config

    schema = json.loads(json.dumps(config.CONFIG_SCHEMA))
    schema["properties"]["retention_days"] = {
        "type": "integer",
        "minimum": 1,
        "maximum": 9,
        "default": 3,
        "description": "a key the code just gained",
    }
    monkeypatch.setattr(config, "CONFIG_SCHEMA", schema)
    page = generator.config_page()
    assert "| `retention_days` | integer 1..9 | default `3` | a key the code just gained |" in page

    monkeypatch.setattr(rows, "SCHEMA", rows.SCHEMA.append(rows.pa.field("Laterality", "string")))
    with pytest.raises(ValueError, match="no meaning for \\['Laterality'\\]"):
        generator.catalogue_columns_page()


def test_a_reason_without_a_meaning_stops_the_generator(generator, monkeypatch):
    from warehouse.core.reasons import Reason

    monkeypatch.delitem(generator.REASON_MEANINGS, Reason.SYMLINK)
    with pytest.raises(ValueError, match="SYMLINK"):
        generator.reasons_page()


def test_an_undocumented_environment_read_stops_the_generator(generator, monkeypatch):
    monkeypatch.delitem(generator.ENVIRONMENT, "TOPIC_ARN")
    with pytest.raises(ValueError, match="TOPIC_ARN"):
        generator.environment_page()


# --------------------------------------------------------------------------------------------
# Each page says what the code says (oracles: the code objects and behaviour, not the generator)


def test_reasons_page_lists_every_reason_with_what_a_site_reads():
    from warehouse.core.reasons import Reason
    from warehouse.loader import feedback

    rows = {row[0]: row for row in table_rows(read(REFERENCE / "reasons.md"), "| reason |")}
    assert sorted(rows) == sorted(reason.value for reason in Reason)
    warehouse_side = {
        Reason.INVALID_PART,
        Reason.INVALID_REPORT,
        Reason.NOT_IN_WAREHOUSE,
        Reason.FIELDS_LEFT_OUT,
        Reason.WAREHOUSE_CONFLICT,
        Reason.FILED_UNDER_TWO_PATIENTS,
    }
    for reason in Reason:
        _, meaning, site, member = rows[reason.value]
        assert member == f"`{reason.name}`" and meaning
        if reason in warehouse_side:
            assert site.startswith("nothing"), reason
            continue
        facts = {"patient": "Covid7"}
        record = {"key": "raw-a/2021-01-01/data/Covid7_data.json", "reason": reason.value}
        image = {"key": "raw-a/2021-01-01/images/x.dcm", "reason": reason.value}
        record_view = feedback.site_view({**record, "detail": "SECRET", "facts": facts})
        image_view = feedback.site_view({**image, "detail": "SECRET", "facts": facts})
        no_patient = f'"{Reason.NO_PATIENT_DATA.value}"'
        if record_view is None:
            assert site.startswith("nothing"), reason
        elif record_view["reason"] != reason.value or reason is Reason.NO_PATIENT_DATA:
            assert site.startswith(no_patient), reason
        elif record_view["detail"] == "SECRET":
            assert site.startswith("the reason and its detail"), reason
        else:
            assert site.startswith(f'the reason, with the detail "{record_view["detail"]}"')
        image_reads_no_patient = image_view and image_view["reason"] == Reason.NO_PATIENT_DATA
        if reason is not Reason.NO_PATIENT_DATA:
            assert (f"for an image, {no_patient}" in site) == bool(image_reads_no_patient), reason


ENV_READ = [
    re.compile(r'\b(?:env|environ)\.get\(\s*"([A-Z][A-Z0-9_]*)"'),
    re.compile(r'\b(?:env|environ)\[\s*"([A-Z][A-Z0-9_]*)"\s*\](?!\s*=[^=])'),
    re.compile(r'"([A-Z][A-Z0-9_]*)"\s+(?:not\s+)?in\s+(?:os\.)?(?:env|environ)\b'),
    re.compile(r'\(\s*env\s*,\s*"([A-Z][A-Z0-9_]*)"'),
]


def names_read_in_the_package() -> set[str]:
    found = set()
    for path in (REPO / "warehouse").rglob("*.py"):
        source = read(path)
        for pattern in ENV_READ:
            found.update(pattern.findall(source))
    return found


def test_environment_page_lists_exactly_the_variables_the_package_reads():
    page = read(REFERENCE / "environment.md")
    table = {row[0].strip("`") for row in table_rows(page, "| variable |")}
    others = set(re.findall(r"^- `([A-Z][A-Z0-9_]*)`", page, re.M))
    code = names_read_in_the_package()
    assert "WAREHOUSE_BUCKET" in code and "AWS_BATCH_JOB_ARRAY_INDEX" in code
    assert table | others == code


def test_environment_page_gives_each_setting_its_default():
    from warehouse.core.config import Settings

    rows = {row[0].strip("`"): row for row in table_rows(read(REFERENCE / "environment.md"), "|")}
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    assert {row[2].strip("`") for row in rows.values() if row[2]} == set(defaults)
    assert rows["WAREHOUSE_WORKERS"][1] == f"`{defaults['workers']}`"
    assert rows["WAREHOUSE_MAX_CLINICAL_BYTES"][1].startswith(f"`{defaults['max_clinical_bytes']}`")
    assert rows["WAREHOUSE_MAX_HEADER_BYTES"][1].startswith(f"`{defaults['max_header_bytes']}`")
    assert rows["WAREHOUSE_LOG_FORMAT"][1] == f"`{defaults['log_format']}`"
    assert rows["WAREHOUSE_PHASE"][1] == f"`{defaults['phase']}`"
    assert rows["DRY_RUN"][1] == "`false`" and defaults["dry_run"] is False
    assert rows["WAREHOUSE_BUCKET"][1] == "required"


def test_the_generators_scanner_sees_every_form_of_read(generator):
    """Premise of the environment page: each way the package reads a variable is seen, and a
    write is not a read."""
    source = (
        "import os\n"
        'a = env.get("A_ONE")\n'
        'b = os.environ.get("B_TWO", "x")\n'
        'c = env["C_THREE"]\n'
        'd = "D_FOUR" in env\n'
        'e = _byte_limit(env, "E_FIVE", 3)\n'
        'env["WRITTEN"] = "1"\n'
        'f = other.get("NOT_ENV")\n'
    )
    assert generator.environment_reads(source) == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE"}


def schema_paths(schema: dict, prefix: str = "") -> list[str]:
    paths = []
    for name, node in schema.get("properties", {}).items():
        paths.append(prefix + name)
        paths += schema_paths(node, f"{prefix}{name}.")
        values = node.get("additionalProperties")
        if isinstance(values, dict):
            paths.append(f"{prefix}{name}.{values['title']}")
    return paths


def test_config_page_lists_every_key_and_holds_the_schema():
    from warehouse.core.config import CONFIG_SCHEMA

    page = read(REFERENCE / "config.md")
    rows = table_rows(page, "| key |")
    assert [row[0].strip("`") for row in rows] == schema_paths(CONFIG_SCHEMA)
    for row in rows:
        name = row[0].strip("`")
        if name in CONFIG_SCHEMA["required"]:
            assert row[2] == "**required**", name
    block = page[page.index("```json") + len("```json") : page.rindex("```")]
    assert json.loads(block) == CONFIG_SCHEMA


def test_catalogue_columns_page_gives_each_column_its_arrow_type():
    from warehouse.catalogue.rows import SCHEMA
    from warehouse.dashboard.images import CLINICAL_COLUMNS

    rows = table_rows(read(REFERENCE / "catalogue-columns.md"), "| column |")
    expected = [(f"`{f.name}`", f"`{f.type}`") for f in SCHEMA]
    expected += [("`filed`", "`date32[day]`")]
    expected += [(f"`{name}`", f"`{arrow_type}`") for name, arrow_type in CLINICAL_COLUMNS.values()]
    assert [(row[0], row[1]) for row in rows] == expected
    assert all(row[4] for row in rows)  # a meaning for each


# --------------------------------------------------------------------------------------------
# Links and names


def without_code(text: str) -> str:
    """``text`` without fenced or indented code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"^(?: {4}|\t).*$", "", text, flags=re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", without_code(read(path)))


def test_the_slugs_are_githubs():
    assert slug("Selecting and downloading: `python -m warehouse.select`") == (
        "selecting-and-downloading-python--m-warehouseselect"
    )
    assert slug("Sharded runs (`WAREHOUSE_PROCESSES`)") == "sharded-runs-warehouse_processes"
    assert slug("The catalogue's cost") == "the-catalogues-cost"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading(path):
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        if not destination.exists():
            broken.append(target)
        elif anchor and (destination.suffix != ".md" or anchor not in anchors(destination)):
            broken.append(target)
    assert broken == []


def dotted_names(text: str) -> set[str]:
    return set(re.findall(r"`(warehouse(?:\.[A-Za-z_]\w*)+)`", text))


def resolve(name: str):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            target = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_name_of_the_code_a_document_cites_exists(path):
    missing = []
    for name in sorted(dotted_names(read(path))):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_test_a_document_cites_exists(path):
    missing = []
    for file, name in re.findall(r"tests/(\w+\.py)::(\w+)", read(path)):
        source = REPO / "tests" / file
        if not source.exists() or not re.search(rf"^def {name}\(", read(source), re.M):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_architecture_names_every_node_of_each_graph():
    from bonobo.util import get_name

    page = read(DOCS / "architecture.md")
    for graph in ("warehouseloader", "submittingcentres", "dataprocess"):
        section = page[page.index(f"### {graph}\n") :]
        section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
        module = importlib.import_module(f"warehouse.{graph}")
        for node in module.get_graph().nodes:
            assert f"`{get_name(node)}`" in section, (graph, get_name(node))


def test_architecture_gives_the_house_its_layers():
    spec = importlib.util.spec_from_file_location("house", REPO / "tests" / "test_house.py")
    house = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(house)
    rows = table_rows(read(DOCS / "architecture.md"), "| layer | parts |")
    assert len(rows) == len(house.LAYERS)
    for number, (row, parts) in enumerate(zip(rows, house.LAYERS, strict=True)):
        assert row[0] == str(number)
        assert re.findall(r"`([\w.]+)`", row[1]) == list(parts)


# --------------------------------------------------------------------------------------------
# The README is a front door


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_readme_is_short_and_leads_to_every_document():
    text = read(README)
    assert len(text.splitlines()) < 450
    assert "make demo" in text and "make test" in text
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(README)}
    for document in sorted(DOCS.rglob("*.md")):
        assert document.resolve() in linked, document


UNITS = {"KiB": 1024, "MiB": 1024 * 1024, "bytes": 1, "characters": 1, "levels": 1, "": 1}


def test_the_readme_lists_each_bound_with_the_codes_default():
    rows = table_rows(section(read(README), "Security"), "| bound |")
    assert len(rows) >= 15
    for bound, default, where in rows:
        number, unit = re.fullmatch(r"([\d,]+) ?(\w*)", default).groups()
        value = resolve(where.strip("`"))
        assert int(number.replace(",", "")) * UNITS[unit] == value, bound


def test_every_bound_of_the_security_page_is_a_name_of_the_code():
    page = read(DOCS / "security.md")
    rows = table_rows(page, "| what | bound (default) |")
    for row in rows:
        names = dotted_names(row[3])
        assert names, row[0]
    readme = dotted_names(section(read(README), "Security"))
    page_names = set().union(*(dotted_names(row[3]) for row in rows))
    assert readme <= page_names


def test_the_readme_states_the_feedback_secrecy_rule():
    from warehouse.core.reasons import Reason
    from warehouse.loader import feedback

    text = " ".join(section(read(README), "Security").split())
    assert "feedback/raw-<site>/" in text and "neutral detail" in text
    for reason in {*feedback.OPERATORS_ONLY, Reason.NO_PATIENT_DATA}:
        assert f'"{reason.value}"' in text, reason


def readme_commands() -> list[str]:
    text = read(README)
    block_lines = re.findall(r"^ {4}(.+)$", text, re.M)
    spans = re.findall(r"`([^`\n]+)`", without_code_blocks(text))
    return [line.split("  #")[0].strip() for line in block_lines] + spans


def without_code_blocks(text: str) -> str:
    return re.sub(r"^(?: {4}).*$", "", text, flags=re.M)


def test_the_readme_commands_name_what_exists():
    scripts = set(tomllib.loads(read(REPO / "pyproject.toml"))["project"]["scripts"])
    tools = {"python", "bonobo", "pip", "tox", "ruff"}
    seen = 0
    for command in readme_commands():
        words = [w for w in command.split() if "=" not in w or w.startswith("-")]
        for i, word in enumerate(words):
            if word.startswith(".venv/bin/") and word != ".venv/bin/":
                seen += 1
                assert word.removeprefix(".venv/bin/") in scripts | tools, command
            if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("warehouse"):
                module = words[i + 1]
                if "<" not in module:
                    assert importlib.util.find_spec(module), command
            if re.fullmatch(r"(bin|infrastructure|warehouse|benchmarks)/[\w/.-]+", word):
                assert (REPO / word).exists(), command
    assert seen >= 5


def test_the_readme_code_blocks_run_from_a_fresh_clone():
    """Each line of the README's indented code blocks starts with make, pip or a program of
    the .venv that `make demo` creates (after any VARIABLE=value), so it runs as written."""
    lines = re.findall(r"^ {4}(\S.*)$", read(README), re.M)
    assert len(lines) >= 8  # (the bucket's layout is a fenced block: not commands)
    for line in lines:
        words = [w for w in line.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
        assert words[0] in {"make", "pip"} or words[0].startswith(".venv/bin/"), line
