"""What the package imports is what pyproject.toml declares: a module-level import needs a required
dependency, an import inside a function (an optional feature) at least an extra or a documented step."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import names whose distribution is named otherwise.
DISTRIBUTION = {"PIL": "pillow"}
# Installed by hand, as the README says (its declared dependency, torchvision, would pull GBs): ONNX models only.
DOCUMENTED = {"onnx2torch"}


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs}

    extras = {name for group, specs in project["optional-dependencies"].items() if group != "dev"
              for name in names(specs)}
    return names(project["dependencies"]), extras


def _imports() -> tuple[set[str], set[str]]:
    """(module-level, inside functions): the top-level names of third-party modules the package imports."""
    top, lazy = set(), set()
    for path in (ROOT / "neuralcleanse").rglob("*.py"):
        tree = ast.parse(path.read_text())
        module_level = {id(n) for n in tree.body} | {id(n) for node in tree.body if isinstance(node, ast.If)
                                                     for n in node.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module]
            else:
                continue
            for name in found:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root == "neuralcleanse" or root == "__future__":
                    continue
                (top if id(node) in module_level else lazy).add(DISTRIBUTION.get(root, root).lower())
    return top, lazy


def test_module_level_imports_are_required_dependencies() -> None:
    required, _ = _declared()
    top, _ = _imports()
    assert top <= required, f"imported at module level but not in [project] dependencies: {sorted(top - required)}"


def test_optional_imports_are_declared_somewhere() -> None:
    required, extras = _declared()
    _, lazy = _imports()
    assert lazy <= required | extras | DOCUMENTED, sorted(lazy - required - extras - DOCUMENTED)


def test_torch_is_a_range_and_the_set_up_pins_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_spec = next(s for s in project["dependencies"] if s.startswith("torch"))
    assert ">=" in torch_spec and "<" in torch_spec and "==" not in torch_spec
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0"
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
