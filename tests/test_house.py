"""The house's shape, from the code's own imports (read with ``ast``, every import at any depth
of a module, those inside functions included; annotations-only imports under
``if TYPE_CHECKING:`` are not run, so they are not edges): no import circle, and no arrow up the
layers, so a reader follows one raw image down the house once and never back up.

Run it alone with ``python -m pytest tests/test_house.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "warehouse"

#: From the ground up. A module may import its own part and the parts of lower layers only;
#: two parts of one layer never import each other.
LAYERS = (
    ("warehouse.core",),
    ("warehouse.storage",),
    ("warehouse.dicom", "warehouse.listing", "warehouse.synthetic"),
    ("warehouse.catalogue",),
    ("warehouse.loader", "warehouse.dashboard", "warehouse.centres"),
    ("warehouse.runtime",),
    (
        "warehouse.warehouseloader",
        "warehouse.submittingcentres",
        "warehouse.dataprocess",
        "warehouse.select",
        "warehouse.task",
        "warehouse.status",
    ),
    # the front door: runs the commands below it (imported by name when one is run)
    ("warehouse.cli",),
)
#: Rules never import bonobo: only the runtime and the graphs do.
BONOBO_ALLOWED = (
    "warehouse.runtime",
    *(m for m in LAYERS[-2] if m != "warehouse.status"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, *, annotations: bool = False) -> set[str]:
    """Every module ``path`` imports when it runs (absolute names; from-imports of a package's
    modules name the module); with ``annotations``, those under ``if TYPE_CHECKING:`` too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node) and not annotations:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if _source_of(candidate) is not None:
                    found.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _source_of(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def the_house(*, annotations: bool = False) -> dict[str, set[str]]:
    """Module -> the product's modules it imports (with ``annotations``, for types only too)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = {
            target
            for target in imports_of(path, annotations=annotations)
            if target.startswith("warehouse") and target != name and _source_of(target)
        }
    return graph


def layer_of(module: str) -> tuple[int, str] | None:
    for number, parts in enumerate(LAYERS):
        for part in parts:
            if module == part or module.startswith(part + "."):
                return number, part
    return None


def test_every_module_has_its_place_in_the_layers():
    unplaced = [m for m in the_house() if m != "warehouse" and layer_of(m) is None]
    assert unplaced == []


def test_no_import_runs_up_the_layers_or_across_one():
    wrong = []
    for module, targets in the_house().items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here is None or there is None:
                continue
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_circle():
    # (two modules that name each other, even for annotations only, are one knot to a reader)
    graph = the_house(annotations=True)
    circles = []
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert circles == []


def test_rules_never_import_bonobo():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if any(name == p or name.startswith(p + ".") for p in BONOBO_ALLOWED):
            continue
        if any(m == "bonobo" or m.startswith("bonobo.") for m in imports_of(path)):
            offenders.append(name)
    assert offenders == []


def test_the_checker_sees_a_circle_and_an_arrow_up(tmp_path):
    """Premise: the checks above can fail (an import inside a function counts)."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from warehouse.loader import state\n")
    assert "warehouse.loader.state" in imports_of(source)
    guarded = tmp_path / "g.py"
    guarded.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.y\n")
    assert "x.y" not in imports_of(guarded)
    assert "x.y" in imports_of(guarded, annotations=True)
    assert layer_of("warehouse.core.keys")[0] < layer_of("warehouse.loader.state")[0]
