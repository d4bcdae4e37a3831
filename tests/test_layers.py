"""The package's layers point one way: every import, at the top of a module or inside a function, goes to the
same concern or a lower one, and no module imports itself back through others."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neuralcleanse"

# Lowest first. A module may import its own concern and anything ranked lower, never higher.
LAYERS = [
    {"_version", "errors", "files", "parallel"},
    {"data"},
    {"metrics"},
    {"models"},
    {"options"},
    {"attacks"},
    {"training"},
    {"detection"},
    {"mitigation"},
    {"report"},
    {"pipeline"},
    {"zoo"},
    {"demo"},
    {"cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module → the neuralcleanse modules it imports anywhere in its text (TYPE_CHECKING blocks too)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets = found.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("neuralcleanse"):
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("neuralcleanse"))
    return found


def _concern(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<package>"


def test_every_concern_has_a_layer() -> None:
    concerns = {_concern(m) for m in _imports()} - {"<package>"}
    assert concerns <= set(RANK), f"give these a place in LAYERS: {sorted(concerns - set(RANK))}"


def test_imports_point_down() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items() if _concern(module) != "<package>"
        for target in targets
        if _concern(target) != "<package>" and RANK[_concern(target)] > RANK[_concern(module)]
    )
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_library_never_imports_the_package_root() -> None:
    # `neuralcleanse/__init__.py` gathers the public API from every layer; a module importing it imports them all.
    offenders = sorted(m for m, t in _imports().items() if "neuralcleanse" in t and m != "neuralcleanse")
    assert not offenders


def test_no_import_cycle() -> None:
    graph = _imports()
    modules = set(graph)
    # A package's __init__ importing its own submodules is how packages export; a cycle needs another edge.
    edges = {m: {t for t in ts if t in modules and not (m != t and t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
