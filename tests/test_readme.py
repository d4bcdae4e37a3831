"""The README's Python quick-start runs as written, on a model the README's own `train` line makes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_helpers import invoke

pytestmark = pytest.mark.slow  # the quick subset (make test-quick) leaves this module out

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    trained = invoke("train", "--dataset", "mnist", "--badnets", "--target", "7", "--trigger-size", "4",
                     "--epochs", "1", "--out", "runs/mnist_bad.pt")
    assert trained.exit_code == 0, trained.output
    namespace: dict = {}
    exec(compile(_api_block(), "README.md", "exec"), namespace)
    result, unlearner = namespace["result"], namespace["unlearner"]
    assert result.infected and 7 in result.flagged
    assert unlearner.evaluate(namespace["mnist"].test).after.worst_attack_success < 0.5
    assert namespace["guarded"].threshold > 0
    printed = capsys.readouterr().out
    assert "True" in printed
