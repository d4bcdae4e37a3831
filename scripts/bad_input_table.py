#!/usr/bin/env python3
"""Runs every bad-input case we know through the real CLI and writes docs/bad-input.md: the case,
the command's exit code and the one line it printed. The table is measured, not written by hand.

    .venv/bin/python scripts/bad_input_table.py [--out docs/bad-input.md]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cli_helpers import write_npz  # noqa: E402
from neuralcleanse.cli import main  # noqa: E402


class NaNNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 4), float("nan"))


def build(work: Path) -> dict[str, Path]:
    f = {"npz": write_npz(work / "data.npz")}
    CliRunner().invoke(main, ["-q", "train", "--dataset", str(f["npz"]), "--arch", "tiny", "--badnets", "--target",
                              "1", "--trigger-size", "2", "--epochs", "4", "--out", str(work / "m.pt")])
    f["model"] = work / "m.pt"
    CliRunner().invoke(main, ["-q", "scan", str(f["model"]), "--data", str(f["npz"]), "--out", str(work / "scan"),
                              "--samples", "80", "--max-steps", "20"])
    f["scan"] = work / "scan"
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    torch.jit.trace(net, torch.rand(1, 1, 8, 8)).save(str(work / "ts.pt"))
    f["ts"] = work / "ts.pt"
    torch.jit.trace(NaNNet(), torch.rand(1, 1, 8, 8)).save(str(work / "nan.pt"))
    f["nan"] = work / "nan.pt"
    torch.save(net, work / "pickled.pt")
    f["pickle"] = work / "pickled.pt"
    torch.save(net.state_dict(), work / "sd.pt")
    f["sd"] = work / "sd.pt"
    (work / "corrupt.pt").write_bytes(b"PK\x03\x04garbage")
    f["corrupt_model"] = work / "corrupt.pt"
    (work / "corrupt.onnx").write_bytes(b"not onnx")
    f["corrupt_onnx"] = work / "corrupt.onnx"
    (work / "corrupt.npz").write_bytes(b"not a zip")
    f["corrupt_npz"] = work / "corrupt.npz"
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    np.savez(work / "range.npz", x=x * 3, y=np.arange(40) % 4)
    f["range"] = work / "range.npz"
    x_nan = x.copy()
    x_nan[0, 0, 0] = np.nan
    np.savez(work / "nan_data.npz", x=x_nan, y=np.arange(40) % 4)
    f["nan_data"] = work / "nan_data.npz"
    np.savez(work / "shape.npz", x=np.zeros((40, 16, 16), np.uint8), y=np.arange(40) % 4)
    f["shape"] = work / "shape.npz"
    np.savez(work / "few.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.arange(5) % 4)
    f["few"] = work / "few.npz"
    np.savez(work / "labels.npz", x=np.zeros((40, 8, 8), np.uint8), y=np.arange(40) % 9)
    f["labels9"] = work / "labels.npz"
    return f


def cases(f: dict[str, Path], work: Path) -> list[tuple[str, list[str]]]:
    out = str(work / "out")
    scan = ["scan", str(f["model"]), "--data", str(f["npz"]), "--out"]
    return [
        ("model file missing", ["scan", str(work / "missing.pt"), "--data", str(f["npz"]), "--out", out]),
        ("model file corrupt", ["scan", str(f["corrupt_model"]), "--data", str(f["npz"]), "--out", out]),
        ("ONNX file corrupt", ["scan", str(f["corrupt_onnx"]), "--data", str(f["npz"]), "--out", out]),
        ("model is a pickled nn.Module, not trusted", ["scan", str(f["pickle"]), "--data", str(f["npz"]), "--out", out]),
        ("model is a bare state_dict", ["scan", str(f["sd"]), "--data", str(f["npz"]), "--out", out]),
        ("factory cannot be imported", ["scan", str(f["sd"]), "--data", str(f["npz"]), "--out", out, "--factory",
                                        "mypkg.nets:resnet"]),
        ("output size disagrees with --num-classes", ["scan", str(f["ts"]), "--data", str(f["npz"]), "--out", out,
                                                      "--num-classes", "10"]),
        ("model outputs NaN", ["scan", str(f["nan"]), "--data", str(f["npz"]), "--out", out]),
        ("data file missing", ["scan", str(f["model"]), "--data", str(work / "none.npz"), "--out", out]),
        ("data file corrupt", ["scan", str(f["model"]), "--data", str(f["corrupt_npz"]), "--out", out]),
        ("data out of range (float > 1)", ["scan", str(f["ts"]), "--data", str(f["range"]), "--out", out]),
        ("NaN in the images", ["scan", str(f["ts"]), "--data", str(f["nan_data"]), "--out", out]),
        ("data of the wrong image size", ["scan", str(f["model"]), "--data", str(f["shape"]), "--out", out]),
        ("labels beyond the model's outputs", ["scan", str(f["ts"]), "--data", str(f["labels9"]), "--out", out]),
        ("too few samples", ["scan", str(f["ts"]), "--data", str(f["few"]), "--out", out]),
        ("--out holds a finished scan", scan + [str(f["scan"])]),
        ("--resume on a finished scan (not an error)", [*scan, str(f["scan"]), "--resume"]),
        ("fewer than 3 labels to scan", [*scan, out, "--labels", "0,1"]),
        ("bad --mean without --std", [*scan, out, "--mean", "0.5"]),
        ("mitigate: scan folder missing", ["mitigate", str(f["model"]), "--scan", str(work / "nope"), "--data",
                                           str(f["npz"]), "--method", "prune", "--out", out]),
        ("mitigate: unknown layer", ["mitigate", str(f["model"]), "--scan", str(f["scan"]), "--data", str(f["npz"]),
                                     "--method", "prune", "--out", out, "-p", "layer=fc9", "--labels", "1"]),
        ("mitigate: fraction outside (0,1]", ["mitigate", str(f["model"]), "--scan", str(f["scan"]), "--data",
                                              str(f["npz"]), "--method", "prune", "--out", out, "-p", "step=1.5",
                                              "--labels", "1"]),
        ("mitigate: label not scanned", ["mitigate", str(f["model"]), "--scan", str(f["scan"]), "--data",
                                         str(f["npz"]), "--method", "unlearn", "--out", out, "--labels", "7"]),
        ("mitigate: min_rounds above rounds", ["mitigate", str(f["model"]), "--scan", str(f["scan"]), "--data",
                                               str(f["npz"]), "--out", out, "--labels", "1",
                                               "-p", "rounds=2", "-p", "min_rounds=3"]),
        ("mitigate: parameter the method lacks", ["mitigate", str(f["model"]), "--scan", str(f["scan"]), "--data",
                                                  str(f["npz"]), "--method", "prune", "--out", out, "-p", "steps=2"]),
        ("report: folder without results", ["report", str(work)]),
        ("attack trojan: target beyond the model's labels", ["attack", "trojan", str(f["model"]), "--data",
                                                             str(f["npz"]), "--target", "9", "--out", out + ".pt"]),
        ("attack trojan: mask not understood", ["attack", "trojan", str(f["model"]), "--data", str(f["npz"]),
                                                "--target", "1", "--mask", "circle:3", "--out", out + ".pt"]),
        ("attack trojan: unknown layer", ["attack", "trojan", str(f["model"]), "--data", str(f["npz"]), "--target",
                                          "1", "--layer", "fc9", "--out", out + ".pt"]),
        ("train: trigger larger than the image", ["train", "--dataset", str(f["npz"]), "--arch", "tiny", "--badnets",
                                                  "--target", "1", "--trigger-size", "20", "--out", out + ".pt"]),
        ("train: trigger file missing", ["train", "--dataset", str(f["npz"]), "--arch", "tiny", "--badnets", "--target",
                                         "1", "--trigger-file", str(work / "nofile.npz"), "--out", out + ".pt"]),
    ]


def tampered_folders_section() -> str:
    """The scan-folder mutations tests/test_untrusted_folders.py runs, listed from the test itself."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_untrusted_folders import MUTATIONS

    names = "\n".join(f"- {name} ({kind} scan)" for name, kind, _ in MUTATIONS)
    return (f"\n## Tampered scan folders\n\n`tests/test_untrusted_folders.py` copies a real scan folder (a finished "
            f"scan with a mitigation beside it, and an interrupted scan) and applies {len(MUTATIONS)} mutations, one "
            "at a time. On each it runs `report`, `mitigate` and `scan --resume`: every one must exit 2 with exactly "
            "one `error:` line, and no file outside the folder may be written or changed. The same test checks that "
            "the page embeds nothing named by an absolute path, `..` or a symlink leading out of the folder (a "
            "placeholder and a warning instead), and that a second run on a folder in use is refused.\n\n"
            f"{names}\n")


def main_(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bad-input.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = build(work)
        for case, cmd in cases(files, work):
            result = CliRunner().invoke(main, ["-q", *cmd])
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            message = " / ".join(lines).replace(str(work), "…").replace("|", "\\|")
            rows.append(f"| {case} | `neuralcleanse {cmd[0]} …` | {result.exit_code} | {message} |")
            print(f"{result.exit_code}  {case}: {message}")
    text = ("# Bad input: what each case prints\n\nMade by `.venv/bin/python scripts/bad_input_table.py` on real "
            "files (paths shortened to …). Exit code 2 means bad input; every message is one line on stderr.\n\n"
            "| case | command | exit | message |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
            + tampered_folders_section())
    args.out.write_text(text)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
