"""The benchmarks use the library as users do; a refactor that breaks one breaks this test, not a run
hours later. Each module imports without running anything (work happens under `__main__`), and what it
uses of the library exists."""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import benchmarks

MODULES = sorted(m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks."))


def test_every_benchmark_is_found() -> None:
    scripts = {p.stem for p in Path(benchmarks.__path__[0]).rglob("*.py") if p.stem != "__init__"}
    assert scripts and scripts <= {m.rsplit(".", 1)[-1] for m in MODULES}


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_without_side_effects(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # anything written on import would land here
    importlib.import_module(name)
    assert not list(tmp_path.iterdir())
