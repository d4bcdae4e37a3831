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


def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    trained = invoke("train", "--dataset", "mnist", "--badnets", "--target", "7", "--trigger-size", "4",
                     "--epochs", "1", "--out", "runs/mnist_bad.pt")
    assert trained.exit_code == 0, trained.output
    namespace: dict = {}
    exec(compile(_api_block(), "README.md", "exec"), namespace)
    result, repaired = namespace["result"], namespace["repaired"]
    assert result.infected and 7 in result.flagged
    # The tool's checkpoint records its trigger: the repair is judged by the real one, on held-out images.
    assert repaired.attack_trigger == "real" and repaired.labels == [7]
    assert repaired.before.worst_attack_success > 0.9 > 0.1 > repaired.after.worst_attack_success
    assert repaired.model is namespace["patched"] and repaired.rescan is not None
    assert namespace["guarded"].threshold > 0
    printed = capsys.readouterr().out
    assert "True" in printed
