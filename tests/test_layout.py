"""The tree shows the architecture: imports point one way, no module is a monolith, templates ship inside.

The layers, lowest first (../DESIGN.md): the base modules at the top of the package, then models/, data/,
check/, after/ (loads what training saved), train/, cluster/, and the command table. A module imports only
from its own layer or a lower one, counting imports deferred into functions, and there is no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vtt"
LAYERS = ["", "models", "data", "check", "after", "train", "cluster", "cli"]
TOP = {"cli": "cli", "demo": "cli"}  # top-level modules above everything: the commands
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if len(parts) == 2 and parts[1] in TOP:
        return LAYERS.index(TOP[parts[1]])
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else 0


def internal_imports(path: Path) -> set[str]:
    """Every vtt module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vtt")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vtt"):
            for alias in node.names:  # `from vtt.data import video` imports the module vtt.data.video
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: internal_imports(path) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    upward = [target for target in sorted(GRAPH[module]) if target != "vtt" and layer(target) > layer(module)]
    assert not upward, f"{module} (layer {LAYERS[layer(module)] or 'base'}) imports from above: {upward}"


def test_no_import_cycle_even_counting_deferred_imports():
    done, cycles = set(), []

    def visit(module, path):
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in GRAPH.get(module, ()):
            if target in MODULES and target != "vtt":
                visit(target, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_the_size_a_reader_holds_in_mind(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by what it does"


def test_every_stage_has_its_subpackage():
    for stage in LAYERS[1:-1]:
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


def test_templates_ship_inside_the_package():
    templates = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.j2"))
    assert templates == ["after/report.html.j2", "cluster/job.sh.j2"]
    assert not (PACKAGE.parents[1] / "jobs" / "templates").exists()
