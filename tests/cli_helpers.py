"""What the command-line tests share: a tiny .npz task and ways to run the CLI and check errors."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from click.testing import CliRunner, Result

from neuralcleanse.cli import EXIT_BAD_INPUT, main
from neuralcleanse.detection import NeuralCleanse

NUM_CLASSES = 4
SIDE = 8
TARGET = 1


def write_npz(path: Path, side: int = SIDE, num_classes: int = NUM_CLASSES, n_train: int = 150, n_test: int = 60,
              seed: int = 0) -> Path:
    """uint8 grey images: a fixed random two-level prototype per class plus noise."""
    rng = np.random.default_rng(seed)
    protos = np.where(rng.random((num_classes, side, side)) > 0.5, 0.5, 0.1)

    def split(n_per: int):
        y = np.repeat(np.arange(num_classes), n_per)
        x = np.clip(protos[y] + rng.normal(0, 0.05, (len(y), side, side)), 0, 1)
        return (x * 255).round().astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["-q", *args], catch_exceptions=True)


def assert_bad_input(result: Result, *fragments: str) -> None:
    """Exit 2, exactly one stderr line starting with `error:`, and no traceback anywhere."""
    assert result.exit_code == EXIT_BAD_INPUT, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit)
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    error_lines = [l for l in lines if l.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert lines == error_lines, result.stderr
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag.lower() in error_lines[0].lower(), error_lines[0]


def train_args(npz: Path, out: Path) -> list[str]:
    """`train` arguments for the tiny BadNets model the CLI tests share (2x2 trigger -> TARGET)."""
    return ["train", "--dataset", str(npz), "--arch", "tiny", "--badnets", "--target", str(TARGET),
            "--trigger-size", "2", "--epochs", "8", "--lr", "5e-3", "--out", str(out)]


def train_tiny(npz: Path, out: Path) -> Path:
    result = invoke(*train_args(npz, out))
    assert result.exit_code == 0, result.output
    return out


@contextmanager
def scans_interrupted_after(n: int) -> Iterator[None]:
    """Inside the block every scan stops as a Ctrl-C would, once `n` labels are done."""
    original = NeuralCleanse.scan

    def interrupted(self, *args, **kwargs):
        done: list[int] = []

        def hook(label: int) -> None:
            done.append(label)
            if len(done) == n:
                raise KeyboardInterrupt
        return original(self, *args, on_label_done=hook, **kwargs)

    NeuralCleanse.scan = interrupted
    try:
        yield
    finally:
        NeuralCleanse.scan = original
