"""Every case of the documented bad-input table (scripts/bad_input_table.py, docs/bad-input.md)
gives exit code 2 and exactly one `error:` line, never a traceback."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli_helpers import assert_bad_input, invoke

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bad_input_table  # noqa: E402


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("bad")
    return bad_input_table.build(work), work


def test_table_cases(fixtures) -> None:
    files, work = fixtures
    checked = 0
    for case, cmd in bad_input_table.cases(files, work):
        result = invoke(*cmd)
        if "not an error" in case:
            assert result.exit_code in (0, 3), (case, result.output)
            continue
        assert_bad_input(result)
        checked += 1
    assert checked >= 20
