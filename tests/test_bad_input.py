"""Every case of the documented bad-input table (scripts/bad_input_table.py, docs/bad-input.md)
gives exit code 2 and exactly one `error:` line, never a traceback, and the line is the error that
case is about (a distinctive fragment of its message), not just any error."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_bad_input, invoke
from neuralcleanse.cli import EXIT_CLEAN, EXIT_INFECTED

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bad_input_table  # noqa: E402

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnx2torch"))

# case name (as in scripts/bad_input_table.py) -> fragments its one error line must contain.
EXPECTED: dict[str, tuple[str, ...]] = {
    "model file missing": ("model file not found", "missing.pt"),
    "model file corrupt": ("cannot read", "corrupt.pt", "as a neuralcleanse checkpoint or TorchScript file"),
    "ONNX file corrupt": (("cannot convert ONNX model", "corrupt.onnx") if HAVE_ONNX
                          else ("ONNX models need two extra packages", "onnx2torch")),
    "model is a pickled nn.Module, not trusted": ("pickled.pt is a pickled model", "runs code", "--trust-pickle"),
    "model is a bare state_dict": ("sd.pt holds only weights", "--factory"),
    "factory cannot be imported": ("cannot import 'mypkg.nets' for --factory",),
    "output size disagrees with --num-classes": ("--num-classes is 10 but the model outputs 4 scores",),
    "model outputs NaN": ("the model outputs NaN or Inf",),
    "data file missing": ("none.npz is not a known name, file or folder",),
    "data file corrupt": ("corrupt.npz is not an .npz archive",),
    "data out of range (float > 1)": ("range.npz", "float images must lie in [0, 1]"),
    "NaN in the images": ("nan_data.npz", "images contain NaN or Inf"),
    "data of the wrong image size": ("the model expects images of shape (1, 8, 8)", "the data has (1, 16, 16)"),
    "labels beyond the model's outputs": ("labels up to 8", "outputs only 4 scores"),
    "too few samples": ("too few clean samples: 5",),
    "--out holds a finished scan": ("already holds a finished scan", "--force"),
    "--resume on a finished scan (not an error)": ("is a finished scan: nothing to resume",),
    "fewer than 3 labels to scan": ("at least 3 labels",),
    "bad --mean without --std": ("--mean and --std together",),
    "mitigate: scan folder missing": ("nope holds no report.json",),
    "mitigate: unknown layer": ("unknown layer 'fc9'",),
    "mitigate: fraction outside (0,1]": ("step must lie in (0, 1]", "1.5"),
    "mitigate: label not scanned": ("label(s) [7] were not scanned",),
    "report: folder without results": ("holds no report.json or mitigation.json",),
    "mitigate: min_rounds above rounds": ("min_rounds must be a whole number from 1 to rounds (2), got 3",),
    "mitigate: parameter the method lacks": ("prune has no parameter steps", "stop_success"),
    "attack trojan: target beyond the model's labels": ("--target must lie in 0..3",),
    "attack trojan: mask not understood": ("unknown --mask 'circle:3'", "square:SIZE@POS"),
    "attack trojan: unknown layer": ("unknown --layer 'fc9'", "0 (Conv2d)"),
    "train: trigger larger than the image": ("a 20px trigger", "does not fit a 8x8 image"),
    "train: trigger file missing": ("trigger file", "nofile.npz not found"),
}


class _AnyFile(dict):
    """Stands in for build()'s files so the case names can be listed at collection time."""

    def __missing__(self, key: str) -> Path:
        return Path(key)


CASE_NAMES = [case for case, _ in bad_input_table.cases(_AnyFile(), Path("work"))]


def test_every_case_has_an_expected_message() -> None:
    """A case added to the script fails here until it says which error it expects."""
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) >= 20
    assert set(CASE_NAMES) == set(EXPECTED), (set(CASE_NAMES) ^ set(EXPECTED))
    assert all(EXPECTED[c] and all(EXPECTED[c]) for c in CASE_NAMES)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> dict[str, list[str]]:
    work = tmp_path_factory.mktemp("bad")
    return dict(bad_input_table.cases(bad_input_table.build(work), work))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASE_NAMES)
def test_table_case(fixtures, case: str) -> None:
    result = invoke(*fixtures[case])
    if "not an error" in case:
        assert result.exit_code in (EXIT_CLEAN, EXIT_INFECTED), (case, result.output)
        assert all(f.lower() in result.stderr.lower() for f in EXPECTED[case]), result.stderr
        return
    assert_bad_input(result, *EXPECTED[case])
